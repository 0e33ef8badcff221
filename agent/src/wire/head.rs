//! A parsed head's header section as a `HeaderMap`, the same way on both sides: the head is
//! copied once and every value (and a request's target) is a slice of that copy, so one
//! `malloc` serves the whole head and the read buffer is free for the next read at once;
//! names are checked and the framing fields read (`fields`) as the map is built.
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::fields::{self, Fields};

/// Why a header section was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldError {
    /// A name or value `http` does not accept.
    Invalid,
    Framing(fields::Error),
}

/// The first `n` bytes of a read buffer, copied.
pub struct Copied {
    base: usize,
    head: Bytes,
}

impl Copied {
    pub fn new(buf: &[u8], n: usize) -> Self {
        Copied {
            base: buf.as_ptr() as usize,
            head: Bytes::copy_from_slice(&buf[..n]),
        }
    }

    /// The copy of `s`, a slice httparse returned from the copied bytes.
    pub fn slice(&self, s: &[u8]) -> Bytes {
        let at = s.as_ptr() as usize - self.base;
        self.head.slice(at..at + s.len())
    }

    /// The header fields, in order, with the framing fields read into `framing`.
    pub fn headers(
        &self,
        parsed: &[httparse::Header<'_>],
        framing: &mut Fields,
    ) -> Result<HeaderMap, FieldError> {
        let mut headers = HeaderMap::with_capacity(parsed.len());
        for h in parsed {
            framing.scan(h.name, h.value).map_err(FieldError::Framing)?;
            let name =
                HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| FieldError::Invalid)?;
            let value = HeaderValue::from_maybe_shared(self.slice(h.value))
                .map_err(|_| FieldError::Invalid)?;
            headers.append(name, value);
        }
        Ok(headers)
    }
}
