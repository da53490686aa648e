//! kube-proxy's rule sets for a set of Services, in its own layouts, to measure vipr
//! against in the same run: the iptables mode (KUBE-SERVICES -> KUBE-SVC-* ->
//! KUBE-SEP-*, `statistic --mode random --probability`, DNAT, and the KUBE-MARK-MASQ /
//! KUBE-POSTROUTING masquerade) as `iptables-restore` input, and the nftables mode
//! (one verdict map from address . protocol . port to a service chain, `numgen random`
//! over endpoint chains) as `nft -f` input.
//!
//! The layouts follow what kube-proxy writes (pkg/proxy/iptables and pkg/proxy/nftables):
//! same chains, same matches, same per-Service and per-endpoint rule counts; chain names
//! are shortened (kube-proxy hashes them), which changes nothing a packet does.

use std::fmt::Write as _;
use std::net::IpAddr;

#[derive(Clone, Debug)]
pub struct Service {
    pub vip: IpAddr,
    pub port: u16,
    /// "tcp" or "udp".
    pub proto: &'static str,
    pub endpoints: Vec<(IpAddr, u16)>,
}

/// The cluster's pod range: traffic from outside it to a ClusterIP gets masqueraded.
const CLUSTER_CIDR: &str = "198.51.100.128/25";

/// `iptables-restore` input (IPv4 services only) for the nat table.
pub fn iptables_restore(services: &[Service]) -> String {
    let mut s = String::from("*nat\n");
    let mut chains = vec![
        "KUBE-SERVICES".to_string(),
        "KUBE-POSTROUTING".to_string(),
        "KUBE-MARK-MASQ".to_string(),
        "KUBE-NODEPORTS".to_string(),
    ];
    for (i, svc) in services.iter().enumerate() {
        chains.push(format!("KUBE-SVC-{i:06}"));
        for j in 0..svc.endpoints.len() {
            chains.push(format!("KUBE-SEP-{i:06}-{j:03}"));
        }
    }
    for c in &chains {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    s += "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n";
    s += "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n";
    s += "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n";
    s += "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n";
    s += "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n";
    s += "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n";
    s += "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n";
    for (i, svc) in services.iter().filter(|s| s.vip.is_ipv4()).enumerate() {
        let (vip, port, p) = (svc.vip, svc.port, svc.proto);
        let _ = writeln!(
            s,
            "-A KUBE-SERVICES -d {vip}/32 -p {p} -m comment --comment \"default/svc-{i}:p cluster IP\" -m {p} --dport {port} -j KUBE-SVC-{i:06}"
        );
        let _ = writeln!(
            s,
            "-A KUBE-SVC-{i:06} ! -s {CLUSTER_CIDR} -d {vip}/32 -p {p} -m comment --comment \"default/svc-{i}:p cluster IP\" -m {p} --dport {port} -j KUBE-MARK-MASQ"
        );
        let n = svc.endpoints.len();
        for (j, (ep, ep_port)) in svc.endpoints.iter().enumerate() {
            // Rule j of n matches with probability 1/(n-j) of what reaches it: even overall.
            let stat = if j + 1 < n {
                format!(" -m statistic --mode random --probability {:.11}", 1.0 / (n - j) as f64)
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "-A KUBE-SVC-{i:06} -m comment --comment \"default/svc-{i}:p -> {ep}:{ep_port}\"{stat} -j KUBE-SEP-{i:06}-{j:03}"
            );
            let _ = writeln!(s, "-A KUBE-SEP-{i:06}-{j:03} -s {ep}/32 -m comment --comment \"default/svc-{i}:p\" -j KUBE-MARK-MASQ");
            let _ = writeln!(
                s,
                "-A KUBE-SEP-{i:06}-{j:03} -p {p} -m comment --comment \"default/svc-{i}:p\" -m {p} -j DNAT --to-destination {ep}:{ep_port}"
            );
        }
    }
    s += "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n";
    s += "COMMIT\n";
    s
}

/// `nft -f` input (IPv4 services only): table `ip kube-proxy`.
pub fn nftables(services: &[Service]) -> String {
    let mut s = String::from("table ip kube-proxy {\n");
    s += "  chain mark-for-masquerade {\n    meta mark set meta mark | 0x4000\n  }\n";
    s += "  chain masquerading {\n    type nat hook postrouting priority srcnat; policy accept;\n    meta mark & 0x4000 == 0 return\n    meta mark set meta mark ^ 0x4000\n    masquerade fully-random\n  }\n";
    let v4: Vec<(usize, &Service)> =
        services.iter().filter(|s| s.vip.is_ipv4()).enumerate().collect();
    for (i, svc) in &v4 {
        let n = svc.endpoints.len();
        for (j, (ep, ep_port)) in svc.endpoints.iter().enumerate() {
            let _ = writeln!(
                s,
                "  chain endpoint-{i:06}-{j:03} {{\n    ip saddr {ep} jump mark-for-masquerade\n    meta l4proto {} dnat to {ep}:{ep_port}\n  }}",
                svc.proto
            );
        }
        let vmap: Vec<String> =
            (0..n).map(|j| format!("{j} : goto endpoint-{i:06}-{j:03}")).collect();
        let _ = writeln!(
            s,
            "  chain service-{i:06} {{\n    ip daddr {} {} dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade\n    numgen random mod {n} vmap {{ {} }}\n  }}",
            svc.vip,
            svc.proto,
            svc.port,
            vmap.join(", ")
        );
    }
    s += "  map service-ips {\n    type ipv4_addr . inet_proto . inet_service : verdict\n";
    if !v4.is_empty() {
        let elems: Vec<String> = v4
            .iter()
            .map(|(i, svc)| {
                format!("{} . {} . {} : goto service-{i:06}", svc.vip, svc.proto, svc.port)
            })
            .collect();
        let _ = writeln!(s, "    elements = {{ {} }}", elems.join(",\n      "));
    }
    s += "  }\n";
    s += "  chain services {\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }\n";
    s += "  chain nat-prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }\n";
    s += "  chain nat-output {\n    type nat hook output priority -100; policy accept;\n    jump services\n  }\n";
    s += "}\n";
    s
}

/// `n` Services of `endpoints` endpoints each, on documentation prefixes: VIPs are
/// 203.0.113.1-254 x ports from 1000, endpoints 192.0.2.21 + k on port 8080 + service.
pub fn services(n: usize, endpoints: usize, backends: &[IpAddr]) -> Vec<Service> {
    (0..n)
        .map(|i| Service {
            vip: IpAddr::from([203, 0, 113, 1 + (i % 254) as u8]),
            port: 1000 + (i / 254) as u16,
            proto: "tcp",
            endpoints: (0..endpoints).map(|j| (backends[(i + j) % backends.len()], 8080)).collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn backends() -> Vec<IpAddr> {
        (21..25).map(|i| IpAddr::from([192, 0, 2, i])).collect()
    }

    fn in_scratch_netns(name: &str, args: &[&str], input: &str) -> String {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        assert!(Command::new("ip").args(["netns", "add", name]).status().unwrap().success());
        let mut child = Command::new("ip")
            .args(["netns", "exec", name])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let listing = if args[0] == "nft" {
            Command::new("ip")
                .args(["netns", "exec", name, "nft", "list", "ruleset"])
                .output()
                .unwrap()
                .stdout
        } else {
            Command::new("ip")
                .args(["netns", "exec", name, "iptables-save", "-t", "nat"])
                .output()
                .unwrap()
                .stdout
        };
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        assert!(
            out.status.success(),
            "{args:?} refused the rule set: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&listing).into_owned()
    }

    #[test]
    fn iptables_rule_set_restores_with_kube_proxys_rule_counts() {
        let svcs = services(3, 4, &backends());
        let saved =
            in_scratch_netns("vipr-kp-ipt", &["iptables-restore"], &iptables_restore(&svcs));
        // Per Service: 1 portal rule, 1 masquerade mark, and per endpoint 1 jump + 2 rules.
        let count = |prefix: &str| saved.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(count("-A KUBE-SERVICES"), 3 + 1);
        assert_eq!(count("-A KUBE-SVC-"), 3 * (1 + 4));
        assert_eq!(count("-A KUBE-SEP-"), 3 * 4 * 2);
        assert!(saved.contains("--probability 0.25000000000"), "first of four endpoints: 1/4");
        assert!(saved.contains("--probability 0.33333333349"), "second: 1/3 of the rest");
    }

    #[test]
    fn nftables_rule_set_loads_with_one_map_entry_per_service() {
        let svcs = services(3, 4, &backends());
        let listed = in_scratch_netns("vipr-kp-nft", &["nft", "-f", "-"], &nftables(&svcs));
        assert_eq!(listed.matches("goto service-").count(), 3, "{listed}");
        assert_eq!(listed.matches("numgen random mod 4").count(), 3, "{listed}");
        assert_eq!(listed.matches("dnat to 192.0.2.").count(), 12, "{listed}");
    }
}
