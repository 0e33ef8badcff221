//! Choosing and dialling the upstream for an intercepted connection. Every upstream socket
//! carries the bypass mark, which the connect hooks skip: the agent never intercepts itself.
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::net::{TcpSocket, TcpStream};

use crate::{
    config::{Config, Endpoint},
    intercept::netns::Served,
};

mod h1;
pub use h1::{BodyFailure, Payload, encode_request};
mod h2;
pub mod http;
mod idle;
pub use idle::Silent;

/// How long the HTTP client waits on an upstream: for a connection (and its TLS handshake),
/// for a response head once the request is written, and for each next read of a response
/// body. Without the last two, an upstream that accepts and then says nothing would hold
/// the client's request, its buffered body, its record and its in-flight mark until the
/// client gave up.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub head: Duration,
    pub idle: Duration,
}

impl Timeouts {
    pub fn of(cfg: &Config) -> Self {
        Timeouts {
            connect: cfg.connect_timeout,
            head: cfg.upstream_head_timeout,
            idle: cfg.upstream_idle_timeout,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no upstream of target {target} accepted the connection (last error: {last})")]
    AllFailed { target: String, last: String },
    #[error("targets[{index}] ({target}): tls.{source}")]
    Tls {
        index: usize,
        target: String,
        source: crate::tls::Error,
    },
}

/// Backends of one target, tried round-robin; one that failed is skipped for a while.
struct Backends {
    name: String,
    endpoints: Vec<Endpoint>,
    /// Each endpoint as `host:port`, the HTTP pool's key: formatted once, not per request.
    authorities: Vec<Arc<str>>,
    next: AtomicUsize,
    dead_until: Mutex<Vec<Option<Instant>>>,
    /// TLS to this target's servers, when it has `tls:`.
    tls: Option<Arc<crate::tls::Origin>>,
}

pub struct Upstreams {
    targets: Vec<Backends>,
    mark: u32,
    connect_timeout: Duration,
    dead_for: Duration,
}

impl Upstreams {
    /// Reads the targets' TLS files (blocking: call it off the runtime's workers).
    pub fn new(cfg: &Config) -> Result<Self, Error> {
        let mut targets = Vec::with_capacity(cfg.targets.len());
        for (index, t) in cfg.targets.iter().enumerate() {
            let tls = match &t.tls {
                None => None,
                Some(s) => Some(Arc::new(
                    crate::tls::Origin::new(index as u32, &t.name, s).map_err(|source| {
                        Error::Tls {
                            index,
                            target: t.name.clone(),
                            source,
                        }
                    })?,
                )),
            };
            targets.push(Backends {
                name: t.name.clone(),
                endpoints: t.upstream.clone(),
                authorities: t.upstream.iter().map(|e| e.to_string().into()).collect(),
                next: AtomicUsize::new(0),
                dead_until: Mutex::new(vec![None; t.upstream.len()]),
                tls,
            });
        }
        Ok(Upstreams {
            targets,
            mark: cfg.bypass_mark,
            connect_timeout: cfg.connect_timeout,
            dead_for: cfg.dead_backend_for,
        })
    }

    /// TLS to the target's servers, if it originates any.
    pub fn tls(&self, target_id: u32) -> Option<&Arc<crate::tls::Origin>> {
        self.targets.get(target_id as usize)?.tls.as_ref()
    }

    fn target_name(&self, target_id: u32) -> Option<&str> {
        self.targets
            .get(target_id as usize)
            .map(|b| b.name.as_str())
    }

    /// Backends of a target in the order to try them: round-robin from the next one, backends
    /// that failed recently last. Empty when the target forwards to the dialled address.
    fn order(&self, target_id: u32) -> Vec<usize> {
        let Some(b) = self.targets.get(target_id as usize) else {
            return Vec::new();
        };
        let n = b.endpoints.len();
        if n == 0 {
            return Vec::new();
        }
        let start = b.next.fetch_add(1, Ordering::Relaxed);
        let dead = b
            .dead_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        if dead.iter().any(Option::is_some) {
            let now = Instant::now();
            // Resting backends are still tried last: refusing outright when all look dead
            // would turn a blip into an outage. The sort is stable: round-robin order holds
            // within each group.
            order.sort_by_key(|i| dead[*i].is_some_and(|t| t > now));
        }
        order
    }

    /// `order` as the HTTP pool's authorities (`host:port`), each with its backend's index
    /// (`Option` so the caller can add the client's own destination to the same list).
    pub fn order_authorities(&self, target_id: u32) -> Vec<(Option<usize>, Arc<str>)> {
        let Some(b) = self.targets.get(target_id as usize) else {
            return Vec::new();
        };
        self.order(target_id)
            .into_iter()
            .map(|i| (Some(i), b.authorities[i].clone()))
            .collect()
    }

    /// Records whether backend `i` of a target just worked.
    pub fn report(&self, target_id: u32, i: usize, ok: bool) {
        if let Some(b) = self.targets.get(target_id as usize) {
            let mut dead = b
                .dead_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(slot) = dead.get_mut(i) {
                *slot = (!ok).then(|| Instant::now() + self.dead_for);
            }
        }
    }

    /// Connects to the target's upstream, or to `orig_dst` when the target names none, from
    /// the client's network namespace `ns` (`None`: the agent's own).
    pub async fn connect(
        &self,
        target_id: u32,
        orig_dst: SocketAddr,
        ns: Option<&Served>,
    ) -> Result<(TcpStream, SocketAddr), Error> {
        let name = self
            .target_name(target_id)
            .unwrap_or("<unknown>")
            .to_string();
        let order = self.order(target_id);
        if order.is_empty() {
            return dial(orig_dst, self.mark, self.connect_timeout, ns)
                .await
                .map(|s| (s, orig_dst))
                .map_err(|e| Error::AllFailed {
                    target: name,
                    last: format!("{orig_dst}: {e}"),
                });
        }
        let mut last = String::new();
        let endpoints = self
            .targets
            .get(target_id as usize)
            .map_or(&[][..], |b| &b.endpoints[..]);
        for ep in order
            .into_iter()
            .filter_map(|i| Some((i, endpoints.get(i)?)))
        {
            let (i, ep) = ep;
            match self.dial_endpoint(ep, ns).await {
                Ok(ok) => {
                    self.report(target_id, i, true);
                    return Ok(ok);
                }
                Err(e) => {
                    tracing::warn!(target_name = %name, upstream = %ep, error = %e, "upstream failed; skipping it for a while");
                    self.report(target_id, i, false);
                    last = format!("{ep}: {e}");
                }
            }
        }
        Err(Error::AllFailed { target: name, last })
    }

    async fn dial_endpoint(
        &self,
        ep: &Endpoint,
        ns: Option<&Served>,
    ) -> std::io::Result<(TcpStream, SocketAddr)> {
        match ep {
            Endpoint::Addr(a) => Ok((dial(*a, self.mark, self.connect_timeout, ns).await?, *a)),
            Endpoint::Name { host, port } => {
                dial_host(host, *port, self.mark, self.connect_timeout, ns).await
            }
        }
    }
}

/// Resolves `host` (an IP literal is parsed, a name goes to the resolver off-thread) and
/// dials its addresses in order with the bypass mark until one answers. Names are resolved
/// by the agent's resolver, also for a client in another namespace (`ns`), whose sockets
/// then dial the addresses from that namespace.
pub async fn dial_host(
    host: &str,
    port: u16,
    mark: u32,
    timeout: Duration,
    ns: Option<&Served>,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "name resolved to no address");
    for addr in tokio::net::lookup_host((host, port)).await? {
        match dial(addr, mark, timeout, ns).await {
            Ok(s) => return Ok((s, addr)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Dials `addr` with the bypass mark, so the connect hooks let it through, from a socket
/// created in the client's namespace `ns` (`None`: the agent's own): a container's loopback
/// and addresses are then the ones it meant.
pub async fn dial(
    addr: SocketAddr,
    mark: u32,
    timeout: Duration,
    ns: Option<&Served>,
) -> std::io::Result<TcpStream> {
    let sock = match ns {
        Some(ns) => TcpSocket::from_std_stream(ns.socket(addr.is_ipv6()).await?.into()),
        None if addr.is_ipv4() => TcpSocket::new_v4()?,
        None => TcpSocket::new_v6()?,
    };
    // Mark 0 is the kernel's default: setting it changes nothing, and needs CAP_NET_ADMIN
    // (the HTTP client's tests dial unmarked, as any user).
    if mark != 0 {
        socket2::SockRef::from(&sock).set_mark(mark)?;
    }
    sock.set_nodelay(true)?;
    match tokio::time::timeout(timeout, sock.connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connect timed out after {timeout:?}"),
        )),
    }
}
