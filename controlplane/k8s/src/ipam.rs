//! LoadBalancer address management: which address each LoadBalancer Service of our
//! class gets, as a pure state machine over the Services it is shown.
//!
//! # Contract
//!
//! [`Ipam::reconcile`] takes every Service currently known (by reference, in any order)
//! and returns an [`IpamPlan`]: the `status.loadBalancer.ingress` lists to write (only
//! where the Service's status differs; an empty list clears it) and the Events to emit.
//! It is idempotent: once the plan is applied, the next call with the same Services
//! plans nothing. A write that failed is planned again on the next call, since the
//! status still differs.
//!
//! - Ours: type LoadBalancer and our [`LbClass`] (or no class when we are the default),
//!   not being deleted.
//! - No double allocation, also across restarts: before anything new is handed out,
//!   addresses already in the Services' statuses are adopted (oldest Service first,
//!   when two claim one address), provided they are in a pool and fit the request.
//! - `spec.loadBalancerIP` asks for one address: granted when it is in a pool and free,
//!   otherwise a `RequestedUnavailable` Event and no address (never a different one).
//! - Otherwise one address per IP family of the Service (`spec.ipFamilies`, default
//!   IPv4) for which a pool has addresses: the first free one, pools in their order.
//! - Released when the Service goes away, stops being ours, asks for another address,
//!   or its address left every pool; a Service still there gets its status cleared
//!   and an Event. Released addresses are free for the next allocation.
//! - A Service that cannot be served gets one Warning Event per cause, not one per call.

use crate::object::{LbClass, ObjectRef};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use vipr_config::Pool;

/// Why an Event is emitted; `reason` is its `reason` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    Allocated,
    Released,
    PoolExhausted,
    RequestedUnavailable,
}

impl EventKind {
    pub fn reason(self) -> &'static str {
        match self {
            EventKind::Allocated => "IPAllocated",
            EventKind::Released => "IPReleased",
            EventKind::PoolExhausted => "IPPoolExhausted",
            EventKind::RequestedUnavailable => "RequestedIPUnavailable",
        }
    }

    /// Events of type `Warning` (the others are `Normal`).
    pub fn is_warning(self) -> bool {
        matches!(self, EventKind::PoolExhausted | EventKind::RequestedUnavailable)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamEvent {
    pub service: ObjectRef,
    pub kind: EventKind,
    pub message: String,
}

impl fmt::Display for IpamEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.service, self.kind.reason(), self.message)
    }
}

/// The `status.loadBalancer.ingress` a Service should have: one entry per address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusUpdate {
    pub service: ObjectRef,
    pub ingress: Vec<IpAddr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpamPlan {
    pub status_updates: Vec<StatusUpdate>,
    pub events: Vec<IpamEvent>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Allocation {
    addrs: Vec<IpAddr>,
    /// The `spec.loadBalancerIP` it was made for.
    requested: Option<IpAddr>,
}

#[derive(Debug)]
pub struct Ipam {
    pools: Vec<Pool>,
    class: LbClass,
    holders: BTreeMap<IpAddr, ObjectRef>,
    allocations: BTreeMap<ObjectRef, Allocation>,
    /// The last unserved cause reported per Service.
    reported: BTreeMap<ObjectRef, EventKind>,
}

/// What one of our Services asks for.
struct Want<'a> {
    svc: &'a Service,
    me: ObjectRef,
    requested: Result<Option<IpAddr>, String>,
    families: Vec<bool>,
    status: Vec<IpAddr>,
}

impl Ipam {
    pub fn new(pools: Vec<Pool>, class: LbClass) -> Self {
        Ipam {
            pools,
            class,
            holders: BTreeMap::new(),
            allocations: BTreeMap::new(),
            reported: BTreeMap::new(),
        }
    }

    /// The addresses each Service holds, by Service.
    pub fn allocations(&self) -> impl Iterator<Item = (&ObjectRef, &[IpAddr])> {
        self.allocations.iter().map(|(k, a)| (k, a.addrs.as_slice()))
    }

    /// Who holds `addr`.
    pub fn holder(&self, addr: IpAddr) -> Option<&ObjectRef> {
        self.holders.get(&addr)
    }

    /// `services`: every Service known, in any order (a store's, without copies).
    pub fn reconcile<'s>(&mut self, services: impl IntoIterator<Item = &'s Service>) -> IpamPlan {
        let services: Vec<&Service> = services.into_iter().collect();
        let mut plan = IpamPlan::default();
        let existing: BTreeMap<ObjectRef, &Service> =
            services.iter().map(|&s| (ObjectRef::service(s), s)).collect();
        let mut wants: Vec<Want> = services
            .iter()
            .filter(|s| self.class.owns(s) && s.metadata.deletion_timestamp.is_none())
            .map(|&s| want(s))
            .collect();
        // Oldest first: when two Services claim one address, the older keeps it.
        wants.sort_by(|a, b| created(a.svc).cmp(&created(b.svc)).then_with(|| a.me.cmp(&b.me)));
        let wanted: BTreeMap<&ObjectRef, &Want> = wants.iter().map(|w| (&w.me, w)).collect();

        // Release what no longer fits.
        let held: Vec<ObjectRef> = self.allocations.keys().cloned().collect();
        for me in held {
            let alloc = &self.allocations[&me];
            let why = match wanted.get(&me) {
                None => Some("the Service is no longer a LoadBalancer of this class".to_owned()),
                Some(w) if w.requested.as_ref().ok().copied().flatten() != alloc.requested => {
                    Some("spec.loadBalancerIP changed".to_owned())
                }
                Some(_) => alloc
                    .addrs
                    .iter()
                    .find(|&&a| !self.in_pool(a))
                    .map(|a| format!("{a} is no longer in any pool")),
            };
            let Some(why) = why else { continue };
            let alloc = self.release(&me);
            if let Some(svc) = existing.get(&me) {
                if !wanted.contains_key(&me) && !ingress_ips(svc).is_empty() {
                    plan.status_updates.push(StatusUpdate { service: me.clone(), ingress: vec![] });
                }
                plan.events.push(IpamEvent {
                    service: me.clone(),
                    kind: EventKind::Released,
                    message: format!("released {}: {why}", join(&alloc.addrs)),
                });
            }
        }
        self.reported.retain(|me, _| wanted.contains_key(me));

        // Adopt the addresses statuses already show, before handing out anything new.
        for w in &wants {
            if self.allocations.contains_key(&w.me) {
                continue;
            }
            let Ok(requested) = w.requested else { continue };
            let mut addrs = Vec::new();
            for &a in &w.status {
                let fits = match requested {
                    Some(r) => a == r,
                    None => w.families.contains(&a.is_ipv4()),
                };
                let family_taken = addrs.iter().any(|b: &IpAddr| b.is_ipv4() == a.is_ipv4());
                if fits && !family_taken && self.in_pool(a) && !self.holders.contains_key(&a) {
                    addrs.push(a);
                }
            }
            if !addrs.is_empty() {
                self.hold(&w.me, Allocation { addrs, requested });
            }
        }

        // Allocate for the rest.
        for w in &wants {
            if !self.allocations.contains_key(&w.me) {
                if let Some(event) = self.allocate(w) {
                    if event.kind == EventKind::Allocated {
                        self.reported.remove(&w.me);
                        plan.events.push(event);
                    } else if self.reported.get(&w.me) != Some(&event.kind) {
                        self.reported.insert(w.me.clone(), event.kind);
                        plan.events.push(event);
                    }
                }
            }
            let desired = self.allocations.get(&w.me).map(|a| a.addrs.clone()).unwrap_or_default();
            if desired != w.status {
                plan.status_updates.push(StatusUpdate { service: w.me.clone(), ingress: desired });
            }
        }
        plan
    }

    fn allocate(&mut self, w: &Want) -> Option<IpamEvent> {
        let event = |kind, message| Some(IpamEvent { service: w.me.clone(), kind, message });
        let requested = match &w.requested {
            Ok(r) => *r,
            Err(text) => {
                return event(
                    EventKind::RequestedUnavailable,
                    format!("spec.loadBalancerIP {text:?} is not an IP address"),
                );
            }
        };
        if let Some(r) = requested {
            if !self.in_pool(r) {
                return event(
                    EventKind::RequestedUnavailable,
                    format!("requested {r} is in no pool (pools: {})", self.pool_names()),
                );
            }
            if let Some(holder) = self.holders.get(&r) {
                let message = format!("requested {r} is already allocated to {holder}");
                return event(EventKind::RequestedUnavailable, message);
            }
            self.hold(&w.me, Allocation { addrs: vec![r], requested });
            return event(EventKind::Allocated, format!("allocated {r} from {}", self.pool_of(r)));
        }
        let mut addrs = Vec::new();
        let mut exhausted = Vec::new();
        for &v4 in &w.families {
            let family = if v4 { "IPv4" } else { "IPv6" };
            if !self.pools.iter().any(|p| p.addresses().next().is_some_and(|a| a.is_ipv4() == v4)) {
                // No pool of this family at all: a dual-stack Service gets what there is.
                continue;
            }
            match self.first_free(v4) {
                Some(a) => addrs.push(a),
                None => exhausted.push(family),
            }
        }
        if !exhausted.is_empty() || addrs.is_empty() {
            let families = if exhausted.is_empty() {
                "no pool has addresses of the Service's IP families".to_owned()
            } else {
                format!("no free {} address left", exhausted.join(" or "))
            };
            // Keep nothing half-allocated: all families or a clear reason.
            let message = format!("{families} (pools: {})", self.pool_names());
            return event(EventKind::PoolExhausted, message);
        }
        let from: Vec<String> =
            addrs.iter().map(|&a| format!("{a} from {}", self.pool_of(a))).collect();
        self.hold(&w.me, Allocation { addrs, requested: None });
        event(EventKind::Allocated, format!("allocated {}", from.join(", ")))
    }

    fn first_free(&self, v4: bool) -> Option<IpAddr> {
        self.pools.iter().find_map(|p| {
            p.addresses().find(|a| a.is_ipv4() == v4 && !self.holders.contains_key(a))
        })
    }

    fn in_pool(&self, a: IpAddr) -> bool {
        self.pools.iter().any(|p| p.contains(a))
    }

    fn pool_of(&self, a: IpAddr) -> String {
        self.pools
            .iter()
            .find(|p| p.contains(a))
            .map_or_else(String::new, |p| format!("pool {:?}", p.name))
    }

    fn pool_names(&self) -> String {
        let names: Vec<&str> = self.pools.iter().map(|p| p.name.as_str()).collect();
        if names.is_empty() {
            "none configured".to_owned()
        } else {
            names.join(", ")
        }
    }

    fn hold(&mut self, me: &ObjectRef, mut alloc: Allocation) {
        alloc.addrs.sort_by_key(|a| (!a.is_ipv4(), *a));
        for &a in &alloc.addrs {
            self.holders.insert(a, me.clone());
        }
        self.allocations.insert(me.clone(), alloc);
    }

    fn release(&mut self, me: &ObjectRef) -> Allocation {
        let alloc = self.allocations.remove(me).expect("released only what is held");
        for a in &alloc.addrs {
            self.holders.remove(a);
        }
        alloc
    }
}

fn want(svc: &Service) -> Want<'_> {
    let spec = svc.spec.as_ref();
    let requested = match spec.and_then(|s| s.load_balancer_ip.as_deref()).map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => text.parse::<IpAddr>().map(Some).map_err(|_| text.to_owned()),
    };
    let listed: Vec<bool> = spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(true),
            "IPv6" => Some(false),
            _ => None,
        })
        .collect();
    let cluster: Vec<bool> = spec
        .and_then(|s| s.cluster_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| ip.is_ipv4())
        .collect();
    let mut families = if !listed.is_empty() { listed } else { cluster };
    if families.is_empty() {
        families.push(true);
    }
    let mut seen = BTreeSet::new();
    families.retain(|f| seen.insert(*f));
    Want { svc, me: ObjectRef::service(svc), requested, families, status: ingress_ips(svc) }
}

/// The IPs in a Service's `status.loadBalancer.ingress`, in order.
pub fn ingress_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

fn created(svc: &Service) -> Option<&Time> {
    svc.metadata.creation_timestamp.as_ref()
}

fn join(addrs: &[IpAddr]) -> String {
    addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests;
