//! HTTP/1.1 connections to model servers, pooled per runtime thread, on hyper's own client
//! connections.
//!
//! Written here rather than using hyper-util's pooled client because that client did more
//! per request than a proxy in front of a few model servers needs: a checkout racing a lazy
//! connect, pool keys and extensions per request, large futures boxed and moved; it was ~8%
//! of a request's CPU in the profile (docs/benchmarks.md). What is needed is small: keep the
//! senders of open connections per backend, take one whose previous exchange is over, else
//! dial a new one. With `runtime: per-core` each thread has its own pool, so the lock below
//! is never contended.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::{Request, Response};
use hyper::{
    body::Incoming,
    client::conn::http1::{self, SendRequest},
};
use hyper_util::rt::TokioIo;

use crate::{intercept::netns::Served, respond::Body, tls::Origin};

/// A pooled connection unused this long is closed instead of reused: servers close idle
/// connections too, and a request sent on one that is closing would be lost.
const IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connect {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("handshake with {authority}: {source}")]
    Handshake {
        authority: String,
        source: hyper::Error,
    },
    /// Dialled, but the TLS handshake failed: nothing was sent.
    #[error("upstream {authority} {failure}")]
    Tls {
        authority: String,
        failure: crate::tls::Failure,
    },
    #[error("{0}")]
    Request(hyper::Error),
}

impl Error {
    /// Nothing reached the server: another backend may be tried.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. } | Error::Handshake { .. } | Error::Tls { .. }
        )
    }

    /// The message names the upstream, the target and the server name itself.
    pub fn is_tls(&self) -> bool {
        matches!(self, Error::Tls { .. })
    }
}

/// (namespace cookie, TLS origin id).
type Key = (u64, u32);

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

pub struct Pool {
    mark: u32,
    timeout: Duration,
    max_idle: usize,
    /// Keyed by ((client's network namespace cookie, 0 for the agent's own; TLS origin, 0
    /// for cleartext); authority): a connection dialled from one namespace is never reused
    /// for another, nor a TLS one (with one target's certificates) for cleartext or another
    /// target.
    conns: Mutex<HashMap<Key, HashMap<String, Vec<Idle>>>>,
}

impl Pool {
    pub fn new(mark: u32, timeout: Duration, max_idle: usize) -> Self {
        Pool {
            mark,
            timeout,
            max_idle,
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) to `authority` on a pooled connection, or on
    /// a new one. A pooled connection the server closed before the request went out hands
    /// the request back; it is then sent once more, on a new connection.
    pub async fn send(
        &self,
        authority: &str,
        ns: Option<&Arc<Served>>,
        tls: Option<&Origin>,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, Error> {
        let key = (ns.map_or(0, |n| n.cookie), tls.map_or(0, |t| t.id));
        if let Some(mut sender) = self.take(key, authority) {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.put(key, authority, sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(Error::Request(e.into_error())),
                },
            }
        }
        let mut sender = self
            .connect(authority, ns.map(|n| &**n), tls, false)
            .await?;
        let resp = sender.send_request(req).await.map_err(Error::Request)?;
        self.put(key, authority, sender);
        Ok(resp)
    }

    /// Sends `req` on a new connection of its own that can switch protocols: after a switch
    /// it carries the tunnel, so it never joins the pool.
    pub async fn dedicated(
        &self,
        authority: &str,
        ns: Option<&Arc<Served>>,
        tls: Option<&Origin>,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, Error> {
        let mut sender = self.connect(authority, ns.map(|n| &**n), tls, true).await?;
        sender.send_request(req).await.map_err(Error::Request)
    }

    /// A pooled sender whose connection is open and whose last exchange is over. Idle ones
    /// past `max_idle` are dropped here (hyper then closes their connections); busy ones
    /// stay: each is a request in flight, bounded by the agent's connection caps.
    fn take(&self, key: Key, authority: &str) -> Option<SendRequest<Body>> {
        let mut all = self.conns.lock().ok()?;
        let conns = all.get_mut(&key)?;
        let list = conns.get_mut(authority)?;
        trim(list, self.max_idle);
        if list.is_empty() && key.0 != 0 {
            // Namespaces come and go: forget their empty entries, or the map grows forever.
            conns.remove(authority);
            if conns.is_empty() {
                all.remove(&key);
            }
            return None;
        }
        let i = list.iter().rposition(|c| c.sender.is_ready())?;
        Some(list.swap_remove(i).sender)
    }

    /// Closes what `take` would drop, for every backend: run every few seconds
    /// (`app::heartbeat`), so a burst's idle connections and expired ones are closed even
    /// when no request goes to their backend again.
    pub fn sweep(&self) {
        let Ok(mut all) = self.conns.lock() else {
            return;
        };
        for conns in all.values_mut() {
            for list in conns.values_mut() {
                trim(list, self.max_idle);
            }
            conns.retain(|_, list| !list.is_empty());
        }
        all.retain(|key, conns| key.0 == 0 || !conns.is_empty());
    }

    /// Open pooled connections (idle or busy).
    #[cfg(test)]
    fn open(&self) -> usize {
        self.conns.lock().map_or(0, |all| {
            all.values()
                .flat_map(|c| c.values())
                .map(|l| l.iter().filter(|c| !c.sender.is_closed()).count())
                .sum()
        })
    }

    /// Back into the pool right after sending: it is taken again only once its response
    /// has been read to the end (`is_ready`).
    fn put(&self, key: Key, authority: &str, sender: SendRequest<Body>) {
        let Ok(mut all) = self.conns.lock() else {
            return;
        };
        // Entries of namespaces with nothing open any more are dropped as others are added.
        if key.0 != 0 {
            all.retain(|k, m| {
                k.0 == 0
                    || *k == key
                    || m.values()
                        .flatten()
                        .any(|c| !c.sender.is_closed() && c.since.elapsed() < IDLE)
            });
        }
        let conns = all.entry(key).or_default();
        let idle = Idle {
            sender,
            since: Instant::now(),
        };
        match conns.get_mut(authority) {
            Some(list) => list.push(idle),
            None => {
                conns.insert(authority.to_string(), vec![idle]);
            }
        }
    }

    async fn connect(
        &self,
        authority: &str,
        ns: Option<&Served>,
        tls: Option<&Origin>,
        upgrades: bool,
    ) -> Result<SendRequest<Body>, Error> {
        let connect_err = |source| Error::Connect {
            authority: authority.to_string(),
            source,
        };
        let (host, port) = split_authority(authority).ok_or_else(|| {
            connect_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not host:port",
            ))
        })?;
        let (stream, _) = super::dial_host(host, port, self.mark, self.timeout, ns)
            .await
            .map_err(connect_err)?;
        match tls {
            None => handshake(authority, stream, upgrades).await,
            Some(t) => {
                let stream =
                    t.connect(stream, host, false)
                        .await
                        .map_err(|failure| Error::Tls {
                            authority: authority.to_string(),
                            failure,
                        })?;
                handshake(authority, stream, upgrades).await
            }
        }
    }
}

/// HTTP/1.1 on a dialled stream, cleartext or TLS.
async fn handshake<S>(authority: &str, io: S, upgrades: bool) -> Result<SendRequest<Body>, Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) =
        http1::handshake(TokioIo::new(io))
            .await
            .map_err(|source| Error::Handshake {
                authority: authority.to_string(),
                source,
            })?;
    // The connection's own task on this thread; it ends when the server closes or the
    // last sender is dropped (or, with upgrades, once it has handed its socket over).
    tokio::spawn(async move {
        let ended = if upgrades {
            conn.with_upgrades().await
        } else {
            conn.await
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// Drops closed and expired connections and the idle ones past `max_idle` (at least one is
/// kept); busy ones stay, each is a request in flight.
fn trim(list: &mut Vec<Idle>, max_idle: usize) {
    list.retain(|c| !c.sender.is_closed() && c.since.elapsed() < IDLE);
    let mut idle = 0;
    list.retain(|c| {
        if !c.sender.is_ready() {
            return true;
        }
        idle += 1;
        idle <= max_idle.max(1)
    });
}

/// `host:port`, `[v6]:port` → (host, port).
pub(super) fn split_authority(a: &str) -> Option<(&str, u16)> {
    let (host, port) = a.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use bytes::Bytes;
    use http_body_util::BodyExt as _;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;

    /// A real HTTP/1.1 server on loopback answering every request with `ok`; it counts
    /// connections and closes each after `per_conn` requests.
    async fn server(per_conn: usize) -> (String, Arc<AtomicUsize>) {
        let (addr, accepted, _) = counting_server(per_conn).await;
        (addr, accepted)
    }

    /// `server`, also counting the connections still open (a connection's task ends when
    /// the client closes it).
    async fn counting_server(per_conn: usize) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let live = Arc::new(AtomicUsize::new(0));
        let (count, open) = (accepted.clone(), live.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                open.fetch_add(1, Ordering::SeqCst);
                let open = open.clone();
                tokio::spawn(async move {
                    struct Closed(Arc<AtomicUsize>);
                    impl Drop for Closed {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    let _closed = Closed(open);
                    answer_ok(&mut s, per_conn).await;
                });
            }
        });
        (addr, accepted, live)
    }

    /// Answers `ok` to each of up to `requests` request heads on `s` (bodyless requests),
    /// then returns; returns early when the client closes.
    async fn answer_ok<S>(s: &mut S, requests: usize)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut buf = Vec::new();
        for _ in 0..requests {
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 1024];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.clear();
            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if s.write_all(reply).await.is_err() {
                return;
            }
        }
    }

    fn get(authority: &str) -> Request<Body> {
        let body = http_body_util::Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed();
        Request::builder()
            .uri("/v1/models")
            .header(http::header::HOST, authority)
            .body(body)
            .expect("request")
    }

    async fn ok(pool: &Pool, authority: &str) {
        let resp = pool
            .send(authority, None, None, get(authority))
            .await
            .expect("answered");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    // Upstream sockets carry the bypass mark (SO_MARK needs CAP_NET_ADMIN).
    #[tokio::test]
    #[ignore = "needs root: upstream sockets carry SO_MARK (cargo xtask test runs it as root)"]
    async fn connections_are_reused_and_a_closed_one_is_replaced() {
        let (authority, accepted) = server(usize::MAX).await;
        let pool = Pool::new(0x51ce, Duration::from_secs(2), 4);
        for _ in 0..5 {
            ok(&pool, &authority).await;
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for five requests"
        );

        // A server that closes after every answer: each request still succeeds, on a new
        // connection (a pooled one found closed is never used).
        let (authority, accepted) = server(1).await;
        for _ in 0..3 {
            ok(&pool, &authority).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);

        // Without the pause the closing connection may still look open when it is taken:
        // the request comes back unsent and goes out on a new connection.
        for _ in 0..20 {
            ok(&pool, &authority).await;
        }
    }

    #[tokio::test]
    #[ignore = "needs root: upstream sockets carry SO_MARK (cargo xtask test runs it as root)"]
    async fn the_sweep_closes_a_bursts_idle_connections_beyond_max_idle() {
        let (authority, accepted, live) = counting_server(usize::MAX).await;
        let pool = Pool::new(0x51ce, Duration::from_secs(2), 2);
        // Six at once: six connections, all idle in the pool once answered.
        futures_util::future::join_all((0..6).map(|_| ok(&pool, &authority))).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 6);
        assert_eq!(pool.open(), 6, "take() trims only when a request comes");
        pool.sweep();
        assert_eq!(pool.open(), 2);
        // The server sees the four others closed (hyper closes a dropped sender's connection).
        for _ in 0..200 {
            if live.load(Ordering::SeqCst) == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(live.load(Ordering::SeqCst), 2);
        // The two kept are reused.
        ok(&pool, &authority).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    #[ignore = "needs root: upstream sockets carry SO_MARK (cargo xtask test runs it as root)"]
    async fn a_dead_backend_is_a_connect_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let pool = Pool::new(0x51ce, Duration::from_secs(2), 4);
        let authority = format!("127.0.0.1:{port}");
        let e = pool
            .send(&authority, None, None, get(&authority))
            .await
            .expect_err("nothing listens");
        assert!(e.is_connect(), "{e}");
        assert!(e.to_string().contains(&authority), "{e}");
    }

    /// A TLS server on loopback (certificate for 127.0.0.1 from a CA made here, whose PEM
    /// file is returned) answering `ok` to every request on keep-alive connections; it counts
    /// completed handshakes.
    async fn tls_server(dir: &std::path::Path) -> (String, std::path::PathBuf, Arc<AtomicUsize>) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write CA");
        let acceptor = crate::tls::test_acceptor("127.0.0.1", &ca);
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let count = handshakes.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (acceptor, count) = (acceptor.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(s).await else {
                        return;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    answer_ok(&mut s, usize::MAX).await;
                });
            }
        });
        (addr, ca_file, handshakes)
    }

    async fn tls_ok(pool: &Pool, authority: &str, o: &Origin) {
        let resp = pool
            .send(authority, None, Some(o), get(authority))
            .await
            .expect("answered over TLS");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    #[tokio::test]
    #[ignore = "needs root: upstream sockets carry SO_MARK (cargo xtask test runs it as root)"]
    async fn tls_and_cleartext_connections_to_one_authority_never_mix() {
        let dir = std::env::temp_dir().join(format!("sluice-h1-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (authority, ca_file, handshakes) = tls_server(&dir).await;
        let settings = crate::tls::Settings {
            ca_file: Some(ca_file),
            ..crate::tls::Settings::default()
        };
        let a = Origin::new(0, "a", &settings).expect("origin a");
        let b = Origin::new(1, "b", &settings).expect("origin b");
        let _ = std::fs::remove_dir_all(&dir);
        let pool = Pool::new(0x51ce, Duration::from_secs(2), 4);
        for _ in 0..3 {
            tls_ok(&pool, &authority, &a).await;
        }
        assert_eq!(
            handshakes.load(Ordering::SeqCst),
            1,
            "one TLS connection, reused"
        );
        // Cleartext to the same authority dials its own connection, which the TLS server
        // refuses: the pooled TLS connection is never taken for it.
        pool.send(&authority, None, None, get(&authority))
            .await
            .expect_err("cleartext to a TLS server");
        assert_eq!(handshakes.load(Ordering::SeqCst), 1);
        // Another target's TLS (other certificates, possibly) gets a connection of its own.
        tls_ok(&pool, &authority, &b).await;
        assert_eq!(handshakes.load(Ordering::SeqCst), 2);
        tls_ok(&pool, &authority, &a).await;
        assert_eq!(
            handshakes.load(Ordering::SeqCst),
            2,
            "a's connection is still pooled"
        );
    }

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(split_authority("127.0.0.1:8000"), Some(("127.0.0.1", 8000)));
        assert_eq!(split_authority("[::1]:11434"), Some(("::1", 11434)));
        assert_eq!(
            split_authority("models.internal:443"),
            Some(("models.internal", 443))
        );
        assert_eq!(split_authority("no-port"), None);
        assert_eq!(split_authority("host:http"), None);
    }
}
