//! The head and idle timeouts against real servers on loopback that stall. Only bounds as
//! loose as "it ended within seconds" are asserted, never a timing.
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use super::*;

/// After this, a test that was meant to end on a timeout is hung.
const HUNG: Duration = Duration::from_secs(10);

fn pool(head_ms: u64, idle_ms: u64) -> Pool {
    Pool::new(
        0,
        crate::upstream::Timeouts {
            connect: Duration::from_secs(2),
            head: Duration::from_millis(head_ms),
            idle: Duration::from_millis(idle_ms),
        },
        4,
        16384,
    )
}

/// A loopback server that answers each request head (the body is not read) by writing the
/// script's parts, each after its pause, and then waits for the next request head on the
/// same connection. It counts connections accepted and closed by the client.
struct Paced {
    addr: String,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl Paced {
    async fn start(script: Vec<(u64, &'static [u8])>) -> Paced {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, c) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (c, script) = (c.clone(), script.clone());
                tokio::spawn(async move {
                    // The last bytes read: enough to find a head's end across two reads
                    // (a body that is never parsed is not kept).
                    let mut tail = Vec::new();
                    loop {
                        // One request head; EOF (or a reset) is the client closing.
                        while !tail.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 16384];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => {
                                    c.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                                Ok(n) => {
                                    tail.drain(..tail.len().saturating_sub(3));
                                    tail.extend_from_slice(&chunk[..n]);
                                }
                            }
                        }
                        tail.clear();
                        for (pause, part) in &script {
                            tokio::time::sleep(Duration::from_millis(*pause)).await;
                            if s.write_all(part).await.is_err() {
                                c.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                });
            }
        });
        Paced {
            addr,
            accepted,
            closed,
        }
    }

    /// Waits (bounded) until the server has seen `n` connections closed by the client.
    async fn sees_closed(&self, n: usize) -> bool {
        let t = Instant::now();
        while t.elapsed() < HUNG {
            if self.closed.load(Ordering::SeqCst) >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

fn post(authority: &str, body: Bytes) -> Request<Payload> {
    Request::builder()
        .method(http::Method::POST)
        .uri("/v1/chat/completions")
        .header(http::header::HOST, authority)
        .body(Payload::Full(body))
        .expect("request")
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_head_timeout_and_its_connection_is_closed() {
    let s = Paced::start(Vec::new()).await;
    let pool = pool(300, 60_000);
    // A body written with the head, and one too large for that (written while the head is
    // awaited, and never read by this server).
    for (n, body) in [Bytes::from_static(b"{}"), Bytes::from(vec![b'x'; 8 << 20])]
        .into_iter()
        .enumerate()
    {
        let t = Instant::now();
        let e = tokio::time::timeout(HUNG, pool.send(&s.addr, None, None, post(&s.addr, body)))
            .await
            .expect("ended by the head timeout, not hung")
            .expect_err("no head");
        assert!(t.elapsed() < HUNG);
        assert!(e.is_timeout() && !e.is_connect(), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&s.addr)
                && msg.contains("300 ms")
                && msg.contains("upstream_head_timeout_ms"),
            "{msg}"
        );
        assert!(s.sees_closed(n + 1).await, "connection {n} was not closed");
        assert_eq!(pool.open(), 0, "nothing pooled");
    }
    assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_that_goes_silent_is_cut_and_its_connection_not_reused() {
    let s = Paced::start(vec![(
        0,
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\ndata: \r\n",
    )])
    .await;
    let pool = pool(60_000, 300);
    let resp = pool
        .send(
            &s.addr,
            None,
            None,
            post(&s.addr, Bytes::from_static(b"{}")),
        )
        .await
        .expect("the head came");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert_eq!(first.into_data().ok().as_deref(), Some(&b"data: "[..]));
    let t = Instant::now();
    let e = tokio::time::timeout(HUNG, body.frame())
        .await
        .expect("ended by the idle timeout, not hung")
        .expect("an error, never a clean end")
        .expect_err("cut");
    assert!(t.elapsed() < HUNG);
    assert!(matches!(e, BodyError::UpstreamSilent(_)), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&s.addr) && msg.contains("300 ms") && msg.contains("upstream_idle_timeout_ms"),
        "{msg}"
    );
    assert!(body.frame().await.is_none(), "nothing after the cut");
    drop(body);
    assert!(s.sees_closed(1).await, "the connection was not closed");
    assert_eq!(pool.open(), 0, "not reused");
}

#[tokio::test]
async fn a_stream_slower_than_the_idle_timeout_with_shorter_pauses_completes() {
    // Ten chunks 150 ms apart: 1.5 s in all against an idle timeout of 1 s, whose pauses
    // are each far shorter than it. The head waits too (less than the head timeout).
    let mut script: Vec<(u64, &'static [u8])> = vec![(
        150,
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"[..],
    )];
    script.extend(std::iter::repeat_n((150, &b"1\r\nx\r\n"[..]), 10));
    script.push((150, b"0\r\n\r\n"));
    let s = Paced::start(script).await;
    let pool = pool(1000, 1000);
    for _ in 0..2 {
        let resp = pool
            .send(
                &s.addr,
                None,
                None,
                post(&s.addr, Bytes::from_static(b"{}")),
            )
            .await
            .expect("the head came");
        let body = tokio::time::timeout(HUNG, resp.into_body().collect())
            .await
            .expect("not hung")
            .expect("a clean end")
            .to_bytes();
        assert_eq!(&body[..], b"xxxxxxxxxx");
    }
    assert_eq!(
        s.accepted.load(Ordering::SeqCst),
        1,
        "the connection was reused"
    );
}

#[tokio::test]
async fn a_protocol_switch_the_server_never_answers_is_a_head_timeout() {
    let s = Paced::start(Vec::new()).await;
    let pool = pool(300, 60_000);
    let req = Request::builder()
        .uri("/ws")
        .header(http::header::HOST, &s.addr)
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, "websocket")
        .body(respond::full(Bytes::new()))
        .expect("request");
    let e = tokio::time::timeout(HUNG, pool.dedicated(&s.addr, None, None, req))
        .await
        .expect("ended by the head timeout, not hung")
        .expect_err("no head");
    assert!(e.is_timeout(), "{e}");
    assert!(s.sees_closed(1).await, "hyper's connection was not closed");
}

/// A server that answers as soon as it has the request head and then never reads the body
/// nor closes: once the response has ended, the rest of the request gets the idle time and
/// no more. Before, its writer waited on the socket for good, holding a task, the socket
/// and the whole buffered body for every such request.
#[tokio::test]
async fn the_rest_of_a_request_an_answered_server_never_reads_is_given_up() {
    // More than loopback's socket buffers hold (tcp_rmem and tcp_wmem at most 32 + 4 MiB).
    const BODY: usize = 64 << 20;
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let (go, start_reading) = tokio::sync::oneshot::channel::<()>();
    let (report, received) = tokio::sync::oneshot::channel::<usize>();
    tokio::spawn(async move {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let mut head = vec![0u8; 1024];
        let mut n = s.read(&mut head).await.unwrap_or(0);
        let _ = s
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\n\r\nbig")
            .await;
        // Not reading: the client's writer is stuck until it gives up (or for good).
        let _ = start_reading.await;
        let mut chunk = vec![0u8; 64 * 1024];
        while let Ok(k) = s.read(&mut chunk).await {
            if k == 0 {
                break;
            }
            n += k;
        }
        let _ = report.send(n);
    });
    let pool = pool(60_000, 200);
    let resp = tokio::time::timeout(
        HUNG,
        pool.send(
            &addr,
            None,
            None,
            post(&addr, Bytes::from(vec![b'x'; BODY])),
        ),
    )
    .await
    .expect("not hung")
    .expect("answered");
    assert_eq!(resp.status(), 413);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"big");
    // Well past the idle time: the writer has given up and closed the connection, so the
    // server reads what was sent before that and then the end, never the whole request.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = go.send(());
    let n = tokio::time::timeout(HUNG, received)
        .await
        .expect("the connection was closed")
        .expect("the server's count");
    assert!(n < BODY, "the whole request was still written ({n} bytes)");
}
