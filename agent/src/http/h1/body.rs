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

use bytes::{Buf as _, Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::{net::TcpStream, sync::oneshot};

use super::{head::Kind, socket::poll_fill};
use crate::wire::chunked;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    /// Chunked: the next chunk-size line.
    Size,
    /// Chunked: bytes left in the current chunk.
    Data(u64),
    /// Chunked: the CRLF after a chunk's data.
    DataEnd,
    /// Chunked: the trailer section after the last chunk.
    Trailers,
    Done,
}

/// What the next bytes of a body are.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// The chunked body's trailer section; the body ended with it.
    Trailers(http::HeaderMap),
    /// The body ended (with its data, or its empty trailer section).
    End,
    /// Nothing complete is buffered: read more.
    More,
}

/// The body's framing over a buffer, without I/O: what `Body` reads from the socket, and
/// what the fuzz target drives with arbitrary bytes. Data is split off the buffer, never
/// copied; what follows the body stays in the buffer.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    max_trailers: usize,
}

impl Decoder {
    pub fn new(kind: Kind, max_trailers: usize) -> Self {
        let state = match kind {
            Kind::Empty | Kind::Length(0) => State::Done,
            Kind::Length(n) => State::Length(n),
            Kind::Chunked => State::Size,
        };
        Decoder {
            state,
            max_trailers,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The next step from the start of `buf`. After an error the decoder is done and the
    /// connection is not usable.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        let r = self.next(buf);
        if r.is_err() {
            self.state = State::Done;
        }
        r
    }

    fn next(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        loop {
            match self.state {
                State::Done => return Ok(Step::End),
                State::Length(left) | State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let k = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(k).freeze();
                    let left = left - k as u64;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), l) => State::Length(l),
                        (_, 0) => State::DataEnd,
                        (_, l) => State::Data(l),
                    };
                    return Ok(Step::Data(data));
                }
                State::Size => match chunked::size_line(buf)? {
                    Some(0) => self.state = State::Trailers,
                    Some(n) => self.state = State::Data(n),
                    None => return Ok(Step::More),
                },
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("no CRLF after a chunk");
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    return match chunked::trailers(buf, self.max_trailers)? {
                        Some(t) => {
                            self.state = State::Done;
                            Ok(t.map_or(Step::End, Step::Trailers))
                        }
                        None => Ok(Step::More),
                    };
                }
            }
        }
    }

    fn missing(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            _ => None,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
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
            decoder: Decoder::new(kind, max_trailers),
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
                    this.decoder = Decoder::new(Kind::Empty, 0);
                    return this.fail(e);
                }
                Ok(_) => {}
                Err(e) => {
                    this.decoder = Decoder::new(Kind::Empty, 0);
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
