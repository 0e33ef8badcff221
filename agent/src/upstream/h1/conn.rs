//! One HTTP/1.1 connection to a model server: the stream (cleartext or TLS), the request
//! head as it goes out, and the response head as it comes back, parsed by `httparse`.
use std::{
    io,
    mem::MaybeUninit,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Buf as _, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, Version, header, request::Parts};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

use super::Key;
use crate::wire::{
    fields::{self, Fields},
    head::{Copied, FieldError},
};

pub use crate::wire::MAX_FIELDS as MAX_HEADERS;

/// A dialled upstream socket, cleartext or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    /// An idle connection is reusable only while the server has neither closed it nor sent
    /// anything: a peek at the socket itself (not tokio's cached readiness, which lags when
    /// the reactor has not run since the FIN arrived). Data or EOF both mean "do not send".
    /// TLS first: bytes read off the socket with the end of the last response may have held
    /// more (plaintext past that end, or a close_notify), which wait inside rustls where no
    /// peek sees them; sent on, the next request would get them as its answer.
    pub fn still_idle(&mut self) -> bool {
        if let Stream::Tls(s) = self {
            match s.get_mut().1.process_new_packets() {
                Ok(state) if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => {}
                _ => return false,
            }
        }
        let mut one = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        matches!(
            socket2::SockRef::from(self.tcp()).peek(&mut one),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        )
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, b),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, b),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// An open connection with the bytes read from it and not yet used, and where it goes back
/// to in the pool.
pub struct Conn {
    pub io: Stream,
    pub buf: BytesMut,
    pub key: Key,
    pub authority: Arc<str>,
}

/// How the request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body and no length said (a GET as hyper sent it).
    Empty,
    Length(u64),
    Chunked,
}

/// Sets the request's framing headers from what Sluice knows of its body: a known length
/// gets exactly one `Content-Length`, an unknown one goes chunked; the client's own framing
/// never reaches the server. A bodyless request keeps a `Content-Length` only if it had one
/// (`prepare` keeps a client's `Content-Length: 0`), as hyper sent it.
pub fn frame(headers: &mut HeaderMap, len: Option<u64>) -> Framing {
    headers.remove(header::TRANSFER_ENCODING);
    match len {
        Some(0) if !headers.contains_key(header::CONTENT_LENGTH) => Framing::Empty,
        Some(n) => {
            // `prepare` has usually written this very value: an equal one is not rebuilt
            // (a `HeaderValue` from a number is an allocation).
            let mut all = headers.get_all(header::CONTENT_LENGTH).iter();
            let mut digits = itoa::Buffer::new();
            let n_text = digits.format(n).as_bytes();
            let same =
                matches!((all.next(), all.next()), (Some(v), None) if v.as_bytes() == n_text);
            if !same {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            Framing::Length(n)
        }
        None => {
            headers.remove(header::CONTENT_LENGTH);
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            Framing::Chunked
        }
    }
}

/// The request head as HTTP/1.1 bytes: names as the `HeaderMap` holds them (lowercase, as
/// hyper wrote them), the target in origin form (`h1_form` made it so).
pub fn encode_head(parts: &Parts, out: &mut Vec<u8>) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    if parts.uri.scheme().is_none() && parts.uri.authority().is_none() {
        out.extend_from_slice(
            parts
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .as_bytes(),
        );
    } else {
        out.extend_from_slice(parts.uri.to_string().as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Why a response head was refused. Values are never repeated: a server may echo a
/// request header (the injected key) in one.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("response head larger than {0} bytes")]
    TooLarge(usize),
    #[error("response head with more than {MAX_HEADERS} header fields")]
    TooMany,
    #[error("malformed response head ({0})")]
    Malformed(httparse::Error),
    #[error("response head with an invalid header field")]
    InvalidField,
    #[error("response head with an invalid status code")]
    Status,
    #[error("response head with conflicting Content-Length values")]
    ConflictingLength,
    #[error("response head with an invalid Content-Length")]
    BadLength,
    #[error("response Transfer-Encoding other than chunked (only chunked is decoded)")]
    Coding,
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    CodingInHttp10,
    #[error("101 Switching Protocols to a request that asked for no switch")]
    Switch,
    #[error("connection closed before the response head")]
    Closed,
    #[error("reading the response head: {0}")]
    Io(#[from] io::Error),
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Empty,
    Length(u64),
    Chunked,
    /// Until the server closes: such a connection is never reused.
    Close,
}

pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    /// A reason phrase other than the status code's own, passed on as hyper did.
    pub reason: Option<hyper::ext::ReasonPhrase>,
    pub kind: Kind,
    /// Neither side asked to close and the framing leaves the connection usable.
    pub reuse: bool,
}

/// Reads the final response head into `buf` (what follows it stays there), skipping 1xx
/// interim heads as hyper's client did.
pub async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    head_request: bool,
    max: usize,
) -> Result<Head, HeadError> {
    loop {
        if !buf.is_empty()
            && let Some(head) = parse(buf, head_request, max)?
        {
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(HeadError::Switch);
            }
            if head.status.is_informational() {
                continue;
            }
            return Ok(head);
        }
        if buf.len() >= max {
            return Err(HeadError::TooLarge(max));
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(8192);
        }
        if io.read_buf(buf).await? == 0 {
            return Err(HeadError::Closed);
        }
    }
}

/// One head from the start of `buf`, consumed from it when complete. The head is copied
/// once and the header values are slices of that copy: one `malloc` per head, not one per
/// field.
fn parse(buf: &mut BytesMut, head_request: bool, max: usize) -> Result<Option<Head>, HeadError> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut []);
    // The default parser is the strict one: no obs-fold, no invalid bytes in names or values.
    let n = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut r, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooMany),
        Err(e) => return Err(HeadError::Malformed(e)),
    };
    if n > max {
        return Err(HeadError::TooLarge(max));
    }
    let status = r
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(HeadError::Status)?;
    let version = if r.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let reason = r
        .reason
        .filter(|r| !r.is_empty() && Some(*r) != status.canonical_reason())
        .and_then(|r| hyper::ext::ReasonPhrase::try_from(r.as_bytes()).ok());
    let mut framing = Fields::default();
    let mut headers = Copied::new(buf, n)
        .headers(r.headers, &mut framing)
        .map_err(|e| match e {
            FieldError::Invalid => HeadError::InvalidField,
            FieldError::Framing(fields::Error::ConflictingLength) => HeadError::ConflictingLength,
            FieldError::Framing(fields::Error::BadLength) => HeadError::BadLength,
            FieldError::Framing(fields::Error::Coding) => HeadError::Coding,
        })?;
    buf.advance(n);
    let Fields {
        length,
        coded,
        chunked,
        close,
        keep_alive,
        ..
    } = framing;
    let mut reuse = !close && (version == Version::HTTP_11 || keep_alive);
    let kind = if status.is_informational()
        || head_request
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Kind::Empty
    } else if coded {
        if version == Version::HTTP_10 {
            return Err(HeadError::CodingInHttp10);
        }
        if !chunked {
            return Err(HeadError::Coding);
        }
        if length.is_some() {
            // Both: chunked wins (RFC 9112 §6.3), and a server that sent both is not trusted
            // with a second request on this connection.
            headers.remove(header::CONTENT_LENGTH);
            reuse = false;
        }
        Kind::Chunked
    } else {
        match length {
            Some(0) => Kind::Empty,
            Some(n) => Kind::Length(n),
            None => {
                reuse = false;
                Kind::Close
            }
        }
    };
    Ok(Some(Head {
        status,
        version,
        headers,
        reason,
        kind,
        reuse,
    }))
}
