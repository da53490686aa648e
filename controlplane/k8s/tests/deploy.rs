//! deploy/ against the types and rules it must fit, with no cluster and no container
//! tool: every manifest parses into its Kubernetes type with no key the type does not
//! know (k8s-openapi ignores unknown keys, so each object is re-serialized and compared
//! with its YAML: a typo'd key is one that does not come back), each kustomize overlay
//! assembles (resources and JSON patches, applied here as kustomize would) into the
//! objects of its mode, the vipr config in each ConfigMap validates, the workloads get
//! exactly the capabilities the README names, the Grafana dashboard asks only for
//! metrics vipr exports, and the Dockerfile copies what exists and builds what
//! scripts/setup.sh builds.
//!
//! What RBAC allows against what the controller calls is tests/rbac.rs (a real API
//! server).

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, PodTemplateSpec, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------
// Reading deploy/

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn kubernetes_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `.yaml` file under `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The documents of a YAML file as JSON values; comment-only documents are skipped.
fn documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// One Kubernetes object of a manifest, as written (or as patched).
#[derive(Clone, Debug)]
struct Obj {
    /// Where it came from, for messages: `file#document`.
    origin: String,
    value: Value,
}

impl Obj {
    fn str(&self, pointer: &str) -> &str {
        self.value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
    }
    fn api_version(&self) -> &str {
        self.str("/apiVersion")
    }
    fn kind(&self) -> &str {
        self.str("/kind")
    }
    fn name(&self) -> &str {
        self.str("/metadata/name")
    }
    fn namespace(&self) -> &str {
        self.str("/metadata/namespace")
    }
    fn typed<T: DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.value.clone())
            .unwrap_or_else(|e| panic!("{}: {} {}: {e}", self.origin, self.kind(), self.name()))
    }
}

fn objects(path: &Path) -> Vec<Obj> {
    let rel = path.strip_prefix(repo()).unwrap_or(path).display().to_string();
    documents(path)
        .into_iter()
        .enumerate()
        .map(|(i, value)| Obj { origin: format!("{rel}#{}", i + 1), value })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Unknown keys: what does not survive a round trip through the type

/// The paths where `written` and `reserialized` differ: keys the type dropped (not
/// fields of it) and values it changed.
fn differences(path: &str, written: &Value, reserialized: &Value, out: &mut Vec<String>) {
    match (written, reserialized) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    None if v.is_null() => {}
                    None => out.push(format!("{p}: not a field of this type (a typo?)")),
                    Some(w) => differences(&p, v, w, out),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{k}: added by the type"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                differences(&format!("{path}[{i}]"), v, w, out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: {a} came back as {b}")),
    }
}

/// Parses `value` as `T`, then checks that serializing it gives `value` back.
fn round_trip<T: DeserializeOwned + Serialize>(value: &Value) -> Result<(), String> {
    let typed: T = serde_path_to_error::deserialize(value.clone())
        .map_err(|e| format!("does not parse: {e}"))?;
    let back = serde_json::to_value(&typed).unwrap();
    let mut diffs = Vec::new();
    differences("", value, &back, &mut diffs);
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join("; "))
    }
}

/// Multus' NetworkAttachmentDefinition (a CRD, so not in k8s-openapi), as its CRD
/// defines it.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NetworkAttachmentDefinition {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: NetworkAttachmentSpec,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct NetworkAttachmentSpec {
    /// A CNI config, as JSON text.
    config: String,
}

fn is<T: k8s_openapi::Resource>(o: &Obj) -> bool {
    o.api_version() == T::API_VERSION && o.kind() == T::KIND
}

/// Checks one object against the type its apiVersion and kind name.
fn check_object(o: &Obj) -> Result<(), String> {
    let checked = if is::<Namespace>(o) {
        round_trip::<Namespace>(&o.value)
    } else if is::<ServiceAccount>(o) {
        round_trip::<ServiceAccount>(&o.value)
    } else if is::<ConfigMap>(o) {
        round_trip::<ConfigMap>(&o.value)
    } else if is::<Service>(o) {
        round_trip::<Service>(&o.value)
    } else if is::<DaemonSet>(o) {
        round_trip::<DaemonSet>(&o.value)
    } else if is::<Deployment>(o) {
        round_trip::<Deployment>(&o.value)
    } else if is::<ClusterRole>(o) {
        round_trip::<ClusterRole>(&o.value)
    } else if is::<ClusterRoleBinding>(o) {
        round_trip::<ClusterRoleBinding>(&o.value)
    } else if is::<Role>(o) {
        round_trip::<Role>(&o.value)
    } else if is::<RoleBinding>(o) {
        round_trip::<RoleBinding>(&o.value)
    } else if o.api_version() == "k8s.cni.cncf.io/v1" && o.kind() == "NetworkAttachmentDefinition" {
        round_trip::<NetworkAttachmentDefinition>(&o.value).and_then(|()| {
            let config = o.str("/spec/config");
            serde_json::from_str::<Value>(config)
                .map(drop)
                .map_err(|e| format!("spec.config is not JSON: {e}"))
        })
    } else {
        Err(format!("no type known for apiVersion {:?} kind {:?}", o.api_version(), o.kind()))
    };
    let named = if o.name().is_empty() { Err("no metadata.name".to_owned()) } else { Ok(()) };
    checked.and(named).map_err(|e| format!("{}: {} {}: {e}", o.origin, o.kind(), o.name()))
}

// ---------------------------------------------------------------------------------------
// kustomize, the part these overlays use

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    patches: Vec<PatchRef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchRef {
    path: String,
    target: Target,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    #[serde(default)]
    group: String,
    version: String,
    kind: String,
    name: String,
}

/// One RFC 6902 operation (the ones used here).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, tag = "op", rename_all = "lowercase")]
enum PatchOp {
    Add { path: String, value: Value },
    Replace { path: String, value: Value },
    Remove { path: String },
}

/// The files an overlay tree reads (kustomizations, resources, patches).
#[derive(Default)]
struct Assembly {
    objects: Vec<Obj>,
    files: BTreeSet<PathBuf>,
}

fn kustomization(dir: &Path) -> Kustomization {
    let path = dir.join("kustomization.yaml");
    let k: Kustomization = serde_yaml::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{}: not a Kustomization as used here: {e}", path.display()));
    assert_eq!(
        (k.api_version.as_str(), k.kind.as_str()),
        ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
        "{}",
        path.display()
    );
    k
}

/// Builds the overlay at `dir` as `kustomize build` would for these features.
fn assemble(dir: &Path) -> Assembly {
    let mut out = Assembly::default();
    assemble_into(dir, &mut out);
    let mut seen = BTreeSet::new();
    for o in &out.objects {
        let group = o.api_version().split_once('/').map_or("", |(g, _)| g).to_owned();
        let key = (group, o.kind().to_owned(), o.namespace().to_owned(), o.name().to_owned());
        assert!(seen.insert(key), "{}: {} {} is defined twice", dir.display(), o.kind(), o.name());
    }
    out
}

fn assemble_into(dir: &Path, out: &mut Assembly) {
    let dir = dir.canonicalize().unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let k = kustomization(&dir);
    out.files.insert(dir.join("kustomization.yaml"));
    let start = out.objects.len();
    for r in &k.resources {
        let p = dir.join(r);
        if p.is_dir() {
            assemble_into(&p, out);
        } else {
            assert!(p.is_file(), "{}: resource {r} does not exist", dir.display());
            out.files.insert(p.canonicalize().unwrap());
            out.objects.extend(objects(&p));
        }
    }
    for patch in &k.patches {
        let p = dir.join(&patch.path);
        out.files.insert(p.canonicalize().unwrap_or_else(|e| panic!("{}: {e}", p.display())));
        let ops: Vec<PatchOp> = serde_yaml::from_str(&read(&p))
            .unwrap_or_else(|e| panic!("{}: not a JSON patch: {e}", p.display()));
        let t = &patch.target;
        let api_version = if t.group.is_empty() {
            t.version.clone()
        } else {
            format!("{}/{}", t.group, t.version)
        };
        let targets: Vec<&mut Obj> = out.objects[start..]
            .iter_mut()
            .filter(|o| o.api_version() == api_version && o.kind() == t.kind && o.name() == t.name)
            .collect();
        assert_eq!(
            targets.len(),
            1,
            "{}: the target {api_version} {} {}",
            p.display(),
            t.kind,
            t.name
        );
        let target = targets.into_iter().next().unwrap();
        for op in &ops {
            apply(&mut target.value, op).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
        target.origin = format!("{} patched by {}", target.origin, patch.path);
    }
}

/// RFC 6901: `/a/b~1c` is the keys `a`, `b/c`.
fn tokens(pointer: &str) -> Vec<String> {
    pointer.split('/').skip(1).map(|t| t.replace("~1", "/").replace("~0", "~")).collect()
}

fn apply(doc: &mut Value, op: &PatchOp) -> Result<(), String> {
    let path = match op {
        PatchOp::Add { path, .. } | PatchOp::Replace { path, .. } | PatchOp::Remove { path } => {
            path
        }
    };
    let mut keys = tokens(path);
    let last = keys.pop().ok_or_else(|| format!("{path}: the whole document"))?;
    let mut parent = &mut *doc;
    for k in &keys {
        parent = match parent {
            Value::Object(m) => m.get_mut(k),
            Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("{path}: {k} does not exist"))?;
    }
    match (parent, op) {
        (Value::Object(m), PatchOp::Add { value, .. }) => {
            m.insert(last, value.clone());
        }
        (Value::Object(m), PatchOp::Replace { value, .. }) => {
            *m.get_mut(&last).ok_or_else(|| format!("{path}: nothing to replace"))? = value.clone();
        }
        (Value::Object(m), PatchOp::Remove { .. }) => {
            m.remove(&last).ok_or_else(|| format!("{path}: nothing to remove"))?;
        }
        (Value::Array(a), PatchOp::Add { value, .. }) if last == "-" => a.push(value.clone()),
        (Value::Array(a), op) => {
            let i: usize = last.parse().map_err(|_| format!("{path}: not an index"))?;
            match op {
                PatchOp::Add { value, .. } if i <= a.len() => a.insert(i, value.clone()),
                PatchOp::Replace { value, .. } if i < a.len() => a[i] = value.clone(),
                PatchOp::Remove { .. } if i < a.len() => {
                    a.remove(i);
                }
                _ => return Err(format!("{path}: index out of range")),
            }
        }
        _ => return Err(format!("{path}: the parent is not an object or a list")),
    }
    Ok(())
}

const OVERLAYS: &[&str] = &["daemonset", "edge", "edge-sriov"];

fn overlay(name: &str) -> Assembly {
    assemble(&kubernetes_dir().join("overlays").join(name))
}

fn one<'a>(a: &'a Assembly, kind: &str) -> &'a Obj {
    let found: Vec<&Obj> = a.objects.iter().filter(|o| o.kind() == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind} expected, found {}", found.len());
    found[0]
}

/// The pod template of the overlay's one workload (a DaemonSet or a Deployment).
fn workload(a: &Assembly) -> (&Obj, PodTemplateSpec) {
    let o = a
        .objects
        .iter()
        .find(|o| is::<DaemonSet>(o) || is::<Deployment>(o))
        .expect("a DaemonSet or a Deployment");
    let template = if is::<DaemonSet>(o) {
        o.typed::<DaemonSet>().spec.template
    } else {
        o.typed::<Deployment>().spec.template
    };
    (o, template)
}

fn vipr_container(spec: &PodSpec) -> &Container {
    spec.containers.iter().find(|c| c.name == "vipr").expect("a container named vipr")
}

/// The value of `--name=VALUE` in the container's args.
fn flag<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    let prefix = format!("--{name}=");
    c.args.iter().flatten().find_map(|a| a.strip_prefix(prefix.as_str()))
}

// ---------------------------------------------------------------------------------------
// Tests: manifests

#[test]
fn every_manifest_parses_into_its_kubernetes_type_with_no_unknown_key() {
    let files: Vec<PathBuf> = yaml_files(&kubernetes_dir())
        .into_iter()
        .filter(|p| p.file_name().unwrap() != "kustomization.yaml")
        .filter(|p| !p.file_name().unwrap().to_string_lossy().ends_with("-patch.yaml"))
        .collect();
    assert!(files.len() >= 8, "manifests under deploy/kubernetes: {files:?}");
    let mut errors = Vec::new();
    let mut kinds = BTreeSet::new();
    for f in &files {
        let objs = objects(f);
        assert!(!objs.is_empty(), "{}: no object", f.display());
        for o in objs {
            kinds.insert(o.kind().to_owned());
            if let Err(e) = check_object(&o) {
                errors.push(e);
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    for k in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Deployment",
        "Service",
    ] {
        assert!(kinds.contains(k), "no {k} under deploy/kubernetes");
    }
}

#[test]
fn a_misspelt_key_or_a_wrong_type_is_caught_by_the_round_trip() {
    let ds = overlay("daemonset");
    let (o, _) = workload(&ds);
    assert_eq!(check_object(o), Ok(()));

    let mut typo = o.clone();
    let spec = typo.value.pointer_mut("/spec/template/spec").unwrap().as_object_mut().unwrap();
    let v = spec.remove("hostNetwork").unwrap();
    spec.insert("hostNetwrok".into(), v);
    let e = check_object(&typo).unwrap_err();
    assert!(e.contains(".spec.template.spec.hostNetwrok: not a field"), "{e}");

    let mut nested = o.clone();
    let sc = nested.value.pointer_mut("/spec/template/spec/containers/0/securityContext");
    let sc = sc.unwrap().as_object_mut().unwrap();
    sc.insert("capabilites".into(), serde_json::json!({"add": ["SYS_ADMIN"]}));
    let e = check_object(&nested).unwrap_err();
    assert!(e.contains(".containers[0].securityContext.capabilites: not a field"), "{e}");

    let mut wrong = o.clone();
    *wrong.value.pointer_mut("/spec/template/spec/hostNetwork").unwrap() = "yes".into();
    assert!(check_object(&wrong).unwrap_err().contains("does not parse"));

    let mut unknown = o.clone();
    unknown.value["kind"] = "DaemonSett".into();
    assert!(check_object(&unknown).unwrap_err().contains("no type known"));
}

#[test]
fn each_overlay_assembles_into_the_objects_of_its_mode_and_every_file_is_used() {
    let base =
        ["ClusterRole", "ClusterRoleBinding", "Namespace", "Role", "RoleBinding", "ServiceAccount"];
    let expected: BTreeMap<&str, Vec<&str>> = BTreeMap::from([
        ("daemonset", vec!["ConfigMap", "DaemonSet"]),
        ("edge", vec!["ConfigMap", "Deployment"]),
        ("edge-sriov", vec!["ConfigMap", "Deployment", "NetworkAttachmentDefinition"]),
    ]);
    let mut used = BTreeSet::new();
    for name in OVERLAYS {
        let a = overlay(name);
        let mut kinds: Vec<&str> = a.objects.iter().map(Obj::kind).collect();
        kinds.sort();
        let mut want: Vec<&str> = base.iter().copied().chain(expected[name].clone()).collect();
        want.sort();
        assert_eq!(kinds, want, "overlay {name}");
        // Patched objects must still be their types, with no stray key.
        let errors: Vec<String> = a.objects.iter().filter_map(|o| check_object(o).err()).collect();
        assert!(errors.is_empty(), "overlay {name}:\n{}", errors.join("\n"));
        for o in &a.objects {
            if !matches!(o.kind(), "Namespace" | "ClusterRole" | "ClusterRoleBinding") {
                assert_eq!(o.namespace(), "vipr-system", "{}: {} {}", o.origin, o.kind(), o.name());
            }
        }
        used.extend(a.files);
    }
    // Nothing under deploy/kubernetes is left out of every overlay but the examples.
    let examples = kubernetes_dir().join("examples").canonicalize().unwrap();
    for f in yaml_files(&kubernetes_dir()) {
        let f = f.canonicalize().unwrap();
        if !f.starts_with(&examples) {
            assert!(used.contains(&f), "{} is in no overlay", f.display());
        }
    }
}

#[test]
fn a_patch_that_misses_its_target_fails_the_assembly() {
    let mut doc = serde_json::json!({"spec": {"template": {"spec": {"hostNetwork": true}}}});
    let replace = |path: &str| PatchOp::Replace { path: path.into(), value: false.into() };
    apply(&mut doc, &replace("/spec/template/spec/hostNetwork")).unwrap();
    assert_eq!(doc.pointer("/spec/template/spec/hostNetwork"), Some(&Value::Bool(false)));
    assert!(apply(&mut doc, &replace("/spec/template/spec/hostNetwrok")).is_err());
    assert!(apply(&mut doc, &replace("/spec/templat/spec/hostNetwork")).is_err());
    let add = PatchOp::Add { path: "/spec/template/a~1b".into(), value: 1.into() };
    apply(&mut doc, &add).unwrap();
    assert_eq!(doc["spec"]["template"]["a/b"], 1);
}

#[test]
fn the_vipr_config_in_every_configmap_validates_and_is_the_one_the_workload_reads() {
    for name in OVERLAYS {
        let a = overlay(name);
        let cm_obj = one(&a, "ConfigMap");
        let cm: ConfigMap = cm_obj.typed();
        let data = cm.data.clone().unwrap_or_default();
        let text = data.get("vipr.yaml").unwrap_or_else(|| panic!("{name}: no vipr.yaml key"));
        let source = format!("{} (vipr.yaml)", cm_obj.origin);
        let cfg = vipr_config::parse(&source, text)
            .unwrap_or_else(|d| panic!("overlay {name}: the config does not validate:\n{d}"));
        assert!(!cfg.interfaces.is_empty(), "{name}: `vipr run` needs an interface");
        assert!(!cfg.pools.is_empty(), "{name}: LoadBalancer IPAM needs a pool");

        // The Kubernetes source: the mode of the workload, the Lease where the Role
        // allows it, vipr's class.
        let (o, template) = workload(&a);
        let k = cfg.kubernetes.as_ref().unwrap_or_else(|| panic!("{name}: no kubernetes:"));
        let mode = if is::<DaemonSet>(o) {
            vipr_config::KubernetesMode::Daemonset
        } else {
            vipr_config::KubernetesMode::Edge
        };
        assert_eq!(k.mode, mode, "{name}: the config's mode against the {}", o.kind());
        assert_eq!(k.lease_namespace, one(&a, "Role").namespace(), "{name}: lease_namespace");
        assert_eq!(k.load_balancer_class, vipr_k8s::object::DEFAULT_LB_CLASS, "{name}");
        assert_eq!(k.api_server, None, "{name}: the in-cluster service account");
        let spec = template.spec.unwrap();
        if mode == vipr_config::KubernetesMode::Daemonset && k.node_name.is_none() {
            let env = vipr_container(&spec).env.clone().unwrap_or_default();
            let node = env.iter().find(|e| e.name == "NODE_NAME").expect("NODE_NAME");
            let field = node.value_from.as_ref().and_then(|v| v.field_ref.as_ref());
            assert_eq!(field.map(|f| f.field_path.as_str()), Some("spec.nodeName"));
        }

        // The workload mounts this ConfigMap and points --config at the key.
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| {
                v.config_map.as_ref().is_some_and(|c| Some(&c.name) == cm.metadata.name.as_ref())
            })
            .unwrap_or_else(|| panic!("{name}: no volume of ConfigMap {:?}", cm.metadata.name));
        let c = vipr_container(&spec);
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == volume.name)
            .unwrap_or_else(|| panic!("{name}: the config volume is not mounted"));
        assert_eq!(flag(c, "config"), Some(format!("{}/vipr.yaml", mount.mount_path).as_str()));
    }
    // And the check can fail: a config with a typo does not validate.
    assert!(vipr_config::parse("t", "instance: k8s\ninterfaces: [{name: eth0, atach: native}]\n")
        .is_err());
}

const CAPABILITIES: &[&str] = &["BPF", "NET_ADMIN", "PERFMON"];

#[test]
fn the_workloads_hold_only_the_named_capabilities_and_the_bpffs_mount() {
    for name in OVERLAYS {
        let a = overlay(name);
        let (o, template) = workload(&a);
        let spec = template.spec.clone().unwrap();
        let c = vipr_container(&spec);
        let sc = c.security_context.clone().unwrap_or_default();
        let why = format!("overlay {name}, {} {}", o.kind(), o.name());
        assert_eq!(sc.privileged, Some(false), "{why}: privileged");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{why}");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{why}");
        let caps = sc.capabilities.unwrap_or_default();
        assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]), "{why}: drop ALL first");
        let mut add = caps.add.unwrap_or_default();
        add.sort();
        assert_eq!(add, CAPABILITIES, "{why}: the capabilities deploy/README.md explains");
        assert!(
            spec.security_context.as_ref().is_none_or(|p| p.sysctls.is_none()),
            "{why}: no sysctls"
        );
        assert_eq!(spec.host_pid, None, "{why}: no host PID namespace");
        assert_eq!(spec.host_ipc, None, "{why}: no host IPC namespace");

        // bpffs from the host, so pins outlive the pod; /run/vipr per pod.
        let volumes = spec.volumes.clone().unwrap_or_default();
        let host_paths: Vec<&str> =
            volumes.iter().filter_map(|v| v.host_path.as_ref().map(|h| h.path.as_str())).collect();
        assert_eq!(host_paths, ["/sys/fs/bpf"], "{why}: the only host path");
        let mounted = |path: &str| {
            let m = c.volume_mounts.iter().flatten().find(|m| m.mount_path == path);
            let m = m.unwrap_or_else(|| panic!("{why}: nothing mounted at {path}"));
            volumes.iter().find(|v| v.name == m.name).unwrap().clone()
        };
        assert_eq!(mounted("/sys/fs/bpf").host_path.unwrap().type_.as_deref(), Some("Directory"));
        assert!(mounted("/run/vipr").empty_dir.is_some(), "{why}: /run/vipr is the pod's own");

        // The service account the RBAC binds.
        assert_eq!(spec.service_account_name.as_deref(), Some("vipr"), "{why}");

        // Host network for the node's interfaces, except on an SR-IOV VF.
        let sriov = *name == "edge-sriov";
        assert_eq!(spec.host_network, Some(!sriov), "{why}: hostNetwork");
        if spec.host_network == Some(true) {
            assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"), "{why}");
        }
        assert!(spec.node_selector.as_ref().is_some_and(|s| !s.is_empty()), "{why}: nodeSelector");
    }
}

#[test]
fn the_sriov_overlay_requests_a_vf_of_the_network_it_attaches() {
    let a = overlay("edge-sriov");
    let (_, template) = workload(&a);
    let nad = one(&a, "NetworkAttachmentDefinition");
    let annotations = template.metadata.clone().unwrap().annotations.unwrap_or_default();
    assert_eq!(
        annotations.get("k8s.v1.cni.cncf.io/networks").map(String::as_str),
        Some(format!("{}/{}", nad.namespace(), nad.name()).as_str())
    );
    let resource = nad.str("/metadata/annotations/k8s.v1.cni.cncf.io~1resourceName");
    assert!(!resource.is_empty(), "the NetworkAttachmentDefinition names its VF resource");
    let spec = template.spec.unwrap();
    let resources = vipr_container(&spec).resources.clone().unwrap();
    for (what, list) in [("requests", resources.requests), ("limits", resources.limits)] {
        let q = list.unwrap_or_default().get(resource).map(|q| q.0.clone());
        assert_eq!(q.as_deref(), Some("1"), "one VF in resources.{what}");
    }
    let cm: ConfigMap = one(&a, "ConfigMap").typed();
    let cfg = vipr_config::parse("sriov", &cm.data.unwrap()["vipr.yaml"]).unwrap();
    assert_eq!(cfg.interfaces[0].name, "net1", "the VF as Multus names the first extra network");
}

#[test]
fn probes_scrape_annotations_and_the_metrics_flag_agree_on_one_port() {
    for name in OVERLAYS {
        let a = overlay(name);
        let (o, template) = workload(&a);
        let why = format!("overlay {name}, {} {}", o.kind(), o.name());
        let spec = template.spec.clone().unwrap();
        let c = vipr_container(&spec);
        let addr: std::net::SocketAddr = flag(c, "metrics-addr")
            .unwrap_or_else(|| panic!("{why}: no --metrics-addr"))
            .parse()
            .unwrap();
        let port = c.ports.iter().flatten().find(|p| p.name.as_deref() == Some("metrics"));
        let port = port.unwrap_or_else(|| panic!("{why}: no port named metrics"));
        assert_eq!(port.container_port, i32::from(addr.port()), "{why}");
        assert_eq!(addr.port(), 9645, "{why}: the agent's default metrics port");
        for (probe, path) in [(&c.liveness_probe, "/healthz"), (&c.readiness_probe, "/readyz")] {
            let get = probe.as_ref().and_then(|p| p.http_get.clone());
            let get = get.unwrap_or_else(|| panic!("{why}: no HTTP probe for {path}"));
            assert_eq!(get.path.as_deref(), Some(path), "{why}");
            assert_eq!(
                get.port,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".into()),
                "{why}"
            );
        }
        let annotations = template.metadata.clone().unwrap().annotations.unwrap_or_default();
        let get = |k: &str| annotations.get(k).map(String::as_str);
        assert_eq!(get("prometheus.io/scrape"), Some("true"), "{why}");
        assert_eq!(get("prometheus.io/port"), Some(addr.port().to_string().as_str()), "{why}");
        assert_eq!(get("prometheus.io/path"), Some("/metrics"), "{why}");

        // Every $(VAR) in the args is an env var the container defines.
        let env: BTreeSet<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
        for arg in c.args.iter().flatten() {
            let mut rest = arg.as_str();
            while let Some(i) = rest.find("$(") {
                let end = rest[i..].find(')').map(|j| i + j).expect("a closed $(");
                let var = &rest[i + 2..end];
                assert!(env.contains(var), "{why}: {arg} uses ${var} which is not set");
                rest = &rest[end..];
            }
        }
        // The image is the one deploy/Dockerfile builds, at the workspace's version.
        let version = workspace_version();
        assert_eq!(c.image.as_deref(), Some(format!("vipr:{version}").as_str()), "{why}");
    }
}

/// Whether `vipr run` takes `--name`: a field `name` (snake case) of the CLI with a
/// `long` attribute, in controlplane/src/main.rs.
fn run_takes(main_rs: &str, name: &str) -> bool {
    let field = format!("{}:", name.replace('-', "_"));
    let lines: Vec<&str> = main_rs.lines().map(str::trim).collect();
    lines.iter().enumerate().filter(|(_, l)| l.starts_with(&field)).any(|(i, _)| {
        lines[..i]
            .iter()
            .rev()
            .take_while(|l| l.starts_with("#[") || l.starts_with("///"))
            .any(|l| l.starts_with("#[arg(") && l.contains("long"))
    })
}

#[test]
fn every_flag_the_workloads_pass_is_one_vipr_run_takes() {
    let main_rs = read(&repo().join("controlplane/src/main.rs"));
    assert!(main_rs.contains("    Run {"), "vipr has a run subcommand");
    assert!(!run_takes(&main_rs, "no-such-flag"), "the check can fail");
    for name in OVERLAYS {
        let a = overlay(name);
        let (_, template) = workload(&a);
        let spec = template.spec.unwrap();
        let c = vipr_container(&spec);
        let args = c.args.clone().unwrap_or_default();
        assert_eq!(args.first().map(String::as_str), Some("run"), "{name}");
        assert_eq!(c.command, None, "{name}: the image's entrypoint is vipr");
        for arg in &args[1..] {
            let flag = arg.strip_prefix("--").unwrap_or_else(|| panic!("{name}: {arg}"));
            let flag = flag.split('=').next().unwrap();
            assert!(run_takes(&main_rs, flag), "{name}: vipr run has no --{flag}");
        }
    }
}

#[test]
fn the_daemonset_runs_on_every_selected_node_and_the_edge_on_two_distinct_ones() {
    let ds: DaemonSet = one(&overlay("daemonset"), "DaemonSet").typed();
    let spec = ds.spec;
    let rolling = spec.update_strategy.unwrap().rolling_update.unwrap();
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)), "one agent per node at a time");
    let pod = spec.template.spec.unwrap();
    let tolerations = pod.tolerations.unwrap_or_default();
    assert!(
        tolerations.iter().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "the DaemonSet tolerates every taint, as a node's dataplane must"
    );

    let edge: Deployment = one(&overlay("edge"), "Deployment").typed();
    let spec = edge.spec;
    assert_eq!(spec.replicas, Some(2));
    let labels = spec.template.metadata.clone().unwrap().labels.unwrap();
    assert_eq!(spec.selector.match_labels.as_ref(), Some(&labels));
    let anti = spec.template.spec.unwrap().affinity.unwrap().pod_anti_affinity.unwrap();
    let required = anti.required_during_scheduling_ignored_during_execution.unwrap();
    assert!(
        required.iter().any(|t| t.topology_key == "kubernetes.io/hostname"
            && t.label_selector.as_ref().and_then(|s| s.match_labels.as_ref()) == Some(&labels)),
        "the two replicas never share a node"
    );
}

#[test]
fn rbac_binds_the_roles_to_the_workloads_service_account() {
    let a = overlay("daemonset");
    let sa = one(&a, "ServiceAccount");
    let crb: ClusterRoleBinding = one(&a, "ClusterRoleBinding").typed();
    let rb: RoleBinding = one(&a, "RoleBinding").typed();
    let cr = one(&a, "ClusterRole");
    let role: Role = one(&a, "Role").typed();
    for (role_ref, subjects, kind, role_name) in [
        (&crb.role_ref, &crb.subjects, "ClusterRole", cr.name()),
        (&rb.role_ref, &rb.subjects, "Role", role.metadata.name.as_deref().unwrap()),
    ] {
        assert_eq!((role_ref.kind.as_str(), role_ref.name.as_str()), (kind, role_name));
        let subjects = subjects.clone().unwrap_or_default();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, sa.name());
        assert_eq!(subjects[0].namespace.as_deref(), Some(sa.namespace()));
    }
    // The Lease is the one the controller takes (LiveConfig's default name), in
    // vipr's namespace (the workloads pass --lease-namespace=$(POD_NAMESPACE)).
    assert_eq!(role.metadata.namespace.as_deref(), Some(sa.namespace()));
    let names: BTreeSet<&str> = role
        .rules
        .iter()
        .flatten()
        .flat_map(|r| r.resource_names.iter().flatten())
        .map(String::as_str)
        .collect();
    assert_eq!(names, BTreeSet::from(["vipr-ipam"]));
    // Nothing broader than needed: no wildcard anywhere.
    let cluster_role: ClusterRole = cr.typed();
    for rule in cluster_role.rules.iter().flatten().chain(role.rules.iter().flatten()) {
        let all = rule.verbs.iter().chain(rule.resources.iter().flatten());
        assert!(all.clone().all(|s| s != "*"), "a wildcard in {rule:?}");
        assert!(rule.api_groups.iter().flatten().all(|g| g != "*"), "a wildcard in {rule:?}");
    }
}

#[test]
fn the_example_service_is_a_load_balancer_of_viprs_class() {
    let objs = objects(&kubernetes_dir().join("examples/service.yaml"));
    assert_eq!(objs.len(), 1);
    check_object(&objs[0]).unwrap();
    let svc: Service = objs[0].typed();
    let spec = svc.spec.clone().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(spec.load_balancer_class.as_deref(), Some(vipr_k8s::object::DEFAULT_LB_CLASS));
    assert!(vipr_k8s::LbClass::default().owns(&svc), "vipr's IPAM takes it");
    let other = vipr_k8s::LbClass { name: "example.com/other".into(), default: true };
    assert!(!other.owns(&svc), "and no other class's");
}

// ---------------------------------------------------------------------------------------
// Tests: Grafana

/// The metrics vipr exports and their labels.
const METRICS: &[(&str, &[&str])] = &[
    ("vipr_vip_packets_total", &["vip"]),
    ("vipr_vip_bytes_total", &["vip"]),
    ("vipr_vip_new_flows_total", &["vip"]),
    ("vipr_backend_packets_total", &["vip", "backend"]),
    ("vipr_backend_bytes_total", &["vip", "backend"]),
    ("vipr_drops_total", &["reason"]),
    ("vipr_conntrack_flows", &[]),
    ("vipr_conntrack_capacity", &[]),
    ("vipr_programming_latency_seconds", &[]),
    ("vipr_reconcile_errors_total", &[]),
    ("vipr_ipam_pool_size", &["pool"]),
    ("vipr_ipam_pool_allocated", &["pool"]),
    ("vipr_dataplane_info", &["kind", "attach_mode"]),
    ("vipr_ready", &[]),
];
const HISTOGRAMS: &[&str] = &["vipr_programming_latency_seconds"];
/// Labels Prometheus adds to every scraped series (the second from the scrape
/// annotations' relabelling, the third for histogram buckets).
const TARGET_LABELS: &[&str] = &["instance", "job", "le", "pod", "node"];

/// Every string under a key named `expr` or `query` (targets and template variables).
fn queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match v {
                    Value::String(s) if k == "expr" || k == "query" => out.push(s.clone()),
                    Value::Object(q) if k == "query" => {
                        if let Some(s) = q.get("query").and_then(Value::as_str) {
                            out.push(s.to_owned());
                        }
                    }
                    _ => queries(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The PromQL identifiers in `q` (metric names, labels, functions, keywords).
fn identifiers(q: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let b = q.as_bytes();
    let mut i = 0;
    while i < b.len() {
        // Skip string literals (label values, legends).
        if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if b[i].is_ascii_alphabetic() || b[i] == b'_' || b[i] == b'$' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$') {
                i += 1;
            }
            out.push((start, &q[start..i]));
        } else {
            i += 1;
        }
    }
    out
}

/// The label names in `q`: in `{name="..."}` matchers and `by (..)` / `without (..)`.
fn labels_in(q: &str) -> Vec<String> {
    let ids = identifiers(q);
    let mut out = Vec::new();
    for &(pos, id) in &ids {
        let after = q[pos + id.len()..].trim_start();
        let in_braces = q[..pos].rfind('{') > q[..pos].rfind('}');
        let matcher = after.starts_with("=") || after.starts_with("!=") || after.starts_with("=~");
        if in_braces && matcher {
            out.push(id.to_owned());
        }
        if matches!(id, "by" | "without") && after.starts_with('(') {
            let close = after.find(')').unwrap();
            out.extend(after[1..close].split(',').map(|l| l.trim().to_owned()));
        }
    }
    out
}

#[test]
fn the_grafana_dashboard_asks_only_for_metrics_vipr_exports_and_shows_them_all() {
    let path = repo().join("deploy/grafana/vipr.json");
    let dash: Value = serde_json::from_str(&read(&path)).expect("the dashboard is JSON");
    assert!(dash["title"].as_str().is_some_and(|t| t.contains("vipr")));
    assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_i64().expect("a panel id")), "panel ids repeat");
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "a panel without a title");
        if p["type"] != "row" {
            assert!(p["gridPos"].is_object(), "{}: no gridPos", p["title"]);
            assert!(p["targets"].as_array().is_some_and(|t| !t.is_empty()), "{}", p["title"]);
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
    let variables = dash["templating"]["list"].as_array().expect("template variables");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus datasource variable"
    );

    let known: BTreeMap<&str, &[&str]> = METRICS.iter().copied().collect();
    let mut qs = Vec::new();
    queries(&dash, &mut qs);
    assert!(!qs.is_empty());
    let mut used = BTreeSet::new();
    let mut errors = Vec::new();
    for q in &qs {
        let mut labels: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
        for (_, id) in identifiers(q) {
            if !id.starts_with("vipr_") {
                continue;
            }
            let base = HISTOGRAMS
                .iter()
                .find(|h| {
                    [*h, "_bucket"].concat() == id
                        || [*h, "_sum"].concat() == id
                        || [*h, "_count"].concat() == id
                })
                .copied()
                .unwrap_or(id);
            if HISTOGRAMS.contains(&id) {
                errors.push(format!("{q}: a histogram is read through _bucket, _sum or _count"));
            }
            match known.get(base) {
                Some(l) => {
                    used.insert(base);
                    labels.extend(l.iter().copied());
                }
                None => errors.push(format!("{q}: {id} is not a metric vipr exports")),
            }
        }
        for l in labels_in(q) {
            if !labels.contains(l.as_str()) {
                errors.push(format!("{q}: label {l} is not on these metrics"));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let unused: Vec<&str> = known.keys().filter(|m| !used.contains(*m)).copied().collect();
    assert!(unused.is_empty(), "metrics no panel shows: {unused:?}");

    // And the check can fail.
    assert_eq!(
        labels_in(r#"sum by (vip, backnd) (rate(vipr_x{reason="a"}[1m]))"#),
        ["vip", "backnd", "reason"]
    );
}

// ---------------------------------------------------------------------------------------
// Tests: the container build

fn workspace_version() -> String {
    let toml = read(&repo().join("Cargo.toml"));
    let section = toml.split("[workspace.package]").nth(1).unwrap();
    let line = section.lines().find(|l| l.trim_start().starts_with("version")).unwrap();
    line.split('"').nth(1).unwrap().to_owned()
}

/// The workspace members, from the root Cargo.toml.
fn workspace_members() -> Vec<String> {
    let toml = read(&repo().join("Cargo.toml"));
    let list = toml.split("members = [").nth(1).unwrap().split(']').next().unwrap();
    list.split(',')
        .map(|s| s.trim().trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A Dockerfile instruction: keyword, its arguments (continuations joined), line.
struct Instruction {
    keyword: String,
    args: String,
    line: usize,
}

fn dockerfile() -> (String, Vec<Instruction>) {
    let text = read(&repo().join("deploy/Dockerfile"));
    let mut out = Vec::new();
    let mut current: Option<Instruction> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_none()) {
            continue;
        }
        let (body, continued) = match line.strip_suffix('\\') {
            Some(b) => (b.trim(), true),
            None => (line, false),
        };
        match &mut current {
            Some(ins) => {
                ins.args.push(' ');
                ins.args.push_str(body);
            }
            None => {
                let (k, rest) = body.split_once(' ').unwrap_or((body, ""));
                current = Some(Instruction {
                    keyword: k.to_ascii_uppercase(),
                    args: rest.trim().to_owned(),
                    line: i + 1,
                });
            }
        }
        if !continued {
            out.extend(current.take());
        }
    }
    (text, out)
}

/// The Debian packages a build needs, as scripts/setup.sh installs them.
const BUILD_PACKAGES: &[&str] = &[
    "build-essential",
    "pkg-config",
    "clang-22",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

#[test]
fn the_dockerfile_builds_what_setup_sh_builds_from_files_that_exist() {
    let (text, ins) = dockerfile();
    assert!(text.starts_with("# syntax=docker/dockerfile:1"), "RUN --mount needs BuildKit syntax");
    // Stages, in order.
    let mut stages: Vec<(String, Vec<&Instruction>)> = Vec::new();
    for i in &ins {
        if i.keyword == "FROM" {
            let words: Vec<&str> = i.args.split_whitespace().collect();
            assert!(words[0].starts_with("debian:${DEBIAN}"), "line {}: Debian based", i.line);
            assert_eq!(words.get(1).map(|w| w.to_ascii_uppercase()), Some("AS".into()));
            stages.push((words[2].to_owned(), Vec::new()));
        } else if let Some(s) = stages.last_mut() {
            s.1.push(i);
        } else {
            assert!(i.keyword == "ARG", "line {}: {} before FROM", i.line, i.keyword);
            assert_eq!(i.args, "DEBIAN=bookworm", "Debian bookworm, as scripts/setup.sh expects");
        }
    }
    let names: Vec<&str> = stages.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names, ["builder", "runtime"]);
    let builder = &stages[0].1;
    let runtime = &stages[1].1;
    let runs = |stage: &[&Instruction]| -> String {
        stage
            .iter()
            .filter(|i| i.keyword == "RUN")
            .map(|i| i.args.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let build_runs = runs(builder);
    let words: BTreeSet<&str> = build_runs.split_whitespace().collect();

    // What scripts/setup.sh installs for a build, the builder installs too.
    let setup = read(&repo().join("scripts/setup.sh"));
    let apt_list = setup.split("APT_PACKAGES=(").nth(1).unwrap().split(')').next().unwrap();
    let setup_packages: BTreeSet<&str> = apt_list.split_whitespace().collect();
    for p in BUILD_PACKAGES {
        assert!(setup_packages.contains(p), "scripts/setup.sh no longer installs {p}: update both");
        assert!(words.contains(p), "the builder does not install {p}");
    }
    let linker = setup
        .lines()
        .find(|l| l.contains("cargo install --locked bpf-linker"))
        .expect("setup.sh installs bpf-linker")
        .trim();
    assert!(build_runs.contains(linker), "bpf-linker built as setup.sh builds it: {linker}");
    for prefix in ["LLVM_PREFIX=/usr/lib/llvm-22", "LLVM_SYS_221_PREFIX=/usr/lib/llvm-22"] {
        assert!(setup.contains(prefix) && build_runs.contains(prefix), "{prefix}");
    }
    // The toolchain the eBPF build asks for.
    let build_rs = read(&repo().join("dataplane/xdp/build.rs"));
    assert!(build_rs.contains(r#""rustup", "run", "nightly""#) || build_rs.contains("\"nightly\""));
    assert!(build_runs.contains("rustup toolchain install nightly"), "nightly for the eBPF crate");
    assert!(build_runs.contains("--component rust-src"), "rust-src for -Z build-std=core");
    assert!(build_runs.contains("--default-toolchain stable"));

    // COPY sources exist, are not ignored, and cover every workspace member.
    let ignore = read(&repo().join("deploy/Dockerfile.dockerignore"));
    assert!(ignore.lines().any(|l| l.trim() == "**/target"), "build output stays out");
    let mut copied = Vec::new();
    for i in builder.iter().chain(runtime.iter()).filter(|i| i.keyword == "COPY") {
        let words: Vec<&str> = i.args.split_whitespace().collect();
        if let Some(stage) = words[0].strip_prefix("--from=") {
            let earlier = names.iter().position(|n| *n == stage);
            assert!(earlier.is_some(), "line {}: no stage {stage}", i.line);
            let produced = format!("target/release/vipr {}", words[1]);
            assert!(
                runs(&stages[earlier.unwrap()].1).contains(&produced),
                "line {}: {} is not made",
                i.line,
                words[1]
            );
            continue;
        }
        for src in &words[..words.len() - 1] {
            let p = repo().join(src);
            assert!(p.exists(), "line {}: COPY {src}: not in the repository", i.line);
            copied.push(src.to_string());
        }
    }
    for m in workspace_members() {
        assert!(
            copied.iter().any(|c| m == *c || m.starts_with(&format!("{c}/"))),
            "workspace member {m} is not copied"
        );
    }
    for f in ["Cargo.toml", "Cargo.lock"] {
        assert!(copied.iter().any(|c| c == f), "{f} is not copied");
    }

    // It builds the vipr binary (package vipr, bin vipr) with the locked dependencies.
    assert!(build_runs.contains("cargo build --release --locked -p vipr"));
    let manifest = read(&repo().join("controlplane/Cargo.toml"));
    assert!(manifest.contains("name = \"vipr\"\npath = \"src/main.rs\""), "bin vipr");

    // The runtime image: what the agent runs (`ip`) and the binary as the entrypoint.
    let runtime_runs = runs(runtime);
    let agent_runs_ip = std::fs::read_dir(repo().join("controlplane/src"))
        .unwrap()
        .map(|e| read(&e.unwrap().path()))
        .any(|s| s.contains("Command::new(\"ip\")"));
    assert!(agent_runs_ip, "if the agent no longer runs ip, iproute2 can go");
    for p in ["iproute2", "ca-certificates"] {
        assert!(runtime_runs.split_whitespace().any(|w| w == p), "runtime lacks {p}");
    }
    assert!(
        !runtime_runs.contains("llvm") && !runtime_runs.contains("clang"),
        "no toolchain in the runtime image"
    );
    let entry = runtime.iter().find(|i| i.keyword == "ENTRYPOINT").expect("an ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(&entry.args).expect("ENTRYPOINT in exec form");
    let copy = runtime.iter().find(|i| i.keyword == "COPY").unwrap();
    assert_eq!(copy.args.split_whitespace().last(), Some(entry[0].as_str()));
    let cmd = runtime.iter().find(|i| i.keyword == "CMD").expect("a CMD");
    let cmd: Vec<String> = serde_json::from_str(&cmd.args).expect("CMD in exec form");
    assert_eq!(cmd, ["run", "--config", "/etc/vipr/vipr.yaml"], "where the manifests mount it");
}
