//! Verified tokens, remembered by the blake3 hash of the token until their `exp`, so a
//! token seen again costs a hash and a lookup instead of a signature check. Bounded: a full
//! shard first drops what has expired, then an arbitrary entry (the next request with that
//! token is verified again, nothing worse).
use std::{collections::HashMap, sync::Arc, sync::Mutex};

use super::Principal;

pub type Key = [u8; 32];

const SHARDS: usize = 16;

pub fn key(token: &str) -> Key {
    *blake3::hash(token.as_bytes()).as_bytes()
}

struct Entry {
    principal: Arc<Principal>,
    /// Unix seconds after which the token is no longer valid.
    until: u64,
}

pub struct Cache {
    /// Sharded by the hash's first byte, so requests on different cores rarely wait on
    /// each other.
    shards: Vec<Mutex<HashMap<Key, Entry>>>,
    per_shard: usize,
}

impl Cache {
    pub fn new(entries: usize) -> Self {
        Cache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: entries.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, k: &Key) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.shards[k[0] as usize % SHARDS]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, k: &Key, now: u64) -> Option<Arc<Principal>> {
        let mut shard = self.shard(k);
        match shard.get(k) {
            Some(e) if e.until > now => Some(e.principal.clone()),
            Some(_) => {
                shard.remove(k);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, k: Key, principal: Arc<Principal>, until: u64, now: u64) {
        if until <= now {
            return;
        }
        let mut shard = self.shard(&k);
        if shard.len() >= self.per_shard && !shard.contains_key(&k) {
            shard.retain(|_, e| e.until > now);
            if shard.len() >= self.per_shard
                && let Some(victim) = shard.keys().next().copied()
            {
                shard.remove(&victim);
            }
        }
        shard.insert(k, Entry { principal, until });
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.len()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Arc<Principal> {
        Arc::new(Principal {
            issuer: "i".into(),
            subject: s.into(),
            groups: vec![],
            claims: Default::default(),
        })
    }

    #[test]
    fn entries_live_until_exp_and_the_cache_stays_bounded() {
        let c = Cache::new(32);
        let k = key("token-a");
        c.insert(k, p("alice"), 100, 10);
        assert_eq!(
            c.get(&k, 99).map(|p| p.subject.clone()).as_deref(),
            Some("alice")
        );
        assert!(c.get(&k, 100).is_none(), "expired at exp");
        assert!(c.get(&key("token-b"), 10).is_none());
        // Already expired: never stored.
        c.insert(key("old"), p("x"), 5, 10);
        assert!(c.get(&key("old"), 1).is_none());
        for i in 0..10_000 {
            c.insert(key(&format!("t{i}")), p("x"), 1_000, 10);
        }
        assert!(c.len() <= 32, "{} entries", c.len());
        // Expired entries make room first.
        let c = Cache::new(16);
        for i in 0..16 {
            c.insert(key(&format!("s{i}")), p("x"), 20, 10);
        }
        c.insert(key("fresh"), p("y"), 1_000, 30);
        assert!(c.get(&key("fresh"), 31).is_some());
    }
}
