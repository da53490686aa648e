//! One test per validation rule: each asserts the exact `line:column` and the
//! key words of the message.

mod common;

use common::{assert_error, errors, ok, one_error, ONE_VIP};
use vipr_config::{parse, Diagnostic, Diagnostics};

// ---- syntax and types --------------------------------------------------

#[test]
fn a_yaml_syntax_error_is_one_diagnostic_at_the_parser_position() {
    let text = "vips:\n  - address: [192.0.2.10\n    port: 80\n  - port: 0\n";
    let found = errors(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].contains("YAML syntax error"), "{found:?}");
    assert!(found[0].starts_with("3:"), "{found:?}");
}

#[test]
fn a_top_level_that_is_not_a_mapping_is_an_error() {
    one_error("- 192.0.2.10\n", "1:1", &["config", "expected a mapping", "a list"]);
}

#[test]
fn a_string_where_a_port_belongs_is_a_type_error() {
    one_error(
        "vips:\n  - address: 192.0.2.10\n    port: eighty\n",
        "3:11",
        &["vip port", "expected an integer 1..=65535", "found \"eighty\""],
    );
}

#[test]
fn a_quoted_number_where_a_port_belongs_asks_to_remove_the_quotes() {
    one_error(
        "vips:\n  - address: 192.0.2.10\n    port: \"80\"\n",
        "3:11",
        &["expected an integer", "quoted", "remove the quotes"],
    );
}

#[test]
fn a_list_where_a_mapping_belongs_is_a_type_error() {
    one_error("conntrack: [1, 2]\n", "1:12", &["conntrack", "expected a mapping", "found a list"]);
}

#[test]
fn a_mapping_where_a_list_belongs_is_a_type_error() {
    one_error(
        "vips:\n  address: 192.0.2.10\n",
        "2:3",
        &["vips", "expected a list", "found a mapping"],
    );
}

#[test]
fn an_unknown_key_suggests_the_close_one_and_lists_the_allowed() {
    one_error(
        "vips:\n  - adress: 192.0.2.10\n    port: 80\n",
        "2:5",
        &[
            "unknown key \"adress\" in vip",
            "did you mean \"address\"?",
            "allowed: name, address, port, protocol",
        ],
    );
}

#[test]
fn an_unknown_key_far_from_any_known_one_only_lists_the_allowed() {
    let found = errors("listen: 192.0.2.1\n");
    assert_eq!(found.len(), 1);
    assert_error(&found[0], "1:1", &["unknown key \"listen\"", "allowed: instance"]);
    assert!(!found[0].contains("did you mean"), "{found:?}");
}

#[test]
fn a_camel_case_key_suggests_the_snake_case_one() {
    one_error(
        &format!("{ONE_VIP}    sourceRanges: [198.51.100.0/24]\n"),
        "4:5",
        &["unknown key \"sourceRanges\"", "did you mean \"source_ranges\"?"],
    );
}

#[test]
fn a_duplicate_key_points_at_the_second_and_names_the_first_line() {
    one_error(
        "vips:\n  - address: 192.0.2.10\n    port: 80\n    port: 81\n",
        "4:5",
        &["duplicate key \"port\" in vip", "first given at line 3"],
    );
}

#[test]
fn a_missing_required_key_is_reported_at_its_mapping() {
    one_error("vips:\n  - port: 80\n", "2:5", &["vip is missing required key \"address\""]);
}

#[test]
fn an_unknown_word_suggests_the_close_one() {
    one_error(
        &format!("{ONE_VIP}    protocol: tpc\n"),
        "4:15",
        &["unknown protocol \"tpc\"", "did you mean \"tcp\"?", "allowed: tcp, udp"],
    );
}

// ---- addresses and ports -----------------------------------------------

#[test]
fn a_bad_vip_address_is_reported_with_its_text() {
    one_error(
        "vips:\n  - address: 192.0.2.300\n    port: 80\n",
        "2:14",
        &["vip address \"192.0.2.300\"", "not a valid IPv4 or IPv6 address"],
    );
}

#[test]
fn a_cidr_where_an_address_belongs_says_so() {
    one_error(
        "snat:\n  addresses: [198.51.100.0/24]\n",
        "2:15",
        &["snat address", "not a valid", "not a CIDR"],
    );
}

#[test]
fn a_bad_cidr_is_reported_with_its_text() {
    one_error(
        &format!("{ONE_VIP}    source_ranges: [198.51.100.0/33]\n"),
        "4:21",
        &["source range \"198.51.100.0/33\"", "not a valid CIDR"],
    );
}

#[test]
fn a_cidr_with_host_bits_set_suggests_the_network() {
    one_error(
        &format!("{ONE_VIP}    source_ranges: [198.51.100.1/24]\n"),
        "4:21",
        &["198.51.100.1/24 has host bits set; did you mean 198.51.100.0/24?"],
    );
}

#[test]
fn port_zero_is_out_of_range() {
    one_error(
        "vips:\n  - address: 192.0.2.10\n    port: 0\n",
        "3:11",
        &["vip port 0 is out of range; allowed 1..=65535"],
    );
}

#[test]
fn a_backend_port_above_65535_is_out_of_range() {
    let text =
        format!("{ONE_VIP}    backends:\n      - address: 192.0.2.21\n        port: 65536\n");
    one_error(&text, "6:15", &["backend port 65536 is out of range; allowed 1..=65535"]);
}

#[test]
fn backend_weight_zero_points_to_draining() {
    let text = format!(
        "{ONE_VIP}    backends:\n      - address: 192.0.2.21\n        port: 80\n        weight: 0\n"
    );
    one_error(&text, "7:17", &["backend weight 0", "allowed 1..=65535", "state: draining"]);
}

// ---- VIPs and backends -------------------------------------------------

#[test]
fn a_duplicate_vip_is_reported_at_the_second_and_names_the_first_line() {
    let text = "vips:\n  - address: 192.0.2.10\n    port: 80\n  - address: 192.0.2.10\n    port: 80\n    protocol: tcp\n";
    one_error(text, "4:5", &["duplicate vip 192.0.2.10:80/tcp", "first defined at line 2"]);
}

#[test]
fn the_same_address_and_port_with_another_protocol_is_a_different_vip() {
    let config = ok("vips:\n  - {address: 192.0.2.10, port: 53}\n  - {address: 192.0.2.10, port: 53, protocol: udp}\n");
    assert_eq!(config.vips.len(), 2);
}

#[test]
fn a_duplicate_ipv6_vip_prints_the_address_in_brackets() {
    let text = "vips:\n  - {address: \"2001:db8::10\", port: 443}\n  - {address: \"2001:db8::10\", port: 443}\n";
    one_error(text, "3:6", &["duplicate vip [2001:db8::10]:443/tcp", "line 2"]);
}

#[test]
fn a_duplicate_vip_name_points_at_the_second_name() {
    let text = "vips:\n  - name: web\n    address: 192.0.2.10\n    port: 80\n  - name: web\n    address: 192.0.2.11\n    port: 80\n";
    one_error(text, "5:11", &["vip name \"web\" is used twice", "first used at line 2"]);
}

#[test]
fn a_duplicate_backend_within_a_vip_names_the_first_line() {
    let text = format!(
        "{ONE_VIP}    backends:\n      - {{address: 192.0.2.21, port: 80}}\n      - {{address: 192.0.2.21, port: 80}}\n"
    );
    one_error(&text, "6:10", &["duplicate backend 192.0.2.21:80", "first listed at line 5"]);
}

#[test]
fn the_same_backend_in_two_vips_is_fine() {
    let text = "vips:\n  - {address: 192.0.2.10, port: 80, backends: [{address: 192.0.2.21, port: 80}]}\n  - {address: 192.0.2.11, port: 80, backends: [{address: 192.0.2.21, port: 80}]}\n";
    assert_eq!(ok(text).vips[1].backends.len(), 1);
}

#[test]
fn a_backend_of_another_family_than_its_vip_is_an_error() {
    let text =
        format!("{ONE_VIP}    backends:\n      - address: \"2001:db8::21\"\n        port: 80\n");
    one_error(
        &text,
        "5:18",
        &["backend 2001:db8::21 is IPv6", "vip 192.0.2.10 is IPv4", "same family"],
    );
}

#[test]
fn a_source_range_of_another_family_than_its_vip_is_an_error() {
    one_error(
        &format!("{ONE_VIP}    source_ranges: [198.51.100.0/24, \"2001:db8::/32\"]\n"),
        "4:38",
        &["source range 2001:db8::/32 is IPv6", "vip address 192.0.2.10 is IPv4"],
    );
}

#[test]
fn an_snat_vip_without_an_snat_address_of_its_family_is_an_error() {
    let text = "snat:\n  addresses: [\"2001:db8:1::1\"]\nvips:\n  - address: 192.0.2.10\n    port: 80\n    mode: snat\n";
    one_error(
        text,
        "6:11",
        &["192.0.2.10:80/tcp uses mode snat", "no IPv4 address", "snat.addresses"],
    );
}

#[test]
fn an_snat_vip_with_an_snat_address_of_its_family_is_fine() {
    let text = "snat:\n  addresses: [198.51.100.1]\nvips:\n  - address: 192.0.2.10\n    port: 80\n    mode: snat\n";
    assert_eq!(ok(text).vips[0].mode, vipr_config::Mode::Snat);
}

#[test]
fn a_bad_snat_address_is_not_also_blamed_on_the_snat_vips() {
    let text = "snat:\n  addresses: [198.51.100.300]\nvips:\n  - address: 192.0.2.10\n    port: 80\n    mode: snat\n";
    one_error(text, "2:15", &["snat address \"198.51.100.300\""]);
}

#[test]
fn an_affinity_timeout_over_a_day_is_out_of_range() {
    let text = format!("{ONE_VIP}    session_affinity:\n      client_ip:\n        timeout: 2d\n");
    one_error(
        &text,
        "6:18",
        &["session affinity timeout 2d is out of range", "allowed 1s..=86400s"],
    );
}

#[test]
fn session_affinity_without_client_ip_is_an_error() {
    let text = format!("{ONE_VIP}    session_affinity: {{}}\n");
    one_error(&text, "4:23", &["session_affinity is missing required key \"client_ip\""]);
}

#[test]
fn ring_max_outside_its_range_is_an_error() {
    one_error(
        &format!("{ONE_VIP}    ring_max: 5\n"),
        "4:15",
        &["ring_max 5 is out of range; allowed 7..=1048573"],
    );
}

#[test]
fn a_vip_without_backends_is_valid() {
    let config = ok(&format!("{ONE_VIP}    backends: []\n"));
    assert!(config.vips[0].backends.is_empty());
}

// ---- durations ---------------------------------------------------------

#[test]
fn an_unparsable_duration_says_how_to_write_one() {
    one_error(
        "conntrack:\n  timeouts:\n    udp: 30 seconds\n",
        "3:10",
        &["conntrack timeout udp \"30 seconds\" is not a duration", "30s, 10m, 2h or 1h30m"],
    );
}

#[test]
fn a_zero_duration_is_an_error() {
    one_error(
        "conntrack:\n  timeouts:\n    tcp_syn: 0s\n",
        "3:14",
        &["conntrack timeout tcp_syn is zero", "at least 1s"],
    );
}

#[test]
fn a_zero_integer_duration_is_an_error() {
    one_error("conntrack:\n  timeouts:\n    tcp_closing: 0\n", "3:18", &["tcp_closing is zero"]);
}

// ---- pools -------------------------------------------------------------

#[test]
fn a_pool_with_no_cidr_or_range_is_empty() {
    one_error(
        "pools:\n  - name: public\n",
        "2:5",
        &["pool \"public\" is empty", "cidrs or ranges"],
    );
}

#[test]
fn overlapping_pools_name_both_pools_and_both_locations() {
    let text = "pools:\n  - name: a\n    cidrs: [203.0.113.0/28]\n  - name: b\n    ranges: [\"203.0.113.10-203.0.113.20\"]\n";
    one_error(
        text,
        "5:14",
        &[
            "pool \"b\" 203.0.113.10-203.0.113.20 overlaps pool \"a\" 203.0.113.0/28",
            "at line 3, column 13",
        ],
    );
}

#[test]
fn overlapping_entries_within_one_pool_are_an_error() {
    let text = "pools:\n  - name: a\n    cidrs: [203.0.113.0/28, 203.0.113.8/29]\n";
    one_error(
        text,
        "3:29",
        &["pool \"a\": 203.0.113.8/29 overlaps 203.0.113.0/28", "line 3, column 13", "same pool"],
    );
}

#[test]
fn adjacent_pools_and_pools_of_different_families_do_not_overlap() {
    let text = "pools:\n  - {name: a, cidrs: [203.0.113.0/28]}\n  - {name: b, cidrs: [203.0.113.16/28]}\n  - {name: c, cidrs: [\"::/96\"]}\n  - {name: d, ranges: [\"203.0.113.32-203.0.113.32\"]}\n";
    assert_eq!(ok(text).pools.len(), 4);
}

#[test]
fn a_backwards_range_is_an_error() {
    one_error(
        "pools:\n  - name: a\n    ranges: [\"203.0.113.20-203.0.113.10\"]\n",
        "3:14",
        &["runs backwards", "first 203.0.113.20 is greater than last 203.0.113.10"],
    );
}

#[test]
fn a_range_mixing_families_is_an_error() {
    one_error(
        "pools:\n  - name: a\n    ranges: [\"203.0.113.1-2001:db8::1\"]\n",
        "3:14",
        &["mixes IPv4 and IPv6"],
    );
}

#[test]
fn a_range_without_a_dash_says_how_to_write_one() {
    one_error(
        "pools:\n  - name: a\n    ranges: [203.0.113.1]\n",
        "3:14",
        &["pool range \"203.0.113.1\" is not a range", "FIRST-LAST"],
    );
}

#[test]
fn a_duplicate_pool_name_is_an_error() {
    let text =
        "pools:\n  - {name: a, cidrs: [203.0.113.0/28]}\n  - {name: a, cidrs: [203.0.113.16/28]}\n";
    one_error(text, "3:12", &["pool name \"a\" is used twice", "line 2"]);
}

// ---- dataplane, interfaces, snat, conntrack ------------------------------

#[test]
fn a_dpdk_section_with_another_dataplane_is_an_error() {
    let text = "dataplane: xdp\ndpdk:\n  ports: [\"0000:01:00.0\"]\n";
    one_error(text, "2:1", &["dpdk section is only allowed with `dataplane: dpdk`", "xdp"]);
}

#[test]
fn a_dpdk_section_with_the_default_dataplane_is_an_error() {
    one_error("dpdk:\n  ports: [\"0000:01:00.0\"]\n", "1:1", &["only allowed with"]);
}

#[test]
fn a_dpdk_section_with_the_dpdk_dataplane_is_read() {
    let config = ok("dataplane: dpdk\ndpdk:\n  ports: [\"0000:01:00.0\"]\n");
    let dpdk = config.dpdk.expect("dpdk section");
    assert_eq!(dpdk.ports, ["0000:01:00.0"]);
    assert_eq!(dpdk.mbufs, 8191);
    assert!(dpdk.eal_args.is_empty());
}

#[test]
fn dpdk_needs_at_least_one_port_and_mbufs_in_range() {
    let found = errors("dataplane: dpdk\ndpdk:\n  ports: []\n  mbufs: 100\n");
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_error(&found[0], "3:10", &["dpdk ports is empty"]);
    assert_error(&found[1], "4:10", &["dpdk mbufs 100 is out of range", "1023..=1048575"]);
}

#[test]
fn an_unknown_dataplane_is_not_also_blamed_on_the_dpdk_section() {
    let text = "dataplane: dpkd\ndpdk:\n  ports: [\"0000:01:00.0\"]\n";
    one_error(text, "1:12", &["unknown dataplane \"dpkd\"", "did you mean \"dpdk\"?"]);
}

#[test]
fn an_invalid_instance_name_says_what_is_allowed() {
    one_error(
        "instance: Edge_1\n",
        "1:11",
        &["instance \"Edge_1\"", "1 to 32 characters from a-z, 0-9 and '-'"],
    );
}

#[test]
fn interface_names_follow_linux_rules() {
    let text = "interfaces:\n  - name: a-very-long-ifname\n  - name: eth/1\n  - name: \"\"\n";
    let found = errors(text);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert_error(&found[0], "2:11", &["\"a-very-long-ifname\"", "at most 15"]);
    assert_error(&found[1], "3:11", &["\"eth/1\"", "'/'"]);
    assert_error(&found[2], "4:11", &["interface name \"\" is empty"]);
}

#[test]
fn cores_must_match_queues_one_to_one() {
    one_error(
        "dataplane: afxdp\ninterfaces:\n  - name: eth1\n    queues: [0, 1]\n    cores: [1]\n",
        "5:12",
        &["cores lists 1 core(s) but there are 2 queue(s)"],
    );
}

#[test]
fn an_interface_listed_twice_is_an_error() {
    one_error(
        "interfaces:\n  - name: eth1\n  - name: eth1\n",
        "3:5",
        &["interface \"eth1\" is listed twice", "line 2"],
    );
}

#[test]
fn an_empty_interface_list_is_allowed() {
    assert!(ok("interfaces: []\n").interfaces.is_empty());
}

#[test]
fn snat_ports_must_be_an_ordered_range_of_valid_ports() {
    let found = errors("snat:\n  ports: 2000-1000\n");
    assert_eq!(found.len(), 1);
    assert_error(&found[0], "2:10", &["MIN 2000 is greater than MAX 1000"]);
    one_error("snat:\n  ports: 0-100\n", "2:10", &["0 is out of range", "1..=65535"]);
    one_error("snat:\n  ports: 1024\n", "2:10", &["not a port range", "MIN-MAX"]);
}

#[test]
fn snat_ports_are_read_as_min_and_max() {
    let snat = ok("snat:\n  ports: 20000-29999\n").snat;
    assert_eq!((snat.port_min, snat.port_max), (20000, 29999));
}

#[test]
fn conntrack_capacity_outside_its_range_is_an_error() {
    one_error(
        "conntrack:\n  capacity: 100000001\n",
        "2:13",
        &["conntrack capacity 100000001 is out of range", "1..=100000000"],
    );
}

#[test]
fn a_second_yaml_document_is_an_error() {
    one_error(&format!("{ONE_VIP}---\n{ONE_VIP}"), "4:1", &["one YAML document"]);
}

// ---- all at once ---------------------------------------------------------

#[test]
fn several_mistakes_are_all_reported_in_position_order() {
    let text = "\
dataplane: xdp
snat:
  ports: 9-1
pools:
  - name: empty
vips:
  - name: web
    adress: 192.0.2.10
    port: 0
    backends:
      - address: 192.0.2.21
        port: eighty
        weight: 0
  - address: 192.0.2.11
    port: 80
    source_ranges: [198.51.100.1/24]
    protocol: tcp
    protocol: udp
conntrack:
  timeouts:
    udp: 0
";
    let found = errors(text);
    assert_eq!(found.len(), 9, "{found:#?}");
    assert_error(&found[0], "3:10", &["MIN 9 is greater than MAX 1"]);
    assert_error(&found[1], "5:5", &["pool \"empty\" is empty"]);
    assert_error(&found[2], "8:5", &["unknown key \"adress\"", "did you mean \"address\"?"]);
    assert_error(&found[3], "9:11", &["vip port 0 is out of range"]);
    assert_error(&found[4], "12:15", &["found \"eighty\""]);
    assert_error(&found[5], "13:17", &["backend weight 0"]);
    assert_error(&found[6], "16:21", &["has host bits set; did you mean 198.51.100.0/24?"]);
    assert_error(&found[7], "18:5", &["duplicate key \"protocol\""]);
    assert_error(&found[8], "21:10", &["conntrack timeout udp is zero"]);
}

#[test]
fn diagnostics_display_one_per_line_as_file_line_column_message() {
    let diags =
        parse("tutorial.yaml", "vips:\n  - address: 192.0.2.10\n    port: 0\n  - port: 1\n")
            .unwrap_err();
    assert_eq!(
        diags.to_string(),
        "tutorial.yaml:3:11: vip port 0 is out of range; allowed 1..=65535\n\
         tutorial.yaml:4:5: vip is missing required key \"address\""
    );
    let first: &Diagnostic = &diags.0[0];
    assert_eq!(first.to_string().lines().count(), 1);
    let boxed: Box<dyn std::error::Error> = Box::new(diags.clone());
    assert!(boxed.to_string().contains("tutorial.yaml:3:11"));
    let _: &Diagnostics = &diags;
}

// ---- kubernetes --------------------------------------------------------

#[test]
fn a_kubernetes_section_needs_a_mode() {
    one_error("kubernetes:\n  node_name: node-a\n", "2:3", &["mode"]);
}

#[test]
fn an_unknown_kubernetes_mode_suggests_the_right_one() {
    one_error(
        "kubernetes:\n  mode: deamonset\n",
        "2:9",
        &["unknown kubernetes mode \"deamonset\"", "did you mean \"daemonset\"", "edge"],
    );
}

#[test]
fn pod_routable_belongs_to_edge_mode_and_node_name_to_daemonset_mode() {
    one_error(
        "kubernetes:\n  mode: daemonset\n  pod_routable: true\n",
        "3:3",
        &["`mode: edge` only"],
    );
    one_error(
        "kubernetes:\n  mode: edge\n  node_name: node-a\n",
        "3:3",
        &["`mode: daemonset` only"],
    );
}

#[test]
fn a_token_file_without_an_api_server_is_an_error() {
    one_error(
        "kubernetes:\n  mode: edge\n  token_file: /etc/vipr/token\n",
        "3:3",
        &["token_file needs api_server"],
    );
}

#[test]
fn kubernetes_names_and_urls_are_checked() {
    one_error(
        "kubernetes:\n  mode: daemonset\n  node_name: Node_A\n",
        "3:14",
        &["node_name \"Node_A\"", "not a valid Kubernetes name"],
    );
    one_error(
        "kubernetes:\n  mode: edge\n  api_server: 10.0.0.1:6443\n",
        "3:15",
        &["api_server \"10.0.0.1:6443\" is not a URL"],
    );
    one_error(
        "kubernetes:\n  mode: edge\n  default_class: yes\n",
        "3:18",
        &["default_class", "true, false"],
    );
}

#[test]
fn a_minimal_kubernetes_section_takes_the_defaults() {
    let config = ok("kubernetes:\n  mode: edge\n");
    let k8s = config.kubernetes.unwrap();
    assert_eq!(k8s.mode, vipr_config::KubernetesMode::Edge);
    assert_eq!(k8s.load_balancer_class, "vipr.dev/lb");
    assert!(k8s.default_class && !k8s.pod_routable);
    assert_eq!((k8s.api_server, k8s.node_name), (None, None));
    assert_eq!(k8s.lease_namespace, "kube-system");
}
