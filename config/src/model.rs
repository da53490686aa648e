//! The validated config types.
//!
//! Contract: a value of these types that came out of [`crate::parse`] or
//! [`crate::load`] has passed every check in the crate docs; building one by
//! hand skips them. `Serialize` prints the effective config with durations in
//! config spelling (`"2h"`) and pool ranges as `"first-last"`.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use crate::duration::serde_text;

/// Maglev ring cap used when a VIP does not set `ring_max`.
pub(crate) const DEFAULT_RING_MAX: u32 = 65_537;
/// Session affinity timeout used when `client_ip.timeout` is not given
/// (Kubernetes' default, 3h).
pub(crate) const DEFAULT_AFFINITY_SECS: u64 = 10_800;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub instance: String,
    pub dataplane: DataplaneKind,
    pub interfaces: Vec<Interface>,
    pub dpdk: Option<DpdkConfig>,
    pub snat: SnatConfig,
    pub conntrack: ConntrackConfig,
    pub pools: Vec<Pool>,
    pub vips: Vec<Vip>,
    /// Where to watch Services, EndpointSlices and Nodes; `None`: no cluster.
    pub kubernetes: Option<KubernetesConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            instance: "default".into(),
            dataplane: DataplaneKind::Xdp,
            interfaces: Vec::new(),
            dpdk: None,
            snat: SnatConfig::default(),
            conntrack: ConntrackConfig::default(),
            pools: Vec::new(),
            vips: Vec::new(),
            kubernetes: None,
        }
    }
}

/// The live Kubernetes source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KubernetesConfig {
    pub mode: KubernetesMode,
    /// daemonset: the node vipr runs on. `None`: read `$NODE_NAME` (the downward API)
    /// when the agent starts.
    pub node_name: Option<String>,
    /// edge: backends are the pods themselves instead of the nodes' NodePorts.
    pub pod_routable: bool,
    pub load_balancer_class: String,
    /// Also serve LoadBalancer Services that name no class.
    pub default_class: bool,
    /// `None`: the in-cluster service account, else `$KUBECONFIG` / `~/.kube/config`.
    pub api_server: Option<String>,
    /// The bearer token for `api_server`.
    pub token_file: Option<std::path::PathBuf>,
    /// PEM certificates that sign `api_server`'s certificate; `None`: the system roots.
    pub ca_file: Option<std::path::PathBuf>,
    pub lease_namespace: String,
}

pub(crate) const DEFAULT_LB_CLASS: &str = "vipr.dev/lb";

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            mode: KubernetesMode::Daemonset,
            node_name: None,
            pod_routable: false,
            load_balancer_class: DEFAULT_LB_CLASS.into(),
            default_class: true,
            api_server: None,
            token_file: None,
            ca_file: None,
            lease_namespace: "kube-system".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KubernetesMode {
    Daemonset,
    Edge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneKind {
    Xdp,
    Afxdp,
    Dpdk,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interface {
    pub name: String,
    pub attach: AttachMode,
    pub queues: Vec<u32>,
    /// Empty when not given; otherwise one core per queue.
    pub cores: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Native,
    Generic,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DpdkConfig {
    pub eal_args: Vec<String>,
    pub ports: Vec<String>,
    pub mbufs: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnatConfig {
    pub addresses: Vec<IpAddr>,
    pub port_min: u16,
    pub port_max: u16,
}

impl Default for SnatConfig {
    fn default() -> Self {
        SnatConfig { addresses: Vec::new(), port_min: 1024, port_max: 65535 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConntrackConfig {
    pub capacity: u32,
    #[serde(serialize_with = "serde_text::serialize")]
    pub tcp_syn: Duration,
    #[serde(serialize_with = "serde_text::serialize")]
    pub tcp_established: Duration,
    #[serde(serialize_with = "serde_text::serialize")]
    pub tcp_closing: Duration,
    #[serde(serialize_with = "serde_text::serialize")]
    pub udp: Duration,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            capacity: 1_000_000,
            tcp_syn: Duration::from_secs(60),
            tcp_established: Duration::from_secs(2 * 3600),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(30),
        }
    }
}

/// A LoadBalancer IP pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pool {
    pub name: String,
    pub cidrs: Vec<IpNet>,
    /// Inclusive `(first, last)`, same family, `first <= last`.
    #[serde(serialize_with = "serialize_ranges")]
    pub ranges: Vec<(IpAddr, IpAddr)>,
}

impl Pool {
    /// True if `ip` is one of [`Pool::addresses`]: inside a cidr (but not an
    /// IPv4 network or broadcast address of a prefix shorter than /31) or
    /// inside a range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.segments()
            .iter()
            .any(|&(first, last)| same_family(first, ip) && first <= ip && ip <= last)
    }

    /// Every usable address in ascending order (IPv4 before IPv6). For cidrs
    /// the IPv4 network and broadcast addresses are skipped when the prefix is
    /// shorter than /31; ranges are used whole. The iterator is lazy, so a
    /// large IPv6 pool costs nothing until walked.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> {
        let mut segments = self.segments();
        segments.sort();
        segments.into_iter().flat_map(|(first, last)| AddrRange::new(first, last))
    }

    /// Inclusive usable spans: cidrs trimmed as described above, then ranges.
    fn segments(&self) -> Vec<(IpAddr, IpAddr)> {
        let cidrs = self.cidrs.iter().map(|net| match net {
            IpNet::V4(n) if n.prefix_len() < 31 => {
                let first = u32::from(n.network()) + 1;
                let last = u32::from(n.broadcast()) - 1;
                (IpAddr::from(first.to_be_bytes()), last.to_be_bytes().into())
            }
            _ => (net.network(), net.broadcast()),
        });
        cidrs.chain(self.ranges.iter().copied()).collect()
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// An IP address as a number, with its family.
pub(crate) fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4).into(),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn u128_to_ip(value: u128, v4: bool) -> IpAddr {
    if v4 {
        // Only values taken from IPv4 addresses come back here.
        IpAddr::from(u32::try_from(value).unwrap_or(u32::MAX).to_be_bytes())
    } else {
        IpAddr::from(value.to_be_bytes())
    }
}

/// Inclusive walk over one family's addresses.
struct AddrRange {
    next: Option<u128>,
    last: u128,
    v4: bool,
}

impl AddrRange {
    fn new(first: IpAddr, last: IpAddr) -> Self {
        let (f, l) = (ip_to_u128(first), ip_to_u128(last));
        AddrRange {
            next: (same_family(first, last) && f <= l).then_some(f),
            last: l,
            v4: first.is_ipv4(),
        }
    }
}

impl Iterator for AddrRange {
    type Item = IpAddr;

    fn next(&mut self) -> Option<IpAddr> {
        let current = self.next?;
        self.next = if current < self.last { Some(current + 1) } else { None };
        Some(u128_to_ip(current, self.v4))
    }
}

fn serialize_ranges<S: serde::Serializer>(
    ranges: &[(IpAddr, IpAddr)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(ranges.iter().map(|(a, b)| format!("{a}-{b}")))
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Vip {
    pub name: Option<String>,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    /// `Some` when `session_affinity.client_ip` is given.
    #[serde(serialize_with = "serde_text::serialize_opt")]
    pub affinity_timeout: Option<Duration>,
    pub source_ranges: Vec<IpNet>,
    pub ring_max: u32,
    pub backends: Vec<Backend>,
    /// 1-based line where the VIP starts in its file.
    #[serde(skip)]
    pub line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Dnat,
    Snat,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backend {
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub state: BackendState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    Active,
    Draining,
}
