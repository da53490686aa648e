//! The live Kubernetes source: reflectors for Services, EndpointSlices and Nodes feed
//! [`translate`]; the Lease holder runs [`Ipam`] and writes what it plans.
//!
//! # Contract
//!
//! - [`run`] discovers whether the cluster serves EndpointSlices as
//!   `discovery.k8s.io/v1` (1.21+) or only `v1beta1` (1.20) and reads that one.
//! - It calls `on_change(translation, first_event)` once all three caches are filled,
//!   then after every change that alters the translation (bursts coalesced into one
//!   call). `first_event` is when the earliest watch event behind this translation
//!   arrived, so the caller can time event-to-programmed. Events that change nothing
//!   (a Node heartbeat, a relist of what was already known) deliver nothing.
//! - While the API server is away the watchers retry with backoff (capped at
//!   `LiveConfig::retry_max`) and `on_change` is not called: what is programmed stays as
//!   it is. A relist (after an outage or a 410 Gone from a compacted etcd) replaces a
//!   cache in one step when the new list is complete, so nothing is flushed in between.
//! - One writer at a time: only the holder of the `coordination.k8s.io/v1` Lease
//!   (`LiveConfig::lease_*`) allocates LoadBalancer addresses, writes them through the
//!   Services' status subresource (JSON merge patch, field manager `vipr-<identity>`)
//!   and emits Events (`events.k8s.io/v1`). A new holder starts from the statuses
//!   ([`Ipam`] rebuilds from them), so a failover hands out nothing twice. Expiry is
//!   judged from the Lease's renewTime against this host's clock.
//! - Failed writes are retried on the next pass (at the latest every
//!   `LiveConfig::resync`), since the status still differs.
//! - Dropping the [`run`] future (or aborting its task) stops its watchers and its Lease
//!   renewal at once; a rival takes the Lease over when it expires.

use crate::ipam::{EventKind, Ipam, IpamPlan};
use crate::translate::{Options, Translation, Translator};
use crate::v1beta1;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
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

/// Reflects `api` into a store from a task of `tasks`, which sends the arrival time of
/// every event that can change the store to `changed`. Errors (API server away, 410
/// Gone) are logged and counted; the watcher backs off and relists by itself.
fn reflect<K>(
    api: Api<K>,
    cfg: &LiveConfig,
    tasks: &mut JoinSet<()>,
    changed: mpsc::UnboundedSender<Instant>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stats = cfg.stats.clone();
    let mut stream = watcher(api, watcher::Config::default())
        .backoff(Retry::new(cfg.retry_max))
        .reflect(writer)
        .boxed();
    tasks.spawn(async move {
        while let Some(event) = stream.next().await {
            let at = Instant::now();
            match event {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {}
                Ok(watcher::Event::InitDone) => {
                    stats.lists.fetch_add(1, Ordering::Relaxed);
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                Err(e) => {
                    stats.watch_errors.fetch_add(1, Ordering::Relaxed);
                    if matches!(&e, watcher::Error::WatchError(s) if s.code == 410) {
                        stats.gone.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying with backoff");
                    continue;
                }
            }
            if changed.send(at).is_err() {
                return;
            }
        }
    });
    store
}

enum Slices {
    V1(Store<EndpointSlice>),
    V1beta1(Store<v1beta1::EndpointSlice>),
}

/// v1 conversions of v1beta1 slices, by the address of the v1beta1 object (held, so the
/// address cannot be reused by another object while its entry exists).
type Converted =
    std::collections::HashMap<usize, (Arc<v1beta1::EndpointSlice>, Arc<EndpointSlice>)>;

impl Slices {
    /// The slices in their v1 shape; an object the store did not replace keeps its `Arc`
    /// (and is not converted again), so the [`Translator`] sees it unchanged.
    fn snapshot(&self, converted: &mut Converted) -> Vec<Arc<EndpointSlice>> {
        match self {
            Slices::V1(s) => s.state(),
            Slices::V1beta1(s) => {
                let mut next = Converted::with_capacity(converted.len());
                let out = s
                    .state()
                    .into_iter()
                    .map(|beta| {
                        let at = Arc::as_ptr(&beta) as usize;
                        let v1 = match converted.remove(&at) {
                            Some((_, v1)) => v1,
                            None => Arc::new((*beta).clone().into_v1()),
                        };
                        next.insert(at, (beta, v1.clone()));
                        v1
                    })
                    .collect();
                *converted = next;
                out
            }
        }
    }

    async fn wait_until_ready(&self) {
        // A dropped writer means the watcher ended; the main loop notices that itself.
        let _ = match self {
            Slices::V1(s) => s.wait_until_ready().await,
            Slices::V1beta1(s) => s.wait_until_ready().await,
        };
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
    F: FnMut(&Translation, Instant) + Send,
{
    let slice_api = discover_slice_api(&client).await?;
    // Watchers and the Lease renewal live in `tasks`: dropping `run` aborts them.
    let mut tasks = JoinSet::new();
    let (tx, mut changes) = mpsc::unbounded_channel();
    let services = reflect(Api::<Service>::all(client.clone()), &cfg, &mut tasks, tx.clone());
    let nodes = reflect(Api::<Node>::all(client.clone()), &cfg, &mut tasks, tx.clone());
    let slices = match slice_api {
        SliceApi::V1 => Slices::V1(reflect(
            Api::<EndpointSlice>::all(client.clone()),
            &cfg,
            &mut tasks,
            tx.clone(),
        )),
        SliceApi::V1beta1 => Slices::V1beta1(reflect(
            Api::<v1beta1::EndpointSlice>::all(client.clone()),
            &cfg,
            &mut tasks,
            tx.clone(),
        )),
    };
    drop(tx);

    let _ = services.wait_until_ready().await;
    let _ = nodes.wait_until_ready().await;
    slices.wait_until_ready().await;
    // The first translation is due whatever arrived; it is timed from the first event.
    let mut pending = Some(changes.try_recv().unwrap_or_else(|_| Instant::now()));

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
    let mut last: Option<Translation> = None;
    let mut translator = Translator::new(cfg.options.clone());
    let mut converted = Converted::new();
    let mut resync = tokio::time::interval(cfg.resync);
    loop {
        // Coalesce a burst (a relist, a rollout) into one translation.
        while let Ok(at) = changes.try_recv() {
            pending.get_or_insert(at);
        }
        if let Some(first_event) = pending.take() {
            let translation = translator.translate(
                &services.state(),
                &slices.snapshot(&mut converted),
                &nodes.state(),
            );
            if last.as_ref() != Some(&translation) {
                on_change(&translation, first_event);
                cfg.stats.translations.fetch_add(1, Ordering::Relaxed);
                last = Some(translation);
            }
        }

        if *leader.borrow_and_update() {
            // A new holder starts afresh from the statuses, whatever it knew before.
            let ipam =
                ipam.get_or_insert_with(|| Ipam::new(cfg.pools.clone(), cfg.options.class.clone()));
            let all: Vec<Service> = services.state().iter().map(|s| (**s).clone()).collect();
            let plan = ipam.reconcile(&all);
            apply(&client, &recorder, &params, &services, plan).await;
        } else {
            ipam = None;
        }

        tokio::select! {
            next = changes.recv() => match next {
                Some(at) => pending = Some(at),
                None => return Ok(()),
            },
            _ = leader.changed() => {}
            _ = resync.tick() => {}
        }
    }
}

async fn apply(
    client: &Client,
    recorder: &Recorder,
    params: &PatchParams,
    services: &Store<Service>,
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
        let key = reflector::ObjectRef::new(&event.service.name).within(&event.service.namespace);
        let uid = services.get(&key).and_then(|s| s.metadata.uid.clone());
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
