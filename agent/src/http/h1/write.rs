//! The response as HTTP/1.1 bytes: the head (framing decided here, from what the pipeline
//! knows of the body), then the body's frames as they come. Everything ready at once goes
//! out in one write (head and a whole small body, or a stream's queued chunks); nothing
//! ready is waited for before what is staged is sent: no chunk is held back.
use std::{io::IoSlice, pin::Pin, task::Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, Version, header, response::Parts};
use http_body::Body as _;

use super::socket::write_all;
use crate::{respond::Body, wire::chunked};

/// Data frames up to this size are copied into the staging buffer (one write for many);
/// larger ones are written from where they are.
const COPY_UP_TO: usize = 16 * 1024;
/// Staged bytes past this are written before more frames are taken.
const STAGE_UP_TO: usize = 64 * 1024;

/// How the body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body is written: HEAD, 1xx (a switch), 204, 304, a CONNECT's 2xx.
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    Close,
}

/// What the request said that shapes its response.
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    pub version: Version,
    pub head: bool,
    pub connect: bool,
}

/// Writes the head of `parts` into `out`, with the framing headers it needs: a declared or
/// exactly known length, else chunked (HTTP/1.1) or until close (HTTP/1.0); `Connection`
/// as `keep` says. Returns the body's framing, and whether the connection can carry
/// another request after it.
pub fn head(
    out: &mut Vec<u8>,
    parts: &mut Parts,
    body: &Body,
    asked: Asked,
    mut keep: bool,
) -> (Framing, bool) {
    let status = parts.status;
    let h = &mut parts.headers;
    // The framing is Sluice's: a coding the pipeline left in would describe another body.
    h.remove(header::TRANSFER_ENCODING);
    let switch =
        status == StatusCode::SWITCHING_PROTOCOLS || (asked.connect && status.is_success());
    // One value of digits only: anything else (a sign, a list, a second field) is not
    // passed on, so the client cannot read the length another way than Sluice writes it.
    let declared = {
        let mut all = h.get_all(header::CONTENT_LENGTH).iter();
        match (all.next(), all.next()) {
            (Some(v), None) if v.as_bytes().iter().all(u8::is_ascii_digit) => {
                std::str::from_utf8(v.as_bytes())
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
            }
            _ => None,
        }
    };
    let framing = if switch
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        if status != StatusCode::NOT_MODIFIED {
            h.remove(header::CONTENT_LENGTH);
        }
        Framing::None
    } else if asked.head {
        // A declared length stays: it is the length a GET would get.
        Framing::None
    } else if let Some(n) = declared.or_else(|| body.size_hint().exact()) {
        if declared.is_none() {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        Framing::Length(n)
    } else {
        // A length that is not a number is not passed on.
        h.remove(header::CONTENT_LENGTH);
        if asked.version == Version::HTTP_11 {
            h.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            Framing::Chunked
        } else {
            keep = false;
            Framing::Close
        }
    };
    // RFC 9110 §6.6.1: a response without a `Date` (Sluice's own answers, an upstream that
    // sent none) gets one, as hyper's server gave it.
    if !h.contains_key(header::DATE) {
        h.insert(header::DATE, date());
    }
    if !switch {
        if !keep {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        } else if asked.version == Version::HTTP_10 {
            h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        }
    }
    out.extend_from_slice(if asked.version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        Some(r) => out.extend_from_slice(r.as_bytes()),
        None => out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    for (name, value) in h.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep && !switch)
}

/// Why a response was not written to its clean end. The connection closes: the client
/// sees a truncated transfer, never a clean end.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("writing to the client: {0}")]
    Io(#[from] std::io::Error),
    #[error("the response body failed: {0}")]
    Body(crate::respond::BodyError),
    #[error("the response body is {sent} bytes, its head declared {declared}")]
    Length { declared: u64, sent: u64 },
}

/// Writes the staged head (`out`) and the body to its end. Frames are staged while they
/// are ready; the staged bytes go out before waiting for the next one.
pub async fn body(
    io: &tokio::net::TcpStream,
    out: &mut Vec<u8>,
    body: &mut Body,
    framing: Framing,
) -> Result<(), WriteError> {
    let mut sent = 0u64;
    loop {
        let frame =
            match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await
            {
                Poll::Ready(f) => f,
                Poll::Pending => {
                    flush(io, out, None).await?;
                    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
                }
            };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                // What the upstream did send reaches the client before the cut.
                flush(io, out, None).await?;
                return Err(WriteError::Body(e));
            }
            // Trailers are not sent: HTTP/1.1 clients of model servers take none (gRPC
            // comes over HTTP/2).
            Some(Ok(f)) => match f.into_data() {
                Ok(d) if !d.is_empty() => d,
                _ => continue,
            },
        };
        sent += data.len() as u64;
        match framing {
            Framing::None => continue,
            Framing::Length(declared) if sent > declared => {
                flush(io, out, None).await?;
                return Err(WriteError::Length { declared, sent });
            }
            Framing::Length(_) | Framing::Close => stage(io, out, data, &[]).await?,
            Framing::Chunked => {
                let (size, n) = chunked::size_prefix(data.len());
                out.extend_from_slice(&size[..n]);
                stage(io, out, data, b"\r\n").await?;
            }
        }
        // A body whose declared length is all here goes out now: polling its end (which
        // finishes the request's record and pools the upstream connection) comes after.
        if out.len() >= STAGE_UP_TO || matches!(framing, Framing::Length(d) if sent == d) {
            flush(io, out, None).await?;
        }
    }
    match framing {
        Framing::Length(declared) if sent != declared => {
            flush(io, out, None).await?;
            return Err(WriteError::Length { declared, sent });
        }
        Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        _ => {}
    }
    flush(io, out, None).await?;
    Ok(())
}

/// Stages `data` and `after`: copied when small, else written at once behind what is
/// staged.
async fn stage(
    io: &tokio::net::TcpStream,
    out: &mut Vec<u8>,
    data: Bytes,
    after: &'static [u8],
) -> std::io::Result<()> {
    if data.len() <= COPY_UP_TO {
        out.extend_from_slice(&data);
        out.extend_from_slice(after);
        return Ok(());
    }
    flush(io, out, Some(&data)).await?;
    out.extend_from_slice(after);
    Ok(())
}

/// Writes what is staged, then `data`, in one vectored write where the socket takes it.
async fn flush(
    io: &tokio::net::TcpStream,
    out: &mut Vec<u8>,
    data: Option<&Bytes>,
) -> std::io::Result<()> {
    if out.is_empty() && data.is_none_or(Bytes::is_empty) {
        return Ok(());
    }
    let mut slices = [
        IoSlice::new(out),
        IoSlice::new(data.map_or(&[][..], |d| &d[..])),
    ];
    write_all(io, &mut slices).await?;
    out.clear();
    Ok(())
}

/// What the request asked that shapes its response.
pub fn asked(method: &Method, version: Version) -> Asked {
    Asked {
        version,
        head: method == Method::HEAD,
        connect: method == Method::CONNECT,
    }
}

/// The current `Date` value, formatted once a second per thread (the runtimes are one per
/// core): a response pays a clock read, not a formatting.
fn date() -> HeaderValue {
    use std::{cell::RefCell, time::SystemTime};
    thread_local! {
        static NOW: RefCell<(u64, Option<HeaderValue>)> = const { RefCell::new((0, None)) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    NOW.with_borrow_mut(|(at, value)| match value {
        Some(v) if *at == secs => v.clone(),
        _ => {
            let v = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
            *at = secs;
            *value = Some(v.clone());
            v
        }
    })
}
