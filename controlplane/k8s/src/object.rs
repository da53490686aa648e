//! Names of Kubernetes objects in warnings, plans and events, and the loadBalancerClass
//! rule that decides which LoadBalancer Services are vipr's.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::fmt;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The loadBalancerClass vipr answers to when none is configured.
pub const DEFAULT_LB_CLASS: &str = "vipr.dev/lb";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        })
    }
}

/// One object, as `kubectl` would name it. `namespace` is empty for Nodes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        ObjectRef { kind, namespace: namespace.to_owned(), name: name.to_owned() }
    }

    pub fn of(kind: Kind, meta: &ObjectMeta) -> Self {
        let cluster_scoped = kind == Kind::Node;
        ObjectRef {
            kind,
            namespace: if cluster_scoped { String::new() } else { namespace(meta).to_owned() },
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    pub fn service(svc: &Service) -> Self {
        ObjectRef::of(Kind::Service, &svc.metadata)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A namespaced object without a namespace lives in `default`, as `kubectl apply` would
/// put it (manifests often leave it out).
pub(crate) fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or("default")
}

/// Which LoadBalancer Services are vipr's: those whose `spec.loadBalancerClass` is
/// `name`, and, when `default` is set, those without a class (the cluster's default
/// implementation gets them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbClass {
    pub name: String,
    pub default: bool,
}

impl Default for LbClass {
    fn default() -> Self {
        LbClass { name: DEFAULT_LB_CLASS.to_owned(), default: true }
    }
}

impl LbClass {
    /// True for a Service of type LoadBalancer that this class implements.
    pub fn owns(&self, svc: &Service) -> bool {
        let Some(spec) = &svc.spec else { return false };
        if spec.type_.as_deref() != Some("LoadBalancer") {
            return false;
        }
        match spec.load_balancer_class.as_deref() {
            Some(class) => class == self.name,
            None => self.default,
        }
    }
}
