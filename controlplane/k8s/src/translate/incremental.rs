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
//! - A first list (or any call with thousands of Services to translate again) costs no
//!   more than `translate` on the same objects: held objects are looked up by borrowed
//!   names, and the Services are translated on the available cores (one Service's
//!   translation reads only objects nothing changes meanwhile), their outputs merged in
//!   (namespace, name) order, so the changes are the same whatever the number of cores.

use super::{conflict, NodeIndex, NodeInfo, Out, Problem, ServiceCx, SliceIndex};
use super::{Mode, Options, ServiceVip, Translation, VipKind, Warning};
use crate::object::{namespace, Kind, ObjectRef, SERVICE_NAME_LABEL};
use hashbrown::{DefaultHashBuilder, Equivalent, HashMap, HashSet, HashTable};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use vipr_abi::VipKey;

/// From this many Services to translate again, they are shared out among the cores;
/// below it, starting threads would cost more than it saves.
const PARALLEL_FROM: usize = 256;

/// Services a thread translates before it asks for more.
const PART: usize = 64;

/// No more threads than this, whatever the machine has: one translation is a few
/// microseconds, so more would spend their time starting and merging.
const MAX_THREADS: usize = 16;

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

/// Everything held under one Service's name: the Service itself (if any), the slices
/// that name it, and its part of the output as of its last translation.
struct Entry {
    me: ObjectRef,
    svc: Option<Arc<Service>>,
    /// By name (they share the namespace), as translation reads them.
    slices: Vec<Arc<EndpointSlice>>,
    /// The keys it claims, each once, in the order it produced them.
    keys: Vec<VipKey>,
    /// Its own warnings (not its slices', which [`Translator::translation`] reads
    /// from the slices themselves).
    warnings: Vec<Warning>,
    /// Listed in [`Translator::dirty`].
    dirty: bool,
    /// The relist (or later event) that last named the Service.
    listed: u64,
}

/// One Service's translation, ready to merge.
struct Translated {
    /// Its slices' warnings.
    slice_warnings: Vec<Warning>,
    /// Its VIPs, each key once (the first produced), and their keys.
    vips: Vec<Arc<ServiceVip>>,
    keys: Vec<VipKey>,
    /// Its own warnings.
    warnings: Vec<Warning>,
}

/// A labelled slice and the entry of the Service its label names.
struct HeldSlice {
    slice: Arc<EndpointSlice>,
    owner: usize,
    listed: u64,
}

/// [`translate`](super::translate), event by event. See the module docs.
pub struct Translator {
    opts: Options,
    /// One per Service name that has a Service, a slice or a claim; those whose index is
    /// in `free` hold nothing and are reused.
    entries: Vec<Entry>,
    free: Vec<usize>,
    /// The `entries` in use, found by name.
    index: HashTable<usize>,
    hasher: DefaultHashBuilder,
    slices: HashMap<ObjectRef, HeldSlice>,
    nodes: HashMap<String, Arc<Node>>,
    /// Kept up to date per Node event, so no event rebuilds it.
    node_index: NodeIndex,
    /// The warnings each Node had when last applied, to report them once.
    node_warnings: HashMap<String, Vec<Warning>>,
    new_node_warnings: Vec<Warning>,
    /// The entries whose Service's VIPs read Node facts in this mode.
    node_readers: HashSet<usize>,
    /// Entries to translate again, each once, in the order touched; `take_changes`
    /// sorts them so that warnings come out in a stable order.
    dirty: Vec<usize>,
    /// Every Service's VIP for a key, in (namespace, name) order: the first serves.
    claims: HashMap<VipKey, Vec<Arc<ServiceVip>>>,
    /// What was last handed out, to tell upserts from no change.
    emitted: HashMap<VipKey, Arc<ServiceVip>>,
    /// Served VIPs of kind LoadBalancer per address.
    lb_addrs: HashMap<IpAddr, usize>,
    started: bool,
    /// Bumped by each `replace_*`: what it does not stamp was not listed.
    relist: u64,
    /// Threads a large `take_changes` may translate on.
    threads: usize,
    /// Services translated again by the last `take_changes`.
    pub retranslated: usize,
}

impl Translator {
    pub fn new(opts: Options) -> Self {
        Translator {
            opts,
            entries: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            slices: HashMap::new(),
            nodes: HashMap::new(),
            node_index: NodeIndex::default(),
            node_warnings: HashMap::new(),
            new_node_warnings: Vec::new(),
            node_readers: HashSet::new(),
            dirty: Vec::new(),
            claims: HashMap::new(),
            emitted: HashMap::new(),
            lb_addrs: HashMap::new(),
            started: false,
            relist: 0,
            threads: cores().min(MAX_THREADS),
            retranslated: 0,
        }
    }

    pub fn apply_service(&mut self, svc: Arc<Service>) {
        let i = self.entry(Name::of(Kind::Service, &svc.metadata));
        let e = &mut self.entries[i];
        e.listed = self.relist;
        if e.svc.as_ref().is_some_and(|old| same(old, &svc)) {
            return;
        }
        if self.reads_nodes(&svc) {
            self.node_readers.insert(i);
        } else {
            self.node_readers.remove(&i);
        }
        self.entries[i].svc = Some(svc);
        touch(&mut self.entries, &mut self.dirty, i);
    }

    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        let me = Name { kind: Kind::Service, namespace: or_default(namespace), name };
        let Some(i) = self.find(me) else { return };
        if self.entries[i].svc.take().is_some() {
            self.node_readers.remove(&i);
            touch(&mut self.entries, &mut self.dirty, i);
        }
    }

    /// A slice in its v1 shape. One without the `kubernetes.io/service-name` label
    /// belongs to no Service: it is held no more.
    pub fn apply_slice(&mut self, slice: Arc<EndpointSlice>) {
        let me = Name::of(Kind::EndpointSlice, &slice.metadata);
        let Some(owner) = owner(&slice.metadata) else {
            self.remove_slice(me);
            return;
        };
        let listed = self.relist;
        let held = match self.slices.get_mut(&me) {
            Some(held) => {
                held.listed = listed;
                if same(&held.slice, &slice) {
                    return;
                }
                true
            }
            None => false,
        };
        // Its label may name another Service now: both are touched.
        let key = if held { self.remove_slice(me) } else { None };
        let key = key.unwrap_or_else(|| me.owned());
        let o = self.entry(owner);
        let group = &mut self.entries[o].slices;
        let at = group.partition_point(|s| s.metadata.name.as_deref().unwrap_or("") < me.name);
        group.insert(at, slice.clone());
        touch(&mut self.entries, &mut self.dirty, o);
        self.slices.insert(key, HeldSlice { slice, owner: o, listed });
    }

    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        self.remove_slice(Name {
            kind: Kind::EndpointSlice,
            namespace: or_default(namespace),
            name,
        });
    }

    /// Forgets the slice, touching its Service; gives back its key for reuse.
    fn remove_slice(&mut self, me: Name) -> Option<ObjectRef> {
        let (key, held) = self.slices.remove_entry(&me)?;
        let group = &mut self.entries[held.owner].slices;
        if let Some(at) = group.iter().position(|s| Arc::ptr_eq(s, &held.slice)) {
            group.remove(at);
        }
        touch(&mut self.entries, &mut self.dirty, held.owner);
        Some(key)
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
            for &i in &self.node_readers {
                touch(&mut self.entries, &mut self.dirty, i);
            }
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
        self.relist += 1;
        self.entries.reserve(all.len().saturating_sub(self.entries.len()));
        self.index.reserve(all.len().saturating_sub(self.index.len()), |&i| {
            self.hasher.hash_one(Name::from(&self.entries[i].me))
        });
        for svc in all {
            self.apply_service(svc);
        }
        let relist = self.relist;
        let gone: Vec<usize> = (0..self.entries.len())
            .filter(|&i| self.entries[i].svc.is_some() && self.entries[i].listed != relist)
            .collect();
        for i in gone {
            self.entries[i].svc = None;
            self.node_readers.remove(&i);
            touch(&mut self.entries, &mut self.dirty, i);
        }
    }

    pub fn replace_slices(&mut self, all: Vec<Arc<EndpointSlice>>) {
        self.relist += 1;
        self.slices.reserve(all.len().saturating_sub(self.slices.len()));
        for slice in all {
            self.apply_slice(slice);
        }
        let relist = self.relist;
        let gone: Vec<ObjectRef> = self
            .slices
            .iter()
            .filter(|(_, h)| h.listed != relist)
            .map(|(k, _)| k.clone())
            .collect();
        for me in &gone {
            self.remove_slice(Name::from(me));
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
        let mut dirty = std::mem::take(&mut self.dirty);
        // Names are unique among entries, so an unstable sort gives the one order.
        let entries = &self.entries;
        dirty.sort_unstable_by(|&a, &b| entries[a].me.cmp(&entries[b].me));
        let translated = self.translate_all(&dirty);

        // Keys whose claims changed, each once, in the order first touched.
        let mut touched: Vec<VipKey> = Vec::new();
        let mut seen: HashSet<VipKey> = HashSet::new();
        if self.claims.is_empty() {
            // A first list: about one key per Service.
            self.claims.reserve(dirty.len());
            touched.reserve(dirty.len());
            seen.reserve(dirty.len());
        }
        let mut node_missing_reported = false;
        for (&i, translated) in dirty.iter().zip(translated) {
            let e = &mut self.entries[i];
            e.dirty = false;
            e.warnings = Vec::new();
            let me = &e.me;
            for k in std::mem::take(&mut e.keys) {
                if let Some(list) = self.claims.get_mut(&k) {
                    list.retain(|v| v.service != *me);
                    if list.is_empty() {
                        self.claims.remove(&k);
                    }
                }
                if seen.insert(k) {
                    touched.push(k);
                }
            }
            let Some(t) = translated else {
                self.release(i);
                continue;
            };
            self.retranslated += 1;
            changes.warnings.extend(t.slice_warnings);
            for w in &t.warnings {
                // Once per call, as `translate` says it once.
                if w.problem == Problem::NodeNotFound {
                    if node_missing_reported {
                        continue;
                    }
                    node_missing_reported = true;
                }
                changes.warnings.push(w.clone());
            }
            for (&k, v) in t.keys.iter().zip(t.vips) {
                let list = self.claims.entry(k).or_default();
                let at = list.partition_point(|c| c.service < *me);
                list.insert(at, v);
                if seen.insert(k) {
                    touched.push(k);
                }
            }
            let e = &mut self.entries[i];
            e.keys = t.keys;
            e.warnings = t.warnings;
        }
        // Its buffer serves the next call.
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }

        if self.emitted.is_empty() {
            self.emitted.reserve(touched.len());
            changes.upserts.reserve(touched.len());
        }
        for k in touched {
            let list = self.claims.get(&k).map_or(&[][..], Vec::as_slice);
            if let [owner, losers @ ..] = list {
                changes.warnings.extend(losers.iter().map(|l| conflict(l, owner)));
            }
            match list.first().cloned() {
                Some(winner) => {
                    let unchanged = self
                        .emitted
                        .get(&k)
                        .is_some_and(|old| Arc::ptr_eq(old, &winner) || **old == *winner);
                    if !unchanged {
                        changes.upserts.push((*winner).clone());
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
        }
        changes.warnings.append(&mut self.new_node_warnings);
        changes
    }

    /// The translation of each entry of `dirty` that holds a Service, in `dirty`'s
    /// order. Many are shared out among threads: a translation reads only the entry,
    /// the Node index and the options, which nothing changes meanwhile.
    fn translate_all(&self, dirty: &[usize]) -> Vec<Option<Translated>> {
        let one = |&i: &usize| {
            let e = &self.entries[i];
            e.svc.as_ref().map(|svc| self.translate_one(e, svc))
        };
        let threads = if dirty.len() < PARALLEL_FROM {
            1
        } else {
            self.threads.min(dirty.len() / (PARALLEL_FROM / 2))
        };
        if threads <= 1 {
            return dirty.iter().map(one).collect();
        }
        // Small parts handed out as the threads ask, so one that starts late or runs
        // slower (a new thread's heap is fresh memory) leaves no other waiting.
        let parts: Vec<&[usize]> = dirty.chunks(PART).collect();
        let next = AtomicUsize::new(0);
        let work = || {
            let mut done = Vec::new();
            loop {
                let at = next.fetch_add(1, Ordering::Relaxed);
                let Some(part) = parts.get(at) else { return done };
                done.push((at, part.iter().map(one).collect::<Vec<_>>()));
            }
        };
        let mut done = std::thread::scope(|s| {
            // A thread that cannot be started leaves its parts to the others.
            let others: Vec<_> = (1..threads)
                .filter_map(|_| {
                    std::thread::Builder::new()
                        .name("vipr-translate".into())
                        .spawn_scoped(s, work)
                        .ok()
                })
                .collect();
            let mut done = work();
            for other in others {
                match other.join() {
                    Ok(part) => done.extend(part),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            done
        });
        done.sort_unstable_by_key(|(at, _)| *at);
        let mut all = Vec::with_capacity(dirty.len());
        for (_, part) in done {
            all.extend(part);
        }
        all
    }

    /// The translation of entry `e`'s Service.
    fn translate_one(&self, e: &Entry, svc: &Service) -> Translated {
        let mut slice_out = Out::default();
        let slices = SliceIndex::of_one(e.slices.iter().map(|s| &**s), &mut slice_out);
        let cx = ServiceCx {
            svc,
            me: &e.me,
            opts: &self.opts,
            slices: &slices,
            nodes: &self.node_index,
        };
        let mut out = Out::default();
        cx.translate(&mut out, &mut false);
        let mut vips = Vec::with_capacity(out.vips.len());
        let mut keys = Vec::with_capacity(out.vips.len());
        // A Service has a few VIPs: a look through its keys finds a repeat quicker than a
        // set, until it has many.
        let mut mine: Option<HashSet<VipKey>> =
            (out.vips.len() > 16).then(|| HashSet::with_capacity(out.vips.len()));
        for v in out.vips {
            let k = v.spec.key();
            // A key produced twice by one Service: the first stays, as in `translate`.
            let repeat = match &mut mine {
                Some(mine) => !mine.insert(k),
                None => keys.contains(&k),
            };
            if !repeat {
                keys.push(k);
                vips.push(Arc::new(v));
            }
        }
        Translated { slice_warnings: slice_out.warnings, vips, keys, warnings: out.warnings }
    }

    /// The entry named `me`.
    fn find(&self, me: Name) -> Option<usize> {
        let hash = self.hasher.hash_one(me);
        self.index.find(hash, |&i| me.equivalent(&self.entries[i].me)).copied()
    }

    /// The entry named `me`, made (empty) when there is none.
    fn entry(&mut self, me: Name) -> usize {
        let hash = self.hasher.hash_one(me);
        if let Some(&i) = self.index.find(hash, |&i| me.equivalent(&self.entries[i].me)) {
            return i;
        }
        let e = Entry {
            me: me.owned(),
            svc: None,
            slices: Vec::new(),
            keys: Vec::new(),
            warnings: Vec::new(),
            dirty: false,
            listed: 0,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.entries[i] = e;
                i
            }
            None => {
                self.entries.push(e);
                self.entries.len() - 1
            }
        };
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.index.insert_unique(hash, i, |&j| hasher.hash_one(Name::from(&entries[j].me)));
        i
    }

    /// Frees entry `i` once it holds nothing: no Service, slice or claim, nothing to do.
    fn release(&mut self, i: usize) {
        let e = &self.entries[i];
        if e.svc.is_some() || !e.slices.is_empty() || !e.keys.is_empty() || e.dirty {
            return;
        }
        let hash = self.hasher.hash_one(Name::from(&e.me));
        if let Ok(found) = self.index.find_entry(hash, |&j| j == i) {
            found.remove();
            self.entries[i].warnings = Vec::new();
            self.free.push(i);
        }
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
        SliceIndex::new(self.slices.values().map(|h| &*h.slice), &mut out);
        let mut nodes: Vec<&Node> = self.nodes.values().map(|n| &**n).collect();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        NodeIndex::new(nodes, &mut out);
        let mut translated: Vec<&Entry> =
            self.entries.iter().filter(|e| !e.warnings.is_empty()).collect();
        translated.sort_by(|a, b| a.me.cmp(&b.me));
        let mut node_missing_reported = false;
        for w in translated.iter().flat_map(|e| &e.warnings) {
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
        self.entries.iter().filter_map(|e| e.svc.as_ref())
    }

    /// The Service `namespace/name`, if held.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        let me = Name { kind: Kind::Service, namespace: or_default(namespace), name };
        self.find(me).and_then(|i| self.entries[i].svc.as_ref())
    }

    /// Distinct addresses of the served VIPs of kind LoadBalancer (for pool usage).
    pub fn load_balancer_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.lb_addrs.keys().copied()
    }

    /// Limits the threads a large `take_changes` translates on (tests: 1 is the
    /// sequential order the parallel one must give).
    #[cfg(test)]
    fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }
}

/// Lists entry `i` for translation again, once.
fn touch(entries: &mut [Entry], dirty: &mut Vec<usize>, i: usize) {
    let e = &mut entries[i];
    if !e.dirty {
        e.dirty = true;
        dirty.push(i);
    }
}

/// The cores this process may run on, asked once.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// An [`ObjectRef`] made of borrowed strings, to look one up without building one. Its
/// fields are ObjectRef's in ObjectRef's order, so the two hash alike, as
/// [`Equivalent`] needs (a test checks).
#[derive(Clone, Copy, Hash)]
struct Name<'a> {
    kind: Kind,
    namespace: &'a str,
    name: &'a str,
}

impl<'a> Name<'a> {
    /// As [`ObjectRef::of`] names the object.
    fn of(kind: Kind, meta: &'a ObjectMeta) -> Self {
        let namespace = if kind == Kind::Node { "" } else { namespace(meta) };
        Name { kind, namespace, name: meta.name.as_deref().unwrap_or("") }
    }

    fn owned(self) -> ObjectRef {
        ObjectRef::new(self.kind, self.namespace, self.name)
    }
}

impl<'a> From<&'a ObjectRef> for Name<'a> {
    fn from(r: &'a ObjectRef) -> Self {
        Name { kind: r.kind, namespace: &r.namespace, name: &r.name }
    }
}

impl Equivalent<ObjectRef> for Name<'_> {
    fn equivalent(&self, r: &ObjectRef) -> bool {
        self.kind == r.kind && self.name == r.name && self.namespace == r.namespace
    }
}

/// The Service a slice's label names, in the slice's namespace.
fn owner(meta: &ObjectMeta) -> Option<Name<'_>> {
    let service = meta.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(Name { kind: Kind::Service, namespace: namespace(meta), name: service })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{node, service, slice};
    use crate::translate::{translate, Inputs};
    use std::hash::{BuildHasher, DefaultHasher, Hash, Hasher};

    #[test]
    fn a_borrowed_name_hashes_as_the_object_ref_it_stands_for() {
        let hasher = DefaultHashBuilder::default();
        for (kind, ns, name) in [
            (Kind::Service, "default", "web"),
            (Kind::EndpointSlice, "team", ""),
            (Kind::Node, "", "a"),
        ] {
            let owned = ObjectRef::new(kind, ns, name);
            let borrowed = Name { kind, namespace: ns, name };
            assert_eq!(hasher.hash_one(&owned), hasher.hash_one(borrowed));
            let (mut a, mut b) = (DefaultHasher::new(), DefaultHasher::new());
            owned.hash(&mut a);
            borrowed.hash(&mut b);
            assert_eq!(a.finish(), b.finish());
            assert!(borrowed.equivalent(&owned));
            assert_eq!(borrowed.owned(), owned);
        }
    }

    /// Services enough for a parallel translation, with what makes order matter:
    /// conflicts, warnings of Services and slices, and the one node-not-found warning.
    fn crowd(n: usize, generation: u8) -> Inputs {
        let mut inputs = Inputs::default();
        for i in 0..n {
            let name = format!("svc-{i:04}");
            let ns = if i % 5 == 0 { "team" } else { "default" };
            // Every seventh shares its address with the one before: a conflict.
            let host = if i % 7 == 0 && i > 0 { i - 1 } else { i };
            let ip = format!("10.{}.{}.{}", host / 65536, host / 256 % 256, host % 256);
            let mut svc = service(&name).namespace(ns).cluster_ip(&ip).port(80, 8080);
            if i % 11 == 0 {
                svc = svc.external_ips(&["not-an-address"]);
            }
            if i % 13 == 0 {
                svc = svc.node_port_type().node_port(30000 + (i % 2000) as i32);
            }
            inputs.services.push(svc.build());
            let mut s = slice(&format!("{name}-a"), &name).namespace(ns).port(8080);
            for j in 0..3 {
                s = s.ready(&format!("192.0.{}.{}", generation, (i + j) % 250 + 1));
            }
            if i % 17 == 0 {
                s = s.ready("not-an-address");
            }
            inputs.endpoint_slices.push(s.build());
        }
        inputs.nodes.push(node("node-b").internal_ip("203.0.113.2").build());
        inputs
    }

    fn relist(t: &mut Translator, inputs: &Inputs) -> TranslationChanges {
        t.replace_services(inputs.services.iter().cloned().map(Arc::new).collect());
        t.replace_slices(inputs.endpoint_slices.iter().cloned().map(Arc::new).collect());
        t.replace_nodes(inputs.nodes.iter().cloned().map(Arc::new).collect());
        t.take_changes()
    }

    #[test]
    fn a_parallel_translation_gives_the_changes_of_a_sequential_one() {
        let opts =
            Options { mode: Mode::DaemonSet { node_name: "node-a".into() }, ..Options::default() };
        let mut one = Translator::new(opts.clone()).with_threads(1);
        let mut four = Translator::new(opts.clone()).with_threads(4);
        let first = crowd(3 * PARALLEL_FROM, 0);
        let ch = relist(&mut one, &first);
        assert_eq!(relist(&mut four, &first), ch, "the first list");
        let full = translate(&first, &opts);
        let mut vips = ch.upserts.clone();
        vips.sort_by_key(|v| v.spec.key());
        assert_eq!(vips, full.vips);
        assert!(ch.warnings.iter().any(|w| matches!(w.problem, Problem::VipConflict { .. })));
        let missing = ch.warnings.iter().filter(|w| w.problem == Problem::NodeNotFound).count();
        assert_eq!(missing, 1, "the node is missing, once");

        // New endpoints everywhere, a third of the Services gone, and the node appears.
        let mut next = crowd(3 * PARALLEL_FROM, 1);
        next.services.retain(|s| !s.metadata.name.as_ref().unwrap().ends_with(['3', '6', '9']));
        next.nodes.push(node("node-a").internal_ip("203.0.113.1").build());
        let ch = relist(&mut one, &next);
        assert_eq!(relist(&mut four, &next), ch, "the second list");
        assert!(!ch.removes.is_empty() && !ch.upserts.is_empty());
        assert_eq!(four.translation(), one.translation());
        assert_eq!(four.translation().vips, translate(&next, &opts).vips);
    }
}
