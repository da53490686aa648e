//! [`Translator`]: [`translate`](super::translate) driven by watch events, at a cost per
//! event that follows the size of the Service it touches, not of the cluster.
//!
//! # Contract
//!
//! - It holds the objects it was told about (`apply_*`, `delete_*`, `replace_*`) and,
//!   on [`Translator::take_changes`], translates again only the Services touched since
//!   the last call: a Service applied or deleted, one whose EndpointSlices changed
//!   (both of them when a slice names another Service), and, when a Node fact the mode
//!   reads changed, the Services that read it. An object equal to the one held (same
//!   uid and resourceVersion, or equal content when it has neither) touches nothing,
//!   so a relist of unchanged objects and a Node heartbeat cost no translation.
//! - After `take_changes`, the VIPs served (those handed out as upserts minus those
//!   removed since) are exactly the VIPs of [`translate`](super::translate) on the held
//!   objects; [`Translator::translation`] gives that whole output.
//! - Conflicts resolve as `translate` does: of the Services claiming one VIP key, the
//!   first by (namespace, name) serves it; when it stops claiming the key, the next one
//!   does (an upsert).

use super::{conflict, NodeIndex, NodeInfo, Out, Problem, ServiceCx, SliceIndex};
use super::{Mode, Options, ServiceVip, Translation, VipKind, Warning};
use crate::object::{namespace, Kind, ObjectRef, SERVICE_NAME_LABEL};
use hashbrown::{HashMap, HashSet};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use vipr_abi::VipKey;

/// What changed in the translation since the last `take_changes`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TranslationChanges {
    /// True for the first changes of a Translator: it started empty, so every VIP it
    /// serves is an upsert; a consumer holding VIPs from an earlier translator replaces
    /// them all.
    pub initial: bool,
    /// VIPs that are new or whose ServiceVip (spec, kind, service, port name) differs,
    /// each once.
    pub upserts: Vec<ServiceVip>,
    /// VIP keys no longer served, each once; never also in upserts.
    pub removes: Vec<VipKey>,
    /// Warnings of the Services translated again by this call (their slices' too),
    /// plus VipConflict warnings for conflicts involving them, plus those of Nodes
    /// whose warnings changed.
    pub warnings: Vec<Warning>,
}

impl TranslationChanges {
    /// No upserts, no removes, not initial: nothing to program.
    pub fn is_empty(&self) -> bool {
        !self.initial && self.upserts.is_empty() && self.removes.is_empty()
    }
}

/// One Service's part of the output as of its last translation.
struct Fragment {
    /// The keys it claims, each once, in the order it produced them.
    keys: Vec<VipKey>,
    /// Its own warnings (not its slices', which [`Translator::translation`] reads
    /// from the slices themselves).
    warnings: Vec<Warning>,
}

/// [`translate`](super::translate), event by event. See the module docs.
pub struct Translator {
    opts: Options,
    services: HashMap<ObjectRef, Arc<Service>>,
    /// The labelled slices, each with the Service its label names.
    slices: HashMap<ObjectRef, (Arc<EndpointSlice>, ObjectRef)>,
    /// The slices of each Service by slice name: what translating one Service reads.
    by_service: HashMap<ObjectRef, BTreeMap<String, Arc<EndpointSlice>>>,
    nodes: HashMap<String, Arc<Node>>,
    /// Kept up to date per Node event, so no event rebuilds it.
    node_index: NodeIndex,
    /// The warnings each Node had when last applied, to report them once.
    node_warnings: HashMap<String, Vec<Warning>>,
    new_node_warnings: Vec<Warning>,
    /// The Services whose VIPs read Node facts in this mode.
    node_readers: HashSet<ObjectRef>,
    /// Services to translate again; ordered so that warnings come out in a stable order.
    dirty: BTreeSet<ObjectRef>,
    fragments: HashMap<ObjectRef, Fragment>,
    /// Every Service's VIP for a key, in (namespace, name) order: the first serves.
    claims: HashMap<VipKey, Vec<Arc<ServiceVip>>>,
    /// What was last handed out, to tell upserts from no change.
    emitted: HashMap<VipKey, Arc<ServiceVip>>,
    /// Served VIPs of kind LoadBalancer per address.
    lb_addrs: HashMap<IpAddr, usize>,
    started: bool,
    /// Services translated again by the last `take_changes`.
    pub retranslated: usize,
}

impl Translator {
    pub fn new(opts: Options) -> Self {
        Translator {
            opts,
            services: HashMap::new(),
            slices: HashMap::new(),
            by_service: HashMap::new(),
            nodes: HashMap::new(),
            node_index: NodeIndex::default(),
            node_warnings: HashMap::new(),
            new_node_warnings: Vec::new(),
            node_readers: HashSet::new(),
            dirty: BTreeSet::new(),
            fragments: HashMap::new(),
            claims: HashMap::new(),
            emitted: HashMap::new(),
            lb_addrs: HashMap::new(),
            started: false,
            retranslated: 0,
        }
    }

    pub fn apply_service(&mut self, svc: Arc<Service>) {
        let me = ObjectRef::service(&svc);
        if self.services.get(&me).is_some_and(|old| same(old, &svc)) {
            return;
        }
        if self.reads_nodes(&svc) {
            self.node_readers.insert(me.clone());
        } else {
            self.node_readers.remove(&me);
        }
        self.services.insert(me.clone(), svc);
        self.dirty.insert(me);
    }

    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        let me = ObjectRef::new(Kind::Service, or_default(namespace), name);
        if self.services.remove(&me).is_some() {
            self.node_readers.remove(&me);
            self.dirty.insert(me);
        }
    }

    /// A slice in its v1 shape. One without the `kubernetes.io/service-name` label
    /// belongs to no Service: it is held no more.
    pub fn apply_slice(&mut self, slice: Arc<EndpointSlice>) {
        let me = ObjectRef::of(Kind::EndpointSlice, &slice.metadata);
        let Some(owner) = owner(&slice.metadata) else {
            self.remove_slice(&me);
            return;
        };
        if self.slices.get(&me).is_some_and(|(old, _)| same(old, &slice)) {
            return;
        }
        // Its label may name another Service now: both are touched.
        self.remove_slice(&me);
        self.by_service.entry(owner.clone()).or_default().insert(me.name.clone(), slice.clone());
        self.dirty.insert(owner.clone());
        self.slices.insert(me, (slice, owner));
    }

    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        self.remove_slice(&ObjectRef::new(Kind::EndpointSlice, or_default(namespace), name));
    }

    fn remove_slice(&mut self, me: &ObjectRef) {
        let Some((_, owner)) = self.slices.remove(me) else { return };
        if let Some(group) = self.by_service.get_mut(&owner) {
            group.remove(&me.name);
            if group.is_empty() {
                self.by_service.remove(&owner);
            }
        }
        self.dirty.insert(owner);
    }

    pub fn apply_node(&mut self, node: Arc<Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        if self.nodes.get(&name).is_some_and(|old| same(old, &node)) {
            return;
        }
        let mut out = Out::default();
        let info = NodeInfo::of(&node, &mut out);
        let before = self.node_warnings.get(&name).map_or(&[][..], Vec::as_slice);
        if before != out.warnings.as_slice() {
            self.new_node_warnings.extend(out.warnings.iter().cloned());
        }
        if out.warnings.is_empty() {
            self.node_warnings.remove(&name);
        } else {
            self.node_warnings.insert(name.clone(), out.warnings);
        }
        self.nodes.insert(name.clone(), node);
        self.set_node(&name, Some(info));
    }

    pub fn delete_node(&mut self, name: &str) {
        if self.nodes.remove(name).is_some() {
            self.node_warnings.remove(name);
            self.set_node(name, None);
        }
    }

    /// Puts `info` in the index in `name`'s place and touches the Services that read
    /// what changed. A heartbeat (same facts) touches nothing.
    fn set_node(&mut self, name: &str, info: Option<NodeInfo>) {
        let at = self.node_index.nodes.binary_search_by(|n| n.name.as_str().cmp(name));
        let old = at.ok().map(|i| &self.node_index.nodes[i]);
        let changed = match &self.opts.mode {
            // Only this node's addresses (and whether it exists) make NodePort VIPs.
            Mode::DaemonSet { node_name } => {
                name == node_name && old.map(|n| &n.own) != info.as_ref().map(|n| &n.own)
            }
            Mode::Edge { pod_routable: true } => false,
            Mode::Edge { pod_routable: false } => {
                let facts = |n: &NodeInfo| (n.ready, n.excluded, n.internal.clone());
                old.map(facts) != info.as_ref().map(facts)
            }
        };
        match (at, info) {
            (Ok(i), Some(info)) => self.node_index.nodes[i] = info,
            (Ok(i), None) => {
                self.node_index.nodes.remove(i);
            }
            (Err(i), Some(info)) => self.node_index.nodes.insert(i, info),
            (Err(_), None) => {}
        }
        if changed {
            self.dirty.extend(self.node_readers.iter().cloned());
        }
    }

    /// Whether the Service's VIPs read Node facts: in daemonset mode its NodePort VIPs
    /// (and the node-not-found warning), in edge mode its Node backends.
    fn reads_nodes(&self, svc: &Service) -> bool {
        match &self.opts.mode {
            Mode::DaemonSet { .. } => {
                let Some(spec) = &svc.spec else { return false };
                matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"))
                    && spec.ports.iter().flatten().any(|p| p.node_port.is_some_and(|n| n > 0))
            }
            Mode::Edge { pod_routable } => !pod_routable && self.opts.class.owns(svc),
        }
    }

    /// A relist: the complete set of Services. Those absent from it are deleted; those
    /// equal to the ones held cause no work.
    pub fn replace_services(&mut self, all: Vec<Arc<Service>>) {
        let mut listed = HashSet::with_capacity(all.len());
        for svc in all {
            listed.insert(ObjectRef::service(&svc));
            self.apply_service(svc);
        }
        let gone: Vec<ObjectRef> =
            self.services.keys().filter(|k| !listed.contains(*k)).cloned().collect();
        for me in gone {
            self.delete_service(&me.namespace, &me.name);
        }
    }

    pub fn replace_slices(&mut self, all: Vec<Arc<EndpointSlice>>) {
        let mut listed = HashSet::with_capacity(all.len());
        for slice in all {
            listed.insert(ObjectRef::of(Kind::EndpointSlice, &slice.metadata));
            self.apply_slice(slice);
        }
        let gone: Vec<ObjectRef> =
            self.slices.keys().filter(|k| !listed.contains(*k)).cloned().collect();
        for me in gone {
            self.remove_slice(&me);
        }
    }

    pub fn replace_nodes(&mut self, all: Vec<Arc<Node>>) {
        let mut listed = HashSet::with_capacity(all.len());
        for node in all {
            listed.insert(node.metadata.name.clone().unwrap_or_default());
            self.apply_node(node);
        }
        let gone: Vec<String> =
            self.nodes.keys().filter(|k| !listed.contains(*k)).cloned().collect();
        for name in gone {
            self.delete_node(&name);
        }
    }

    /// Translates again the Services touched since the last call and returns what
    /// changed in the output.
    pub fn take_changes(&mut self) -> TranslationChanges {
        let mut changes = TranslationChanges { initial: !self.started, ..Default::default() };
        self.started = true;
        self.retranslated = 0;
        // Keys whose claims changed, each once, in the order first touched.
        let mut touched: Vec<VipKey> = Vec::new();
        let mut seen: HashSet<VipKey> = HashSet::new();
        let mut node_missing_reported = false;
        for me in std::mem::take(&mut self.dirty) {
            if let Some(old) = self.fragments.remove(&me) {
                for k in old.keys {
                    if let Some(list) = self.claims.get_mut(&k) {
                        list.retain(|v| v.service != me);
                        if list.is_empty() {
                            self.claims.remove(&k);
                        }
                    }
                    if seen.insert(k) {
                        touched.push(k);
                    }
                }
            }
            let Some(svc) = self.services.get(&me) else { continue };
            self.retranslated += 1;
            let (slice_warnings, out) = self.translate_one(svc);
            changes.warnings.extend(slice_warnings);
            for w in &out.warnings {
                // Once per call, as `translate` says it once.
                if w.problem == Problem::NodeNotFound {
                    if node_missing_reported {
                        continue;
                    }
                    node_missing_reported = true;
                }
                changes.warnings.push(w.clone());
            }
            let mut keys = Vec::with_capacity(out.vips.len());
            let mut mine = HashSet::with_capacity(out.vips.len());
            for v in out.vips {
                let k = v.spec.key();
                // A key produced twice by one Service: the first stays, as in `translate`.
                if !mine.insert(k) {
                    continue;
                }
                keys.push(k);
                let list = self.claims.entry(k).or_default();
                let at = list.partition_point(|c| c.service < me);
                list.insert(at, Arc::new(v));
                if seen.insert(k) {
                    touched.push(k);
                }
            }
            self.fragments.insert(me, Fragment { keys, warnings: out.warnings });
        }

        for k in touched {
            let list = self.claims.get(&k);
            match list.and_then(|l| l.first()) {
                Some(winner) => {
                    let unchanged = self
                        .emitted
                        .get(&k)
                        .is_some_and(|old| Arc::ptr_eq(old, winner) || **old == **winner);
                    if !unchanged {
                        changes.upserts.push((**winner).clone());
                        let winner = winner.clone();
                        self.emit(k, Some(winner));
                    }
                }
                None => {
                    if self.emitted.contains_key(&k) {
                        changes.removes.push(k);
                        self.emit(k, None);
                    }
                }
            }
            if let Some([owner, losers @ ..]) = self.claims.get(&k).map(Vec::as_slice) {
                changes.warnings.extend(losers.iter().map(|l| conflict(l, owner)));
            }
        }
        changes.warnings.append(&mut self.new_node_warnings);
        changes
    }

    /// One Service's VIPs and warnings, and separately its slices' warnings.
    fn translate_one(&self, svc: &Service) -> (Vec<Warning>, Out) {
        let me = ObjectRef::service(svc);
        let mut slice_out = Out::default();
        let mine = self.by_service.get(&me).into_iter().flat_map(|g| g.values()).map(|s| &**s);
        let slices = SliceIndex::new(mine, &mut slice_out);
        let cx = ServiceCx { svc, opts: &self.opts, slices: &slices, nodes: &self.node_index };
        let mut out = Out::default();
        cx.translate(&mut out, &mut false);
        (slice_out.warnings, out)
    }

    /// Records what is served for `k` now (`None`: nothing).
    fn emit(&mut self, k: VipKey, now: Option<Arc<ServiceVip>>) {
        let old = match now {
            Some(v) => {
                if v.kind == VipKind::LoadBalancer {
                    *self.lb_addrs.entry(v.spec.addr).or_default() += 1;
                }
                self.emitted.insert(k, v)
            }
            None => self.emitted.remove(&k),
        };
        if let Some(old) = old.filter(|o| o.kind == VipKind::LoadBalancer) {
            if let Some(n) = self.lb_addrs.get_mut(&old.spec.addr) {
                *n -= 1;
                if *n == 0 {
                    self.lb_addrs.remove(&old.spec.addr);
                }
            }
        }
    }

    /// The whole output as of the last `take_changes`: the VIPs of `translate` on the
    /// held objects, sorted, and its warnings (those of Nodes as `translate` gives them
    /// for Nodes listed by name). O(cluster): for tests and status, not the hot path.
    pub fn translation(&self) -> Translation {
        let mut vips: Vec<ServiceVip> = self.emitted.values().map(|v| (**v).clone()).collect();
        vips.sort_by_key(|v| (v.spec.addr, v.spec.port, v.spec.proto));

        let mut out = Out::default();
        SliceIndex::new(self.slices.values().map(|(s, _)| &**s), &mut out);
        let mut nodes: Vec<&Node> = self.nodes.values().map(|n| &**n).collect();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        NodeIndex::new(nodes, &mut out);
        let mut fragments: Vec<(&ObjectRef, &Fragment)> = self.fragments.iter().collect();
        fragments.sort_by(|a, b| a.0.cmp(b.0));
        let mut node_missing_reported = false;
        for w in fragments.iter().flat_map(|(_, f)| &f.warnings) {
            if w.problem == Problem::NodeNotFound {
                if node_missing_reported {
                    continue;
                }
                node_missing_reported = true;
            }
            out.warnings.push(w.clone());
        }
        let mut conflicts: Vec<&Vec<Arc<ServiceVip>>> =
            self.claims.values().filter(|l| l.len() > 1).collect();
        conflicts.sort_by_key(|l| (l[0].spec.addr, l[0].spec.port, l[0].spec.proto));
        for l in conflicts {
            out.warnings.extend(l[1..].iter().map(|loser| conflict(loser, &l[0])));
        }
        Translation { vips, warnings: out.warnings }
    }

    /// The Services held (for IPAM), in no particular order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// The Service `namespace/name`, if held.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        self.services.get(&ObjectRef::new(Kind::Service, or_default(namespace), name))
    }

    /// Distinct addresses of the served VIPs of kind LoadBalancer (for pool usage).
    pub fn load_balancer_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.lb_addrs.keys().copied()
    }
}

/// The Service a slice's label names, in the slice's namespace.
fn owner(meta: &ObjectMeta) -> Option<ObjectRef> {
    let service = meta.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ObjectRef::new(Kind::Service, namespace(meta), service))
}

/// As [`namespace`] reads an object's: none is `default`.
fn or_default(ns: &str) -> &str {
    if ns.is_empty() {
        "default"
    } else {
        ns
    }
}

/// Whether `new` is the object already held: the API server gives every write a new
/// resourceVersion, so same uid and version is the same content; objects without them
/// (manifests, tests) are compared whole.
fn same<K>(old: &Arc<K>, new: &Arc<K>) -> bool
where
    K: k8s_openapi::Metadata<Ty = ObjectMeta> + PartialEq,
{
    if Arc::ptr_eq(old, new) {
        return true;
    }
    let (a, b) = (old.metadata(), new.metadata());
    match (&a.uid, &a.resource_version, &b.uid, &b.resource_version) {
        (Some(ua), Some(ra), Some(ub), Some(rb)) => ua == ub && ra == rb,
        _ => **old == **new,
    }
}
