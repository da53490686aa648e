//! `vipr simulate` and `vipr trace`: the config's tables in the userspace pipeline, fed
//! synthetic flows (simulate) or one flow (trace), without touching any interface.

use crate::model;
use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use vipr_abi::*;
use vipr_config::Config;
use vipr_dataplane::pipeline::{choose_backend, flow_key, Pipeline, SharedTables, Verdict};
use vipr_dataplane::tables::{Compiler, Tables};
use vipr_fixtures::frame::{Pkt, TCP_SYN};

#[derive(Serialize)]
pub struct BackendShare {
    pub backend: String,
    pub weight: u32,
    pub draining: bool,
    pub ring_slots: u64,
    pub flows: u64,
}

#[derive(Serialize)]
pub struct VipReport {
    pub vip: String,
    pub mode: &'static str,
    pub ring_size: u32,
    pub flows: u64,
    pub dropped: u64,
    pub backends: Vec<BackendShare>,
}

fn compile(cfg: &Config) -> Result<Tables> {
    Compiler::default()
        .compile(&model::from_config(cfg))
        .context("compiling the config into tables")
}

fn proto_name(p: u8) -> &'static str {
    if p == PROTO_TCP {
        "tcp"
    } else {
        "udp"
    }
}

/// Sends `flows` new flows from `clients` to every VIP of `cfg` through the userspace
/// pipeline and reports where they went, next to each backend's share of the ring.
pub fn simulate(cfg: &Config, flows: usize, clients: IpNet) -> Result<Vec<VipReport>> {
    let tables = compile(cfg)?;
    let mut reports = Vec::new();
    for spec in model::from_config(cfg).vips {
        if clients.addr().is_ipv4() != spec.addr.is_ipv4() {
            continue;
        }
        let shared = SharedTables::new(tables.clone());
        let mut pipeline = Pipeline::new(&shared, flows.max(1));
        let hosts: Vec<IpAddr> = clients.hosts().take(65_536).collect();
        let mut dropped = 0;
        for i in 0..flows {
            let client = hosts[i % hosts.len()];
            let port = 1024 + ((i / hosts.len()) * 7919 + i) % 64_000;
            let pkt = if spec.proto == PROTO_TCP {
                Pkt::tcp(
                    &client.to_string(),
                    port as u16,
                    &spec.addr.to_string(),
                    spec.port,
                    TCP_SYN,
                )
            } else {
                Pkt::udp(&client.to_string(), port as u16, &spec.addr.to_string(), spec.port)
            };
            let mut frame = pkt.frame();
            if let Verdict::Drop { .. } = pipeline.process(&mut frame, 1, 1_000_000_000) {
                dropped += 1;
            }
        }
        let vip = &tables.vips[&spec.key()];
        let mut backends = Vec::new();
        for (id, b) in tables.backends.iter().enumerate() {
            if b.family == 0 || b.vip_id != vip.info.vip_id {
                continue;
            }
            let weight = spec
                .backends
                .iter()
                .find(|s| addr_of(s.addr).0 == b.addr && s.port == u16::from_be(b.port))
                .map_or(0, |s| s.weight);
            backends.push(BackendShare {
                backend: SocketAddr::new(ip_of(&b.addr, b.family), u16::from_be(b.port))
                    .to_string(),
                weight,
                draining: b.flags & BACKEND_F_DRAINING != 0,
                ring_slots: vip.ring[1..].iter().filter(|&&s| s == id as u32).count() as u64,
                flows: pipeline.counters.backend(id as u32).new_flows,
            });
        }
        reports.push(VipReport {
            vip: format!("{}/{}", SocketAddr::new(spec.addr, spec.port), proto_name(spec.proto)),
            mode: if spec.snat_addr.is_some() { "snat" } else { "dnat" },
            ring_size: vip.ring_size(),
            flows: flows as u64,
            dropped,
            backends,
        });
    }
    Ok(reports)
}

pub fn print_reports(reports: &[VipReport]) {
    for r in reports {
        println!(
            "VIP {}  mode {}  Maglev ring {} slots  {} backends  {} flows{}",
            r.vip,
            r.mode,
            r.ring_size,
            r.backends.len(),
            r.flows,
            if r.dropped > 0 {
                format!("  ({} dropped: no backend)", r.dropped)
            } else {
                String::new()
            }
        );
        println!("  {:<40} {:>6} {:>12} {:>14}", "backend", "weight", "ring share", "flows");
        for b in &r.backends {
            let slot_share = 100.0 * b.ring_slots as f64 / r.ring_size as f64;
            let flow_share = 100.0 * b.flows as f64 / r.flows.max(1) as f64;
            let bar = "#".repeat((flow_share / 2.0).round() as usize);
            println!(
                "  {:<40} {:>6} {:>11.1}% {:>6} {:>6.1}%  {}{}",
                b.backend,
                b.weight,
                slot_share,
                b.flows,
                flow_share,
                bar,
                if b.draining { " (draining: keeps its flows, takes no new ones)" } else { "" }
            );
        }
        println!();
    }
}

#[derive(Serialize, serde::Deserialize)]
pub struct Trace {
    pub flow: String,
    pub vip: Option<String>,
    pub verdict: String,
    pub backend: Option<String>,
    pub hash: Option<String>,
    pub ring_slot: Option<u32>,
    pub ring_size: Option<u32>,
    pub why: String,
    /// The agent found the flow in its conntrack (the backend is the tracked one).
    #[serde(default)]
    pub tracked: bool,
}

/// Which backend a new flow gets, and why.
pub fn trace(cfg: &Config, src: SocketAddr, dst: SocketAddr, proto: u8) -> Result<Trace> {
    trace_tables(&compile(cfg)?, src, dst, proto)
}

/// Which backend a new flow gets from `tables`, and why.
pub fn trace_tables(tables: &Tables, src: SocketAddr, dst: SocketAddr, proto: u8) -> Result<Trace> {
    if src.is_ipv4() != dst.is_ipv4() {
        bail!("source {src} and destination {dst} are of different address families");
    }
    let key = flow_key(src.ip(), src.port(), dst.ip(), dst.port(), proto);
    let flow = format!("{src} -> {dst} {}", proto_name(proto));
    let vip_key = VipKey::new(dst.ip(), dst.port(), proto);
    let Some(vip) = tables.vip(&vip_key) else {
        let why = if tables.is_vip_addr(&vip_key.addr, vip_key.family) {
            format!(
                "{} is a VIP address, but not for port {} {}",
                dst.ip(),
                dst.port(),
                proto_name(proto)
            )
        } else {
            format!("{} is not a VIP address", dst.ip())
        };
        return Ok(Trace {
            flow,
            vip: None,
            verdict: "pass".into(),
            backend: None,
            hash: None,
            ring_slot: None,
            ring_size: None,
            why,
            tracked: false,
        });
    };
    if vip.info.flags & VIP_F_SOURCE_RANGES != 0
        && !vip.source_ranges.iter().any(|n| n.contains(&src.ip()))
    {
        return Ok(Trace {
            flow,
            vip: Some(dst.to_string()),
            verdict: "drop (source_denied)".into(),
            backend: None,
            hash: None,
            ring_slot: None,
            ring_size: Some(vip.ring_size()),
            why: format!("{} is outside the VIP's source ranges", src.ip()),
            tracked: false,
        });
    }
    let affinity = vip.info.flags & VIP_F_AFFINITY != 0;
    let hash = if affinity { affinity_hash(&key) } else { flow_hash(&key) };
    let slot = ring_index(hash, vip.ring_size());
    let chosen = choose_backend(tables, &key);
    let hashed = if affinity { "3-tuple (sessionAffinity ClientIP)" } else { "5-tuple" };
    Ok(Trace {
        flow,
        vip: Some(dst.to_string()),
        verdict: if chosen.is_some() { "forward".into() } else { "drop (no_backend)".into() },
        backend: chosen.map(|(_, b)| {
            SocketAddr::new(ip_of(&b.addr, b.family), u16::from_be(b.port)).to_string()
        }),
        hash: Some(format!("{hash:#010x}")),
        ring_slot: Some(slot),
        ring_size: Some(vip.ring_size()),
        why: match chosen {
            Some(_) => format!(
                "{hashed} hash {hash:#010x} maps to slot {slot} of {}; the slot holds this backend",
                vip.ring_size()
            ),
            None => "the VIP has no active backend".into(),
        },
        tracked: false,
    })
}
