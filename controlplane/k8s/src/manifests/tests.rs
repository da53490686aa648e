use super::*;
use crate::translate::{translate, Options};
use std::net::IpAddr;
use vipr_abi::PROTO_TCP;

/// A fresh folder under the system temp dir, one per test.
fn folder(test: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vipr-k8s-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

fn tutorial() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tutorial")
}

#[test]
fn the_tutorial_translates_to_its_vip_with_its_four_backends() {
    let m = load_manifests(&tutorial()).unwrap();
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    let t = translate(&m.inputs, &Options::default());
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    let vips = t.into_vip_specs();
    assert_eq!(vips.len(), 1);
    let vip = &vips[0];
    assert_eq!((vip.addr, vip.port, vip.proto), ("192.0.2.10".parse().unwrap(), 8088, PROTO_TCP));
    let backends: Vec<(IpAddr, u16, bool)> =
        vip.backends.iter().map(|b| (b.addr, b.port, b.draining)).collect();
    let expected: Vec<(IpAddr, u16, bool)> =
        (21..=24).map(|i| (format!("192.0.2.{i}").parse().unwrap(), 8080, false)).collect();
    assert_eq!(backends, expected);
}

#[test]
fn the_tutorial_is_served_the_same_in_edge_mode_with_routable_pods() {
    let m = load_manifests(&tutorial()).unwrap();
    let opts = Options { mode: crate::Mode::Edge { pod_routable: true }, ..Options::default() };
    let t = translate(&m.inputs, &opts);
    assert_eq!(t.vips.len(), 1);
    assert_eq!(t.vips[0].spec.backends.len(), 4);
}

const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 198.51.100.10\n  ports: [{port: 80, targetPort: 8080}]\n";

const BETA_SLICE: &str = r#"apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata:
  name: web-1
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
  - addresses: [192.0.2.21]
    topology: {kubernetes.io/hostname: node-a}
"#;

#[test]
fn multi_document_files_with_v1beta1_slices_nodes_and_other_kinds_load() {
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n";
    let node = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n";
    let all = format!("{WEB}---\n{deployment}---\n{BETA_SLICE}---\n---\n{node}");
    let dir = folder("multi", &[("all.yml", &all), ("notes.txt", "not yaml: [")]);
    let m = load_manifests(&dir).unwrap();
    assert_eq!(m.inputs.services.len(), 1);
    assert_eq!(m.inputs.nodes.len(), 1);
    let slice = &m.inputs.endpoint_slices[0];
    let ep = &slice.endpoints.as_ref().unwrap()[0];
    assert_eq!(ep.node_name.as_deref(), Some("node-a"));
    assert_eq!(
        m.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [format!(
            "{}: document 2: Deployment (apps/v1): not a kind vipr reads (Service, EndpointSlice, Node); skipped",
            dir.join("all.yml").display()
        )]
    );
    let t = translate(&m.inputs, &Options::default());
    assert_eq!(t.vips[0].spec.backends.len(), 1);
}

#[test]
fn a_list_of_objects_loads_its_items() {
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: b}\n";
    let m = parse_manifests(Path::new("list.yaml"), list).unwrap();
    assert_eq!(m.inputs.services.len(), 2);
}

#[test]
fn bad_yaml_is_an_error_naming_file_document_line_and_column() {
    let bad = format!("{WEB}---\napiVersion: v1\nkind: Service\nmetadata: {{name: [oops\n");
    let dir = folder("bad-yaml", &[("a.yaml", WEB), ("b.yaml", &bad)]);
    let err = load_manifests(&dir).unwrap_err().to_string();
    let file = dir.join("b.yaml").display().to_string();
    assert!(err.starts_with(&format!("{file}:")), "{err}");
    assert!(err.contains(": document 2: not valid YAML"), "{err}");
    assert!(matches!(load_manifests(&dir), Err(ManifestError::Yaml { line: Some(_), .. })));
}

#[test]
fn an_object_that_does_not_decode_is_an_error_naming_the_field() {
    let bad =
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: eighty}]\n";
    let err = parse_manifests(Path::new("svc.yaml"), bad).unwrap_err().to_string();
    assert!(err.starts_with("svc.yaml: document 1: Service (v1): spec.ports[0].port: "), "{err}");
}

#[test]
fn an_object_without_a_name_is_an_error() {
    let err = parse_manifests(Path::new("x.yaml"), "apiVersion: v1\nkind: Node\nmetadata: {}\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("metadata.name: missing"), "{err}");
}

#[test]
fn an_object_defined_twice_is_reported_and_the_later_one_used() {
    let dir = folder(
        "twice",
        &[("a.yaml", WEB), ("b.yaml", &WEB.replace("198.51.100.10", "198.51.100.11"))],
    );
    let m = load_manifests(&dir).unwrap();
    assert_eq!(m.inputs.services.len(), 1);
    let spec = m.inputs.services[0].spec.as_ref().unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("198.51.100.11"));
    assert!(m.warnings[0].message.contains("Service default/web is defined again here"));
}

#[test]
fn a_missing_folder_is_an_error_naming_it() {
    let err = load_manifests(Path::new("/nonexistent/vipr-manifests")).unwrap_err();
    assert!(err
        .to_string()
        .starts_with("cannot read the manifests folder /nonexistent/vipr-manifests:"));
}
