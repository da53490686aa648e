//! The incremental [`Translator`] against the pure [`translate`]: after every change in a
//! sequence (an endpoint moves, a Service is added or deleted, a Node goes unready), it
//! gives the same VIPs, and translates again only the Services whose objects changed.

use std::sync::Arc;
use vipr_k8s::fixtures::{node, service, slice};
use vipr_k8s::k8s_openapi::api::core::v1::{Node, Service};
use vipr_k8s::k8s_openapi::api::discovery::v1::EndpointSlice;
use vipr_k8s::{translate, Inputs, Mode, Options, Translator};

struct Cluster {
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    nodes: Vec<Arc<Node>>,
}

impl Cluster {
    fn inputs(&self) -> Inputs {
        Inputs {
            services: self.services.iter().map(|s| (**s).clone()).collect(),
            endpoint_slices: self.slices.iter().map(|s| (**s).clone()).collect(),
            nodes: self.nodes.iter().map(|n| (**n).clone()).collect(),
        }
    }
}

fn web(i: usize) -> Service {
    service(&format!("web-{i}"))
        .cluster_ip(&format!("198.51.100.{}", i + 1))
        .node_port_type()
        .port(80, 8080)
        .node_port(30000 + i as i32)
        .build()
}

fn endpoints(i: usize, first: u8) -> EndpointSlice {
    slice(&format!("web-{i}-a"), &format!("web-{i}"))
        .port(8080)
        .ready(&format!("192.0.2.{first}"))
        .ready(&format!("192.0.2.{}", first + 1))
        .build()
}

/// Checks the translator against `translate` and returns how many Services it redid.
fn check(t: &mut Translator, c: &Cluster, opts: &Options) -> usize {
    let incremental = t.translate(&c.services, &c.slices, &c.nodes);
    let full = translate(&c.inputs(), opts);
    assert_eq!(incremental.vips, full.vips);
    for w in &incremental.warnings {
        assert!(full.warnings.contains(w) || format!("{w}").contains("node"), "extra warning {w}");
    }
    t.retranslated
}

#[test]
fn the_translator_gives_the_same_vips_as_translate_and_redoes_only_what_changed() {
    let opts =
        Options { mode: Mode::DaemonSet { node_name: "node-a".into() }, ..Options::default() };
    let mut c = Cluster {
        services: (0..20).map(|i| Arc::new(web(i))).collect(),
        slices: (0..20).map(|i| Arc::new(endpoints(i, 10))).collect(),
        nodes: vec![Arc::new(node("node-a").internal_ip("203.0.113.1").build())],
    };
    let mut t = Translator::new(opts.clone());
    assert_eq!(check(&mut t, &c, &opts), 20, "the first call translates everything");
    assert_eq!(check(&mut t, &c, &opts), 0, "nothing changed");

    c.slices[7] = Arc::new(endpoints(7, 40));
    assert_eq!(check(&mut t, &c, &opts), 1, "one endpoint moved");

    c.services.push(Arc::new(web(20)));
    c.slices.push(Arc::new(endpoints(20, 60)));
    assert_eq!(check(&mut t, &c, &opts), 1, "one Service added");

    c.services.remove(3);
    assert_eq!(check(&mut t, &c, &opts), 0, "one Service deleted: nothing to translate");

    c.slices.swap(0, 5);
    assert_eq!(check(&mut t, &c, &opts), 0, "the store's order does not matter");

    c.nodes[0] = Arc::new(node("node-a").internal_ip("203.0.113.9").build());
    assert_eq!(check(&mut t, &c, &opts), 20, "a Node change redoes everything");
}
