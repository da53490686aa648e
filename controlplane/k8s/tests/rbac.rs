//! deploy/'s RBAC against what the controller really calls, on a real kube-apiserver
//! with RBAC authorization and an audit log (scripts/k8s-apiserver.sh; run by
//! scripts/k8s-test.sh, which sets VIPR_K8S_URL, VIPR_K8S_TOKEN and VIPR_K8S_AUDIT_LOG).
//!
//! The test applies deploy/kubernetes/base (Namespace, ServiceAccount, ClusterRole,
//! Role, bindings) with the admin token, asks the API server for a token of the
//! ServiceAccount (TokenRequest: a real service-account token, so the RBAC subjects of
//! kind ServiceAccount match as in a cluster), and runs the live controller under it
//! with the daemonset ConfigMap's `kubernetes:` settings and pools, through everything
//! it does: the three watchers, the Lease (create, then get and update), a
//! LoadBalancer allocation written through services/status, an Event, and the same
//! Event again (a patch of its series) after a change of `spec.loadBalancerIP`.
//! Then, from the audit log (service accounts' requests only, at Metadata level):
//!
//! - no request of the ServiceAccount was refused (401 or 403);
//! - every call it made is allowed by a rule of the manifests (matched by verb, group,
//!   resource/subresource, namespace and name, as RBAC matches them);
//! - every rule's every verb and resource was used (none is there for nothing).
//!
//! Without VIPR_K8S_URL it says so and passes, like tests/live.rs.
#![cfg(feature = "live")]

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vipr_k8s::live::{self, LiveConfig};
use vipr_k8s::{fixtures, LbClass, Mode, Options};

const WAIT: Duration = Duration::from_secs(30);
const NS: &str = "default";
const SERVICE: &str = "rbac-web";
const LABEL: &str = "vipr.test/rbac";

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The objects of deploy/kubernetes/base, as its kustomization lists them.
fn base_objects() -> Vec<Value> {
    let dir = deploy().join("base");
    let k = &documents(&dir.join("kustomization.yaml"))[0];
    k["resources"]
        .as_array()
        .expect("base lists resources")
        .iter()
        .flat_map(|r| documents(&dir.join(r.as_str().unwrap())))
        .collect()
}

fn of_kind<T: serde::de::DeserializeOwned + k8s_openapi::Resource>(objs: &[Value]) -> Vec<T> {
    objs.iter()
        .filter(|o| o["kind"] == T::KIND && o["apiVersion"] == T::API_VERSION)
        .map(|o| serde_json::from_value(o.clone()).unwrap())
        .collect()
}

/// The vipr config of the daemonset overlay's ConfigMap.
fn daemonset_config() -> vipr_config::Config {
    let docs = documents(&deploy().join("overlays/daemonset/configmap.yaml"));
    let cm: ConfigMap = serde_json::from_value(docs[0].clone()).unwrap();
    vipr_config::parse("configmap.yaml", &cm.data.unwrap()["vipr.yaml"]).unwrap()
}

/// Polls `f` every 100 ms until it gives a value; None after `WAIT`.
async fn poll_for<T, F, Fut>(mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn poll<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll_for(f).await.unwrap_or_else(|| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// The audit log of the controller's run so far, to say why it did not get somewhere.
struct Watched<'a> {
    log: &'a Path,
    from: u64,
    user: &'a str,
}

impl Watched<'_> {
    async fn poll<T, F, Fut>(&self, what: &str, f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        match poll_for(f).await {
            Some(v) => v,
            None => {
                let a = audit(self.log, self.from, self.user);
                panic!(
                    "timed out after {WAIT:?} waiting for {what}; refused requests of {}: \
                     {:#?}",
                    self.user, a.refused
                )
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// What the manifests grant

/// One verb on one resource, as a rule grants it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    verb: String,
    group: String,
    /// `resource` or `resource/subresource`.
    resource: String,
    /// A Role's namespace; None: a ClusterRole (every namespace).
    namespace: Option<String>,
    /// resourceNames; empty: any name.
    names: BTreeSet<String>,
}

/// Every (verb, group, resource) that a rule of a ClusterRole or Role grants, of the
/// roles the manifests bind to the ServiceAccount `sa_namespace/sa_name`.
fn grants(objs: &[Value], sa_namespace: &str, sa_name: &str) -> Vec<Grant> {
    let ours = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == sa_name
                && s.namespace.as_deref() == Some(sa_namespace)
        })
    };
    let mut out = Vec::new();
    let mut add = |rules: &Option<Vec<k8s_openapi::api::rbac::v1::PolicyRule>>,
                   namespace: Option<String>| {
        for r in rules.iter().flatten() {
            for g in r.api_groups.iter().flatten() {
                for res in r.resources.iter().flatten() {
                    for v in &r.verbs {
                        out.push(Grant {
                            verb: v.clone(),
                            group: g.clone(),
                            resource: res.clone(),
                            namespace: namespace.clone(),
                            names: r.resource_names.iter().flatten().cloned().collect(),
                        });
                    }
                }
            }
        }
    };
    let cluster_roles: Vec<ClusterRole> = of_kind(objs);
    for b in of_kind::<ClusterRoleBinding>(objs).iter().filter(|b| ours(&b.subjects)) {
        assert_eq!(b.role_ref.kind, "ClusterRole");
        let role =
            cluster_roles.iter().find(|r| r.metadata.name.as_ref() == Some(&b.role_ref.name));
        add(&role.expect("the bound ClusterRole is in base").rules, None);
    }
    let roles: Vec<Role> = of_kind(objs);
    for b in of_kind::<RoleBinding>(objs).iter().filter(|b| ours(&b.subjects)) {
        assert_eq!(b.role_ref.kind, "Role", "RoleBindings here bind Roles");
        let role = roles.iter().find(|r| {
            r.metadata.name.as_ref() == Some(&b.role_ref.name)
                && r.metadata.namespace == b.metadata.namespace
        });
        add(&role.expect("the bound Role is in base").rules, b.metadata.namespace.clone());
    }
    out
}

// ---------------------------------------------------------------------------------------
// What the audit log says was called

/// One request of the ServiceAccount, from the audit log.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Call {
    verb: String,
    group: String,
    resource: String,
    namespace: String,
    name: String,
}

impl Grant {
    fn allows(&self, c: &Call) -> bool {
        self.verb == c.verb
            && self.group == c.group
            && self.resource == c.resource
            && self.namespace.as_ref().is_none_or(|n| *n == c.namespace)
            && (self.names.is_empty() || self.names.contains(&c.name))
    }
}

struct Audit {
    calls: Vec<Call>,
    /// Requests outside the resource API (discovery), by path.
    non_resource: BTreeSet<String>,
    /// Refused requests: (code, verb, URI).
    refused: Vec<(i64, String, String)>,
    /// Other failures, for the record: (code, verb, URI).
    failed: Vec<(i64, String, String)>,
}

fn audit(log: &Path, from: u64, user: &str) -> Audit {
    let bytes = std::fs::read(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    let text = String::from_utf8_lossy(&bytes[from as usize..]);
    let mut a = Audit {
        calls: Vec::new(),
        non_resource: BTreeSet::new(),
        refused: Vec::new(),
        failed: Vec::new(),
    };
    let mut seen = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let e: Value = serde_json::from_str(line).expect("an audit event per line");
        if e["user"]["username"] != user {
            continue;
        }
        // A watch is logged when its response starts and again when it ends.
        if !seen.insert(e["auditID"].as_str().unwrap_or_default().to_owned()) {
            continue;
        }
        let verb = e["verb"].as_str().unwrap_or_default().to_owned();
        let uri = e["requestURI"].as_str().unwrap_or_default().to_owned();
        let code = e["responseStatus"]["code"].as_i64().unwrap_or(0);
        if code == 401 || code == 403 {
            a.refused.push((code, verb.clone(), uri.clone()));
        } else if code >= 400 {
            a.failed.push((code, verb.clone(), uri.clone()));
        }
        let r = &e["objectRef"];
        if r.is_null() {
            a.non_resource.insert(uri.split('?').next().unwrap().to_owned());
            continue;
        }
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
        let resource = match s("subresource") {
            sub if sub.is_empty() => s("resource"),
            sub => format!("{}/{sub}", s("resource")),
        };
        a.calls.push(Call {
            verb,
            group: s("apiGroup"),
            resource,
            namespace: s("namespace"),
            name: s("name"),
        });
    }
    a
}

// ---------------------------------------------------------------------------------------
// Setting up

async fn apply_base(admin: &Client, objs: &[Value]) {
    let pp = PatchParams::apply("vipr-rbac-test").force();
    for o in objs {
        let name = o["metadata"]["name"].as_str().unwrap().to_owned();
        let ns = o["metadata"]["namespace"].as_str().map(str::to_owned);
        let kind = o["kind"].as_str().unwrap();
        let c = admin.clone();
        let result = match kind {
            "Namespace" => {
                Api::<Namespace>::all(c).patch(&name, &pp, &Patch::Apply(o)).await.map(drop)
            }
            "ServiceAccount" => Api::<ServiceAccount>::namespaced(c, ns.as_deref().unwrap())
                .patch(&name, &pp, &Patch::Apply(o))
                .await
                .map(drop),
            "ClusterRole" => {
                Api::<ClusterRole>::all(c).patch(&name, &pp, &Patch::Apply(o)).await.map(drop)
            }
            "ClusterRoleBinding" => Api::<ClusterRoleBinding>::all(c)
                .patch(&name, &pp, &Patch::Apply(o))
                .await
                .map(drop),
            "Role" => Api::<Role>::namespaced(c, ns.as_deref().unwrap())
                .patch(&name, &pp, &Patch::Apply(o))
                .await
                .map(drop),
            "RoleBinding" => Api::<RoleBinding>::namespaced(c, ns.as_deref().unwrap())
                .patch(&name, &pp, &Patch::Apply(o))
                .await
                .map(drop),
            other => panic!("base has a {other}, which this test does not know how to apply"),
        };
        result.unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
    }
}

/// Whether the API server's authorizer lets `user` (with `groups`) do `verb`.
async fn can(admin: &Client, user: &str, groups: &[String], g: &Grant, name: &str) -> bool {
    let (resource, subresource) = match g.resource.split_once('/') {
        Some((r, s)) => (r.to_owned(), Some(s.to_owned())),
        None => (g.resource.clone(), None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(groups.to_vec()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(g.verb.clone()),
                group: Some(g.group.clone()),
                resource: Some(resource),
                subresource,
                namespace: g.namespace.clone(),
                name: (!name.is_empty()).then(|| name.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(admin.clone());
    let answer = api.create(&PostParams::default(), &review).await.unwrap();
    answer.status.is_some_and(|s| s.allowed)
}

fn grant(verb: &str, group: &str, resource: &str, namespace: Option<&str>) -> Grant {
    Grant {
        verb: verb.into(),
        group: group.into(),
        resource: resource.into(),
        namespace: namespace.map(Into::into),
        names: BTreeSet::new(),
    }
}

// ---------------------------------------------------------------------------------------
// The scenario

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_under_deploys_service_account_uses_exactly_the_rbac_it_is_given() {
    let Ok(url) = std::env::var("VIPR_K8S_URL") else {
        eprintln!(
            "rbac: skipped, VIPR_K8S_URL is not set (scripts/k8s-test.sh starts a real API \
             server with RBAC and an audit log and sets it)"
        );
        return;
    };
    let admin_token = std::env::var("VIPR_K8S_TOKEN").unwrap_or_default();
    let log =
        PathBuf::from(std::env::var("VIPR_K8S_AUDIT_LOG").expect(
            "VIPR_K8S_AUDIT_LOG: the API server's audit log (scripts/k8s-apiserver.sh env)",
        ));
    let admin = live::client_for(&url, &admin_token).unwrap();

    // The manifests' identity and what they grant it.
    let objs = base_objects();
    let sa: ServiceAccount = of_kind::<ServiceAccount>(&objs).pop().expect("a ServiceAccount");
    let (sa_ns, sa_name) = (sa.namespace().unwrap(), sa.name_any());
    let user = format!("system:serviceaccount:{sa_ns}:{sa_name}");
    let groups =
        vec!["system:serviceaccounts".to_owned(), format!("system:serviceaccounts:{sa_ns}")];
    let grants = grants(&objs, &sa_ns, &sa_name);
    assert!(!grants.is_empty(), "the ServiceAccount is bound to no rule");

    // The controller's settings: those of the daemonset ConfigMap.
    let cfg = daemonset_config();
    let k = cfg.kubernetes.clone().expect("the ConfigMap's config has a kubernetes: section");
    let options = Options {
        mode: Mode::DaemonSet { node_name: "rbac-node".into() },
        class: LbClass { name: k.load_balancer_class.clone(), default: k.default_class },
        ..Options::default()
    };
    let mut live_cfg = LiveConfig::new(options, cfg.pools.clone(), "rbac");
    live_cfg.lease_namespace = k.lease_namespace.clone();
    live_cfg.lease_duration = Duration::from_secs(3);
    live_cfg.retry_max = Duration::from_secs(1);
    let lease_name = live_cfg.lease_name.clone();
    let pool_addrs: Vec<IpAddr> = cfg.pools[0].addresses().take(4).collect();
    let (first, second) = (pool_addrs[2], pool_addrs[3]);

    // Apply base; start from no Lease (so it is created) and no test Service.
    apply_base(&admin, &objs).await;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &live_cfg.lease_namespace);
    let _ = leases.delete(&lease_name, &DeleteParams::default()).await;
    let services: Api<Service> = Api::namespaced(admin.clone(), NS);
    let _ = services.delete(SERVICE, &DeleteParams::default()).await;
    poll("the previous run's Service to go", || async {
        services.get_opt(SERVICE).await.unwrap().is_none().then_some(())
    })
    .await;
    poll("the Lease to go", || async {
        leases.get_opt(&lease_name).await.unwrap().is_none().then_some(())
    })
    .await;

    // The authorizer applies the new bindings (its caches fill within a moment).
    for g in &grants {
        let name = g.names.iter().next().cloned().unwrap_or_default();
        poll(&format!("RBAC to allow {g:?}"), || async {
            can(&admin, &user, &groups, g, &name).await.then_some(())
        })
        .await;
    }
    // And nothing more than asked: a few neighbours of the grants are refused.
    let lease_ns = Some(live_cfg.lease_namespace.as_str());
    for (g, name) in [
        (grant("get", "", "secrets", Some(NS)), ""),
        (grant("update", "", "services", Some(NS)), SERVICE),
        (grant("update", "", "services/status", Some(NS)), SERVICE),
        (grant("create", "", "events", Some(NS)), ""),
        (grant("list", "", "endpoints", None), ""),
        (grant("delete", "coordination.k8s.io", "leases", lease_ns), lease_name.as_str()),
        (grant("get", "coordination.k8s.io", "leases", lease_ns), "another-lease"),
        (grant("get", "coordination.k8s.io", "leases", Some("kube-system")), "vipr-ipam"),
        (grant("create", "coordination.k8s.io", "leases", Some("kube-system")), ""),
    ] {
        assert!(!can(&admin, &user, &groups, &g, name).await, "{g:?} {name} is allowed");
    }

    // A real token of the ServiceAccount.
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), &sa_ns)
        .create_token_request(&sa_name, &PostParams::default(), &request)
        .await
        .expect("a TokenRequest for the ServiceAccount")
        .status
        .and_then(|s| s.token)
        .expect("a token in the TokenRequest's status");
    let client = live::client_for(&url, &token).unwrap();

    // Run the controller through all it does, from this point of the audit log on.
    let from = std::fs::metadata(&log).map_or(0, |m| m.len());
    let task = tokio::spawn(live::run(client, live_cfg, |_, _, _| {}));
    let watched = Watched { log: &log, from, user: &user };

    let mut svc = fixtures::service(SERVICE)
        .no_selector()
        .port(80, 8080)
        .load_balancer()
        .lb_ip(&first.to_string())
        .build();
    svc.metadata.labels.get_or_insert_with(Default::default).insert(LABEL.into(), "true".into());
    let uid = services.create(&PostParams::default(), &svc).await.unwrap().uid();
    let ingress = |want: IpAddr| {
        let services = services.clone();
        async move {
            let s = services.get_status(SERVICE).await.unwrap();
            (vipr_k8s::ipam::ingress_ips(&s) == vec![want]).then_some(())
        }
    };
    watched.poll("the requested address in the status", || ingress(first)).await;
    let patch = serde_json::json!({ "spec": { "loadBalancerIP": second.to_string() } });
    services.patch(SERVICE, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    watched.poll("the new address in the status", || ingress(second)).await;

    // The second IPAllocated Event on the Service is a patch of the first one's series.
    let events: Api<Event> = Api::namespaced(admin.clone(), NS);
    watched
        .poll("a repeated IPAllocated Event (count 2)", || async {
            events.list(&ListParams::default()).await.unwrap().items.into_iter().find(|e| {
                e.reason.as_deref() == Some("IPAllocated")
                    && e.regarding.as_ref().and_then(|r| r.uid.as_ref()) == uid.as_ref()
                    && e.series.as_ref().is_some_and(|s| s.count >= 2)
            })
        })
        .await;
    // The Lease was created, then renewed (get + update) at least once.
    watched
        .poll("the Lease renewed by the controller", || async {
            let spec = leases.get_opt(&lease_name).await.unwrap()?.spec?;
            let acquired = spec.acquire_time?.0;
            (spec.holder_identity.as_deref() == Some("rbac") && spec.renew_time?.0 > acquired)
                .then_some(())
        })
        .await;
    task.abort();
    let _ = task.await;
    let _ = services.delete(SERVICE, &DeleteParams::default()).await;

    // What the audit log says it did.
    let a = audit(&log, from, &user);
    assert!(!a.calls.is_empty(), "no request of {user} in {}", log.display());
    assert!(a.refused.is_empty(), "refused requests of {user}: {:#?}", a.refused);
    if !a.failed.is_empty() {
        eprintln!("rbac: other failed requests (not about permissions): {:?}", a.failed);
    }
    // Discovery only outside the resource API (allowed to every authenticated user).
    for path in &a.non_resource {
        assert!(["/api", "/apis", "/version"].contains(&path.as_str()), "{user} asked for {path}");
    }

    let unallowed: Vec<&Call> =
        a.calls.iter().filter(|c| !grants.iter().any(|g| g.allows(c))).collect();
    assert!(unallowed.is_empty(), "calls no rule of deploy/ allows: {unallowed:#?}");
    let unused: Vec<&Grant> =
        grants.iter().filter(|g| !a.calls.iter().any(|c| g.allows(c))).collect();
    assert!(unused.is_empty(), "rules of deploy/ the controller never used: {unused:#?}");

    let used: BTreeSet<(String, String, String)> =
        a.calls.iter().map(|c| (c.verb.clone(), c.group.clone(), c.resource.clone())).collect();
    eprintln!("rbac: {} requests of {user}, all allowed; used: {used:?}", a.calls.len());
}
