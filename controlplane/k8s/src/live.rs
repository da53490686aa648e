//! The live Kubernetes source: reflectors for Services, EndpointSlices and Nodes feed
//! [`translate`]; the Lease holder runs [`Ipam`] and writes what it plans.
//!
//! # Contract
//!
//! - [`run`] discovers whether the cluster serves EndpointSlices as
//!   `discovery.k8s.io/v1` (1.21+) or only `v1beta1` (1.20) and reads that one.
//! - It calls `on_change` with a fresh [`Translation`] once all three caches are
//!   filled, then after every change (bursts coalesced). While the API server is away
//!   the watchers retry with backoff and `on_change` is not called: what is programmed
//!   stays as it is. A relist (after an outage or a 410 Gone from a compacted etcd)
//!   replaces a cache in one step when the new list is complete, so nothing is flushed
//!   in between.
//! - One writer at a time: only the holder of the `coordination.k8s.io/v1` Lease
//!   (`LiveConfig::lease_*`) allocates LoadBalancer addresses, writes them through the
//!   Services' status subresource (JSON merge patch) and emits Events
//!   (`events.k8s.io/v1`). A new holder starts from the statuses ([`Ipam`] rebuilds
//!   from them), so a failover hands out nothing twice. Expiry is judged from the
//!   Lease's renewTime against this host's clock.
//! - Failed writes are retried on the next pass (at the latest every
//!   `LiveConfig::resync`), since the status still differs.

use crate::ipam::{EventKind, Ipam, IpamPlan};
use crate::translate::{translate, Inputs, Options, Translation};
use crate::v1beta1;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::watch;
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
    /// This instance's name in the Lease and in Events.
    pub identity: String,
    pub lease_namespace: String,
    pub lease_name: String,
    pub lease_duration: Duration,
    /// How often the Lease holder re-plans even without a change (retries writes).
    pub resync: Duration,
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

type Changes = Pin<Box<dyn Stream<Item = ()> + Send>>;

/// Reflects `api` into a store; the stream yields once per event. Errors (API server
/// away, 410 Gone) are logged; the watcher backs off and relists by itself.
fn reflect<K>(api: Api<K>) -> (Store<K>, Changes)
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
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .map(|event| {
            if let Err(e) = event {
                tracing::warn!(error = %e, "watch failed; retrying with backoff");
            }
        })
        .boxed();
    (store, stream)
}

enum Slices {
    V1(Store<EndpointSlice>),
    V1beta1(Store<v1beta1::EndpointSlice>),
}

impl Slices {
    fn snapshot(&self) -> Vec<EndpointSlice> {
        match self {
            Slices::V1(s) => s.state().iter().map(|s| (**s).clone()).collect(),
            Slices::V1beta1(s) => s.state().iter().map(|s| (**s).clone().into_v1()).collect(),
        }
    }

    async fn wait_until_ready(&self) {
        // A dropped writer means the stream ended; the main loop notices that itself.
        let _ = match self {
            Slices::V1(s) => s.wait_until_ready().await,
            Slices::V1beta1(s) => s.wait_until_ready().await,
        };
    }
}

/// Runs the source until the watch streams end (they do not, short of a panic).
pub async fn run<F>(client: Client, cfg: LiveConfig, mut on_change: F) -> Result<(), LiveError>
where
    F: FnMut(&Translation) + Send,
{
    let slice_api = discover_slice_api(&client).await?;
    let (services, svc_changes) = reflect(Api::<Service>::all(client.clone()));
    let (nodes, node_changes) = reflect(Api::<Node>::all(client.clone()));
    let (slices, slice_changes) = match slice_api {
        SliceApi::V1 => {
            let (s, c) = reflect(Api::<EndpointSlice>::all(client.clone()));
            (Slices::V1(s), c)
        }
        SliceApi::V1beta1 => {
            let (s, c) = reflect(Api::<v1beta1::EndpointSlice>::all(client.clone()));
            (Slices::V1beta1(s), c)
        }
    };
    let mut changes = futures::stream::select_all([svc_changes, node_changes, slice_changes]);

    let ready = async {
        let _ = services.wait_until_ready().await;
        let _ = nodes.wait_until_ready().await;
        slices.wait_until_ready().await;
    };
    tokio::pin!(ready);
    loop {
        tokio::select! {
            _ = &mut ready => break,
            next = changes.next() => if next.is_none() { return Ok(()) },
        }
    }

    let mut leader = if cfg.pools.is_empty() {
        watch::channel(false).1
    } else {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(hold_lease(client.clone(), cfg.clone(), tx));
        rx
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: "vipr".into(), instance: Some(cfg.identity.clone()) },
    );
    let mut ipam: Option<Ipam> = None;
    let mut resync = tokio::time::interval(cfg.resync);
    loop {
        let inputs = Inputs {
            services: services.state().iter().map(|s| (**s).clone()).collect(),
            endpoint_slices: slices.snapshot(),
            nodes: nodes.state().iter().map(|n| (**n).clone()).collect(),
        };
        let translation = translate(&inputs, &cfg.options);
        on_change(&translation);

        if *leader.borrow() {
            // A new holder starts afresh from the statuses, whatever it knew before.
            let ipam =
                ipam.get_or_insert_with(|| Ipam::new(cfg.pools.clone(), cfg.options.class.clone()));
            let plan = ipam.reconcile(&inputs.services);
            apply(&client, &recorder, &services, plan).await;
        } else {
            ipam = None;
        }

        tokio::select! {
            next = changes.next() => if next.is_none() { return Ok(()) },
            _ = leader.changed() => {}
            _ = resync.tick() => {}
        }
        // Coalesce a burst (a relist, a rollout) into one translation.
        while let Some(Some(())) = changes.next().now_or_never() {}
    }
}

async fn apply(client: &Client, recorder: &Recorder, services: &Store<Service>, plan: IpamPlan) {
    for update in plan.status_updates {
        let api: Api<Service> = Api::namespaced(client.clone(), &update.service.namespace);
        let ingress: Vec<serde_json::Value> =
            update.ingress.iter().map(|ip| serde_json::json!({ "ip": ip.to_string() })).collect();
        let patch = serde_json::json!({ "status": { "loadBalancer": { "ingress": ingress } } });
        if let Err(e) = api
            .patch_status(&update.service.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
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
