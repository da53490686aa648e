//! What `vipr status`, `vipr vips`, `vipr backends` and `vipr conntrack` show, built
//! from a dataplane [`Snapshot`], and how they print. The agent serves these over its
//! admin socket; `--offline` builds them from the pinned maps alone.

use crate::dataplane::{Flow, QueueStatus, Snapshot};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use vipr_abi::*;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub instance: String,
    pub dataplane: String,
    pub attach_mode: String,
    pub pinned_at: Option<String>,
    /// Tables programmed from every configured source at least once.
    pub ready: bool,
    pub sources: Vec<String>,
    pub vips: Vec<VipStatus>,
    pub verdicts: Vec<(String, u64)>,
    pub drops: Vec<(String, u64)>,
    pub conntrack: ConntrackStatus,
    pub queues: Vec<QueueStatus>,
    /// Event (or file change) to programmed, since the agent started.
    pub programming: Option<LatencyStatus>,
    pub reconcile_errors: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VipStatus {
    pub vip: String,
    pub protocol: String,
    pub mode: String,
    pub ring_size: u32,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BackendStatus {
    pub backend: String,
    pub state: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConntrackStatus {
    pub flows: usize,
    pub entries: usize,
    pub capacity_entries: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LatencyStatus {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowStatus {
    pub client: String,
    pub vip: String,
    pub protocol: String,
    pub backend: String,
    /// Where the packets leave for: the backend, from the snat address when there is one.
    pub nat: String,
    pub tcp_state: String,
    pub idle_s: f64,
}

pub fn endpoint(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        _ => "other",
    }
}

/// The VIPs and backends of a snapshot, sorted by address, port, protocol.
pub fn vips(s: &Snapshot) -> Vec<VipStatus> {
    let mut vips = s.vips.clone();
    vips.sort_by_key(|(k, _, _)| (k.family, k.addr, u16::from_be(k.port), k.proto));
    vips.into_iter()
        .map(|(key, info, ring_size)| {
            let stats = s.counters.vip(info.vip_id);
            VipStatus {
                vip: endpoint(ip_of(&key.addr, key.family), u16::from_be(key.port)),
                protocol: proto_name(key.proto).into(),
                mode: if info.flags & VIP_F_SNAT != 0 { "snat" } else { "dnat" }.into(),
                ring_size,
                packets: stats.packets,
                bytes: stats.bytes,
                new_flows: stats.new_flows,
                backends: s
                    .backends
                    .iter()
                    .filter(|(_, b)| b.vip_id == info.vip_id)
                    .map(|(id, b)| {
                        let st = s.counters.backend(*id);
                        BackendStatus {
                            backend: endpoint(ip_of(&b.addr, b.family), u16::from_be(b.port)),
                            state: if b.flags & BACKEND_F_DRAINING != 0 {
                                "draining"
                            } else {
                                "active"
                            }
                            .into(),
                            packets: st.packets,
                            bytes: st.bytes,
                            new_flows: st.new_flows,
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Everything but the agent's own fields (ready, sources, latency), which it adds.
pub fn from_snapshot(instance: &str, kind: &str, attach_mode: &str, s: &Snapshot) -> Status {
    Status {
        instance: instance.to_owned(),
        dataplane: kind.to_owned(),
        attach_mode: attach_mode.to_owned(),
        vips: vips(s),
        verdicts: VERDICT_NAMES
            .iter()
            .zip(s.counters.verdicts)
            .map(|(n, v)| (n.to_string(), v))
            .collect(),
        drops: drop::NAMES.iter().zip(s.counters.drops).map(|(n, v)| (n.to_string(), v)).collect(),
        conntrack: ConntrackStatus {
            flows: s.conntrack_flows,
            entries: s.conntrack_entries,
            capacity_entries: s.conntrack_capacity,
        },
        queues: s.queues.clone(),
        ..Status::default()
    }
}

const TCP_STATES: [&str; 4] = ["none", "syn", "established", "closing"];

/// The flows of `flows` (optionally only those of VIP `vip`, as `ip:port`), with the
/// VIP and backend they map to; `now_ns` is the monotonic clock the entries were
/// stamped with.
pub fn flows(s: &Snapshot, flows: &[Flow], vip: Option<&str>, now_ns: u64) -> Vec<FlowStatus> {
    let mut out: Vec<FlowStatus> = flows
        .iter()
        .filter_map(|f| {
            let (key, _, _) = s.vips.iter().find(|(_, i, _)| i.vip_id == f.entry.vip_id)?;
            let vip_text = endpoint(ip_of(&key.addr, key.family), u16::from_be(key.port));
            if vip.is_some_and(|v| v != vip_text) {
                return None;
            }
            let backend = s
                .backends
                .iter()
                .find(|(id, _)| *id == f.entry.backend_id)
                .map(|(_, b)| endpoint(ip_of(&b.addr, b.family), u16::from_be(b.port)))
                .unwrap_or_else(|| format!("backend #{} (removed)", f.entry.backend_id));
            let k = &f.key;
            let e = &f.entry;
            Some(FlowStatus {
                client: endpoint(ip_of(&k.src, k.family), u16::from_be(k.src_port)),
                vip: vip_text,
                protocol: proto_name(k.proto).into(),
                backend,
                nat: format!(
                    "{} -> {}",
                    endpoint(ip_of(&e.nat_src, k.family), u16::from_be(e.nat_src_port)),
                    endpoint(ip_of(&e.nat_dst, k.family), u16::from_be(e.nat_dst_port)),
                ),
                tcp_state: if k.proto == PROTO_TCP {
                    TCP_STATES.get(e.tcp_state as usize).copied().unwrap_or("?").into()
                } else {
                    "-".into()
                },
                idle_s: now_ns.saturating_sub(e.last_seen_ns) as f64 / 1e9,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.vip, &a.client).cmp(&(&b.vip, &b.client)));
    out
}

pub fn print_status(s: &Status) {
    let pinned = s.pinned_at.as_deref().map(|p| format!(", pinned at {p}")).unwrap_or_default();
    println!(
        "instance {} ({} dataplane, {}{pinned}){}",
        s.instance,
        s.dataplane,
        s.attach_mode,
        if s.ready { "" } else { " NOT READY" }
    );
    if !s.sources.is_empty() {
        println!("sources    {}", s.sources.join(", "));
    }
    println!();
    print_vips(&s.vips);
    println!();
    let show = |pairs: &[(String, u64)]| {
        pairs.iter().map(|(n, v)| format!("{n} {v}")).collect::<Vec<_>>().join(", ")
    };
    println!("verdicts   {}", show(&s.verdicts));
    let drops: Vec<(String, u64)> = s.drops.iter().filter(|(_, v)| *v > 0).cloned().collect();
    println!("drops      {}", if drops.is_empty() { "none".to_string() } else { show(&drops) });
    println!(
        "conntrack  {} flows ({} entries of {})",
        s.conntrack.flows, s.conntrack.entries, s.conntrack.capacity_entries
    );
    if let Some(l) = &s.programming {
        println!(
            "programming  {} updates, event to programmed p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            l.count, l.p50_ms, l.p99_ms, l.max_ms
        );
    }
    if s.reconcile_errors > 0 {
        println!("reconcile errors  {}", s.reconcile_errors);
    }
    for q in &s.queues {
        println!(
            "queue {}:{}  rx {} tx {} drops {} busy {:.0}%",
            q.interface,
            q.queue,
            q.rx,
            q.tx,
            q.drops,
            q.busy * 100.0
        );
    }
}

pub fn print_vips(vips: &[VipStatus]) {
    println!(
        "{:<40} {:<5} {:<5} {:>7} {:>12} {:>14} {:>10}",
        "VIP / BACKEND", "PROTO", "MODE", "RING", "PACKETS", "BYTES", "NEW FLOWS"
    );
    for v in vips {
        println!(
            "{:<40} {:<5} {:<5} {:>7} {:>12} {:>14} {:>10}",
            v.vip, v.protocol, v.mode, v.ring_size, v.packets, v.bytes, v.new_flows
        );
        for b in &v.backends {
            println!(
                "  {:<38} {:<11} {:>7} {:>12} {:>14} {:>10}",
                b.backend, b.state, "", b.packets, b.bytes, b.new_flows
            );
        }
    }
}

pub fn print_flows(flows: &[FlowStatus]) {
    println!(
        "{:<44} {:<30} {:<5} {:<30} {:<12} {:>8}",
        "CLIENT", "VIP", "PROTO", "BACKEND", "TCP", "IDLE s"
    );
    for f in flows {
        println!(
            "{:<44} {:<30} {:<5} {:<30} {:<12} {:>8.1}",
            f.client, f.vip, f.protocol, f.backend, f.tcp_state, f.idle_s
        );
    }
}
