//! The config schema: decodes the YAML tree into [`Config`] and runs the
//! whole-file checks (duplicates, families, overlaps) that need more than one
//! field at a time.
//!
//! Contract: [`config`] always returns a `Config` (defaults where a value was
//! missing or bad) and records every problem in the decoder; the caller must
//! discard the `Config` if any diagnostic was recorded. Cross-checks run only
//! on inputs that decoded cleanly, so one mistake is reported once rather than
//! again as a consequence (an unknown `dataplane` does not also make the
//! `dpdk:` section wrong).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::decode::{parse_int, Decoder, Map};
use crate::duration::MAX_SECS;
use crate::model::*;
use crate::yaml::{Node, Pos, Value};

const TOP_KEYS: &[&str] = &[
    "instance",
    "dataplane",
    "interfaces",
    "dpdk",
    "snat",
    "conntrack",
    "pools",
    "vips",
    "kubernetes",
];
const KUBERNETES_KEYS: &[&str] = &[
    "mode",
    "node_name",
    "pod_routable",
    "load_balancer_class",
    "default_class",
    "api_server",
    "token_file",
    "ca_file",
    "lease_namespace",
];
const KUBERNETES_MODES: &[(&str, KubernetesMode)] =
    &[("daemonset", KubernetesMode::Daemonset), ("edge", KubernetesMode::Edge)];
const BOOLS: &[(&str, bool)] = &[("true", true), ("false", false)];
const INTERFACE_KEYS: &[&str] = &["name", "attach", "queues", "cores"];
const DPDK_KEYS: &[&str] = &["eal_args", "ports", "mbufs"];
const SNAT_KEYS: &[&str] = &["addresses", "ports"];
const CONNTRACK_KEYS: &[&str] = &["capacity", "timeouts"];
const TIMEOUT_KEYS: &[&str] = &["tcp_syn", "tcp_established", "tcp_closing", "udp"];
const POOL_KEYS: &[&str] = &["name", "cidrs", "ranges"];
const VIP_KEYS: &[&str] = &[
    "name",
    "address",
    "port",
    "protocol",
    "mode",
    "session_affinity",
    "source_ranges",
    "ring_max",
    "backends",
];
const AFFINITY_KEYS: &[&str] = &["client_ip"];
const CLIENT_IP_KEYS: &[&str] = &["timeout"];
const BACKEND_KEYS: &[&str] = &["address", "port", "weight", "state"];

const DATAPLANES: &[(&str, DataplaneKind)] =
    &[("xdp", DataplaneKind::Xdp), ("afxdp", DataplaneKind::Afxdp), ("dpdk", DataplaneKind::Dpdk)];
const ATTACH_MODES: &[(&str, AttachMode)] =
    &[("native", AttachMode::Native), ("generic", AttachMode::Generic)];
const PROTOCOLS: &[(&str, Protocol)] = &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)];
const MODES: &[(&str, Mode)] = &[("dnat", Mode::Dnat), ("snat", Mode::Snat)];
const BACKEND_STATES: &[(&str, BackendState)] =
    &[("active", BackendState::Active), ("draining", BackendState::Draining)];

const PORTS: std::ops::RangeInclusive<u16> = 1..=65535;
const DEFAULT_MBUFS: u32 = 8191;
/// Kubernetes caps `sessionAffinityConfig.clientIP.timeoutSeconds` at one day.
const MAX_AFFINITY_SECS: u64 = 86_400;
/// `IFNAMSIZ` is 16 bytes including the terminating NUL.
const MAX_IFNAME_BYTES: usize = 15;

pub(crate) fn config(d: &mut Decoder, root: &Node) -> Config {
    let defaults = Config::default();
    let Some(top) = d.map(root, "config", TOP_KEYS) else {
        return defaults;
    };
    let instance = top.field(d, "instance", instance);
    let dataplane = top.field(d, "dataplane", |d, n| d.choice(n, "dataplane", DATAPLANES));
    let dataplane_known = dataplane.is_some() || top.get("dataplane").is_none();
    let dataplane = dataplane.unwrap_or(defaults.dataplane);
    let interfaces = top.field(d, "interfaces", interfaces);
    let dpdk = top.field(d, "dpdk", dpdk);
    if let Some(pos) = top.key_pos("dpdk") {
        if dataplane_known && dataplane != DataplaneKind::Dpdk {
            let message = format!(
                "a dpdk section is only allowed with `dataplane: dpdk` (dataplane is {}); \
                 remove it or set the dataplane",
                name_of(DATAPLANES, dataplane)
            );
            d.error(pos, message);
        }
    }
    let before_snat = d.error_count();
    let snat = top.field(d, "snat", snat).unwrap_or_default();
    let snat_known = d.error_count() == before_snat;
    let conntrack = top.field(d, "conntrack", conntrack).unwrap_or_default();
    let pools = top.field(d, "pools", pools);
    let snat_addresses = snat_known.then_some(snat.addresses.as_slice());
    let vips = top.field(d, "vips", |d, n| vips(d, n, snat_addresses));
    let kubernetes = top.field(d, "kubernetes", kubernetes);
    Config {
        instance: instance.unwrap_or(defaults.instance),
        dataplane,
        interfaces: interfaces.unwrap_or_default(),
        dpdk,
        snat,
        conntrack,
        pools: pools.unwrap_or_default(),
        vips: vips.unwrap_or_default(),
        kubernetes,
    }
}

fn kubernetes(d: &mut Decoder, n: &Node) -> Option<KubernetesConfig> {
    let m = d.map(n, "kubernetes", KUBERNETES_KEYS)?;
    let defaults = KubernetesConfig::default();
    let mode = m.required(d, "mode", |d, n| d.choice(n, "kubernetes mode", KUBERNETES_MODES));
    let node_name = m.field(d, "node_name", |d, n| dns_name(d, n, "node_name"));
    let pod_routable = m.field(d, "pod_routable", |d, n| d.choice(n, "pod_routable", BOOLS));
    let class = m.field(d, "load_balancer_class", |d, n| {
        owned(d.string(n, "load_balancer_class")).filter(|c| {
            // Kubernetes requires a label-style name: "example.com/name" or "name".
            let ok = !c.is_empty() && c.len() <= 316 && !c.contains(char::is_whitespace);
            if !ok {
                d.error(n.pos, format!("load_balancer_class \"{c}\" is not a valid class name; write it like vipr.dev/lb"));
            }
            ok
        })
    });
    let default_class = m.field(d, "default_class", |d, n| d.choice(n, "default_class", BOOLS));
    let api_server = m.field(d, "api_server", |d, n| {
        owned(d.string(n, "api_server")).filter(|u| {
            let ok = u.starts_with("https://") || u.starts_with("http://");
            if !ok {
                d.error(
                    n.pos,
                    format!("api_server \"{u}\" is not a URL; write it like https://10.0.0.1:6443"),
                );
            }
            ok
        })
    });
    let token_file = m.field(d, "token_file", |d, n| owned(d.string(n, "token_file")));
    let ca_file = m.field(d, "ca_file", |d, n| owned(d.string(n, "ca_file")));
    for key in ["token_file", "ca_file"] {
        if let (Some(pos), None) = (m.key_pos(key), m.get("api_server")) {
            let message = format!("{key} needs api_server: the in-cluster and kubeconfig clients bring their own credentials");
            d.error(pos, message);
        }
    }
    let lease_namespace = m.field(d, "lease_namespace", |d, n| dns_name(d, n, "lease_namespace"));
    if let (Some(KubernetesMode::Daemonset), Some(pos)) = (mode, m.key_pos("pod_routable")) {
        d.error(pos, "pod_routable applies to `mode: edge` only");
    }
    if let (Some(KubernetesMode::Edge), Some(pos)) = (mode, m.key_pos("node_name")) {
        d.error(pos, "node_name applies to `mode: daemonset` only");
    }
    Some(KubernetesConfig {
        mode: mode?,
        node_name,
        pod_routable: pod_routable.unwrap_or(defaults.pod_routable),
        load_balancer_class: class.unwrap_or(defaults.load_balancer_class),
        default_class: default_class.unwrap_or(defaults.default_class),
        api_server,
        token_file: token_file.map(Into::into),
        ca_file: ca_file.map(Into::into),
        lease_namespace: lease_namespace.unwrap_or(defaults.lease_namespace),
    })
}

/// A DNS-1123 subdomain, as Kubernetes wants for node and namespace names.
fn dns_name(d: &mut Decoder, n: &Node, what: &str) -> Option<String> {
    let text = d.string(n, what)?;
    let ok = (1..=253).contains(&text.len())
        && text.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if !ok {
        let message = format!(
            "{what} \"{text}\" is not a valid Kubernetes name; allowed: lowercase a-z, 0-9, '-' and '.', starting and ending with a letter or digit"
        );
        d.error(n.pos, message);
        return None;
    }
    Some(text.to_owned())
}

fn instance(d: &mut Decoder, n: &Node) -> Option<String> {
    let text = d.string(n, "instance")?;
    let ok = (1..=32).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        let message = format!(
            "instance \"{text}\" is not a valid name; allowed: 1 to 32 characters from a-z, 0-9 and '-'"
        );
        d.error(n.pos, message);
        return None;
    }
    Some(text.to_owned())
}

fn interfaces(d: &mut Decoder, n: &Node) -> Option<Vec<Interface>> {
    let mut first_line: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for item in d.seq(n, "interfaces")? {
        let Some(interface) = interface(d, item) else {
            continue;
        };
        if let Some(line) = first_line.get(&interface.name) {
            let message = format!(
                "interface \"{}\" is listed twice; first listed at line {line}",
                interface.name
            );
            d.error(item.pos, message);
            continue;
        }
        first_line.insert(interface.name.clone(), item.pos.line);
        out.push(interface);
    }
    Some(out)
}

fn interface(d: &mut Decoder, n: &Node) -> Option<Interface> {
    let m = d.map(n, "interface", INTERFACE_KEYS)?;
    let name = m.required(d, "name", ifname);
    let attach = m.field(d, "attach", |d, n| d.choice(n, "attach mode", ATTACH_MODES));
    let queues = m.field(d, "queues", |d, n| ids(d, n, "queues", "NIC queue id"));
    let cores = m.field(d, "cores", |d, n| ids(d, n, "cores", "core"));
    let queue_count = queues.as_ref().map_or(1, Vec::len);
    if let (Some(cores), Some(node)) = (&cores, m.get("cores")) {
        if cores.len() != queue_count && (queues.is_some() || m.get("queues").is_none()) {
            let message = format!(
                "cores lists {} core(s) but there are {queue_count} queue(s); \
                 give one core per queue, or leave cores out",
                cores.len()
            );
            d.error(node.pos, message);
        }
    }
    Some(Interface {
        name: name?,
        attach: attach.unwrap_or(AttachMode::Native),
        queues: queues.unwrap_or_else(|| vec![0]),
        cores: cores.unwrap_or_default(),
    })
}

/// Linux's `dev_valid_name()`: 1..=15 bytes, not `.` or `..`, and no `/`,
/// `:` or whitespace.
fn ifname(d: &mut Decoder, n: &Node) -> Option<String> {
    let name = d.string(n, "interface name")?;
    let problem = if name.is_empty() {
        Some("is empty".to_owned())
    } else if name.len() > MAX_IFNAME_BYTES {
        Some(format!("is {} bytes long; Linux allows at most {MAX_IFNAME_BYTES}", name.len()))
    } else if name == "." || name == ".." {
        Some("is reserved".to_owned())
    } else if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        Some("may not contain '/', ':' or whitespace".to_owned())
    } else {
        None
    };
    if let Some(problem) = problem {
        let message = format!("interface name \"{name}\" {problem}");
        d.error(n.pos, message);
        return None;
    }
    Some(name.to_owned())
}

/// A non-empty list of distinct small ids (queues, cores).
fn ids(d: &mut Decoder, n: &Node, what: &str, item: &str) -> Option<Vec<u32>> {
    let before = d.error_count();
    let items: Vec<(u32, Pos)> =
        d.list(n, what, |d, n| Some((d.int(n, item, 0..=u32::MAX)?, n.pos)));
    if d.error_count() != before {
        return None;
    }
    if items.is_empty() {
        d.error(n.pos, format!("{what} is empty; give at least one {item}"));
        return None;
    }
    for (i, (id, pos)) in items.iter().enumerate() {
        if let Some((_, first)) = items[..i].iter().find(|(other, _)| other == id) {
            let message = format!(
                "{item} {id} is listed twice in {what}; first at line {}, column {}",
                first.line, first.column
            );
            d.error(*pos, message);
            return None;
        }
    }
    Some(items.into_iter().map(|(id, _)| id).collect())
}

fn dpdk(d: &mut Decoder, n: &Node) -> Option<DpdkConfig> {
    let m = d.map(n, "dpdk", DPDK_KEYS)?;
    let eal_args = m.field(d, "eal_args", |d, n| {
        Some(d.list(n, "eal_args", |d, n| owned(d.string(n, "EAL argument"))))
    });
    let ports = m.required(d, "ports", |d, n| {
        let before = d.error_count();
        let ports = d.list(n, "dpdk ports", |d, n| owned(d.string(n, "dpdk port")));
        if ports.is_empty() && d.error_count() == before {
            let message = "dpdk ports is empty; give at least one PCI address \
                           (0000:01:00.0) or vdev string (net_af_packet0,iface=eth1)";
            d.error(n.pos, message);
        }
        Some(ports)
    });
    let mbufs = m.field(d, "mbufs", |d, n| d.int(n, "dpdk mbufs", 1023u32..=1_048_575));
    Some(DpdkConfig {
        eal_args: eal_args.unwrap_or_default(),
        ports: ports?,
        mbufs: mbufs.unwrap_or(DEFAULT_MBUFS),
    })
}

fn snat(d: &mut Decoder, n: &Node) -> Option<SnatConfig> {
    let m = d.map(n, "snat", SNAT_KEYS)?;
    let defaults = SnatConfig::default();
    let addresses = m.field(d, "addresses", |d, n| {
        let found: Vec<(IpAddr, Pos)> =
            d.list(n, "snat addresses", |d, n| Some((d.ip(n, "snat address")?, n.pos)));
        let mut out: Vec<IpAddr> = Vec::new();
        for (ip, pos) in found {
            if out.contains(&ip) {
                d.error(pos, format!("snat address {ip} is listed twice"));
            } else {
                out.push(ip);
            }
        }
        Some(out)
    });
    let ports = m.field(d, "ports", port_range);
    let (port_min, port_max) = ports.unwrap_or((defaults.port_min, defaults.port_max));
    Some(SnatConfig { addresses: addresses.unwrap_or_default(), port_min, port_max })
}

/// `"MIN-MAX"`, inclusive, both in 1..=65535, `MIN <= MAX`.
fn port_range(d: &mut Decoder, n: &Node) -> Option<(u16, u16)> {
    let text = d.string(n, "snat ports")?;
    let Some((lo, hi)) = text.split_once('-') else {
        let message = format!(
            "snat ports \"{text}\" is not a port range; write it as MIN-MAX, such as 1024-65535"
        );
        d.error(n.pos, message);
        return None;
    };
    let mut bound = |part: &str| -> Option<u16> {
        let part = part.trim();
        let value = part.bytes().all(|b| b.is_ascii_digit()).then(|| parse_int(part)).flatten();
        match value.map(u16::try_from) {
            Some(Ok(port)) if PORTS.contains(&port) => Some(port),
            Some(_) => {
                let message =
                    format!("snat ports \"{text}\": {part} is out of range; allowed 1..=65535");
                d.error(n.pos, message);
                None
            }
            None => {
                let message = format!(
                    "snat ports \"{text}\": \"{part}\" is not a port number; write the range as \
                     MIN-MAX, such as 1024-65535"
                );
                d.error(n.pos, message);
                None
            }
        }
    };
    let (lo, hi) = (bound(lo)?, bound(hi)?);
    if lo > hi {
        let message = format!("snat ports \"{text}\": MIN {lo} is greater than MAX {hi}");
        d.error(n.pos, message);
        return None;
    }
    Some((lo, hi))
}

fn conntrack(d: &mut Decoder, n: &Node) -> Option<ConntrackConfig> {
    let m = d.map(n, "conntrack", CONNTRACK_KEYS)?;
    let defaults = ConntrackConfig::default();
    let capacity =
        m.field(d, "capacity", |d, n| d.int(n, "conntrack capacity", 1u32..=100_000_000));
    let timeouts = m.field(d, "timeouts", |d, n| d.map(n, "conntrack timeouts", TIMEOUT_KEYS));
    let timeout = |d: &mut Decoder, key: &str, default: Duration| -> Duration {
        let what = format!("conntrack timeout {key}");
        timeouts
            .as_ref()
            .and_then(|t: &Map| t.field(d, key, |d, n| d.duration(n, &what, MAX_SECS)))
            .unwrap_or(default)
    };
    Some(ConntrackConfig {
        capacity: capacity.unwrap_or(defaults.capacity),
        tcp_syn: timeout(d, "tcp_syn", defaults.tcp_syn),
        tcp_established: timeout(d, "tcp_established", defaults.tcp_established),
        tcp_closing: timeout(d, "tcp_closing", defaults.tcp_closing),
        udp: timeout(d, "udp", defaults.udp),
    })
}

/// One cidr or range of a pool, as a numeric span, for the overlap check.
struct Span {
    pool: usize,
    text: String,
    pos: Pos,
    v4: bool,
    first: u128,
    last: u128,
}

fn pools(d: &mut Decoder, n: &Node) -> Option<Vec<Pool>> {
    let mut out: Vec<Pool> = Vec::new();
    let mut spans: Vec<Span> = Vec::new();
    let mut name_lines: HashMap<String, usize> = HashMap::new();
    for item in d.seq(n, "pools")? {
        let Some((pool, pool_spans)) = pool(d, item, out.len()) else {
            continue;
        };
        if let Some(line) = name_lines.get(&pool.name) {
            let pos = item.get("name").map_or(item.pos, |n| n.pos);
            let message =
                format!("pool name \"{}\" is used twice; first used at line {line}", pool.name);
            d.error(pos, message);
        } else {
            name_lines.insert(pool.name.clone(), item.pos.line);
        }
        spans.extend(pool_spans);
        out.push(pool);
    }
    check_overlaps(d, &out, &spans);
    Some(out)
}

fn pool(d: &mut Decoder, n: &Node, index: usize) -> Option<(Pool, Vec<Span>)> {
    let m = d.map(n, "pool", POOL_KEYS)?;
    let name = m.required(d, "name", |d, n| owned(d.string(n, "pool name")));
    let before = d.error_count();
    let cidrs = m.field(d, "cidrs", |d, n| {
        Some(d.list(n, "pool cidrs", |d, n| Some((d.net(n, "pool cidr")?, n))))
    });
    let ranges = m.field(d, "ranges", |d, n| Some(d.list(n, "pool ranges", ip_range)));
    let (cidrs, ranges) = (cidrs.unwrap_or_default(), ranges.unwrap_or_default());
    let name = name?;
    if cidrs.is_empty() && ranges.is_empty() && d.error_count() == before {
        let message =
            format!("pool \"{name}\" is empty; give it at least one entry in cidrs or ranges");
        d.error(m.pos, message);
    }
    let span = |text: String, pos: Pos, first: IpAddr, last: IpAddr| Span {
        pool: index,
        text,
        pos,
        v4: first.is_ipv4(),
        first: ip_to_u128(first),
        last: ip_to_u128(last),
    };
    let mut spans: Vec<Span> = cidrs
        .iter()
        .map(|(net, node)| span(net.to_string(), node.pos, net.network(), net.broadcast()))
        .collect();
    spans.extend(ranges.iter().map(|((a, b), node)| span(format!("{a}-{b}"), node.pos, *a, *b)));
    let pool = Pool {
        name,
        cidrs: cidrs.into_iter().map(|(net, _)| net).collect(),
        ranges: ranges.into_iter().map(|(range, _)| range).collect(),
    };
    Some((pool, spans))
}

/// `"FIRST-LAST"`, inclusive, one family, `FIRST <= LAST`.
fn ip_range<'n>(d: &mut Decoder, n: &'n Node) -> Option<((IpAddr, IpAddr), &'n Node)> {
    let text = d.string(n, "pool range")?;
    let Some((a, b)) = text.split_once('-') else {
        let message = format!(
            "pool range \"{text}\" is not a range; write it as FIRST-LAST, \
             such as 203.0.113.100-203.0.113.120"
        );
        d.error(n.pos, message);
        return None;
    };
    let mut address = |part: &str| -> Option<IpAddr> {
        let part = part.trim();
        let parsed = part.parse().ok();
        if parsed.is_none() {
            let message =
                format!("pool range \"{text}\": \"{part}\" is not a valid IPv4 or IPv6 address");
            d.error(n.pos, message);
        }
        parsed
    };
    let (first, last) = (address(a)?, address(b)?);
    if first.is_ipv4() != last.is_ipv4() {
        let message =
            format!("pool range \"{text}\" mixes IPv4 and IPv6; both ends must be the same family");
        d.error(n.pos, message);
        return None;
    }
    if first > last {
        let message = format!(
            "pool range \"{text}\" runs backwards: first {first} is greater than last {last}"
        );
        d.error(n.pos, message);
        return None;
    }
    Some(((first, last), n))
}

/// Reports every cidr or range that overlaps another, within a pool or
/// across pools, naming both. A sweep over the spans sorted by start finds
/// them in O(n log n); the report goes to whichever of the pair comes later
/// in the file.
fn check_overlaps(d: &mut Decoder, pools: &[Pool], spans: &[Span]) {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| (!spans[i].v4, spans[i].first, spans[i].pos));
    // The span reaching furthest so far, within the current family.
    let mut reach: Option<usize> = None;
    for &i in &order {
        let span = &spans[i];
        match reach {
            Some(r) if spans[r].v4 == span.v4 && span.first <= spans[r].last => {
                let (earlier, later) =
                    if spans[r].pos < span.pos { (&spans[r], span) } else { (span, &spans[r]) };
                let message = if earlier.pool == later.pool {
                    format!(
                        "pool \"{}\": {} overlaps {} at line {}, column {} in the same pool",
                        pools[later.pool].name,
                        later.text,
                        earlier.text,
                        earlier.pos.line,
                        earlier.pos.column
                    )
                } else {
                    format!(
                        "pool \"{}\" {} overlaps pool \"{}\" {} at line {}, column {}",
                        pools[later.pool].name,
                        later.text,
                        pools[earlier.pool].name,
                        earlier.text,
                        earlier.pos.line,
                        earlier.pos.column
                    )
                };
                d.error(later.pos, message);
                if span.last > spans[r].last {
                    reach = Some(i);
                }
            }
            _ => reach = Some(i),
        }
    }
}

fn vips(d: &mut Decoder, n: &Node, snat: Option<&[IpAddr]>) -> Option<Vec<Vip>> {
    let mut out: Vec<Vip> = Vec::new();
    let mut first_line: HashMap<(IpAddr, u16, Protocol), usize> = HashMap::new();
    let mut name_lines: HashMap<String, usize> = HashMap::new();
    for item in d.seq(n, "vips")? {
        let Some(vip) = vip(d, item, snat) else {
            continue;
        };
        let key = (vip.address, vip.port, vip.protocol);
        if let Some(line) = first_line.get(&key) {
            let message = format!(
                "duplicate vip {}/{}; first defined at line {line}",
                SocketAddr::new(vip.address, vip.port),
                name_of(PROTOCOLS, vip.protocol)
            );
            d.error(item.pos, message);
            continue;
        }
        first_line.insert(key, vip.line);
        if let Some(name) = &vip.name {
            if let Some(line) = name_lines.get(name) {
                let pos = item.get("name").map_or(item.pos, |n| n.pos);
                let message =
                    format!("vip name \"{name}\" is used twice; first used at line {line}");
                d.error(pos, message);
            } else {
                name_lines.insert(name.clone(), vip.line);
            }
        }
        out.push(vip);
    }
    Some(out)
}

fn vip(d: &mut Decoder, n: &Node, snat: Option<&[IpAddr]>) -> Option<Vip> {
    let m = d.map(n, "vip", VIP_KEYS)?;
    let name = m.field(d, "name", |d, n| owned(d.string(n, "vip name")));
    let address = m.required(d, "address", |d, n| d.ip(n, "vip address"));
    let port = m.required(d, "port", |d, n| d.int(n, "vip port", PORTS));
    let protocol = m.field(d, "protocol", |d, n| d.choice(n, "protocol", PROTOCOLS));
    let mode = m.field(d, "mode", |d, n| d.choice(n, "mode", MODES));
    let affinity_timeout = m.field(d, "session_affinity", affinity);
    let source_ranges = m.field(d, "source_ranges", |d, n| {
        Some(d.list(n, "source_ranges", |d, n| Some((d.net(n, "source range")?, n.pos))))
    });
    let ring_max = m.field(d, "ring_max", |d, n| d.int(n, "ring_max", 7u32..=1_048_573));
    let backends = m.field(d, "backends", |d, n| Some(d.list(n, "backends", backend)));
    let source_ranges = source_ranges.unwrap_or_default();
    let backends = backends.unwrap_or_default();
    let protocol = protocol.unwrap_or(Protocol::Tcp);

    if let Some(address) = address {
        let family = family_name(address);
        for (net, pos) in &source_ranges {
            if net.addr().is_ipv4() != address.is_ipv4() {
                let message = format!(
                    "source range {net} is {} but vip address {address} is {family}; \
                     source ranges must match the vip's family",
                    family_name(net.addr())
                );
                d.error(*pos, message);
            }
        }
        for (backend, _, address_pos) in &backends {
            if backend.address.is_ipv4() != address.is_ipv4() {
                let message = format!(
                    "backend {} is {} but its vip {address} is {family}; \
                     a vip and its backends must be the same family",
                    backend.address,
                    family_name(backend.address)
                );
                d.error(*address_pos, message);
            }
        }
        if let (Some(Mode::Snat), Some(snat), Some(port)) = (mode, snat, port) {
            if !snat.iter().any(|a| a.is_ipv4() == address.is_ipv4()) {
                let pos = m.get("mode").map_or(m.pos, |n| n.pos);
                let message = format!(
                    "vip {}/{} uses mode snat, but snat.addresses has no {family} address; \
                     add one to snat.addresses",
                    SocketAddr::new(address, port),
                    name_of(PROTOCOLS, protocol)
                );
                d.error(pos, message);
            }
        }
    }
    let mut first_line: HashMap<(IpAddr, u16), usize> = HashMap::new();
    for (backend, pos, _) in &backends {
        let key = (backend.address, backend.port);
        match first_line.get(&key) {
            Some(line) => {
                let message = format!(
                    "duplicate backend {} in this vip; first listed at line {line}",
                    SocketAddr::new(backend.address, backend.port)
                );
                d.error(*pos, message);
            }
            None => {
                first_line.insert(key, pos.line);
            }
        }
    }

    Some(Vip {
        name,
        address: address?,
        port: port?,
        protocol,
        mode: mode.unwrap_or(Mode::Dnat),
        affinity_timeout,
        source_ranges: source_ranges.into_iter().map(|(net, _)| net).collect(),
        ring_max: ring_max.unwrap_or(DEFAULT_RING_MAX),
        backends: backends.into_iter().map(|(b, _, _)| b).collect(),
        line: m.pos.line,
    })
}

fn affinity(d: &mut Decoder, n: &Node) -> Option<Duration> {
    let m = d.map(n, "session_affinity", AFFINITY_KEYS)?;
    m.required(d, "client_ip", |d, n| {
        let client_ip = d.map(n, "session_affinity.client_ip", CLIENT_IP_KEYS)?;
        let timeout = client_ip.field(d, "timeout", |d, n| {
            d.duration(n, "session affinity timeout", MAX_AFFINITY_SECS)
        });
        Some(timeout.unwrap_or(Duration::from_secs(DEFAULT_AFFINITY_SECS)))
    })
}

/// A backend with the positions of its mapping and of its address.
fn backend(d: &mut Decoder, n: &Node) -> Option<(Backend, Pos, Pos)> {
    let m = d.map(n, "backend", BACKEND_KEYS)?;
    let address = m.required(d, "address", |d, n| Some((d.ip(n, "backend address")?, n.pos)));
    let port = m.required(d, "port", |d, n| d.int(n, "backend port", PORTS));
    let weight = m.field(d, "weight", weight);
    let state = m.field(d, "state", |d, n| d.choice(n, "backend state", BACKEND_STATES));
    let (address, address_pos) = address?;
    let backend = Backend {
        address,
        port: port?,
        weight: weight.unwrap_or(1),
        state: state.unwrap_or(BackendState::Active),
    };
    Some((backend, m.pos, address_pos))
}

fn weight(d: &mut Decoder, n: &Node) -> Option<u32> {
    let zero =
        matches!(&n.value, Value::Scalar(s) if !s.is_string && parse_int(&s.text) == Some(0));
    if zero {
        let message = "backend weight 0 is out of range; allowed 1..=65535 \
                       (to stop new flows to a backend, use `state: draining`)";
        d.error(n.pos, message);
        return None;
    }
    d.int(n, "backend weight", 1u32..=65535)
}

fn owned(s: Option<&str>) -> Option<String> {
    s.map(str::to_owned)
}

fn family_name(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn name_of<T: PartialEq + Copy>(options: &[(&'static str, T)], value: T) -> &'static str {
    options.iter().find(|o| o.1 == value).map_or("?", |o| o.0)
}
