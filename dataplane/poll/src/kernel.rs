//! The exception path: frames the pipeline passes (`Verdict::Pass`) go to the host's
//! network stack through raw IP sockets (`IPPROTO_RAW`, header included).
//!
//! Why raw sockets, not a TAP device: a `Pass` frame is either untouched (not ours:
//! the kernel should judge it) or translated with no known next hop (the kernel should
//! route it and resolve the neighbour). Sent as a datagram, the kernel routes it as it
//! would any packet, resolves the next hop's neighbour on the way (ARP / ND, queueing
//! the frame meanwhile) and delivers locally what is addressed to the host: both cases
//! are served without another interface to create, address and keep routes for, and
//! without the rp_filter and martian-source checks a frame re-injected on a TAP would
//! meet (a `snat` frame carries one of the host's own addresses as its source).
//! The costs: the kernel sees the datagram as locally sent (OUTPUT, not FORWARD, in
//! netfilter), and non-IP frames cannot take this path. The steering program never
//! sends non-IP frames (ARP, ND's carrier is IPv6 but it is never steered) to the
//! engine; any that arrive (redirect-all mode) are counted as not delivered.
//!
//! Destinations of passed frames are remembered (bounded, without blocking the worker)
//! so the next-hop resolver learns which neighbours the engine needs.

use anyhow::{Context, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

/// Destinations the engine passed to the kernel since the resolver last looked.
#[derive(Default)]
pub struct Misses(Mutex<Vec<IpAddr>>);

const MAX_MISSES: usize = 1024;

impl Misses {
    /// Records `dst` unless another thread holds the list or it is full: a lost entry
    /// only delays learning that neighbour until its next miss.
    fn note(&self, dst: IpAddr) {
        if let Ok(mut v) = self.0.try_lock() {
            if v.len() < MAX_MISSES && !v.contains(&dst) {
                v.push(dst);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.lock().unwrap().is_empty()
    }

    pub fn take(&self) -> Vec<IpAddr> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Where `Pass` frames go.
#[derive(Clone)]
pub enum KernelPath {
    /// Into the stack of the namespace the sockets were opened in.
    Raw(Arc<RawSockets>),
    /// Kept for inspection (tests, fixture replays): nothing reaches a kernel.
    Capture(Arc<Mutex<Vec<Vec<u8>>>>),
}

pub struct RawSockets {
    v4: OwnedFd,
    v6: OwnedFd,
    pub misses: Arc<Misses>,
}

fn raw_socket(family: i32) -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context(format!(
            "opening the kernel exception path (raw {} socket; needs CAP_NET_RAW)",
            if family == libc::AF_INET { "IPv4" } else { "IPv6" }
        ));
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl RawSockets {
    /// Opens the sockets in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        Ok(RawSockets {
            v4: raw_socket(libc::AF_INET)?,
            v6: raw_socket(libc::AF_INET6)?,
            misses: Arc::new(Misses::default()),
        })
    }
}

impl KernelPath {
    pub fn raw() -> Result<Self> {
        Ok(KernelPath::Raw(Arc::new(RawSockets::open()?)))
    }

    pub fn capture() -> (Self, Arc<Mutex<Vec<Vec<u8>>>>) {
        let frames = Arc::new(Mutex::new(Vec::new()));
        (KernelPath::Capture(frames.clone()), frames)
    }

    /// Hands one Ethernet frame to the kernel; `false` if it could not be.
    pub fn send(&self, frame: &[u8]) -> bool {
        match self {
            KernelPath::Capture(v) => {
                v.lock().unwrap().push(frame.to_vec());
                true
            }
            KernelPath::Raw(s) => {
                let Some((datagram, dst)) = datagram(frame) else { return false };
                s.misses.note(dst);
                let rc = match dst {
                    IpAddr::V4(a) => {
                        let sa = libc::sockaddr_in {
                            sin_family: libc::AF_INET as u16,
                            sin_port: 0,
                            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.octets()) },
                            sin_zero: [0; 8],
                        };
                        sendto(s.v4.as_raw_fd(), datagram, &sa)
                    }
                    IpAddr::V6(a) => {
                        let sa = libc::sockaddr_in6 {
                            sin6_family: libc::AF_INET6 as u16,
                            sin6_port: 0,
                            sin6_flowinfo: 0,
                            sin6_addr: libc::in6_addr { s6_addr: a.octets() },
                            sin6_scope_id: 0,
                        };
                        sendto(s.v6.as_raw_fd(), datagram, &sa)
                    }
                };
                rc >= 0
            }
        }
    }
}

fn sendto<A>(fd: i32, datagram: &[u8], addr: &A) -> isize {
    // SAFETY: `datagram` and `addr` are valid for the lengths passed; non-blocking.
    unsafe {
        libc::sendto(
            fd,
            datagram.as_ptr().cast(),
            datagram.len(),
            libc::MSG_DONTWAIT,
            (addr as *const A).cast(),
            std::mem::size_of::<A>() as u32,
        )
    }
}

/// The IP datagram inside an Ethernet frame (at most one VLAN tag, padding cut off by
/// the IP length) and its destination.
pub fn datagram(frame: &[u8]) -> Option<(&[u8], IpAddr)> {
    let mut l3 = 14;
    let mut ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    if ethertype == 0x8100 || ethertype == 0x88a8 {
        ethertype = u16::from_be_bytes(frame.get(16..18)?.try_into().ok()?);
        l3 = 18;
    }
    let ip = frame.get(l3..)?;
    match ethertype {
        0x0800 if ip.len() >= 20 => {
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            Some((&ip[..total.clamp(20, ip.len())], IpAddr::V4(dst)))
        }
        0x86dd if ip.len() >= 40 => {
            let total = 40 + u16::from_be_bytes([ip[4], ip[5]]) as usize;
            let dst: [u8; 16] = ip[24..40].try_into().ok()?;
            Some((&ip[..total.min(ip.len())], IpAddr::V6(Ipv6Addr::from(dst))))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_cuts_ethernet_padding_and_finds_the_destination() {
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&28u16.to_be_bytes());
        f[30..34].copy_from_slice(&[192, 0, 2, 10]);
        let (d, dst) = datagram(&f).unwrap();
        assert_eq!(d.len(), 28);
        assert_eq!(dst, "192.0.2.10".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn non_ip_frames_have_no_datagram() {
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(datagram(&f).is_none());
    }
}
