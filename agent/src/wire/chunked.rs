//! The chunked transfer coding (RFC 9112 §7.1): the chunk-size line and the trailer section,
//! read from the start of a buffer, and the size prefix written before a chunk. Written by
//! hand because httparse parses only the size line's digits and no crate decodes chunked
//! from a buffer the caller owns (the read buffer is shared with the next message).
use bytes::{Buf as _, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::MAX_FIELDS;

/// A chunk-size line longer than this (extensions included) is refused.
pub const MAX_SIZE_LINE: usize = 4096;

/// A complete chunk-size line at the start of `buf`, consumed: its size. Extensions are
/// read past and ignored (RFC 9112 §7.1.1: a recipient ignores those it does not know).
pub fn size_line(buf: &mut BytesMut) -> Result<Option<u64>, &'static str> {
    let Some(end) = buf.iter().position(|b| *b == b'\n') else {
        return if buf.len() > MAX_SIZE_LINE {
            Err("chunk-size line too long")
        } else {
            Ok(None)
        };
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Err("chunk-size line not ended by CRLF");
    }
    if end > MAX_SIZE_LINE {
        return Err("chunk-size line too long");
    }
    let line = &buf[..end - 1];
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err("invalid chunk size");
    }
    // After the size: optional SP or HTAB (RFC 9112's BWS; not a bare CR, which a
    // `trim_ascii_start` would take too), then nothing or `;` extensions.
    let spaces = line[digits..]
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    let rest = &line[digits + spaces..];
    if !rest.is_empty() && rest[0] != b';' {
        return Err("invalid chunk size");
    }
    if rest.iter().any(|b| *b == b'\r' || *b == 0) {
        return Err("invalid chunk extension");
    }
    let n = line[..digits].iter().fold(0u64, |n, d| {
        // At most 16 hex digits: never overflows.
        (n << 4) | u64::from(char::from(*d).to_digit(16).unwrap_or(0))
    });
    buf.advance(end + 1);
    Ok(Some(n))
}

/// The trailer section, complete at the start of `buf` and consumed: `Some(None)` when it
/// is empty (the usual end of a chunked body).
pub fn trailers(buf: &mut BytesMut, max: usize) -> Result<Option<Option<HeaderMap>>, &'static str> {
    if buf.len() >= 2 && &buf[..2] == b"\r\n" {
        buf.advance(2);
        return Ok(Some(None));
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_FIELDS];
    match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete((n, fields))) => {
            if n > max {
                return Err("trailer section too large");
            }
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields {
                let name = HeaderName::from_bytes(f.name.as_bytes())
                    .map_err(|_| "invalid trailer field")?;
                let value =
                    HeaderValue::from_bytes(f.value).map_err(|_| "invalid trailer field")?;
                map.append(name, value);
            }
            buf.advance(n);
            Ok(Some(Some(map)))
        }
        Ok(httparse::Status::Partial) if buf.len() > max => Err("trailer section too large"),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err("too many trailer fields"),
        Err(_) => Err("malformed trailer section"),
    }
}

/// The size line written before a chunk of `len` bytes: `{len:x}\r\n`, without a
/// formatting allocation.
pub fn size_prefix(len: usize) -> ([u8; 18], usize) {
    let mut out = [0u8; 18];
    let digits = if len == 0 {
        1
    } else {
        (usize::BITS - len.leading_zeros()).div_ceil(4) as usize
    };
    for (i, o) in out[..digits].iter_mut().enumerate() {
        let nibble = (len >> (4 * (digits - 1 - i))) & 0xf;
        *o = b"0123456789abcdef"[nibble];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    (out, digits + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> Result<Option<u64>, &'static str> {
        size_line(&mut BytesMut::from(s))
    }

    #[test]
    fn size_lines() {
        assert_eq!(line("14\r\n"), Ok(Some(0x14)));
        assert_eq!(line("14;ext=\"a\"\r\nrest"), Ok(Some(0x14)));
        assert_eq!(line("fF \t;x\r\n"), Ok(Some(0xff)));
        assert_eq!(line("ffffffffffffffff\r\n"), Ok(Some(u64::MAX)));
        assert_eq!(line("14"), Ok(None));
        for bad in [
            "\r\n",
            "14\n",
            "g\r\n",
            "14 x\r\n",
            "14\r;x\r\n",
            "1ffffffffffffffff\r\n",
            "-1\r\n",
            "14;a\0\r\n",
        ] {
            assert!(line(bad).is_err(), "{bad:?}");
        }
        assert!(line(&"1".repeat(MAX_SIZE_LINE + 1)).is_err());
        let mut b = BytesMut::from("5\r\nhello");
        assert_eq!(size_line(&mut b), Ok(Some(5)));
        assert_eq!(&b[..], b"hello");
    }

    #[test]
    fn trailer_sections() {
        let mut b = BytesMut::from("\r\nnext");
        assert_eq!(trailers(&mut b, 100), Ok(Some(None)));
        assert_eq!(&b[..], b"next");
        let mut b = BytesMut::from("X-Model: a\r\n\r\nnext");
        let t = trailers(&mut b, 100)
            .expect("ok")
            .expect("complete")
            .expect("fields");
        assert_eq!(t["x-model"], "a");
        assert_eq!(&b[..], b"next");
        assert_eq!(
            trailers(&mut BytesMut::from("X-Model: a\r\n"), 100),
            Ok(None)
        );
        assert!(trailers(&mut BytesMut::from("X-Model: a\r\n"), 4).is_err());
        assert!(trailers(&mut BytesMut::from("X Model: a\r\n\r\n"), 100).is_err());
    }

    #[test]
    fn size_prefixes() {
        for n in [
            0usize,
            1,
            9,
            10,
            15,
            16,
            255,
            256,
            4096,
            65535,
            1 << 20,
            usize::MAX,
        ] {
            let (b, len) = size_prefix(n);
            assert_eq!(&b[..len], format!("{n:x}\r\n").as_bytes(), "{n}");
        }
    }
}
