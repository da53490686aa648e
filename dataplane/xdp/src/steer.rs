//! The AF_XDP steering program (`vipr_steer`): loads it, attaches it to the engine's
//! interfaces, registers the engine's sockets in its XSKMAP, and keeps its match table
//! equal to what a table snapshot needs (`steer_keys`).
//!
//! It loads the same object as the load balancer with the load balancer's maps at
//! their smallest (they are unused here). Attachments are not pinned: they end with the
//! `Steering` value, that is with the engine, and frames then go to the kernel again.

use crate::loader::{verifier_error, OBJECT};
use crate::{map_err, AttachMode, Error, Result};
use aya::maps::{Array, HashMap, MapData, XskMap};
use aya::Ebpf;
use std::collections::HashMap as StdHashMap;
use std::os::fd::AsRawFd;
use vipr_abi::maps as names;
use vipr_abi::steer::*;
use vipr_abi::{PROTO_ICMP, VIP_F_SNAT};
use vipr_dataplane::tables::Tables;

pub struct Steering {
    ebpf: Ebpf,
    xsks: XskMap<MapData>,
    ifaces: HashMap<MapData, u32, u32>,
    keys: HashMap<MapData, SteerKey, u32>,
    config: Array<MapData, SteerConfig>,
    /// What `keys` holds, so an update writes only the difference.
    programmed: StdHashMap<SteerKey, u32>,
    next_slot: u32,
}

impl Steering {
    pub fn load() -> Result<Self> {
        let mut loader = crate::loader::loader_with_small_lb_maps();
        let mut ebpf = loader.load(OBJECT).map_err(|source| Error::Load { source })?;
        for name in [PROG_STEER, names::PROG_PASS] {
            let prog = xdp_program(&mut ebpf, name)?;
            prog.load().map_err(|source| verifier_error(name, source))?;
        }
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(Error::MissingMap { map: name });
        let xsks = XskMap::try_from(take(STEER_XSKS)?).map_err(map_err(STEER_XSKS))?;
        let ifaces = HashMap::try_from(take(STEER_IFACES)?).map_err(map_err(STEER_IFACES))?;
        let keys = HashMap::try_from(take(STEER_KEYS)?).map_err(map_err(STEER_KEYS))?;
        let config = Array::try_from(take(STEER_CONFIG)?).map_err(map_err(STEER_CONFIG))?;
        Ok(Steering {
            ebpf,
            xsks,
            ifaces,
            keys,
            config,
            programmed: StdHashMap::new(),
            next_slot: 0,
        })
    }

    /// Attaches the steering program to `interface`; detached when `self` is dropped.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<()> {
        self.attach_program(PROG_STEER, interface, mode)
    }

    /// Attaches a bare XDP_PASS program (test peers of veth pairs).
    pub fn attach_pass(&mut self, interface: &str, mode: AttachMode) -> Result<()> {
        self.attach_program(names::PROG_PASS, interface, mode)
    }

    fn attach_program(
        &mut self,
        name: &'static str,
        interface: &str,
        mode: AttachMode,
    ) -> Result<()> {
        let prog = xdp_program(&mut self.ebpf, name)?;
        prog.attach(interface, mode.xdp_mode()).map_err(|source| Error::Attach {
            interface: interface.to_string(),
            mode,
            source,
        })?;
        Ok(())
    }

    /// Reserves `queues` consecutive XSKMAP slots for port `ifindex`; queue q of the
    /// port uses slot `base + q`. Returns `base`.
    pub fn add_port(&mut self, ifindex: u32, queues: u32) -> Result<u32> {
        if let Ok(base) = self.ifaces.get(&ifindex, 0) {
            return Ok(base);
        }
        let base = self.next_slot;
        if base + queues > STEER_MAX_SLOTS {
            return Err(Error::TooSmall {
                what: "AF_XDP socket",
                map: STEER_XSKS,
                needed: (base + queues) as usize,
                limit: STEER_MAX_SLOTS,
            });
        }
        self.ifaces.insert(ifindex, base, 0).map_err(map_err(STEER_IFACES))?;
        self.next_slot += queues;
        Ok(base)
    }

    /// Steers frames of queue `queue_id` of port `ifindex` to `socket`.
    pub fn set_socket(&mut self, ifindex: u32, queue_id: u32, socket: impl AsRawFd) -> Result<()> {
        let base = self.ifaces.get(&ifindex, 0).map_err(map_err(STEER_IFACES))?;
        self.xsks.set(base + queue_id, socket.as_raw_fd(), 0).map_err(map_err(STEER_XSKS))
    }

    /// Every frame to the sockets (`true`), or only what the match table names.
    pub fn set_redirect_all(&mut self, all: bool) -> Result<()> {
        let c = SteerConfig { redirect_all: all as u32 };
        self.config.set(0, c, 0).map_err(map_err(STEER_CONFIG))
    }

    /// Makes the match table equal to `want`, writing only the difference.
    pub fn set_keys(&mut self, want: &StdHashMap<SteerKey, u32>) -> Result<()> {
        if want.len() > STEER_MAX_KEYS as usize {
            return Err(Error::TooSmall {
                what: "steering",
                map: STEER_KEYS,
                needed: want.len(),
                limit: STEER_MAX_KEYS,
            });
        }
        let stale: Vec<SteerKey> =
            self.programmed.keys().filter(|k| !want.contains_key(k)).copied().collect();
        for k in stale {
            self.keys.remove(&k).map_err(map_err(STEER_KEYS))?;
            self.programmed.remove(&k);
        }
        for (k, flags) in want {
            if self.programmed.get(k) != Some(flags) {
                self.keys.insert(k, flags, 0).map_err(map_err(STEER_KEYS))?;
                self.programmed.insert(*k, *flags);
            }
        }
        Ok(())
    }
}

/// What the steering program must match for `t`: every VIP (destination), every
/// backend (source: `dnat` replies), every SNAT address (any port: `snat` replies),
/// and for ICMP errors the VIP, backend and SNAT addresses.
pub fn steer_keys(t: &Tables) -> StdHashMap<SteerKey, u32> {
    let mut keys = StdHashMap::new();
    let mut add = |k: SteerKey, flag: u32| *keys.entry(k).or_insert(0) |= flag;
    let addr_key = |addr: [u8; 16], family: u8| SteerKey { addr, port: 0, proto: 0, family };
    let mut proto_of = StdHashMap::new();
    for v in t.vips.values() {
        let k = v.key;
        proto_of.insert(v.info.vip_id, k.proto);
        add(SteerKey { addr: k.addr, port: k.port, proto: k.proto, family: k.family }, STEER_VIP);
        add(addr_key(k.addr, k.family), STEER_ICMP_ERRORS);
        if v.info.flags & VIP_F_SNAT != 0 {
            add(addr_key(v.info.snat_addr, k.family), STEER_ANY_PORT | STEER_ICMP_ERRORS);
        }
    }
    for b in t.backends.iter().filter(|b| b.family != 0) {
        // An orphan backend (its VIP gone) is not served: ICMP is the placeholder that
        // the steering program never looks up with a port.
        let proto = proto_of.get(&b.vip_id).copied().unwrap_or(PROTO_ICMP);
        add(SteerKey { addr: b.addr, port: b.port, proto, family: b.family }, STEER_BACKEND);
        add(addr_key(b.addr, b.family), STEER_ICMP_ERRORS);
    }
    keys
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut aya::programs::Xdp> {
    ebpf.program_mut(name)
        .ok_or(Error::MissingProgram { program: name })?
        .try_into()
        .map_err(|source| Error::Program { program: name, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vipr_abi::{addr_of, PROTO_TCP};
    use vipr_dataplane::tables::{BackendSpec, Compiler, DesiredState, VipSpec};

    fn key(ip: &str, port: u16, proto: u8) -> SteerKey {
        let (addr, family) = addr_of(ip.parse().unwrap());
        SteerKey { addr, port: port.to_be(), proto, family }
    }

    #[test]
    fn steer_keys_name_vips_backends_and_snat_addresses() {
        let backend = |ip: &str| BackendSpec {
            addr: ip.parse().unwrap(),
            port: 8080,
            weight: 1,
            draining: false,
        };
        let vip = |snat: Option<&str>| VipSpec {
            addr: "192.0.2.10".parse().unwrap(),
            port: 80,
            proto: PROTO_TCP,
            snat_addr: snat.map(|s| s.parse().unwrap()),
            affinity_timeout_s: None,
            source_ranges: vec![],
            ring_max: 65_537,
            backends: vec![backend("198.51.100.5"), backend("198.51.100.6")],
        };
        let mut snat = vip(Some("192.0.2.2"));
        snat.port = 81;
        let desired = DesiredState { vips: vec![vip(None), snat], ..Default::default() };
        let t = Compiler::default().compile(&desired).unwrap();
        let keys = steer_keys(&t);
        assert_eq!(keys[&key("192.0.2.10", 80, PROTO_TCP)], STEER_VIP);
        assert_eq!(keys[&key("192.0.2.10", 81, PROTO_TCP)], STEER_VIP);
        assert_eq!(keys[&key("198.51.100.5", 8080, PROTO_TCP)], STEER_BACKEND);
        assert_eq!(keys[&key("192.0.2.2", 0, 0)], STEER_ANY_PORT | STEER_ICMP_ERRORS);
        assert_eq!(keys[&key("192.0.2.10", 0, 0)], STEER_ICMP_ERRORS);
        assert_eq!(keys[&key("198.51.100.6", 0, 0)], STEER_ICMP_ERRORS);
        // Nothing else: host traffic of other addresses and ports is never steered.
        assert_eq!(keys.len(), 8, "{keys:?}");
    }
}
