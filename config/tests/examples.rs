//! The shipped examples parse, mean what their comments say, and the public
//! API around them (`load`, defaults, durations, pools, `Serialize`) works.

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::ok;
use vipr_config::{
    load, parse, AttachMode, BackendState, Config, ConntrackConfig, DataplaneKind, Mode, Pool,
    Protocol, SnatConfig,
};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name)
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn every_example_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            if let Err(diags) = load(&path) {
                panic!("{} does not parse:\n{diags}", path.display());
            }
            seen += 1;
        }
    }
    assert!(seen >= 2, "expected tutorial.yaml and full.yaml, found {seen}");
}

#[test]
fn the_tutorial_is_one_tcp_vip_with_four_backends_on_8080() {
    let config = load(&example("tutorial.yaml")).unwrap();
    assert_eq!(config.vips.len(), 1);
    let vip = &config.vips[0];
    assert_eq!(vip.address, ip("192.0.2.10"));
    assert_eq!(vip.port, 8088);
    assert_eq!(vip.protocol, Protocol::Tcp);
    assert_eq!(vip.mode, Mode::Dnat);
    let backends: Vec<(IpAddr, u16)> = vip.backends.iter().map(|b| (b.address, b.port)).collect();
    assert_eq!(
        backends,
        [
            (ip("192.0.2.21"), 8080),
            (ip("192.0.2.22"), 8080),
            (ip("192.0.2.23"), 8080),
            (ip("192.0.2.24"), 8080),
        ]
    );
    assert!(vip.backends.iter().all(|b| b.weight == 1 && b.state == BackendState::Active));
}

#[test]
fn the_full_example_sets_every_key() {
    let config = load(&example("full.yaml")).unwrap();
    assert_eq!(config.instance, "edge1");
    assert_eq!(config.dataplane, DataplaneKind::Dpdk);
    let eth1 = &config.interfaces[0];
    assert_eq!(
        (eth1.name.as_str(), eth1.attach, &eth1.queues[..], &eth1.cores[..]),
        ("eth1", AttachMode::Native, &[0, 1][..], &[2, 3][..])
    );
    let dpdk = config.dpdk.as_ref().unwrap();
    assert_eq!(dpdk.eal_args, ["--no-huge", "--no-pci", "-m", "256"]);
    assert_eq!(dpdk.ports, ["net_af_packet0,iface=eth1"]);
    assert_eq!(dpdk.mbufs, 8191);
    assert_eq!(config.snat.addresses, [ip("198.51.100.1"), ip("2001:db8:1::1")]);
    assert_eq!(config.conntrack, ConntrackConfig::default());
    assert_eq!(config.pools.len(), 2);
    assert_eq!(config.pools[0].ranges, [(ip("203.0.113.100"), ip("203.0.113.120"))]);
    let k8s = config.kubernetes.as_ref().unwrap();
    assert_eq!(k8s.mode, vipr_config::KubernetesMode::Daemonset);
    assert_eq!(k8s.node_name.as_deref(), Some("node-a"));
    assert_eq!(k8s.api_server.as_deref(), Some("https://127.0.0.1:6443"));
    assert_eq!(k8s.token_file.as_deref(), Some(std::path::Path::new("/etc/vipr/token")));
    assert_eq!((k8s.load_balancer_class.as_str(), k8s.default_class), ("vipr.dev/lb", true));

    let web = &config.vips[0];
    assert_eq!(web.affinity_timeout, Some(Duration::from_secs(3 * 3600)));
    assert_eq!(web.source_ranges.len(), 2);
    assert_eq!(web.ring_max, 65537);
    assert_eq!(web.backends[0].weight, 2);
    assert_eq!(web.backends[2].state, BackendState::Draining);

    let v6 = &config.vips[1];
    assert_eq!(v6.address, ip("2001:db8::10"));
    assert_eq!(v6.mode, Mode::Snat);
    assert!(v6.backends.iter().all(|b| b.address.is_ipv6()));

    let dns = &config.vips[2];
    assert_eq!((dns.protocol, dns.backends.len()), (Protocol::Udp, 0));
}

#[test]
fn examples_use_only_documentation_prefixes() {
    let documentation: [ipnet::IpNet; 4] = [
        "192.0.2.0/24".parse().unwrap(),
        "198.51.100.0/24".parse().unwrap(),
        "203.0.113.0/24".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ];
    let inside = |ip: IpAddr| documentation.iter().any(|net| net.contains(&ip));
    for name in ["tutorial.yaml", "full.yaml"] {
        let config = load(&example(name)).unwrap();
        let mut all: Vec<IpAddr> = config.snat.addresses.clone();
        for pool in &config.pools {
            all.extend(pool.cidrs.iter().flat_map(|n| [n.network(), n.broadcast()]));
            all.extend(pool.ranges.iter().flat_map(|(a, b)| [*a, *b]));
        }
        for vip in &config.vips {
            all.push(vip.address);
            all.extend(vip.source_ranges.iter().flat_map(|n| [n.network(), n.broadcast()]));
            all.extend(vip.backends.iter().map(|b| b.address));
        }
        for address in all {
            assert!(inside(address), "{name}: {address} is not a documentation address");
        }
    }
}

#[test]
fn vips_know_the_line_they_start_on() {
    let config = load(&example("tutorial.yaml")).unwrap();
    let text = std::fs::read_to_string(example("tutorial.yaml")).unwrap();
    let line = text.lines().nth(config.vips[0].line - 1).unwrap();
    assert!(line.contains("- name: web"), "{line:?}");
}

// ---- load ------------------------------------------------------------------

#[test]
fn load_reports_an_unreadable_file_as_a_diagnostic_naming_it() {
    let path = Path::new("/nonexistent/vipr/config.yaml");
    let diags = load(path).unwrap_err();
    assert_eq!(diags.0.len(), 1);
    let d = &diags.0[0];
    assert_eq!((d.file.as_str(), d.line, d.column), ("/nonexistent/vipr/config.yaml", 1, 1));
    assert!(d.message.contains("cannot read config file"), "{d}");
}

#[test]
fn load_names_the_file_in_each_diagnostic() {
    let path = std::env::temp_dir().join(format!("vipr-config-test-{}.yaml", std::process::id()));
    std::fs::write(&path, "vips:\n  - address: 192.0.2.10\n    port: 0\n").unwrap();
    let result = load(&path);
    std::fs::remove_file(&path).unwrap();
    let diags = result.unwrap_err();
    assert_eq!(diags.0[0].file, path.display().to_string());
    assert!(diags.to_string().starts_with(&format!("{}:3:11: ", path.display())));
}

#[test]
fn load_rejects_a_file_that_is_not_utf8() {
    let path = std::env::temp_dir().join(format!("vipr-config-bin-{}.yaml", std::process::id()));
    std::fs::write(&path, b"instance: \xff\xfe\n").unwrap();
    let result = load(&path);
    std::fs::remove_file(&path).unwrap();
    let diags = result.unwrap_err();
    assert!(diags.0[0].message.contains("not valid UTF-8"), "{diags}");
}

// ---- defaults ----------------------------------------------------------------

#[test]
fn an_empty_file_is_the_default_config() {
    assert_eq!(ok(""), Config::default());
    assert_eq!(ok("# nothing yet\n"), Config::default());
}

#[test]
fn defaults_are_applied_to_everything_left_out() {
    let config = ok("interfaces:\n  - name: eth1\nvips:\n  - address: 192.0.2.10\n    port: 80\n    session_affinity:\n      client_ip:\n    backends:\n      - address: 192.0.2.21\n        port: 8080\n");
    assert_eq!(config.instance, "default");
    assert_eq!(config.dataplane, DataplaneKind::Xdp);
    assert_eq!(config.dpdk, None);
    assert_eq!(config.snat, SnatConfig::default());
    assert_eq!((config.snat.port_min, config.snat.port_max), (1024, 65535));
    let ct = &config.conntrack;
    assert_eq!(ct.capacity, 1_000_000);
    assert_eq!(ct.tcp_syn, Duration::from_secs(60));
    assert_eq!(ct.tcp_established, Duration::from_secs(7200));
    assert_eq!(ct.tcp_closing, Duration::from_secs(10));
    assert_eq!(ct.udp, Duration::from_secs(30));
    let eth1 = &config.interfaces[0];
    assert_eq!(eth1.attach, AttachMode::Native);
    assert_eq!(eth1.queues, [0]);
    assert!(eth1.cores.is_empty());
    let vip = &config.vips[0];
    assert_eq!(vip.name, None);
    assert_eq!(vip.protocol, Protocol::Tcp);
    assert_eq!(vip.mode, Mode::Dnat);
    assert_eq!(vip.affinity_timeout, Some(Duration::from_secs(10_800)));
    assert!(vip.source_ranges.is_empty());
    assert_eq!(vip.ring_max, 65537);
    assert_eq!(vip.backends[0].weight, 1);
    assert_eq!(vip.backends[0].state, BackendState::Active);
}

#[test]
fn a_vip_without_session_affinity_has_no_affinity_timeout() {
    let config = ok(common::ONE_VIP);
    assert_eq!(config.vips[0].affinity_timeout, None);
}

#[test]
fn empty_sections_read_as_their_defaults() {
    let config = ok("snat:\nconntrack:\n  timeouts:\npools:\nvips:\n");
    assert_eq!(config, Config::default());
}

// ---- durations -------------------------------------------------------------

#[test]
fn durations_parse_in_every_spelling() {
    let config = ok("conntrack:\n  timeouts:\n    tcp_syn: 45\n    tcp_established: 1h30m\n    tcp_closing: 2m\n    udp: \"1d\"\n");
    let ct = config.conntrack;
    assert_eq!(ct.tcp_syn, Duration::from_secs(45));
    assert_eq!(ct.tcp_established, Duration::from_secs(5400));
    assert_eq!(ct.tcp_closing, Duration::from_secs(120));
    assert_eq!(ct.udp, Duration::from_secs(86_400));
}

#[test]
fn the_affinity_timeout_accepts_exactly_one_day() {
    let text =
        format!("{}    session_affinity: {{client_ip: {{timeout: 86400s}}}}\n", common::ONE_VIP);
    assert_eq!(ok(&text).vips[0].affinity_timeout, Some(Duration::from_secs(86_400)));
}

// ---- pools -------------------------------------------------------------------

fn pool(cidrs: &[&str], ranges: &[(&str, &str)]) -> Pool {
    Pool {
        name: "p".into(),
        cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        ranges: ranges.iter().map(|(a, b)| (ip(a), ip(b))).collect(),
    }
}

#[test]
fn pool_addresses_skip_ipv4_network_and_broadcast() {
    let p = pool(&["203.0.113.0/30"], &[]);
    let got: Vec<IpAddr> = p.addresses().collect();
    assert_eq!(got, [ip("203.0.113.1"), ip("203.0.113.2")]);
    assert!(!p.contains(ip("203.0.113.0")));
    assert!(p.contains(ip("203.0.113.1")));
    assert!(!p.contains(ip("203.0.113.3")));
}

#[test]
fn pool_addresses_keep_every_address_of_slash_31_and_32_and_of_ranges() {
    let p = pool(&["203.0.113.8/31", "203.0.113.20/32"], &[("203.0.113.30", "203.0.113.32")]);
    let got: Vec<String> = p.addresses().map(|a| a.to_string()).collect();
    assert_eq!(
        got,
        [
            "203.0.113.8",
            "203.0.113.9",
            "203.0.113.20",
            "203.0.113.30",
            "203.0.113.31",
            "203.0.113.32"
        ]
    );
    assert!(p.contains(ip("203.0.113.32")));
    assert!(!p.contains(ip("203.0.113.33")));
}

#[test]
fn pool_addresses_come_in_ascending_order_ipv4_first() {
    let p = pool(&["2001:db8::/127", "203.0.113.16/30"], &[("203.0.113.1", "203.0.113.2")]);
    let got: Vec<String> = p.addresses().map(|a| a.to_string()).collect();
    assert_eq!(
        got,
        ["203.0.113.1", "203.0.113.2", "203.0.113.17", "203.0.113.18", "2001:db8::", "2001:db8::1"]
    );
}

#[test]
fn ipv6_pools_use_every_address_and_iterate_lazily() {
    let p = pool(&["2001:db8::/64"], &[]);
    let first: Vec<IpAddr> = p.addresses().take(2).collect();
    assert_eq!(first, [ip("2001:db8::"), ip("2001:db8::1")]);
    assert!(p.contains(ip("2001:db8::ffff:ffff:ffff:ffff")));
    assert!(!p.contains(ip("2001:db8:0:1::")));
    assert!(!p.contains(ip("203.0.113.1")));
}

#[test]
fn a_pool_never_contains_an_address_of_the_other_family() {
    let p = pool(&[], &[("203.0.113.1", "203.0.113.9")]);
    assert!(!p.contains(ip("::cb00:7105")));
    assert!(!p.contains(ip("2001:db8::1")));
}

#[test]
fn pools_from_a_file_contain_what_they_list() {
    let config = ok("pools:\n  - name: public\n    cidrs: [203.0.113.0/28]\n    ranges: [\"203.0.113.100-203.0.113.120\"]\n");
    let p = &config.pools[0];
    assert_eq!(p.addresses().count(), 14 + 21);
    assert!(p.contains(ip("203.0.113.110")));
    assert!(!p.contains(ip("203.0.113.99")));
}

// ---- serialize ---------------------------------------------------------------

#[test]
fn the_effective_config_serializes_durations_and_ranges_as_the_config_spells_them() {
    let config = load(&example("full.yaml")).unwrap();
    let json = serde_json::to_value(&config).unwrap();
    assert_eq!(json["dataplane"], "dpdk");
    assert_eq!(json["conntrack"]["tcp_established"], "2h");
    assert_eq!(json["vips"][0]["affinity_timeout"], "3h");
    assert_eq!(json["vips"][1]["affinity_timeout"], serde_json::Value::Null);
    assert_eq!(json["vips"][0]["backends"][2]["state"], "draining");
    assert_eq!(json["vips"][1]["address"], "2001:db8::10");
    assert_eq!(json["pools"][0]["ranges"][0], "203.0.113.100-203.0.113.120");
    assert_eq!(json["pools"][0]["cidrs"][0], "203.0.113.0/28");
    assert!(json["vips"][0].get("line").is_none());
}

#[test]
fn parse_names_diagnostics_after_the_source_name() {
    let diags = parse("inline <stdin>", "vips: 3\n").unwrap_err();
    assert_eq!(diags.0[0].file, "inline <stdin>");
}
