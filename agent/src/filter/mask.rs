//! Masking secrets and personal data in response bodies (issue 15), as a response filter.
//!
//! The layer follows the body's type: SSE and NDJSON streams are masked event by event
//! with one masker per text channel (`mask::events`), JSON bodies in their string values
//! (`mask::json`), other text as bytes (`mask::StreamMasker`). What cannot be scanned
//! (compressed, binary, multipart, gRPC) is refused at construction with its reason, for
//! the caller to refuse or pass by the target's `on_unscannable`. Every verdict (clean,
//! masked with counts, blocked, unscanned) is readable through a [`MaskHandle`] at any time,
//! including after the client left mid-stream.
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use super::{
    Filter, Framing, Stop,
    framing::{TooLong, Units},
};
use crate::{
    adapter::Server,
    mask::{
        Counts, EventMasker, JsonMasker, Lookup, Plan, Restorer, StreamMasker, Unscannable,
        Verdict, Wire,
    },
    respond,
};

/// The longest SSE event or NDJSON line the filter holds to mask it whole (a longer one
/// ends the stream as unscanned).
pub const MAX_EVENT: usize = 1 << 20;

/// Which masking layer a body gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Sse,
    Ndjson,
    Json,
    Text,
}

impl Layer {
    /// The layer for a body of `content_type` / `content_encoding` from a `server`, or why it
    /// cannot be scanned.
    pub fn of(
        server: Server,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
    ) -> Result<Layer, Unscannable> {
        if let Some(enc) = content_encoding {
            let enc = enc.trim();
            if !enc.is_empty() && !enc.eq_ignore_ascii_case("identity") {
                return Err(Unscannable::Compressed);
            }
        }
        let mime = content_type
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        Ok(match mime.as_str() {
            "text/event-stream" => Layer::Sse,
            "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonlines" => Layer::Ndjson,
            // Ollama streams NDJSON; an untyped body from it is one.
            "" if server == Server::Ollama => Layer::Ndjson,
            "application/json" => Layer::Json,
            m if m.ends_with("+json") => Layer::Json,
            m if m.starts_with("application/grpc") => return Err(Unscannable::Grpc),
            m if m.starts_with("multipart/") => return Err(Unscannable::Multipart),
            // An untyped body is scanned as bytes: nothing passes unscanned for want of a
            // header.
            "" => Layer::Text,
            m if m.starts_with("text/") => Layer::Text,
            "application/xml"
            | "application/javascript"
            | "application/x-www-form-urlencoded"
            | "application/yaml"
            | "application/x-yaml" => Layer::Text,
            m if m.ends_with("+xml") => Layer::Text,
            _ => return Err(Unscannable::Binary),
        })
    }

    fn framing(self) -> Framing {
        match self {
            Layer::Sse => Framing::Sse,
            Layer::Ndjson => Framing::Ndjson,
            Layer::Json => Framing::Json,
            Layer::Text => Framing::Other,
        }
    }
}

enum Masker {
    Events {
        units: Units,
        m: Box<EventMasker>,
    },
    Json(Box<JsonMasker>),
    Text {
        m: Box<StreamMasker>,
        restorer: Option<Restorer>,
        scratch: Vec<u8>,
    },
}

#[derive(Debug, Clone)]
enum State {
    Scanning,
    Blocked(String),
    Unscanned(Unscannable),
}

struct Shared {
    plan: Plan,
    counts: Counts,
    state: State,
    restored: u64,
}

/// Reads a response's masking verdict, during the stream or after it.
#[derive(Clone)]
pub struct MaskHandle(Arc<Mutex<Shared>>);

impl MaskHandle {
    pub fn verdict(&self) -> Verdict {
        let Ok(s) = self.0.lock() else {
            return Verdict::Unscanned {
                reason: Unscannable::Error,
            };
        };
        match &s.state {
            State::Blocked(detector) => Verdict::Blocked {
                detector: detector.clone(),
            },
            State::Unscanned(reason) => Verdict::Unscanned { reason: *reason },
            State::Scanning => Verdict::from_counts(&s.counts, |i| s.plan.scanner().name(i)),
        }
    }

    /// Pseudonyms restored to their originals so far.
    pub fn restored(&self) -> u64 {
        self.0.lock().map_or(0, |s| s.restored)
    }
}

/// The response filter that masks.
pub struct ResponseMask {
    masker: Masker,
    layer: Layer,
    server: Server,
    plan: Plan,
    /// Findings since the last publication to the handle.
    counts: Counts,
    shared: Arc<Mutex<Shared>>,
    stopped: bool,
}

impl ResponseMask {
    /// A filter masking by `plan` a body of `server` with these headers' values;
    /// `restore` looks up the pseudonyms issued to this caller. `Err`: the body cannot be
    /// scanned, and why.
    pub fn new(
        plan: Plan,
        server: Server,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        restore: Option<Lookup>,
    ) -> Result<ResponseMask, Unscannable> {
        let layer = Layer::of(server, content_type, content_encoding)?;
        Ok(Self::with_layer(plan, server, layer, restore))
    }

    /// As [`ResponseMask::new`], reading `Content-Type` and `Content-Encoding` from `headers`.
    pub fn from_headers(
        plan: Plan,
        server: Server,
        headers: &http::HeaderMap,
        restore: Option<Lookup>,
    ) -> Result<ResponseMask, Unscannable> {
        // A header given twice is read as no layer knows it (unscannable): a client could
        // apply the second value the filter did not look at.
        let get = |h: http::header::HeaderName| {
            let mut all = headers.get_all(h).iter();
            let first = all.next()?;
            if all.next().is_some() {
                return Some("\u{0}given twice");
            }
            Some(first.to_str().unwrap_or("\u{0}invalid"))
        };
        Self::new(
            plan,
            server,
            get(http::header::CONTENT_TYPE),
            get(http::header::CONTENT_ENCODING),
            restore,
        )
    }

    pub fn with_layer(plan: Plan, server: Server, layer: Layer, restore: Option<Lookup>) -> Self {
        let masker = match layer {
            Layer::Sse | Layer::Ndjson => Masker::Events {
                units: Units::new(layer.framing(), MAX_EVENT),
                m: Box::new(EventMasker::new(
                    if layer == Layer::Sse {
                        Wire::Sse
                    } else {
                        Wire::Ndjson
                    },
                    plan.clone(),
                    restore,
                )),
            },
            Layer::Json => Masker::Json(Box::new(JsonMasker::new(plan.clone(), restore))),
            Layer::Text => Masker::Text {
                m: Box::new(StreamMasker::new(plan.clone())),
                restorer: restore.map(Restorer::new),
                scratch: Vec::new(),
            },
        };
        let shared = Arc::new(Mutex::new(Shared {
            plan: plan.clone(),
            counts: plan.counts(),
            state: State::Scanning,
            restored: 0,
        }));
        ResponseMask {
            masker,
            layer,
            server,
            counts: plan.counts(),
            plan,
            shared,
            stopped: false,
        }
    }

    pub fn layer(&self) -> Layer {
        self.layer
    }

    pub fn handle(&self) -> MaskHandle {
        MaskHandle(self.shared.clone())
    }

    /// Moves the maskers' counts to the handle (only when something was found).
    fn publish(&mut self, state: Option<State>) {
        let restored = match &self.masker {
            Masker::Events { m, .. } => m.restored(),
            Masker::Json(j) => j.restored(),
            Masker::Text { restorer, .. } => restorer.as_ref().map_or(0, Restorer::restored),
        };
        match &mut self.masker {
            Masker::Events { m, .. } => m.move_counts_to(&mut self.counts),
            Masker::Json(j) => j.move_counts_to(&mut self.counts),
            Masker::Text { m, .. } => m.move_counts_to(&mut self.counts),
        }
        if self.counts.total() == 0 && state.is_none() && restored == 0 {
            return;
        }
        if let Ok(mut s) = self.shared.lock() {
            s.counts.absorb(&mut self.counts);
            s.restored = restored;
            if let Some(st) = state {
                s.state = st;
            }
        }
    }

    /// Ends the stream: `sent` (already masked, safe) and then the error in the stream's
    /// own shape; a plain body is cut instead.
    fn stop(&mut self, sent: BytesMut, state: State, code: &str, message: &str) -> Stop {
        self.stopped = true;
        self.publish(Some(state));
        let framing = self.layer.framing();
        let err = respond::stream_error(self.server, framing, code, message);
        let tail = if err.is_empty() {
            // Nothing to end a plain body with: what was masked before goes out, then the
            // body fails, so the client never takes the cut for the end.
            Bytes::new()
        } else {
            let mut t = sent;
            t.extend_from_slice(&err);
            t.freeze()
        };
        Stop {
            tail,
            reason: message.to_string(),
        }
    }

    fn blocked_detector(&self) -> String {
        let counts = match &self.masker {
            Masker::Events { m, .. } => m.counts(),
            Masker::Json(j) => j.counts(),
            Masker::Text { m, .. } => m.counts(),
        };
        counts
            .per_detector
            .iter()
            .enumerate()
            .find(|(i, n)| {
                **n > 0 && matches!(self.plan.action(*i), Some(crate::mask::Action::Block))
            })
            .map_or_else(
                || "unknown".to_string(),
                |(i, _)| self.plan.scanner().name(i).to_string(),
            )
    }

    fn block(&mut self, sent: BytesMut) -> Stop {
        let detector = self.blocked_detector();
        let msg = format!(
            "Sluice ended the response: it contained a {detector} value, which policy blocks"
        );
        self.stop(
            sent,
            State::Blocked(detector),
            "sluice_masking_blocked",
            &msg,
        )
    }

    fn unscannable(&mut self, sent: BytesMut, reason: Unscannable, why: &str) -> Stop {
        let msg = format!("Sluice ended the response: it could not be scanned ({why})");
        self.stop(
            sent,
            State::Unscanned(reason),
            "sluice_response_unscannable",
            &msg,
        )
    }
}

impl Filter for ResponseMask {
    fn on_data(&mut self, data: Bytes, end: bool) -> Result<Bytes, Stop> {
        if self.stopped {
            return Ok(Bytes::new());
        }
        let mut out = BytesMut::with_capacity(data.len() + 64);
        match &mut self.masker {
            Masker::Events { units, m } => {
                let list = match units.push(&data, end) {
                    Ok(l) => l,
                    Err(TooLong { max }) => {
                        let why = format!("an event longer than {max} bytes");
                        return Err(self.unscannable(out, Unscannable::OverLimit, &why));
                    }
                };
                for u in &list {
                    let mark = out.len();
                    if let Err(e) = m.event(u, &mut out) {
                        out.truncate(mark);
                        let why = e.to_string();
                        return Err(self.unscannable(out, Unscannable::Error, &why));
                    }
                    if m.blocked() {
                        out.truncate(mark);
                        return Err(self.block(out));
                    }
                }
                if end {
                    let mark = out.len();
                    let r = m.finish(&mut out);
                    if let Err(e) = r {
                        out.truncate(mark);
                        let why = e.to_string();
                        return Err(self.unscannable(out, Unscannable::Error, &why));
                    }
                    if m.blocked() {
                        out.truncate(mark);
                        return Err(self.block(out));
                    }
                }
            }
            Masker::Json(j) => {
                let mut v = Vec::with_capacity(data.len() + 64);
                if let Err(e) = j.push(&data, end, &mut v) {
                    let why = e.to_string();
                    return Err(self.unscannable(out, Unscannable::Error, &why));
                }
                if j.counts().blocked {
                    return Err(self.block(out));
                }
                out.extend_from_slice(&v);
            }
            Masker::Text {
                m,
                restorer,
                scratch,
            } => {
                let mut v = Vec::with_capacity(data.len() + 64);
                match restorer {
                    Some(r) => {
                        scratch.clear();
                        m.push(&data, end, scratch);
                        r.push(scratch, end, &mut v);
                    }
                    None => m.push(&data, end, &mut v),
                }
                if m.counts().blocked {
                    return Err(self.block(out));
                }
                out.extend_from_slice(&v);
            }
        }
        self.publish(None);
        Ok(out.freeze())
    }
}

#[cfg(test)]
#[path = "mask_tests.rs"]
mod tests;
