use super::*;
use crate::fixtures::{service, ServiceBuilder};
use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};

fn pool(name: &str, cidrs: &[&str], ranges: &[(&str, &str)]) -> Pool {
    Pool {
        name: name.into(),
        cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        ranges: ranges.iter().map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap())).collect(),
    }
}

/// Two IPv4 addresses, 192.0.2.10 and .11, and a small IPv6 range.
fn ipam() -> Ipam {
    Ipam::new(
        vec![
            pool("public", &[], &[("192.0.2.10", "192.0.2.11")]),
            pool("v6", &[], &[("2001:db8::10", "2001:db8::11")]),
        ],
        LbClass::default(),
    )
}

fn lb(name: &str) -> ServiceBuilder {
    service(name).port(80, 8080).load_balancer()
}

/// Writes the planned statuses, as the controller would.
fn apply(services: &mut [Service], plan: &IpamPlan) {
    for u in &plan.status_updates {
        let svc = services.iter_mut().find(|s| ObjectRef::service(s) == u.service).unwrap();
        let ingress = u
            .ingress
            .iter()
            .map(|ip| LoadBalancerIngress { ip: Some(ip.to_string()), ..Default::default() })
            .collect();
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus { ingress: Some(ingress) }),
            ..Default::default()
        });
    }
}

fn events(plan: &IpamPlan) -> Vec<String> {
    plan.events.iter().map(ToString::to_string).collect()
}

fn status_of(services: &[Service], name: &str) -> Vec<IpAddr> {
    ingress_ips(services.iter().find(|s| s.metadata.name.as_deref() == Some(name)).unwrap())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_new_load_balancer_gets_the_first_free_address_in_its_status() {
    let mut ipam = ipam();
    let mut services = vec![lb("web").build()];
    let plan = ipam.reconcile(&services);
    assert_eq!(
        plan.status_updates,
        [StatusUpdate {
            service: ObjectRef::service(&services[0]),
            ingress: vec![ip("192.0.2.10")]
        }]
    );
    assert_eq!(
        events(&plan),
        ["Service default/web: IPAllocated: allocated 192.0.2.10 from pool \"public\""]
    );
    apply(&mut services, &plan);
    assert_eq!(ipam.holder(ip("192.0.2.10")), Some(&ObjectRef::service(&services[0])));
}

#[test]
fn reconcile_plans_nothing_once_its_plan_is_applied() {
    let mut ipam = ipam();
    let mut services = vec![lb("web").build(), lb("api").build()];
    let plan = ipam.reconcile(&services);
    apply(&mut services, &plan);
    assert_eq!(ipam.reconcile(&services), IpamPlan::default());
}

#[test]
fn only_load_balancers_of_our_class_get_addresses() {
    let services = vec![
        lb("mine").lb_class("vipr.dev/lb").build(),
        lb("other").lb_class("other.example/lb").build(),
        lb("classless").build(),
        service("internal").port(80, 80).build(),
        service("np").port(80, 80).node_port_type().build(),
    ];
    let mut default_class = ipam();
    let plan = default_class.reconcile(&services);
    let named: Vec<&str> = plan.status_updates.iter().map(|u| u.service.name.as_str()).collect();
    assert_eq!(named, ["classless", "mine"]);

    let mut not_default =
        Ipam::new(ipam().pools, LbClass { name: "vipr.dev/lb".into(), default: false });
    let plan = not_default.reconcile(&services);
    let named: Vec<&str> = plan.status_updates.iter().map(|u| u.service.name.as_str()).collect();
    assert_eq!(named, ["mine"]);
}

#[test]
fn a_requested_address_in_a_pool_is_honoured() {
    let mut ipam = ipam();
    let plan = ipam.reconcile(&[lb("web").lb_ip("192.0.2.11").build()]);
    assert_eq!(plan.status_updates[0].ingress, [ip("192.0.2.11")]);
    assert_eq!(plan.events[0].kind, EventKind::Allocated);
}

#[test]
fn a_requested_address_outside_every_pool_is_refused_with_a_warning_event() {
    let mut ipam = ipam();
    let services = vec![lb("web").lb_ip("198.51.100.1").build()];
    let plan = ipam.reconcile(&services);
    assert!(plan.status_updates.is_empty(), "no address, and the status is already empty");
    assert_eq!(
        events(&plan),
        ["Service default/web: RequestedIPUnavailable: requested 198.51.100.1 is in no pool (pools: public, v6)"]
    );
    assert!(plan.events[0].kind.is_warning());
    assert_eq!(ipam.reconcile(&services), IpamPlan::default(), "reported once");
}

#[test]
fn a_requested_address_held_by_another_service_is_refused() {
    let mut ipam = ipam();
    let mut services = vec![lb("alpha").created("2024-01-01T00:00:00Z").build()];
    let plan = ipam.reconcile(&services);
    apply(&mut services, &plan);
    services.push(lb("beta").lb_ip("192.0.2.10").created("2024-01-02T00:00:00Z").build());
    let plan = ipam.reconcile(&services);
    assert_eq!(
        events(&plan),
        ["Service default/beta: RequestedIPUnavailable: requested 192.0.2.10 is already allocated to Service default/alpha"]
    );
}

#[test]
fn an_unreadable_requested_address_is_refused() {
    let mut ipam = ipam();
    let plan = ipam.reconcile(&[lb("web").lb_ip("192.0.2.x").build()]);
    assert_eq!(plan.events[0].kind, EventKind::RequestedUnavailable);
    assert!(plan.events[0].message.contains("\"192.0.2.x\" is not an IP address"));
}

#[test]
fn an_exhausted_pool_is_reported_once_and_the_service_served_when_an_address_frees_up() {
    let mut ipam = ipam();
    let mut services = vec![
        lb("a").created("2024-01-01T00:00:00Z").build(),
        lb("b").created("2024-01-02T00:00:00Z").build(),
        lb("c").created("2024-01-03T00:00:00Z").build(),
    ];
    let plan = ipam.reconcile(&services);
    apply(&mut services, &plan);
    assert_eq!(
        events(&plan)[2],
        "Service default/c: IPPoolExhausted: no free IPv4 address left (pools: public, v6)"
    );
    assert!(ipam.reconcile(&services).events.is_empty(), "not repeated");

    services.remove(0);
    let plan = ipam.reconcile(&services);
    assert_eq!(
        events(&plan),
        ["Service default/c: IPAllocated: allocated 192.0.2.10 from pool \"public\""]
    );
}

#[test]
fn a_deleted_service_releases_its_address() {
    let mut ipam = ipam();
    let mut services = vec![lb("web").build()];
    let plan = ipam.reconcile(&services);
    apply(&mut services, &plan);
    let plan = ipam.reconcile(&[]);
    assert_eq!(plan, IpamPlan::default(), "no status or event for an object that is gone");
    assert_eq!(ipam.holder(ip("192.0.2.10")), None);
    assert_eq!(ipam.allocations().count(), 0);
}

#[test]
fn a_service_being_deleted_releases_its_address() {
    let mut ipam = ipam();
    let mut services = vec![lb("web").build()];
    let plan = ipam.reconcile(&services);
    apply(&mut services, &plan);
    services[0].metadata.deletion_timestamp = Some(Time("2024-01-01T00:00:00Z".parse().unwrap()));
    let plan = ipam.reconcile(&services);
    assert_eq!(plan.events[0].kind, EventKind::Released);
    assert_eq!(ipam.holder(ip("192.0.2.10")), None);
}

#[test]
fn a_type_change_releases_the_address_and_clears_the_status() {
    let mut ipam = ipam();
    let mut services = vec![lb("web").build()];
    let plan = ipam.reconcile(&services);
    apply(&mut services, &plan);
    services[0].spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    let plan = ipam.reconcile(&services);
    assert_eq!(
        plan.status_updates,
        [StatusUpdate { service: ObjectRef::service(&services[0]), ingress: vec![] }]
    );
    assert_eq!(
        events(&plan),
        ["Service default/web: IPReleased: released 192.0.2.10: the Service is no longer a LoadBalancer of this class"]
    );
    apply(&mut services, &plan);
    assert!(status_of(&services, "web").is_empty());
    assert_eq!(ipam.reconcile(&services), IpamPlan::default());
}

#[test]
fn a_changed_requested_address_moves_the_service_to_it() {
    let mut ipam = ipam();
    let mut services = vec![lb("web").build()];
    let plan = ipam.reconcile(&services);
    apply(&mut services, &plan);
    services[0].spec.as_mut().unwrap().load_balancer_ip = Some("192.0.2.11".into());
    let plan = ipam.reconcile(&services);
    assert_eq!(plan.status_updates[0].ingress, [ip("192.0.2.11")]);
    let kinds: Vec<EventKind> = plan.events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Released, EventKind::Allocated]);
    assert_eq!(ipam.holder(ip("192.0.2.10")), None);
}

#[test]
fn a_restarted_ipam_adopts_the_statuses_before_handing_out_anything() {
    let mut first = ipam();
    let mut services = vec![lb("zeta").created("2024-01-01T00:00:00Z").build()];
    let plan = first.reconcile(&services);
    apply(&mut services, &plan);
    assert_eq!(status_of(&services, "zeta"), [ip("192.0.2.10")]);

    // A new Service, older and sorting first, arrives while the controller restarts.
    services.push(lb("alpha").created("2023-01-01T00:00:00Z").build());
    let mut restarted = ipam();
    let plan = restarted.reconcile(&services);
    assert_eq!(
        events(&plan),
        ["Service default/alpha: IPAllocated: allocated 192.0.2.11 from pool \"public\""]
    );
    apply(&mut services, &plan);
    assert_eq!(status_of(&services, "zeta"), [ip("192.0.2.10")], "kept, no event, no write");
    assert_eq!(plan.status_updates.len(), 1);
}

#[test]
fn two_statuses_claiming_one_address_leave_it_to_the_older_service() {
    let services = vec![
        lb("young").created("2024-06-01T00:00:00Z").ingress(&["192.0.2.10"]).build(),
        lb("old").created("2024-01-01T00:00:00Z").ingress(&["192.0.2.10"]).build(),
    ];
    let mut ipam = ipam();
    let plan = ipam.reconcile(&services);
    assert_eq!(ipam.holder(ip("192.0.2.10")).unwrap().name, "old");
    assert_eq!(
        plan.status_updates,
        [StatusUpdate {
            service: ObjectRef::service(&services[0]),
            ingress: vec![ip("192.0.2.11")]
        }]
    );
}

#[test]
fn a_status_address_outside_the_pools_is_replaced_by_a_pool_address() {
    let services = vec![lb("web").ingress(&["198.51.100.99"]).build()];
    let mut ipam = ipam();
    let plan = ipam.reconcile(&services);
    assert_eq!(plan.status_updates[0].ingress, [ip("192.0.2.10")]);
}

#[test]
fn a_dual_stack_service_gets_one_address_per_family() {
    let mut ipam = ipam();
    let plan = ipam.reconcile(&[lb("web").ip_families(&["IPv6", "IPv4"]).build()]);
    assert_eq!(plan.status_updates[0].ingress, [ip("192.0.2.10"), ip("2001:db8::10")]);
}

#[test]
fn a_family_without_any_pool_is_left_out_rather_than_reported() {
    let mut ipam = Ipam::new(vec![pool("public", &["192.0.2.8/30"], &[])], LbClass::default());
    let plan = ipam.reconcile(&[lb("web").ip_families(&["IPv4", "IPv6"]).build()]);
    // A /30 without its network and broadcast addresses: .9 is the first.
    assert_eq!(plan.status_updates[0].ingress, [ip("192.0.2.9")]);
    let plan = ipam.reconcile(&[lb("v6only").ip_families(&["IPv6"]).build()]);
    assert_eq!(plan.events[0].kind, EventKind::PoolExhausted);
    assert!(plan.events[0]
        .message
        .starts_with("no pool has addresses of the Service's IP families"));
}

#[test]
fn an_address_that_left_every_pool_is_released_and_replaced() {
    let mut old = ipam();
    let mut services = vec![lb("web").build()];
    let plan = old.reconcile(&services);
    apply(&mut services, &plan);
    // The pool was shrunk in config; the restarted controller starts from statuses.
    let mut new =
        Ipam::new(vec![pool("public", &[], &[("192.0.2.11", "192.0.2.11")])], LbClass::default());
    let plan = new.reconcile(&services);
    assert_eq!(plan.status_updates[0].ingress, [ip("192.0.2.11")]);
}
