//! A bounded map with exact least-recently-used eviction, for the userspace conntrack and
//! affinity tables. Entries live in a slab (`Vec`) threaded by an intrusive doubly linked
//! list of indices, so a lookup, a touch and an eviction are O(1) and nothing allocates
//! once the slab has grown to capacity.

use core::hash::Hash;
use hashbrown::HashMap;

const NIL: u32 = u32::MAX;

struct Slot<K, V> {
    key: K,
    value: V,
    prev: u32,
    next: u32,
}

pub struct Lru<K, V> {
    index: HashMap<K, u32>,
    slots: Vec<Slot<K, V>>,
    free: Vec<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used: the next to be evicted.
    tail: u32,
    capacity: usize,
}

impl<K: Copy + Eq + Hash, V: Copy> Lru<K, V> {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Lru {
            index: HashMap::with_capacity(capacity.min(1 << 22)),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Looks `key` up without changing its recency.
    pub fn peek(&self, key: &K) -> Option<&V> {
        self.index.get(key).map(|&i| &self.slots[i as usize].value)
    }

    /// Looks `key` up and marks it most recently used.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let i = *self.index.get(key)?;
        self.touch(i);
        Some(&mut self.slots[i as usize].value)
    }

    /// Looks `key` up; an entry that fails `live` is removed and reported as a miss, a
    /// live one is marked most recently used.
    pub fn get_mut_live(&mut self, key: &K, live: impl FnOnce(&V) -> bool) -> Option<&mut V> {
        let i = *self.index.get(key)?;
        if !live(&self.slots[i as usize].value) {
            self.index.remove(key);
            self.unlink(i);
            self.free.push(i);
            return None;
        }
        self.touch(i);
        Some(&mut self.slots[i as usize].value)
    }

    /// Inserts or replaces `key`, making it most recently used. When the map is full, the
    /// least recently used entry is evicted and returned.
    pub fn insert(&mut self, key: K, value: V) -> Option<(K, V)> {
        if let Some(&i) = self.index.get(&key) {
            self.slots[i as usize].value = value;
            self.touch(i);
            return None;
        }
        let evicted = if self.index.len() >= self.capacity { self.pop_lru() } else { None };
        let slot = Slot { key, value, prev: NIL, next: NIL };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key, i);
        self.push_front(i);
        evicted
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.index.remove(key)?;
        self.unlink(i);
        self.free.push(i);
        Some(self.slots[i as usize].value)
    }

    /// Removes and returns the least recently used entry.
    pub fn pop_lru(&mut self) -> Option<(K, V)> {
        if self.tail == NIL {
            return None;
        }
        let i = self.tail;
        self.unlink(i);
        self.free.push(i);
        let slot = &self.slots[i as usize];
        self.index.remove(&slot.key);
        // The slot stays in the slab until reused; values are plain table entries (Copy).
        Some((slot.key, slot.value))
    }

    /// The least recently used entry, without removing it.
    pub fn peek_lru(&self) -> Option<(&K, &V)> {
        (self.tail != NIL).then(|| {
            let s = &self.slots[self.tail as usize];
            (&s.key, &s.value)
        })
    }

    /// Every entry, most recently used first.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        let mut i = self.head;
        core::iter::from_fn(move || {
            if i == NIL {
                return None;
            }
            let s = &self.slots[i as usize];
            i = s.next;
            Some((&s.key, &s.value))
        })
    }

    pub fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.free.clear();
        self.head = NIL;
        self.tail = NIL;
    }

    fn touch(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let s = &mut self.slots[i as usize];
            s.prev = NIL;
            s.next = old;
        }
        match old {
            NIL => self.tail = i,
            o => self.slots[o as usize].prev = i,
        }
        self.head = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn full_map_evicts_the_least_recently_used_entry() {
        let mut m = Lru::new(3);
        for k in 1..=3 {
            assert_eq!(m.insert(k, k * 10), None);
        }
        m.get_mut(&1); // 2 is now the oldest
        assert_eq!(m.insert(4, 40), Some((2, 20)));
        assert_eq!(m.peek(&2), None);
        assert_eq!(m.len(), 3);
        let order: Vec<_> = m.iter().map(|(k, _)| *k).collect();
        assert_eq!(order, vec![4, 1, 3]);
    }

    #[test]
    fn replacing_a_key_neither_grows_nor_evicts() {
        let mut m = Lru::new(2);
        m.insert(1, 1);
        m.insert(2, 2);
        assert_eq!(m.insert(1, 11), None);
        assert_eq!(m.len(), 2);
        assert_eq!(m.peek(&1), Some(&11));
        assert_eq!(m.peek_lru(), Some((&2, &2)));
    }

    proptest! {
        // The slab list must agree with a naive model under any mix of operations.
        #[test]
        fn behaves_like_a_naive_lru(ops in proptest::collection::vec((0u8..4, 0u16..20), 1..300)) {
            let cap = 5;
            let mut m = Lru::new(cap);
            let mut model: Vec<(u16, u16)> = Vec::new(); // front = most recent
            for (op, k) in ops {
                match op {
                    0 | 1 => {
                        let got = m.insert(k, k + 1);
                        let want = if let Some(p) = model.iter().position(|e| e.0 == k) {
                            model.remove(p);
                            None
                        } else if model.len() >= cap {
                            model.pop()
                        } else {
                            None
                        };
                        model.insert(0, (k, k + 1));
                        prop_assert_eq!(got, want);
                    }
                    2 => {
                        let got = m.get_mut(&k).copied();
                        let want = model.iter().position(|e| e.0 == k).map(|p| {
                            let e = model.remove(p);
                            model.insert(0, e);
                            e.1
                        });
                        prop_assert_eq!(got, want);
                    }
                    _ => {
                        let got = m.remove(&k);
                        let want = model.iter().position(|e| e.0 == k).map(|p| model.remove(p).1);
                        prop_assert_eq!(got, want);
                    }
                }
                let order: Vec<_> = m.iter().map(|(k, v)| (*k, *v)).collect();
                prop_assert_eq!(&order, &model);
            }
        }
    }
}
