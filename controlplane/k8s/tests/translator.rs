//! The event-driven [`Translator`] against the pure [`translate`]: after every event of
//! a seeded pseudo-random sequence (Services, slices and Nodes applied, changed, moved
//! and deleted, whole relists with objects missing), in daemonset and edge modes, the
//! VIPs built up from its changes equal `translate`'s on the same objects, and it
//! translates again only what the event touched.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use vipr_abi::VipKey;
use vipr_k8s::fixtures::{node, service, slice};
use vipr_k8s::k8s_openapi::api::core::v1::{Node, Service};
use vipr_k8s::k8s_openapi::api::discovery::v1::EndpointSlice;
use vipr_k8s::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use vipr_k8s::{
    translate, Inputs, LbClass, Mode, Options, Problem, ServiceVip, TranslationChanges, Translator,
    VipKind,
};

// ---------------------------------------------------------------------------------------
// A cluster that changes at random

/// xorshift64: reproducible from its seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const SERVICES: usize = 30;
const NODES: usize = 4;
const THIS_NODE: &str = "node-0";
const OTHER_CLASS: &str = "example.com/other";

fn namespace_of(i: usize) -> &'static str {
    if i.is_multiple_of(3) {
        "team"
    } else {
        "default"
    }
}

/// The objects as an API server would hold them: every write gets a new
/// resourceVersion, every creation a new uid.
#[derive(Default)]
struct Cluster {
    /// By (namespace, name).
    services: BTreeMap<(String, String), Arc<Service>>,
    slices: BTreeMap<(String, String), Arc<EndpointSlice>>,
    nodes: BTreeMap<String, Arc<Node>>,
    revision: u64,
}

impl Cluster {
    fn stamp(&mut self, meta: &mut ObjectMeta, old: Option<&ObjectMeta>) {
        self.revision += 1;
        meta.resource_version = Some(self.revision.to_string());
        meta.uid = Some(match old.and_then(|m| m.uid.clone()) {
            Some(uid) => uid,
            None => format!("uid-{}", self.revision),
        });
    }

    fn put_service(&mut self, mut s: Service) -> Arc<Service> {
        let key = (s.metadata.namespace.clone().unwrap(), s.metadata.name.clone().unwrap());
        let old = self.services.get(&key).map(|o| o.metadata.clone());
        self.stamp(&mut s.metadata, old.as_ref());
        let s = Arc::new(s);
        self.services.insert(key, s.clone());
        s
    }

    fn put_slice(&mut self, mut s: EndpointSlice) -> Arc<EndpointSlice> {
        let key = (s.metadata.namespace.clone().unwrap(), s.metadata.name.clone().unwrap());
        let old = self.slices.get(&key).map(|o| o.metadata.clone());
        self.stamp(&mut s.metadata, old.as_ref());
        let s = Arc::new(s);
        self.slices.insert(key, s.clone());
        s
    }

    fn put_node(&mut self, mut n: Node) -> Arc<Node> {
        let key = n.metadata.name.clone().unwrap();
        let old = self.nodes.get(&key).map(|o| o.metadata.clone());
        self.stamp(&mut n.metadata, old.as_ref());
        let n = Arc::new(n);
        self.nodes.insert(key, n.clone());
        n
    }

    /// Nodes by name: the order in which the translator reports their warnings.
    fn inputs(&self) -> Inputs {
        Inputs {
            services: self.services.values().map(|s| (**s).clone()).collect(),
            endpoint_slices: self.slices.values().map(|s| (**s).clone()).collect(),
            nodes: self.nodes.values().map(|n| (**n).clone()).collect(),
        }
    }
}

/// A Service `svc-i` of a random shape. Addresses come from small pools so that
/// Services often claim one VIP and take it over from each other.
fn random_service(rng: &mut Rng, i: usize) -> Service {
    let cluster_ip = format!("198.51.100.{}", 1 + rng.below(12));
    let mut b = service(&format!("svc-{i}")).namespace(namespace_of(i));
    b = match rng.below(10) {
        0 => b.headless(),
        1 => b.cluster_ips(&[&cluster_ip, &format!("2001:db8::{}", 1 + rng.below(4))]),
        _ => b.cluster_ip(&cluster_ip),
    };
    let kind = rng.below(3);
    b = match kind {
        0 => b,
        1 => b.node_port_type(),
        _ => b.load_balancer(),
    };
    b = b.port(80, 8080);
    if kind > 0 {
        b = b.node_port(30000 + rng.below(6) as i32);
    }
    if rng.chance(30) {
        b = b.udp_port("dns", 53, 5353);
        if kind > 0 {
            b = b.node_port(31000 + rng.below(4) as i32);
        }
    }
    if kind == 2 {
        let first = format!("203.0.113.{}", 1 + rng.below(6));
        let second = format!("203.0.113.{}", 1 + rng.below(6));
        b = match rng.below(4) {
            0 => b,
            1 => b.ingress(&[&first, &second]),
            _ => b.ingress(&[&first]),
        };
        b = match rng.below(6) {
            0 => b.source_ranges(&["192.0.2.0/24", "2001:db8::/32"]),
            1 => b.source_ranges(&["not a range"]),
            _ => b,
        };
        if rng.chance(15) {
            b = b.lb_class(OTHER_CLASS);
            if rng.chance(50) {
                b = b.ingress_mode("Proxy");
            }
        }
    }
    if rng.chance(15) {
        b = b.external_ips(&[&format!("198.51.100.{}", 1 + rng.below(12))]);
    }
    if rng.chance(20) {
        b = b.external_local();
    }
    if rng.chance(15) {
        b = b.internal_local();
    }
    if rng.chance(10) {
        b = b.affinity(Some(60));
    }
    b.build()
}

/// A slice of `svc-i` (or of no Service) with a random set of endpoints.
fn random_slice(rng: &mut Rng, name: &str, ns: &str, owner: Option<usize>) -> EndpointSlice {
    let mut b = slice(name, &owner.map_or(String::new(), |i| format!("svc-{i}"))).namespace(ns);
    if owner.is_none() {
        b.0.metadata.labels = None;
    }
    let net = 1 + rng.below(40);
    b = b.port(8080);
    if rng.chance(50) {
        b = b.udp_port("dns", 5353);
    }
    if rng.chance(3) {
        b = b.port(70000);
    }
    for host in 1..=(rng.below(5) as u8) {
        let addr = format!("10.0.{net}.{host}");
        b = match rng.below(6) {
            0 => b.not_ready(&addr),
            1 => b.terminating(&addr, rng.chance(50)),
            _ => b.ready(&addr),
        };
        if rng.chance(80) {
            b = b.on(&format!("node-{}", rng.below(NODES)));
        }
    }
    if rng.chance(3) {
        b = b.ready("2001:db8::99");
    }
    b.build()
}

fn random_node(rng: &mut Rng, i: usize) -> Node {
    let mut b = node(&format!("node-{i}"));
    if rng.chance(85) {
        b = b.internal_ip(&format!("192.0.2.{}", 1 + rng.below(8)));
    }
    if rng.chance(30) {
        b = b.internal_ip(&format!("2001:db8:1::{}", 1 + rng.below(4)));
    }
    if rng.chance(30) {
        b = b.external_ip(&format!("192.0.2.{}", 100 + rng.below(4)));
    }
    if rng.chance(5) {
        b = b.internal_ip("not an address");
    }
    b = b.hostname(&format!("host-{i}"));
    if rng.chance(20) {
        b = b.not_ready();
    }
    if rng.chance(20) {
        b = b.exclude_from_lb();
    }
    b.build()
}

fn flip_ready(n: &Node) -> Node {
    let mut n = n.clone();
    for c in n.status.iter_mut().flat_map(|s| s.conditions.iter_mut().flatten()) {
        if c.type_ == "Ready" {
            c.status = if c.status == "True" { "False" } else { "True" }.into();
        }
    }
    n
}

fn flip_excluded(n: &Node) -> Node {
    const EXCLUDE: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
    let mut n = n.clone();
    let labels = n.metadata.labels.get_or_insert_with(Default::default);
    if labels.remove(EXCLUDE).is_none() {
        labels.insert(EXCLUDE.into(), String::new());
    }
    n
}

/// The same Node with nothing translation reads changed: a kubelet status update.
fn heartbeat(n: &Node, beat: u64) -> Node {
    let mut n = n.clone();
    let labels = n.metadata.labels.get_or_insert_with(Default::default);
    labels.insert("example.com/beat".into(), beat.to_string());
    if let Some(conditions) = n.status.as_mut().and_then(|s| s.conditions.as_mut()) {
        for c in conditions {
            c.message = Some(format!("kubelet is posting ready status ({beat})"));
        }
    }
    n
}

// ---------------------------------------------------------------------------------------
// Checks

/// What a consumer builds up from the changes.
type Served = HashMap<VipKey, ServiceVip>;

/// Applies `ch` to `served` and checks it is a well-formed change set.
fn consume(served: &mut Served, ch: &TranslationChanges, step: &str) {
    let removed: BTreeSet<VipKey> = ch.removes.iter().copied().collect();
    assert_eq!(removed.len(), ch.removes.len(), "{step}: a key removed twice");
    let upserted: BTreeSet<VipKey> = ch.upserts.iter().map(|v| v.spec.key()).collect();
    assert_eq!(upserted.len(), ch.upserts.len(), "{step}: a key upserted twice");
    assert!(removed.is_disjoint(&upserted), "{step}: a key both upserted and removed");
    for k in &ch.removes {
        assert!(served.remove(k).is_some(), "{step}: removed {k:?}, which was not served");
    }
    for v in &ch.upserts {
        if let Some(old) = served.insert(v.spec.key(), v.clone()) {
            assert_ne!(&old, v, "{step}: an upsert of what was served already");
        }
    }
}

fn strings<'w>(ws: impl IntoIterator<Item = &'w vipr_k8s::Warning>) -> BTreeSet<String> {
    ws.into_iter().map(ToString::to_string).collect()
}

/// The translator's state after `step` against `translate` on the cluster.
fn check(
    t: &Translator,
    served: &Served,
    ch: &TranslationChanges,
    c: &Cluster,
    opts: &Options,
    step: &str,
) {
    let full = translate(&c.inputs(), opts);
    let expected: Served = full.vips.iter().map(|v| (v.spec.key(), v.clone())).collect();
    if *served != expected {
        let mut keys: BTreeSet<&VipKey> = served.keys().collect();
        keys.extend(expected.keys());
        for k in keys {
            if served.get(k) != expected.get(k) {
                panic!(
                    "{step}: the changes serve {:#?}\nbut translate gives {:#?}",
                    served.get(k),
                    expected.get(k)
                );
            }
        }
    }
    let whole = t.translation();
    assert_eq!(whole.vips, full.vips, "{step}: translation() differs from translate");
    assert_eq!(strings(&whole.warnings), strings(&full.warnings), "{step}: warnings differ");
    let all = strings(&full.warnings);
    for w in &ch.warnings {
        assert!(all.contains(&w.to_string()), "{step}: a warning translate does not give: {w}");
    }
    let lb: BTreeSet<IpAddr> =
        full.vips.iter().filter(|v| v.kind == VipKind::LoadBalancer).map(|v| v.spec.addr).collect();
    let mut got: Vec<IpAddr> = t.load_balancer_addresses().collect();
    got.sort();
    assert_eq!(got, lb.into_iter().collect::<Vec<_>>(), "{step}: load balancer addresses");
    assert_eq!(t.services().count(), c.services.len(), "{step}: services()");
}

/// Counts of what the sequence went through, so a run that never provoked a case fails.
#[derive(Debug, Default)]
struct Seen {
    conflicts: usize,
    takeovers: usize,
    single_slice: usize,
    heartbeats: usize,
    quiet_relists: usize,
    relabels: usize,
    node_changes: usize,
}

fn run(opts: Options, seed: u64, steps: usize) -> Seen {
    let mut rng = Rng(seed);
    let mut c = Cluster::default();
    let mut t = Translator::new(opts.clone());
    let mut served = Served::new();
    let mut seen = Seen::default();

    // A starting cluster, listed whole.
    for i in 0..SERVICES {
        if rng.chance(70) {
            c.put_service(random_service(&mut rng, i));
        }
    }
    for i in 0..SERVICES {
        let ns = namespace_of(i);
        for part in ["a", "b"] {
            if rng.chance(60) {
                c.put_slice(random_slice(&mut rng, &format!("svc-{i}-{part}"), ns, Some(i)));
            }
        }
    }
    for i in 0..NODES {
        c.put_node(random_node(&mut rng, i));
    }
    t.replace_services(c.services.values().cloned().collect());
    t.replace_slices(c.slices.values().cloned().collect());
    t.replace_nodes(c.nodes.values().cloned().collect());
    let ch = t.take_changes();
    assert!(ch.initial, "the first changes are initial");
    assert!(ch.removes.is_empty());
    assert_eq!(t.retranslated, c.services.len(), "the first call translates every Service");
    consume(&mut served, &ch, "the first list");
    check(&t, &served, &ch, &c, &opts, "the first list");

    for n in 0..steps {
        let mut expect_retranslated: Option<usize> = None;
        // The event changes nothing translation reads: no work, no changes.
        let mut quiet = false;
        // Nor anything at all: no warning either (a Node's are reported when they change).
        let mut silent = false;
        let what: String;
        let roll = rng.below(100);
        match roll {
            0..=14 => {
                let i = rng.below(SERVICES);
                let s = c.put_service(random_service(&mut rng, i));
                what = format!("apply Service svc-{i}");
                t.apply_service(s);
                expect_retranslated = Some(1);
            }
            15..=21 => {
                let i = rng.below(SERVICES);
                let key = (namespace_of(i).to_owned(), format!("svc-{i}"));
                what = format!("delete Service svc-{i}");
                if c.services.remove(&key).is_some() {
                    expect_retranslated = Some(0);
                }
                t.delete_service(&key.0, &key.1);
            }
            22..=51 => {
                // New endpoints in one slice of a Service; its label stays.
                let i = rng.below(SERVICES);
                let ns = namespace_of(i);
                let name = format!("svc-{i}-{}", ["a", "b"][rng.below(2)]);
                let key = (ns.to_owned(), name.clone());
                let owner = c.slices.get(&key).map_or(Some(i), |s| owner_index(s));
                let s = c.put_slice(random_slice(&mut rng, &name, ns, owner));
                what = format!("apply slice {name}");
                let owner_held = owner
                    .is_some_and(|o| c.services.contains_key(&(ns.to_owned(), format!("svc-{o}"))));
                if owner_held {
                    expect_retranslated = Some(1);
                    seen.single_slice += 1;
                }
                t.apply_slice(s);
            }
            52..=57 => {
                let Some(key) = pick(&mut rng, c.slices.keys()) else { continue };
                what = format!("delete slice {}", key.1);
                c.slices.remove(&key);
                t.delete_slice(&key.0, &key.1);
            }
            58..=63 => {
                // The slice names another Service of its namespace, or none.
                let Some(key) = pick(&mut rng, c.slices.keys()) else { continue };
                let to = (0..SERVICES).filter(|&j| namespace_of(j) == key.0).nth(rng.below(8));
                let to = if rng.chance(15) { None } else { to };
                what = format!("relabel slice {} to {to:?}", key.1);
                let s = c.put_slice(random_slice(&mut rng, &key.1, &key.0, to));
                t.apply_slice(s);
                seen.relabels += 1;
            }
            64..=71 => {
                let i = rng.below(NODES);
                let name = format!("node-{i}");
                let daemonset = matches!(&opts.mode, Mode::DaemonSet { .. });
                // One fact at a time too: a random Node seldom changes only one.
                let n = match (c.nodes.get(&name), rng.below(4)) {
                    (Some(n), 0) => {
                        what = format!("flip Ready of {name}");
                        // Not read in daemonset mode.
                        quiet = daemonset;
                        flip_ready(n)
                    }
                    (Some(n), 1) => {
                        what = format!("flip the exclude label of {name}");
                        quiet = daemonset;
                        flip_excluded(n)
                    }
                    _ => {
                        what = format!("change {name}");
                        quiet = daemonset && i != 0;
                        random_node(&mut rng, i)
                    }
                };
                let n = c.put_node(n);
                t.apply_node(n);
                seen.node_changes += 1;
            }
            72..=83 => {
                let Some(name) = pick(&mut rng, c.nodes.keys()) else { continue };
                what = format!("heartbeat of {name}");
                let n = heartbeat(&c.nodes[&name], n as u64);
                let n = c.put_node(n);
                t.apply_node(n);
                silent = true;
                seen.heartbeats += 1;
            }
            84..=86 => {
                let Some(name) = pick(&mut rng, c.nodes.keys()) else { continue };
                what = format!("delete {name}");
                c.nodes.remove(&name);
                t.delete_node(&name);
            }
            87..=94 => {
                // A relist of one kind, a few objects gone meanwhile (or none).
                let missing = rng.below(4);
                let kind = rng.below(3);
                what = format!("relist of kind {kind} with {missing} gone");
                for _ in 0..missing {
                    match kind {
                        0 => {
                            if let Some(k) = pick(&mut rng, c.services.keys()) {
                                c.services.remove(&k);
                            }
                        }
                        1 => {
                            if let Some(k) = pick(&mut rng, c.slices.keys()) {
                                c.slices.remove(&k);
                            }
                        }
                        _ => {
                            if let Some(k) = pick(&mut rng, c.nodes.keys()) {
                                c.nodes.remove(&k);
                            }
                        }
                    }
                }
                match kind {
                    0 => t.replace_services(c.services.values().cloned().collect()),
                    1 => t.replace_slices(c.slices.values().cloned().collect()),
                    _ => t.replace_nodes(c.nodes.values().cloned().collect()),
                }
                if missing == 0 {
                    silent = true;
                    seen.quiet_relists += 1;
                }
            }
            _ => {
                // Objects without uid or resourceVersion (manifests) compare by content.
                what = "an unchanged copy of every Service, without versions".to_owned();
                let versioned =
                    c.services.values().filter(|s| s.metadata.resource_version.is_some()).count();
                let bare =
                    |m: &ObjectMeta| ObjectMeta { uid: None, resource_version: None, ..m.clone() };
                for s in c.services.values_mut() {
                    let mut copy = (**s).clone();
                    copy.metadata = bare(&copy.metadata);
                    *s = Arc::new(copy);
                }
                t.replace_services(c.services.values().cloned().collect());
                // The versions went, so this pass translates every Service again (to
                // the same VIPs); the same copies once more cost nothing.
                let ch = t.take_changes();
                assert_eq!(t.retranslated, versioned);
                assert!(ch.is_empty(), "seed {seed} step {n}: {ch:?}");
                t.replace_services(c.services.values().cloned().collect());
                silent = true;
            }
        }
        let step = format!("seed {seed} step {n} ({what})");
        let before = served.clone();
        let ch = t.take_changes();
        assert!(!ch.initial, "{step}: initial again");
        consume(&mut served, &ch, &step);
        check(&t, &served, &ch, &c, &opts, &step);
        if let Some(want) = expect_retranslated {
            assert_eq!(t.retranslated, want, "{step}: Services translated again");
        }
        if quiet || silent {
            assert_eq!(t.retranslated, 0, "{step}: Services translated again");
            assert!(ch.is_empty(), "{step}: changes without a translation: {ch:?}");
        }
        if silent {
            assert!(ch.warnings.is_empty(), "{step}: {:?}", ch.warnings);
        }
        let conflicts =
            ch.warnings.iter().filter(|w| matches!(w.problem, Problem::VipConflict { .. }));
        seen.conflicts += conflicts.count();
        seen.takeovers += ch
            .upserts
            .iter()
            .filter(|v| before.get(&v.spec.key()).is_some_and(|o| o.service != v.service))
            .count();
    }
    seen
}

fn owner_index(s: &EndpointSlice) -> Option<usize> {
    let label = s.metadata.labels.as_ref()?.get("kubernetes.io/service-name")?;
    label.strip_prefix("svc-")?.parse().ok()
}

fn pick<'k, K: Clone + 'k>(rng: &mut Rng, keys: impl ExactSizeIterator<Item = &'k K>) -> Option<K> {
    let n = keys.len();
    if n == 0 {
        return None;
    }
    let i = rng.below(n);
    keys.into_iter().nth(i).cloned()
}

fn assert_covered(seen: &Seen) {
    eprintln!("{seen:?}");
    assert!(seen.conflicts > 0, "no VIP conflict in the sequence: {seen:?}");
    assert!(seen.takeovers > 0, "no VIP taken over by the next claimant: {seen:?}");
    assert!(seen.single_slice > 20 && seen.heartbeats > 10 && seen.quiet_relists > 0);
    assert!(seen.relabels > 0 && seen.node_changes > 0);
}

#[test]
fn in_daemonset_mode_the_changes_always_add_up_to_translate() {
    let opts =
        Options { mode: Mode::DaemonSet { node_name: THIS_NODE.into() }, ..Options::default() };
    for seed in [0x9e37_79b9_7f4a_7c15, 7, 0xdead_beef] {
        assert_covered(&run(opts.clone(), seed, 400));
    }
}

#[test]
fn in_edge_mode_the_changes_always_add_up_to_translate() {
    let opts = Options { mode: Mode::Edge { pod_routable: false }, ..Options::default() };
    for seed in [0x9e37_79b9_7f4a_7c15, 11, 0x1234_5678] {
        assert_covered(&run(opts.clone(), seed, 400));
    }
}

#[test]
fn in_edge_mode_with_routable_pods_the_changes_always_add_up_to_translate() {
    let opts = Options {
        mode: Mode::Edge { pod_routable: true },
        class: LbClass { name: OTHER_CLASS.into(), default: true },
        ..Options::default()
    };
    for seed in [3, 0xfeed_f00d] {
        run(opts.clone(), seed, 300);
    }
}

// ---------------------------------------------------------------------------------------
// Named cases

fn web(i: usize) -> Service {
    service(&format!("web-{i}"))
        .cluster_ip(&format!("198.51.100.{}", i + 1))
        .node_port_type()
        .port(80, 8080)
        .node_port(30000 + i as i32)
        .build()
}

fn endpoints(i: usize, first: u8) -> EndpointSlice {
    slice(&format!("web-{i}-a"), &format!("web-{i}"))
        .port(8080)
        .ready(&format!("192.0.2.{first}"))
        .ready(&format!("192.0.2.{}", first + 1))
        .build()
}

#[test]
fn the_translator_translates_again_only_the_services_an_event_touches() {
    let opts =
        Options { mode: Mode::DaemonSet { node_name: "node-a".into() }, ..Options::default() };
    let mut t = Translator::new(opts);
    t.replace_services((0..20).map(|i| Arc::new(web(i))).collect());
    t.replace_slices((0..20).map(|i| Arc::new(endpoints(i, 10))).collect());
    t.replace_nodes(vec![Arc::new(node("node-a").internal_ip("203.0.113.1").build())]);
    let ch = t.take_changes();
    assert!(ch.initial);
    assert_eq!(t.retranslated, 20, "the first call translates everything");
    assert_eq!(ch.upserts.len(), 40, "a ClusterIP and a NodePort VIP each");
    assert!(t.take_changes().is_empty());
    assert_eq!(t.retranslated, 0, "nothing changed");

    t.apply_slice(Arc::new(endpoints(7, 40)));
    let ch = t.take_changes();
    assert_eq!(t.retranslated, 1, "one endpoint moved");
    assert_eq!(ch.upserts.len(), 2);
    assert!(ch.upserts.iter().all(|v| v.service.name == "web-7"));

    t.apply_service(Arc::new(web(20)));
    t.apply_slice(Arc::new(endpoints(20, 60)));
    assert_eq!(t.take_changes().upserts.len(), 2);
    assert_eq!(t.retranslated, 1, "one Service added, with its slice: one translation");

    t.delete_service("default", "web-3");
    let ch = t.take_changes();
    assert_eq!((t.retranslated, ch.removes.len()), (0, 2), "one Service deleted: two VIPs go");

    // The same objects in a relist (equal content, no versions): nothing to do.
    t.replace_slices(
        (0..21)
            .map(|i| {
                Arc::new(endpoints(i, [10, 40, 60][usize::from(i == 7) + 2 * usize::from(i == 20)]))
            })
            .collect(),
    );
    assert!(t.take_changes().is_empty());
    assert_eq!(t.retranslated, 0, "a relist of what is held");

    t.apply_node(Arc::new(node("node-a").internal_ip("203.0.113.1").hostname("a").build()));
    assert!(t.take_changes().is_empty());
    assert_eq!(t.retranslated, 0, "a Node change of no fact translation reads");
    t.apply_node(Arc::new(node("node-b").internal_ip("203.0.113.2").build()));
    assert_eq!((t.take_changes().is_empty(), t.retranslated), (true, 0), "another node");

    t.apply_node(Arc::new(node("node-a").internal_ip("203.0.113.9").build()));
    let ch = t.take_changes();
    assert_eq!(t.retranslated, 20, "this node's address: every NodePort Service");
    assert_eq!((ch.upserts.len(), ch.removes.len()), (20, 20), "the NodePort VIPs move");
}

#[test]
fn when_the_owner_of_a_vip_goes_the_next_claimant_takes_it_over() {
    let shared =
        |name: &str, target: i32| service(name).cluster_ip("198.51.100.1").port(80, target).build();
    let mut t = Translator::new(Options::default());
    t.apply_service(Arc::new(shared("b", 8081)));
    t.apply_service(Arc::new(shared("c", 8082)));
    t.apply_service(Arc::new(shared("a", 8080)));
    let ch = t.take_changes();
    assert_eq!(ch.upserts.len(), 1);
    assert_eq!(ch.upserts[0].service.name, "a", "the first by name serves");
    let losers: BTreeSet<&str> = ch
        .warnings
        .iter()
        .filter(|w| matches!(&w.problem, Problem::VipConflict { owner, .. } if owner.name == "a"))
        .map(|w| w.object.name.as_str())
        .collect();
    assert_eq!(losers, BTreeSet::from(["b", "c"]));

    t.delete_service("default", "a");
    let ch = t.take_changes();
    assert_eq!((ch.upserts.len(), ch.removes.len()), (1, 0));
    assert_eq!(ch.upserts[0].service.name, "b", "the next claimant takes over");

    // b stops claiming the key: c gets it.
    t.apply_service(Arc::new(service("b").cluster_ip("198.51.100.2").port(80, 8081).build()));
    let ch = t.take_changes();
    let names: BTreeSet<&str> = ch.upserts.iter().map(|v| v.service.name.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["b", "c"]));
    assert!(ch.removes.is_empty());

    t.delete_service("default", "c");
    t.delete_service("default", "b");
    let ch = t.take_changes();
    assert_eq!((ch.upserts.len(), ch.removes.len()), (0, 2));
    assert!(t.translation().vips.is_empty());
}

#[test]
fn a_slice_relabelled_to_another_service_moves_its_endpoints() {
    let mut t = Translator::new(Options::default());
    for name in ["x", "y"] {
        let ip = if name == "x" { "198.51.100.1" } else { "198.51.100.2" };
        t.apply_service(Arc::new(service(name).cluster_ip(ip).port(80, 8080).build()));
    }
    t.apply_slice(Arc::new(slice("s", "x").port(8080).ready("10.0.0.1").build()));
    t.take_changes();
    let backends = |t: &Translator, name: &str| {
        let v = t.translation().vips.into_iter().find(|v| v.service.name == name).unwrap();
        v.spec.backends.len()
    };
    assert_eq!((backends(&t, "x"), backends(&t, "y")), (1, 0));

    t.apply_slice(Arc::new(slice("s", "y").port(8080).ready("10.0.0.1").build()));
    let ch = t.take_changes();
    assert_eq!(t.retranslated, 2, "both Services");
    assert_eq!(ch.upserts.len(), 2);
    assert_eq!((backends(&t, "x"), backends(&t, "y")), (0, 1));

    let mut unlabelled = slice("s", "y").port(8080).ready("10.0.0.1").build();
    unlabelled.metadata.labels = None;
    t.apply_slice(Arc::new(unlabelled));
    t.take_changes();
    assert_eq!(t.retranslated, 1);
    assert_eq!(backends(&t, "y"), 0, "a slice without the label belongs to no Service");
}
