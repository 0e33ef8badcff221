//! The request body, read from the client's connection by whoever polls it (the read stage,
//! or the upstream request for a streamed body): Content-Length or chunked. Read to its
//! clean end, the read buffer (with any pipelined bytes after the body) goes back to the
//! connection for the next request; dropped before that, the connection carries no other.
use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::{net::TcpStream, sync::oneshot};

use super::{head::Kind, socket::poll_fill};
use crate::wire::body::{Decoder, Step};

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Why a request body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the client closed the connection {missing} bytes before the end of the body")]
    Short { missing: u64 },
    #[error("the client closed the connection before the end of its chunked body")]
    ChunkedEof,
    #[error("malformed chunked body ({0})")]
    Chunk(&'static str),
    #[error("reading the request body: {0}")]
    Io(#[from] io::Error),
}

impl BodyError {
    /// The client went away, rather than sending something malformed.
    pub fn client_gone(&self) -> bool {
        match self {
            BodyError::Short { .. } | BodyError::ChunkedEof => true,
            BodyError::Io(e) => crate::http::body::gone(e.kind()),
            BodyError::Chunk(_) => false,
        }
    }
}

pub struct Body {
    io: Arc<TcpStream>,
    buf: BytesMut,
    decoder: Decoder,
    /// Bytes of `100 Continue` still to write before the first read (`None`: none due).
    /// Written only when the body is read and the client has not sent it yet: a request
    /// refused before its body is read gets its final answer and no interim one.
    continue_at: Option<usize>,
    /// Where the read buffer goes at the clean end.
    back: Option<oneshot::Sender<BytesMut>>,
}

impl Body {
    /// `kind` is never `Kind::Empty`: such requests get no body at all.
    pub fn new(
        io: Arc<TcpStream>,
        buf: BytesMut,
        kind: Kind,
        expect_continue: bool,
        back: oneshot::Sender<BytesMut>,
        max_trailers: usize,
    ) -> Self {
        Body {
            io,
            buf,
            decoder: Decoder::new(kind.delimited(), max_trailers),
            continue_at: expect_continue.then_some(0),
            back: Some(back),
        }
    }

    /// The clean end: the buffer, with what follows the body, goes back to the connection.
    fn end(&mut self) {
        if let Some(back) = self.back.take() {
            let _ = back.send(std::mem::take(&mut self.buf));
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.back = None;
        Poll::Ready(Some(Err(e)))
    }

    /// Writes the `100 Continue` still due. The socket's send buffer is empty here (the
    /// previous response went out whole), so the 25 bytes go in one write.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(at) = self.continue_at {
            match self.io.try_write(&CONTINUE[at..]) {
                Ok(n) if at + n >= CONTINUE.len() => self.continue_at = None,
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.continue_at = Some(at + n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.io.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// A body dropped unread (a request refused before its body was read) whose rest is already
/// buffered is read past, as hyper's server did: the connection carries the next request
/// instead of closing. Anything still to come from the client leaves it unusable.
impl Drop for Body {
    fn drop(&mut self) {
        if self.back.is_none() {
            return;
        }
        loop {
            match self.decoder.step(&mut self.buf) {
                Ok(Step::End) => return self.end(),
                Ok(Step::Data(_) | Step::Trailers(_)) => {}
                Ok(Step::More) | Err(_) => return,
            }
        }
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
        loop {
            match this.decoder.step(&mut this.buf) {
                Ok(Step::Data(data)) => {
                    if this.decoder.is_done() {
                        this.end();
                    }
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
                Err(why) => return this.fail(BodyError::Chunk(why)),
            }
            // Nothing usable buffered: read more, after the `100 Continue` the client waits
            // for.
            if let Err(e) = ready!(this.poll_continue(cx)) {
                return this.fail(BodyError::Io(e));
            }
            match ready!(poll_fill(&this.io, &mut this.buf, cx)) {
                Ok(0) => {
                    let e = match this.decoder.missing() {
                        Some(missing) => BodyError::Short { missing },
                        None => BodyError::ChunkedEof,
                    };
                    this.decoder.stop();
                    return this.fail(e);
                }
                Ok(_) => {}
                Err(e) => {
                    this.decoder.stop();
                    return this.fail(BodyError::Io(e));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder.size_hint()
    }
}
