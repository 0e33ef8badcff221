//! Floor B: a minimal HTTP/1.1 keep-alive proxy on `httparse`. Per request: read until the
//! head parses, write a new head (the parsed one without hop-by-hop headers) followed by
//! whatever body bytes are already buffered, with one `write`; relay the rest of the body by
//! its framing (Content-Length or chunked, passed through as is); the same for the response.
//! One upstream connection per downstream connection, no pool, no policy, no allocation
//! per request once the buffers have grown.
use std::net::SocketAddr;

use bytes::{Buf as _, BytesMut};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;
const READ: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("parse: {0}")]
    Parse(#[from] httparse::Error),
    #[error("bad framing: {0}")]
    Framing(&'static str),
    #[error("closed mid-message")]
    Closed,
}

pub async fn serve(mut client: TcpStream, upstream: SocketAddr) {
    let _ = client.set_nodelay(true);
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    // Any error ends both connections: this is a floor, not a proxy to run.
    let _ = proxy(&mut client, &mut up).await;
}

async fn proxy(client: &mut TcpStream, up: &mut TcpStream) -> Result<(), Error> {
    let (mut cbuf, mut ubuf) = (BytesMut::with_capacity(READ), BytesMut::with_capacity(READ));
    let mut out = Vec::with_capacity(READ);
    loop {
        // The request head; end of stream between requests is a normal close.
        let req = loop {
            out.clear();
            if let Some(h) = request_head(&cbuf, &mut out)? {
                break h;
            }
            if cbuf.len() > MAX_HEAD {
                return Err(Error::Framing("request head too large"));
            }
            cbuf.reserve(READ);
            if client.read_buf(&mut cbuf).await? == 0 {
                return Ok(());
            }
        };
        cbuf.advance(req.len);
        let mut body = req.body;
        let k = body.take(&cbuf)?;
        out.extend_from_slice(&cbuf[..k]);
        cbuf.advance(k);
        up.write_all(&out).await?;
        relay_body(up, client, &mut cbuf, &mut body).await?;
        // The response head (interim 1xx heads are passed on and the next one read).
        let resp = loop {
            out.clear();
            if let Some(h) = response_head(&ubuf, &mut out, req.head, req.close)? {
                ubuf.advance(h.len);
                if h.interim {
                    client.write_all(&out).await?;
                    continue;
                }
                break h;
            }
            if ubuf.len() > MAX_HEAD {
                return Err(Error::Framing("response head too large"));
            }
            ubuf.reserve(READ);
            if up.read_buf(&mut ubuf).await? == 0 {
                return Err(Error::Closed);
            }
        };
        let mut body = resp.body;
        let k = body.take(&ubuf)?;
        out.extend_from_slice(&ubuf[..k]);
        ubuf.advance(k);
        client.write_all(&out).await?;
        relay_body(client, up, &mut ubuf, &mut body).await?;
        if req.close || resp.close {
            return Ok(());
        }
    }
}

/// Relays the rest of a message body from `from` (its bytes already read in `buf` first) to
/// `to`, until its framing says it is complete.
async fn relay_body(
    to: &mut TcpStream,
    from: &mut TcpStream,
    buf: &mut BytesMut,
    body: &mut Body,
) -> Result<(), Error> {
    loop {
        if body.done() {
            return Ok(());
        }
        if !buf.is_empty() {
            let k = body.take(buf)?;
            to.write_all(&buf[..k]).await?;
            buf.advance(k);
            if body.done() {
                return Ok(());
            }
        }
        buf.reserve(READ);
        if from.read_buf(buf).await? == 0 {
            return match body {
                Body::Eof => {
                    *body = Body::Length(0);
                    Ok(())
                }
                _ => Err(Error::Closed),
            };
        }
    }
}

struct Head {
    /// Bytes of the head in the input.
    len: usize,
    body: Body,
    /// The connection ends after this exchange.
    close: bool,
    /// A HEAD request (its response has no body).
    head: bool,
    /// A 1xx response other than 101: another head follows.
    interim: bool,
}

/// Parses a request head at the start of `buf` and writes the head to send upstream into
/// `out`; `None` until the head is complete.
fn request_head(buf: &[u8], out: &mut Vec<u8>) -> Result<Option<Head>, Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = req.parse(buf)? else {
        return Ok(None);
    };
    let method = req.method.unwrap_or("GET");
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let f = headers_out(req.headers, out)?;
    out.extend_from_slice(b"\r\n");
    let body = if f.chunked {
        Body::chunked()
    } else {
        Body::Length(f.length.unwrap_or(0))
    };
    Ok(Some(Head {
        len,
        body,
        close: f.close || req.version == Some(0),
        head: method == "HEAD",
        interim: false,
    }))
}

/// Parses a response head at the start of `buf` and writes the head to send downstream into
/// `out` (with `Connection: close` if the client asked for it); `None` until complete.
fn response_head(
    buf: &[u8],
    out: &mut Vec<u8>,
    to_head: bool,
    client_close: bool,
) -> Result<Option<Head>, Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(len) = resp.parse(buf)? else {
        return Ok(None);
    };
    let code = resp.code.unwrap_or(502);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(code).as_slice());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let f = headers_out(resp.headers, out)?;
    let interim = (100..200).contains(&code) && code != 101;
    if client_close && !interim {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let body = if to_head || interim || code == 204 || code == 304 {
        Body::Length(0)
    } else if f.chunked {
        Body::chunked()
    } else if let Some(n) = f.length {
        Body::Length(n)
    } else {
        Body::Eof
    };
    let close = f.close || matches!(body, Body::Eof) || resp.version == Some(0);
    Ok(Some(Head {
        len,
        body,
        close,
        head: false,
        interim,
    }))
}

/// What the headers say about framing and the connection.
#[derive(Default)]
struct Framing {
    length: Option<u64>,
    chunked: bool,
    close: bool,
}

/// Copies the end-to-end headers into `out` (hop-by-hop ones dropped; Transfer-Encoding
/// kept, the chunks pass through unchanged) and reads the framing.
fn headers_out(headers: &[httparse::Header<'_>], out: &mut Vec<u8>) -> Result<Framing, Error> {
    let mut f = Framing::default();
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(Error::Framing("content-length"))?;
            if f.length.is_some_and(|l| l != v) {
                return Err(Error::Framing("two content-lengths"));
            }
            f.length = Some(v);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            f.chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !f.chunked {
                return Err(Error::Framing("transfer-encoding other than chunked"));
            }
        } else if name.eq_ignore_ascii_case("connection") {
            f.close |= h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            continue;
        }
        if ["keep-alive", "proxy-connection", "te", "trailer", "upgrade"]
            .iter()
            .any(|hop| name.eq_ignore_ascii_case(hop))
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if f.chunked && f.length.is_some() {
        return Err(Error::Framing("both content-length and chunked"));
    }
    Ok(f)
}

/// A status code as three ASCII digits.
fn itoa3(code: u16) -> [u8; 3] {
    let c = code.min(999);
    [
        b'0' + (c / 100) as u8,
        b'0' + (c / 10 % 10) as u8,
        b'0' + (c % 10) as u8,
    ]
}

/// Where a body in transit is: how many of the bytes that follow belong to it.
#[derive(Debug)]
enum Body {
    Length(u64),
    Chunked(Chunked),
    /// Until the sender closes (a response without length or chunking).
    Eof,
}

#[derive(Debug)]
struct Chunked {
    state: Cs,
    size: u64,
    line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cs {
    Size,
    Ext,
    Data(u64),
    /// The CR LF after a chunk's data: how many bytes of it are left.
    DataEnd(u8),
    Trailer,
    Done,
}

impl Body {
    fn chunked() -> Body {
        Body::Chunked(Chunked {
            state: Cs::Size,
            size: 0,
            line: 0,
        })
    }

    fn done(&self) -> bool {
        match self {
            Body::Length(n) => *n == 0,
            Body::Chunked(c) => c.state == Cs::Done,
            Body::Eof => false,
        }
    }

    /// How many bytes at the start of `b` belong to this body; advances past them.
    fn take(&mut self, b: &[u8]) -> Result<usize, Error> {
        match self {
            Body::Length(n) => {
                let k = (*n).min(b.len() as u64);
                *n -= k;
                Ok(k as usize)
            }
            Body::Eof => Ok(b.len()),
            Body::Chunked(c) => c.take(b),
        }
    }
}

impl Chunked {
    fn take(&mut self, b: &[u8]) -> Result<usize, Error> {
        let mut i = 0;
        while i < b.len() {
            match self.state {
                Cs::Size | Cs::Ext => {
                    let c = b[i];
                    i += 1;
                    if c == b'\n' {
                        self.state = if self.size == 0 {
                            self.line = 0;
                            Cs::Trailer
                        } else {
                            Cs::Data(self.size)
                        };
                        self.size = 0;
                    } else if self.state == Cs::Size {
                        match (c as char).to_digit(16) {
                            Some(d) => {
                                self.size = self
                                    .size
                                    .checked_mul(16)
                                    .and_then(|s| s.checked_add(u64::from(d)))
                                    .ok_or(Error::Framing("chunk size"))?;
                            }
                            None if c == b'\r' => {}
                            None if matches!(c, b';' | b' ' | b'\t') => self.state = Cs::Ext,
                            None => return Err(Error::Framing("chunk size")),
                        }
                    }
                }
                Cs::Data(n) => {
                    let k = n.min((b.len() - i) as u64);
                    i += k as usize;
                    self.state = if n == k {
                        Cs::DataEnd(2)
                    } else {
                        Cs::Data(n - k)
                    };
                }
                Cs::DataEnd(left) => {
                    let want = if left == 2 { b'\r' } else { b'\n' };
                    if b[i] != want {
                        return Err(Error::Framing("chunk end"));
                    }
                    i += 1;
                    self.state = if left == 2 { Cs::DataEnd(1) } else { Cs::Size };
                }
                Cs::Trailer => {
                    let c = b[i];
                    i += 1;
                    if c == b'\n' {
                        if self.line == 0 {
                            self.state = Cs::Done;
                            return Ok(i);
                        }
                        self.line = 0;
                    } else if c != b'\r' {
                        self.line += 1;
                    }
                }
                Cs::Done => return Ok(i),
            }
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_body_ends_where_its_last_chunk_and_trailers_end() {
        let msg = b"5;x=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nA: b\r\n\r\nNEXT";
        // Fed whole and byte by byte, the body ends before NEXT.
        let mut b = Body::chunked();
        assert_eq!(b.take(msg).ok(), Some(msg.len() - 4));
        assert!(b.done());
        let mut b = Body::chunked();
        let mut n = 0;
        for i in 0..msg.len() {
            if b.done() {
                break;
            }
            n += b.take(&msg[i..=i]).unwrap_or(0);
        }
        assert_eq!(n, msg.len() - 4);
        assert!(Body::chunked().take(b"5\r\nhelloXX").is_err());
    }

    #[test]
    fn heads_are_rewritten_without_hop_by_hop_headers() {
        let mut out = Vec::new();
        let req = b"POST /v1/x HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc";
        let h = request_head(req, &mut out).ok().flatten();
        let h = h.as_ref();
        assert_eq!(h.map(|h| h.len), Some(req.len() - 3));
        assert!(h.is_some_and(|h| matches!(h.body, Body::Length(3)) && !h.close));
        assert_eq!(
            out,
            b"POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n"
        );
        out.clear();
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        let h = response_head(resp, &mut out, false, false).ok().flatten();
        assert!(h.is_some_and(|h| h.close && matches!(h.body, Body::Chunked(_))));
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        assert!(request_head(b"GET / HTTP/1.1\r\nHost:", &mut out).is_ok_and(|h| h.is_none()));
    }
}
