//! The one record of a request, written exactly once: when its response body is finished or
//! dropped (client gone, agent shutting down), so streamed responses are recorded with their
//! full duration and size, and a cut stream is recorded as such.
use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::{adapter::Operation, connection::Conn, policy::Decision, respond::Body};

/// What is known about a request when its response starts.
pub struct Record {
    target: String,
    tgid: u32,
    uid: u32,
    comm: String,
    method: String,
    path: String,
    op: Option<Operation>,
    decision: Option<Decision>,
    status: StatusCode,
    started: Instant,
    headers_at: Instant,
}

impl Record {
    pub fn new(
        conn: &Conn,
        method: &str,
        path: &str,
        op: Option<Operation>,
        decision: Option<Decision>,
        status: StatusCode,
        started: Instant,
    ) -> Self {
        Record {
            target: conn.target.clone(),
            tgid: conn.workload.tgid,
            uid: conn.workload.uid,
            comm: conn.workload.comm.clone(),
            method: method.to_string(),
            path: path.to_string(),
            op,
            decision,
            status,
            started,
            headers_at: Instant::now(),
        }
    }
}

/// A response body that writes the record when it ends.
pub struct Recorded {
    inner: Body,
    record: Option<Record>,
    bytes: u64,
    complete: bool,
    failed: bool,
}

impl Recorded {
    pub fn wrap(inner: Body, record: Record) -> Self {
        Recorded {
            inner,
            record: Some(record),
            bytes: 0,
            complete: false,
            failed: false,
        }
    }
}

impl HttpBody for Recorded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.bytes += d.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.failed = true,
            Poll::Ready(None) => self.complete = true,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        let Some(r) = self.record.take() else { return };
        let complete = self.complete || (!self.failed && self.inner.is_end_stream());
        let outcome = if complete {
            "complete"
        } else if self.failed {
            "upstream error"
        } else {
            "cut"
        };
        let action = r.decision.as_ref().map_or("refuse", Decision::label);
        let rules = match &r.decision {
            Some(Decision::Permit(p)) => p.rules.join(","),
            Some(Decision::Deny(d)) => d.rule.clone().unwrap_or_else(|| "(target default)".into()),
            None => String::new(),
        };
        let op = r.op.as_ref();
        tracing::info!(
            target_name = %r.target, tgid = r.tgid, uid = r.uid, comm = %r.comm,
            method = %r.method, path = %r.path,
            operation = %op.map_or("-".to_string(), |o| o.class.to_string()),
            route = op.map_or("-", |o| o.route),
            model = op.and_then(|o| o.model.as_deref()).unwrap_or("-"),
            streaming = op.is_some_and(|o| o.streaming),
            decision = action, rules = %rules, status = r.status.as_u16(),
            response_bytes = self.bytes, outcome,
            headers_ms = (r.headers_at - r.started).as_millis() as u64,
            duration_ms = r.started.elapsed().as_millis() as u64,
            "request"
        );
    }
}
