//! `vipr trace` against the fixture table: for the first packet of every flow in every
//! case (before the case reprograms anything), the backend trace names is where the
//! userspace pipeline actually sent the packet, and a drop or pass is one there too.

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use vipr::simulate::trace_tables;
use vipr_abi::{drop, PROTO_TCP, PROTO_UDP};
use vipr_dataplane::pipeline::Verdict;
use vipr_dataplane::tables::Compiler;
use vipr_fixtures::cases::{cases, Step};

/// Source, destination and protocol of a well-formed TCP or UDP frame.
fn flow_of(frame: &[u8]) -> Option<(SocketAddr, SocketAddr, u8)> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    // vipr reads one VLAN tag at most; a QinQ frame is not a flow to it.
    if matches!(p.vlan, Some(etherparse::VlanSlice::DoubleVlan(_))) {
        return None;
    }
    let (src, dst): (IpAddr, IpAddr) = match p.net? {
        NetSlice::Ipv4(v4) => {
            if v4.header().is_fragmenting_payload() {
                return None;
            }
            (v4.header().source_addr().into(), v4.header().destination_addr().into())
        }
        NetSlice::Ipv6(v6) => {
            (v6.header().source_addr().into(), v6.header().destination_addr().into())
        }
    };
    let (sp, dp, proto) = match p.transport? {
        TransportSlice::Tcp(t) => (t.source_port(), t.destination_port(), PROTO_TCP),
        TransportSlice::Udp(u) => (u.source_port(), u.destination_port(), PROTO_UDP),
        _ => return None,
    };
    Some((SocketAddr::new(src, sp), SocketAddr::new(dst, dp), proto))
}

#[test]
fn trace_agrees_with_where_the_fixture_flows_go() {
    let mut forwards = 0;
    let mut others = 0;
    for case in cases() {
        let Ok(tables) = Compiler::default().compile(&case.state) else { continue };
        let mut seen = HashSet::new();
        for step in &case.steps {
            let Step::Packet { input, verdict, output, .. } = step else { break };
            let Some((src, dst, proto)) = flow_of(input) else { continue };
            // Only a flow's first packet goes by the ring; later ones by the conntrack,
            // and a reply's source is a backend.
            if !seen.insert((src, dst, proto)) || seen.contains(&(dst, src, proto)) {
                continue;
            }
            if tables
                .backends
                .iter()
                .any(|b| b.family != 0 && vipr_abi::ip_of(&b.addr, b.family) == src.ip())
            {
                continue;
            }
            let t = trace_tables(&tables, src, dst, proto).unwrap();
            let what = format!("case {:?}, flow {}", case.name, t.flow);
            match verdict {
                Verdict::Tx | Verdict::Redirect { .. } if t.verdict == "forward" => {
                    let (_, to, _) = flow_of(output).expect("a forwarded frame parses");
                    assert_eq!(
                        t.backend.as_deref(),
                        Some(to.to_string().as_str()),
                        "{what}: {}",
                        t.why
                    );
                    forwards += 1;
                }
                Verdict::Drop { reason: drop::NO_BACKEND | drop::SOURCE_DENIED } => {
                    assert!(
                        t.verdict.starts_with("drop"),
                        "{what}: trace says {} ({})",
                        t.verdict,
                        t.why
                    );
                    others += 1;
                }
                // Packet-level drops (shape, TTL, fragments, ports): not a question of
                // which backend the flow gets.
                Verdict::Drop { .. } => {}
                Verdict::Pass if t.vip.is_none() => others += 1,
                Verdict::Pass => {
                    // A VIP flow passed: translated without a known next hop.
                    assert_eq!(t.verdict, "forward", "{what}");
                    let (_, to, _) = flow_of(output).expect("a translated frame parses");
                    assert_eq!(t.backend.as_deref(), Some(to.to_string().as_str()), "{what}");
                    forwards += 1;
                }
                v => {
                    panic!("{what}: the pipeline said {v:?}, trace says {} ({})", t.verdict, t.why)
                }
            }
        }
    }
    println!("compared {forwards} forwarded flows and {others} drops or passes");
    // The table has dozens of VIP flows; comparing a handful would prove little.
    assert!(forwards >= 20, "only {forwards} forwarded flows compared");
    assert!(others >= 3, "only {others} drops or passes compared");
}
