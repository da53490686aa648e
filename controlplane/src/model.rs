//! The desired state: a pure function of the inputs (here the appliance config; the
//! Kubernetes and manifests sources produce the same `DesiredState`).

use std::time::Duration;
use vipr_abi::{Settings, PROTO_TCP, PROTO_UDP};
use vipr_config::{BackendState, Config, Mode, Protocol};
use vipr_dataplane::tables::{BackendSpec, DesiredState, VipSpec};

/// The desired tables of a validated config. Validation guarantees every `snat` VIP has
/// an SNAT address of its family.
pub fn from_config(cfg: &Config) -> DesiredState {
    DesiredState {
        settings: settings(cfg),
        vips: cfg.vips.iter().map(|v| vip(cfg, v)).collect(),
        next_hops: vec![],
    }
}

fn vip(cfg: &Config, v: &vipr_config::Vip) -> VipSpec {
    let snat_addr = match v.mode {
        Mode::Dnat => None,
        // Spread VIPs over the SNAT addresses of their family, by their port, so one
        // address's port space is not the limit of all snat VIPs.
        Mode::Snat => {
            let same: Vec<_> =
                cfg.snat.addresses.iter().filter(|a| a.is_ipv4() == v.address.is_ipv4()).collect();
            (!same.is_empty()).then(|| *same[v.port as usize % same.len()])
        }
    };
    VipSpec {
        addr: v.address,
        port: v.port,
        proto: match v.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        },
        snat_addr,
        affinity_timeout_s: v
            .affinity_timeout
            .map(|d| d.as_secs().clamp(1, u32::MAX as u64) as u32),
        source_ranges: v.source_ranges.clone(),
        ring_max: v.ring_max,
        backends: v
            .backends
            .iter()
            .map(|b| BackendSpec {
                addr: b.address,
                port: b.port,
                weight: b.weight,
                draining: b.state == BackendState::Draining,
            })
            .collect(),
    }
}

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

pub fn settings(cfg: &Config) -> Settings {
    let c = &cfg.conntrack;
    Settings {
        tcp_syn_timeout_ns: ns(c.tcp_syn),
        tcp_established_timeout_ns: ns(c.tcp_established),
        tcp_closing_timeout_ns: ns(c.tcp_closing),
        udp_timeout_ns: ns(c.udp),
        snat_port_min: cfg.snat.port_min,
        snat_port_max: cfg.snat.port_max,
        flags: 0,
        fixed_now_ns: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
snat:
  addresses: [192.0.2.2, 192.0.2.3, "2001:db8:b::2"]
  ports: 2000-3000
conntrack:
  timeouts: { tcp_syn: 5s, udp: 1m }
vips:
  - address: 192.0.2.10
    port: 8088
    mode: snat
    session_affinity: { client_ip: { timeout: 1h } }
    backends:
      - { address: 192.0.2.21, port: 8080, weight: 3 }
      - { address: 192.0.2.22, port: 8080, state: draining }
  - address: "2001:db8:f::10"
    port: 53
    protocol: udp
    mode: snat
    backends: [{ address: "2001:db8:b::21", port: 53 }]
"#;

    #[test]
    fn config_maps_to_desired_vips_with_modes_affinity_and_weights() {
        let cfg = vipr_config::parse("t.yaml", CFG).unwrap();
        let d = from_config(&cfg);
        assert_eq!(d.vips.len(), 2);
        let v = &d.vips[0];
        assert_eq!(v.snat_addr, Some("192.0.2.2".parse().unwrap()));
        assert_eq!(v.affinity_timeout_s, Some(3600));
        assert_eq!(v.backends[0].weight, 3);
        assert!(v.backends[1].draining);
        assert_eq!(d.vips[1].proto, PROTO_UDP);
        assert_eq!(
            d.vips[1].snat_addr,
            Some("2001:db8:b::2".parse().unwrap()),
            "snat address of the vip's family"
        );
        assert_eq!(d.settings.tcp_syn_timeout_ns, 5_000_000_000);
        assert_eq!(d.settings.udp_timeout_ns, 60_000_000_000);
        assert_eq!((d.settings.snat_port_min, d.settings.snat_port_max), (2000, 3000));
    }

    #[test]
    fn the_tutorial_example_compiles_into_tables() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/examples/tutorial.yaml");
        let cfg = vipr_config::load(std::path::Path::new(path)).unwrap();
        let t = vipr_dataplane::tables::Compiler::default().compile(&from_config(&cfg)).unwrap();
        assert_eq!(t.vips.len(), 1);
        let vip = t.vips.values().next().unwrap();
        assert_eq!(vip.ring_size(), 401, "smallest prime >= 100 x 4 backends");
    }
}
