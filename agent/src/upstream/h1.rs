//! HTTP/1.1 connections to model servers, pooled per runtime thread.
//!
//! The pooled path (`Pool::send`, every request that is neither gRPC nor a protocol switch)
//! is a client of our own on `httparse`: the request is written from the request's own task
//! (no connection task, no channel), its head and a buffered body in one write; the
//! response head is parsed strictly (`conn`); the response body reads from the connection
//! as the client's side polls it and hands the connection back to the pool at its clean end
//! (`body`). hyper's client cost ~14,000 instructions per request here, a third of it
//! parsing the response head, plus the handoff to its connection task
//! (docs/benchmarks.md, "The hot path", items 13 and 15).
//!
//! Protocol switches (`Pool::dedicated`) stay on hyper's client connection: they need
//! `hyper::upgrade` to hand the socket to the tunnel. gRPC (HTTP/2) is in `h2` and
//! `http`, on hyper too.
//!
//! The pool keeps idle connections per (namespace, TLS origin, authority); a request takes
//! the most recently used one that the server has neither closed nor written to (a peek at
//! the socket, and for TLS at what rustls already read), else dials. A request is never
//! sent twice once any byte of it was written: only a pooled connection whose first write
//! failed with nothing written is given up for the next one.
//!
//! A response head is awaited at most `Timeouts::head` (`upstream_head_timeout_ms`) and a
//! response body read with at most `Timeouts::idle` of silence between two reads; past
//! either the connection is closed, never pooled. Each is a timer-wheel entry, no syscall:
//! a deadline later than the runtime's next planned wakeup (`app::heartbeat`, every second)
//! never makes tokio wake its driver.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::{Buf as _, Bytes, BytesMut};
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::{
    body::Incoming,
    client::conn::http1::{self, SendRequest},
};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, AsyncWriteExt as _, WriteHalf};

use crate::{
    intercept::netns::Served,
    respond::{self, Body, BodyError},
    tls::Origin,
};

mod body;
mod conn;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod timeout_tests;

pub use body::Error as BodyFailure;

/// The request head as the pooled client writes it for a body of `len` bytes (`None`:
/// streamed). The fuzz targets read it back with the client-facing server's framing.
#[doc(hidden)]
pub fn encode_request(parts: &mut http::request::Parts, len: Option<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    conn::frame(&mut parts.headers, len);
    conn::encode_head(parts, &mut out);
    out
}
use conn::{Conn, Framing, HeadError, Kind, Stream};

/// A pooled connection unused this long is closed instead of reused: servers close idle
/// connections too, and a request sent on one that is closing would be lost.
const IDLE: Duration = Duration::from_secs(60);

/// A buffered body up to this size goes out in the head's write; a larger one is written
/// while the response head is awaited, so a server answering early never deadlocks it (nor
/// does an inline one: what the socket does not take at once is written the same way).
const INLINE: usize = 64 * 1024;

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
    #[error("upstream {authority}: writing the request: {source}")]
    Write {
        authority: String,
        source: std::io::Error,
    },
    #[error("upstream {authority}: {source}")]
    Head {
        authority: String,
        source: HeadError,
    },
    /// The client's request body failed while it was being passed on.
    #[error("upstream {authority}: the request body ended early: {source}")]
    RequestBody {
        authority: String,
        source: BodyError,
    },
    #[error(
        "upstream {authority}: the request body's length ({sent}) is not the {declared} bytes declared"
    )]
    Length {
        authority: String,
        declared: u64,
        sent: u64,
    },
    /// The request went out and no response head came in time; the connection is closed.
    #[error(
        "upstream {authority} sent no response head within {} ms (upstream_head_timeout_ms)",
        .after.as_millis()
    )]
    HeadTimeout { authority: String, after: Duration },
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

    /// No response head within `upstream_head_timeout_ms`.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::HeadTimeout { .. })
    }
}

/// A request body as the pooled path takes it: bytes Sluice read (framed with their
/// length, written with the head), or the client's stream (its length if declared, else
/// chunked).
pub enum Payload {
    Full(Bytes),
    Stream(Body),
}

impl Payload {
    pub fn into_body(self) -> Body {
        match self {
            Payload::Full(b) => respond::full(b),
            Payload::Stream(b) => b,
        }
    }
}

/// (namespace cookie, TLS origin id).
pub type Key = (u64, u32);

/// One key's idle connections, by authority.
type ByAuthority = HashMap<Arc<str>, Vec<Idle>>;

struct Idle {
    conn: Conn,
    since: Instant,
}

/// The idle connections, shared with response bodies, which put theirs back at the end.
pub struct Shared {
    max_idle: usize,
    /// Keyed by ((client's network namespace cookie, 0 for the agent's own; TLS origin, 0
    /// for cleartext); authority): a connection dialled from one namespace is never reused
    /// for another, nor a TLS one (with one target's certificates) for cleartext or another
    /// target.
    conns: Mutex<HashMap<Key, ByAuthority>>,
}

impl Shared {
    /// Back into the pool once its response was read to the end.
    pub(super) fn put(&self, conn: Conn) {
        let Ok(mut all) = self.conns.lock() else {
            return;
        };
        let key = conn.key;
        // Entries of namespaces with nothing open any more are dropped as others are added.
        if key.0 != 0 {
            all.retain(|k, m| {
                k.0 == 0 || *k == key || m.values().flatten().any(|c| c.since.elapsed() < IDLE)
            });
        }
        let conns = all.entry(key).or_default();
        let idle = Idle {
            since: Instant::now(),
            conn,
        };
        match conns.get_mut(&*idle.conn.authority) {
            Some(list) => list.push(idle),
            None => {
                conns.insert(idle.conn.authority.clone(), vec![idle]);
            }
        }
    }

    /// The most recently used idle connection, if any; expired ones are dropped here.
    fn pop(&self, key: Key, authority: &str) -> Option<Conn> {
        let mut all = self.conns.lock().ok()?;
        let conns = all.get_mut(&key)?;
        let list = conns.get_mut(authority)?;
        trim(list, self.max_idle);
        if list.is_empty() {
            if key.0 != 0 {
                // Namespaces come and go: forget their empty entries, or the map grows.
                conns.remove(authority);
                if conns.is_empty() {
                    all.remove(&key);
                }
            }
            return None;
        }
        list.pop().map(|i| i.conn)
    }
}

pub struct Pool {
    mark: u32,
    timeouts: super::Timeouts,
    /// Largest response head (and trailer section) taken from a server.
    max_header: usize,
    shared: Arc<Shared>,
}

impl Pool {
    /// `max_header` bounds a response head and a trailer section (the agent's
    /// `max_header_bytes`).
    pub fn new(mark: u32, timeouts: super::Timeouts, max_idle: usize, max_header: usize) -> Self {
        Pool {
            mark,
            timeouts,
            max_header: max_header.max(1024),
            shared: Arc::new(Shared {
                max_idle,
                conns: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) to `authority` on a pooled connection, or on
    /// a new one. The response's body reads from the connection, and puts it back in the
    /// pool once read cleanly to its end.
    pub async fn send(
        &self,
        authority: &str,
        ns: Option<&Arc<Served>>,
        tls: Option<&Origin>,
        req: Request<Payload>,
    ) -> Result<Response<Body>, Error> {
        let key = (ns.map_or(0, |n| n.cookie), tls.map_or(0, |t| t.id));
        let (mut parts, payload) = req.into_parts();
        let head_request = parts.method == http::Method::HEAD;
        let len = match &payload {
            Payload::Full(b) => Some(b.len() as u64),
            Payload::Stream(b) if b.is_end_stream() => Some(0),
            Payload::Stream(b) => b.size_hint().exact(),
        };
        let framing = conn::frame(&mut parts.headers, len);
        let mut head = Vec::with_capacity(128 + 64 * parts.headers.len());
        conn::encode_head(&parts, &mut head);
        let (inline, streamed) = match payload {
            Payload::Full(b) if b.len() <= INLINE => (b, None),
            Payload::Full(b) => (Bytes::new(), Some(respond::full(b))),
            Payload::Stream(_) if matches!(framing, Framing::Empty | Framing::Length(0)) => {
                (Bytes::new(), None)
            }
            Payload::Stream(b) => (Bytes::new(), Some(b)),
        };
        let (mut conn, rest) = self
            .start(key, authority, ns.map(|n| &**n), tls, &head, &inline)
            .await?;
        drop(head);
        if streamed.is_none() && rest.is_none() {
            // The whole request is written: the head timeout runs from here. At the
            // deadline the connection is dropped, so closed, never pooled.
            let reading =
                conn::read_head(&mut conn.io, &mut conn.buf, head_request, self.max_header);
            let head = tokio::time::timeout(self.timeouts.head, reading)
                .await
                .map_err(|_| self.head_timeout(authority))?
                .map_err(|source| Error::Head {
                    authority: authority.to_string(),
                    source,
                })?;
            return Ok(self.respond(body::Io::Whole(conn), head));
        }
        let rest = rest.unwrap_or_default();
        self.stream(conn, rest, streamed, framing, head_request)
            .await
    }

    /// Writes the head (and an inline body) on an idle pooled connection the server has not
    /// closed, else on a new one. A pooled one whose first write took nothing is given up
    /// for the next: nothing of the request reached its server. Also returns what the
    /// socket did not take at once (perhaps nothing but TLS's flush), to be written while
    /// the answer is awaited: a server may answer before it reads it all.
    async fn start(
        &self,
        key: Key,
        authority: &str,
        ns: Option<&Served>,
        tls: Option<&Origin>,
        head: &[u8],
        body: &[u8],
    ) -> Result<(Conn, Option<Bytes>), Error> {
        let write_err = |source| Error::Write {
            authority: authority.to_string(),
            source,
        };
        let rest = |wrote: Wrote| match wrote {
            Wrote::All => None,
            Wrote::Part(n) => {
                let mut r = Vec::with_capacity((head.len() + body.len()).saturating_sub(n));
                r.extend_from_slice(head.get(n..).unwrap_or_default());
                r.extend_from_slice(body.get(n.saturating_sub(head.len())..).unwrap_or_default());
                Some(Bytes::from(r))
            }
        };
        while let Some(mut c) = self.shared.pop(key, authority) {
            if !c.io.still_idle() {
                continue;
            }
            match write_now(&mut c.io, head, body).await {
                Ok(wrote) => return Ok((c, rest(wrote))),
                Err((_, 0)) => continue,
                Err((source, _)) => return Err(write_err(source)),
            }
        }
        // Boxed: a dial (TLS handshake included) is rare on a kept-alive pool, and its
        // future would otherwise size every request's.
        let io = Box::pin(self.dial(authority, ns, tls)).await?;
        let mut c = Conn {
            io,
            buf: BytesMut::with_capacity(8192),
            key,
            authority: Arc::from(authority),
        };
        let wrote = write_now(&mut c.io, head, body)
            .await
            .map_err(|(source, _)| write_err(source))?;
        Ok((c, rest(wrote)))
    }

    /// The rest of the request (`rest`, bytes the head's write left over, then `body`)
    /// written while the response head is awaited: a server may answer before it has read
    /// the whole body (a 413, or a streaming echo). An answer that comes first leaves the
    /// rest of the request to a task of its own, which goes on for at most `Timeouts::idle`
    /// after the response's clean end and is ended with a response body dropped before it;
    /// that connection is not reused. The head timeout runs from the first write, and again from the end of the
    /// body's: a server that neither reads the rest nor answers is not waited on for good.
    async fn stream(
        &self,
        conn: Conn,
        rest: Bytes,
        body: Option<Body>,
        framing: Framing,
        head_request: bool,
    ) -> Result<Response<Body>, Error> {
        let Conn {
            io,
            mut buf,
            key,
            authority,
        } = conn;
        let name = || authority.to_string();
        let (mut read, write) = tokio::io::split(io);
        let mut writer = Box::pin(write_body(write, rest, body, framing));
        // Once the writer is done: its half back when it wrote everything, else `None`.
        let mut written = None;
        let deadline = tokio::time::sleep(self.timeouts.head);
        tokio::pin!(deadline);
        let head = {
            let reading = conn::read_head(&mut read, &mut buf, head_request, self.max_header);
            tokio::pin!(reading);
            loop {
                tokio::select! {
                    // The writer first: a body written to its end keeps the connection reusable.
                    biased;
                    (half, r) = &mut writer, if written.is_none() => match r {
                        Ok(()) => {
                            written = Some(Some(half));
                            deadline
                                .as_mut()
                                .reset(tokio::time::Instant::now() + self.timeouts.head);
                        }
                        Err(WriteError::Body(source)) => {
                            return Err(Error::RequestBody { authority: name(), source });
                        }
                        Err(WriteError::Length { declared, sent }) => {
                            return Err(Error::Length { authority: name(), declared, sent });
                        }
                        // The server may have answered and closed: its head says what
                        // happened, or reading it fails.
                        Err(WriteError::Io(e)) => {
                            tracing::debug!(upstream = %authority, error = %e, "writing the request body failed");
                            written = Some(None);
                        }
                    },
                    head = &mut reading => break head,
                    // Both halves (and the writer) are dropped: the connection is closed.
                    () = &mut deadline => return Err(self.head_timeout(&authority)),
                }
            }
        };
        let head = head.map_err(|source| Error::Head {
            authority: name(),
            source,
        })?;
        let io = match written {
            Some(Some(half)) => body::Io::Whole(Conn {
                io: read.unsplit(half),
                buf,
                key,
                authority,
            }),
            Some(None) => body::Io::Half {
                read,
                buf,
                authority,
                writer: None,
            },
            None => {
                let (ended, after_end) = tokio::sync::oneshot::channel::<()>();
                let idle = self.timeouts.idle;
                let task = tokio::spawn(async move {
                    // Once the response has ended the rest gets `idle` more: a server that
                    // answered and never reads on would hold this task, its socket and the
                    // body for good. Dropped early, the response aborts the task itself.
                    let given_up = async {
                        match after_end.await {
                            Ok(()) => tokio::time::sleep(idle).await,
                            Err(_) => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        (_, r) = writer => if let Err(e) = r {
                            tracing::debug!(error = ?e, "the rest of a request body was not written");
                        },
                        () = given_up => tracing::debug!(
                            "the rest of a request body was not taken within upstream_idle_timeout_ms of the response's end"
                        ),
                    }
                });
                body::Io::Half {
                    read,
                    buf,
                    authority,
                    writer: Some(body::Writer {
                        task: Some(task.abort_handle()),
                        ended: Some(ended),
                    }),
                }
            }
        };
        Ok(self.respond(io, head))
    }

    fn head_timeout(&self, authority: &str) -> Error {
        Error::HeadTimeout {
            authority: authority.to_string(),
            after: self.timeouts.head,
        }
    }

    fn respond(&self, io: body::Io, head: conn::Head) -> Response<Body> {
        let body = match head.kind {
            Kind::Empty => {
                io.end(head.reuse, &self.shared);
                respond::full(Bytes::new())
            }
            kind => body::Body::new(
                io,
                kind,
                head.reuse,
                self.shared.clone(),
                self.max_header,
                self.timeouts.idle,
            )
            .boxed(),
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        if let Some(r) = head.reason {
            resp.extensions_mut().insert(r);
        }
        resp
    }

    /// Sends `req` on a new connection of its own that can switch protocols: after a switch
    /// it carries the tunnel, so it never joins the pool. On hyper's client: the switch needs
    /// `hyper::upgrade`.
    pub async fn dedicated(
        &self,
        authority: &str,
        ns: Option<&Arc<Served>>,
        tls: Option<&Origin>,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, Error> {
        let io = self.dial(authority, ns.map(|n| &**n), tls).await?;
        let (mut sender, conn) = handshake(authority, io).await?;
        match tokio::time::timeout(self.timeouts.head, sender.send_request(req)).await {
            Ok(sent) => sent.map_err(Error::Request),
            Err(_) => {
                // hyper's connection task holds the socket: ended, it closes it.
                conn.abort();
                Err(self.head_timeout(authority))
            }
        }
    }

    /// Closes idle connections past `max_idle` or `IDLE`, for every backend: run every few
    /// seconds (`app::heartbeat`), so a burst's idle connections and expired ones are closed
    /// even when no request goes to their backend again.
    pub fn sweep(&self) {
        let Ok(mut all) = self.shared.conns.lock() else {
            return;
        };
        for conns in all.values_mut() {
            for list in conns.values_mut() {
                trim(list, self.shared.max_idle);
            }
            conns.retain(|_, list| !list.is_empty());
        }
        all.retain(|key, conns| key.0 == 0 || !conns.is_empty());
    }

    /// Idle pooled connections.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.shared.conns.lock().map_or(0, |all| {
            all.values().flat_map(|c| c.values()).map(Vec::len).sum()
        })
    }

    /// A TCP connection with the bypass mark, from the client's namespace, with TLS when the
    /// target originates it.
    async fn dial(
        &self,
        authority: &str,
        ns: Option<&Served>,
        tls: Option<&Origin>,
    ) -> Result<Stream, Error> {
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
        let connect = self.timeouts.connect;
        let (stream, _) = super::dial_host(host, port, self.mark, connect, ns)
            .await
            .map_err(connect_err)?;
        let Some(t) = tls else {
            return Ok(Stream::Plain(stream));
        };
        // A server that accepts and never answers the handshake is a failed connect
        // (nothing was sent): the next backend is tried.
        match tokio::time::timeout(connect, t.connect(stream, host, false)).await {
            Ok(Ok(s)) => Ok(Stream::Tls(Box::new(s))),
            Ok(Err(failure)) => Err(Error::Tls {
                authority: authority.to_string(),
                failure,
            }),
            Err(_) => Err(connect_err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no TLS handshake within {} ms (connect_timeout_ms)",
                    connect.as_millis()
                ),
            ))),
        }
    }
}

/// hyper's HTTP/1.1 client on a dialled stream, for a protocol switch; its task ends once
/// it has handed the socket over, or when the server closes, or when aborted through the
/// handle returned.
async fn handshake(
    authority: &str,
    io: Stream,
) -> Result<(SendRequest<Body>, tokio::task::AbortHandle), Error> {
    let (sender, conn) =
        http1::handshake(TokioIo::new(io))
            .await
            .map_err(|source| Error::Handshake {
                authority: authority.to_string(),
                source,
            })?;
    let task = tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok((sender, task.abort_handle()))
}

/// How far `write_now` got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrote {
    /// Everything, flushed.
    All,
    /// This many bytes; the socket would block on the rest (or on TLS's flush): the server
    /// is not reading, perhaps because it has answered already.
    Part(usize),
}

/// Writes `head` and `body` with vectored writes (one `writev` when the socket takes it
/// all) until done, or until the socket would block once some bytes went out: waiting here
/// for a server to read would never see it answer first, and hang. On failure, also says
/// how many bytes went out: 0 means the request was not sent.
async fn write_now<W: AsyncWrite + Unpin>(
    io: &mut W,
    head: &[u8],
    body: &[u8],
) -> Result<Wrote, (std::io::Error, usize)> {
    use std::task::Poll;
    let mut buf = head.chain(body);
    let mut written = 0;
    std::future::poll_fn(|cx| {
        loop {
            if !buf.has_remaining() {
                return match std::pin::Pin::new(&mut *io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(Wrote::All)),
                    Poll::Ready(Err(e)) => Poll::Ready(Err((e, written))),
                    Poll::Pending => Poll::Ready(Ok(Wrote::Part(written))),
                };
            }
            let mut slices = [std::io::IoSlice::new(&[]); 2];
            let cnt = buf.chunks_vectored(&mut slices);
            match std::pin::Pin::new(&mut *io).poll_write_vectored(cx, &slices[..cnt]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err((std::io::ErrorKind::WriteZero.into(), written)));
                }
                Poll::Ready(Ok(n)) => {
                    buf.advance(n);
                    written += n;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err((e, written))),
                // Nothing taken yet: an idle connection's socket buffer is empty, so the
                // first bytes go out as soon as the socket is writable.
                Poll::Pending if written == 0 => return Poll::Pending,
                Poll::Pending => return Poll::Ready(Ok(Wrote::Part(written))),
            }
        }
    })
    .await
}

#[derive(Debug)]
enum WriteError {
    Io(std::io::Error),
    Body(BodyError),
    Length { declared: u64, sent: u64 },
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> Self {
        WriteError::Io(e)
    }
}

/// The rest of the request: the bytes of it the first write left (`rest`, as they are),
/// then the body, framed as `frame` decided. Request trailers are not passed on (hyper
/// passed only those a `Trailer` header declared; model servers take none).
async fn write_body(
    mut w: WriteHalf<Stream>,
    rest: Bytes,
    body: Option<Body>,
    framing: Framing,
) -> (WriteHalf<Stream>, Result<(), WriteError>) {
    let r = async {
        if !rest.is_empty() {
            w.write_all(&rest).await?;
        }
        match body {
            Some(mut body) => write_frames(&mut w, &mut body, framing).await,
            None => Ok(w.flush().await?),
        }
    }
    .await;
    (w, r)
}

async fn write_frames<W: AsyncWrite + Unpin>(
    w: &mut W,
    body: &mut Body,
    framing: Framing,
) -> Result<(), WriteError> {
    let mut sent = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(WriteError::Body)?.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        match framing {
            Framing::Chunked => {
                let size = format!("{:x}\r\n", data.len());
                let mut out = size.as_bytes().chain(data).chain(&b"\r\n"[..]);
                w.write_all_buf(&mut out).await?;
            }
            Framing::Length(declared) if sent > declared => {
                return Err(WriteError::Length { declared, sent });
            }
            Framing::Length(_) => w.write_all(&data).await?,
            Framing::Empty => return Err(WriteError::Length { declared: 0, sent }),
        }
        // A streamed body's bytes go out as they come (TLS may hold them otherwise).
        w.flush().await?;
    }
    match framing {
        Framing::Chunked => w.write_all(b"0\r\n\r\n").await?,
        Framing::Length(declared) if sent != declared => {
            return Err(WriteError::Length { declared, sent });
        }
        _ => {}
    }
    w.flush().await?;
    Ok(())
}

/// Drops expired connections and the idle ones past `max_idle` (the most recently used are
/// kept; at least one).
fn trim(list: &mut Vec<Idle>, max_idle: usize) {
    list.retain(|c| c.since.elapsed() < IDLE);
    let keep = max_idle.max(1);
    if list.len() > keep {
        list.drain(..list.len() - keep);
    }
}

/// `host:port`, `[v6]:port` → (host, port).
pub(super) fn split_authority(a: &str) -> Option<(&str, u16)> {
    let (host, port) = a.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host, port.parse().ok()?))
}
