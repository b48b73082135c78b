//! A bounded map that keeps what is used: two generations of at most half the bound each.
//! When the newer generation fills, it becomes the older one and the older is dropped; a
//! hit in the older moves back to the newer. What a profile keeps hitting stays across the
//! turn (a wholesale clear would compute it all again), nothing is ever evicted by a
//! collision (as in a direct-mapped table, where two hot keys can keep replacing each
//! other), and memory stays flat for a target that keeps showing new keys.

use std::hash::Hash;

use foldhash::HashMap;

/// See the module documentation.
pub struct Generations<K, V> {
    new: HashMap<K, V>,
    old: HashMap<K, V>,
    half: usize,
}

impl<K: Hash + Eq + Copy, V> Generations<K, V> {
    /// A map of at most `bound` entries (at least 2).
    pub fn new(bound: usize) -> Generations<K, V> {
        Generations {
            new: HashMap::default(),
            old: HashMap::default(),
            half: (bound / 2).max(1),
        }
    }

    /// The entry of `key`, moved to the newer generation if it was in the older.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        if !self.new.contains_key(key)
            && let Some(v) = self.old.remove(key)
        {
            self.insert(*key, v);
        }
        self.new.get(key)
    }

    /// Add (or replace) an entry; true when that turned the generations over.
    pub fn insert(&mut self, key: K, value: V) -> bool {
        let turned = self.new.len() >= self.half && !self.new.contains_key(&key);
        if turned {
            self.old = std::mem::take(&mut self.new);
        }
        self.new.insert(key, value);
        turned
    }

    /// Keep the entries `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.new.retain(|k, v| keep(k, v));
        self.old.retain(|k, v| keep(k, v));
    }

    /// Entries held, in both generations.
    pub fn len(&self) -> usize {
        self.new.len() + self.old.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_keeps_what_is_used() {
        let mut c = Generations::new(8);
        c.insert(0u32, "hot");
        for k in 1..100u32 {
            c.insert(k, "cold");
            assert!(
                c.get(&0).is_some(),
                "the key used all along was dropped at {k}"
            );
            assert!(c.len() <= 8, "{} entries", c.len());
        }
        // A key not used since the last two turns is gone.
        assert!(c.get(&1).is_none());
        c.retain(|k, _| *k != 0);
        assert!(c.get(&0).is_none());
    }

    #[test]
    fn no_collisions_below_the_bound() {
        let mut c = Generations::new(4096);
        let keys: Vec<u64> = (0..2000u64)
            .map(|k| k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        for &k in &keys {
            c.insert(k, k);
        }
        assert!(keys.iter().all(|k| c.get(k) == Some(k)));
    }
}
