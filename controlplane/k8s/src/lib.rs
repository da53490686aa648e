//! vipr's Kubernetes control plane: from Services, EndpointSlices and Nodes to the VIP
//! specs the dataplane compiler takes, plus LoadBalancer address management.
//!
//! # Contract
//!
//! - [`translate()`] is a pure, total function of its [`Inputs`] and [`Options`]: the same
//!   objects give the same [`Translation`] (VIPs sorted by address, port, protocol;
//!   backends sorted by address, port), whatever order the objects came in. A bad
//!   object never makes it panic or fail: what cannot be used is skipped and reported as
//!   a [`Warning`] naming the object (`Service default/web: ...`).
//! - [`Translator`] gives the same VIPs as [`translate()`], one watch event at a time:
//!   it translates again only the Services an event touched and hands out what changed
//!   ([`TranslationChanges`]), so an endpoint change costs the same at 10k Services as
//!   at one.
//! - [`Ipam`] is pure too: it is fed the current Services and answers which
//!   `status.loadBalancer.ingress` to write and which Events to emit. It rebuilds its
//!   allocations from the statuses it is shown, so a restarted controller hands out
//!   nothing twice.
//! - [`load_manifests`] reads a folder of ordinary Kubernetes YAML (Service,
//!   EndpointSlice `discovery.k8s.io/v1` or `v1beta1`, Node) into [`Inputs`]; bad YAML is
//!   an error naming the file and document, unknown kinds are warnings.
//!
//! EndpointSlices are handled in their `discovery.k8s.io/v1` shape. Clusters before 1.21
//! serve only `v1beta1`: [`v1beta1::EndpointSlice`] reads that shape and converts it.
//!
//! Nothing above talks to an API server. The `live` cargo feature adds [`live`]: kube-rs
//! watchers feeding a [`Translator`], the Lease, status writes and Events.

#![deny(unsafe_code)]

pub mod fixtures;
pub mod ipam;
#[cfg(feature = "live")]
pub mod live;
pub mod manifests;
pub mod object;
pub mod translate;
pub mod v1beta1;

pub use ipam::{EventKind, Ipam, IpamEvent, IpamPlan, StatusUpdate};
pub use manifests::{load_manifests, parse_manifests, ManifestError, ManifestWarning, Manifests};
pub use object::{Kind, LbClass, ObjectRef};
pub use translate::{
    translate, Inputs, Mode, Options, Problem, ServiceVip, Translation, TranslationChanges,
    Translator, VipKind, Warning,
};

/// Re-exported so callers name the same Kubernetes types this crate was built with.
pub use k8s_openapi;
