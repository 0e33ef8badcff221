//! Real servers on loopback for the tests: a small HTTP/1.1 server (keep-alive, fixed and slow
//! responses, bulk bodies, and a minimal OpenAI/Ollama-compatible API with real SSE and
//! NDJSON streaming) and an echo server with half-close. Each records the peer address
//! of every connection it accepts, so tests can tell intercepted from direct connections.
use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::atomic::Ordering,
    thread,
    time::Duration,
};

use crate::Seen;

pub struct Server {
    pub addr: SocketAddr,
    pub seen: Seen,
}

impl Server {
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.seen
            .peers
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// The body of every request to a model route so far.
    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.seen
            .bodies
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.seen.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve(bind: &str, handler: fn(TcpStream, &Seen) -> io::Result<()>) -> Server {
    serve_with(bind, handler, Seen::default())
}

fn serve_with(bind: &str, handler: fn(TcpStream, &Seen) -> io::Result<()>, seen: Seen) -> Server {
    let listener = TcpListener::bind(bind).expect("bind test server");
    let addr = listener.local_addr().expect("local addr");
    let s2 = seen.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            if s2.stop.load(Ordering::SeqCst) {
                return;
            }
            let Ok(conn) = conn else { continue };
            if !s2.unrecorded
                && let (Ok(peer), Ok(mut peers)) = (conn.peer_addr(), s2.peers.lock())
            {
                peers.push(peer);
            }
            let seen = s2.clone();
            thread::spawn(move || {
                let _ = handler(conn, &seen);
            });
        }
    });
    Server { addr, seen }
}

/// HTTP/1.1 server. Routes: `/slow` answers after 1.5 s, `/bytes/N` returns N bytes,
/// `POST /sink` reads the body and answers with its length, anything else a short greeting.
pub fn http(bind: &str) -> Server {
    serve(bind, handle_http)
}

/// `http` that keeps no record of peers, requests or headers (`Seen::unrecorded`), for
/// benchmarks.
pub fn http_unrecorded(bind: &str) -> Server {
    http_thinking(bind, Duration::ZERO)
}

/// `http_unrecorded` whose model routes (`/v1/`, `/api/`) wait `think` before they answer,
/// as a model server computes before its first byte.
pub fn http_thinking(bind: &str, think: Duration) -> Server {
    let seen = Seen {
        unrecorded: true,
        think,
        ..Seen::default()
    };
    serve_with(bind, handle_http, seen)
}

/// `http` that requires an API key on its `/v1/` routes: `Authorization: Bearer <key>` with
/// one of `keys` (which the test may change while it runs), else 401 in OpenAI's shape. Two
/// debug routes echo the `Authorization` header they got: `/v1/debug/auth` with a
/// `Content-Length`, `/v1/debug/auth-chunked` in 3-byte chunks, each flushed on its own.
pub fn keyed(bind: &str, keys: &[&str]) -> Server {
    let seen = Seen::default();
    if let Ok(mut k) = seen.keys.lock() {
        *k = Some(keys.iter().map(|k| k.to_string()).collect());
    }
    serve_with(bind, handle_http, seen)
}

/// Sets the keys a `keyed` server accepts from now on.
pub fn accept_keys(server: &Server, keys: &[&str]) {
    if let Ok(mut k) = server.seen.keys.lock() {
        *k = Some(keys.iter().map(|k| k.to_string()).collect());
    }
}

/// Echoes every byte; when the client half-closes, finishes sending and closes too.
pub fn echo(bind: &str) -> Server {
    serve(bind, |mut s, _| {
        let _ = s.set_nodelay(true);
        let mut r = s.try_clone()?;
        io::copy(&mut r, &mut s)?;
        s.shutdown(Shutdown::Write)
    })
}

/// A WebSocket server (tungstenite) that echoes every text and binary message. Each
/// handshake's "GET /path" goes to `seen.requests` and its headers to `seen.headers`.
pub fn websocket_echo(bind: &str) -> Server {
    serve(bind, |s, seen| {
        let _ = s.set_nodelay(true);
        let seen = seen.clone();
        // tungstenite's handshake callback fixes the error type (a whole HTTP response).
        #[allow(clippy::result_large_err)]
        let record = move |req: &tungstenite::handshake::server::Request,
                           resp: tungstenite::handshake::server::Response| {
            if let Ok(mut r) = seen.requests.lock() {
                r.push(format!("{} {}", req.method(), req.uri()));
            }
            if let Ok(mut h) = seen.headers.lock() {
                for (k, v) in req.headers() {
                    h.push(format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())));
                }
            }
            Ok(resp)
        };
        let mut ws = tungstenite::accept_hdr(s, record).map_err(io::Error::other)?;
        loop {
            match ws.read().map_err(io::Error::other)? {
                m @ (tungstenite::Message::Text(_) | tungstenite::Message::Binary(_)) => {
                    ws.send(m).map_err(io::Error::other)?;
                }
                tungstenite::Message::Close(_) => return Ok(()),
                _ => {}
            }
        }
    })
}

/// An HTTP proxy's CONNECT in miniature: answers `CONNECT host:port` with 200 and then
/// echoes every byte of the tunnel (it dials nothing). The request line goes to
/// `seen.requests`.
pub fn connect_echo(bind: &str) -> Server {
    serve(bind, |s, seen| {
        let _ = s.set_nodelay(true);
        let mut r = BufReader::new(s.try_clone()?);
        let mut line = String::new();
        r.read_line(&mut line)?;
        if let Ok(mut seen) = seen.requests.lock() {
            seen.push(line.trim_end().to_string());
        }
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 || h.trim_end().is_empty() {
                break;
            }
        }
        let mut w = s;
        if !line.starts_with("CONNECT ") {
            return w.write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n");
        }
        // With a (zero) length, as some proxies send it: hyper refuses to pass one on.
        w.write_all(b"HTTP/1.1 200 Connection Established\r\nContent-Length: 0\r\n\r\n")?;
        // Bytes the reader buffered past the head belong to the tunnel.
        let early = r.buffer().to_vec();
        w.write_all(&early)?;
        let mut rest = r.into_inner();
        io::copy(&mut rest, &mut w)?;
        w.shutdown(Shutdown::Write)
    })
}

fn handle_http(stream: TcpStream, seen: &Seen) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    // Buffered and flushed once per message, as real servers write: `write!` on a raw socket
    // would send every formatted piece as its own packet.
    let mut w = io::BufWriter::with_capacity(64 * 1024, stream.try_clone()?);
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path, version) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("/").to_string(),
            parts.next().unwrap_or("HTTP/1.0").to_string(),
        );
        let mut content_length = 0usize;
        let mut authorization = String::new();
        let mut close = version == "HTTP/1.0";
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if !seen.unrecorded
                    && let Ok(mut hs) = seen.headers.lock()
                {
                    hs.push(format!("{k}: {v}"));
                }
                if k == "authorization" {
                    authorization = v.to_string();
                }
                if k == "content-length" {
                    content_length = v.parse().unwrap_or(0);
                } else if k == "connection" && v.eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        if !seen.unrecorded
            && let Ok(mut reqs) = seen.requests.lock()
        {
            reqs.push(format!("{method} {path}"));
        }
        let mut body = Vec::new();
        if content_length > 0 && (path.starts_with("/v1/") || path.starts_with("/api/")) {
            (&mut r)
                .take(content_length as u64)
                .read_to_end(&mut body)?;
        }
        if !seen.unrecorded
            && !body.is_empty()
            && let Ok(mut b) = seen.bodies.lock()
        {
            b.push(body.clone());
        }
        let mut received = body.len() as u64;
        if content_length > 0 && body.is_empty() {
            received = io::copy(&mut (&mut r).take(content_length as u64), &mut io::sink())?;
        }
        let conn_hdr = if close { "close" } else { "keep-alive" };
        let refused = path.starts_with("/v1/")
            && seen.keys.lock().ok().is_some_and(|k| {
                k.as_ref().is_some_and(|keys| {
                    !keys
                        .iter()
                        .any(|key| authorization == format!("Bearer {key}"))
                })
            });
        if refused {
            let b = serde_json::json!({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error", "code": "invalid_api_key"}}).to_string();
            write!(
                w,
                "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {conn_hdr}\r\n\r\n{b}",
                b.len()
            )?;
        } else if let Some(route @ ("/v1/debug/auth" | "/v1/debug/auth-chunked")) =
            path.split('?').next()
        {
            let b = serde_json::json!({"authorization": authorization}).to_string();
            if route.ends_with("chunked") {
                write!(
                    w,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: {conn_hdr}\r\n\r\n"
                )?;
                for piece in b.as_bytes().chunks(3) {
                    chunk(&mut w, &String::from_utf8_lossy(piece))?;
                    thread::sleep(Duration::from_millis(2));
                }
                w.write_all(b"0\r\n\r\n")?;
            } else {
                write!(
                    w,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {conn_hdr}\r\n\r\n{b}",
                    b.len()
                )?;
            }
        } else if path.starts_with("/v1/") || path.starts_with("/api/") || path == "/release" {
            if !seen.think.is_zero() {
                thread::sleep(seen.think);
            }
            model_api(&mut w, &method, &path, &body, conn_hdr, seen)?;
        } else if let Some(n) = path.strip_prefix("/bytes/") {
            let n: usize = n.parse().unwrap_or(0);
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: {conn_hdr}\r\n\r\n"
            )?;
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk.len());
                w.write_all(&chunk[..k])?;
                left -= k;
            }
        } else {
            if path == "/slow" {
                thread::sleep(Duration::from_millis(1500));
            }
            let body = if method == "POST" {
                format!("received {received}\n")
            } else {
                "hello from upstream\n".to_string()
            };
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {conn_hdr}\r\n\r\n{body}",
                body.len()
            )?;
        }
        w.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// Waits, sending nothing, until the peer closes the connection (at most 60 s), then ends
/// the connection's handler.
fn hold_until_closed(w: &mut Out) -> io::Result<()> {
    let mut s = w.get_ref().try_clone()?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut sink = [0u8; 4096];
    while s.read(&mut sink)? > 0 {}
    Err(io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the client side closed a stalled exchange",
    ))
}

/// A minimal OpenAI / Ollama-compatible API: enough for real SDKs to talk to it.
fn model_api(
    w: &mut Out,
    method: &str,
    path: &str,
    body: &[u8],
    conn_hdr: &str,
    seen: &Seen,
) -> io::Result<()> {
    let req: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let model = req["model"].as_str().unwrap_or("unknown").to_string();
    let prompt = req["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    let json = |w: &mut Out, status: &str, v: serde_json::Value| {
        let b = v.to_string();
        write!(
            w,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {conn_hdr}\r\n\r\n{b}",
            b.len()
        )
    };
    match (method, path) {
        // `stalls`: a server that takes the request and says nothing more (no head; for a
        // stream, nothing after its first chunk) until the client side closes.
        ("POST", "/v1/chat/completions") if model == "stalls" && req["stream"] != true => {
            w.flush()?;
            hold_until_closed(w)
        }
        ("GET", "/release") => {
            let (lock, cv) = &*seen.gate;
            if let Ok(mut open) = lock.lock() {
                *open = true;
            }
            cv.notify_all();
            json(w, "200 OK", serde_json::json!({"released": true}))
        }
        ("GET", "/v1/models") => json(
            w,
            "200 OK",
            serde_json::json!({"object": "list", "data": [{"id": "test-model", "object": "model", "owned_by": "sluice-tests"}]}),
        ),
        ("POST", "/v1/chat/completions") if req["stream"].as_bool() == Some(true) => {
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: {conn_hdr}\r\n\r\n"
            )?;
            let words = deltas(&model, &prompt);
            for (i, word) in words.iter().enumerate() {
                let ev = serde_json::json!({
                    "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": model,
                    "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": null}]
                });
                chunk(w, &format!("data: {ev}\n\n"))?;
                // `paced-MS`: MS milliseconds after every delta (a stream with a known pace).
                if let Some(ms) = model
                    .strip_prefix("paced-")
                    .and_then(|m| m.parse::<u64>().ok())
                {
                    thread::sleep(Duration::from_millis(ms));
                }
                if i == 0 && model == "stalls" {
                    w.flush()?;
                    return hold_until_closed(w);
                }
                if i == 0 && model == "dies" {
                    // The server crashes mid-stream: no terminating chunk.
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "server died",
                    ));
                }
                if i == 0 && model.starts_with("gated") {
                    // Hold the rest until the client proves it received this first chunk.
                    // If the client never saw this chunk (a proxy held it back), abort the
                    // stream unfinished so the client fails instead of passing late.
                    let (lock, cv) = &*seen.gate;
                    let released = lock
                        .lock()
                        .ok()
                        .and_then(|g| {
                            cv.wait_timeout_while(g, Duration::from_secs(10), |open| !*open)
                                .ok()
                        })
                        .is_some_and(|(g, _)| *g);
                    if !released {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "first chunk never reached the client",
                        ));
                    }
                }
            }
            let done = serde_json::json!({
                "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]
            });
            chunk(w, &format!("data: {done}\n\n"))?;
            chunk(w, "data: [DONE]\n\n")?;
            w.write_all(b"0\r\n\r\n")
        }
        // A server that compresses although it was not asked to.
        ("POST", "/v1/chat/completions") if model == "gzipped" => {
            let b = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03not really gzip";
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nConnection: {conn_hdr}\r\n\r\n",
                b.len()
            )?;
            w.write_all(b)
        }
        ("POST", "/v1/messages") => anthropic_messages(w, &req, &model, &prompt, conn_hdr),
        ("POST", "/v1/chat/completions") => json(
            w,
            "200 OK",
            serde_json::json!({
                "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("echo: {prompt}")}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
            }),
        ),
        ("POST", "/api/chat") | ("POST", "/api/pull") => {
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\nConnection: {conn_hdr}\r\n\r\n"
            )?;
            for word in deltas(&model, &prompt) {
                let line = serde_json::json!({"model": model, "message": {"role": "assistant", "content": word}, "done": false});
                chunk(w, &format!("{line}\n"))?;
            }
            chunk(
                w,
                &format!("{}\n", serde_json::json!({"model": model, "done": true})),
            )?;
            w.write_all(b"0\r\n\r\n")
        }
        _ => json(
            w,
            "404 Not Found",
            serde_json::json!({"error": "not found"}),
        ),
    }
}

/// The text deltas of a streamed answer: "echo:", " ", then the prompt in one delta, or
/// for a model whose name contains "split" in deltas of four characters (so a secret in
/// the prompt crosses events).
fn deltas(model: &str, prompt: &str) -> Vec<String> {
    let mut out = vec!["echo:".to_string(), " ".to_string()];
    if model.contains("split") {
        let chars: Vec<char> = prompt.chars().collect();
        out.extend(chars.chunks(4).map(|c| c.iter().collect::<String>()));
    } else {
        out.push(prompt.to_string());
    }
    out
}

/// Anthropic's Messages API, streamed (its SSE event shapes) or not: the answer is the echo
/// of the last user message's text.
fn anthropic_messages(
    w: &mut Out,
    req: &serde_json::Value,
    model: &str,
    prompt: &str,
    conn_hdr: &str,
) -> io::Result<()> {
    let text: String = deltas(model, prompt).concat();
    if req["stream"].as_bool() != Some(true) {
        let b = serde_json::json!({
            "id": "msg_test", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 1, "output_tokens": 2}
        })
        .to_string();
        return write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {conn_hdr}\r\n\r\n{b}",
            b.len()
        );
    }
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: {conn_hdr}\r\n\r\n"
    )?;
    let event = |w: &mut Out, name: &str, v: serde_json::Value| {
        chunk(w, &format!("event: {name}\ndata: {v}\n\n"))
    };
    event(
        w,
        "message_start",
        serde_json::json!({"type": "message_start", "message": {
            "id": "msg_test", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 1, "output_tokens": 0}}}),
    )?;
    event(
        w,
        "content_block_start",
        serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    )?;
    for d in deltas(model, prompt) {
        event(
            w,
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": d}}),
        )?;
    }
    event(
        w,
        "content_block_stop",
        serde_json::json!({"type": "content_block_stop", "index": 0}),
    )?;
    event(
        w,
        "message_delta",
        serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 2}}),
    )?;
    event(
        w,
        "message_stop",
        serde_json::json!({"type": "message_stop"}),
    )?;
    w.write_all(b"0\r\n\r\n")
}

type Out = io::BufWriter<TcpStream>;

fn chunk(w: &mut Out, data: &str) -> io::Result<()> {
    write!(w, "{:x}\r\n{data}\r\n", data.len())?;
    w.flush()
}
