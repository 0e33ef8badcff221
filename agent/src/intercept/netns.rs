//! A listener per network namespace (the "in-pod" design of Istio ambient's ztunnel).
//!
//! The connect hooks rewrite a target connection to the agent's loopback listener *in the
//! caller's network namespace*. For a client in a namespace of its own (a container, a pod)
//! that loopback is the namespace's own, so the agent must listen there too:
//!
//! 1. the hook meets a target connection from a namespace that is not in NETNS_READY: it
//!    notes (netns cookie -> caller's tgid) in NETNS_SEEN and refuses the connect (fail
//!    closed: EPERM) or lets it through unredirected (fail open);
//! 2. the manager thread here reads NETNS_SEEN when the hook's note in NETNS_WAKE wakes it
//!    (and every second, in case a note was lost), opens the namespace through
//!    /proc/<tgid>/ns/net, checks it is the one the hook saw (its cookie), `setns()`es into
//!    it, brings `lo` up if it is down, binds the same listen addresses there (one
//!    SO_REUSEPORT shard per runtime) and `setns()`es back;
//! 3. the listeners go to the runtimes, which serve them like the main ones; then the cookie
//!    goes into NETNS_READY and the hook redirects that namespace's connections from then on;
//! 4. every second the manager looks for namespaces no process is in any more: their
//!    listeners are closed, their NETNS_READY and BY_PEER entries deleted, their fd dropped.
//!
//! Upstream connections for a namespaced client are dialled from sockets created in that
//! namespace (by the socket thread, which `setns()`es for each one), so the client's own
//! view of addresses (its loopback, pod IPs) is what it reaches.
use std::{
    collections::{HashMap, HashSet},
    fs::File,
    net::SocketAddr,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::fs::MetadataExt as _,
    },
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;

use super::{Maps, listener};

/// How long the manager waits for a note in NETNS_WAKE before reading NETNS_SEEN anyway
/// (a note is lost when the ring buffer is full).
const POLL_MS: i32 = 1000;
/// How often the manager looks for namespaces that have emptied.
const REAP: Duration = Duration::from_secs(1);
/// Upstream sockets waiting to be created in a namespace; a full queue fails the dial.
const SOCKET_QUEUE: usize = 1024;
/// Namespaces' listeners waiting for a runtime to take them.
pub const HANDOFF_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening the namespace of pid {pid}: {source}")]
    Open { pid: u32, source: std::io::Error },
    #[error("entering the namespace: {0}")]
    Enter(std::io::Error),
    #[error("returning to the agent's own namespace failed ({0}); this thread stops")]
    Stuck(std::io::Error),
    #[error(
        "pid {pid} is no longer in the namespace that was seen, and no other process is (it exited or moved)"
    )]
    Moved { pid: u32 },
    #[error("bringing lo up: {0}")]
    LoopbackUp(std::io::Error),
    #[error("binding {addr} in the namespace: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reading a socket's network namespace cookie: {0}")]
    Cookie(std::io::Error),
    #[error("the runtimes stopped taking listeners")]
    Handoff,
    #[error("eBPF map NETNS_READY: {0}")]
    Map(#[from] aya::maps::MapError),
}

/// One served namespace. Connections from it hold it (to dial upstream from it); its fd is
/// closed when the last of them and the registry let go.
pub struct Served {
    pub cookie: u64,
    ns: File,
    inode: u64,
    /// Cancelled when the namespace is released: its accept loops stop and drop listeners.
    pub stop: CancellationToken,
    sockets: SyncSender<SocketJob>,
}

impl Served {
    /// A TCP socket created in this namespace, for dialling an upstream from it.
    pub async fn socket(&self, v6: bool) -> std::io::Result<Socket> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = SocketJob {
            ns: self.ns.try_clone()?,
            v6,
            reply,
        };
        self.sockets.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => std::io::Error::other("namespace socket queue full"),
            TrySendError::Disconnected(_) => std::io::Error::other("namespace socket thread gone"),
        })?;
        rx.await
            .map_err(|_| std::io::Error::other("namespace socket thread gone"))?
    }
}

struct SocketJob {
    ns: File,
    v6: bool,
    reply: tokio::sync::oneshot::Sender<std::io::Result<Socket>>,
}

/// A namespace's listener for one runtime.
pub struct NsListener {
    pub addr: SocketAddr,
    pub listener: std::net::TcpListener,
    pub served: Arc<Served>,
}

/// The served namespaces, shared by the manager and the connection tasks.
pub struct Namespaces {
    served: Mutex<HashMap<u64, Arc<Served>>>,
    /// Cookie of the agent's own namespace: its connections use the main listeners.
    pub agent_cookie: u64,
    max: usize,
    refused_over_max: AtomicU64,
    /// Entries in NETNS_READY, and BY_PEER entries of other namespaces, as last counted by
    /// the manager (after each change, and every second).
    ready_entries: AtomicU64,
    by_peer_entries: AtomicU64,
}

/// For `sluice connections` (status).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// Namespaces with a listener of their own now.
    pub served: usize,
    pub max_namespaces: usize,
    /// Namespaces not served because `max_namespaces` were (each counted once while it
    /// waits; it is served when another is released).
    pub refused_over_max: u64,
    /// NETNS_READY entries (equals `served` when the kernel and the agent agree).
    pub ready_entries: u64,
    /// BY_PEER entries of other namespaces' connections not accepted yet.
    pub by_peer_entries: u64,
}

impl Namespaces {
    /// The served namespace with this cookie; `None` for the agent's own (or a released one).
    pub fn get(&self, cookie: u64) -> Option<Arc<Served>> {
        if cookie == self.agent_cookie {
            return None;
        }
        self.lock().get(&cookie).cloned()
    }

    pub fn served(&self) -> usize {
        self.lock().len()
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn status(&self) -> Status {
        Status {
            served: self.served(),
            max_namespaces: self.max,
            refused_over_max: self.refused_over_max.load(Ordering::Relaxed),
            ready_entries: self.ready_entries.load(Ordering::Relaxed),
            by_peer_entries: self.by_peer_entries.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Served>>> {
        self.served
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What the manager thread needs.
pub struct Setup {
    pub ready: BpfHashMap<MapData, u64, u32>,
    pub seen: BpfHashMap<MapData, u64, u32>,
    /// Notes from the hook: a namespace has just been seen.
    pub wake: aya::maps::RingBuf<MapData>,
    pub maps: Arc<Maps>,
    /// The listen addresses (IPv4, and IPv6 if configured).
    pub addrs: Vec<SocketAddr>,
    pub max: usize,
    /// One sender per runtime; each namespace gets one SO_REUSEPORT shard per runtime.
    pub runtimes: Vec<tokio::sync::mpsc::Sender<NsListener>>,
    /// Whether the agent is shutting down (the manager then stops).
    pub stop: CancellationToken,
}

/// The cookie of the namespace the calling thread is in.
pub fn current_cookie() -> Result<u64, Error> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(Error::Cookie)?;
    socket_cookie(&s).map_err(Error::Cookie)
}

/// Starts the socket thread and the manager thread.
pub fn start(setup: Setup) -> std::io::Result<Arc<Namespaces>> {
    let agent_cookie = current_cookie().map_err(std::io::Error::other)?;
    let home = File::open("/proc/thread-self/ns/net")?;
    // setns() into the agent's own namespace changes nothing but needs what entering any
    // other does (CAP_SYS_ADMIN): say at start, once, if namespaces cannot be served.
    if let Err(e) = setns(&home) {
        tracing::warn!(error = %e,
            "cannot enter network namespaces (setns needs CAP_SYS_ADMIN): workloads in containers and pods are not served; their target connections are refused (fail_mode closed) or go direct (open)");
    }
    let (sockets, jobs) = sync_channel(SOCKET_QUEUE);
    let socket_home = home.try_clone()?;
    std::thread::Builder::new()
        .name("sluice-netns-sock".into())
        .spawn(move || socket_thread(jobs, socket_home))?;
    let namespaces = Arc::new(Namespaces {
        served: Mutex::new(HashMap::new()),
        agent_cookie,
        max: setup.max,
        refused_over_max: AtomicU64::new(0),
        ready_entries: AtomicU64::new(0),
        by_peer_entries: AtomicU64::new(0),
    });
    let shared = namespaces.clone();
    std::thread::Builder::new()
        .name("sluice-netns".into())
        .spawn(move || {
            Manager {
                setup,
                home,
                sockets,
                ns: shared,
                last_warn: None,
                over_max: HashSet::new(),
            }
            .run()
        })?;
    Ok(namespaces)
}

/// Creates upstream sockets in namespaces. One thread for all: a socket is one setns() in,
/// one socket(), one setns() back.
fn socket_thread(jobs: Receiver<SocketJob>, home: File) {
    while let Ok(job) = jobs.recv() {
        let made = in_netns(&job.ns, &home, || {
            let domain = if job.v6 { Domain::IPV6 } else { Domain::IPV4 };
            let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            s.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(s)
        });
        match made {
            Ok(s) => {
                let _ = job.reply.send(s);
            }
            Err(Error::Stuck(e)) => {
                tracing::error!(error = %e, "namespace socket thread cannot return to the agent's namespace; upstream dials from namespaces fail from now on");
                return;
            }
            Err(e) => {
                let _ = job.reply.send(Err(std::io::Error::other(e.to_string())));
            }
        }
    }
}

/// Runs `f` with the calling thread in `ns`, then moves it back to `home`. `Error::Stuck`
/// means the thread is still in `ns`: it must stop doing anything else.
fn in_netns<R>(ns: &File, home: &File, f: impl FnOnce() -> R) -> Result<R, Error> {
    setns(ns).map_err(Error::Enter)?;
    let r = f();
    setns(home).map_err(Error::Stuck)?;
    Ok(r)
}

fn setns(ns: &File) -> std::io::Result<()> {
    // SAFETY: setns on a valid, open namespace fd; it changes only this thread's namespace.
    let rc = unsafe { libc::setns(ns.as_fd().as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn socket_cookie(s: &Socket) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Brings the namespace's `lo` up if it is down (a fresh `unshare --net` leaves it down;
/// container runtimes bring it up). Without it nothing can listen on loopback there.
fn loopback_up() -> std::io::Result<bool> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    // SAFETY: an all-zero ifreq is valid; the name is NUL-terminated within IFNAMSIZ.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, b) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into the ifreq passed, which outlives the call.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(false);
    }
    ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS only reads the ifreq.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(true)
}

struct Manager {
    setup: Setup,
    home: File,
    sockets: SyncSender<SocketJob>,
    ns: Arc<Namespaces>,
    last_warn: Option<Instant>,
    /// Namespaces waiting in NETNS_SEEN because `max_namespaces` are served: counted once.
    over_max: HashSet<u64>,
}

impl Manager {
    fn run(mut self) {
        let mut last_reap = Instant::now();
        while !self.setup.stop.is_cancelled() {
            self.wait_for_note();
            if let Err(e) = self.poll() {
                tracing::error!(error = %e, "network namespace manager stopped; connections from namespaces not served yet stay refused (fail closed) or direct (fail open)");
                return;
            }
            if last_reap.elapsed() >= REAP {
                self.reap();
                last_reap = Instant::now();
            }
        }
        let all: Vec<u64> = self.ns.lock().keys().copied().collect();
        for cookie in all {
            self.release(cookie);
        }
    }

    /// Sleeps until the hook notes a new namespace, or a second has passed. The notes only
    /// wake the thread: NETNS_SEEN says which namespaces to prepare.
    fn wait_for_note(&mut self) {
        let mut p = libc::pollfd {
            fd: self.setup.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd. An error (EINTR) is a spurious wake-up: NETNS_SEEN is
        // read either way.
        unsafe { libc::poll(&mut p, 1, POLL_MS) };
        while self.setup.wake.next().is_some() {}
    }

    /// Serves the namespaces the hooks have seen since the last poll. Only `Stuck` is fatal.
    fn poll(&mut self) -> Result<(), Error> {
        let seen: Vec<(u64, u32)> = self
            .setup
            .seen
            .iter()
            .filter_map(Result::ok)
            .take(agent_common::MAX_NETNS as usize)
            .collect();
        let mut waiting = HashSet::new();
        for (cookie, tgid) in seen {
            if self.ns.lock().contains_key(&cookie) {
                let _ = self.setup.seen.remove(&cookie);
                continue;
            }
            if self.ns.served() >= self.ns.max {
                // Left in NETNS_SEEN (so its connects wake nobody) and looked at again every
                // poll: served once another namespace is released.
                waiting.insert(cookie);
                if self.over_max.insert(cookie) {
                    self.warn_over_max(cookie, tgid);
                }
                continue;
            }
            // Deleted first: a connect after a failure below notes the namespace again.
            let _ = self.setup.seen.remove(&cookie);
            match self.prepare(cookie, tgid) {
                Ok(()) => {}
                Err(e @ Error::Stuck(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(netns_cookie = cookie, pid = tgid, error = %e, "network namespace not served")
                }
            }
        }
        self.over_max.retain(|c| waiting.contains(c));
        Ok(())
    }

    fn warn_over_max(&mut self, cookie: u64, tgid: u32) {
        let n = self.ns.refused_over_max.fetch_add(1, Ordering::Relaxed) + 1;
        if self
            .last_warn
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.last_warn = Some(Instant::now());
            tracing::warn!(
                netns_cookie = cookie,
                pid = tgid,
                max_namespaces = self.ns.max,
                refused_total = n,
                "network namespace not served: max_namespaces reached; its target connections stay refused (fail closed) or direct (fail open)"
            );
        }
    }

    /// The namespace with this cookie, through the pid the hook saw in it; if that process
    /// has exited already (a one-shot client refused while its namespace was new) or moved,
    /// through any other process found in it.
    fn open(&self, cookie: u64, pid: u32) -> Result<(File, &'static str), Error> {
        if let Ok(ns) = File::open(format!("/proc/{pid}/ns/net"))
            && in_netns(&ns, &self.home, current_cookie)?? == cookie
        {
            return Ok((ns, "pid"));
        }
        let skip: HashSet<u64> = self.ns.lock().values().map(|s| s.inode).collect();
        match self.find(cookie, &skip)? {
            Some(ns) => Ok((ns, "scan")),
            None => Err(Error::Moved { pid }),
        }
    }

    /// Looks for a process in the namespace with `cookie`: every namespace some process is in
    /// (but the agent's and those in `skip`) is entered once to read its cookie. Bounded by
    /// the number of namespaces on the host; runs only when the hook's pid is gone.
    fn find(&self, cookie: u64, skip: &HashSet<u64>) -> Result<Option<File>, Error> {
        let own = self.home.metadata().map(|m| m.ino()).unwrap_or(0);
        let mut tried = HashSet::new();
        for (pid, ino) in process_netns() {
            if ino == own || skip.contains(&ino) || !tried.insert(ino) {
                continue;
            }
            let Ok(ns) = File::open(format!("/proc/{pid}/ns/net")) else {
                continue;
            };
            // The process may have moved on between the readlink and the open.
            if ns.metadata().map(|m| m.ino()).ok() != Some(ino) {
                continue;
            }
            if in_netns(&ns, &self.home, current_cookie)?? == cookie {
                return Ok(Some(ns));
            }
        }
        Ok(None)
    }

    fn prepare(&mut self, cookie: u64, pid: u32) -> Result<(), Error> {
        let started = Instant::now();
        let (ns, found_by) = self.open(cookie, pid)?;
        let inode = ns
            .metadata()
            .map_err(|source| Error::Open { pid, source })?
            .ino();
        let shards = self.setup.runtimes.len().max(1);
        let addrs = self.setup.addrs.clone();
        let (bound, lo_raised) = in_netns(&ns, &self.home, || -> Result<_, Error> {
            let raised = loopback_up().map_err(Error::LoopbackUp)?;
            let mut bound = Vec::new();
            for addr in addrs {
                match listener::bind_shards(addr, shards) {
                    Ok(ls) => bound.push((addr, ls)),
                    // A namespace without IPv6 still gets its IPv4 listener; its IPv6
                    // target connections land on nothing and are refused.
                    Err(source) if addr.is_ipv6() => {
                        tracing::warn!(netns_cookie = cookie, listen = %addr, error = %source, "no IPv6 listener in this namespace");
                    }
                    Err(source) => return Err(Error::Bind { addr, source }),
                }
            }
            Ok((bound, raised))
        })??;
        let served = Arc::new(Served {
            cookie,
            ns,
            inode,
            stop: CancellationToken::new(),
            sockets: self.sockets.clone(),
        });
        for (addr, shards) in bound {
            for (tx, listener) in self.setup.runtimes.iter().zip(shards) {
                let l = NsListener {
                    addr,
                    listener,
                    served: served.clone(),
                };
                if tx.blocking_send(l).is_err() {
                    served.stop.cancel();
                    return Err(Error::Handoff);
                }
            }
        }
        self.ns.lock().insert(cookie, served);
        // Listening already (the kernel queues connections until a runtime accepts): the
        // hook may send this namespace's connections now.
        if let Err(e) = self.setup.ready.insert(cookie, 1, 0) {
            self.release(cookie);
            return Err(e.into());
        }
        tracing::info!(
            netns_cookie = cookie,
            pid,
            netns_inode = inode,
            lo_raised,
            found_by,
            served = self.ns.served(),
            prepare_us = started.elapsed().as_micros() as u64,
            "network namespace served"
        );
        self.count_entries();
        Ok(())
    }

    /// Releases namespaces no process is in any more.
    fn reap(&mut self) {
        let inodes: Vec<(u64, u64)> = self
            .ns
            .lock()
            .values()
            .map(|s| (s.cookie, s.inode))
            .collect();
        if !inodes.is_empty() {
            let live = live_netns_inodes();
            for (cookie, inode) in inodes {
                if !live.contains(&inode) {
                    self.release(cookie);
                }
            }
        }
        self.count_entries();
    }

    /// Publishes how many map entries other namespaces hold, for status (and leak checks).
    fn count_entries(&self) {
        let ready = self.setup.ready.keys().filter(Result::is_ok).count();
        let agent = self.ns.agent_cookie;
        let by_peer = self
            .setup
            .maps
            .by_peer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.netns_cookie != agent)
            .count();
        self.ns.ready_entries.store(ready as u64, Ordering::Relaxed);
        self.ns
            .by_peer_entries
            .store(by_peer as u64, Ordering::Relaxed);
    }

    fn release(&mut self, cookie: u64) {
        // Out of NETNS_READY first: from now on the hook treats the namespace as new.
        let _ = self.setup.ready.remove(&cookie);
        let Some(served) = self.ns.lock().remove(&cookie) else {
            return;
        };
        served.stop.cancel();
        let purged = purge_by_peer(&self.setup.maps, cookie);
        tracing::info!(
            netns_cookie = cookie,
            purged,
            served = self.ns.served(),
            "network namespace released"
        );
        self.count_entries();
    }
}

/// Deletes BY_PEER entries of a namespace (connections that never reached its listener).
fn purge_by_peer(maps: &Maps, cookie: u64) -> usize {
    let mut map = maps
        .by_peer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let stale: Vec<_> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.netns_cookie == cookie)
        .collect();
    stale.iter().filter(|k| map.remove(k).is_ok()).count()
}

/// Inode numbers of the network namespaces some process (other than the agent) is in.
fn live_netns_inodes() -> HashSet<u64> {
    process_netns().map(|(_, ino)| ino).collect()
}

/// (pid, network namespace inode) of every process but the agent.
fn process_netns() -> impl Iterator<Item = (u32, u64)> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(move |entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            if pid == me {
                return None;
            }
            // "net:[4026532000]"
            let link = std::fs::read_link(entry.path().join("ns/net")).ok()?;
            let ino = link
                .to_str()?
                .strip_prefix("net:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some((pid, ino))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_own_namespace_has_a_cookie() {
        let a = current_cookie().expect("SO_NETNS_COOKIE");
        assert_ne!(a, 0);
        assert_eq!(
            current_cookie().expect("again"),
            a,
            "one namespace, one cookie"
        );
    }

    #[test]
    fn a_child_process_keeps_its_namespace_live() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        let ino = std::fs::metadata(format!("/proc/{}/ns/net", child.id()))
            .expect("child's netns")
            .ino();
        let live = live_netns_inodes();
        let _ = child.kill();
        let _ = child.wait();
        assert!(live.contains(&ino));
    }
}
