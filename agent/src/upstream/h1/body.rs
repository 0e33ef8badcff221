//! The response body, read from the connection by whoever polls it (the client's
//! connection task): Content-Length, chunked (trailers as a trailers frame, as hyper's
//! `Incoming` gave them) or until the server closes. Read to its clean end, a reusable
//! connection goes back to the pool; dropped before that, or silent for
//! `upstream_idle_timeout_ms` while it is read, it is closed.
use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, ReadHalf};

use super::{
    Shared,
    conn::{Conn, Kind, Stream},
};
use crate::{
    respond::BodyError,
    upstream::{Silent, idle::Watch},
    wire::body::{Decoder, Delimited, Step},
};

/// Read at least this much at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Why a response body ended early. The connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "upstream {authority} closed the connection {missing} bytes before the end of the body"
    )]
    Short { authority: Arc<str>, missing: u64 },
    #[error("upstream {authority} closed the connection before the end of its chunked body")]
    ChunkedEof { authority: Arc<str> },
    #[error("upstream {authority} sent a malformed chunked body ({why})")]
    Chunk {
        authority: Arc<str>,
        why: &'static str,
    },
    #[error("upstream {authority}: reading the response body: {source}")]
    Io {
        authority: Arc<str>,
        source: io::Error,
    },
}

/// Where the body reads from: the whole connection, or (when the response came while the
/// request body was still being written) its read half, the write half finishing in a
/// task of its own that ends with this body.
pub enum Io {
    Whole(Conn),
    Half {
        read: ReadHalf<Stream>,
        buf: BytesMut,
        authority: Arc<str>,
        writer: Option<Writer>,
    },
}

impl Io {
    fn parts(&mut self) -> (Pin<&mut (dyn AsyncRead + Unpin)>, &mut BytesMut) {
        match self {
            Io::Whole(c) => (Pin::new(&mut c.io), &mut c.buf),
            Io::Half { read, buf, .. } => (Pin::new(read), buf),
        }
    }

    /// The response's clean end: a reusable connection with nothing unread goes back to
    /// the pool. Otherwise the request may not be over: its writer goes on to the body's
    /// end (hyper's client sent the whole body too, and a server may answer an upload
    /// before taking it), for `upstream_idle_timeout_ms` at most, and the connection closes
    /// when it is done.
    pub fn end(self, reuse: bool, pool: &Shared) {
        match self {
            Io::Whole(conn) if reuse && conn.buf.is_empty() => pool.put(conn),
            Io::Half {
                writer: Some(mut w),
                ..
            } => {
                w.task = None;
                if let Some(ended) = w.ended.take() {
                    let _ = ended.send(());
                }
            }
            _ => {}
        }
    }

    fn authority(&self) -> &Arc<str> {
        match self {
            Io::Whole(c) => &c.authority,
            Io::Half { authority, .. } => authority,
        }
    }
}

/// The task writing the rest of the request body: ended with a response body dropped
/// before its end (the client went away, or the response failed); told of the response's
/// clean end, after which it has `upstream_idle_timeout_ms` left.
pub struct Writer {
    pub task: Option<tokio::task::AbortHandle>,
    pub ended: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(h) = &self.task {
            h.abort();
        }
    }
}

pub struct Body {
    io: Option<Io>,
    decoder: Decoder,
    reuse: bool,
    pool: Arc<Shared>,
    /// Data was handed out since the last `Pending`.
    fresh: bool,
    /// An error held back for one `Pending` (see `fail`).
    deferred: Option<BodyError>,
    /// The silence allowed between two reads.
    silence: Watch,
}

impl Body {
    /// `kind` is never `Kind::Empty`: such responses get no body at all.
    pub fn new(
        io: Io,
        kind: Kind,
        reuse: bool,
        pool: Arc<Shared>,
        max_trailers: usize,
        idle: Duration,
    ) -> Self {
        let delimited = match kind {
            Kind::Empty => Delimited::Length(0),
            Kind::Length(n) => Delimited::Length(n),
            Kind::Chunked => Delimited::Chunked,
            Kind::Close => Delimited::Close,
        };
        Body {
            io: Some(io),
            decoder: Decoder::new(delimited, max_trailers),
            reuse,
            pool,
            fresh: false,
            deferred: None,
            silence: Watch::new(idle),
        }
    }

    /// The clean end: a reusable connection with nothing unread goes back to the pool.
    fn end(&mut self) {
        self.decoder.stop();
        if let Some(io) = self.io.take() {
            io.end(self.reuse, &self.pool);
        }
    }

    /// Ends the body with `e`, the connection closed. Right after data, the error waits for
    /// one `Pending` first: hyper's server, given data and then at once an error, drops the
    /// data it has not flushed yet, and the client would lose the bytes the upstream did
    /// send before failing (hyper's `Incoming` delivered the error on a later wakeup).
    fn fail(
        &mut self,
        e: impl Into<BodyError>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.decoder.stop();
        self.io = None;
        if std::mem::take(&mut self.fresh) {
            self.deferred = Some(e.into());
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Some(Err(e.into())))
    }

    fn authority(&self) -> Arc<str> {
        self.io
            .as_ref()
            .map_or_else(|| Arc::from(""), |io| io.authority().clone())
    }

    /// Reads more into the buffer: `Ok(0)` is the server's EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        let (rd, buf) = io.parts();
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(rd, cx, buf)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(e) = this.deferred.take() {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            let Some(io) = this.io.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.step(io.parts().1) {
                Ok(Step::Data(data)) => {
                    if this.decoder.is_done() {
                        // Back to the pool before the last bytes are passed on: the next
                        // request may take it while this one is finishing.
                        this.end();
                    }
                    this.fresh = true;
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::Trailers(t)) => {
                    this.end();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Ok(Step::End) => {
                    this.end();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(why) => {
                    let authority = this.authority();
                    return this.fail(Error::Chunk { authority, why }, cx);
                }
            }
            // Nothing usable buffered: read more.
            let filled = this.poll_fill(cx);
            if filled.is_pending() {
                this.fresh = false;
                ready!(this.silence.waiting(cx));
                let authority = this.authority();
                let after = this.silence.after();
                return this.fail(Silent { authority, after }, cx);
            }
            this.silence.progressed();
            match ready!(filled) {
                Ok(0) => {
                    let authority = this.authority();
                    if this.decoder.ends_at_close() {
                        // Its clean end; such a connection is never reused.
                        this.decoder.stop();
                        this.io = None;
                        return Poll::Ready(None);
                    }
                    return match this.decoder.missing() {
                        Some(missing) => this.fail(Error::Short { authority, missing }, cx),
                        None => this.fail(Error::ChunkedEof { authority }, cx),
                    };
                }
                Ok(_) => {}
                Err(source) => {
                    let authority = this.authority();
                    return this.fail(Error::Io { authority, source }, cx);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done() && self.deferred.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.deferred.is_some() {
            return SizeHint::default();
        }
        self.decoder.size_hint()
    }
}
