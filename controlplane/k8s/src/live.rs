//! The live Kubernetes source: watchers for Services, EndpointSlices and Nodes feed a
//! [`Translator`] event by event; the Lease holder runs [`Ipam`] and writes what it
//! plans.
//!
//! # Contract
//!
//! - [`run`] discovers whether the cluster serves EndpointSlices as
//!   `discovery.k8s.io/v1` (1.21+) or only `v1beta1` (1.20) and reads that one (each
//!   v1beta1 event converted to v1 as it arrives).
//! - Every watch event goes, with its arrival time, to one loop that owns the
//!   translator: an Apply or Delete is applied at once; a (re)list is buffered and
//!   handed over whole when complete (`replace_*`), so a relist after an outage or a
//!   410 Gone from a compacted etcd replaces a kind's objects in one step: nothing is
//!   flushed in between, and objects that did not change cost nothing.
//! - It calls `on_change(changes, translator, first_event)` with the initial changes
//!   once all three kinds finished their first list, then after every burst of events
//!   (coalesced: the queue is drained before [`Translator::take_changes`]) whose changes
//!   are not empty. `first_event` is when the earliest event behind the call arrived, so
//!   the caller can time event-to-programmed. Events that change nothing (a Node
//!   heartbeat, a relist of what was already known) deliver nothing.
//! - While the API server is away the watchers retry with backoff (capped at
//!   `LiveConfig::retry_max`) and `on_change` is not called: what is programmed stays as
//!   it is.
//! - One writer at a time: only the holder of the `coordination.k8s.io/v1` Lease
//!   (`LiveConfig::lease_*`) allocates LoadBalancer addresses, writes them through the
//!   Services' status subresource (JSON merge patch, field manager `vipr-<identity>`)
//!   and emits Events (`events.k8s.io/v1`). A new holder starts from the statuses
//!   ([`Ipam`] rebuilds from them), so a failover hands out nothing twice. Expiry is
//!   judged from the Lease's renewTime against this host's clock.
//! - IPAM plans on a Service event, a change of leadership and every
//!   `LiveConfig::resync` (not on slice or Node events, which change no status it
//!   writes); failed writes are retried on the next pass, since the status still
//!   differs.
//! - Dropping the [`run`] future (or aborting its task) stops its watchers and its Lease
//!   renewal at once; a rival takes the Lease over when it expires.

use crate::ipam::{EventKind, Ipam, IpamPlan};
use crate::translate::{Options, TranslationChanges, Translator};
use crate::v1beta1;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::utils::Backoff;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use vipr_config::Pool;

/// Which EndpointSlice version the cluster serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SliceApi {
    V1,
    V1beta1,
}

#[derive(Clone, Debug)]
pub struct LiveConfig {
    pub options: Options,
    /// LoadBalancer pools; empty: no IPAM (and no Lease is taken).
    pub pools: Vec<Pool>,
    /// This instance's name in the Lease, in Events and in the status field manager.
    pub identity: String,
    pub lease_namespace: String,
    pub lease_name: String,
    pub lease_duration: Duration,
    /// How often the Lease holder re-plans even without a change (retries writes).
    pub resync: Duration,
    /// The longest pause between two attempts to reach a lost API server; the pauses
    /// grow from half a second up to it.
    pub retry_max: Duration,
    /// Counters the source keeps while it runs; clone the `Arc` to read them.
    pub stats: Arc<LiveStats>,
}

impl LiveConfig {
    pub fn new(options: Options, pools: Vec<Pool>, identity: &str) -> Self {
        LiveConfig {
            options,
            pools,
            identity: identity.to_owned(),
            lease_namespace: "kube-system".into(),
            lease_name: "vipr-ipam".into(),
            lease_duration: Duration::from_secs(15),
            resync: Duration::from_secs(30),
            retry_max: Duration::from_secs(10),
            stats: Arc::default(),
        }
    }
}

/// What the source has been through, for metrics (and for tests that provoke it).
#[derive(Debug, Default)]
pub struct LiveStats {
    translations: AtomicU64,
    lists: AtomicU64,
    watch_errors: AtomicU64,
    gone: AtomicU64,
}

/// A reading of [`LiveStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveCounts {
    /// Calls of `on_change`.
    pub translations: u64,
    /// Completed lists, one per watched kind at start and one per relist since.
    pub lists: u64,
    /// Failed watch or list attempts (API server away, 410 Gone, ...); all are retried.
    pub watch_errors: u64,
    /// 410 Gone: a watch fell behind the compacted history and had to relist.
    pub gone: u64,
}

impl LiveStats {
    pub fn counts(&self) -> LiveCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LiveCounts {
            translations: get(&self.translations),
            lists: get(&self.lists),
            watch_errors: get(&self.watch_errors),
            gone: get(&self.gone),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("API discovery failed: {source}; is the API server reachable and the token valid?")]
    Discovery {
        #[source]
        source: kube::Error,
    },
    #[error(
        "the cluster serves EndpointSlices in neither discovery.k8s.io/v1 nor v1beta1 \
         (Kubernetes 1.20 or later is needed)"
    )]
    NoEndpointSlices,
    #[error("{url:?} is not an API server URL (like https://127.0.0.1:6443)")]
    BadUrl { url: String },
    #[error("cannot make a Kubernetes client: {source}")]
    Client {
        #[source]
        source: kube::Error,
    },
    #[error(
        "no Kubernetes API server to talk to: not in a pod and no kubeconfig ({source}); \
         set kubernetes.api_server in the config"
    )]
    Infer {
        #[source]
        source: kube::config::InferConfigError,
    },
}

/// Asks the API server which EndpointSlice version it serves; v1 when both.
pub async fn discover_slice_api(client: &Client) -> Result<SliceApi, LiveError> {
    let groups =
        client.list_api_groups().await.map_err(|source| LiveError::Discovery { source })?;
    let versions: Vec<String> = groups
        .groups
        .iter()
        .filter(|g| g.name == "discovery.k8s.io")
        .flat_map(|g| g.versions.iter().map(|v| v.version.clone()))
        .collect();
    if versions.iter().any(|v| v == "v1") {
        Ok(SliceApi::V1)
    } else if versions.iter().any(|v| v == "v1beta1") {
        Ok(SliceApi::V1beta1)
    } else {
        Err(LiveError::NoEndpointSlices)
    }
}

/// Exponential backoff from half a second to `max`, with up to a quarter of jitter so
/// several instances do not return to a recovering API server in step. Reset by the
/// watcher's next success.
struct Retry {
    next: Duration,
    max: Duration,
    seed: u64,
}

const RETRY_MIN: Duration = Duration::from_millis(500);

impl Retry {
    fn new(max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Retry { next: RETRY_MIN.min(max), max, seed }
    }
}

impl Iterator for Retry {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // xorshift64: jitter needs no quality, only spread.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(base.mul_f64(0.75 + (self.seed % 1024) as f64 / 4096.0))
    }
}

impl Backoff for Retry {
    fn reset(&mut self) {
        self.next = RETRY_MIN.min(self.max);
    }
}

/// A watch event ([`watcher::Event`]) with its object shared, so the main loop moves
/// a pointer rather than the object.
enum Watched<K> {
    Init,
    InitApply(Arc<K>),
    InitDone,
    Apply(Arc<K>),
    Delete(Arc<K>),
}

/// One watch event of one kind, slices in their v1 shape.
enum Change {
    Service(Watched<Service>),
    Slice(Watched<EndpointSlice>),
    Node(Watched<Node>),
}

/// A watch event and when it arrived.
type Arrival = (Instant, Change);

/// Watches `api` from a task of `tasks` and sends every event, its object made a `T`
/// by `convert` and the event a [`Change`] by `wrap`, with its arrival time to
/// `changes`. Errors (API server away, 410 Gone) are logged and counted; the watcher
/// backs off and relists by itself.
fn forward<K, T>(
    api: Api<K>,
    cfg: &LiveConfig,
    tasks: &mut JoinSet<()>,
    changes: mpsc::UnboundedSender<Arrival>,
    convert: fn(K) -> T,
    wrap: fn(Watched<T>) -> Change,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    T: 'static,
{
    let stats = cfg.stats.clone();
    let mut stream =
        watcher(api, watcher::Config::default()).backoff(Retry::new(cfg.retry_max)).boxed();
    tasks.spawn(async move {
        while let Some(event) = stream.next().await {
            let at = Instant::now();
            let event = match event {
                Ok(watcher::Event::Init) => Watched::Init,
                Ok(watcher::Event::InitApply(o)) => Watched::InitApply(Arc::new(convert(o))),
                Ok(watcher::Event::InitDone) => {
                    stats.lists.fetch_add(1, Ordering::Relaxed);
                    Watched::InitDone
                }
                Ok(watcher::Event::Apply(o)) => Watched::Apply(Arc::new(convert(o))),
                Ok(watcher::Event::Delete(o)) => Watched::Delete(Arc::new(convert(o))),
                Err(e) => {
                    stats.watch_errors.fetch_add(1, Ordering::Relaxed);
                    if matches!(&e, watcher::Error::WatchError(s) if s.code == 410) {
                        stats.gone.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying with backoff");
                    continue;
                }
            };
            if changes.send((at, wrap(event))).is_err() {
                return;
            }
        }
    });
}

/// The main loop's state between events.
struct State {
    translator: Translator,
    relists: Relists,
    /// Arrival of the earliest event not yet translated.
    pending: Option<Instant>,
    /// IPAM plans again on a Service event, a leadership change or the resync tick,
    /// never on a slice or Node event: those change no status it writes.
    ipam_due: bool,
}

impl State {
    fn handle(&mut self, (at, change): Arrival) {
        let applied = self.relists.apply(&mut self.translator, change);
        if applied.translation {
            self.pending.get_or_insert(at);
        }
        self.ipam_due |= applied.services;
    }
}

/// Relists in progress: the objects listed so far, per kind, until its InitDone.
#[derive(Default)]
struct Relists {
    services: Option<Vec<Arc<Service>>>,
    slices: Option<Vec<Arc<EndpointSlice>>>,
    nodes: Option<Vec<Arc<Node>>>,
    /// Which kinds finished a first list: services, slices, nodes.
    listed: [bool; 3],
}

/// What one event did, for the main loop.
struct Applied {
    /// It can change the translation (Init and InitApply only buffer).
    translation: bool,
    /// It can change the Services IPAM reads.
    services: bool,
}

impl Relists {
    fn ready(&self) -> bool {
        self.listed.iter().all(|&l| l)
    }

    /// A (re)list begins: nothing changes until it is complete.
    fn start<K>(buffer: &mut Option<Vec<Arc<K>>>) -> bool {
        *buffer = Some(Vec::new());
        false
    }

    fn buffer<K>(buffer: &mut Option<Vec<Arc<K>>>, object: Arc<K>) -> bool {
        buffer.get_or_insert_with(Vec::new).push(object);
        false
    }

    /// Hands `change` to the translator: a whole relist as one `replace_*`, so objects
    /// that did not change cost nothing and nothing is flushed in between.
    fn apply(&mut self, t: &mut Translator, change: Change) -> Applied {
        let meta = |m: &ObjectMeta| {
            (m.namespace.clone().unwrap_or_default(), m.name.clone().unwrap_or_default())
        };
        let (translation, services) = match change {
            Change::Service(e) => {
                let changed = match e {
                    Watched::Init => Self::start(&mut self.services),
                    Watched::InitApply(s) => Self::buffer(&mut self.services, s),
                    Watched::InitDone => {
                        t.replace_services(self.services.take().unwrap_or_default());
                        self.listed[0] = true;
                        true
                    }
                    Watched::Apply(s) => {
                        t.apply_service(s);
                        true
                    }
                    Watched::Delete(s) => {
                        let (ns, name) = meta(&s.metadata);
                        t.delete_service(&ns, &name);
                        true
                    }
                };
                (changed, changed)
            }
            Change::Slice(e) => {
                let changed = match e {
                    Watched::Init => Self::start(&mut self.slices),
                    Watched::InitApply(s) => Self::buffer(&mut self.slices, s),
                    Watched::InitDone => {
                        t.replace_slices(self.slices.take().unwrap_or_default());
                        self.listed[1] = true;
                        true
                    }
                    Watched::Apply(s) => {
                        t.apply_slice(s);
                        true
                    }
                    Watched::Delete(s) => {
                        let (ns, name) = meta(&s.metadata);
                        t.delete_slice(&ns, &name);
                        true
                    }
                };
                (changed, false)
            }
            Change::Node(e) => {
                let changed = match e {
                    Watched::Init => Self::start(&mut self.nodes),
                    Watched::InitApply(n) => Self::buffer(&mut self.nodes, n),
                    Watched::InitDone => {
                        t.replace_nodes(self.nodes.take().unwrap_or_default());
                        self.listed[2] = true;
                        true
                    }
                    Watched::Apply(n) => {
                        t.apply_node(n);
                        true
                    }
                    Watched::Delete(n) => {
                        t.delete_node(&meta(&n.metadata).1);
                        true
                    }
                };
                (changed, false)
            }
        };
        Applied { translation, services }
    }
}

/// The field manager of our status writes, so `managedFields` tells which instance
/// wrote (at most 128 characters, the API server's limit).
fn field_manager(identity: &str) -> String {
    format!("vipr-{identity}").chars().take(128).collect()
}

/// Runs the source until the watchers end (they do not, short of a panic).
pub async fn run<F>(client: Client, cfg: LiveConfig, mut on_change: F) -> Result<(), LiveError>
where
    F: FnMut(&TranslationChanges, &Translator, Instant) + Send,
{
    let slice_api = discover_slice_api(&client).await?;
    // Watchers and the Lease renewal live in `tasks`: dropping `run` aborts them.
    let mut tasks = JoinSet::new();
    let (tx, mut changes) = mpsc::unbounded_channel();
    use std::convert::identity as same;
    let services = Api::<Service>::all(client.clone());
    forward(services, &cfg, &mut tasks, tx.clone(), same, Change::Service);
    let nodes = Api::<Node>::all(client.clone());
    forward(nodes, &cfg, &mut tasks, tx.clone(), same, Change::Node);
    match slice_api {
        SliceApi::V1 => {
            let api = Api::<EndpointSlice>::all(client.clone());
            forward(api, &cfg, &mut tasks, tx.clone(), same, Change::Slice);
        }
        SliceApi::V1beta1 => {
            // Converted as each event arrives: the translator reads the v1 shape.
            let api = Api::<v1beta1::EndpointSlice>::all(client.clone());
            forward(
                api,
                &cfg,
                &mut tasks,
                tx.clone(),
                v1beta1::EndpointSlice::into_v1,
                Change::Slice,
            );
        }
    }
    drop(tx);

    let mut state = State {
        translator: Translator::new(cfg.options.clone()),
        relists: Relists::default(),
        pending: None,
        ipam_due: true,
    };
    // The first translation waits for all three lists; it is timed from the first event.
    while !state.relists.ready() {
        let Some((at, change)) = changes.recv().await else { return Ok(()) };
        state.pending.get_or_insert(at);
        state.handle((at, change));
    }

    let (leader_tx, mut leader) = watch::channel(false);
    // With no Lease to hold, the sender stays here as long as `run`, so that
    // `leader.changed()` never resolves on a closed channel (a busy loop).
    let _idle_leader = if cfg.pools.is_empty() {
        Some(leader_tx)
    } else {
        tasks.spawn(hold_lease(client.clone(), cfg.clone(), leader_tx));
        None
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: "vipr".into(), instance: Some(cfg.identity.clone()) },
    );
    let params =
        PatchParams { field_manager: Some(field_manager(&cfg.identity)), ..PatchParams::default() };
    let mut ipam: Option<Ipam> = None;
    let mut resync = tokio::time::interval(cfg.resync);
    loop {
        // Coalesce a burst (a rollout, other kinds' events during a relist) into one call.
        while let Ok(arrival) = changes.try_recv() {
            state.handle(arrival);
        }
        if let Some(first_event) = state.pending.take() {
            let changes = state.translator.take_changes();
            if !changes.is_empty() {
                on_change(&changes, &state.translator, first_event);
                cfg.stats.translations.fetch_add(1, Ordering::Relaxed);
            }
        }

        if *leader.borrow_and_update() {
            if std::mem::take(&mut state.ipam_due) {
                // A new holder starts afresh from the statuses, whatever it knew before.
                let ipam = ipam
                    .get_or_insert_with(|| Ipam::new(cfg.pools.clone(), cfg.options.class.clone()));
                let plan = ipam.reconcile(state.translator.services().map(|s| &**s));
                apply(&client, &recorder, &params, &state.translator, plan).await;
            }
        } else {
            ipam = None;
        }

        tokio::select! {
            next = changes.recv() => match next {
                Some(arrival) => state.handle(arrival),
                None => return Ok(()),
            },
            _ = leader.changed() => state.ipam_due = true,
            _ = resync.tick() => state.ipam_due = true,
        }
    }
}

async fn apply(
    client: &Client,
    recorder: &Recorder,
    params: &PatchParams,
    translator: &Translator,
    plan: IpamPlan,
) {
    for update in plan.status_updates {
        let api: Api<Service> = Api::namespaced(client.clone(), &update.service.namespace);
        let ingress: Vec<serde_json::Value> =
            update.ingress.iter().map(|ip| serde_json::json!({ "ip": ip.to_string() })).collect();
        let patch = serde_json::json!({ "status": { "loadBalancer": { "ingress": ingress } } });
        if let Err(e) = api.patch_status(&update.service.name, params, &Patch::Merge(&patch)).await
        {
            tracing::warn!(service = %update.service, error = %e, "status write failed; retried on the next pass");
        }
    }
    for event in plan.events {
        let uid = translator
            .service(&event.service.namespace, &event.service.name)
            .and_then(|s| s.metadata.uid.clone());
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(event.service.namespace.clone()),
            name: Some(event.service.name.clone()),
            uid,
            ..ObjectReference::default()
        };
        let ev = Event {
            type_: if event.kind.is_warning() { EventType::Warning } else { EventType::Normal },
            reason: event.kind.reason().into(),
            note: Some(event.message.clone()),
            action: match event.kind {
                EventKind::Released => "Release".into(),
                _ => "Allocate".into(),
            },
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &reference).await {
            tracing::warn!(service = %event.service, error = %e, "event not recorded");
        }
    }
}

/// Keeps trying to hold the Lease, renewing every third of its duration, and tells
/// `leader` whether we hold it.
async fn hold_lease(client: Client, cfg: LiveConfig, leader: watch::Sender<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.lease_namespace);
    let mut tick = tokio::time::interval(cfg.lease_duration / 3);
    loop {
        tick.tick().await;
        let held = match try_hold(&api, &cfg).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed");
                false
            }
        };
        leader.send_if_modified(|l| std::mem::replace(l, held) != held);
        if leader.is_closed() {
            return;
        }
    }
}

async fn try_hold(api: &Api<Lease>, cfg: &LiveConfig) -> Result<bool, kube::Error> {
    let now = jiff_now();
    let duration = i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let current = api.get_opt(&cfg.lease_name).await?;
    let Some(mut lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(cfg.lease_name.clone()), ..ObjectMeta::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(duration),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return conflict_is_false(api.create(&PostParams::default(), &lease).await);
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let ours = spec.holder_identity.as_deref() == Some(cfg.identity.as_str());
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(renew), Some(secs)) => {
            renew.0.as_second().saturating_add(i64::from(secs)) < now.as_second()
        }
        _ => true,
    };
    if !ours && !expired {
        return Ok(false);
    }
    if !ours {
        spec.holder_identity = Some(cfg.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(duration);
    spec.renew_time = Some(MicroTime(now));
    // The resourceVersion in `lease` makes this a compare-and-swap: a rival that
    // wrote first makes it fail with 409.
    conflict_is_false(api.replace(&cfg.lease_name, &PostParams::default(), &lease).await)
}

fn conflict_is_false(r: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match r {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

/// A client for a production cluster: the API server at `api_server` with the bearer
/// token in `token_file` (re-read as it rotates) and the roots in `ca_file` (else the
/// system's); without `api_server`, the pod's service account or else the kubeconfig.
pub async fn client(
    api_server: Option<&str>,
    token_file: Option<&std::path::Path>,
    ca_file: Option<&std::path::Path>,
) -> Result<Client, LiveError> {
    let config = match api_server {
        Some(url) => {
            let uri = url.parse().map_err(|_| LiveError::BadUrl { url: url.to_owned() })?;
            let mut config = kube::Config::new(uri);
            config.root_cert_file = ca_file.map(Into::into);
            config.auth_info.token_file = token_file.map(|p| p.display().to_string());
            config
        }
        None => kube::Config::infer().await.map_err(|source| LiveError::Infer { source })?,
    };
    Client::try_from(config).map_err(|source| LiveError::Client { source })
}

/// A client for the API server at `url` with a bearer `token`, trusting its
/// certificate as is (a test server's self-signed one). Clusters proper use
/// `kube::Client::try_default()` (kubeconfig or in-cluster service account).
pub fn client_for(url: &str, token: &str) -> Result<Client, LiveError> {
    let uri = url.parse().map_err(|_| LiveError::BadUrl { url: url.to_owned() })?;
    let mut config = kube::Config::new(uri);
    config.accept_invalid_certs = true;
    config.auth_info.token = Some(token.to_owned().into());
    Client::try_from(config).map_err(|source| LiveError::Client { source })
}
