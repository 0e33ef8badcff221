//! The kernel relay's maps and their bookkeeping: which connections hold a place in them,
//! pairing a connection's two sockets, pausing one direction, and removing every entry when
//! the connection ends (a closing socket leaves the socket maps by itself; the peer map is
//! ours to clean).
//!
//! Entries are written in an order that keeps every intermediate state safe: the peer map and
//! the socket map first (nothing is redirected yet), RELAY_ON last; removal goes the other
//! way. Until the first socket is in RELAY_ON a failure rolls back and the connection is
//! spliced instead.
use std::{
    os::fd::{AsRawFd as _, OwnedFd, RawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use agent_common::RelayPeer;
use aya::maps::{HashMap, MapData, MapError, SockHash};
use tokio::sync::Notify;

use super::wake::Wakers;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing was redirected: the connection can still be spliced.
    #[error("pairing the sockets in the relay maps: {0}")]
    Fallback(MapFailure),
    /// Some bytes may already sit in the kernel's queue for the peer: the connection cannot
    /// move to splice and must be ended.
    #[error("enabling the kernel relay half way: {0}")]
    Broken(MapFailure),
    #[error("relay map task failed: {0}")]
    Task(String),
}

/// A map update the kernel refused, with its errno when it came from the syscall.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}")]
pub struct MapFailure {
    pub what: String,
    pub errno: Option<i32>,
}

impl MapFailure {
    /// The kernel only puts established (or listening) TCP sockets in a sockmap and answers
    /// EOPNOTSUPP for any other state (`sock_map_sk_state_allowed`).
    pub fn not_established(&self) -> bool {
        self.errno == Some(libc::EOPNOTSUPP)
    }
}

impl From<&MapError> for MapFailure {
    fn from(e: &MapError) -> Self {
        match e {
            MapError::SyscallError(s) => MapFailure {
                what: format!("{}: {}", s.call, s.io_error),
                errno: s.io_error.raw_os_error(),
            },
            other => MapFailure {
                what: other.to_string(),
                errno: None,
            },
        }
    }
}

/// The two socket maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// RELAY_ON: sockets whose incoming data the verdict program redirects.
    On,
    /// RELAY_SOCKS: every paired socket (the redirect targets).
    Socks,
}

/// The map operations the bookkeeping needs; the aya maps in the agent, a plain model in the
/// unit tests.
pub trait SockTable {
    fn insert_sock(&mut self, which: Which, cookie: u64, fd: RawFd) -> Result<(), MapFailure>;
    fn remove_sock(&mut self, which: Which, cookie: u64);
    fn insert_peer(&mut self, cookie: u64, peer: u64) -> Result<(), MapFailure>;
    fn remove_peer(&mut self, cookie: u64);
}

/// Pairs `a` and `b` (cookie, fd) so that each one's data goes out of the other.
pub fn pair<T: SockTable>(t: &mut T, a: (u64, RawFd), b: (u64, RawFd)) -> Result<(), Error> {
    let staged = (|| {
        t.insert_peer(a.0, b.0)?;
        t.insert_peer(b.0, a.0)?;
        t.insert_sock(Which::Socks, a.0, a.1)?;
        t.insert_sock(Which::Socks, b.0, b.1)?;
        t.insert_sock(Which::On, a.0, a.1)
    })();
    if let Err(e) = staged {
        unpair(t, a.0, b.0);
        return Err(Error::Fallback(e));
    }
    if let Err(e) = t.insert_sock(Which::On, b.0, b.1) {
        unpair(t, a.0, b.0);
        return Err(Error::Broken(e));
    }
    Ok(())
}

/// Removes every entry of the pair; entries already gone (a closed socket) are fine.
pub fn unpair<T: SockTable>(t: &mut T, a: u64, b: u64) {
    for c in [a, b] {
        t.remove_sock(Which::On, c);
    }
    for c in [a, b] {
        t.remove_sock(Which::Socks, c);
    }
    for c in [a, b] {
        t.remove_peer(c);
    }
}

/// The aya handles on the three relay maps.
pub struct Maps {
    pub on: SockHash<MapData, u64>,
    pub socks: SockHash<MapData, u64>,
    pub peer: HashMap<MapData, u64, RelayPeer>,
    /// Redirected bytes between two wake-up notes of one socket (see `wake.rs`).
    pub wake_every: u64,
}

impl SockTable for Maps {
    fn insert_sock(&mut self, which: Which, cookie: u64, fd: RawFd) -> Result<(), MapFailure> {
        let map = match which {
            Which::On => &mut self.on,
            Which::Socks => &mut self.socks,
        };
        map.insert(cookie, fd, 0).map_err(|e| MapFailure::from(&e))
    }

    fn remove_sock(&mut self, which: Which, cookie: u64) {
        let map = match which {
            Which::On => &mut self.on,
            Which::Socks => &mut self.socks,
        };
        let _ = map.remove(&cookie);
    }

    fn insert_peer(&mut self, cookie: u64, peer: u64) -> Result<(), MapFailure> {
        let entry = RelayPeer {
            peer,
            redirected: 0,
            wake_every: self.wake_every,
        };
        self.peer
            .insert(cookie, entry, 0)
            .map_err(|e| MapFailure::from(&e))
    }

    fn remove_peer(&mut self, cookie: u64) {
        let _ = self.peer.remove(&cookie);
    }
}

/// Places in the maps, counted in connections, so a full map is known before any write.
#[derive(Debug)]
pub struct Slots {
    used: AtomicUsize,
    capacity: usize,
}

/// One connection's place; given back on drop.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
}

impl Slots {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Slots {
            used: AtomicUsize::new(0),
            capacity,
        })
    }

    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot {
                slots: self.clone(),
            })
    }

    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The loaded relay: its maps, their places, and how often a connection had to be spliced
/// because it did not fit. Generic over the maps only so the unit tests can use a model.
pub struct KernelRelay<T = Maps> {
    maps: Mutex<T>,
    slots: Arc<Slots>,
    wakers: Arc<Wakers>,
    fallbacks: AtomicU64,
    /// `l4_kernel_max_queue_bytes`.
    pub max_queue: u64,
}

impl<T: SockTable + Send + 'static> KernelRelay<T> {
    pub fn new(maps: T, capacity: usize, max_queue: u64) -> Self {
        KernelRelay {
            maps: Mutex::new(maps),
            slots: Slots::new(capacity),
            wakers: Arc::default(),
            fallbacks: AtomicU64::new(0),
            max_queue,
        }
    }

    pub fn try_slot(&self) -> Option<Slot> {
        self.slots.try_take()
    }

    pub fn count_fallback(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    pub fn in_use(&self) -> usize {
        self.slots.in_use()
    }

    /// For the thread that reads the wake-up notes: it stops once the relay is gone.
    pub fn wakers(&self) -> std::sync::Weak<Wakers> {
        Arc::downgrade(&self.wakers)
    }

    fn with_maps<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut m = self
            .maps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut m)
    }

    /// Pairs the two sockets (cookie, own duplicate of the fd). Map syscalls under a mutex:
    /// run on the blocking pool. The duplicates keep the sockets alive until the maps hold
    /// them, whatever happens to the caller meanwhile.
    ///
    /// Cancel-safe: the closure hands back the entries it wrote as an `Entries`, whose drop
    /// removes them. Once this future is dropped (a force-cancelled connection), tokio drops
    /// the closure's result on the blocking thread as it finishes, and a closure the pool
    /// never ran (runtime shutdown) is dropped before it wrote anything.
    pub async fn pair(
        self: &Arc<Self>,
        slot: Slot,
        a: (u64, OwnedFd),
        b: (u64, OwnedFd),
    ) -> Result<Pairing<T>, Error> {
        let relay = self.clone();
        let entries = tokio::task::spawn_blocking(move || {
            let (cookies, task) = ((a.0, b.0), Arc::new(Notify::new()));
            // Registered first: a note written as soon as the sockets are live finds its task.
            relay.wakers.add(cookies, &task);
            let paired =
                relay.with_maps(|m| pair(m, (a.0, a.1.as_raw_fd()), (b.0, b.1.as_raw_fd())));
            if let Err(e) = paired {
                relay.wakers.remove(cookies);
                return Err(e);
            }
            Ok(Entries {
                relay,
                cookies,
                task,
                _slot: slot,
            })
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        Ok(Pairing {
            entries: Some(entries),
        })
    }
}

/// A connection's entries in the maps. Dropping it removes them there and then (a few map
/// syscalls under the maps' mutex), so it is only dropped on the blocking pool, or where no
/// runtime is left to run it; its place is given back after the entries are gone.
struct Entries<T: SockTable + Send + 'static> {
    relay: Arc<KernelRelay<T>>,
    cookies: (u64, u64),
    task: Arc<Notify>,
    _slot: Slot,
}

impl<T: SockTable + Send + 'static> Drop for Entries<T> {
    fn drop(&mut self) {
        let (a, b) = self.cookies;
        self.relay.with_maps(|m| unpair(m, a, b));
        self.relay.wakers.remove(self.cookies);
    }
}

/// A connection's two sockets paired in the maps. `release` removes the entries; dropping it
/// unreleased (a cancelled relay) removes them from the blocking pool.
pub struct Pairing<T: SockTable + Send + 'static = Maps> {
    entries: Option<Entries<T>>,
}

impl<T: SockTable + Send + 'static> Pairing<T> {
    /// Notified when the kernel has redirected another `wake_every` bytes from either socket.
    pub fn wake(&self) -> Arc<Notify> {
        self.entries
            .as_ref()
            .map_or_else(|| Arc::new(Notify::new()), |e| e.task.clone())
    }

    pub async fn release(mut self) {
        let entries = self.entries.take();
        // Cancelled or refused (runtime shutdown), the task drops the closure, and with it
        // the entries, which removes them all the same.
        let _ = tokio::task::spawn_blocking(move || drop(entries)).await;
    }
}

impl<T: SockTable + Send + 'static> Drop for Pairing<T> {
    fn drop(&mut self) {
        let Some(entries) = self.entries.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            // A pool that is shutting down drops the closure instead of running it: the
            // entries are then removed synchronously on the thread that drops it.
            Ok(h) => {
                h.spawn_blocking(move || drop(entries));
            }
            Err(_) => drop(entries),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// The maps as sets, with a capacity per map and an optional failure on one insert.
    #[derive(Default)]
    struct Model {
        on: BTreeSet<u64>,
        socks: BTreeSet<u64>,
        peer: BTreeMap<u64, u64>,
        cap: usize,
        fail_on: Option<(Which, u64)>,
        /// The first insert waits for a message here: a pairing caught half way.
        hold: Option<std::sync::mpsc::Receiver<()>>,
    }

    impl SockTable for Model {
        fn insert_sock(&mut self, which: Which, cookie: u64, _fd: RawFd) -> Result<(), MapFailure> {
            if self.fail_on == Some((which, cookie)) {
                return Err(failure("injected", libc::EOPNOTSUPP));
            }
            let (set, cap) = match which {
                Which::On => (&mut self.on, self.cap),
                Which::Socks => (&mut self.socks, self.cap),
            };
            if set.len() >= cap {
                return Err(failure("full", libc::E2BIG));
            }
            set.insert(cookie);
            Ok(())
        }
        fn remove_sock(&mut self, which: Which, cookie: u64) {
            match which {
                Which::On => self.on.remove(&cookie),
                Which::Socks => self.socks.remove(&cookie),
            };
        }
        fn insert_peer(&mut self, cookie: u64, peer: u64) -> Result<(), MapFailure> {
            if let Some(hold) = self.hold.take() {
                let _ = hold.recv();
            }
            if self.peer.len() >= self.cap {
                return Err(failure("full", libc::E2BIG));
            }
            self.peer.insert(cookie, peer);
            Ok(())
        }
        fn remove_peer(&mut self, cookie: u64) {
            self.peer.remove(&cookie);
        }
    }

    fn failure(what: &str, errno: i32) -> MapFailure {
        MapFailure {
            what: what.into(),
            errno: Some(errno),
        }
    }

    fn empty(m: &Model) -> bool {
        m.on.is_empty() && m.socks.is_empty() && m.peer.is_empty()
    }

    #[test]
    fn pairing_links_both_ways_and_unpairing_leaves_nothing() {
        let mut m = Model {
            cap: 4,
            ..Default::default()
        };
        pair(&mut m, (1, 10), (2, 11)).expect("pair");
        assert_eq!(m.peer.get(&1), Some(&2));
        assert_eq!(m.peer.get(&2), Some(&1));
        assert_eq!(m.on.len(), 2);
        assert_eq!(m.socks.len(), 2);
        unpair(&mut m, 1, 2);
        assert!(empty(&m));
    }

    #[test]
    fn a_failure_before_anything_is_redirected_rolls_back_for_splice() {
        for fail in [(Which::Socks, 1), (Which::Socks, 2), (Which::On, 1)] {
            let mut m = Model {
                cap: 4,
                fail_on: Some(fail),
                ..Default::default()
            };
            let e = pair(&mut m, (1, 10), (2, 11)).expect_err("injected failure");
            assert!(matches!(e, Error::Fallback(_)), "{fail:?}: {e}");
            assert!(empty(&m), "{fail:?} left entries");
        }
    }

    #[test]
    fn a_failure_after_one_direction_is_live_is_not_a_fallback() {
        let mut m = Model {
            cap: 4,
            fail_on: Some((Which::On, 2)),
            ..Default::default()
        };
        let e = pair(&mut m, (1, 10), (2, 11)).expect_err("injected failure");
        assert!(matches!(e, Error::Broken(_)), "{e}");
        assert!(empty(&m));
    }

    #[test]
    fn a_full_map_rolls_back_and_keeps_other_pairs() {
        let mut m = Model {
            cap: 2,
            ..Default::default()
        };
        pair(&mut m, (1, 10), (2, 11)).expect("first pair fits");
        let e = pair(&mut m, (3, 12), (4, 13)).expect_err("map full");
        assert!(matches!(e, Error::Fallback(_)), "{e}");
        assert_eq!(m.peer.len(), 2);
        assert_eq!(m.socks.len(), 2);
        assert_eq!(m.on.len(), 2);
    }

    #[test]
    fn a_socket_not_established_is_known_by_its_errno() {
        let refused = |errno| {
            MapFailure::from(&MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_elem",
                io_error: std::io::Error::from_raw_os_error(errno),
            }))
        };
        assert!(refused(libc::EOPNOTSUPP).not_established());
        assert!(!refused(libc::ENOMEM).not_established());
        assert!(!MapFailure::from(&MapError::KeyNotFound).not_established());
    }

    fn relay_with(model: Model) -> Arc<KernelRelay<Model>> {
        Arc::new(KernelRelay::new(model, 4, 1 << 20))
    }

    fn fd() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").expect("/dev/null"))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn paired(rt: &tokio::runtime::Runtime, relay: &Arc<KernelRelay<Model>>) -> Pairing<Model> {
        let slot = relay.try_slot().expect("slot");
        rt.block_on(relay.pair(slot, (1, fd()), (2, fd())))
            .expect("pair")
    }

    fn no_entries(relay: &KernelRelay<Model>) -> bool {
        relay.with_maps(|m| empty(m)) && relay.in_use() == 0 && relay.wakers.is_empty()
    }

    #[test]
    fn a_pairing_cancelled_half_way_removes_what_it_wrote() {
        let (go, hold) = std::sync::mpsc::channel();
        let relay = relay_with(Model {
            cap: 4,
            hold: Some(hold),
            ..Default::default()
        });
        let rt = runtime();
        rt.block_on(async {
            let slot = relay.try_slot().expect("slot");
            let pairing = relay.pair(slot, (1, fd()), (2, fd()));
            // Polled until the closure is on the blocking pool, then dropped (a forced end).
            tokio::select! {
                biased;
                _ = pairing => panic!("the pairing cannot finish while held"),
                () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            }
            go.send(()).expect("release the insert");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !no_entries(&relay) {
                assert!(std::time::Instant::now() < deadline, "entries left behind");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
    }

    #[test]
    fn a_pairing_dropped_outside_a_runtime_is_removed_at_once() {
        let relay = relay_with(Model {
            cap: 4,
            ..Default::default()
        });
        let rt = runtime();
        let pairing = paired(&rt, &relay);
        drop(rt);
        assert!(!no_entries(&relay));
        drop(pairing);
        assert!(no_entries(&relay));
    }

    #[test]
    fn a_pairing_dropped_by_runtime_teardown_is_removed() {
        let relay = relay_with(Model {
            cap: 4,
            ..Default::default()
        });
        let rt = runtime();
        let pairing = paired(&rt, &relay);
        // A connection task still holding its pairing when the runtime goes away.
        rt.spawn(async move {
            std::future::pending::<()>().await;
            drop(pairing);
        });
        drop(rt);
        assert!(no_entries(&relay));
    }

    #[test]
    fn a_released_pairing_leaves_nothing() {
        let relay = relay_with(Model {
            cap: 4,
            ..Default::default()
        });
        let rt = runtime();
        let pairing = paired(&rt, &relay);
        rt.block_on(pairing.release());
        assert!(no_entries(&relay));
    }

    #[test]
    fn slots_are_bounded_and_given_back_on_drop() {
        let slots = Slots::new(2);
        let a = slots.try_take().expect("first");
        let _b = slots.try_take().expect("second");
        assert!(slots.try_take().is_none());
        assert_eq!(slots.in_use(), 2);
        drop(a);
        assert_eq!(slots.in_use(), 1);
        assert!(slots.try_take().is_some());
    }
}
