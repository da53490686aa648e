//! `vipr run` with a `kubernetes:` section against a REAL kube-apiserver (started by
//! scripts/k8s-test.sh, which passes VIPR_K8S_URL, VIPR_K8S_TOKEN and VIPR_K8S_STATE):
//! a LoadBalancer Service and its EndpointSlice go in through the API; the agent
//! allocates the address from its pool, writes it to the Service's status, programs the
//! XDP dataplane, and real TCP from a client namespace reaches the pods. An agent
//! restarted while the API server is out of reach keeps serving from its pins. Scaling
//! the slice and deleting the Service reach the dataplane too, each timed by the agent's
//! event-to-programmed histogram.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use vipr::demo::{interfaces_config, Agent};
use vipr::testbed::{self, Testbed, VIP};
use vipr_k8s::k8s_openapi;
use vipr_k8s::live::{self, SliceApi};
use vipr_k8s::{fixtures, v1beta1};

const VIPR: &str = env!("CARGO_BIN_EXE_vipr");
const LABEL: &str = "vipr.test/agent";
/// What the live tier (controlplane/k8s/tests/live.rs) labels its objects with.
const LIVE_LABEL: &str = "vipr.test/live";
const NAME: &str = "agent-web";

fn vipr_json(args: &[&str]) -> Value {
    let out = Command::new(VIPR).args(args).output().unwrap();
    assert!(out.status.success(), "vipr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls `f` every 100 ms for up to 30 s.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The agent's backends of VIP `vip` (ip:port tcp), once it has `n` of them.
fn backends(instance: &str, vip: &str, n: usize) -> Value {
    wait_for(&format!("{n} backends of {vip} in vipr status"), || {
        let st = vipr_json(&["status", "--json", "--instance", instance]);
        let v = st["vips"].as_array()?.iter().find(|v| v["vip"] == vip)?.clone();
        (v["backends"].as_array()?.len() == n).then_some(v)
    })
}

fn labelled<K: Resource>(mut o: K) -> K {
    o.meta_mut().labels.get_or_insert_with(Default::default).insert(LABEL.into(), "true".into());
    o
}

async fn put_slice(client: &kube::Client, api: SliceApi, slice: EndpointSlice) {
    let name = slice.name_any();
    match api {
        SliceApi::V1 => {
            replace_or_create(&Api::namespaced(client.clone(), "default"), &name, slice).await
        }
        SliceApi::V1beta1 => {
            let beta: v1beta1::EndpointSlice =
                serde_json::from_value(serde_json::to_value(&slice).unwrap()).unwrap();
            replace_or_create(&Api::namespaced(client.clone(), "default"), &name, beta).await
        }
    }
}

async fn replace_or_create<K>(api: &Api<K>, name: &str, mut obj: K)
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

/// Deletes this test's objects and what the live tier left (a LoadBalancer Service
/// without an address would compete for the pool's one address).
async fn clear(client: &kube::Client) {
    let dp = DeleteParams::default();
    for label in [LABEL, LIVE_LABEL] {
        let lp = ListParams::default().labels(&format!("{label}=true"));
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        for s in services.list(&lp).await.unwrap().items {
            let _ = services.delete(&s.name_any(), &dp).await;
        }
        let v1: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
        for s in v1.list(&lp).await.map(|l| l.items).unwrap_or_default() {
            let _ = v1.delete(&s.name_any(), &dp).await;
        }
        let beta: Api<v1beta1::EndpointSlice> = Api::namespaced(client.clone(), "default");
        for s in beta.list(&lp).await.map(|l| l.items).unwrap_or_default() {
            let _ = beta.delete(&s.name_any(), &dp).await;
        }
    }
}

#[test]
#[ignore = "needs a real kube-apiserver: scripts/k8s-test.sh starts one and runs this with --include-ignored"]
fn a_loadbalancer_service_from_the_api_is_allocated_programmed_and_reached() {
    let url = std::env::var("VIPR_K8S_URL").expect("VIPR_K8S_URL (run scripts/k8s-test.sh)");
    let token = std::env::var("VIPR_K8S_TOKEN").expect("VIPR_K8S_TOKEN");
    let state = std::env::var("VIPR_K8S_STATE").unwrap_or_else(|_| "/run/vipr-k8s".into());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _in_runtime = rt.enter();
    let client = live::client_for(&url, &token).unwrap();
    let slice_api = rt.block_on(live::discover_slice_api(&client)).unwrap();
    rt.block_on(clear(&client));

    let mut tb = Testbed::new("k8a-", 2).expect("testbed");
    tb.start_backends(VIPR).expect("backends");
    let dir = std::env::temp_dir().join(format!("vipr-k8s-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, &token).unwrap();
    let config = dir.join("vipr.yaml");
    // The pool is the testbed's one routed VIP address. (A class of its own would keep
    // other Services away, but 1.20 has no spec.loadBalancerClass: Services without a
    // class are served, and `clear` removed the others.)
    let text = interfaces_config(&tb, "e2e-k8s")
        + &format!(
            "pools:\n  - name: test\n    ranges: [\"{VIP}-{VIP}\"]\n\
             kubernetes:\n  mode: edge\n  pod_routable: true\n  api_server: {url}\n  token_file: {}\n  ca_file: {state}/certs/apiserver.crt\n  \
             lease_namespace: default\n",
            token_file.display()
        );
    std::fs::write(&config, text).unwrap();
    let mut agent =
        Agent::start(Path::new(VIPR), &config, "e2e-k8s", &tb.lb_ns()).expect("vipr run");

    let svc = labelled(fixtures::service(NAME).load_balancer().port(8088, 8080).build());
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    rt.block_on(services.create(&PostParams::default(), &svc)).unwrap();
    let two = fixtures::slice(&format!("{NAME}-1"), NAME)
        .port(8080)
        .ready(&testbed::backend_addr(0))
        .ready(&testbed::backend_addr(1))
        .build();
    rt.block_on(put_slice(&client, slice_api, labelled(two)));

    // Allocated and written through the status subresource.
    wait_for("the pool's address in the Service's status", || {
        let s = rt.block_on(services.get_status(NAME)).ok()?;
        vipr_k8s::ipam::ingress_ips(&s).contains(&VIP.parse().unwrap()).then_some(())
    });
    let vip = format!("{VIP}:8088");
    backends("e2e-k8s", &vip, 2);
    let st = vipr_json(&["status", "--json", "--instance", "e2e-k8s"]);
    assert_eq!(st["ready"], true, "{st}");
    assert!(
        st["programming"]["count"].as_u64().unwrap() >= 1,
        "the Service's arrival was timed: {st}"
    );

    // Real TCP reaches both pods through the VIP.
    let out = tb.ns(&tb.client_ns(), &[VIPR, "probe", &vip, "--count", "40"]).unwrap();
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["failures"], 0, "{r}");
    assert_eq!(r["backends"].as_object().unwrap().len(), 2, "{r}");

    // Restarted while the API server is out of reach: the pinned dataplane keeps serving
    // the Service (the agent programs nothing before the cluster answers), then catches
    // up once it does.
    let reachable = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, reachable.replace(&url, "https://127.0.0.1:1")).unwrap();
    agent.kill9();
    agent.restart().expect("vipr run again, API server out of reach");
    std::thread::sleep(Duration::from_secs(2));
    backends("e2e-k8s", &vip, 2);
    let out = tb.ns(&tb.client_ns(), &[VIPR, "probe", &vip, "--count", "20"]).unwrap();
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["failures"], 0, "served from the pins while the API is away: {r}");
    assert_eq!(r["backends"].as_object().unwrap().len(), 2, "{r}");
    let st = vipr_json(&["status", "--json", "--instance", "e2e-k8s"]);
    assert_eq!(st["ready"], false, "not ready before the cluster answered: {st}");
    std::fs::write(&config, &reachable).unwrap();
    agent.kill9();
    agent.restart().expect("vipr run again");
    wait_for("ready again", || {
        let st = vipr_json(&["status", "--json", "--instance", "e2e-k8s"]);
        (st["ready"] == true).then_some(())
    });
    backends("e2e-k8s", &vip, 2);
    let st = vipr_json(&["status", "--json", "--instance", "e2e-k8s"]);

    // Scale down to one endpoint: one backend left, and the change was timed.
    let count_before = st["programming"]["count"].as_u64().unwrap_or(0);
    let one = fixtures::slice(&format!("{NAME}-1"), NAME)
        .port(8080)
        .ready(&testbed::backend_addr(1))
        .build();
    rt.block_on(put_slice(&client, slice_api, labelled(one)));
    let v = backends("e2e-k8s", &vip, 1);
    assert_eq!(v["backends"][0]["backend"], format!("{}:8080", testbed::backend_addr(1)));
    let st = vipr_json(&["status", "--json", "--instance", "e2e-k8s"]);
    let l = &st["programming"];
    assert!(l["count"].as_u64().unwrap() > count_before, "{st}");
    assert!(l["p99_ms"].as_f64().unwrap() < 5_000.0, "{st}");
    println!("event to programmed: {l}");

    // Deleting the Service removes its VIP.
    rt.block_on(services.delete(NAME, &DeleteParams::default())).unwrap();
    wait_for("the VIP to go", || {
        let st = vipr_json(&["status", "--json", "--instance", "e2e-k8s"]);
        (!st["vips"].as_array()?.iter().any(|v| v["vip"] == vip.as_str())).then_some(())
    });
    rt.block_on(clear(&client));
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}
