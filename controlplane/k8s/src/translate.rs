//! Services, EndpointSlices and Nodes to VIP specs: the pure heart of the Kubernetes
//! source.
//!
//! # Contract
//!
//! [`translate`] is total and deterministic: it never panics or fails on a bad object,
//! it skips what it cannot use and says so in [`Translation::warnings`]; VIPs come out
//! sorted by (address, port, protocol), backends by (address, port), whatever order the
//! inputs had. Two Services that claim the same address, port and protocol: the first
//! by (namespace, name) keeps it, the other gets a warning, so the compiler never sees
//! a duplicate.
//!
//! [`Translator`] gives the same VIPs event by event: it holds the objects, is told
//! each watch event, translates again only the Services an event touched and hands
//! out what changed in the output ([`TranslationChanges`]).
//!
//! # Rules
//!
//! Services of type ExternalName, headless Services (`clusterIP: None`) and ports of a
//! protocol other than TCP and UDP (SCTP: reported) make no VIP.
//!
//! [`Mode::DaemonSet`] (vipr on every node, in kube-proxy's place):
//! - every port of every `spec.clusterIPs` address (dual-stack: one VIP per family);
//! - for type NodePort and LoadBalancer, every InternalIP and ExternalIP of this node's
//!   Node object x `nodePort`;
//! - every `spec.externalIPs` address;
//! - every `status.loadBalancer.ingress[].ip` of a type LoadBalancer Service, except,
//!   for a Service of another loadBalancerClass, those with `ipMode: Proxy` (that
//!   load balancer wants the traffic to reach it, as kube-proxy does);
//! - addresses only of the Service's families (`spec.ipFamilies`, else its clusterIPs'
//!   families, else any);
//! - `externalTrafficPolicy: Local` restricts NodePort, externalIP and ingress VIPs, and
//!   `internalTrafficPolicy: Local` the clusterIP VIPs, to endpoints on this node. vipr's
//!   DNAT keeps the client address either way.
//!
//! [`Mode::Edge`] (an appliance in front of the cluster): only type LoadBalancer
//! Services of our [`LbClass`], one VIP per ingress IP x port. Backends are the Ready
//! Nodes' first InternalIP of the VIP's family x `nodePort` (Nodes labelled
//! `node.kubernetes.io/exclude-from-external-load-balancers` are left out); with
//! `externalTrafficPolicy: Local`, only Nodes hosting a chosen endpoint, weighted by
//! how many they host so pods get even shares. With `pod_routable`, the backends are
//! the endpoints themselves.
//!
//! Both modes: endpoints come from the EndpointSlices labelled
//! `kubernetes.io/service-name` (hand-made ones of a selector-less Service too). A
//! Service port finds its target port in each slice through the slice port of the same
//! name and protocol, so slices of one Service may map a port differently. Of the
//! endpoints of the VIP's family (and node, under a Local policy), the ready ones take
//! new flows; when none is ready, the serving + terminating ones do. Every other
//! endpoint stays programmed as draining (no new flows) so the flows it already carries
//! can finish, as they do under kube-proxy, where conntrack outlives the rules.
//! `sessionAffinity: ClientIP` sets the affinity timeout (default 10800 s).
//! `loadBalancerSourceRanges` restrict the ingress VIPs; a list that cannot be read
//! whole keeps those VIPs out rather than open them to everyone.

use crate::object::{namespace, Kind, LbClass, ObjectRef, SERVICE_NAME_LABEL};
use hashbrown::HashMap;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use vipr_abi::{DEFAULT_RING_MAX, PROTO_TCP, PROTO_UDP};
use vipr_dataplane::tables::{BackendSpec, VipSpec};

mod incremental;
pub use incremental::{TranslationChanges, Translator};

/// Kubernetes' default sessionAffinity ClientIP timeout, and its maximum.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;

/// The label that keeps a Node out of external load balancers' backends.
pub const EXCLUDE_FROM_LB_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The objects a translation reads.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub services: Vec<Service>,
    /// In their v1 shape; see [`crate::v1beta1`] for older clusters.
    pub endpoint_slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
}

impl Inputs {
    pub fn with_service(mut self, svc: impl Into<Service>) -> Self {
        self.services.push(svc.into());
        self
    }

    pub fn with_slice(mut self, slice: impl Into<EndpointSlice>) -> Self {
        self.endpoint_slices.push(slice.into());
        self
    }

    pub fn with_node(mut self, node: impl Into<Node>) -> Self {
        self.nodes.push(node.into());
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// vipr runs on node `node_name` and serves what kube-proxy would there.
    DaemonSet { node_name: String },
    /// vipr stands in front of the cluster and serves LoadBalancer addresses; backends
    /// are the Nodes' NodePorts, or the pods when `pod_routable`.
    Edge { pod_routable: bool },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    pub class: LbClass,
    /// The Maglev ring cap for every VIP.
    pub ring_max: u32,
}

impl Default for Options {
    /// DaemonSet mode on a node without a name (so no NodePort VIPs, and Local policies
    /// select nothing), answering to `vipr.dev/lb` and to Services without a class.
    fn default() -> Self {
        Options {
            mode: Mode::DaemonSet { node_name: String::new() },
            class: LbClass::default(),
            ring_max: DEFAULT_RING_MAX,
        }
    }
}

/// What kind of Service address a VIP stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VipKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
}

/// One VIP and the Service port it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceVip {
    pub service: ObjectRef,
    pub kind: VipKind,
    /// The Service port's name (empty for an unnamed port).
    pub port_name: String,
    pub spec: VipSpec,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Translation {
    /// Sorted by (address, port, protocol); no two share that key.
    pub vips: Vec<ServiceVip>,
    pub warnings: Vec<Warning>,
}

impl Translation {
    pub fn vip_specs(&self) -> Vec<VipSpec> {
        self.vips.iter().map(|v| v.spec.clone()).collect()
    }

    pub fn into_vip_specs(self) -> Vec<VipSpec> {
        self.vips.into_iter().map(|v| v.spec).collect()
    }
}

/// Something in one object that could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {problem}")]
pub struct Warning {
    pub object: ObjectRef,
    pub problem: Problem,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{field}: {value:?} is not an IP address; it is skipped")]
    BadAddress { field: &'static str, value: String },
    #[error("{field}: {addr} is not of the Service's IP families ({families}); it is skipped")]
    WrongFamily { field: &'static str, addr: IpAddr, families: String },
    #[error(
        "spec.loadBalancerSourceRanges: {value:?} is not a CIDR; the LoadBalancer \
         addresses are not served until it is fixed (serving them to everyone would \
         ignore the restriction)"
    )]
    BadSourceRange { value: String },
    #[error(
        "port {port}: protocol {protocol} is not supported (only TCP and UDP); the port is skipped"
    )]
    UnsupportedProtocol { port: i32, protocol: String },
    #[error("port {port} is out of range 1..=65535; it is skipped")]
    BadPort { port: i32 },
    #[error("spec.type {type_:?} is not one vipr knows; the Service is skipped")]
    UnknownType { type_: String },
    #[error(
        "port {port} has no nodePort (allocateLoadBalancerNodePorts: false?); edge mode \
         without pod_routable needs one, so the port is skipped"
    )]
    NoNodePort { port: i32 },
    #[error(
        "this node has no Node object, so its addresses are unknown and no NodePort VIP \
         is served; check the node name vipr was given"
    )]
    NodeNotFound,
    #[error("{vip} is already served for {owner}; this Service's claim is skipped")]
    VipConflict { vip: String, owner: ObjectRef },
    #[error("addressType {address_type:?} is not IPv4 or IPv6; the slice is skipped")]
    UnsupportedAddressType { address_type: String },
    #[error("endpoints[].addresses: {addr} is not of the slice's addressType {address_type}; it is skipped")]
    NotOfAddressType { addr: IpAddr, address_type: String },
    #[error("port {port} is out of range 1..=65535; the slice port is skipped")]
    BadSlicePort { port: i32 },
}

/// Translates the objects into the VIPs vipr should serve. See the module docs.
pub fn translate(inputs: &Inputs, opts: &Options) -> Translation {
    let mut out = Out::default();
    let slices = SliceIndex::new(&inputs.endpoint_slices, &mut out);
    let nodes = NodeIndex::new(&inputs.nodes, &mut out);

    let mut services: Vec<&Service> = inputs.services.iter().collect();
    services.sort_by(|a, b| service_key(a).cmp(&service_key(b)));
    let mut node_missing_reported = false;
    for svc in services {
        let me = ObjectRef::service(svc);
        let cx = ServiceCx { svc, me: &me, opts, slices: &slices, nodes: &nodes };
        cx.translate(&mut out, &mut node_missing_reported);
    }
    out.finish()
}

fn service_key(svc: &Service) -> (&str, &str) {
    (namespace(&svc.metadata), svc.metadata.name.as_deref().unwrap_or(""))
}

#[derive(Default)]
struct Out {
    vips: Vec<ServiceVip>,
    warnings: Vec<Warning>,
}

impl Out {
    fn warn(&mut self, object: &ObjectRef, problem: Problem) {
        self.warnings.push(Warning { object: object.clone(), problem });
    }

    /// Sorts, and drops later claims on a VIP key: services were visited in (namespace,
    /// name) order and the sort is stable, so the first Service keeps the VIP.
    fn finish(self) -> Translation {
        let Out { mut vips, mut warnings } = self;
        vips.sort_by_key(|v| (v.spec.addr, v.spec.port, v.spec.proto));
        let mut kept: Vec<ServiceVip> = Vec::with_capacity(vips.len());
        for v in vips {
            match kept.last() {
                Some(k) if k.spec.key() == v.spec.key() => {
                    if k.service != v.service {
                        warnings.push(conflict(&v, k));
                    }
                }
                _ => kept.push(v),
            }
        }
        Translation { vips: kept, warnings }
    }
}

/// The warning for `loser`, whose VIP key `owner` serves.
fn conflict(loser: &ServiceVip, owner: &ServiceVip) -> Warning {
    Warning {
        object: loser.service.clone(),
        problem: Problem::VipConflict { vip: vip_name(&loser.spec), owner: owner.service.clone() },
    }
}

fn vip_name(v: &VipSpec) -> String {
    let proto = if v.proto == PROTO_UDP { "udp" } else { "tcp" };
    match v.addr {
        IpAddr::V4(a) => format!("{a}:{}/{proto}", v.port),
        IpAddr::V6(a) => format!("[{a}]:{}/{proto}", v.port),
    }
}

/// One endpoint of one Service port, in a slice of one family.
#[derive(Clone, Debug)]
struct Endpoint<'a> {
    addr: IpAddr,
    port: u16,
    ready: bool,
    serving: bool,
    terminating: bool,
    node: Option<&'a str>,
}

/// A slice port: name (empty when unnamed), protocol, number.
type SlicePort<'a> = (&'a str, &'a str, u16);

struct Slice<'a> {
    ports: Vec<SlicePort<'a>>,
    endpoints: Vec<(IpAddr, &'a k8s_openapi::api::discovery::v1::Endpoint)>,
}

impl<'a> Slice<'a> {
    /// The usable ports and endpoints of a slice, or `None` (reported) when none are.
    fn parse(s: &'a EndpointSlice, out: &mut Out) -> Option<Self> {
        // Named only for a warning: most slices have none.
        let me = || ObjectRef::of(Kind::EndpointSlice, &s.metadata);
        if s.address_type != "IPv4" && s.address_type != "IPv6" {
            out.warn(
                &me(),
                Problem::UnsupportedAddressType { address_type: s.address_type.clone() },
            );
            return None;
        }
        let mut ports = Vec::new();
        for p in s.ports.iter().flatten() {
            // A port without a number means "all ports", which no Service port uses.
            let Some(number) = p.port else { continue };
            let number = match u16::try_from(number) {
                Ok(n) if n > 0 => n,
                _ => {
                    out.warn(&me(), Problem::BadSlicePort { port: number });
                    continue;
                }
            };
            ports.push((
                p.name.as_deref().unwrap_or(""),
                p.protocol.as_deref().unwrap_or("TCP"),
                number,
            ));
        }
        let listed = s.endpoints.as_deref().unwrap_or_default();
        let mut endpoints = Vec::with_capacity(listed.len());
        for ep in listed {
            // Consumers use the first address only (the API says they are fungible).
            let Some(text) = ep.addresses.first() else { continue };
            match text.parse::<IpAddr>() {
                Ok(addr) if addr.is_ipv4() == (s.address_type == "IPv4") => {
                    endpoints.push((addr, ep))
                }
                Ok(addr) => out.warn(
                    &me(),
                    Problem::NotOfAddressType { addr, address_type: s.address_type.clone() },
                ),
                Err(_) => out.warn(
                    &me(),
                    Problem::BadAddress { field: "endpoints[].addresses", value: text.clone() },
                ),
            }
        }
        Some(Slice { ports, endpoints })
    }
}

/// The usable slices by (namespace, service name), parsed once.
struct SliceIndex<'a> {
    by_service: HashMap<(&'a str, &'a str), Vec<Slice<'a>>>,
    /// Set by [`SliceIndex::of_one`]: the slices of the one Service asked about.
    one: Option<Vec<Slice<'a>>>,
}

impl<'a> SliceIndex<'a> {
    fn new(slices: impl IntoIterator<Item = &'a EndpointSlice>, out: &mut Out) -> Self {
        let mut sorted: Vec<&EndpointSlice> = slices.into_iter().collect();
        sorted.sort_by_key(|s| (namespace(&s.metadata), s.metadata.name.as_deref()));
        let mut by_service: HashMap<(&str, &str), Vec<Slice>> = HashMap::new();
        for s in sorted {
            // Slices without the label belong to something else (mirrors, other tools).
            let Some(service) = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            if let Some(slice) = Slice::parse(s, out) {
                by_service
                    .entry((namespace(&s.metadata), service.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        SliceIndex { by_service, one: None }
    }

    /// The slices of one Service (the [`Translator`] knows which they are), in name
    /// order, as [`Self::new`] would index them, for a translation of that Service only.
    fn of_one(sorted: impl IntoIterator<Item = &'a EndpointSlice>, out: &mut Out) -> Self {
        let one = sorted.into_iter().filter_map(|s| Slice::parse(s, out)).collect();
        SliceIndex { by_service: HashMap::new(), one: Some(one) }
    }

    /// The endpoints of one Service port: each slice maps the port through its own
    /// port of the same name and protocol. One address:port listed twice (a pod moving
    /// between slices) counts once, in its best state.
    fn endpoints(&self, ns: &str, svc: &str, name: &str, protocol: &str) -> Vec<Endpoint<'a>> {
        let slices = match &self.one {
            Some(one) => one.as_slice(),
            None => self.by_service.get(&(ns, svc)).map_or(&[][..], Vec::as_slice),
        };
        let mut found: Vec<Endpoint<'a>> = Vec::new();
        for slice in slices {
            let Some(&(_, _, port)) =
                slice.ports.iter().find(|(n, p, _)| *n == name && *p == protocol)
            else {
                continue;
            };
            found.reserve(slice.endpoints.len());
            for &(addr, ep) in &slice.endpoints {
                let c = ep.conditions.as_ref();
                // The API's defaults: ready unless said otherwise; serving as ready.
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                let serving = c.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                let node = ep.node_name.as_deref();
                found.push(Endpoint { addr, port, ready, serving, terminating, node });
            }
        }
        // By address:port, the best state first; the sort is stable, so of equals the
        // one listed first (slices in name order) stays.
        found.sort_by(|a, b| (a.addr, a.port).cmp(&(b.addr, b.port)).then(rank(b).cmp(&rank(a))));
        found.dedup_by(|later, kept| (later.addr, later.port) == (kept.addr, kept.port));
        found
    }
}

fn rank(e: &Endpoint) -> u8 {
    match (e.ready, e.serving, e.terminating) {
        (true, _, _) => 3,
        (_, true, true) => 2,
        (_, _, true) => 1,
        _ => 0,
    }
}

/// What translation reads of a Node. It owns its strings, so the [`Translator`] keeps
/// its index from one event to the next.
#[derive(Clone, Debug, PartialEq)]
struct NodeInfo {
    name: String,
    ready: bool,
    excluded: bool,
    internal: Vec<IpAddr>,
    /// InternalIP and ExternalIP addresses: where a NodePort answers.
    own: Vec<IpAddr>,
}

impl NodeInfo {
    fn of(n: &Node, out: &mut Out) -> Self {
        let me = ObjectRef::of(Kind::Node, &n.metadata);
        let status = n.status.as_ref();
        let ready = n.metadata.deletion_timestamp.is_none()
            && status
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
        let excluded =
            n.metadata.labels.as_ref().is_some_and(|l| l.contains_key(EXCLUDE_FROM_LB_LABEL));
        let (mut internal, mut own) = (Vec::new(), Vec::new());
        for a in status.and_then(|s| s.addresses.as_ref()).into_iter().flatten() {
            if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
                continue;
            }
            let Ok(ip) = a.address.parse::<IpAddr>() else {
                out.warn(
                    &me,
                    Problem::BadAddress { field: "status.addresses", value: a.address.clone() },
                );
                continue;
            };
            if a.type_ == "InternalIP" && !internal.contains(&ip) {
                internal.push(ip);
            }
            if !own.contains(&ip) {
                own.push(ip);
            }
        }
        NodeInfo { name: me.name, ready, excluded, internal, own }
    }
}

/// The Nodes by name (stable: two of one name keep their input order).
#[derive(Default)]
struct NodeIndex {
    nodes: Vec<NodeInfo>,
}

impl NodeIndex {
    fn new<'n>(nodes: impl IntoIterator<Item = &'n Node>, out: &mut Out) -> Self {
        let mut infos: Vec<NodeInfo> = nodes.into_iter().map(|n| NodeInfo::of(n, out)).collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        NodeIndex { nodes: infos }
    }

    fn get(&self, name: &str) -> Option<&NodeInfo> {
        let i = self.nodes.partition_point(|n| n.name.as_str() < name);
        self.nodes.get(i).filter(|n| n.name == name)
    }
}

/// The address families a Service serves.
#[derive(Clone, Copy)]
struct Families {
    v4: bool,
    v6: bool,
}

impl Families {
    fn allows(self, ip: IpAddr) -> bool {
        if ip.is_ipv4() {
            self.v4
        } else {
            self.v6
        }
    }
}

impl fmt::Display for Families {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.v4, self.v6) {
            (true, true) => f.write_str("IPv4, IPv6"),
            (true, false) => f.write_str("IPv4"),
            (false, true) => f.write_str("IPv6"),
            (false, false) => f.write_str("none"),
        }
    }
}

struct ServiceCx<'a, 'b> {
    svc: &'b Service,
    /// The Service's name, as [`ObjectRef::service`] gives it.
    me: &'b ObjectRef,
    opts: &'b Options,
    slices: &'b SliceIndex<'a>,
    nodes: &'b NodeIndex,
}

/// The VIP-independent facts of one Service, read once.
struct ServiceFacts<'b> {
    me: &'b ObjectRef,
    families: Families,
    cluster_ips: Vec<IpAddr>,
    external_ips: Vec<IpAddr>,
    ingress: Vec<IpAddr>,
    affinity: Option<u32>,
    /// `None`: the ingress VIPs must not be served (unreadable source ranges).
    source_ranges: Option<Vec<IpNet>>,
    external_local: bool,
    internal_local: bool,
    node_ports: bool,
}

impl<'a> ServiceCx<'a, '_> {
    fn translate(&self, out: &mut Out, node_missing_reported: &mut bool) {
        let me = self.me;
        let Some(spec) = &self.svc.spec else { return };
        let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
        match type_ {
            "ClusterIP" | "NodePort" | "LoadBalancer" => {}
            "ExternalName" => return,
            other => {
                out.warn(me, Problem::UnknownType { type_: other.to_owned() });
                return;
            }
        }
        let cluster_ip_texts: &[String] = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => ips,
            _ => spec.cluster_ip.as_slice(),
        };
        // Headless: DNS hands out the pods; there is no address to balance.
        if cluster_ip_texts.iter().any(|t| t == "None") {
            return;
        }
        let cluster_ips = parse_addrs(
            cluster_ip_texts.iter().map(String::as_str).filter(|t| !t.is_empty()),
            "spec.clusterIPs",
            me,
            out,
        );
        let families = families(spec, &cluster_ips);
        let keep_family = |ips: Vec<IpAddr>, field: &'static str, out: &mut Out| -> Vec<IpAddr> {
            ips.into_iter()
                .filter(|&ip| {
                    let ok = families.allows(ip);
                    if !ok {
                        let families = families.to_string();
                        out.warn(me, Problem::WrongFamily { field, addr: ip, families });
                    }
                    ok
                })
                .collect()
        };
        let external_ips = parse_addrs(
            spec.external_ips.iter().flatten().map(String::as_str),
            "spec.externalIPs",
            me,
            out,
        );
        let external_ips = keep_family(external_ips, "spec.externalIPs", out);

        let ours = self.opts.class.owns(self.svc);
        let ingress_entries = self
            .svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        let ingress_texts = ingress_entries.into_iter().flatten().filter_map(|i| {
            // Another load balancer that wants to see the traffic itself says Proxy.
            let proxied = i.ip_mode.as_deref() == Some("Proxy");
            if type_ != "LoadBalancer" || (proxied && !ours) {
                return None;
            }
            i.ip.as_deref()
        });
        let ingress = parse_addrs(ingress_texts, "status.loadBalancer.ingress[].ip", me, out);
        let ingress = keep_family(ingress, "status.loadBalancer.ingress[].ip", out);

        let source_ranges =
            source_ranges(spec, me, if ingress.is_empty() { None } else { Some(&mut *out) });
        let facts = ServiceFacts {
            cluster_ips: keep_family(cluster_ips, "spec.clusterIPs", out),
            external_ips,
            ingress,
            affinity: affinity(spec),
            source_ranges,
            external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            node_ports: type_ == "NodePort" || type_ == "LoadBalancer",
            families,
            me,
        };

        match &self.opts.mode {
            Mode::DaemonSet { node_name } => {
                let node = self.nodes.get(node_name);
                let has_node_port =
                    spec.ports.iter().flatten().any(|p| p.node_port.is_some_and(|n| n > 0));
                if facts.node_ports && has_node_port && node.is_none() && !*node_missing_reported {
                    *node_missing_reported = true;
                    out.warn(&ObjectRef::new(Kind::Node, "", node_name), Problem::NodeNotFound);
                }
                for port in spec.ports.iter().flatten() {
                    if let Some((number, proto)) = port_of(port, facts.me, out) {
                        self.daemonset_port(&facts, port, number, proto, node_name, node, out);
                    }
                }
            }
            Mode::Edge { pod_routable } => {
                if !ours {
                    return;
                }
                for port in spec.ports.iter().flatten() {
                    if let Some((number, proto)) = port_of(port, facts.me, out) {
                        self.edge_port(&facts, port, number, proto, *pod_routable, out);
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn daemonset_port(
        &self,
        facts: &ServiceFacts,
        port: &ServicePort,
        number: u16,
        proto: u8,
        node_name: &str,
        node: Option<&NodeInfo>,
        out: &mut Out,
    ) {
        let eps = self.endpoints(facts.me, port);
        let internal_node = facts.internal_local.then_some(node_name);
        let external_node = facts.external_local.then_some(node_name);
        let mut push = |kind, addr: IpAddr, vip_port: u16, ranges: Vec<IpNet>, local| {
            let backends = pod_backends(&eps, addr, local);
            out.vips.push(self.vip(facts, port, kind, addr, vip_port, proto, ranges, backends));
        };
        for &ip in &facts.cluster_ips {
            push(VipKind::ClusterIp, ip, number, vec![], internal_node);
        }
        let node_port = port.node_port.and_then(|n| u16::try_from(n).ok()).filter(|&n| n > 0);
        if let (true, Some(node_port), Some(node)) = (facts.node_ports, node_port, node) {
            // Families are checked here rather than warned about: a dual-stack node
            // serving a single-stack Service is normal.
            for &ip in node.own.iter().filter(|&&ip| facts.families.allows(ip)) {
                push(VipKind::NodePort, ip, node_port, vec![], external_node);
            }
        }
        for &ip in &facts.external_ips {
            push(VipKind::ExternalIp, ip, number, vec![], external_node);
        }
        if let Some(ranges) = &facts.source_ranges {
            for &ip in &facts.ingress {
                push(VipKind::LoadBalancer, ip, number, ranges_for(ranges, ip), external_node);
            }
        }
    }

    fn edge_port(
        &self,
        facts: &ServiceFacts,
        port: &ServicePort,
        number: u16,
        proto: u8,
        pod_routable: bool,
        out: &mut Out,
    ) {
        let Some(ranges) = &facts.source_ranges else { return };
        if facts.ingress.is_empty() {
            return;
        }
        let eps = self.endpoints(facts.me, port);
        let node_port = port.node_port.and_then(|n| u16::try_from(n).ok()).filter(|&n| n > 0);
        if !pod_routable && node_port.is_none() {
            out.warn(facts.me, Problem::NoNodePort { port: port.port });
            return;
        }
        for &ip in &facts.ingress {
            let backends = match node_port {
                Some(node_port) if !pod_routable => {
                    self.node_backends(&eps, ip, node_port, facts.external_local)
                }
                _ => pod_backends(&eps, ip, None),
            };
            let ranges = ranges_for(ranges, ip);
            out.vips.push(self.vip(
                facts,
                port,
                VipKind::LoadBalancer,
                ip,
                number,
                proto,
                ranges,
                backends,
            ));
        }
    }

    /// Nodes as backends of an edge VIP at `vip`. Policy Cluster: every Ready node
    /// (kube-proxy there spreads again). Policy Local: nodes hosting endpoints the
    /// choice rule picks, weighted by how many; nodes with only draining ones drain.
    fn node_backends(
        &self,
        eps: &[Endpoint],
        vip: IpAddr,
        node_port: u16,
        local: bool,
    ) -> Vec<BackendSpec> {
        let mut per_node: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
        if local {
            for b in choose(eps, vip, None) {
                if let Some(node) = b.0.node {
                    let e = per_node.entry(node).or_default();
                    if b.1 {
                        e.0 += 1;
                    } else {
                        e.1 += 1;
                    }
                }
            }
        }
        let mut backends = Vec::new();
        for n in self.nodes.nodes.iter().filter(|n| !n.excluded) {
            let Some(&addr) = n.internal.iter().find(|a| a.is_ipv4() == vip.is_ipv4()) else {
                continue;
            };
            let (weight, draining) = if local {
                match per_node.get(n.name.as_str()) {
                    Some(&(active, _)) if active > 0 => (active, !n.ready),
                    Some(_) => (1, true),
                    None => continue,
                }
            } else {
                (1, !n.ready)
            };
            backends.push(BackendSpec { addr, port: node_port, weight, draining });
        }
        sort_backends(backends)
    }

    fn endpoints(&self, me: &ObjectRef, port: &ServicePort) -> Vec<Endpoint<'a>> {
        let name = port.name.as_deref().unwrap_or("");
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        self.slices.endpoints(&me.namespace, &me.name, name, protocol)
    }

    #[allow(clippy::too_many_arguments)]
    fn vip(
        &self,
        facts: &ServiceFacts,
        port: &ServicePort,
        kind: VipKind,
        addr: IpAddr,
        vip_port: u16,
        proto: u8,
        source_ranges: Vec<IpNet>,
        backends: Vec<BackendSpec>,
    ) -> ServiceVip {
        ServiceVip {
            service: facts.me.clone(),
            kind,
            port_name: port.name.clone().unwrap_or_default(),
            spec: VipSpec {
                addr,
                port: vip_port,
                proto,
                snat_addr: None,
                affinity_timeout_s: facts.affinity,
                source_ranges,
                ring_max: self.opts.ring_max,
                backends,
            },
        }
    }
}

/// Endpoints of the VIP's family (on `node`, under a Local policy), each with whether
/// it takes new flows: the ready ones; when none is, the serving + terminating ones.
fn choose<'e, 'a>(
    eps: &'e [Endpoint<'a>],
    vip: IpAddr,
    node: Option<&'e str>,
) -> impl Iterator<Item = (&'e Endpoint<'a>, bool)> + 'e {
    let candidate = move |e: &&Endpoint| {
        e.addr.is_ipv4() == vip.is_ipv4() && node.is_none_or(|n| e.node == Some(n))
    };
    let any_ready = eps.iter().filter(candidate).any(|e| e.ready);
    eps.iter().filter(candidate).map(move |e| {
        let active = if any_ready { e.ready } else { e.serving && e.terminating };
        (e, active)
    })
}

fn pod_backends(eps: &[Endpoint], vip: IpAddr, node: Option<&str>) -> Vec<BackendSpec> {
    let mut backends = Vec::with_capacity(eps.len());
    backends.extend(choose(eps, vip, node).map(|(e, active)| BackendSpec {
        addr: e.addr,
        port: e.port,
        weight: 1,
        draining: !active,
    }));
    sort_backends(backends)
}

fn sort_backends(mut b: Vec<BackendSpec>) -> Vec<BackendSpec> {
    b.sort_by_key(|b| (b.addr, b.port));
    b
}

/// The port's number and protocol, or `None` (reported) when vipr cannot serve it.
fn port_of(port: &ServicePort, me: &ObjectRef, out: &mut Out) -> Option<(u16, u8)> {
    let proto = match port.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => PROTO_TCP,
        "UDP" => PROTO_UDP,
        other => {
            out.warn(
                me,
                Problem::UnsupportedProtocol { port: port.port, protocol: other.to_owned() },
            );
            return None;
        }
    };
    match u16::try_from(port.port) {
        Ok(n) if n > 0 => Some((n, proto)),
        _ => {
            out.warn(me, Problem::BadPort { port: port.port });
            None
        }
    }
}

fn parse_addrs<'t>(
    texts: impl Iterator<Item = &'t str>,
    field: &'static str,
    me: &ObjectRef,
    out: &mut Out,
) -> Vec<IpAddr> {
    let mut addrs = Vec::new();
    for t in texts {
        match t.trim().parse::<IpAddr>() {
            Ok(ip) if !addrs.contains(&ip) => addrs.push(ip),
            Ok(_) => {}
            Err(_) => out.warn(me, Problem::BadAddress { field, value: t.to_owned() }),
        }
    }
    addrs
}

fn families(spec: &ServiceSpec, cluster_ips: &[IpAddr]) -> Families {
    let listed = spec.ip_families.as_deref().unwrap_or_default();
    if !listed.is_empty() {
        return Families {
            v4: listed.iter().any(|f| f == "IPv4"),
            v6: listed.iter().any(|f| f == "IPv6"),
        };
    }
    if !cluster_ips.is_empty() {
        return Families {
            v4: cluster_ips.iter().any(IpAddr::is_ipv4),
            v6: cluster_ips.iter().any(IpAddr::is_ipv6),
        };
    }
    // A hand-written manifest often says neither: let the addresses decide.
    Families { v4: true, v6: true }
}

fn affinity(spec: &ServiceSpec) -> Option<u32> {
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return None;
    }
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .map_or(DEFAULT_AFFINITY_TIMEOUT_S, |t| {
            u32::try_from(t).unwrap_or(1).clamp(1, MAX_AFFINITY_TIMEOUT_S)
        });
    Some(timeout)
}

/// The parsed `loadBalancerSourceRanges`, or `None` when one of them is unreadable.
/// Warnings only go out when there are ingress addresses they would affect.
fn source_ranges(
    spec: &ServiceSpec,
    me: &ObjectRef,
    mut out: Option<&mut Out>,
) -> Option<Vec<IpNet>> {
    let mut nets = BTreeSet::new();
    let mut ok = true;
    for text in spec.load_balancer_source_ranges.iter().flatten() {
        let t = text.trim();
        // Kubernetes accepts a bare address as a host range.
        let parsed = t.parse::<IpNet>().or_else(|_| t.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => {
                nets.insert(net.trunc());
            }
            Err(_) => {
                ok = false;
                if let Some(out) = out.as_deref_mut() {
                    out.warn(me, Problem::BadSourceRange { value: text.clone() });
                }
            }
        }
    }
    ok.then(|| nets.into_iter().collect())
}

/// The source ranges of the VIP's family. A non-empty list with none of that family
/// admits nobody of it (kube-proxy does the same); an empty `source_ranges` would
/// admit everyone, so it gets the unspecified address, which is never a client's
/// source (RFC 1122 3.2.1.3, RFC 4291 2.5.2).
fn ranges_for(ranges: &[IpNet], vip: IpAddr) -> Vec<IpNet> {
    if ranges.is_empty() {
        return vec![];
    }
    let same: Vec<IpNet> =
        ranges.iter().copied().filter(|n| n.addr().is_ipv4() == vip.is_ipv4()).collect();
    if !same.is_empty() {
        return same;
    }
    let nobody = match vip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    vec![IpNet::from(nobody)]
}

#[cfg(test)]
mod tests;
