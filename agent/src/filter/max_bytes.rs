//! `max_response_bytes`: a per-target ceiling on how much of a response body reaches the
//! client. A runaway generation (or a server streaming without end) is ended in the stream's
//! own error shape, so an SDK reports an error instead of hanging or silently truncating.
use bytes::{Bytes, BytesMut};

use super::{Filter, Framing, Stop};
use crate::{adapter::Server, respond};

pub struct MaxBytes {
    max: u64,
    sent: u64,
    server: Server,
    framing: Framing,
    /// The bytes passed so far end on a unit boundary (an SSE event or NDJSON line).
    at_boundary: bool,
}

impl MaxBytes {
    pub fn new(max: u64, server: Server, framing: Framing) -> Self {
        MaxBytes {
            max,
            sent: 0,
            server,
            framing,
            at_boundary: true,
        }
    }
}

impl Filter for MaxBytes {
    fn on_data(&mut self, data: Bytes, _end: bool) -> Result<Bytes, Stop> {
        let len = data.len() as u64;
        if self.sent + len <= self.max {
            self.sent += len;
            if !data.is_empty() {
                self.at_boundary = match self.framing {
                    Framing::Sse => data.ends_with(b"\n\n"),
                    Framing::Ndjson => data.ends_with(b"\n"),
                    Framing::Json | Framing::Other => false,
                };
            }
            return Ok(data);
        }
        // Cut at the chunk edge: what already went out stays whole, nothing of this chunk
        // is sent, and the error closes the stream in its own framing.
        let reason = format!(
            "the response exceeded this target's max_response_bytes ({})",
            self.max
        );
        let mut tail = BytesMut::new();
        if !self.at_boundary {
            match self.framing {
                Framing::Sse => tail.extend_from_slice(b"\n\n"),
                Framing::Ndjson => tail.extend_from_slice(b"\n"),
                Framing::Json | Framing::Other => {}
            }
        }
        let err = respond::stream_error(
            self.server,
            self.framing,
            "sluice_response_too_large",
            &reason,
        );
        if err.is_empty() {
            tail.clear();
        } else {
            tail.extend_from_slice(&err);
        }
        Err(Stop {
            tail: tail.freeze(),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_up_to_the_limit_then_ends_an_sse_stream_with_an_error_event() {
        let mut f = MaxBytes::new(20, Server::Openai, Framing::Sse);
        let a = Bytes::from_static(b"data: {\"x\":1}\n\n");
        assert_eq!(f.on_data(a.clone(), false), Ok(a));
        let stop = f
            .on_data(Bytes::from_static(b"data: {\"x\":2}\n\n"), false)
            .expect_err("over the limit");
        let tail = String::from_utf8_lossy(&stop.tail).into_owned();
        assert!(tail.starts_with("data: {"), "{tail}");
        assert!(tail.ends_with("\n\n"), "{tail}");
        let v: serde_json::Value =
            serde_json::from_str(tail.trim_start_matches("data: ").trim()).expect("json event");
        assert_eq!(v["error"]["code"], "sluice_response_too_large");
    }

    #[test]
    fn an_ndjson_stream_cut_mid_line_gets_a_newline_before_the_error_line() {
        let mut f = MaxBytes::new(10, Server::Ollama, Framing::Ndjson);
        assert!(f.on_data(Bytes::from_static(b"{\"a\":"), false).is_ok());
        let stop = f
            .on_data(Bytes::from_static(b"1}\n{\"b\":2}\n"), false)
            .expect_err("over the limit");
        let tail = String::from_utf8_lossy(&stop.tail).into_owned();
        let mut lines = tail.lines();
        assert_eq!(lines.next(), Some(""));
        let v: serde_json::Value = serde_json::from_str(lines.next().unwrap_or("")).expect("json");
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("max_response_bytes"))
        );
    }

    #[test]
    fn a_plain_body_is_cut_without_a_tail() {
        let mut f = MaxBytes::new(3, Server::Openai, Framing::Json);
        let stop = f
            .on_data(Bytes::from_static(b"{\"a\":1}"), false)
            .expect_err("cut");
        assert!(stop.tail.is_empty());
    }
}
