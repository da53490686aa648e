//! The live source against a real kube-apiserver. `scripts/k8s-test.sh` builds and
//! starts one (scripts/k8s-apiserver.sh), exports VIPR_K8S_URL and VIPR_K8S_TOKEN, runs
//! these tests and stops it again.
//!
//! Without VIPR_K8S_URL every test says so and passes (the pure tests cover the rules);
//! with it, they all run. The outage and 410 scenarios kill the API server by the pid
//! scripts/k8s-apiserver.sh recorded and start it again with that script, so they need
//! the server that script started (etcdctl too, for `compact`).
//!
//! Each scenario waits for what it expects with a timeout, so a missing call fails, and
//! checks both what `on_change` delivered and the API objects. The scenarios share one
//! API server and one namespace, so they take turns (a lock), whatever
//! `--test-threads` says; every object they create carries the label
//! `vipr.test/live=true`, and each scenario deletes all such objects first, so what an
//! interrupted run left behind cannot disturb the next one.
#![cfg(feature = "live")]

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use vipr_abi::VipKey;
use vipr_config::Pool;
use vipr_k8s::live::{self, LiveConfig, LiveError, LiveStats, SliceApi};
use vipr_k8s::{
    fixtures, v1beta1, Options, ServiceVip, Translation, TranslationChanges, Translator, VipKind,
};

const NS: &str = "default";
const LABEL: &str = "vipr.test/live";
/// How long any one expected thing may take to show up.
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Harness

struct Env {
    client: Client,
    slice_api: SliceApi,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The API server under test, with the namespace cleared of earlier runs' objects; None
/// (after saying why) when VIPR_K8S_URL is not set.
async fn env(scenario: &str) -> Option<Env> {
    let Ok(url) = std::env::var("VIPR_K8S_URL") else {
        eprintln!(
            "{scenario}: skipped, VIPR_K8S_URL is not set (scripts/k8s-test.sh starts a real \
             API server and sets it)"
        );
        return None;
    };
    let token = std::env::var("VIPR_K8S_TOKEN").unwrap_or_default();
    let turn = TURN.lock().await;
    let client = live::client_for(&url, &token).expect("a client for VIPR_K8S_URL");
    let slice_api = live::discover_slice_api(&client)
        .await
        .unwrap_or_else(|e| panic!("VIPR_K8S_URL={url} is set but: {e}"));
    eprintln!("{scenario}: against {url}, EndpointSlices served as {slice_api:?}");
    let env = Env { client, slice_api, _turn: turn };
    env.clear().await;
    Some(env)
}

fn labelled(meta: &mut kube::api::ObjectMeta) {
    meta.labels.get_or_insert_with(Default::default).insert(LABEL.into(), "true".into());
}

fn svc(b: fixtures::ServiceBuilder) -> Service {
    let mut s = b.build();
    labelled(&mut s.metadata);
    s
}

impl Env {
    fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), NS)
    }

    /// Deletes every labelled Service and EndpointSlice and waits until they are gone.
    async fn clear(&self) {
        let lp = ListParams::default().labels(&format!("{LABEL}=true"));
        let services = self.services();
        for s in services.list(&lp).await.unwrap().items {
            let _ = services.delete(&s.name_any(), &DeleteParams::default()).await;
        }
        match self.slice_api {
            SliceApi::V1 => {
                clear_all(&Api::<EndpointSlice>::namespaced(self.client.clone(), NS), &lp).await
            }
            SliceApi::V1beta1 => {
                clear_all(&Api::<v1beta1::EndpointSlice>::namespaced(self.client.clone(), NS), &lp)
                    .await
            }
        }
        let configmaps: Api<ConfigMap> = Api::namespaced(self.client.clone(), NS);
        clear_all(&configmaps, &lp).await;
        poll("labelled Services to go", || async {
            services.list(&lp).await.unwrap().items.is_empty().then_some(())
        })
        .await;
    }

    async fn create(&self, s: Service) -> Service {
        self.services().create(&PostParams::default(), &s).await.unwrap()
    }

    async fn delete(&self, name: &str) {
        self.services().delete(name, &DeleteParams::default()).await.unwrap();
    }

    /// Creates or replaces the slice, in the version the server serves.
    async fn put_slice(&self, b: fixtures::SliceBuilder) {
        let mut slice = b.build();
        labelled(&mut slice.metadata);
        let name = slice.metadata.name.clone().unwrap();
        match self.slice_api {
            SliceApi::V1 => {
                put(&Api::<EndpointSlice>::namespaced(self.client.clone(), NS), &name, slice).await
            }
            SliceApi::V1beta1 => {
                let beta: v1beta1::EndpointSlice =
                    serde_json::from_value(serde_json::to_value(&slice).unwrap()).unwrap();
                put(
                    &Api::<v1beta1::EndpointSlice>::namespaced(self.client.clone(), NS),
                    &name,
                    beta,
                )
                .await
            }
        }
    }

    async fn delete_slice(&self, name: &str) {
        let dp = DeleteParams::default();
        match self.slice_api {
            SliceApi::V1 => {
                let api = Api::<EndpointSlice>::namespaced(self.client.clone(), NS);
                api.delete(name, &dp).await.unwrap();
            }
            SliceApi::V1beta1 => {
                let api = Api::<v1beta1::EndpointSlice>::namespaced(self.client.clone(), NS);
                api.delete(name, &dp).await.unwrap();
            }
        };
    }

    /// The addresses in the Service's status, once it has `n` of them.
    async fn ingress(&self, name: &str, n: usize) -> (Vec<IpAddr>, Service) {
        let api = self.services();
        poll(&format!("{n} ingress address(es) in Service {name}'s status"), || async {
            let s = api.get_status(name).await.unwrap();
            let ips = vipr_k8s::ipam::ingress_ips(&s);
            (ips.len() == n).then_some((ips, s))
        })
        .await
    }

    /// Waits for an Event of `reason` about Service `name` and returns it.
    async fn event(&self, name: &str, reason: &str) -> Event {
        let api: Api<Event> = Api::namespaced(self.client.clone(), NS);
        poll(&format!("a {reason} Event on Service {name}"), || async {
            api.list(&ListParams::default()).await.unwrap().items.into_iter().find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
        })
        .await
    }

    async fn events(&self, name: &str) -> Vec<Event> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), NS);
        let all = api.list(&ListParams::default()).await.unwrap().items;
        all.into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect()
    }

    async fn lease_holder(&self, lease: &str) -> Option<String> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), "kube-system");
        api.get_opt(lease).await.ok().flatten()?.spec?.holder_identity
    }

    /// Writes an unrelated object, so etcd's revision moves past every watched one.
    async fn bump_revision(&self) {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), NS);
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(format!("bump-{}", std::process::id()));
        labelled(&mut cm.metadata);
        let _ = api.delete(&cm.name_any(), &DeleteParams::default()).await;
        api.create(&PostParams::default(), &cm).await.unwrap();
    }
}

async fn clear_all<K>(api: &Api<K>, lp: &ListParams)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for o in api.list(lp).await.unwrap().items {
        let _ = api.delete(&o.name_any(), &DeleteParams::default()).await;
    }
}

async fn put<K>(api: &Api<K>, name: &str, mut obj: K)
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await.unwrap() {
        Some(current) => {
            obj.meta_mut().resource_version = current.meta().resource_version.clone();
            api.replace(name, &PostParams::default(), &obj).await.unwrap();
        }
        None => {
            api.create(&PostParams::default(), &obj).await.unwrap();
        }
    }
}

/// Polls `f` every 100 ms until it gives a value; fails after `WAIT`.
async fn poll<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {WAIT:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs scripts/k8s-apiserver.sh with `args` (blocking: in a blocking thread).
async fn apiserver_script(args: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/k8s-apiserver.sh");
    let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash").arg(&script).args(&argv).status()
    })
    .await
    .unwrap()
    .expect("running scripts/k8s-apiserver.sh");
    assert!(status.success(), "scripts/k8s-apiserver.sh {:?} failed: {status}", args);
}

/// Takes the API server away for `down` (etcd stays), then starts it again and waits
/// until it is ready. It is killed outright: on SIGTERM a kube-apiserver stops taking
/// connections but keeps serving the watches it has for up to a minute, so the
/// controller would not notice an outage at all.
async fn apiserver_outage(down: Duration) {
    let state = std::env::var("VIPR_K8S_STATE").unwrap_or_else(|_| "/run/vipr-k8s".into());
    let pid_file = PathBuf::from(state).join("kube-apiserver.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| {
            panic!("{}: {e}; the outage scenarios need the API server that scripts/k8s-apiserver.sh started", pid_file.display())
        })
        .trim()
        .to_owned();
    let killed = std::process::Command::new("kill").args(["-KILL", &pid]).status().unwrap();
    assert!(killed.success(), "kill -KILL {pid}");
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    poll("the API server to exit", || async { (!proc_dir.exists()).then_some(()) }).await;
    tokio::time::sleep(down).await;
    apiserver_script(&["start"]).await;
}

/// One call of `on_change`.
struct Delivery {
    /// The VIPs served after this call, built up from every call's changes (the
    /// warnings: this call's).
    t: Translation,
    /// Those VIPs equal what the translator holds as its whole output.
    consistent: bool,
    initial: bool,
    first_event: Instant,
    at: Instant,
}

/// A running `live::run` and what it delivered.
struct Controller {
    task: JoinHandle<Result<(), LiveError>>,
    rx: mpsc::UnboundedReceiver<Delivery>,
    stats: Arc<LiveStats>,
    last: Option<Translation>,
}

fn cfg(identity: &str, lease: &str, pools: Vec<Pool>) -> LiveConfig {
    LiveConfig {
        lease_name: format!("vipr-test-{lease}-{}", std::process::id()),
        lease_duration: Duration::from_secs(3),
        retry_max: Duration::from_secs(1),
        ..LiveConfig::new(Options::default(), pools, identity)
    }
}

fn pool(first: &str, last: &str) -> Pool {
    Pool {
        name: "test".into(),
        cidrs: vec![],
        ranges: vec![(first.parse().unwrap(), last.parse().unwrap())],
    }
}

impl Controller {
    fn start(env: &Env, cfg: LiveConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = cfg.stats.clone();
        // What a consumer programs: the changes applied one call after the other.
        let mut served: HashMap<VipKey, ServiceVip> = HashMap::new();
        let task = tokio::spawn(live::run(
            env.client.clone(),
            cfg,
            move |ch: &TranslationChanges, translator: &Translator, first_event| {
                if ch.initial {
                    served.clear();
                }
                for k in &ch.removes {
                    served.remove(k);
                }
                for v in &ch.upserts {
                    served.insert(v.spec.key(), v.clone());
                }
                let mut vips: Vec<ServiceVip> = served.values().cloned().collect();
                vips.sort_by_key(|v| (v.spec.addr, v.spec.port, v.spec.proto));
                let consistent = translator.translation().vips == vips;
                let t = Translation { vips, warnings: ch.warnings.clone() };
                let _ = tx.send(Delivery {
                    t,
                    consistent,
                    initial: ch.initial,
                    first_event,
                    at: Instant::now(),
                });
            },
        ));
        Controller { task, rx, stats, last: None }
    }

    /// Waits (at most `timeout`) for a delivery that satisfies `ok`; returns it with
    /// every delivery before it.
    async fn until_within(
        &mut self,
        timeout: Duration,
        what: &str,
        ok: impl Fn(&Translation) -> bool,
    ) -> (Delivery, Vec<Delivery>) {
        let mut before = Vec::new();
        let wait = async {
            loop {
                let Some(d) = self.rx.recv().await else { panic!("the source stopped") };
                assert!(d.first_event <= d.at, "the first event is not later than the delivery");
                assert!(d.consistent, "the changes add up to other VIPs than the translator's");
                assert_eq!(d.initial, self.last.is_none(), "only the first changes are initial");
                self.last = Some(d.t.clone());
                if ok(&d.t) {
                    return d;
                }
                before.push(d);
            }
        };
        let d = tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| panic!("timed out after {timeout:?} waiting for {what}"));
        (d, before)
    }

    async fn until(&mut self, what: &str, ok: impl Fn(&Translation) -> bool) -> Delivery {
        self.until_within(WAIT, what, ok).await.0
    }

    /// What was delivered and not yet looked at.
    fn drain(&mut self) -> Vec<Delivery> {
        let mut out = Vec::new();
        while let Ok(d) = self.rx.try_recv() {
            assert!(d.consistent, "the changes add up to other VIPs than the translator's");
            self.last = Some(d.t.clone());
            out.push(d);
        }
        out
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// The sorted addresses of the backends that take new flows (not draining) of Service
/// `name`'s VIP of `kind`, if it has that VIP.
fn backends(t: &Translation, name: &str, kind: VipKind) -> Option<Vec<IpAddr>> {
    let v = t.vips.iter().find(|v| v.service.name == name && v.kind == kind)?;
    let mut b: Vec<IpAddr> =
        v.spec.backends.iter().filter(|b| !b.draining).map(|b| b.addr).collect();
    b.sort();
    Some(b)
}

/// The draining backends (kept for their flows, no new ones) of the same VIP.
fn draining(t: &Translation, name: &str, kind: VipKind) -> Vec<IpAddr> {
    let v = t.vips.iter().find(|v| v.service.name == name && v.kind == kind);
    v.map(|v| v.spec.backends.iter().filter(|b| b.draining).map(|b| b.addr).collect())
        .unwrap_or_default()
}

fn lb_addr(t: &Translation, name: &str) -> Option<IpAddr> {
    t.vips
        .iter()
        .find(|v| v.service.name == name && v.kind == VipKind::LoadBalancer)
        .map(|v| v.spec.addr)
}

fn ips(s: &[&str]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = s.iter().map(|s| s.parse().unwrap()).collect();
    v.sort();
    v
}

/// The field managers that own part of the Service's status.
fn status_writers(s: &Service) -> BTreeSet<String> {
    s.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.fields_v1.as_ref().is_some_and(|f| f.0.get("f:status").is_some()))
        .filter_map(|m| m.manager.clone())
        .collect()
}

fn web(name: &str) -> fixtures::ServiceBuilder {
    fixtures::service(name).no_selector().port(80, 8080)
}

// ---------------------------------------------------------------------------------------
// Scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_balancer_service_is_allocated_written_served_and_released() {
    let Some(env) = env("allocate").await else { return };
    let mut c =
        Controller::start(&env, cfg("alloc", "alloc", vec![pool("192.0.2.200", "192.0.2.250")]));
    let name = "alloc-web";

    env.create(svc(web(name).load_balancer())).await;
    env.put_slice(fixtures::slice(&format!("{name}-1"), name).port(8080).ready("192.0.2.21")).await;

    let d = c
        .until("the allocated VIP with its backend", |t| {
            backends(t, name, VipKind::LoadBalancer) == Some(ips(&["192.0.2.21"]))
        })
        .await;
    let vip = lb_addr(&d.t, name).unwrap();
    let (ingress, _) = env.ingress(name, 1).await;
    assert_eq!(ingress, vec![vip], "status written through the subresource");
    assert!(pool("192.0.2.200", "192.0.2.250").contains(vip));
    env.event(name, "IPAllocated").await;

    env.delete(name).await;
    c.until("the VIP to go", |t| t.vips.iter().all(|v| v.service.name != name)).await;
    c.stop().await;
    env.clear().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_endpoint_slices_is_followed_by_the_translation() {
    let Some(env) = env("scale").await else { return };
    let mut c = Controller::start(&env, cfg("scale", "scale", vec![]));
    let name = "scale-web";
    let s1 = format!("{name}-1");
    let s2 = format!("{name}-2");
    let cluster = |t: &Translation| backends(t, name, VipKind::ClusterIp);

    env.create(svc(web(name))).await;
    env.put_slice(fixtures::slice(&s1, name).port(8080).ready("192.0.2.21")).await;
    c.until("one backend", |t| cluster(t) == Some(ips(&["192.0.2.21"]))).await;

    // Scale up within one slice; the callback is timed from the watch event.
    let changed = Instant::now();
    env.put_slice(
        fixtures::slice(&s1, name)
            .port(8080)
            .ready("192.0.2.21")
            .ready("192.0.2.22")
            .ready("192.0.2.23"),
    )
    .await;
    let d = c
        .until("three backends", |t| {
            cluster(t) == Some(ips(&["192.0.2.21", "192.0.2.22", "192.0.2.23"]))
        })
        .await;
    assert!(d.first_event >= changed, "first_event is the watch event's arrival, not earlier");

    // A second slice adds a ready endpoint and a not-ready one, which takes no new flows.
    env.put_slice(
        fixtures::slice(&s2, name).port(8080).ready("192.0.2.24").not_ready("192.0.2.25"),
    )
    .await;
    let d = c
        .until("four backends from two slices", |t| {
            cluster(t) == Some(ips(&["192.0.2.21", "192.0.2.22", "192.0.2.23", "192.0.2.24"]))
        })
        .await;
    assert_eq!(
        draining(&d.t, name, VipKind::ClusterIp),
        ips(&["192.0.2.25"]),
        "not ready: draining"
    );

    // Scale down: one endpoint leaves the first slice, then that slice goes.
    env.put_slice(fixtures::slice(&s1, name).port(8080).ready("192.0.2.21").ready("192.0.2.23"))
        .await;
    c.until("three backends after a removal", |t| {
        cluster(t) == Some(ips(&["192.0.2.21", "192.0.2.23", "192.0.2.24"]))
    })
    .await;
    env.delete_slice(&s1).await;
    c.until("the second slice's backend alone", |t| cluster(t) == Some(ips(&["192.0.2.24"]))).await;
    env.delete_slice(&s2).await;
    c.until("no backend, VIP kept", |t| cluster(t) == Some(vec![])).await;

    // The API objects agree: the ClusterIP VIP is the Service's cluster IP.
    let s = env.services().get(name).await.unwrap();
    let cluster_ip: IpAddr = s.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
    let t = c.last.clone().unwrap();
    let v = t.vips.iter().find(|v| v.service.name == name && v.kind == VipKind::ClusterIp).unwrap();
    assert_eq!((v.spec.addr, v.spec.port), (cluster_ip, 80));
    c.stop().await;
    env.clear().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_keeps_every_allocation_and_rewrites_nothing() {
    let Some(env) = env("restart").await else { return };
    let p = || vec![pool("192.0.2.140", "192.0.2.149")];
    let mut a = Controller::start(&env, cfg("restart", "restart", p()));
    let names = ["restart-1", "restart-2", "restart-3"];
    for n in names {
        env.create(svc(web(n).load_balancer())).await;
    }
    let mut before = Vec::new();
    for n in names {
        let (ingress, s) = env.ingress(n, 1).await;
        before.push((ingress[0], s.metadata.resource_version.unwrap()));
    }
    a.until("three LoadBalancer VIPs", |t| names.iter().all(|n| lb_addr(t, n).is_some())).await;
    a.stop().await;

    // While no controller runs, the first Service goes and a new one comes.
    env.delete(names[0]).await;
    env.create(svc(web("restart-4").load_balancer())).await;

    let mut b = Controller::start(&env, cfg("restart", "restart", p()));
    let d = b
        .until("the kept VIPs at their addresses", |t| {
            lb_addr(t, names[1]) == Some(before[1].0) && lb_addr(t, names[2]) == Some(before[2].0)
        })
        .await;
    assert!(lb_addr(&d.t, names[0]).is_none(), "the deleted Service is not served");
    let (new, _) = env.ingress("restart-4", 1).await;
    assert!(new[0] != before[1].0 && new[0] != before[2].0, "{} handed out twice", new[0]);
    assert!(p()[0].contains(new[0]));
    b.until("the new Service's VIP", |t| lb_addr(t, "restart-4") == Some(new[0])).await;
    for (i, n) in names.iter().enumerate().skip(1) {
        let s = env.services().get_status(n).await.unwrap();
        assert_eq!(vipr_k8s::ipam::ingress_ips(&s), vec![before[i].0], "{n} kept its address");
        assert_eq!(
            s.metadata.resource_version.as_ref(),
            Some(&before[i].1),
            "{n} was not written again after the restart"
        );
    }
    b.stop().await;
    env.clear().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_controllers_only_the_lease_holder_writes_and_the_other_takes_over() {
    let Some(env) = env("two").await else { return };
    let p = || vec![pool("192.0.2.150", "192.0.2.159")];
    let lease = cfg("a", "two", p()).lease_name;
    let mut a = Controller::start(&env, cfg("a", "two", p()));
    poll("controller a to hold the Lease", || async {
        (env.lease_holder(&lease).await.as_deref() == Some("a")).then_some(())
    })
    .await;
    let mut b = Controller::start(&env, cfg("b", "two", p()));
    b.until("b's first translation", |_| true).await;

    for n in ["two-1", "two-2"] {
        env.create(svc(web(n).load_balancer())).await;
    }
    let mut held = Vec::new();
    for n in ["two-1", "two-2"] {
        let (ingress, s) = env.ingress(n, 1).await;
        assert_eq!(
            status_writers(&s),
            BTreeSet::from(["vipr-a".to_string()]),
            "{n}: who wrote the status"
        );
        held.push((ingress[0], s.metadata.resource_version.unwrap()));
        let ev = env.event(n, "IPAllocated").await;
        assert_eq!(ev.reporting_instance.as_deref(), Some("a"), "{n}: who reported");
        assert_eq!(ev.reporting_controller.as_deref(), Some("vipr"));
    }
    // Both serve the addresses (every instance programs its dataplane).
    for c in [&mut a, &mut b] {
        c.until("both VIPs", |t| {
            lb_addr(t, "two-1") == Some(held[0].0) && lb_addr(t, "two-2") == Some(held[1].0)
        })
        .await;
    }
    // Give b a few renewal periods to misbehave, then look again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.lease_holder(&lease).await.as_deref(), Some("a"));
    for n in ["two-1", "two-2"] {
        assert!(
            env.events(n).await.iter().all(|e| e.reporting_instance.as_deref() == Some("a")),
            "{n}: only a reports"
        );
    }

    // a goes; b takes the Lease once it expires, adopts the statuses, serves the next one.
    a.stop().await;
    poll("controller b to take the Lease over", || async {
        (env.lease_holder(&lease).await.as_deref() == Some("b")).then_some(())
    })
    .await;
    env.create(svc(web("two-3").load_balancer())).await;
    let (ingress, s) = env.ingress("two-3", 1).await;
    assert_eq!(status_writers(&s), BTreeSet::from(["vipr-b".to_string()]));
    assert!(held.iter().all(|(ip, _)| *ip != ingress[0]), "{} handed out twice", ingress[0]);
    b.until("the third VIP", |t| lb_addr(t, "two-3") == Some(ingress[0])).await;
    for (i, n) in ["two-1", "two-2"].iter().enumerate() {
        let s = env.services().get_status(n).await.unwrap();
        assert_eq!(
            s.metadata.resource_version.as_ref(),
            Some(&held[i].1),
            "{n} untouched by the failover"
        );
    }
    b.stop().await;
    env.clear().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_report_allocation_pool_exhaustion_and_an_unavailable_request() {
    let Some(env) = env("events").await else { return };
    let mut c =
        Controller::start(&env, cfg("events", "events", vec![pool("192.0.2.160", "192.0.2.161")]));

    env.create(svc(web("ev-asks").load_balancer().lb_ip("192.0.2.161"))).await;
    assert_eq!(env.ingress("ev-asks", 1).await.0, ips(&["192.0.2.161"]), "the requested address");
    let ev = env.event("ev-asks", "IPAllocated").await;
    assert_eq!(ev.type_.as_deref(), Some("Normal"));
    assert!(ev.note.as_deref().unwrap_or("").contains("192.0.2.161"), "{:?}", ev.note);
    let regarding = ev.regarding.unwrap();
    assert_eq!(
        (regarding.kind.as_deref(), regarding.namespace.as_deref()),
        (Some("Service"), Some(NS))
    );
    assert!(regarding.uid.is_some(), "the Event names the Service's uid");

    env.create(svc(web("ev-auto").load_balancer())).await;
    assert_eq!(
        env.ingress("ev-auto", 1).await.0,
        ips(&["192.0.2.160"]),
        "the pool's last free address"
    );
    env.event("ev-auto", "IPAllocated").await;

    env.create(svc(web("ev-full").load_balancer())).await;
    let ev = env.event("ev-full", "IPPoolExhausted").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    env.create(svc(web("ev-outside").load_balancer().lb_ip("192.0.2.99"))).await;
    let ev = env.event("ev-outside", "RequestedIPUnavailable").await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert!(ev.note.as_deref().unwrap_or("").contains("192.0.2.99"), "{:?}", ev.note);
    for n in ["ev-full", "ev-outside"] {
        let s = env.services().get_status(n).await.unwrap();
        assert!(vipr_k8s::ipam::ingress_ips(&s).is_empty(), "{n} got no address");
    }
    c.until("two LoadBalancer VIPs, none for the unserved", |t| {
        lb_addr(t, "ev-asks").is_some()
            && lb_addr(t, "ev-auto").is_some()
            && lb_addr(t, "ev-full").is_none()
            && lb_addr(t, "ev-outside").is_none()
    })
    .await;

    // A release makes room: the waiting Service gets the address.
    env.delete("ev-asks").await;
    assert_eq!(env.ingress("ev-full", 1).await.0, ips(&["192.0.2.161"]));
    env.event("ev-full", "IPAllocated").await;
    c.until("the freed address served for ev-full", |t| {
        lb_addr(t, "ev-full") == Some("192.0.2.161".parse().unwrap())
            && lb_addr(t, "ev-asks").is_none()
    })
    .await;
    c.stop().await;
    env.clear().await;
}

/// Every delivery in `ds` still serves Service `name`'s ClusterIP VIP with `old` or
/// `new` backends: nothing was flushed.
fn assert_no_flush(ds: &[Delivery], name: &str, old: &[IpAddr], new: &[IpAddr]) {
    for d in ds {
        let b = backends(&d.t, name, VipKind::ClusterIp);
        assert!(
            b.as_deref() == Some(old) || b.as_deref() == Some(new),
            "a translation without the last state was delivered: {b:?} ({} VIPs)",
            d.t.vips.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_outage_leaves_the_translation_as_it_was_then_it_catches_up() {
    let Some(env) = env("outage").await else { return };
    let mut c = Controller::start(&env, cfg("outage", "outage", vec![]));
    let name = "outage-web";
    let slice = format!("{name}-1");
    let old = ips(&["192.0.2.31", "192.0.2.32"]);
    let new = ips(&["192.0.2.31", "192.0.2.32", "192.0.2.33"]);
    env.create(svc(web(name))).await;
    env.put_slice(fixtures::slice(&slice, name).port(8080).ready("192.0.2.31").ready("192.0.2.32"))
        .await;
    c.until("two backends", |t| backends(t, name, VipKind::ClusterIp).as_deref() == Some(&old))
        .await;
    let errors = c.stats.counts().watch_errors;

    // 30 s without an API server (then its start-up), while the controller runs on.
    let down = Instant::now();
    apiserver_outage(Duration::from_secs(30)).await;
    let outage = down.elapsed();
    assert!(outage >= Duration::from_secs(30), "the outage lasted {outage:?}");
    let during = c.drain();
    assert!(
        during.is_empty(),
        "{} translation(s) delivered while the API server was away",
        during.len()
    );
    assert!(c.stats.counts().watch_errors > errors, "the watchers noticed the outage");

    // The change lands while the watchers are still reconnecting; they catch up.
    env.put_slice(
        fixtures::slice(&slice, name)
            .port(8080)
            .ready("192.0.2.31")
            .ready("192.0.2.32")
            .ready("192.0.2.33"),
    )
    .await;
    let (d, before) = c
        .until_within(Duration::from_secs(60), "the change made after the return", |t| {
            backends(t, name, VipKind::ClusterIp).as_deref() == Some(&new)
        })
        .await;
    assert_no_flush(&before, name, &old, &new);
    eprintln!(
        "outage: {outage:.1?} down, caught up {:.1?} after the server was back",
        d.at.duration_since(down + outage)
    );
    c.stop().await;
    env.clear().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_behind_a_compacted_etcd_gets_410_gone_and_relists_without_a_flush() {
    let Some(env) = env("compact").await else { return };
    let mut c = Controller::start(&env, cfg("compact", "compact", vec![]));
    let name = "compact-web";
    let slice = format!("{name}-1");
    let old = ips(&["192.0.2.41", "192.0.2.42"]);
    let new = ips(&["192.0.2.41", "192.0.2.42", "192.0.2.43"]);
    env.create(svc(web(name))).await;
    env.put_slice(fixtures::slice(&slice, name).port(8080).ready("192.0.2.41")).await;
    c.until("one backend", |t| backends(t, name, VipKind::ClusterIp) == Some(ips(&["192.0.2.41"])))
        .await;
    env.put_slice(fixtures::slice(&slice, name).port(8080).ready("192.0.2.41").ready("192.0.2.42"))
        .await;
    c.until("two backends", |t| backends(t, name, VipKind::ClusterIp).as_deref() == Some(&old))
        .await;

    // The watchers' resourceVersions fall behind etcd's compacted history. A restart of
    // the API server breaks every watch; resuming from those versions gets 410 Gone.
    let counted = c.stats.counts();
    env.bump_revision().await;
    apiserver_script(&["compact"]).await;
    apiserver_outage(Duration::ZERO).await;
    poll("a 410 Gone and a relist", || async {
        let now = c.stats.counts();
        (now.gone > counted.gone && now.lists > counted.lists).then_some(())
    })
    .await;
    let relisted = c.drain();
    assert!(
        relisted.is_empty(),
        "the relist of unchanged objects delivered {} translation(s)",
        relisted.len()
    );

    env.put_slice(
        fixtures::slice(&slice, name)
            .port(8080)
            .ready("192.0.2.41")
            .ready("192.0.2.42")
            .ready("192.0.2.43"),
    )
    .await;
    let (_, before) = c
        .until_within(WAIT, "the change after the relist", |t| {
            backends(t, name, VipKind::ClusterIp).as_deref() == Some(&new)
        })
        .await;
    assert_no_flush(&before, name, &old, &new);
    let n = c.stats.counts();
    eprintln!(
        "compact: {} watch errors, {} of them 410 Gone, {} lists",
        n.watch_errors, n.gone, n.lists
    );
    c.stop().await;
    env.clear().await;
}
