//! The live source against a real kube-apiserver (scripts/k8s-apiserver.sh start; then
//! `eval $(scripts/k8s-apiserver.sh env)` exports VIPR_K8S_URL and VIPR_K8S_TOKEN).
//! Without VIPR_K8S_URL these tests say so and pass: the pure tests cover the rules.
//! Each scenario waits for what it expects with a timeout, so a missing call fails.
#![cfg(feature = "live")]

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, PostParams};
use std::net::IpAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use vipr_config::Pool;
use vipr_k8s::live::{self, LiveConfig, SliceApi};
use vipr_k8s::{fixtures, v1beta1, Options, Translation};

fn server() -> Option<(String, String)> {
    let url = std::env::var("VIPR_K8S_URL").ok()?;
    let token = std::env::var("VIPR_K8S_TOKEN").unwrap_or_default();
    Some((url, token))
}

fn pool() -> Pool {
    Pool {
        name: "test".into(),
        cidrs: vec![],
        ranges: vec![("192.0.2.200".parse().unwrap(), "192.0.2.250".parse().unwrap())],
    }
}

/// Waits for a translation that satisfies `ok`.
async fn until(
    rx: &mut mpsc::UnboundedReceiver<Translation>,
    what: &str,
    ok: impl Fn(&Translation) -> bool,
) -> Translation {
    let wait = async {
        while let Some(t) = rx.recv().await {
            if ok(&t) {
                return t;
            }
        }
        panic!("the source stopped");
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_balancer_service_is_allocated_written_served_and_released() {
    let Some((url, token)) = server() else {
        eprintln!("VIPR_K8S_URL not set: no API server to test against");
        return;
    };
    let client = live::client_for(&url, &token).unwrap();
    let api = live::discover_slice_api(&client).await.unwrap();
    eprintln!("EndpointSlice API served: {api:?}");
    let name = format!("web-{}", std::process::id());

    let cfg = LiveConfig {
        lease_name: format!("vipr-test-{}", std::process::id()),
        lease_duration: Duration::from_secs(3),
        ..LiveConfig::new(Options::default(), vec![pool()], "test-a")
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let source = tokio::spawn(live::run(client.clone(), cfg, move |t: &Translation| {
        let _ = tx.send(t.clone());
    }));

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = fixtures::service(&name).no_selector().port(80, 8080).load_balancer().build();
    services.create(&PostParams::default(), &svc).await.unwrap();
    let slice = fixtures::slice(&format!("{name}-1"), &name).port(8080).ready("192.0.2.21").build();
    match api {
        SliceApi::V1 => {
            let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
                Api::namespaced(client.clone(), "default");
            slices.create(&PostParams::default(), &slice).await.unwrap();
        }
        SliceApi::V1beta1 => {
            let beta: v1beta1::EndpointSlice =
                serde_json::from_value(serde_json::to_value(&slice).unwrap()).unwrap();
            let slices: Api<v1beta1::EndpointSlice> = Api::namespaced(client.clone(), "default");
            slices.create(&PostParams::default(), &beta).await.unwrap();
        }
    }

    let t = until(&mut rx, "the allocated VIP", |t| {
        t.vips.iter().any(|v| {
            v.service.name == name
                && v.kind == vipr_k8s::VipKind::LoadBalancer
                && v.spec.backends.len() == 1
        })
    })
    .await;
    let vip = t
        .vips
        .iter()
        .find(|v| v.service.name == name && v.kind == vipr_k8s::VipKind::LoadBalancer)
        .unwrap();
    let written = services.get_status(&name).await.unwrap();
    let ingress = vipr_k8s::ipam::ingress_ips(&written);
    assert_eq!(ingress, vec![vip.spec.addr], "status written through the subresource");
    assert!(pool().contains(vip.spec.addr));
    assert_eq!(vip.spec.backends[0].addr, "192.0.2.21".parse::<IpAddr>().unwrap());

    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), "default");
    let listed = events.list(&Default::default()).await.unwrap();
    assert!(
        listed.items.iter().any(|e| e.reason.as_deref() == Some("IPAllocated")
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())),
        "an IPAllocated Event on the Service"
    );

    services.delete(&name, &DeleteParams::default()).await.unwrap();
    until(&mut rx, "the VIP to go", |t| t.vips.iter().all(|v| v.service.name != name)).await;
    source.abort();
}
