//! The request head, parsed strictly by `httparse` (no obs-fold, no bytes outside the
//! grammar, no whitespace before a field's colon) with the framing read once by
//! `wire::fields`: a request two readers could frame two ways never reaches the pipeline.
use std::mem::MaybeUninit;

use bytes::{Buf as _, BytesMut};
use http::{Method, StatusCode, Uri, Version, header};

use crate::wire::{
    body::Delimited,
    fields::{self, Fields},
    head::{Copied, FieldError},
};

pub use crate::wire::MAX_FIELDS as MAX_HEADERS;

/// Why a request head was refused: the client gets `status()` and the connection closes.
/// Values are never repeated (a head may carry a credential).
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("request head larger than {0} bytes")]
    TooLarge(usize),
    #[error("request head with more than {MAX_HEADERS} header fields")]
    TooMany,
    #[error("malformed request head ({0})")]
    Malformed(httparse::Error),
    #[error("request head with an invalid method")]
    Method,
    #[error("request head with an invalid request target")]
    Target,
    #[error("request head with an invalid header field")]
    Field,
    #[error("request head with {0}")]
    Framing(#[from] fields::Error),
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    CodingInHttp10,
    #[error("request head with more than one Host")]
    Hosts,
}

impl HeadError {
    pub fn status(&self) -> StatusCode {
        match self {
            HeadError::TooLarge(_) | HeadError::TooMany => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Empty,
    Length(u64),
    Chunked,
}

impl Kind {
    pub fn delimited(self) -> Delimited {
        match self {
            Kind::Empty => Delimited::Length(0),
            Kind::Length(n) => Delimited::Length(n),
            Kind::Chunked => Delimited::Chunked,
        }
    }
}

pub struct Head {
    pub parts: http::request::Parts,
    pub kind: Kind,
    /// The client may send another request on this connection.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a `100 Continue` before its body.
    pub expect_continue: bool,
    /// It may switch protocols (`CONNECT`, or `Upgrade` over HTTP/1.1).
    pub upgrade: bool,
}

/// One head from the start of `buf`, consumed from it when complete (what follows stays).
/// The head is copied once and the URI and header values are slices of that copy: one
/// `malloc` per head, and the read buffer is free for the next read at once.
pub fn parse(buf: &mut BytesMut, max: usize) -> Result<Option<Head>, HeadError> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut []);
    // The default parser is the strict one.
    let n = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut r, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max => {
            return Err(HeadError::TooLarge(max));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooMany),
        Err(e) => return Err(HeadError::Malformed(e)),
    };
    if n > max {
        return Err(HeadError::TooLarge(max));
    }
    let method = Method::from_bytes(r.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Method)?;
    let version = match r.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let copied = Copied::new(buf, n);
    let path = r.path.unwrap_or_default();
    let uri =
        Uri::from_maybe_shared(copied.slice(path.as_bytes())).map_err(|_| HeadError::Target)?;
    let mut framing = Fields::default();
    let mut headers = copied
        .headers(r.headers, &mut framing)
        .map_err(|e| match e {
            FieldError::Invalid => HeadError::Field,
            FieldError::Framing(f) => HeadError::Framing(f),
        })?;
    buf.advance(n);
    // RFC 9112 §3.2: more than one Host is refused (a proxy and a server could each pick
    // another). A missing one is let through, as hyper did: HTTP/1.0 clients send none.
    if headers.get_all(header::HOST).iter().nth(1).is_some() {
        return Err(HeadError::Hosts);
    }
    let expect_continue = headers.get_all(header::EXPECT).iter().any(|v| {
        v.as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"100-continue")
    });
    let mut keep_alive = !framing.close && (version == Version::HTTP_11 || framing.keep_alive);
    let kind = if framing.coded {
        if version == Version::HTTP_10 {
            return Err(HeadError::CodingInHttp10);
        }
        if framing.length.is_some() {
            // Both (RFC 9112 §6.3): chunked wins, and the connection closes after this
            // request: bytes after its end are not trusted as a request of their own.
            headers.remove(header::CONTENT_LENGTH);
            keep_alive = false;
        }
        Kind::Chunked
    } else {
        match framing.length {
            None | Some(0) => Kind::Empty,
            Some(n) => Kind::Length(n),
        }
    };
    let upgrade = method == Method::CONNECT
        || (version == Version::HTTP_11 && headers.contains_key(header::UPGRADE));
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Head {
        parts,
        kind,
        keep_alive,
        expect_continue: expect_continue && version == Version::HTTP_11,
        upgrade,
    }))
}
