//! `discovery.k8s.io/v1beta1` EndpointSlices, the only version Kubernetes 1.20 serves
//! (v1 arrived in 1.21, v1beta1 left in 1.25, so k8s-openapi no longer has it).
//!
//! Contract: [`EndpointSlice`] reads what a 1.20 API server returns and
//! [`EndpointSlice::into_v1`] gives the v1 object a current cluster would hold for the
//! same endpoints, so everything downstream handles one shape. The differences are
//! small: v1beta1 has a `topology` map where v1 has `nodeName` / `zone` (1.20 also fills
//! `nodeName` behind the `EndpointSliceNodeName` gate, and `serving` / `terminating`
//! behind `EndpointSliceTerminatingCondition`); v1 has `hints`, v1beta1 none.
//!
//! The type implements `k8s_openapi::Resource`, so a client can list and watch it like
//! any generated type.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const TOPOLOGY_HOSTNAME: &str = "kubernetes.io/hostname";
const TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub address_type: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<EndpointPort>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<EndpointConditions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<ObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointConditions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminating: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

impl EndpointSlice {
    pub fn into_v1(self) -> discovery::EndpointSlice {
        discovery::EndpointSlice {
            metadata: self.metadata,
            address_type: self.address_type,
            endpoints: Some(self.endpoints.into_iter().map(Endpoint::into_v1).collect()),
            ports: self.ports.map(|ports| {
                ports
                    .into_iter()
                    .map(|p| discovery::EndpointPort {
                        app_protocol: p.app_protocol,
                        name: p.name,
                        port: p.port,
                        protocol: p.protocol,
                    })
                    .collect()
            }),
        }
    }
}

impl Endpoint {
    fn into_v1(self) -> discovery::Endpoint {
        let topology = self.topology.unwrap_or_default();
        // Before the EndpointSliceNodeName gate the node was only in the topology map.
        let node_name = self.node_name.or_else(|| topology.get(TOPOLOGY_HOSTNAME).cloned());
        let zone = topology.get(TOPOLOGY_ZONE).cloned();
        discovery::Endpoint {
            addresses: self.addresses,
            conditions: self.conditions.map(|c| discovery::EndpointConditions {
                ready: c.ready,
                serving: c.serving,
                terminating: c.terminating,
            }),
            deprecated_topology: (!topology.is_empty()).then_some(topology),
            hints: None,
            hostname: self.hostname,
            node_name,
            target_ref: self.target_ref,
            zone,
        }
    }
}

impl From<EndpointSlice> for discovery::EndpointSlice {
    fn from(s: EndpointSlice) -> Self {
        s.into_v1()
    }
}

impl k8s_openapi::Resource for EndpointSlice {
    const API_VERSION: &'static str = "discovery.k8s.io/v1beta1";
    const GROUP: &'static str = "discovery.k8s.io";
    const KIND: &'static str = "EndpointSlice";
    const VERSION: &'static str = "v1beta1";
    const URL_PATH_SEGMENT: &'static str = "endpointslices";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::ListableResource for EndpointSlice {
    const LIST_KIND: &'static str = "EndpointSliceList";
}

impl k8s_openapi::Metadata for EndpointSlice {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1BETA1: &str = r#"{
      "apiVersion": "discovery.k8s.io/v1beta1",
      "kind": "EndpointSlice",
      "metadata": {"name": "web-abc", "namespace": "shop",
                   "labels": {"kubernetes.io/service-name": "web"}},
      "addressType": "IPv4",
      "endpoints": [
        {"addresses": ["192.0.2.21"], "conditions": {"ready": true},
         "topology": {"kubernetes.io/hostname": "node-a", "topology.kubernetes.io/zone": "z1"}},
        {"addresses": ["192.0.2.22"], "nodeName": "node-b",
         "conditions": {"ready": false, "serving": true, "terminating": true}}
      ],
      "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]
    }"#;

    #[test]
    fn a_v1beta1_slice_reads_as_the_v1_slice_of_the_same_endpoints() {
        let beta: EndpointSlice = serde_json::from_str(V1BETA1).unwrap();
        let v1 = beta.into_v1();
        assert_eq!(v1.metadata.name.as_deref(), Some("web-abc"));
        assert_eq!(v1.address_type, "IPv4");
        let eps = v1.endpoints.unwrap();
        assert_eq!(eps[0].node_name.as_deref(), Some("node-a"), "node from the topology map");
        assert_eq!(eps[0].zone.as_deref(), Some("z1"));
        assert_eq!(eps[1].node_name.as_deref(), Some("node-b"));
        let c = eps[1].conditions.clone().unwrap();
        assert_eq!((c.ready, c.serving, c.terminating), (Some(false), Some(true), Some(true)));
        let port = &v1.ports.unwrap()[0];
        assert_eq!((port.name.as_deref(), port.port), (Some("http"), Some(8080)));
    }
}
