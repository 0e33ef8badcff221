//! The pooled client against real servers on loopback writing raw bytes.
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::BodyExt;
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

/// Generous: only the timeout tests set short ones.
fn timeouts() -> crate::upstream::Timeouts {
    crate::upstream::Timeouts {
        connect: Duration::from_secs(2),
        head: Duration::from_secs(60),
        idle: Duration::from_secs(60),
    }
}

fn get(authority: &str) -> Request<Payload> {
    Request::builder()
        .uri("/v1/models")
        .header(http::header::HOST, authority)
        .body(Payload::Full(Bytes::new()))
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

// Unmarked sockets (mark 0): no root needed.
#[tokio::test]
async fn connections_are_reused_and_a_closed_one_is_replaced() {
    let (authority, accepted) = server(usize::MAX).await;
    let pool = Pool::new(0, timeouts(), 4, 16384);
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

    // Without the pause the closing connection may still look open when it is taken: its
    // FIN is seen by the peek, or the write takes nothing, and the request goes out on a
    // new connection.
    for _ in 0..20 {
        ok(&pool, &authority).await;
    }
}

#[tokio::test]
async fn the_sweep_closes_a_bursts_idle_connections_beyond_max_idle() {
    let (authority, accepted, live) = counting_server(usize::MAX).await;
    let pool = Pool::new(0, timeouts(), 2, 16384);
    // Six at once: six connections, all idle in the pool once answered.
    futures_util::future::join_all((0..6).map(|_| ok(&pool, &authority))).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 6);
    assert_eq!(pool.open(), 6, "trimmed only by the sweep or a request");
    pool.sweep();
    assert_eq!(pool.open(), 2);
    // The server sees the four others closed.
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
async fn a_dead_backend_is_a_connect_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let pool = Pool::new(0, timeouts(), 4, 16384);
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
    let pool = Pool::new(0, timeouts(), 4, 16384);
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

/// One scripted answer: its bytes, written in two parts (at `split`, with a pause between,
/// so the client reads them separately), then the connection is closed if `close`.
#[derive(Clone)]
struct Reply {
    bytes: Vec<u8>,
    split: Option<usize>,
    close: bool,
}

fn reply(bytes: &[u8]) -> Reply {
    Reply {
        bytes: bytes.to_vec(),
        split: None,
        close: false,
    }
}

/// A loopback server answering each request head (bodies, if any, are read per their
/// `Content-Length` or chunked framing) with the next scripted reply. It records every
/// request's bytes and counts connections.
struct Script {
    addr: String,
    accepted: Arc<AtomicUsize>,
    requests: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Script {
    async fn start(replies: Vec<Reply>) -> Script {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let replies = Arc::new(std::sync::Mutex::new(
            replies
                .into_iter()
                .collect::<std::collections::VecDeque<_>>(),
        ));
        let (count, seen) = (accepted.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (seen, replies) = (seen.clone(), replies.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(req) = read_request(&mut s, &mut buf).await else {
                            return;
                        };
                        seen.lock().expect("lock").push(req);
                        let Some(r) = replies.lock().expect("lock").pop_front() else {
                            return;
                        };
                        let at = r.split.unwrap_or(r.bytes.len()).min(r.bytes.len());
                        if s.write_all(&r.bytes[..at]).await.is_err() {
                            return;
                        }
                        if at < r.bytes.len() {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            if s.write_all(&r.bytes[at..]).await.is_err() {
                                return;
                            }
                        }
                        if r.close {
                            return;
                        }
                    }
                });
            }
        });
        Script {
            addr,
            accepted,
            requests,
        }
    }

    fn requests(&self) -> Vec<Vec<u8>> {
        self.requests.lock().expect("lock").clone()
    }
}

/// More bytes from `s` into `buf`; false at EOF.
async fn fill(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// One request (head and body, as framed) off `s`; what follows stays in `buf`.
async fn read_request(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(s, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let total = if head.contains("transfer-encoding: chunked") {
        loop {
            if let Some(i) = buf[end..].windows(5).position(|w| w == b"0\r\n\r\n") {
                break end + i + 5;
            }
            if !fill(s, buf).await {
                return None;
            }
        }
    } else {
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < end + len {
            if !fill(s, buf).await {
                return None;
            }
        }
        end + len
    };
    Some(buf.drain(..total).collect())
}

fn pool() -> Pool {
    Pool::new(0, timeouts(), 4, 16384)
}

fn request(authority: &str, method: http::Method, body: Payload) -> Request<Payload> {
    Request::builder()
        .method(method)
        .uri("/v1/chat/completions")
        .header(http::header::HOST, authority)
        .body(body)
        .expect("request")
}

/// The response's status, body and trailers.
async fn exchange(
    pool: &Pool,
    authority: &str,
    method: http::Method,
) -> Result<(http::StatusCode, Bytes, Option<http::HeaderMap>), String> {
    let resp = pool
        .send(
            authority,
            None,
            None,
            request(authority, method, Payload::Full(Bytes::new())),
        )
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let trailers = collected.trailers().cloned();
    Ok((status, collected.to_bytes(), trailers))
}

const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n7 ; x=\"y\"\r\n, world\r\n0\r\nx-checksum: abc\r\nx-other: 1\r\n\r\n";
const LENGTH: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\nx-a: 1\r\n\r\nhello, world";

#[tokio::test]
async fn content_length_and_chunked_bodies_with_trailers_on_one_reused_connection() {
    let s = Script::start(vec![reply(LENGTH), reply(CHUNKED), reply(LENGTH)]).await;
    let pool = pool();
    for want_trailers in [false, true, false] {
        let (status, body, trailers) = exchange(&pool, &s.addr, http::Method::GET)
            .await
            .expect("answered");
        assert_eq!(status, 200);
        assert_eq!(&body[..], b"hello, world");
        match trailers {
            Some(t) => {
                assert!(want_trailers);
                assert_eq!(t.get("x-checksum").expect("trailer"), "abc");
                assert_eq!(t.get("x-other").expect("trailer"), "1");
            }
            None => assert!(!want_trailers),
        }
    }
    assert_eq!(
        s.accepted.load(Ordering::SeqCst),
        1,
        "one connection reused"
    );
    let reqs = s.requests();
    assert_eq!(reqs.len(), 3);
    let first = String::from_utf8_lossy(&reqs[0]);
    assert!(
        first.starts_with("GET /v1/chat/completions HTTP/1.1\r\n"),
        "{first}"
    );
    assert!(
        !first.contains("content-length") && !first.contains("transfer-encoding"),
        "a bodyless GET declares no body: {first}"
    );
}

#[tokio::test]
async fn every_response_split_at_every_byte_is_read_the_same() {
    for whole in [LENGTH, CHUNKED] {
        let replies: Vec<Reply> = (1..whole.len())
            .map(|at| Reply {
                bytes: whole.to_vec(),
                split: Some(at),
                close: false,
            })
            .collect();
        let n = replies.len();
        let s = Script::start(replies).await;
        let pool = pool();
        for at in 1..=n {
            let (status, body, _) = exchange(&pool, &s.addr, http::Method::GET)
                .await
                .unwrap_or_else(|e| panic!("split at {at}: {e}"));
            assert_eq!(
                (status.as_u16(), &body[..]),
                (200, &b"hello, world"[..]),
                "split at {at}"
            );
        }
        assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test]
async fn a_close_delimited_body_is_read_to_the_end_and_its_connection_not_reused() {
    let close = Reply {
        bytes: b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec(),
        split: Some(25),
        close: true,
    };
    let s = Script::start(vec![close.clone(), close]).await;
    let pool = pool();
    for _ in 0..2 {
        let (_, body, _) = exchange(&pool, &s.addr, http::Method::GET)
            .await
            .expect("answered");
        assert_eq!(&body[..], b"until the end");
    }
    assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(pool.open(), 0);
}

#[tokio::test]
async fn head_204_and_304_have_no_body_and_the_connection_goes_on() {
    let s = Script::start(vec![
        reply(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"),
        reply(b"HTTP/1.1 204 No Content\r\n\r\n"),
        reply(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 50\r\n\r\n"),
        reply(LENGTH),
    ])
    .await;
    let pool = pool();
    let (status, body, _) = exchange(&pool, &s.addr, http::Method::HEAD)
        .await
        .expect("HEAD");
    assert_eq!((status.as_u16(), body.len()), (200, 0));
    for want in [204, 304] {
        let (status, body, _) = exchange(&pool, &s.addr, http::Method::GET)
            .await
            .expect("answered");
        assert_eq!((status.as_u16(), body.len()), (want, 0));
    }
    let (_, body, _) = exchange(&pool, &s.addr, http::Method::GET)
        .await
        .expect("answered");
    assert_eq!(&body[..], b"hello, world");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn interim_heads_are_skipped_and_a_101_is_refused() {
    let s = Script::start(vec![
        reply(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
        reply(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"),
    ])
    .await;
    let pool = pool();
    let (status, body, _) = exchange(&pool, &s.addr, http::Method::GET)
        .await
        .expect("answered");
    assert_eq!((status.as_u16(), &body[..]), (200, &b"ok"[..]));
    let e = exchange(&pool, &s.addr, http::Method::GET)
        .await
        .expect_err("101 on the pooled path");
    assert!(e.contains("101") && e.contains(&s.addr), "{e}");
}

#[tokio::test]
async fn a_body_cut_short_by_the_server_is_an_error() {
    for cut in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this"[..],
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"[..],
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel"[..],
    ] {
        let s = Script::start(vec![Reply {
            bytes: cut.to_vec(),
            split: None,
            close: true,
        }])
        .await;
        let e = exchange(&pool(), &s.addr, http::Method::GET)
            .await
            .expect_err("short body");
        assert!(
            e.contains(&s.addr) && e.contains("closed the connection"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn malformed_oversized_and_ambiguous_heads_are_refused() {
    let big = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n",
        "a".repeat(20_000)
    );
    let many: String = (0..120).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let many = format!("HTTP/1.1 200 OK\r\n{many}content-length: 0\r\n\r\n");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"HTTP/1.1 200 OK\r\nx-fold: a\r\n b\r\ncontent-length: 0\r\n\r\n".to_vec(),
            "malformed",
        ),
        (
            b"HTTP/1.1 200 OK\r\nx-bad\x01name: a\r\ncontent-length: 0\r\n\r\n".to_vec(),
            "malformed",
        ),
        (
            b"HTTP/1.1 200 OK\r\nx-bad: a\x00b\r\ncontent-length: 0\r\n\r\n".to_vec(),
            "malformed",
        ),
        (b"HTTP/1.1 2000 OK\r\n\r\n".to_vec(), "malformed"),
        (b"SMTP ready\r\n\r\n".to_vec(), "malformed"),
        (big.into_bytes(), "larger than 16384 bytes"),
        (many.into_bytes(), "more than 100 header fields"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc".to_vec(),
            "conflicting Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nabc".to_vec(),
            "conflicting Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nab".to_vec(),
            "invalid Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nab".to_vec(),
            "other than chunked",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\nab".to_vec(),
            "other than chunked",
        ),
        (
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            "HTTP/1.0",
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-le".to_vec(), "closed before"),
    ];
    for (bytes, want) in cases {
        let s = Script::start(vec![Reply {
            bytes,
            split: None,
            close: true,
        }])
        .await;
        let e = exchange(&pool(), &s.addr, http::Method::GET)
            .await
            .expect_err(want);
        assert!(
            e.contains(want) && e.contains(&format!("upstream {}", s.addr)),
            "{want}: {e}"
        );
    }
}

#[tokio::test]
async fn a_malformed_chunked_body_is_an_error() {
    for bad in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n11111111111111111\r\n"[..],
    ] {
        let s = Script::start(vec![reply(bad)]).await;
        let e = exchange(&pool(), &s.addr, http::Method::GET)
            .await
            .expect_err("malformed chunked");
        assert!(
            e.contains("malformed chunked") && e.contains(&s.addr),
            "{e}"
        );
    }
}

#[tokio::test]
async fn chunked_with_content_length_is_read_chunked_and_never_reused() {
    let both = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let s = Script::start(vec![reply(both), reply(LENGTH)]).await;
    let pool = pool();
    let resp = pool
        .send(
            &s.addr,
            None,
            None,
            request(&s.addr, http::Method::GET, Payload::Full(Bytes::new())),
        )
        .await
        .expect("answered");
    assert!(
        resp.headers().get(http::header::CONTENT_LENGTH).is_none(),
        "the length a chunked response also declared is dropped"
    );
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"hello");
    assert_eq!(pool.open(), 0);
    let (_, body, _) = exchange(&pool, &s.addr, http::Method::GET)
        .await
        .expect("answered");
    assert_eq!(&body[..], b"hello, world");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connection_close_and_http10_without_keep_alive_are_not_pooled() {
    let s = Script::start(vec![
        reply(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"),
        reply(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"),
        reply(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok"),
        reply(LENGTH),
    ])
    .await;
    let pool = pool();
    for _ in 0..2 {
        exchange(&pool, &s.addr, http::Method::GET)
            .await
            .expect("answered");
        assert_eq!(pool.open(), 0);
    }
    exchange(&pool, &s.addr, http::Method::GET)
        .await
        .expect("answered");
    assert_eq!(pool.open(), 1, "HTTP/1.0 with keep-alive is reused");
    exchange(&pool, &s.addr, http::Method::GET)
        .await
        .expect("answered");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_while_idle_is_not_used() {
    // The server answers once per connection, then closes it while it sits in the pool.
    let once = Reply {
        bytes: LENGTH.to_vec(),
        split: None,
        close: true,
    };
    let s = Script::start(vec![once.clone(), once]).await;
    let pool = pool();
    exchange(&pool, &s.addr, http::Method::GET)
        .await
        .expect("first");
    // It was pooled (the response said nothing of closing) and is closed since.
    assert_eq!(pool.open(), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, body, _) = exchange(&pool, &s.addr, http::Method::GET)
        .await
        .expect("second, on a new connection");
    assert_eq!(&body[..], b"hello, world");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(s.requests().len(), 2, "each request received exactly once");
}

#[tokio::test]
async fn a_dropped_body_closes_its_connection() {
    let (authority, accepted, live) = counting_server(usize::MAX).await;
    let pool = pool();
    let resp = pool
        .send(&authority, None, None, get(&authority))
        .await
        .expect("answered");
    drop(resp);
    for _ in 0..200 {
        if live.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(live.load(Ordering::SeqCst), 0, "the server saw it closed");
    assert_eq!(pool.open(), 0);
    ok(&pool, &authority).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// A body of unknown length, in frames that arrive over time.
fn streamed(parts: Vec<&'static [u8]>) -> Body {
    let frames = futures_util::stream::iter(parts).then(|p| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok::<_, BodyError>(http_body::Frame::data(Bytes::from_static(p)))
    });
    BodyExt::boxed(http_body_util::StreamBody::new(frames))
}

#[tokio::test]
async fn a_streamed_body_of_unknown_length_goes_chunked_and_intact() {
    let s = Script::start(vec![reply(LENGTH), reply(LENGTH)]).await;
    let pool = pool();
    let mut req = request(
        &s.addr,
        http::Method::POST,
        Payload::Stream(streamed(vec![b"{\"model\":", b"", b"\"m\"}"])),
    );
    req.headers_mut().insert(
        http::header::TRANSFER_ENCODING,
        http::HeaderValue::from_static("gzip, chunked"),
    );
    let resp = pool.send(&s.addr, None, None, req).await.expect("answered");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"hello, world");
    // A known length goes out as one Content-Length, the body in the head's write.
    let mut req = request(
        &s.addr,
        http::Method::POST,
        Payload::Full(Bytes::from_static(b"{}")),
    );
    req.headers_mut().append(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from_static("99"),
    );
    let resp = pool.send(&s.addr, None, None, req).await.expect("answered");
    resp.into_body().collect().await.expect("body");
    let reqs = s.requests();
    let chunked = String::from_utf8_lossy(&reqs[0]);
    assert!(
        chunked.contains("transfer-encoding: chunked\r\n")
            && !chunked.contains("gzip")
            && !chunked.contains("content-length"),
        "{chunked}"
    );
    assert!(
        chunked.ends_with("\r\n\r\n9\r\n{\"model\":\r\n4\r\n\"m\"}\r\n0\r\n\r\n"),
        "{chunked}"
    );
    let full = String::from_utf8_lossy(&reqs[1]);
    assert_eq!(full.matches("content-length").count(), 1, "{full}");
    assert!(full.ends_with("content-length: 2\r\n\r\n{}"), "{full}");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1, "reused after both");
}

/// A server that reads once (`first_read` bytes at most: the head, not the body), answers 413
/// with the body "big" and keeps the connection open without reading any more.
fn answer_413_without_reading(l: TcpListener, first_read: usize) {
    tokio::spawn(async move {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let mut buf = vec![0u8; first_read];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\n\r\nbig")
            .await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    });
}

/// `req` gets the early 413 whole, without a deadlock, and the connection that holds half
/// a request is not reused.
async fn answered_early_and_not_reused(pool: &Pool, addr: &str, req: Request<Payload>) {
    let resp = tokio::time::timeout(Duration::from_secs(10), pool.send(addr, None, None, req))
        .await
        .expect("no deadlock")
        .expect("answered");
    assert_eq!(resp.status(), 413);
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("no deadlock")
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"big");
    assert_eq!(
        pool.open(),
        0,
        "a connection with half a request is not reused"
    );
}

#[tokio::test]
async fn a_server_answering_before_reading_a_large_body_does_not_deadlock_it() {
    // The server reads the head only, answers 413 and keeps the connection open without
    // reading: the 8 MiB body cannot all fit in the socket buffers.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    answer_413_without_reading(l, 4096);
    let pool = pool();
    let big = Bytes::from(vec![b'x'; 8 << 20]);
    let req = request(&addr, http::Method::POST, Payload::Full(big));
    answered_early_and_not_reused(&pool, &addr, req).await;
}

#[tokio::test]
async fn bytes_received_before_the_server_died_come_out_before_the_error() {
    let s = Script::start(vec![Reply {
        bytes: b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\nonly this\r\n".to_vec(),
        split: None,
        close: true,
    }])
    .await;
    let pool = pool();
    let resp = pool
        .send(&s.addr, None, None, get(&s.addr))
        .await
        .expect("answered");
    // Let the data and the close both arrive before the first poll.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame").expect("data first");
    assert_eq!(first.into_data().ok().as_deref(), Some(&b"only this"[..]));
    assert!(!body.is_end_stream(), "not a clean end");
    // The error waits for one `Pending`: hyper's server flushes what it has only then.
    let next = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::pin::Pin::new(&mut body).poll_frame(cx).is_pending())
    })
    .await;
    assert!(next, "the error right after the data is held back once");
    let e = body
        .frame()
        .await
        .expect("a frame")
        .expect_err("then the error");
    assert!(e.to_string().contains("closed the connection"), "{e}");
    assert!(body.frame().await.is_none());
}

/// A TLS server's answer to its first connection's first request carries, past the body
/// it declares, a whole second response in the same record; its other connections answer
/// `ok`. The declared response fills exactly the client's first read (8 KiB), so the extra
/// bytes wait inside TLS, not in the read buffer nor in the socket.
#[tokio::test]
async fn tls_bytes_past_a_responses_end_never_reach_the_next_request() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = std::env::temp_dir().join(format!("sluice-h1-tls-extra-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write CA");
    let acceptor = crate::tls::test_acceptor("127.0.0.1", &ca);
    let settings = crate::tls::Settings {
        ca_file: Some(ca_file),
        ..crate::tls::Settings::default()
    };
    let origin = Origin::new(0, "t", &settings).expect("origin");
    let _ = std::fs::remove_dir_all(&dir);
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            let smuggle = std::mem::take(&mut first);
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(s).await else {
                    return;
                };
                if !smuggle {
                    answer_ok(&mut s, usize::MAX).await;
                    return;
                }
                let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = [b'a'; 1000];
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-pad: ",
                    body.len()
                )
                .into_bytes();
                let pad = 8192 - out.len() - 4 - body.len();
                out.extend(std::iter::repeat_n(b'p', pad));
                out.extend_from_slice(b"\r\n\r\n");
                out.extend_from_slice(&body);
                out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged");
                if s.write_all(&out).await.is_err() || s.flush().await.is_err() {
                    return;
                }
                // Whatever comes next is read and never answered.
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                }
            });
        }
    });
    let pool = pool();
    let first = pool
        .send(&addr, None, Some(&origin), get(&addr))
        .await
        .expect("answered");
    let body = first.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body.len(), 1000);
    let second = tokio::time::timeout(
        Duration::from_secs(10),
        pool.send(&addr, None, Some(&origin), get(&addr)),
    )
    .await
    .expect("answered in time")
    .expect("answered");
    let body = second.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(
        &body[..],
        b"ok",
        "the second request was answered with the first response's extra bytes"
    );
}

/// The server reads the head only, answers 413 and keeps the connection open without
/// reading. Its sockets hold little (small segments, a small receive buffer, as across a
/// real network more than on loopback), so a head and a body of `INLINE` bytes do not fit:
/// the answer must still come through, as it did with hyper's client.
#[tokio::test]
async fn a_server_answering_before_reading_an_inline_body_does_not_deadlock_it() {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(2048).expect("rcvbuf");
    sock.set_tcp_mss(536).expect("mss");
    let at: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    sock.bind(&at.into()).expect("bind");
    sock.listen(8).expect("listen");
    sock.set_nonblocking(true).expect("nonblocking");
    let l = TcpListener::from_std(sock.into()).expect("listener");
    let addr = l.local_addr().expect("addr").to_string();
    answer_413_without_reading(l, 1024);
    let pool = pool();
    let req = Request::builder()
        .method(http::Method::POST)
        .uri("/v1/chat/completions")
        .header(http::header::HOST, &addr)
        .header("x-pad", "p".repeat(60_000))
        .body(Payload::Full(Bytes::from(vec![b'x'; INLINE])))
        .expect("request");
    answered_early_and_not_reused(&pool, &addr, req).await;
}

/// A bare CR or another space than SP or HTAB after a chunk size is not a chunk-size line
/// (hyper refused both).
#[tokio::test]
async fn a_chunk_size_line_with_a_bare_cr_or_a_form_feed_is_refused() {
    for bad in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\r\nhello\r\n0\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\x0c\r\nhello\r\n0\r\n\r\n"[..],
    ] {
        let s = Script::start(vec![reply(bad)]).await;
        let e = exchange(&pool(), &s.addr, http::Method::GET)
            .await
            .expect_err("malformed");
        assert!(e.contains("malformed chunked body"), "{e}");
    }
    let ok = Script::start(vec![reply(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5 \t;x=1\r\nhello\r\n0\r\n\r\n",
    )])
    .await;
    let (_, body, _) = exchange(&pool(), &ok.addr, http::Method::GET)
        .await
        .expect("spaces and tabs before an extension are fine");
    assert_eq!(&body[..], b"hello");
}

/// A server that, after `prefix`, sends `filler` for as long as the client reads.
async fn endless(prefix: &'static [u8], filler: u8) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_request(&mut s, &mut buf).await.is_none() {
                    return;
                }
                if s.write_all(prefix).await.is_err() {
                    return;
                }
                let chunk = [filler; 8192];
                while s.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    addr
}

/// An endless head, chunk-size line or trailer section is refused once past its bound;
/// none grows a buffer without end or waits for an end that never comes.
#[tokio::test]
async fn endless_heads_size_lines_and_trailers_are_cut_at_their_bound() {
    let cases: [(&'static [u8], &str); 3] = [
        (b"HTTP/1.1 200 OK\r\nx-endless: ", "larger than 16384 bytes"),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=",
            "chunk-size line too long",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-t: ",
            "trailer section too large",
        ),
    ];
    for (prefix, want) in cases {
        let addr = endless(prefix, b'a').await;
        let e = tokio::time::timeout(
            Duration::from_secs(20),
            exchange(&pool(), &addr, http::Method::GET),
        )
        .await
        .expect("refused, not waited on")
        .expect_err(want);
        assert!(e.contains(want), "{want}: {e}");
    }
}

/// A server that answers as soon as it has the request head (a 202 for an upload it takes
/// in the background) still gets the whole body, as hyper's client sent it.
#[tokio::test]
async fn an_answer_that_ends_before_the_request_body_does_not_cut_the_body() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    tokio::spawn(async move {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let mut buf = Vec::new();
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            if !fill(&mut s, &mut buf).await {
                return;
            }
        }
        if s.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\nok")
            .await
            .is_err()
        {
            return;
        }
        while !buf.ends_with(b"0\r\n\r\n") && fill(&mut s, &mut buf).await {}
        let _ = tx.send(buf);
    });
    let pool = pool();
    let parts: Vec<&'static [u8]> = vec![b"one", b"two", b"three", b"four", b"five", b"six"];
    let req = request(&addr, http::Method::POST, Payload::Stream(streamed(parts)));
    let resp = pool.send(&addr, None, None, req).await.expect("answered");
    assert_eq!(resp.status(), 202);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"ok");
    let got = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("the server saw the body end")
        .expect("the server's report");
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.ends_with("3\r\nsix\r\n0\r\n\r\n"),
        "the request body was cut: {got}"
    );
}

/// The length `prepare` wrote is kept as it is; any other is replaced by the body's own.
#[test]
fn framing_keeps_an_equal_length_and_replaces_any_other() {
    use http::{HeaderMap, HeaderValue, header::CONTENT_LENGTH};
    for (given, n, want) in [
        (vec!["5"], 5, "5"),
        (vec!["05"], 5, "5"),
        (vec!["5", "5"], 5, "5"),
        (vec!["6"], 5, "5"),
        (vec![], 12, "12"),
    ] {
        let mut h = HeaderMap::new();
        for g in &given {
            h.append(CONTENT_LENGTH, HeaderValue::from_static(g));
        }
        assert_eq!(
            super::conn::frame(&mut h, Some(n)),
            super::conn::Framing::Length(n)
        );
        let all: Vec<_> = h.get_all(CONTENT_LENGTH).iter().collect();
        assert_eq!(all, [want], "{given:?}");
    }
}
