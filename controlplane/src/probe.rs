//! The two ends of demo and test traffic: `vipr backend`, a tiny HTTP/1.0 + UDP server
//! that answers with its name and the address it sees the client at, and `vipr probe`,
//! a client that opens real connections to a VIP and counts who answered.
//!
//! `GET /stream?seconds=S` streams for S seconds instead, then ends cleanly: the long
//! transfer that must survive an agent restart.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// Serves until killed. Listens on `[::]` (IPv4 and IPv6).
pub fn backend(name: &str, port: u16) -> Result<()> {
    let listener =
        TcpListener::bind(("::", port)).with_context(|| format!("listening on TCP port {port}"))?;
    let udp =
        UdpSocket::bind(("::", port)).with_context(|| format!("listening on UDP port {port}"))?;
    let udp_name = name.to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, peer)) = udp.recv_from(&mut buf) {
            let _ =
                udp.send_to(format!("{udp_name} {}\n", peer.ip().to_canonical()).as_bytes(), peer);
        }
    });
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let name = name.to_string();
        std::thread::spawn(move || {
            let _ = serve(conn, &name);
        });
    }
    Ok(())
}

fn serve(mut conn: TcpStream, name: &str) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let peer = conn.peer_addr()?.ip().to_canonical();
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&req);
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    if let Some(secs) = path.strip_prefix("/stream?seconds=").and_then(|s| s.parse::<u64>().ok()) {
        conn.write_all(b"HTTP/1.0 200 OK\r\ncontent-type: application/octet-stream\r\n\r\n")?;
        let chunk = [b'x'; 16 * 1024];
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            conn.write_all(&chunk)?;
            std::thread::sleep(Duration::from_millis(10));
        }
        conn.write_all(format!("\nend of stream from {name}\n").as_bytes())?;
    } else {
        let body = format!("{name} {peer}\n");
        let head = format!(
            "HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes())?;
        conn.write_all(body.as_bytes())?;
    }
    Ok(())
}

/// What `vipr probe` saw.
#[derive(Debug, Default, Serialize)]
pub struct ProbeReport {
    /// Answers by backend name.
    pub backends: BTreeMap<String, u64>,
    /// Client addresses the backends reported, by how often.
    pub seen_as: BTreeMap<String, u64>,
    pub failures: u64,
    /// For `--stream`: bytes received and whether the stream ended cleanly.
    pub stream_bytes: u64,
    pub stream_complete: bool,
    pub first_error: Option<String>,
}

/// Opens `count` TCP connections (or sends `count` UDP datagrams, each from a new
/// socket unless `same_socket`: one UDP flow) to `target` and records who answered.
///
/// With `source_port_base`, connection i comes from that port + i: the flows, and so
/// the backends Maglev gives them, are the same in every run.
pub fn probe(
    target: SocketAddr,
    count: u64,
    udp: bool,
    same_socket: bool,
    source_port_base: Option<u16>,
    timeout: Duration,
) -> ProbeReport {
    let mut r = ProbeReport::default();
    let mut socket = None;
    for i in 0..count {
        let answer = if udp {
            udp_once(target, timeout, if same_socket { Some(&mut socket) } else { None })
        } else {
            let source_port = source_port_base.map(|b| b.wrapping_add(i as u16));
            http_get(target, "/", source_port, timeout)
        };
        match answer {
            Ok(text) => {
                let body = text.rsplit("\r\n\r\n").next().unwrap_or("").trim();
                let mut words = body.split_whitespace();
                *r.backends.entry(words.next().unwrap_or("?").to_string()).or_default() += 1;
                *r.seen_as.entry(words.next().unwrap_or("?").to_string()).or_default() += 1;
            }
            Err(e) => {
                r.failures += 1;
                r.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    r
}

/// Fetches `/stream?seconds=S` and reads to the end.
pub fn stream(target: SocketAddr, seconds: u64) -> ProbeReport {
    let mut r = ProbeReport::default();
    let result = (|| -> Result<(u64, bool)> {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(seconds + 20)))?;
        s.write_all(format!("GET /stream?seconds={seconds} HTTP/1.0\r\n\r\n").as_bytes())?;
        let mut total = 0u64;
        let mut tail = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 256 {
                tail.drain(..tail.len() - 256);
            }
        }
        Ok((total, String::from_utf8_lossy(&tail).contains("end of stream from")))
    })();
    match result {
        Ok((bytes, complete)) => {
            r.stream_bytes = bytes;
            r.stream_complete = complete;
        }
        Err(e) => {
            r.failures = 1;
            r.first_error = Some(format!("{e:#}"));
        }
    }
    r
}

fn http_get(
    target: SocketAddr,
    path: &str,
    source_port: Option<u16>,
    timeout: Duration,
) -> Result<String> {
    let mut s = match source_port {
        None => TcpStream::connect_timeout(&target, timeout)?,
        Some(port) => connect_from(target, port, timeout)?,
    };
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if !out.starts_with("HTTP/1.0 200") {
        bail!("unexpected answer {out:?}");
    }
    Ok(out)
}

/// A TCP connection from a chosen source port (std cannot bind before connecting).
fn connect_from(target: SocketAddr, port: u16, timeout: Duration) -> Result<TcpStream> {
    let domain = if target.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    let local: SocketAddr =
        if target.is_ipv4() { ([0, 0, 0, 0], port).into() } else { ([0u16; 8], port).into() };
    s.bind(&local.into()).with_context(|| format!("binding source port {port}"))?;
    s.connect_timeout(&target.into(), timeout)?;
    Ok(s.into())
}

fn udp_once(
    target: SocketAddr,
    timeout: Duration,
    reuse: Option<&mut Option<UdpSocket>>,
) -> Result<String> {
    let local: SocketAddr =
        if target.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let fresh;
    let s = match reuse {
        Some(slot) => {
            if slot.is_none() {
                *slot = Some(UdpSocket::bind(local)?);
            }
            slot.as_ref().unwrap()
        }
        None => {
            fresh = UdpSocket::bind(local)?;
            &fresh
        }
    };
    s.set_read_timeout(Some(timeout))?;
    s.send_to(b"who", target)?;
    let mut buf = [0u8; 512];
    let (n, _) = s.recv_from(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
