//! Userspace connection tracking: one entry per direction of a flow (see
//! `vipr_abi::FlowEntry`), exact LRU eviction at a fixed capacity, per-state timeouts,
//! and the sessionAffinity ClientIP table.
//!
//! Capacity counts flows; each flow holds two entries (forward and reply), so the entry
//! table is twice the capacity. When an entry is evicted its peer goes with it, so a
//! half flow never holds a SNAT port. Expired entries are dropped lazily on lookup and
//! by eviction; no sweeper runs on the packet path.

use crate::lru::Lru;
use vipr_abi::*;

pub struct Conntrack {
    flows: Lru<FlowKey, FlowEntry>,
    affinity: Lru<AffinityKey, AffinityEntry>,
    /// Live flows pushed out by new ones because the table was full.
    pub evictions: u64,
}

#[inline]
fn live(e: &FlowEntry, proto: u8, now: u64, s: &Settings) -> bool {
    now.saturating_sub(e.last_seen_ns) <= s.timeout_ns(proto, e.tcp_state)
}

impl Conntrack {
    pub fn new(capacity_flows: usize) -> Self {
        let capacity_flows = capacity_flows.max(1);
        Conntrack {
            flows: Lru::new(capacity_flows * 2),
            affinity: Lru::new(capacity_flows),
            evictions: 0,
        }
    }

    /// Flows tracked (entry pairs), including expired ones not yet swept.
    pub fn len(&self) -> usize {
        self.flows.len() / 2
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.flows.capacity() / 2
    }

    /// The live entry for `key`, marked recently used. An expired entry is removed.
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, now: u64, s: &Settings) -> Option<&mut FlowEntry> {
        self.flows.get_mut_live(key, |e| live(e, key.proto, now, s))
    }

    /// Whether a live entry holds `key`, without touching its recency.
    #[inline]
    pub fn is_live(&self, key: &FlowKey, now: u64, s: &Settings) -> bool {
        self.flows.peek(key).is_some_and(|e| live(e, key.proto, now, s))
    }

    pub fn peek(&self, key: &FlowKey) -> Option<&FlowEntry> {
        self.flows.peek(key)
    }

    /// Tracks a new flow: its forward entry under `key` and its reply entry under the
    /// forward entry's peer key. Evicts least recently used flows when full.
    pub fn insert(
        &mut self,
        key: FlowKey,
        forward: FlowEntry,
        reply: FlowEntry,
        now: u64,
        s: &Settings,
    ) {
        let reply_key = forward.peer_key(&key);
        for (k, e) in [(key, forward), (reply_key, reply)] {
            if let Some((old_key, old)) = self.flows.insert(k, e) {
                // Take the evicted entry's other direction with it.
                let peer = old.peer_key(&old_key);
                if peer != key && peer != reply_key {
                    self.flows.remove(&peer);
                }
                if live(&old, old_key.proto, now, s) {
                    self.evictions += 1;
                }
            }
        }
    }

    /// Sets the TCP state of the entry under `key`, if present.
    pub fn set_state(&mut self, key: &FlowKey, state: u8) {
        if let Some(e) = self.flows.get_mut_live(key, |_| true) {
            e.tcp_state = state;
        }
    }

    pub fn remove(&mut self, key: &FlowKey) -> Option<FlowEntry> {
        self.flows.remove(key)
    }

    /// Every entry, most recently used first.
    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &FlowEntry)> {
        self.flows.iter()
    }

    /// The backend a client is pinned to on a VIP, if its affinity has not timed out.
    #[inline]
    pub fn affinity(&mut self, key: &AffinityKey, now: u64, timeout_s: u32) -> Option<u32> {
        let timeout = timeout_s as u64 * 1_000_000_000;
        self.affinity.get_mut_live(key, |e| now.saturating_sub(e.last_seen_ns) <= timeout).map(
            |e| {
                e.last_seen_ns = now;
                e.backend_id
            },
        )
    }

    pub fn set_affinity(&mut self, key: AffinityKey, backend_id: u32, now: u64) {
        self.affinity.insert(key, AffinityEntry { last_seen_ns: now, backend_id, _pad: 0 });
    }

    pub fn affinity_len(&self) -> usize {
        self.affinity.len()
    }

    pub fn clear(&mut self) {
        self.flows.clear();
        self.affinity.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        let mut k = FlowKey::zeroed();
        k.src = addr_v4([198, 51, 100, 7]);
        k.dst = addr_v4([192, 0, 2, 10]);
        k.src_port = port.to_be();
        k.dst_port = 80u16.to_be();
        k.proto = PROTO_TCP;
        k.family = FAMILY_V4;
        k
    }

    fn pair(k: &FlowKey, state: u8, now: u64) -> (FlowEntry, FlowEntry) {
        let fwd = FlowEntry {
            last_seen_ns: now,
            nat_src: k.src,
            nat_dst: addr_v4([192, 0, 2, 21]),
            nat_src_port: k.src_port,
            nat_dst_port: 8080u16.to_be(),
            vip_id: 0,
            backend_id: 1,
            direction: FLOW_DIR_FORWARD,
            tcp_state: state,
            flags: 0,
            _pad: 0,
        };
        let rev = FlowEntry {
            nat_src: k.dst,
            nat_dst: k.src,
            nat_src_port: k.dst_port,
            nat_dst_port: k.src_port,
            direction: FLOW_DIR_REPLY,
            ..fwd
        };
        (fwd, rev)
    }

    #[test]
    fn a_flow_is_found_from_both_directions() {
        let s = Settings::default();
        let mut ct = Conntrack::new(4);
        let k = key(1000);
        let (f, r) = pair(&k, CT_SYN, 0);
        ct.insert(k, f, r, 0, &s);
        assert_eq!(ct.len(), 1);
        let reply_key = f.peer_key(&k);
        assert_eq!(ct.lookup(&reply_key, 1, &s).unwrap().direction, FLOW_DIR_REPLY);
        assert_eq!(ct.lookup(&k, 1, &s).unwrap().direction, FLOW_DIR_FORWARD);
    }

    #[test]
    fn syn_entries_expire_sooner_than_established_ones() {
        let s = Settings::default();
        let mut ct = Conntrack::new(4);
        let (a, b) = (key(1), key(2));
        let (f, r) = pair(&a, CT_SYN, 0);
        ct.insert(a, f, r, 0, &s);
        let (f, r) = pair(&b, CT_ESTABLISHED, 0);
        ct.insert(b, f, r, 0, &s);
        let later = s.tcp_syn_timeout_ns + 1;
        assert!(ct.lookup(&a, later, &s).is_none());
        assert!(ct.lookup(&b, later, &s).is_some());
    }

    #[test]
    fn full_table_evicts_the_oldest_flow_with_both_its_entries() {
        let s = Settings::default();
        let mut ct = Conntrack::new(2);
        for p in 1..=3 {
            let k = key(p);
            let (f, r) = pair(&k, CT_ESTABLISHED, p as u64);
            ct.insert(k, f, r, p as u64, &s);
        }
        assert_eq!(ct.len(), 2);
        assert_eq!(ct.evictions, 1);
        assert!(ct.peek(&key(1)).is_none());
        let (f1, _) = pair(&key(1), CT_ESTABLISHED, 1);
        assert!(
            ct.peek(&f1.peer_key(&key(1))).is_none(),
            "the evicted flow's reply entry is gone too"
        );
        assert!(ct.peek(&key(3)).is_some());
    }

    #[test]
    fn affinity_expires_after_its_timeout() {
        let mut ct = Conntrack::new(4);
        let k = AffinityKey {
            client: addr_v4([198, 51, 100, 7]),
            vip_id: 3,
            family: FAMILY_V4,
            _pad: [0; 3],
        };
        ct.set_affinity(k, 9, 0);
        assert_eq!(ct.affinity(&k, 10 * 1_000_000_000, 10), Some(9));
        assert_eq!(ct.affinity(&k, 21 * 1_000_000_000, 10), None);
    }
}
