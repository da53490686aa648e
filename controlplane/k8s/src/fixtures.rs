//! Builders for Services, EndpointSlices and Nodes, so a test (or a benchmark that
//! needs 10k Services) states only what matters to it:
//!
//! ```
//! use vipr_k8s::fixtures::{node, service, slice};
//! use vipr_k8s::Inputs;
//! let inputs = Inputs::default()
//!     .with_service(service("web").cluster_ip("198.51.100.10").port(80, 8080))
//!     .with_slice(slice("web-1", "web").port(8080).ready("192.0.2.21"))
//!     .with_node(node("node-a").internal_ip("203.0.113.1"));
//! ```
//!
//! Defaults: namespace `default`, type ClusterIP with a selector `app: <name>`, no
//! cluster IP, TCP; slices of `IPv4`; nodes Ready. A port-level setter (`node_port`,
//! `protocol`, ...) changes the last port added; an endpoint-level one (`on`) the last
//! endpoint.

use crate::object::SERVICE_NAME_LABEL;
use crate::translate::EXCLUDE_FROM_LB_LABEL;
use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeCondition,
    NodeStatus, Service, ServicePort, ServiceSpec, ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        ..ObjectMeta::default()
    }
}

pub fn service(name: &str) -> ServiceBuilder {
    let mut selector = BTreeMap::new();
    selector.insert("app".to_owned(), name.to_owned());
    ServiceBuilder(Service {
        metadata: meta(Some("default"), name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

#[derive(Clone, Debug)]
pub struct ServiceBuilder(pub Service);

impl ServiceBuilder {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.get_or_insert_with(ServiceSpec::default)
    }

    fn last_port(&mut self) -> &mut ServicePort {
        let ports = self.spec().ports.get_or_insert_with(Vec::new);
        if ports.is_empty() {
            ports.push(ServicePort::default());
        }
        ports.last_mut().expect("just made non-empty")
    }

    fn ingress_list(&mut self) -> &mut Vec<LoadBalancerIngress> {
        let status = self.0.status.get_or_insert_with(ServiceStatus::default);
        let lb = status.load_balancer.get_or_insert_with(LoadBalancerStatus::default);
        lb.ingress.get_or_insert_with(Vec::new)
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.0.metadata.namespace = Some(ns.to_owned());
        self
    }

    pub fn cluster_ip(self, ip: &str) -> Self {
        self.cluster_ips(&[ip])
    }

    /// Sets `clusterIP` to the first and `clusterIPs` to all, as the API server does.
    pub fn cluster_ips(mut self, ips: &[&str]) -> Self {
        let spec = self.spec();
        spec.cluster_ip = ips.first().map(|s| (*s).to_owned());
        spec.cluster_ips = Some(ips.iter().map(|s| (*s).to_owned()).collect());
        self
    }

    pub fn headless(self) -> Self {
        self.cluster_ip("None")
    }

    pub fn ip_families(mut self, families: &[&str]) -> Self {
        self.spec().ip_families = Some(families.iter().map(|s| (*s).to_owned()).collect());
        self
    }

    pub fn type_(mut self, t: &str) -> Self {
        self.spec().type_ = Some(t.to_owned());
        self
    }

    pub fn node_port_type(self) -> Self {
        self.type_("NodePort")
    }

    pub fn load_balancer(self) -> Self {
        self.type_("LoadBalancer")
    }

    pub fn external_name(mut self, host: &str) -> Self {
        let spec = self.spec();
        spec.type_ = Some("ExternalName".into());
        spec.external_name = Some(host.to_owned());
        self
    }

    pub fn no_selector(mut self) -> Self {
        self.spec().selector = None;
        self
    }

    /// An unnamed TCP port with a numeric targetPort.
    pub fn port(self, port: i32, target: i32) -> Self {
        self.port_with(None, port, IntOrString::Int(target), "TCP")
    }

    /// A named TCP port whose targetPort is a container port name.
    pub fn named_port(self, name: &str, port: i32, target: &str) -> Self {
        self.port_with(Some(name), port, IntOrString::String(target.to_owned()), "TCP")
    }

    pub fn udp_port(self, name: &str, port: i32, target: i32) -> Self {
        self.port_with(Some(name), port, IntOrString::Int(target), "UDP")
    }

    pub fn port_with(
        mut self,
        name: Option<&str>,
        port: i32,
        target: IntOrString,
        proto: &str,
    ) -> Self {
        self.spec().ports.get_or_insert_with(Vec::new).push(ServicePort {
            name: name.map(str::to_owned),
            port,
            target_port: Some(target),
            protocol: Some(proto.to_owned()),
            ..ServicePort::default()
        });
        self
    }

    /// Sets the last port's nodePort.
    pub fn node_port(mut self, node_port: i32) -> Self {
        self.last_port().node_port = Some(node_port);
        self
    }

    /// Sets the last port's protocol.
    pub fn protocol(mut self, proto: &str) -> Self {
        self.last_port().protocol = Some(proto.to_owned());
        self
    }

    pub fn lb_class(mut self, class: &str) -> Self {
        self.spec().load_balancer_class = Some(class.to_owned());
        self
    }

    /// `spec.loadBalancerIP`: the address asked of the IPAM.
    pub fn lb_ip(mut self, ip: &str) -> Self {
        self.spec().load_balancer_ip = Some(ip.to_owned());
        self
    }

    /// Adds `status.loadBalancer.ingress` entries.
    pub fn ingress(mut self, ips: &[&str]) -> Self {
        let list = self.ingress_list();
        for ip in ips {
            list.push(LoadBalancerIngress { ip: Some((*ip).to_owned()), ..Default::default() });
        }
        self
    }

    /// Sets `ipMode` of every ingress entry.
    pub fn ingress_mode(mut self, mode: &str) -> Self {
        for i in self.ingress_list() {
            i.ip_mode = Some(mode.to_owned());
        }
        self
    }

    pub fn external_ips(mut self, ips: &[&str]) -> Self {
        self.spec().external_ips = Some(ips.iter().map(|s| (*s).to_owned()).collect());
        self
    }

    pub fn source_ranges(mut self, ranges: &[&str]) -> Self {
        self.spec().load_balancer_source_ranges =
            Some(ranges.iter().map(|s| (*s).to_owned()).collect());
        self
    }

    /// sessionAffinity ClientIP, with `timeout` seconds or the default.
    pub fn affinity(mut self, timeout: Option<i32>) -> Self {
        let spec = self.spec();
        spec.session_affinity = Some("ClientIP".into());
        spec.session_affinity_config = timeout.map(|t| SessionAffinityConfig {
            client_ip: Some(ClientIPConfig { timeout_seconds: Some(t) }),
        });
        self
    }

    pub fn external_local(mut self) -> Self {
        self.spec().external_traffic_policy = Some("Local".into());
        self
    }

    pub fn internal_local(mut self) -> Self {
        self.spec().internal_traffic_policy = Some("Local".into());
        self
    }

    /// Sets the creation time (RFC 3339), which orders claims on one address.
    pub fn created(mut self, rfc3339: &str) -> Self {
        let ts = rfc3339.parse().expect("fixture timestamps are valid RFC 3339");
        self.0.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts));
        self
    }

    pub fn build(self) -> Service {
        self.0
    }
}

impl From<ServiceBuilder> for Service {
    fn from(b: ServiceBuilder) -> Service {
        b.0
    }
}

/// A slice of Service `service` in namespace `default`.
pub fn slice(name: &str, service: &str) -> SliceBuilder {
    let mut labels = BTreeMap::new();
    labels.insert(SERVICE_NAME_LABEL.to_owned(), service.to_owned());
    SliceBuilder(EndpointSlice {
        metadata: ObjectMeta { labels: Some(labels), ..meta(Some("default"), name) },
        address_type: "IPv4".into(),
        endpoints: Some(Vec::new()),
        ports: Some(Vec::new()),
    })
}

#[derive(Clone, Debug)]
pub struct SliceBuilder(pub EndpointSlice);

impl SliceBuilder {
    pub fn namespace(mut self, ns: &str) -> Self {
        self.0.metadata.namespace = Some(ns.to_owned());
        self
    }

    pub fn ipv6(mut self) -> Self {
        self.0.address_type = "IPv6".into();
        self
    }

    pub fn address_type(mut self, t: &str) -> Self {
        self.0.address_type = t.to_owned();
        self
    }

    /// An unnamed TCP port (the match of an unnamed Service port).
    pub fn port(self, port: i32) -> Self {
        self.port_with(None, port, "TCP")
    }

    pub fn named_port(self, name: &str, port: i32) -> Self {
        self.port_with(Some(name), port, "TCP")
    }

    pub fn udp_port(self, name: &str, port: i32) -> Self {
        self.port_with(Some(name), port, "UDP")
    }

    pub fn port_with(mut self, name: Option<&str>, port: i32, proto: &str) -> Self {
        self.0.ports.get_or_insert_with(Vec::new).push(EndpointPort {
            name: name.map(str::to_owned),
            port: Some(port),
            protocol: Some(proto.to_owned()),
            app_protocol: None,
        });
        self
    }

    fn endpoint(mut self, addr: &str, ready: bool, serving: bool, terminating: bool) -> Self {
        self.0.endpoints.get_or_insert_with(Vec::new).push(Endpoint {
            addresses: vec![addr.to_owned()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            ..Endpoint::default()
        });
        self
    }

    pub fn ready(self, addr: &str) -> Self {
        self.endpoint(addr, true, true, false)
    }

    /// Failing its readiness probe, or still starting.
    pub fn not_ready(self, addr: &str) -> Self {
        self.endpoint(addr, false, false, false)
    }

    /// Shutting down; `serving` if it still passes its readiness probe.
    pub fn terminating(self, addr: &str, serving: bool) -> Self {
        self.endpoint(addr, false, serving, true)
    }

    /// Puts the last endpoint on `node`.
    pub fn on(mut self, node: &str) -> Self {
        if let Some(e) = self.0.endpoints.get_or_insert_with(Vec::new).last_mut() {
            e.node_name = Some(node.to_owned());
        }
        self
    }

    pub fn build(self) -> EndpointSlice {
        self.0
    }
}

impl From<SliceBuilder> for EndpointSlice {
    fn from(b: SliceBuilder) -> EndpointSlice {
        b.0
    }
}

/// A Ready node without addresses.
pub fn node(name: &str) -> NodeBuilder {
    NodeBuilder(Node {
        metadata: meta(None, name),
        spec: None,
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..NodeCondition::default()
            }]),
            addresses: Some(Vec::new()),
            ..NodeStatus::default()
        }),
    })
}

#[derive(Clone, Debug)]
pub struct NodeBuilder(pub Node);

impl NodeBuilder {
    fn address(mut self, type_: &str, addr: &str) -> Self {
        let status = self.0.status.get_or_insert_with(NodeStatus::default);
        status
            .addresses
            .get_or_insert_with(Vec::new)
            .push(NodeAddress { type_: type_.to_owned(), address: addr.to_owned() });
        self
    }

    pub fn internal_ip(self, addr: &str) -> Self {
        self.address("InternalIP", addr)
    }

    pub fn external_ip(self, addr: &str) -> Self {
        self.address("ExternalIP", addr)
    }

    pub fn hostname(self, name: &str) -> Self {
        self.address("Hostname", name)
    }

    pub fn not_ready(mut self) -> Self {
        let status = self.0.status.get_or_insert_with(NodeStatus::default);
        for c in status.conditions.iter_mut().flatten() {
            if c.type_ == "Ready" {
                c.status = "False".into();
            }
        }
        self
    }

    pub fn exclude_from_lb(mut self) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(EXCLUDE_FROM_LB_LABEL.to_owned(), String::new());
        self
    }

    pub fn build(self) -> Node {
        self.0
    }
}

impl From<NodeBuilder> for Node {
    fn from(b: NodeBuilder) -> Node {
        b.0
    }
}
