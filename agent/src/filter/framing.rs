//! How a response body is framed, and cutting it into whole units for filters that need
//! them: SSE events (`text/event-stream`, ended by a blank line), NDJSON lines (Ollama's
//! streams), or a whole JSON body. The buffer is bounded: a unit longer than the bound ends
//! the stream rather than growing memory without limit.
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, header};

use super::{Filter, Stop};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `text/event-stream`: events end with a blank line.
    Sse,
    /// `application/x-ndjson` (Ollama streams), `application/jsonl`: one JSON value a line.
    Ndjson,
    /// `application/json`: one value, the whole body.
    Json,
    /// Anything else: bytes without units.
    Other,
}

impl Framing {
    pub fn of(headers: &HeaderMap) -> Self {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match ct.as_str() {
            "text/event-stream" => Framing::Sse,
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Framing::Ndjson,
            "application/json" => Framing::Json,
            _ => Framing::Other,
        }
    }
}

/// Bytes in, whole units out. Unit boundaries: `\n\n` (or `\r\n\r\n`) for SSE, `\n` for
/// NDJSON, end of stream for JSON; `Other` passes bytes through as they come.
pub struct Units {
    framing: Framing,
    buf: BytesMut,
    max: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a response unit is longer than the {max} bytes a filter may hold")]
pub struct TooLong {
    pub max: usize,
}

impl Units {
    pub fn new(framing: Framing, max: usize) -> Self {
        Units {
            framing,
            buf: BytesMut::new(),
            max,
        }
    }

    /// Appends `data` and returns every unit it completed, in order. At `end`, whatever is
    /// left is the last unit.
    pub fn push(&mut self, data: &[u8], end: bool) -> Result<Vec<Bytes>, TooLong> {
        if self.framing == Framing::Other {
            return Ok(if data.is_empty() {
                Vec::new()
            } else {
                vec![Bytes::copy_from_slice(data)]
            });
        }
        let mut out = Vec::new();
        let scan_from = self.buf.len().saturating_sub(3);
        self.buf.extend_from_slice(data);
        let mut start = scan_from;
        while let Some(cut) = self.boundary(start) {
            out.push(self.buf.split_to(cut).freeze());
            start = 0;
        }
        if end && !self.buf.is_empty() {
            out.push(self.buf.split().freeze());
        }
        if self.buf.len() > self.max {
            return Err(TooLong { max: self.max });
        }
        Ok(out)
    }

    /// End (exclusive) of the first complete unit whose boundary lies at or after `from`.
    fn boundary(&self, from: usize) -> Option<usize> {
        let b = &self.buf[..];
        match self.framing {
            Framing::Ndjson => b[from..]
                .iter()
                .position(|c| *c == b'\n')
                .map(|i| from + i + 1),
            Framing::Sse => (from..b.len()).find_map(|i| {
                if b[i..].starts_with(b"\n\n") {
                    Some(i + 2)
                } else if b[i..].starts_with(b"\r\n\r\n") {
                    Some(i + 4)
                } else {
                    None
                }
            }),
            Framing::Json | Framing::Other => None,
        }
    }
}

/// A filter over whole units (events, lines, a JSON body) rather than bytes.
pub trait UnitFilter: Send + Sync + 'static {
    fn on_unit(&mut self, unit: Bytes) -> Result<Bytes, Stop>;
}

/// Runs a `UnitFilter` as a byte filter: bytes of an unfinished unit are held (bounded by
/// `max`), each finished unit goes through the filter as soon as its last byte arrives.
pub struct Framed<F> {
    units: Units,
    inner: F,
}

impl<F: UnitFilter> Framed<F> {
    pub fn new(framing: Framing, max: usize, inner: F) -> Self {
        Framed {
            units: Units::new(framing, max),
            inner,
        }
    }
}

impl<F: UnitFilter> Filter for Framed<F> {
    fn on_data(&mut self, data: Bytes, end: bool) -> Result<Bytes, Stop> {
        let units = self.units.push(&data, end).map_err(|e| Stop {
            tail: Bytes::new(),
            reason: e.to_string(),
        })?;
        if units.len() == 1 {
            return units
                .into_iter()
                .next()
                .map_or(Ok(Bytes::new()), |u| self.inner.on_unit(u));
        }
        let mut out = BytesMut::new();
        for u in units {
            out.extend_from_slice(&self.inner.on_unit(u)?);
        }
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(framing: Framing, chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut u = Units::new(framing, 1024);
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let end = i + 1 == chunks.len();
            out.extend(
                u.push(c, end)
                    .expect("bounded")
                    .into_iter()
                    .map(|b| b.to_vec()),
            );
        }
        out
    }

    #[test]
    fn sse_events_are_cut_at_blank_lines_across_chunk_edges() {
        let got = units(
            Framing::Sse,
            &[b"data: a\n", b"\ndata: b\r\n\r", b"\ndata: [DONE]\n\n", b""],
        );
        assert_eq!(
            got,
            vec![
                b"data: a\n\n".to_vec(),
                b"data: b\r\n\r\n".to_vec(),
                b"data: [DONE]\n\n".to_vec()
            ]
        );
    }

    #[test]
    fn ndjson_lines_and_an_unterminated_last_line() {
        let got = units(Framing::Ndjson, &[b"{\"a\":1}\n{\"b\"", b":2}\n{\"c\":3}"]);
        assert_eq!(
            got,
            vec![
                b"{\"a\":1}\n".to_vec(),
                b"{\"b\":2}\n".to_vec(),
                b"{\"c\":3}".to_vec()
            ]
        );
    }

    #[test]
    fn a_json_body_is_one_unit_and_other_bodies_pass_as_they_come() {
        assert_eq!(
            units(Framing::Json, &[b"{\"a\":", b"1}"]),
            vec![b"{\"a\":1}".to_vec()]
        );
        assert_eq!(
            units(Framing::Other, &[b"ab", b"cd"]),
            vec![b"ab".to_vec(), b"cd".to_vec()]
        );
    }

    #[test]
    fn a_unit_longer_than_the_bound_is_an_error_not_growth() {
        let mut u = Units::new(Framing::Ndjson, 8);
        assert!(u.push(b"0123", false).expect("fits").is_empty());
        assert_eq!(u.push(b"456789", false), Err(TooLong { max: 8 }));
    }

    #[test]
    fn framing_follows_the_content_type() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "text/event-stream; charset=utf-8".parse().expect("hv"),
        );
        assert_eq!(Framing::of(&h), Framing::Sse);
        h.insert(
            header::CONTENT_TYPE,
            "application/x-ndjson".parse().expect("hv"),
        );
        assert_eq!(Framing::of(&h), Framing::Ndjson);
        h.insert(
            header::CONTENT_TYPE,
            "Application/JSON".parse().expect("hv"),
        );
        assert_eq!(Framing::of(&h), Framing::Json);
        assert_eq!(Framing::of(&HeaderMap::new()), Framing::Other);
    }

    struct Upper;
    impl UnitFilter for Upper {
        fn on_unit(&mut self, unit: Bytes) -> Result<Bytes, Stop> {
            Ok(Bytes::from(unit.to_ascii_uppercase()))
        }
    }

    #[test]
    fn a_unit_filter_sees_each_event_as_soon_as_it_is_complete() {
        let mut f = Framed::new(Framing::Sse, 1024, Upper);
        assert_eq!(
            f.on_data(Bytes::from_static(b"data: a\n\ndata: "), false),
            Ok(Bytes::from_static(b"DATA: A\n\n"))
        );
        assert_eq!(
            f.on_data(Bytes::from_static(b"b\n\n"), false),
            Ok(Bytes::from_static(b"DATA: B\n\n"))
        );
        assert_eq!(f.on_data(Bytes::new(), true), Ok(Bytes::new()));
    }
}
