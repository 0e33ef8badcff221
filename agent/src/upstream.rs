//! Choosing and dialling the upstream for an intercepted connection. Every upstream socket
//! carries the bypass mark, which the connect hooks skip: the agent never intercepts itself.
use std::{
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::net::{TcpSocket, TcpStream};

use crate::config::{Config, Endpoint};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no upstream of target {target} accepted the connection (last error: {last})")]
    AllFailed { target: String, last: String },
}

/// Backends of one target, tried round-robin; one that failed is skipped for a while.
struct Backends {
    name: String,
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
    dead_until: Mutex<Vec<Option<Instant>>>,
}

pub struct Upstreams {
    targets: Vec<Backends>,
    mark: u32,
    connect_timeout: Duration,
    dead_for: Duration,
}

impl Upstreams {
    pub fn new(cfg: &Config) -> Self {
        Upstreams {
            targets: cfg
                .targets
                .iter()
                .map(|t| Backends {
                    name: t.name.clone(),
                    endpoints: t.upstream.clone(),
                    next: AtomicUsize::new(0),
                    dead_until: Mutex::new(vec![None; t.upstream.len()]),
                })
                .collect(),
            mark: cfg.bypass_mark,
            connect_timeout: cfg.connect_timeout,
            dead_for: cfg.dead_backend_for,
        }
    }

    pub fn target_name(&self, target_id: u32) -> Option<&str> {
        self.targets
            .get(target_id as usize)
            .map(|b| b.name.as_str())
    }

    /// Connects to the target's upstream, or to `orig_dst` when the target names none.
    pub async fn connect(
        &self,
        target_id: u32,
        orig_dst: SocketAddr,
    ) -> Result<(TcpStream, SocketAddr), Error> {
        let Some(b) = self.targets.get(target_id as usize) else {
            return Err(Error::AllFailed {
                target: format!("#{target_id}"),
                last: "unknown target id".into(),
            });
        };
        if b.endpoints.is_empty() {
            return self
                .dial(orig_dst)
                .await
                .map(|s| (s, orig_dst))
                .map_err(|e| Error::AllFailed {
                    target: b.name.clone(),
                    last: format!("{orig_dst}: {e}"),
                });
        }
        let n = b.endpoints.len();
        let start = b.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let order: Vec<usize> = {
            let dead = b
                .dead_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (alive, resting): (Vec<usize>, Vec<usize>) = (0..n)
                .map(|i| (start + i) % n)
                .partition(|i| dead[*i].is_none_or(|t| t <= now));
            // Resting backends are still tried last: refusing outright when all look dead
            // would turn a blip into an outage.
            alive.into_iter().chain(resting).collect()
        };
        let mut last = String::new();
        for i in order {
            let ep = &b.endpoints[i];
            match self.dial_endpoint(ep).await {
                Ok((s, addr)) => {
                    b.dead_until
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)[i] = None;
                    return Ok((s, addr));
                }
                Err(e) => {
                    tracing::warn!(target = %b.name, upstream = %ep, error = %e, "upstream failed; skipping it for a while");
                    b.dead_until
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)[i] =
                        Some(Instant::now() + self.dead_for);
                    last = format!("{ep}: {e}");
                }
            }
        }
        Err(Error::AllFailed {
            target: b.name.clone(),
            last,
        })
    }

    async fn dial_endpoint(&self, ep: &Endpoint) -> std::io::Result<(TcpStream, SocketAddr)> {
        let addrs: Vec<SocketAddr> = match ep {
            Endpoint::Addr(a) => vec![*a],
            Endpoint::Name { host, port } => tokio::net::lookup_host((host.as_str(), *port))
                .await?
                .collect(),
        };
        let mut last =
            std::io::Error::new(std::io::ErrorKind::NotFound, "name resolved to no address");
        for a in addrs {
            match self.dial(a).await {
                Ok(s) => return Ok((s, a)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn dial(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket2::SockRef::from(&sock).set_mark(self.mark)?;
        sock.set_nodelay(true)?;
        match tokio::time::timeout(self.connect_timeout, sock.connect(addr)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect timed out after {:?}", self.connect_timeout),
            )),
        }
    }
}
