//! HTTP/2 connections for gRPC that hyper-util's pooled client cannot make: those dialled
//! from a client's network namespace or over TLS. HTTP/2 multiplexes, so one connection per
//! (namespace, TLS origin, authority) carries every call: a gRPC call over TLS pays the TCP
//! and TLS handshakes once, not per call.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use hyper::client::conn::http2::SendRequest;

use crate::respond::Body;

/// A connection nobody used for this long is dropped (its task ends once its last stream
/// does), as hyper-util's pool does with the cleartext ones.
const IDLE: Duration = Duration::from_secs(60);

/// (client's network namespace cookie, 0 for the agent's own; TLS origin id, 0 for
/// cleartext; "host:port").
pub type Key = (u64, u32, Box<str>);

struct Entry {
    sender: SendRequest<Body>,
    used: Instant,
}

/// At most `max` connections; when full, a new connection serves its call and is not kept.
pub struct Pool {
    conns: Mutex<HashMap<Key, Entry>>,
    max: usize,
}

impl Pool {
    pub fn new(max: usize) -> Pool {
        Pool {
            conns: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    /// The open connection for `key`, if there is one.
    pub fn take(&self, key: &Key) -> Option<SendRequest<Body>> {
        let mut all = self.conns.lock().ok()?;
        let e = all.get_mut(key)?;
        if e.sender.is_closed() {
            all.remove(key);
            return None;
        }
        e.used = Instant::now();
        Some(e.sender.clone())
    }

    /// Keeps a new connection for the next calls to `key`.
    pub fn put(&self, key: Key, sender: SendRequest<Body>) {
        let Ok(mut all) = self.conns.lock() else {
            return;
        };
        if all.len() >= self.max && !all.contains_key(&key) {
            retain_live(&mut all);
            if all.len() >= self.max {
                return;
            }
        }
        all.insert(
            key,
            Entry {
                sender,
                used: Instant::now(),
            },
        );
    }

    /// Stops handing out `key`'s connection: its server left a call unanswered past the
    /// head timeout. Calls still on it go on; the connection ends with the last of them.
    pub fn forget(&self, key: &Key) {
        if let Ok(mut all) = self.conns.lock() {
            all.remove(key);
        }
    }

    /// Drops closed and idle connections (`app::heartbeat`, every few seconds), so the
    /// connections of a namespace that went away do not stay open.
    pub fn sweep(&self) {
        if let Ok(mut all) = self.conns.lock() {
            retain_live(&mut all);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.conns.lock().map_or(0, |all| all.len())
    }
}

fn retain_live(all: &mut HashMap<Key, Entry>) {
    all.retain(|_, e| !e.sender.is_closed() && e.used.elapsed() < IDLE);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real HTTP/2 server on loopback answering every stream with 200; aborting its task
    /// closes its connections too (they live in its `JoinSet`).
    async fn server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((s, _)) = l.accept().await {
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Empty::<bytes::Bytes>::new(),
                        ))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
                });
            }
        });
        (addr, task)
    }

    async fn connect(addr: std::net::SocketAddr) -> SendRequest<Body> {
        let s = tokio::net::TcpStream::connect(addr).await.expect("dial");
        super::super::http::h2_handshake(s)
            .await
            .expect("handshake")
    }

    fn request() -> http::Request<Body> {
        http::Request::builder()
            .uri("http://localhost/x")
            .version(http::Version::HTTP_2)
            .body(crate::respond::full(bytes::Bytes::new()))
            .expect("request")
    }

    #[tokio::test]
    async fn one_connection_serves_every_call_and_is_bounded_and_swept() {
        let (addr, task) = server().await;
        let pool = Pool::new(2);
        let key: Key = (0, 1, addr.to_string().into());
        assert!(pool.take(&key).is_none());
        pool.put(key.clone(), connect(addr).await);
        for _ in 0..3 {
            let mut s = pool.take(&key).expect("pooled");
            let resp = s.send_request(request()).await.expect("call");
            assert_eq!(resp.status(), 200);
        }
        assert_eq!(pool.len(), 1);
        // Full: a third key's connection is not kept.
        pool.put((7, 1, "b:1".into()), connect(addr).await);
        pool.put((8, 1, "c:1".into()), connect(addr).await);
        assert_eq!(pool.len(), 2);
        assert!(pool.take(&(8, 1, "c:1".into())).is_none());
        // Connections the server closed are neither handed out nor kept.
        task.abort();
        let mut gone = false;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if pool.take(&key).is_none() {
                gone = true;
                break;
            }
        }
        assert!(gone, "a closed connection was still handed out");
        pool.sweep();
        assert_eq!(pool.len(), 0);
    }
}
