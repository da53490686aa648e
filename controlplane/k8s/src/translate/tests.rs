//! Translation rules, one case each, with builder fixtures. Addresses: cluster IPs in
//! 198.51.100.0/24, pods in 192.0.2.0/24, nodes in 203.0.113.0/24, IPv6 in 2001:db8::/32.

use super::*;
use crate::fixtures::{node, service, slice};
use crate::v1beta1;

fn daemonset(node: &str) -> Options {
    Options { mode: Mode::DaemonSet { node_name: node.into() }, ..Options::default() }
}

fn edge(pod_routable: bool) -> Options {
    Options { mode: Mode::Edge { pod_routable }, ..Options::default() }
}

/// One line per VIP: `addr:port/proto -> backend, backend draining, backend w3`.
fn render(t: &Translation) -> Vec<String> {
    t.vips
        .iter()
        .map(|v| {
            let backends: Vec<String> = v
                .spec
                .backends
                .iter()
                .map(|b| {
                    let mut s = match b.addr {
                        IpAddr::V4(a) => format!("{a}:{}", b.port),
                        IpAddr::V6(a) => format!("[{a}]:{}", b.port),
                    };
                    if b.draining {
                        s.push_str(" draining");
                    }
                    if b.weight != 1 {
                        s.push_str(&format!(" w{}", b.weight));
                    }
                    s
                })
                .collect();
            format!("{} -> {}", vip_name(&v.spec), backends.join(", "))
        })
        .collect()
}

fn warnings(t: &Translation) -> Vec<String> {
    t.warnings.iter().map(ToString::to_string).collect()
}

fn web() -> crate::fixtures::ServiceBuilder {
    service("web").cluster_ip("198.51.100.10").port(80, 8080)
}

fn web_slice() -> crate::fixtures::SliceBuilder {
    slice("web-1", "web").port(8080)
}

// ---------------------------------------------------------------------------------------
// ClusterIP, families, ports

#[test]
fn cluster_ip_port_becomes_a_vip_with_the_ready_endpoints() {
    let inputs = Inputs::default()
        .with_service(web())
        .with_slice(web_slice().ready("192.0.2.22").ready("192.0.2.21"));
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(render(&t), ["198.51.100.10:80/tcp -> 192.0.2.21:8080, 192.0.2.22:8080"]);
    assert_eq!(t.vips[0].kind, VipKind::ClusterIp);
    assert_eq!(t.vips[0].service, ObjectRef::new(Kind::Service, "default", "web"));
    assert_eq!(t.vips[0].spec.ring_max, DEFAULT_RING_MAX);
    assert_eq!(t.vips[0].spec.snat_addr, None, "DNAT keeps the client address");
    assert!(t.warnings.is_empty());
}

#[test]
fn dual_stack_service_gets_one_vip_per_family_with_backends_of_that_family() {
    let inputs = Inputs::default()
        .with_service(
            service("web")
                .cluster_ips(&["198.51.100.10", "2001:db8:10::a"])
                .ip_families(&["IPv4", "IPv6"])
                .port(80, 8080),
        )
        .with_slice(slice("web-v4", "web").port(8080).ready("192.0.2.21"))
        .with_slice(slice("web-v6", "web").ipv6().port(8080).ready("2001:db8:2::21"));
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(
        render(&t),
        [
            "198.51.100.10:80/tcp -> 192.0.2.21:8080",
            "[2001:db8:10::a]:80/tcp -> [2001:db8:2::21]:8080",
        ]
    );
}

#[test]
fn every_port_of_a_service_is_its_own_vip() {
    let inputs = Inputs::default()
        .with_service(
            service("web")
                .cluster_ip("198.51.100.10")
                .named_port("http", 80, "http")
                .named_port("https", 443, "https"),
        )
        .with_slice(
            slice("web-1", "web")
                .named_port("http", 8080)
                .named_port("https", 8443)
                .ready("192.0.2.21"),
        );
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(
        render(&t),
        ["198.51.100.10:80/tcp -> 192.0.2.21:8080", "198.51.100.10:443/tcp -> 192.0.2.21:8443"]
    );
    assert_eq!(t.vips[1].port_name, "https");
}

#[test]
fn named_target_port_is_resolved_through_each_slices_own_port() {
    // Two pod templates during a rollout name the same port differently numbered.
    let inputs = Inputs::default()
        .with_service(service("web").cluster_ip("198.51.100.10").named_port("http", 80, "web"))
        .with_slice(slice("web-old", "web").named_port("http", 8080).ready("192.0.2.21"))
        .with_slice(slice("web-new", "web").named_port("http", 9090).ready("192.0.2.22"));
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(render(&t), ["198.51.100.10:80/tcp -> 192.0.2.21:8080, 192.0.2.22:9090"]);
}

#[test]
fn a_slice_without_the_service_ports_name_contributes_no_backend() {
    let inputs = Inputs::default()
        .with_service(service("web").cluster_ip("198.51.100.10").named_port("http", 80, "http"))
        .with_slice(slice("web-1", "web").named_port("metrics", 9100).ready("192.0.2.21"))
        .with_slice(slice("web-2", "web").named_port("http", 8080).ready("192.0.2.22"));
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(render(&t), ["198.51.100.10:80/tcp -> 192.0.2.22:8080"]);
}

#[test]
fn udp_port_becomes_a_udp_vip_fed_by_the_udp_slice_port() {
    let inputs = Inputs::default()
        .with_service(
            service("dns").cluster_ip("198.51.100.53").udp_port("dns", 53, 5353).port_with(
                Some("dns-tcp"),
                53,
                IntOrString::Int(5353),
                "TCP",
            ),
        )
        .with_slice(
            slice("dns-1", "dns")
                .udp_port("dns", 5353)
                .port_with(Some("dns-tcp"), 5354, "TCP")
                .ready("192.0.2.21"),
        );
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(
        render(&t),
        ["198.51.100.53:53/tcp -> 192.0.2.21:5354", "198.51.100.53:53/udp -> 192.0.2.21:5353"]
    );
}

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

#[test]
fn sctp_port_is_reported_and_skipped_while_the_others_are_served() {
    let inputs = Inputs::default()
        .with_service(web().port(9000, 9000).protocol("SCTP"))
        .with_slice(web_slice().ready("192.0.2.21"));
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(render(&t), ["198.51.100.10:80/tcp -> 192.0.2.21:8080"]);
    assert_eq!(
        warnings(&t),
        ["Service default/web: port 9000: protocol SCTP is not supported (only TCP and UDP); the port is skipped"]
    );
}

#[test]
fn headless_service_makes_no_vip() {
    let inputs = Inputs::default()
        .with_service(service("db").headless().port(5432, 5432))
        .with_slice(slice("db-1", "db").port(5432).ready("192.0.2.21"));
    let t = translate(&inputs, &daemonset("node-a"));
    assert!(t.vips.is_empty());
    assert!(t.warnings.is_empty());
}

#[test]
fn external_name_service_makes_no_vip() {
    let inputs = Inputs::default()
        .with_service(service("ext").external_name("db.example.org").port(5432, 5432));
    let t = translate(&inputs, &daemonset("node-a"));
    assert!(t.vips.is_empty());
    assert!(t.warnings.is_empty());
}

#[test]
fn selector_less_service_is_served_from_its_hand_made_slices() {
    let inputs = Inputs::default()
        .with_service(service("legacy").no_selector().cluster_ip("198.51.100.20").port(80, 80))
        .with_slice(slice("legacy-manual", "legacy").port(8000).ready("192.0.2.40"));
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(render(&t), ["198.51.100.20:80/tcp -> 192.0.2.40:8000"]);
}

#[test]
fn slices_of_a_same_named_service_in_another_namespace_are_not_used() {
    let inputs = Inputs::default()
        .with_service(web())
        .with_slice(web_slice().ready("192.0.2.21"))
        .with_slice(slice("web-1", "web").namespace("other").port(8080).ready("192.0.2.99"));
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(render(&t), ["198.51.100.10:80/tcp -> 192.0.2.21:8080"]);
}

#[test]
fn a_service_without_endpoints_still_gets_its_vip_with_no_backend() {
    let t = translate(&Inputs::default().with_service(web()), &daemonset("node-a"));
    assert_eq!(render(&t), ["198.51.100.10:80/tcp -> "]);
}

// ---------------------------------------------------------------------------------------
// Endpoint conditions

#[test]
fn not_ready_endpoints_drain_while_ready_ones_take_new_flows() {
    let inputs = Inputs::default()
        .with_service(web())
        .with_slice(web_slice().ready("192.0.2.21").not_ready("192.0.2.22"));
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(render(&t), ["198.51.100.10:80/tcp -> 192.0.2.21:8080, 192.0.2.22:8080 draining"]);
}

#[test]
fn terminating_endpoints_drain_while_a_ready_one_is_left() {
    let inputs = Inputs::default()
        .with_service(web())
        .with_slice(web_slice().ready("192.0.2.21").terminating("192.0.2.22", true));
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(render(&t), ["198.51.100.10:80/tcp -> 192.0.2.21:8080, 192.0.2.22:8080 draining"]);
}

#[test]
fn serving_terminating_endpoints_take_new_flows_when_no_ready_one_is_left() {
    let inputs = Inputs::default().with_service(web()).with_slice(
        web_slice()
            .terminating("192.0.2.21", true)
            .terminating("192.0.2.22", false)
            .not_ready("192.0.2.23"),
    );
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(
        render(&t),
        ["198.51.100.10:80/tcp -> 192.0.2.21:8080, 192.0.2.22:8080 draining, 192.0.2.23:8080 draining"]
    );
}

#[test]
fn endpoints_without_conditions_count_as_ready() {
    let mut s = web_slice().ready("192.0.2.21").build();
    s.endpoints.as_mut().unwrap()[0].conditions = None;
    let t = translate(&Inputs::default().with_service(web()).with_slice(s), &daemonset("n"));
    assert_eq!(render(&t), ["198.51.100.10:80/tcp -> 192.0.2.21:8080"]);
}

#[test]
fn an_endpoint_listed_in_two_slices_counts_once_in_its_best_state() {
    let inputs = Inputs::default()
        .with_service(web())
        .with_slice(slice("web-1", "web").port(8080).not_ready("192.0.2.21"))
        .with_slice(slice("web-2", "web").port(8080).ready("192.0.2.21"));
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(render(&t), ["198.51.100.10:80/tcp -> 192.0.2.21:8080"]);
}

// ---------------------------------------------------------------------------------------
// NodePort, externalIPs, LoadBalancer ingress (DaemonSet mode)

fn node_a() -> crate::fixtures::NodeBuilder {
    node("node-a")
        .internal_ip("203.0.113.1")
        .external_ip("203.0.113.101")
        .internal_ip("2001:db8:3::1")
        .hostname("node-a.example.org")
}

#[test]
fn node_port_is_served_on_every_address_of_this_node_of_the_services_families() {
    let inputs = Inputs::default()
        .with_service(web().node_port_type().node_port(30080))
        .with_slice(web_slice().ready("192.0.2.21"))
        .with_node(node_a())
        .with_node(node("node-b").internal_ip("203.0.113.2"));
    let t = translate(&inputs, &daemonset("node-a"));
    // Single-stack IPv4: the node's IPv6 address gets no VIP; node-b's addresses neither.
    assert_eq!(
        render(&t),
        [
            "198.51.100.10:80/tcp -> 192.0.2.21:8080",
            "203.0.113.1:30080/tcp -> 192.0.2.21:8080",
            "203.0.113.101:30080/tcp -> 192.0.2.21:8080",
        ]
    );
    assert_eq!(t.vips[1].kind, VipKind::NodePort);
}

#[test]
fn dual_stack_node_port_is_served_on_both_families_of_the_node() {
    let inputs = Inputs::default()
        .with_service(
            service("web")
                .cluster_ips(&["198.51.100.10", "2001:db8:10::a"])
                .node_port_type()
                .port(80, 8080)
                .node_port(30080),
        )
        .with_slice(web_slice().ready("192.0.2.21"))
        .with_slice(slice("web-v6", "web").ipv6().port(8080).ready("2001:db8:2::21"))
        .with_node(node_a());
    let t = translate(&inputs, &daemonset("node-a"));
    let node_ports: Vec<String> = render(&t).into_iter().filter(|l| l.contains(":30080")).collect();
    assert_eq!(
        node_ports,
        [
            "203.0.113.1:30080/tcp -> 192.0.2.21:8080",
            "203.0.113.101:30080/tcp -> 192.0.2.21:8080",
            "[2001:db8:3::1]:30080/tcp -> [2001:db8:2::21]:8080",
        ]
    );
}

#[test]
fn a_missing_node_object_is_reported_once_and_only_node_ports_are_lost() {
    let inputs =
        Inputs::default().with_service(web().node_port_type().node_port(30080)).with_service(
            service("api")
                .cluster_ip("198.51.100.11")
                .node_port_type()
                .port(81, 8081)
                .node_port(30081),
        );
    let t = translate(&inputs, &daemonset("node-x"));
    assert_eq!(render(&t), ["198.51.100.10:80/tcp -> ", "198.51.100.11:81/tcp -> "]);
    assert_eq!(warnings(&t).len(), 1);
    assert!(warnings(&t)[0].starts_with("Node node-x: this node has no Node object"));
}

#[test]
fn external_ips_become_vips_on_the_service_port() {
    let inputs = Inputs::default()
        .with_service(web().external_ips(&["203.0.113.50"]))
        .with_slice(web_slice().ready("192.0.2.21"));
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(
        render(&t),
        ["198.51.100.10:80/tcp -> 192.0.2.21:8080", "203.0.113.50:80/tcp -> 192.0.2.21:8080"]
    );
    assert_eq!(t.vips[1].kind, VipKind::ExternalIp);
}

#[test]
fn an_external_ip_of_another_family_is_reported() {
    let inputs = Inputs::default().with_service(web().external_ips(&["2001:db8::50"]));
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(render(&t), ["198.51.100.10:80/tcp -> "]);
    assert_eq!(
        warnings(&t),
        ["Service default/web: spec.externalIPs: 2001:db8::50 is not of the Service's IP families (IPv4); it is skipped"]
    );
}

#[test]
fn load_balancer_ingress_ips_become_vips() {
    let inputs = Inputs::default()
        .with_service(web().load_balancer().ingress(&["192.0.2.10"]))
        .with_slice(web_slice().ready("192.0.2.21"));
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(
        render(&t),
        ["192.0.2.10:80/tcp -> 192.0.2.21:8080", "198.51.100.10:80/tcp -> 192.0.2.21:8080"]
    );
    assert_eq!(t.vips[0].kind, VipKind::LoadBalancer);
}

#[test]
fn ingress_of_another_class_is_served_unless_that_load_balancer_proxies_it() {
    let direct = web().load_balancer().lb_class("other.example/lb").ingress(&["192.0.2.10"]);
    let proxied = service("api")
        .cluster_ip("198.51.100.11")
        .port(80, 8080)
        .load_balancer()
        .lb_class("other.example/lb")
        .ingress(&["192.0.2.11"])
        .ingress_mode("Proxy");
    let mine_proxied = service("own")
        .cluster_ip("198.51.100.12")
        .port(80, 8080)
        .load_balancer()
        .ingress(&["192.0.2.12"])
        .ingress_mode("Proxy");
    let inputs =
        Inputs::default().with_service(direct).with_service(proxied).with_service(mine_proxied);
    let t = translate(&inputs, &daemonset("node-a"));
    let addrs: Vec<String> = t.vips.iter().map(|v| vip_name(&v.spec)).collect();
    assert_eq!(
        addrs,
        [
            "192.0.2.10:80/tcp",
            "192.0.2.12:80/tcp",
            "198.51.100.10:80/tcp",
            "198.51.100.11:80/tcp",
            "198.51.100.12:80/tcp",
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Traffic policies

fn spread_slice() -> crate::fixtures::SliceBuilder {
    web_slice()
        .ready("192.0.2.21")
        .on("node-a")
        .ready("192.0.2.22")
        .on("node-b")
        .ready("192.0.2.23")
}

#[test]
fn internal_traffic_policy_local_keeps_only_this_nodes_endpoints_for_the_cluster_ip() {
    let inputs = Inputs::default()
        .with_service(web().internal_local().external_ips(&["203.0.113.50"]))
        .with_slice(spread_slice());
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(
        render(&t),
        [
            "198.51.100.10:80/tcp -> 192.0.2.21:8080",
            "203.0.113.50:80/tcp -> 192.0.2.21:8080, 192.0.2.22:8080, 192.0.2.23:8080",
        ]
    );
}

#[test]
fn external_traffic_policy_local_restricts_node_port_external_ip_and_ingress_but_not_cluster_ip() {
    let inputs = Inputs::default()
        .with_service(
            web()
                .load_balancer()
                .node_port(30080)
                .external_local()
                .external_ips(&["203.0.113.50"])
                .ingress(&["192.0.2.10"]),
        )
        .with_slice(spread_slice())
        .with_node(node("node-a").internal_ip("203.0.113.1"));
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(
        render(&t),
        [
            "192.0.2.10:80/tcp -> 192.0.2.21:8080",
            "198.51.100.10:80/tcp -> 192.0.2.21:8080, 192.0.2.22:8080, 192.0.2.23:8080",
            "203.0.113.1:30080/tcp -> 192.0.2.21:8080",
            "203.0.113.50:80/tcp -> 192.0.2.21:8080",
        ]
    );
}

#[test]
fn local_policy_without_a_local_endpoint_does_not_fall_back_to_other_nodes() {
    let inputs = Inputs::default()
        .with_service(web().internal_local())
        .with_slice(web_slice().ready("192.0.2.22").on("node-b"));
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(render(&t), ["198.51.100.10:80/tcp -> "]);
}

#[test]
fn local_policy_falls_back_to_this_nodes_terminating_endpoints() {
    let inputs = Inputs::default().with_service(web().internal_local()).with_slice(
        web_slice().terminating("192.0.2.21", true).on("node-a").ready("192.0.2.22").on("node-b"),
    );
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(render(&t), ["198.51.100.10:80/tcp -> 192.0.2.21:8080"]);
}

// ---------------------------------------------------------------------------------------
// Affinity and source ranges

#[test]
fn session_affinity_client_ip_uses_the_kubernetes_default_timeout() {
    let t = translate(&Inputs::default().with_service(web().affinity(None)), &daemonset("n"));
    assert_eq!(t.vips[0].spec.affinity_timeout_s, Some(10_800));
    let t = translate(&Inputs::default().with_service(web()), &daemonset("n"));
    assert_eq!(t.vips[0].spec.affinity_timeout_s, None);
}

#[test]
fn session_affinity_timeout_is_taken_and_kept_within_the_api_limits() {
    let t = translate(&Inputs::default().with_service(web().affinity(Some(60))), &daemonset("n"));
    assert_eq!(t.vips[0].spec.affinity_timeout_s, Some(60));
    let t = translate(
        &Inputs::default().with_service(web().affinity(Some(1_000_000))),
        &daemonset("n"),
    );
    assert_eq!(t.vips[0].spec.affinity_timeout_s, Some(86_400));
}

#[test]
fn source_ranges_restrict_only_the_load_balancer_vips() {
    let inputs = Inputs::default().with_service(
        web()
            .load_balancer()
            .ingress(&["192.0.2.10"])
            .external_ips(&["203.0.113.50"])
            .source_ranges(&["203.0.113.0/25", " 198.51.100.7 ", "203.0.113.1/24"]),
    );
    let t = translate(&inputs, &daemonset("n"));
    let ranges: Vec<(String, Vec<String>)> = t
        .vips
        .iter()
        .map(|v| {
            (vip_name(&v.spec), v.spec.source_ranges.iter().map(ToString::to_string).collect())
        })
        .collect();
    assert_eq!(
        ranges,
        [
            (
                "192.0.2.10:80/tcp".to_string(),
                vec![
                    "198.51.100.7/32".to_string(),
                    "203.0.113.0/24".into(),
                    "203.0.113.0/25".into()
                ]
            ),
            ("198.51.100.10:80/tcp".to_string(), vec![]),
            ("203.0.113.50:80/tcp".to_string(), vec![]),
        ]
    );
}

#[test]
fn source_ranges_of_only_the_other_family_admit_nobody_of_this_one() {
    let inputs = Inputs::default().with_service(
        service("web")
            .cluster_ips(&["198.51.100.10", "2001:db8:10::a"])
            .port(80, 8080)
            .load_balancer()
            .ingress(&["192.0.2.10", "2001:db8::10"])
            .source_ranges(&["203.0.113.0/24"]),
    );
    let t = translate(&inputs, &daemonset("n"));
    let v6 = t.vips.iter().find(|v| v.spec.addr == "2001:db8::10".parse::<IpAddr>().unwrap());
    assert_eq!(v6.unwrap().spec.source_ranges, vec!["::/128".parse::<IpNet>().unwrap()]);
}

#[test]
fn an_unreadable_source_range_keeps_the_load_balancer_vips_out_and_is_reported() {
    let inputs = Inputs::default().with_service(
        web().load_balancer().ingress(&["192.0.2.10"]).source_ranges(&["203.0.113.0/24", "office"]),
    );
    let t = translate(&inputs, &daemonset("n"));
    assert_eq!(render(&t), ["198.51.100.10:80/tcp -> "]);
    assert_eq!(t.warnings.len(), 1);
    assert!(
        matches!(&t.warnings[0].problem, Problem::BadSourceRange { value } if value == "office")
    );
}

// ---------------------------------------------------------------------------------------
// Edge mode

fn edge_nodes(inputs: Inputs) -> Inputs {
    inputs
        .with_node(node("node-a").internal_ip("203.0.113.1").internal_ip("2001:db8:3::1"))
        .with_node(node("node-b").internal_ip("203.0.113.2"))
        .with_node(node("node-c").internal_ip("203.0.113.3").not_ready())
        .with_node(node("node-d").internal_ip("203.0.113.4").exclude_from_lb())
        .with_node(node("node-e").external_ip("198.51.100.5"))
}

fn lb_web() -> crate::fixtures::ServiceBuilder {
    web().load_balancer().node_port(30080).ingress(&["192.0.2.10"])
}

#[test]
fn edge_cluster_policy_sends_to_every_ready_nodes_node_port() {
    let inputs = edge_nodes(Inputs::default().with_service(lb_web()).with_slice(spread_slice()));
    let t = translate(&inputs, &edge(false));
    // node-c is NotReady (drains), node-d is excluded, node-e has no InternalIP.
    assert_eq!(
        render(&t),
        ["192.0.2.10:80/tcp -> 203.0.113.1:30080, 203.0.113.2:30080, 203.0.113.3:30080 draining"]
    );
}

#[test]
fn edge_local_policy_sends_only_to_nodes_hosting_a_ready_endpoint_weighted_by_their_count() {
    let slice = web_slice()
        .ready("192.0.2.21")
        .on("node-a")
        .ready("192.0.2.22")
        .on("node-a")
        .ready("192.0.2.23")
        .on("node-b")
        .not_ready("192.0.2.24")
        .on("node-c");
    let inputs =
        edge_nodes(Inputs::default().with_service(lb_web().external_local()).with_slice(slice));
    let t = translate(&inputs, &edge(false));
    assert_eq!(
        render(&t),
        ["192.0.2.10:80/tcp -> 203.0.113.1:30080 w2, 203.0.113.2:30080, 203.0.113.3:30080 draining"]
    );
}

#[test]
fn edge_with_routable_pods_sends_to_the_pods() {
    let inputs = edge_nodes(Inputs::default().with_service(lb_web()).with_slice(spread_slice()));
    let t = translate(&inputs, &edge(true));
    assert_eq!(
        render(&t),
        ["192.0.2.10:80/tcp -> 192.0.2.21:8080, 192.0.2.22:8080, 192.0.2.23:8080"]
    );
}

#[test]
fn edge_serves_only_load_balancers_of_its_class() {
    let ours = lb_web().lb_class("vipr.dev/lb");
    let other = service("api")
        .port(80, 8080)
        .load_balancer()
        .node_port(30081)
        .lb_class("other.example/lb")
        .ingress(&["192.0.2.11"]);
    let classless =
        service("db").port(5432, 5432).load_balancer().node_port(30082).ingress(&["192.0.2.12"]);
    let cluster_ip = service("int").cluster_ip("198.51.100.13").port(80, 80);
    let inputs = edge_nodes(
        Inputs::default()
            .with_service(ours)
            .with_service(other)
            .with_service(classless)
            .with_service(cluster_ip),
    );
    let names = |t: &Translation| t.vips.iter().map(|v| vip_name(&v.spec)).collect::<Vec<_>>();
    let t = translate(&inputs, &edge(false));
    assert_eq!(names(&t), ["192.0.2.10:80/tcp", "192.0.2.12:5432/tcp"], "default class");
    let not_default =
        Options { class: LbClass { name: "vipr.dev/lb".into(), default: false }, ..edge(false) };
    let t = translate(&inputs, &not_default);
    assert_eq!(names(&t), ["192.0.2.10:80/tcp"]);
}

#[test]
fn edge_without_a_node_port_reports_the_port() {
    let inputs =
        edge_nodes(Inputs::default().with_service(web().load_balancer().ingress(&["192.0.2.10"])));
    let t = translate(&inputs, &edge(false));
    assert!(t.vips.is_empty());
    assert!(matches!(t.warnings[..], [Warning { problem: Problem::NoNodePort { port: 80 }, .. }]));
}

#[test]
fn edge_ipv6_vip_goes_to_the_nodes_ipv6_internal_address() {
    let inputs = edge_nodes(Inputs::default().with_service(
        service("web").port(80, 8080).load_balancer().node_port(30080).ingress(&["2001:db8::10"]),
    ));
    let t = translate(&inputs, &edge(false));
    assert_eq!(render(&t), ["[2001:db8::10]:80/tcp -> [2001:db8:3::1]:30080"]);
}

// ---------------------------------------------------------------------------------------
// Bad objects, conflicts, determinism

#[test]
fn a_bad_cluster_ip_is_reported_and_the_rest_of_the_service_served() {
    let inputs = Inputs::default()
        .with_service(
            service("web").cluster_ips(&["198.51.100.300", "2001:db8:10::a"]).port(80, 8080),
        )
        .with_slice(slice("web-v6", "web").ipv6().port(8080).ready("2001:db8:2::21"));
    let t = translate(&inputs, &daemonset("n"));
    assert_eq!(render(&t), ["[2001:db8:10::a]:80/tcp -> [2001:db8:2::21]:8080"]);
    assert_eq!(
        warnings(&t),
        ["Service default/web: spec.clusterIPs: \"198.51.100.300\" is not an IP address; it is skipped"]
    );
}

#[test]
fn bad_endpoint_addresses_and_address_types_are_reported_with_the_slice() {
    let inputs = Inputs::default()
        .with_service(web())
        .with_slice(web_slice().ready("192.0.2.21").ready("pod-a").ready("2001:db8::1"))
        .with_slice(slice("web-fqdn", "web").address_type("FQDN").port(8080).ready("a.example"));
    let t = translate(&inputs, &daemonset("n"));
    assert_eq!(render(&t), ["198.51.100.10:80/tcp -> 192.0.2.21:8080"]);
    assert_eq!(
        warnings(&t),
        [
            "EndpointSlice default/web-1: endpoints[].addresses: \"pod-a\" is not an IP address; it is skipped",
            "EndpointSlice default/web-1: endpoints[].addresses: 2001:db8::1 is not of the slice's addressType IPv4; it is skipped",
            "EndpointSlice default/web-fqdn: addressType \"FQDN\" is not IPv4 or IPv6; the slice is skipped",
        ]
    );
}

#[test]
fn bad_ports_and_unknown_types_are_reported() {
    let inputs = Inputs::default()
        .with_service(web().port(70000, 80))
        .with_service(service("odd").type_("Balanced").port(80, 80));
    let t = translate(&inputs, &daemonset("n"));
    assert_eq!(render(&t), ["198.51.100.10:80/tcp -> "]);
    assert_eq!(
        warnings(&t),
        [
            "Service default/odd: spec.type \"Balanced\" is not one vipr knows; the Service is skipped",
            "Service default/web: port 70000 is out of range 1..=65535; it is skipped",
        ]
    );
}

#[test]
fn two_services_claiming_one_address_and_port_leave_it_to_the_first_by_name() {
    let a = service("alpha").port(80, 8080).external_ips(&["203.0.113.50"]);
    let b = service("beta").port(80, 9090).external_ips(&["203.0.113.50"]);
    let inputs = Inputs::default()
        .with_service(b)
        .with_service(a)
        .with_slice(slice("alpha-1", "alpha").port(8080).ready("192.0.2.21"))
        .with_slice(slice("beta-1", "beta").port(9090).ready("192.0.2.22"));
    let t = translate(&inputs, &daemonset("n"));
    assert_eq!(render(&t), ["203.0.113.50:80/tcp -> 192.0.2.21:8080"]);
    assert_eq!(
        warnings(&t),
        ["Service default/beta: 203.0.113.50:80/tcp is already served for Service default/alpha; this Service's claim is skipped"]
    );
}

#[test]
fn output_does_not_depend_on_the_order_of_the_inputs() {
    let services = vec![
        web().build(),
        service("api").cluster_ip("198.51.100.11").port(81, 8081).build(),
        service("dns").cluster_ip("198.51.100.53").udp_port("dns", 53, 53).build(),
    ];
    let slices = vec![
        slice("web-2", "web").port(8080).ready("192.0.2.29").build(),
        slice("web-1", "web").port(8080).ready("192.0.2.21").not_ready("192.0.2.25").build(),
        slice("api-1", "api").port(8081).ready("192.0.2.31").build(),
        slice("dns-1", "dns").udp_port("dns", 53).ready("192.0.2.53").build(),
    ];
    let forward =
        Inputs { services: services.clone(), endpoint_slices: slices.clone(), nodes: vec![] };
    let mut rs = services;
    rs.reverse();
    let mut rl = slices;
    rl.reverse();
    let backward = Inputs { services: rs, endpoint_slices: rl, nodes: vec![] };
    let opts = daemonset("n");
    assert_eq!(translate(&forward, &opts), translate(&backward, &opts));
    let keys: Vec<_> = translate(&forward, &opts).vips.iter().map(|v| v.spec.key()).collect();
    let mut sorted = keys.clone();
    sorted.sort_by_key(|k| (k.addr, k.port, k.proto));
    assert_eq!(keys, sorted);
    assert_eq!(keys.len(), 3);
}

#[test]
fn the_ring_cap_comes_from_the_options() {
    let opts = Options { ring_max: 1021, ..daemonset("n") };
    let t = translate(&Inputs::default().with_service(web()), &opts);
    assert_eq!(t.vips[0].spec.ring_max, 1021);
}

#[test]
fn a_v1beta1_slice_from_a_1_20_cluster_feeds_the_same_backends() {
    let beta: v1beta1::EndpointSlice = serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1beta1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["192.0.2.21"], "conditions": {"ready": true},
             "topology": {"kubernetes.io/hostname": "node-a"}},
            {"addresses": ["192.0.2.22"], "conditions": {"ready": true},
             "topology": {"kubernetes.io/hostname": "node-b"}}
        ],
        "ports": [{"port": 8080, "protocol": "TCP"}]
    }))
    .unwrap();
    let inputs = Inputs::default().with_service(web().internal_local()).with_slice(beta);
    let t = translate(&inputs, &daemonset("node-a"));
    assert_eq!(render(&t), ["198.51.100.10:80/tcp -> 192.0.2.21:8080"]);
}
