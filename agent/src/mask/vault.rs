//! Reversible pseudonyms: what a pseudonym token stood for, kept in the agent's memory only,
//! per session, so the response of the same caller can get the original back.
//!
//! A session is one caller on one target (`Sessions::get`'s id: the verified token's issuer
//! and subject, or without a token the workload's uid and cgroup). Within it, the same value
//! always gives the same token (the key is derived from a random key made at start and the
//! session id), so a conversation sent again turn after turn shows the model the same
//! tokens; another caller, or another target, gets unrelated tokens and has no vault entry
//! to restore them from. Nothing survives a restart.
//!
//! Bounded three ways: sessions (the least recently used is dropped), entries and bytes per
//! vault (the oldest entries go first). A token whose entry is gone stays a token in the
//! response: the failure shows the pseudonym, never another value. Values are wiped when
//! their entry goes and when the vault is dropped; none is ever logged (`Debug` shows sizes).
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use zeroize::Zeroizing;

use super::PseudonymKey;

/// Entries one session's vault keeps.
pub const MAX_ENTRIES: usize = 1024;
/// Bytes of values (and tokens) one session's vault keeps.
pub const MAX_BYTES: usize = 256 * 1024;
/// Sessions kept at once; beyond, the least recently used is dropped with its vault.
pub const MAX_SESSIONS: usize = 1024;
/// A session unused this long is dropped when room is needed.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// The longest token `Action::Pseudonym` makes: `[`, a detector name (at most 64 bytes),
/// `:`, 12 hex digits, `]`.
pub const MAX_TOKEN: usize = 64 + 15;

/// Pseudonym token → original value, bounded.
pub struct Vault {
    map: HashMap<Box<[u8]>, Zeroizing<Vec<u8>>>,
    /// Tokens in the order they were recorded (oldest first), for eviction.
    order: VecDeque<Box<[u8]>>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("entries", &self.map.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl Default for Vault {
    fn default() -> Self {
        Vault::new(MAX_ENTRIES, MAX_BYTES)
    }
}

impl Vault {
    pub fn new(max_entries: usize, max_bytes: usize) -> Vault {
        Vault {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    /// Remembers that `token` stands for `value`. A token already known keeps its value (the
    /// same key gives the same token only for the same value); an entry larger than the
    /// whole vault is not kept.
    pub fn record(&mut self, token: &[u8], value: &[u8]) {
        let size = token.len() + value.len();
        if token.len() > MAX_TOKEN || size > self.max_bytes || self.max_entries == 0 {
            return;
        }
        if self.map.contains_key(token) {
            return;
        }
        while self.map.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(v) = self.map.remove(&old) {
                self.bytes -= old.len() + v.len();
            }
        }
        let token: Box<[u8]> = token.into();
        self.order.push_back(token.clone());
        self.map.insert(token, Zeroizing::new(value.to_vec()));
        self.bytes += size;
    }

    /// Records every entry of `other`, oldest first: a request masks into a vault of its own
    /// and hands it over once done, so the session's lock is held for the hand-over only,
    /// never while a body is scanned.
    pub fn absorb(&mut self, mut other: Vault) {
        while let Some(token) = other.order.pop_front() {
            if let Some(value) = other.map.remove(&token) {
                self.record(&token, &value);
            }
        }
    }

    /// The value `token` stands for.
    pub fn get(&self, token: &[u8]) -> Option<&[u8]> {
        self.map.get(token).map(|v| v.as_slice())
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes of tokens and values held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// `text` with every known token replaced by its value, and how many were. Values go in
    /// as they were found (in a JSON string the caller must escape them: see the response
    /// filter); unknown tokens stay.
    pub fn restore(&self, text: &[u8]) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(text.len());
        let mut n = 0;
        let mut at = 0;
        let mut from = 0;
        while let Some(k) = memchr::memchr(b'[', &text[from..]) {
            let open = from + k;
            let window = &text[open..text.len().min(open + MAX_TOKEN)];
            let hit = memchr::memchr(b']', window)
                .and_then(|close| self.get(&window[..=close]).map(|v| (close, v)));
            match hit {
                Some((close, v)) => {
                    out.extend_from_slice(&text[at..open]);
                    out.extend_from_slice(v);
                    n += 1;
                    at = open + close + 1;
                    from = at;
                }
                None => from = open + 1,
            }
        }
        out.extend_from_slice(&text[at..]);
        (out, n)
    }
}

/// One caller's pseudonym key and vault.
pub struct Session {
    pub key: PseudonymKey,
    pub vault: Mutex<Vault>,
    last_used: Mutex<Instant>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session")
    }
}

impl Session {
    /// A session no store keeps (one request's own): its vault lives as long as the request.
    pub fn ephemeral(key: PseudonymKey) -> Arc<Session> {
        Arc::new(Session {
            key,
            vault: Mutex::new(Vault::default()),
            last_used: Mutex::new(Instant::now()),
        })
    }
}

/// Every live session, bounded (see the module docs).
pub struct Sessions {
    master: Zeroizing<[u8; 32]>,
    map: Mutex<HashMap<Box<str>, Arc<Session>>>,
    max: usize,
    idle: Duration,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions")
    }
}

impl Sessions {
    /// A store with a fresh random master key (read once, at start).
    pub fn new() -> std::io::Result<Sessions> {
        use std::io::Read as _;
        let mut master = Zeroizing::new([0u8; 32]);
        std::fs::File::open("/dev/urandom")?.read_exact(&mut master[..])?;
        Ok(Sessions::with_master(master, MAX_SESSIONS, IDLE))
    }

    pub fn with_master(master: Zeroizing<[u8; 32]>, max: usize, idle: Duration) -> Sessions {
        Sessions {
            master,
            map: Mutex::new(HashMap::new()),
            max: max.max(1),
            idle,
        }
    }

    /// The session of `id`, made on first use. Its key depends only on the master key and
    /// `id`, so a session dropped for room comes back with the same tokens (and an empty
    /// vault).
    pub fn get(&self, id: &str) -> Arc<Session> {
        let now = Instant::now();
        // A poisoned lock only means another request panicked mid-update: the map is
        // still a map.
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(id) {
            *s.last_used.lock().unwrap_or_else(|e| e.into_inner()) = now;
            return s.clone();
        }
        if map.len() >= self.max {
            let last = |s: &Session| *s.last_used.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, s| now.duration_since(last(s)) < self.idle);
            if map.len() >= self.max
                && let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, s)| last(s))
                    .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        let key = blake3::keyed_hash(&self.master, id.as_bytes());
        let s = Session::ephemeral(PseudonymKey::new(*key.as_bytes()));
        map.insert(id.into(), s.clone());
        s
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restores_known_tokens_and_leaves_the_rest() {
        let mut v = Vault::default();
        v.record(b"[email:0123456789ab]", b"jane@example.com");
        let (out, n) = v.restore(b"to [email:0123456789ab], not [email:ffffffffffff] [x");
        assert_eq!(
            (out.as_slice(), n),
            (&b"to jane@example.com, not [email:ffffffffffff] [x"[..], 1)
        );
        let (out, n) = v.restore(b"[[email:0123456789ab]]");
        assert_eq!((out.as_slice(), n), (&b"[jane@example.com]"[..], 1));
    }

    #[test]
    fn is_bounded_by_entries_and_bytes_dropping_the_oldest() {
        let mut v = Vault::new(3, 1000);
        for i in 0..5u8 {
            v.record(format!("[t:{i}]").as_bytes(), &[b'a' + i; 10]);
        }
        assert_eq!(v.len(), 3);
        assert_eq!(v.get(b"[t:0]"), None);
        assert_eq!(v.get(b"[t:4]"), Some(&[b'e'; 10][..]));
        let mut v = Vault::new(100, 50);
        for i in 0..10u8 {
            v.record(format!("[t:{i}]").as_bytes(), &[b'x'; 10]);
            assert!(v.bytes() <= 50, "{}", v.bytes());
        }
        assert_eq!(v.len(), 3);
        // Larger than the whole vault: not kept, nothing evicted for it.
        v.record(b"[t:big]", &[b'y'; 60]);
        assert_eq!((v.len(), v.get(b"[t:big]")), (3, None));
        // A token already known keeps its first value.
        v.record(b"[t:9]", b"other");
        assert_eq!(v.get(b"[t:9]"), Some(&[b'x'; 10][..]));
        assert!(!format!("{v:?}").contains("xxxx"));
    }

    #[test]
    fn sessions_key_per_id_and_drop_the_least_recently_used() {
        let s = Sessions::with_master(Zeroizing::new([1; 32]), 2, IDLE);
        let a = s.get("a");
        let token = |sess: &Session| {
            let mut out = Vec::new();
            crate::mask::Action::Pseudonym(sess.key.clone()).replace("email", b"x@y.z", &mut out);
            out
        };
        assert_eq!(token(&a), token(&s.get("a")));
        let b = s.get("b");
        assert_ne!(token(&a), token(&b));
        a.vault.lock().expect("vault").record(&token(&a), b"x@y.z");
        // "a" is used again, so "b" is the one dropped for "c".
        let _ = s.get("a");
        let _ = s.get("c");
        assert_eq!(s.len(), 2);
        assert!(Arc::ptr_eq(&a, &s.get("a")));
        assert!(!Arc::ptr_eq(&b, &s.get("b")), "b was dropped and made anew");
        // A session made anew has the same key and an empty vault.
        assert_eq!(token(&b), token(&s.get("b")));
        // A request's own vault is handed over whole.
        let mut mine = Vault::default();
        mine.record(b"[t:1]", b"one");
        mine.record(b"[t:2]", b"two");
        let c = s.get("c");
        let mut v = c.vault.lock().expect("vault");
        v.absorb(mine);
        assert_eq!(
            (v.get(b"[t:1]"), v.get(b"[t:2]")),
            (Some(&b"one"[..]), Some(&b"two"[..]))
        );
    }
}
