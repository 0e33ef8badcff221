//! The server's pieces on their own: heads, framing and the body, the last two on real
//! loopback sockets. The whole loop runs in the end-to-end suites (http, pipeline,
//! adversarial, hostile_*), behind real interception.
use std::{sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use http::{Method, Response, StatusCode, Version};
use http_body_util::BodyExt as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

use super::{
    body::Body,
    head::{self, Kind},
    write::{self, Framing},
};
use crate::respond;

fn parse(s: &str) -> Result<Option<head::Head>, head::HeadError> {
    head::parse(&mut BytesMut::from(s), 8192)
}

fn status(s: &str) -> u16 {
    match parse(s) {
        Err(e) => e.status().as_u16(),
        Ok(Some(_)) => 0,
        Ok(None) => 1,
    }
}

#[test]
fn heads_are_read_strictly() {
    let h =
        parse("POST /v1/chat/completions HTTP/1.1\r\nHost: m\r\nContent-Length: 5\r\n\r\nhello")
            .expect("parsed")
            .expect("complete");
    assert_eq!(h.parts.method, Method::POST);
    assert_eq!(h.parts.uri.path(), "/v1/chat/completions");
    assert_eq!(h.kind, Kind::Length(5));
    assert!(h.keep_alive && !h.expect_continue && !h.upgrade);
    // Refused: 400, or 431 past the limits.
    for bad in [
        "BLAH BLAH\r\n\r\n",
        "POST /a HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
        "POST /a HTTP/1.1\r\nContent-Length: +2\r\n\r\n",
        "POST /a HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
        "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        "POST /a HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST /a HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n",
        "POST /a HTTP/1.1\r\nContent-Length : 2\r\n\r\n",
        "POST /a HTTP/1.1\r\nX-A: a\0b\r\n\r\n",
        "POST\t/a HTTP/1.1\r\n\r\n",
        "POST /a HTTP/2.0\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ] {
        assert_eq!(status(bad), 400, "{bad:?}");
    }
    assert_eq!(
        status(&format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(9000)
        )),
        431
    );
    assert_eq!(
        status(&format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000))),
        431
    );
    let many: String = (0..101).map(|i| format!("X-{i}: 1\r\n")).collect();
    assert_eq!(status(&format!("GET / HTTP/1.1\r\n{many}\r\n")), 431);
    // Incomplete: more is read.
    assert_eq!(status("GET / HTTP/1.1\r\nHost: m\r\n"), 1);
}

#[test]
fn framing_and_keep_alive_follow_rfc_9112() {
    let h = |s: &str| parse(s).expect("parsed").expect("complete");
    // Both lengths: chunked wins, the length goes, and the connection closes after.
    let both = h("POST /a HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(both.kind, Kind::Chunked);
    assert!(!both.keep_alive && !both.parts.headers.contains_key("content-length"));
    assert_eq!(
        h("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").kind,
        Kind::Empty
    );
    assert_eq!(
        h("POST / HTTP/1.1\r\nContent-Length: 7, 7\r\n\r\n").kind,
        Kind::Length(7)
    );
    assert!(!h("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
    assert!(!h("GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(h("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    assert!(h("POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n").expect_continue);
    assert!(!h("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue);
    assert!(h("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").upgrade);
    assert!(!h("GET / HTTP/1.0\r\nUpgrade: websocket\r\n\r\n").upgrade);
    assert!(h("CONNECT a:1 HTTP/1.1\r\n\r\n").upgrade);
    // Bare LF line ends are read (as hyper did); what follows the head stays buffered.
    let mut buf = BytesMut::from("GET /a HTTP/1.1\nHost: m\n\nGET /b");
    let first = head::parse(&mut buf, 8192)
        .expect("parsed")
        .expect("complete");
    assert_eq!(first.parts.uri.path(), "/a");
    assert_eq!(&buf[..], b"GET /b");
}

fn response(
    status: u16,
    headers: &[(&str, &str)],
    body: respond::Body,
) -> (http::response::Parts, respond::Body) {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    for (n, v) in headers {
        r.headers_mut().insert(
            http::HeaderName::from_bytes(n.as_bytes()).expect("name"),
            http::HeaderValue::from_str(v).expect("value"),
        );
    }
    r.into_parts()
}

/// A body whose frames come one at a time, as the test sends them.
struct Chunks(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = respond::BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, respond::BodyError>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
    }
}

fn streamed() -> (tokio::sync::mpsc::Sender<Bytes>, respond::Body) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (tx, Chunks(rx).boxed())
}

fn asked(method: Method, version: Version) -> write::Asked {
    write::asked(&method, version)
}

#[test]
fn response_framing_is_decided_from_what_is_known_of_the_body() {
    let h11 = asked(Method::GET, Version::HTTP_11);
    let head = |parts: &mut http::response::Parts, body: &respond::Body, asked, keep| {
        let mut out = Vec::new();
        let r = write::head(&mut out, parts, body, asked, keep);
        (r, String::from_utf8(out).expect("ascii"))
    };
    // A whole body: its length.
    let (mut p, b) = response(200, &[], respond::full(Bytes::from_static(b"hello")));
    let ((f, keep), text) = head(&mut p, &b, h11, true);
    assert_eq!((f, keep), (Framing::Length(5), true));
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("content-length: 5\r\n"),
        "{text}"
    );
    // A stream: chunked for HTTP/1.1, until close for HTTP/1.0.
    let (_tx, b) = streamed();
    let (mut p, _) = response(
        200,
        &[("transfer-encoding", "gzip")],
        respond::full(Bytes::new()),
    );
    let ((f, _), text) = head(&mut p, &b, h11, true);
    assert_eq!(f, Framing::Chunked);
    assert!(
        text.contains("transfer-encoding: chunked\r\n") && !text.contains("gzip"),
        "{text}"
    );
    let (mut p, _) = response(200, &[], respond::full(Bytes::new()));
    let ((f, keep), text) = head(&mut p, &b, asked(Method::GET, Version::HTTP_10), true);
    assert_eq!((f, keep), (Framing::Close, false));
    assert!(
        text.starts_with("HTTP/1.0 200 OK\r\n") && text.contains("connection: close"),
        "{text}"
    );
    // HEAD keeps the declared length and writes no body; 204 and a switch have none.
    let (mut p, b) = response(
        200,
        &[("content-length", "42")],
        respond::full(Bytes::new()),
    );
    let ((f, _), text) = head(&mut p, &b, asked(Method::HEAD, Version::HTTP_11), true);
    assert_eq!(f, Framing::None);
    assert!(text.contains("content-length: 42"), "{text}");
    let (mut p, b) = response(204, &[("content-length", "0")], respond::full(Bytes::new()));
    assert_eq!(head(&mut p, &b, h11, true).0.0, Framing::None);
    let (mut p, b) = response(
        101,
        &[("upgrade", "websocket"), ("connection", "upgrade")],
        respond::full(Bytes::new()),
    );
    let ((f, keep), text) = head(&mut p, &b, h11, false);
    assert_eq!((f, keep), (Framing::None, false));
    assert!(
        text.contains("connection: upgrade") && !text.contains("close"),
        "{text}"
    );
    // Closing: said so. An HTTP/1.0 keep-alive: said so too.
    let (mut p, b) = response(403, &[], respond::full(Bytes::from_static(b"no")));
    let (_, text) = head(&mut p, &b, h11, false);
    assert!(text.contains("connection: close\r\n"), "{text}");
    let (mut p, b) = response(200, &[], respond::full(Bytes::from_static(b"ok")));
    let (_, text) = head(&mut p, &b, asked(Method::GET, Version::HTTP_10), true);
    assert!(text.contains("connection: keep-alive\r\n"), "{text}");
    // A response without a `Date` gets one; the upstream's own is kept.
    let (mut p, b) = response(403, &[], respond::full(Bytes::from_static(b"no")));
    let (_, text) = head(&mut p, &b, h11, true);
    let date = text
        .lines()
        .find_map(|l| l.strip_prefix("date: "))
        .expect("a date");
    assert!(httpdate::parse_http_date(date).is_ok(), "{text}");
    let (mut p, b) = response(
        200,
        &[("date", "Sun, 06 Nov 1994 08:49:37 GMT")],
        respond::full(Bytes::new()),
    );
    let (_, text) = head(&mut p, &b, h11, true);
    assert_eq!(text.matches("date: ").count(), 1, "{text}");
    assert!(
        text.contains("date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"),
        "{text}"
    );
    // The upstream's own reason phrase is kept.
    let (mut p, b) = response(200, &[], respond::full(Bytes::new()));
    p.extensions
        .insert(hyper::ext::ReasonPhrase::from_static(b"Fine Thanks"));
    assert!(
        head(&mut p, &b, h11, true)
            .1
            .starts_with("HTTP/1.1 200 Fine Thanks\r\n")
    );
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
    (a.expect("connect"), b.expect("accept").0)
}

async fn read_until(s: &mut TcpStream, what: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !got.windows(what.len()).any(|w| w == what) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("in time")
            .expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
    got
}

/// A chunked body arriving in pieces, after a `100 Continue` it waited for, read whole;
/// the pipelined request after it goes back to the connection with the buffer.
#[tokio::test]
async fn a_chunked_body_in_pieces_is_read_and_what_follows_is_handed_back() {
    let (mut client, server) = pair().await;
    let server = Arc::new(server);
    let (tx, rx) = oneshot::channel();
    let body = Body::new(
        server.clone(),
        BytesMut::new(),
        Kind::Chunked,
        true,
        tx,
        8192,
    );
    let reader = tokio::spawn(async move { body.collect().await.map(|c| c.to_bytes()) });
    // Nothing is sent before the interim answer the client waits for.
    assert_eq!(
        read_until(&mut client, b"\r\n\r\n").await,
        b"HTTP/1.1 100 Continue\r\n\r\n"
    );
    for piece in [
        "5\r",
        "\nhel",
        "lo\r\n3;x=1\r\n, w\r\n0\r",
        "\nX-T: 1\r\n\r\nGET /next",
    ] {
        client.write_all(piece.as_bytes()).await.expect("write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = reader.await.expect("joined").expect("read");
    assert_eq!(&got[..], b"hello, w");
    let back = rx.await.expect("handed back");
    assert_eq!(&back[..], b"GET /next");
}

/// A client that closes mid-body is gone (not a malformed body), and the buffer is not
/// handed back: the connection carries nothing more.
#[tokio::test]
async fn a_body_cut_short_is_the_client_gone() {
    let (mut client, server) = pair().await;
    let (tx, rx) = oneshot::channel();
    let mut body = Body::new(
        Arc::new(server),
        BytesMut::from("abc"),
        Kind::Length(10),
        false,
        tx,
        8192,
    );
    client.write_all(b"de").await.expect("write");
    drop(client);
    let mut got = Vec::new();
    let err = loop {
        match body.frame().await {
            Some(Ok(f)) => got.extend_from_slice(&f.into_data().expect("data")),
            Some(Err(e)) => break e,
            None => panic!("a cut body ended cleanly"),
        }
    };
    assert_eq!(&got[..], b"abcde");
    assert!(err.client_gone(), "{err}");
    assert!(rx.await.is_err());
}

/// A stream's chunks reach the client as they come, none held back for the next, and the
/// head goes out with the first one when it is ready.
#[tokio::test]
async fn stream_chunks_are_written_as_they_come() {
    let (mut client, server) = pair().await;
    let (tx, mut body) = streamed();
    let (mut parts, _) = response(200, &[], respond::full(Bytes::new()));
    let mut out = Vec::new();
    let (framing, _) = write::head(
        &mut out,
        &mut parts,
        &body,
        asked(Method::POST, Version::HTTP_11),
        true,
    );
    tx.send(Bytes::from_static(b"data: 1\n\n"))
        .await
        .expect("send");
    let writer = tokio::spawn(async move {
        let r = write::body(&server, &mut out, &mut body, framing).await;
        r.map_err(|e| e.to_string())
    });
    let first = read_until(&mut client, b"data: 1\n\n\r\n").await;
    let text = String::from_utf8_lossy(&first);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("\r\n\r\n9\r\ndata: 1\n\n\r\n"),
        "{text}"
    );
    tx.send(Bytes::from_static(b"data: 2\n\n"))
        .await
        .expect("send");
    let second = read_until(&mut client, b"data: 2\n\n\r\n").await;
    assert_eq!(&second[..], b"9\r\ndata: 2\n\n\r\n");
    drop(tx);
    assert_eq!(read_until(&mut client, b"0\r\n\r\n").await, b"0\r\n\r\n");
    assert!(writer.await.expect("joined").is_ok());
}

/// A body whose declared length has all arrived is written before its end is polled: the
/// end (the record's finish, the upstream connection back to its pool) runs after the
/// client has the response, not before it. The body here looks, at its end, whether the
/// client's socket already holds the bytes.
#[tokio::test]
async fn a_body_whose_declared_length_is_here_goes_out_before_its_end() {
    use std::sync::atomic::{AtomicBool, Ordering};
    struct SeesClient {
        data: Option<Bytes>,
        client: std::net::TcpStream,
        had_it: Arc<AtomicBool>,
    }
    impl http_body::Body for SeesClient {
        type Data = Bytes;
        type Error = respond::BodyError;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, respond::BodyError>>> {
            if let Some(d) = self.data.take() {
                return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(d))));
            }
            let mut b = [0u8; 256];
            let had = self.client.peek(&mut b).is_ok_and(|n| n > 0);
            self.had_it.store(had, Ordering::SeqCst);
            std::task::Poll::Ready(None)
        }
    }
    let (client, server) = pair().await;
    let client = client.into_std().expect("std");
    client.set_nonblocking(true).expect("nonblocking");
    let had_it = Arc::new(AtomicBool::new(false));
    let mut body = SeesClient {
        data: Some(Bytes::from_static(b"all of it")),
        client: client.try_clone().expect("clone"),
        had_it: had_it.clone(),
    }
    .boxed();
    let (mut parts, _) = response(200, &[("content-length", "9")], respond::full(Bytes::new()));
    let mut out = Vec::new();
    let (framing, _) = write::head(
        &mut out,
        &mut parts,
        &body,
        asked(Method::POST, Version::HTTP_11),
        true,
    );
    assert!(matches!(framing, Framing::Length(9)), "{framing:?}");
    let r = write::body(&server, &mut out, &mut body, framing).await;
    assert!(r.is_ok(), "{r:?}");
    assert!(
        had_it.load(Ordering::SeqCst),
        "the body's end was polled before the client had the response"
    );
}

/// A body longer than its declared length is cut, never passed on past it.
#[tokio::test]
async fn a_body_longer_than_declared_is_an_error() {
    let (mut client, server) = pair().await;
    let (mut parts, mut body) = response(
        200,
        &[("content-length", "2")],
        respond::full(Bytes::from_static(b"toolong")),
    );
    let mut out = Vec::new();
    let (framing, _) = write::head(
        &mut out,
        &mut parts,
        &body,
        asked(Method::GET, Version::HTTP_11),
        true,
    );
    let r = write::body(&server, &mut out, &mut body, framing).await;
    assert!(
        matches!(
            r,
            Err(write::WriteError::Length {
                declared: 2,
                sent: 7
            })
        ),
        "{r:?}"
    );
    drop(server);
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.expect("read");
    assert!(
        !got.windows(7).any(|w| w == b"toolong"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

/// A body dropped unread (its request refused first) gives the buffer back when its rest is
/// already buffered, past it: the connection carries the next request. One still arriving
/// gives nothing back, and the connection closes.
#[tokio::test]
async fn a_body_dropped_unread_but_buffered_is_read_past() {
    let (_client, server) = pair().await;
    let server = Arc::new(server);
    for (kind, buffered) in [
        (Kind::Length(5), "hello"),
        (Kind::Chunked, "5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"),
    ] {
        let (tx, rx) = oneshot::channel();
        let body = Body::new(
            server.clone(),
            BytesMut::from(format!("{buffered}GET /next").as_str()),
            kind,
            false,
            tx,
            8192,
        );
        drop(body);
        assert_eq!(
            &rx.await.expect("handed back")[..],
            b"GET /next",
            "{kind:?}"
        );
    }
    let (tx, rx) = oneshot::channel();
    drop(Body::new(
        server.clone(),
        BytesMut::from("hel"),
        Kind::Length(5),
        false,
        tx,
        8192,
    ));
    assert!(rx.await.is_err(), "a body still arriving was read past");
}

/// A hostile upstream's `Content-Length` the client could read another way than Sluice frames
/// the body (two fields, a sign) is replaced by the one length Sluice writes, or dropped.
#[test]
fn a_length_the_client_could_read_two_ways_is_written_once() {
    let h11 = asked(Method::GET, Version::HTTP_11);
    let (mut p, b) = response(200, &[], respond::full(Bytes::from_static(b"hello")));
    p.headers
        .append("content-length", http::HeaderValue::from_static("5"));
    p.headers
        .append("content-length", http::HeaderValue::from_static("500"));
    let mut out = Vec::new();
    let (f, _) = write::head(&mut out, &mut p, &b, h11, true);
    let text = String::from_utf8(out).expect("ascii");
    assert_eq!(f, Framing::Length(5));
    assert_eq!(text.matches("content-length").count(), 1, "{text}");
    assert!(text.contains("content-length: 5\r\n"), "{text}");
    let (_tx, b) = streamed();
    let (mut p, _) = response(
        200,
        &[("content-length", "+5")],
        respond::full(Bytes::new()),
    );
    let mut out = Vec::new();
    let (f, _) = write::head(&mut out, &mut p, &b, h11, true);
    let text = String::from_utf8(out).expect("ascii");
    assert_eq!(f, Framing::Chunked);
    assert!(!text.contains("content-length"), "{text}");
}
