//! Response filters: what may change a response body on its way to the client, frame by
//! frame, without waiting for the whole stream.
//!
//! Every response (the upstream's, or Sluice's own refusal) is wrapped once in a
//! [`ResponseBody`], which owns the end of the request: its record guard and its in-flight
//! mark. The body runs the target's filter [`Chain`] over each data frame as it arrives: a
//! filter sees the bytes and whether the stream has ended, and may pass them, change them,
//! hold some back (releasing them later, at the latest at the end) or stop the stream with
//! a last message in the protocol's own error shape. Filters that want whole SSE events or
//! NDJSON lines wrap themselves in [`framing::Framed`], which cuts the stream at event
//! boundaries through a bounded buffer.
use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::{
    adapter::Server,
    record::{self, Outcome},
    respond::{Body, BodyError},
};

mod echo_mask;
pub mod framing;
mod mask;
mod max_bytes;

pub use echo_mask::{EchoMask, mask_value};
pub use framing::Framing;
pub use mask::{Layer as MaskLayer, MaskHandle, ResponseMask};
pub use max_bytes::MaxBytes;

/// A filter ends the stream. With a `tail` (the error in the stream's own shape: an SSE error
/// event, an NDJSON error line) the tail is the stream's last unit and the body then ends:
/// the client reads the error where it reads everything else (hyper would drop a tail that
/// is followed by a body error). Without one, the body ends with an error, so the client
/// sees a truncated transfer and never mistakes the cut for a clean end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    pub tail: Bytes,
    pub reason: String,
}

pub trait Filter: Send + Sync + 'static {
    /// `data` is the next bytes of the body (empty on the final call); `end` is true once,
    /// after the upstream's last byte. Returns the bytes to pass on.
    fn on_data(&mut self, data: Bytes, end: bool) -> Result<Bytes, Stop>;

    /// The response's trailers, after the last data (gRPC's status and message): a filter
    /// that changes bytes may change them too.
    fn on_trailers(&mut self, _trailers: &mut http::HeaderMap) {}
}

/// The filters of one response, in order.
#[derive(Default)]
pub struct Chain(Vec<Box<dyn Filter>>);

impl Chain {
    pub fn push(&mut self, f: impl Filter) {
        self.0.push(Box::new(f));
    }

    /// Puts `f` before every filter already in the chain.
    pub fn push_first(&mut self, f: impl Filter) {
        self.0.insert(0, Box::new(f));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn run(&mut self, data: Bytes, end: bool) -> Result<Bytes, Stop> {
        let timed = crate::metrics::get()
            .filter(|_| !self.0.is_empty())
            .map(|m| (m, std::time::Instant::now()));
        let out = self.run_filters(data, end);
        if let Some((m, t)) = timed {
            m.observe(crate::metrics::Stage::Filters, t.elapsed());
        }
        out
    }

    fn trailers(&mut self, trailers: &mut http::HeaderMap) {
        for f in &mut self.0 {
            f.on_trailers(trailers);
        }
    }

    fn run_filters(&mut self, mut data: Bytes, end: bool) -> Result<Bytes, Stop> {
        for f in &mut self.0 {
            // A filter's held-back bytes must reach the later filters at the end even if
            // nothing new arrived, so the end call is never skipped.
            if data.is_empty() && !end {
                break;
            }
            data = f.on_data(data, end)?;
        }
        Ok(data)
    }
}

/// What a request still owns once its response head is out: released when the body ends.
pub struct RequestEnd {
    pub record: record::Guard,
    /// Marks the request in flight on its connection (the idle timer does not run).
    pub in_flight: Option<crate::http::InFlight>,
    /// The request's parsed body, freed with the end rather than before the response's
    /// head: a tree's frees are then on no request's path.
    pub json: Option<serde_json::Value>,
}

enum State {
    Streaming,
    /// The end was flushed through the chain; the next poll ends the body.
    Flushed,
    /// A filter stopped the stream; the next poll ends the body (`abort`: with an error).
    Stopping {
        reason: String,
        abort: bool,
    },
    Done,
}

/// The body of every response Sluice sends.
pub struct ResponseBody {
    inner: Body,
    chain: Chain,
    end: RequestEnd,
    state: State,
    /// A frame to send before anything else (a filter's tail, or trailers after a flush).
    pending: Option<Frame<Bytes>>,
}

impl ResponseBody {
    pub fn new(inner: Body, chain: Chain, end: RequestEnd) -> Self {
        ResponseBody {
            inner,
            chain,
            end,
            state: State::Streaming,
            pending: None,
        }
    }

    pub fn boxed(self) -> Body {
        http_body_util::BodyExt::boxed(self)
    }

    fn out(&mut self, data: Bytes) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        // Recorded before it is sent: with `required`, a chunk the store cannot take never
        // reaches the client, and the response ends there.
        if let Err(why) = self.end.record.response_data(&data) {
            let reason = format!(
                "recording is required and the audit store cannot take the response ({why})"
            );
            self.state = State::Done;
            self.end.record.finish(Outcome::Ended(reason.clone()));
            return Poll::Ready(Some(Err(BodyError::Sluice(reason))));
        }
        self.end.record.add_bytes(data.len());
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn stop(&mut self, stop: Stop) {
        let abort = stop.tail.is_empty();
        if !abort {
            // The stream ends either way: a tail the store cannot take is still sent.
            let _ = self.end.record.response_data(&stop.tail);
            self.end.record.add_bytes(stop.tail.len());
            self.pending = Some(Frame::data(stop.tail));
        }
        self.state = State::Stopping {
            reason: stop.reason,
            abort,
        };
    }

    /// The upstream has ended (`trailers` may follow): flush what filters held back.
    /// Returns the last bytes to send, if any.
    fn flush(&mut self, trailers: Option<Frame<Bytes>>) -> Option<Bytes> {
        match self.chain.run(Bytes::new(), true) {
            Ok(rest) => {
                self.state = State::Flushed;
                self.pending = trailers;
                (!rest.is_empty()).then_some(rest)
            }
            Err(stop) => {
                self.stop(stop);
                None
            }
        }
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            if let Some(f) = this.pending.take() {
                return Poll::Ready(Some(Ok(f)));
            }
            match std::mem::replace(&mut this.state, State::Streaming) {
                State::Streaming => {}
                State::Flushed => {
                    this.state = State::Done;
                    this.end.record.finish(Outcome::Complete);
                    return Poll::Ready(None);
                }
                State::Stopping { reason, abort } => {
                    this.state = State::Done;
                    this.end.record.finish(Outcome::Ended(reason.clone()));
                    return Poll::Ready(abort.then(|| Err(BodyError::Sluice(reason))));
                }
                State::Done => {
                    this.state = State::Done;
                    return Poll::Ready(None);
                }
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if this.chain.is_empty() {
                            return this.out(data);
                        }
                        match this.chain.run(data, false) {
                            Ok(out) if out.is_empty() => continue,
                            Ok(out) => return this.out(out),
                            Err(stop) => this.stop(stop),
                        }
                    }
                    // Trailers (gRPC status) end the stream: flush held bytes before them.
                    Err(mut trailers) => {
                        if let Some(t) = trailers.trailers_mut() {
                            this.chain.trailers(t);
                        }
                        if let Some(rest) = this.flush(Some(trailers)) {
                            return this.out(rest);
                        }
                    }
                },
                Some(Err(e)) => {
                    this.state = State::Done;
                    this.end.record.finish(e.outcome());
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    if let Some(rest) = this.flush(None) {
                        return this.out(rest);
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.state {
            State::Done => true,
            State::Streaming => {
                self.pending.is_none() && self.chain.is_empty() && self.inner.is_end_stream()
            }
            State::Flushed | State::Stopping { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        // Filters may change the length; without any, the upstream's length holds.
        if self.chain.is_empty() {
            self.inner.size_hint()
        } else {
            SizeHint::default()
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper's HTTP/2 server does not poll a body that says it has ended (an empty
        // refusal): that is a complete response, not a cut one.
        if matches!(self.state, State::Streaming)
            && self.pending.is_none()
            && self.chain.is_empty()
            && self.inner.is_end_stream()
        {
            self.end.record.finish(Outcome::Complete);
        }
        // Otherwise the guard's own drop records where the client left.
    }
}

/// Shared per-target filter settings, resolved once when the agent starts.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub max_response_bytes: Option<u64>,
}

impl Settings {
    /// Whether any filter may change a body of this target, in which case the upstream's
    /// `Content-Length` cannot be passed on and compressed bodies must not be asked for.
    pub fn may_change_body(&self) -> bool {
        self.max_response_bytes.is_some()
    }

    /// The chain for one response of a `server` whose body is framed as `framing`.
    pub fn chain(&self, server: Server, framing: Framing) -> Chain {
        let mut c = Chain::default();
        if let Some(max) = self.max_response_bytes {
            c.push(MaxBytes::new(max, server, framing));
        }
        c
    }
}

#[cfg(test)]
mod tests;
