//! One record per HTTP request, from its first byte. A `Guard` is made when the request
//! starts and travels with it (in the request context, then in the response body); its
//! record is finished exactly once: when the response ends, is cut or fails, or when the
//! guard is dropped early (the client went away while uploading, while Sluice waited for the
//! upstream, or the agent's drain cut it). Finished records go through a bounded channel to
//! one writer task (`writer.rs`).
//!
//! A request reserves its record's place in that channel before its first stage runs, so a
//! finished record is never dropped: when the writer falls behind, new requests wait for a
//! place instead (a flood slows the flooder; it cannot push other requests out of the audit
//! trail). The queue therefore also bounds the requests in flight.
//!
//! A record holds what policy saw and decided, never credentials or bodies; at the store's
//! `full` level the bodies go to the store beside it, piece by piece (`audit::Tap`).
use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use http::StatusCode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    adapter::{Operation, Server},
    admin::Table,
    identity::Principal,
    mask::Verdict,
    policy::Decision,
    workload::Workload,
};

mod line;
mod writer;

pub use writer::run as writer;

/// Places in the writer's queue: requests in flight plus finished records not yet written.
pub const QUEUE: usize = 16_384;

/// Where a request was when it ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the request body.
    Upload,
    /// Classifying and deciding.
    Decide,
    /// Held, waiting for a person's approval.
    Approval,
    /// Waiting for the upstream's response head.
    Upstream,
    /// Streaming the response body.
    Response,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The response body was sent to its end.
    Complete,
    /// The client went away (`phase` says when).
    ClientGone(Phase),
    /// The upstream failed while the body was streaming.
    UpstreamError,
    /// The upstream sent no response head in time (the client got 504), or went silent
    /// in the middle of the body (the client's stream was cut): what and for how long.
    UpstreamTimeout(String),
    /// A response filter or limit ended the body.
    Ended(String),
    /// The agent's drain deadline cut the request.
    Drained(Phase),
    /// hyper refused the request head itself (400/431) before any stage saw it.
    Malformed(String),
    /// A policy allowed a protocol switch and the stream after it was passed through
    /// unjudged; its bytes are the record's request and response bytes.
    Switched {
        to: crate::policy::Switch,
        error: Option<String>,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Complete => f.write_str("complete"),
            // "cut" is what a client leaving mid-response has always been called.
            Outcome::ClientGone(Phase::Response) => f.write_str("cut"),
            Outcome::ClientGone(Phase::Upload) => f.write_str("cancelled while uploading"),
            Outcome::ClientGone(Phase::Approval) => {
                f.write_str("cancelled while held for approval")
            }
            Outcome::ClientGone(_) => f.write_str("cancelled while waiting for the upstream"),
            Outcome::UpstreamError => f.write_str("upstream error"),
            Outcome::UpstreamTimeout(why) => write!(f, "upstream timeout: {why}"),
            Outcome::Ended(why) => write!(f, "ended by sluice: {why}"),
            Outcome::Drained(_) => f.write_str("cut by drain"),
            Outcome::Malformed(why) => write!(f, "malformed: {why}"),
            Outcome::Switched { to, error: None } => write!(f, "switched to {to}, not judged"),
            Outcome::Switched { to, error: Some(e) } => {
                write!(f, "switched to {to}, not judged, ended: {e}")
            }
        }
    }
}

/// Everything the log line (and later the recording store) says about one request.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: u64,
    pub unix_ms: u64,
    pub target: String,
    pub server: Server,
    pub workload: Arc<Workload>,
    /// The verified token's issuer, subject and groups (never the token).
    pub principal: Option<Arc<Principal>>,
    pub method: String,
    pub path: String,
    pub operation: Option<Operation>,
    pub decision: Option<Decision>,
    pub status: Option<StatusCode>,
    /// Request body bytes Sluice read (a body passed through unread counts 0).
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub outcome: Outcome,
    pub headers_ms: Option<u64>,
    pub duration_ms: u64,
    /// What masking did to the request body: set by the pipeline's mask stage.
    pub mask_request: Verdict,
    /// What masking did to the response body: set by the response filter through
    /// [`Guard::set_mask_response`]; `off` when no masking rule covers responses.
    pub mask_response: Verdict,
    /// The response's headers with credentials removed; filled only when the recording
    /// store is on (`audit`).
    pub response_headers: Vec<(String, String)>,
    /// For a request a rule held: its approval and how it ended.
    pub approval: Option<ApprovalNote>,
    /// At the store's `full` level: what of the bodies was recorded (`audit::Tap`).
    pub body: Option<crate::audit::BodyNote>,
    /// The target's `audit_level: none`: not in the recording store (still logged).
    pub unaudited: bool,
}

/// A held request's approval, as its record shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalNote {
    /// Empty when a grant window let the request pass without a new approval.
    pub id: String,
    /// approved, denied, timeout, cancelled, stopped or granted.
    pub outcome: &'static str,
    /// The approvers who decided (or the grant window that covered it).
    pub decided_by: String,
    pub waited_ms: Option<u64>,
}

impl Record {
    /// "allow", "deny", "hold" when the policy decided; "refuse" when Sluice refused the
    /// request before the policy could; "cancelled" when the client left first.
    pub fn action(&self) -> &'static str {
        match (&self.decision, &self.outcome, self.status) {
            (Some(d), _, _) => d.label(),
            (None, Outcome::ClientGone(_) | Outcome::Drained(_), None) => "cancelled",
            _ => "refuse",
        }
    }

    /// The rule that decided (the first of them), for the metrics' `rule` label: one
    /// series per rule, not per combination of rules that matched.
    pub fn deciding_rule(&self) -> &str {
        match &self.decision {
            Some(d) => d.rules().next().unwrap_or(TARGET_DEFAULT),
            None => "",
        }
    }

    /// The rules that decided, comma-separated when displayed.
    pub fn rules(&self) -> Rules<'_> {
        Rules(self.decision.as_ref())
    }
}

/// What a decision made by the target's default, with no rule, is called in records.
const TARGET_DEFAULT: &str = "(target default)";

/// The rules that decided a request, displayed comma-separated without building a string.
#[derive(Clone, Copy)]
pub struct Rules<'a>(Option<&'a Decision>);

impl fmt::Display for Rules<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(d) = self.0 else {
            return Ok(());
        };
        let mut rules = d.rules();
        let Some(first) = rules.next() else {
            return f.write_str(TARGET_DEFAULT);
        };
        f.write_str(first)?;
        for r in rules {
            f.write_str(",")?;
            f.write_str(r)?;
        }
        Ok(())
    }
}

/// The sending side of the record queue, shared by every request.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Record>,
    table: Arc<Table>,
    next_id: Arc<AtomicU64>,
    shutdown: CancellationToken,
    /// The recording store, when on.
    audit: Option<crate::audit::Handle>,
}

impl Recorder {
    pub fn new(table: Arc<Table>, shutdown: CancellationToken) -> (Self, mpsc::Receiver<Record>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (
            Recorder {
                tx,
                table,
                next_id: Arc::new(AtomicU64::new(1)),
                shutdown,
                audit: None,
            },
            rx,
        )
    }

    /// Records also go to the recording store; request ids continue from `first_id` so
    /// that an id names one request in the store across restarts.
    pub fn with_audit(mut self, audit: crate::audit::Handle, first_id: u64) -> Self {
        self.next_id.store(first_id.max(1), Ordering::Relaxed);
        self.audit = Some(audit);
        self
    }

    pub fn audit(&self) -> Option<&crate::audit::Handle> {
        self.audit.as_ref()
    }

    /// Starts the record of a request that has just arrived, once the queue has a place for
    /// it (see the module docs).
    pub async fn start(
        &self,
        target: &str,
        server: Server,
        workload: &Arc<Workload>,
        method: &str,
        path: &str,
    ) -> Guard {
        // Closed only when the writer is gone (agent stopping): the record is then counted
        // as dropped when it finishes.
        let slot = self.tx.clone().reserve_owned().await.ok();
        Guard {
            slot,
            started: Instant::now(),
            headers_at: None,
            mask_response: None,
            tap: None,
            failed: None,
            phase: Phase::Upload,
            recorder: self.clone(),
            record: Some(Record {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                unix_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                target: target.to_string(),
                server,
                workload: workload.clone(),
                principal: None,
                method: method.to_string(),
                path: path.to_string(),
                operation: None,
                decision: None,
                status: None,
                request_bytes: 0,
                response_bytes: 0,
                outcome: Outcome::Complete,
                headers_ms: None,
                duration_ms: 0,
                mask_request: Verdict::Off,
                mask_response: Verdict::Off,
                response_headers: Vec::new(),
                approval: None,
                body: None,
                unaudited: false,
            }),
        }
    }

    fn submit(&self, slot: Option<mpsc::OwnedPermit<Record>>, record: Record) {
        self.table.count_request(record.action());
        match slot {
            Some(slot) => {
                slot.send(record);
            }
            None => self.table.count_record_dropped(),
        }
    }
}

/// The open record of one request. Finished exactly once: by `finish`, or on drop.
pub struct Guard {
    recorder: Recorder,
    /// This record's place in the writer's queue.
    slot: Option<mpsc::OwnedPermit<Record>>,
    record: Option<Record>,
    started: Instant,
    headers_at: Option<Instant>,
    phase: Phase,
    /// The response masking filter's verdict, read when the record is finished (the
    /// filter itself lives in the response body, which may end first or last).
    mask_response: Option<crate::filter::MaskHandle>,
    /// The bodies' way to the store, once `record_bodies` turned it on.
    tap: Option<Box<crate::audit::Tap>>,
    /// Set when the request failed before its response (`failed`).
    failed: Option<Outcome>,
}

impl Guard {
    /// The request's target is not recorded (`audit_level: none`).
    pub fn set_unaudited(&mut self) {
        self.with(|r| r.unaudited = true);
    }

    /// From now on the request's bodies are recorded (`level: full`).
    pub fn record_bodies(&mut self) {
        if let (Some(h), Some(r)) = (&self.recorder.audit, &self.record) {
            self.tap = Some(Box::new(crate::audit::Tap::new(
                h.clone(),
                r.id,
                self.started,
            )));
        }
    }

    /// The request body as it goes upstream (`None`: it streams through unread). An error
    /// means recording is required and cannot be done: the request must be refused.
    pub fn request_body(
        &mut self,
        body: Option<&bytes::Bytes>,
    ) -> Result<(), crate::audit::Unavailable> {
        match (self.tap.as_mut(), body) {
            (Some(t), Some(b)) => t.request(b),
            (Some(t), None) => {
                t.request_unread();
                Ok(())
            }
            (None, _) => Ok(()),
        }
    }

    /// A response chunk about to reach the client. An error means recording is required
    /// and cannot be done: the chunk must not be sent.
    pub fn response_data(&mut self, data: &bytes::Bytes) -> Result<(), crate::audit::Unavailable> {
        match self.tap.as_mut() {
            Some(t) => t.response(data),
            None => Ok(()),
        }
    }

    pub fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
    }

    fn with(&mut self, f: impl FnOnce(&mut Record)) {
        if let Some(r) = self.record.as_mut() {
            f(r);
        }
    }

    pub fn set_path(&mut self, path: &str) {
        self.with(|r| path.clone_into(&mut r.path));
    }

    pub fn set_operation(&mut self, op: &Operation) {
        self.with(|r| r.operation = Some(op.clone()));
    }

    pub fn set_principal(&mut self, p: &Arc<Principal>) {
        self.with(|r| r.principal = Some(p.clone()));
    }

    pub fn set_decision(&mut self, d: &Decision) {
        self.with(|r| r.decision = Some(d.clone()));
    }

    pub fn set_approval(&mut self, a: ApprovalNote) {
        self.with(|r| r.approval = Some(a));
    }

    /// The response head is about to go out with this status.
    pub fn set_status(&mut self, status: StatusCode) {
        self.headers_at = Some(Instant::now());
        self.phase = Phase::Response;
        self.with(|r| r.status = Some(status));
    }

    /// The request direction's masking verdict (counts per detector, never values).
    pub fn set_mask_request(&mut self, v: Verdict) {
        self.with(|r| r.mask_request = v);
    }

    /// The response direction's masking verdict: the response filter sets it when it ends
    /// (or the pipeline, when it refuses or passes a response it cannot scan).
    pub fn set_mask_response(&mut self, v: Verdict) {
        self.with(|r| r.mask_response = v);
    }

    /// The response is masked by the filter behind `handle`: its verdict, whatever it is
    /// when the record is finished (clean, masked, blocked, or unscanned mid-stream), is
    /// the record's `mask_response`.
    pub fn watch_mask_response(&mut self, handle: crate::filter::MaskHandle) {
        self.mask_response = Some(handle);
    }

    /// The response's headers, credentials removed, for the recording store (nothing is
    /// copied when it is off).
    pub fn set_response_headers(&mut self, h: &http::HeaderMap) {
        if self.recorder.audit.is_some() {
            self.with(|r| r.response_headers = crate::audit::sanitize_headers(h));
        }
    }

    /// The record as it stands, for the opening record in the store.
    pub fn snapshot(&self) -> Option<Record> {
        self.record.clone()
    }

    pub fn set_request_bytes(&mut self, n: usize) {
        self.with(|r| r.request_bytes = n as u64);
    }

    /// Bytes a switched stream carried up, after the request's own body.
    pub fn add_request_bytes(&mut self, n: usize) {
        self.with(|r| r.request_bytes += n as u64);
    }

    pub fn add_bytes(&mut self, n: usize) {
        self.with(|r| r.response_bytes += n as u64);
    }

    /// The request failed before any response (an upstream timeout): the refusal Sluice
    /// answers with is sent to its end, but the record says the request did not complete.
    pub fn failed(&mut self, outcome: Outcome) {
        self.failed = Some(outcome);
    }

    pub fn finish(&mut self, outcome: Outcome) {
        let Some(mut r) = self.record.take() else {
            return;
        };
        let outcome = match (outcome, self.failed.take()) {
            (Outcome::Complete, Some(failed)) => failed,
            (outcome, _) => outcome,
        };
        if let Some(h) = self.mask_response.take() {
            r.mask_response = h.verdict();
        }
        if let Some(t) = self.tap.take() {
            r.body = Some(t.note());
        }
        r.outcome = outcome;
        r.headers_ms = self
            .headers_at
            .map(|h| (h - self.started).as_millis() as u64);
        r.duration_ms = self.started.elapsed().as_millis() as u64;
        self.recorder.submit(self.slot.take(), r);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let outcome = if self.recorder.shutdown.is_cancelled() {
            Outcome::Drained(self.phase)
        } else {
            Outcome::ClientGone(self.phase)
        };
        self.finish(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Decision, Denial};

    fn workload() -> Arc<Workload> {
        Arc::new(Workload::described(1000, 1000, "curl".into(), None))
    }

    fn recorder() -> (
        Recorder,
        mpsc::Receiver<Record>,
        Arc<Table>,
        CancellationToken,
    ) {
        let table = Arc::new(Table::default());
        let stop = CancellationToken::new();
        let (r, rx) = Recorder::new(table.clone(), stop.clone());
        (r, rx, table, stop)
    }

    /// A 504 for an upstream that never answered is sent whole, but the request did not
    /// complete: its record says why.
    #[tokio::test]
    async fn a_request_that_failed_before_its_refusal_is_not_recorded_complete() {
        let (rec, mut rx, _, _) = recorder();
        let mut g = rec
            .start("t", Server::Ollama, &workload(), "POST", "/api/chat")
            .await;
        g.failed(Outcome::UpstreamTimeout("no head".into()));
        g.set_status(StatusCode::GATEWAY_TIMEOUT);
        g.finish(Outcome::Complete);
        let r = rx.try_recv().expect("one record");
        assert_eq!(r.status, Some(StatusCode::GATEWAY_TIMEOUT));
        assert_eq!(r.outcome.to_string(), "upstream timeout: no head");
    }

    #[tokio::test]
    async fn a_guard_is_finished_exactly_once() {
        let (rec, mut rx, table, _) = recorder();
        let mut g = rec
            .start("t", Server::Ollama, &workload(), "POST", "/api/chat")
            .await;
        g.set_status(StatusCode::OK);
        g.add_bytes(10);
        g.finish(Outcome::Complete);
        g.finish(Outcome::UpstreamError);
        drop(g);
        let r = rx.try_recv().expect("one record");
        assert_eq!((r.outcome, r.response_bytes), (Outcome::Complete, 10));
        assert!(rx.try_recv().is_err(), "no second record");
        assert_eq!(
            table.request_totals().2,
            1,
            "a request without a decision is a refusal"
        );
    }

    #[tokio::test]
    async fn dropping_an_open_guard_records_where_the_client_left() {
        let (rec, mut rx, table, _) = recorder();
        let g = rec
            .start(
                "t",
                Server::Ollama,
                &workload(),
                "POST",
                "/v1/chat/completions",
            )
            .await;
        drop(g);
        let mut g = rec
            .start(
                "t",
                Server::Ollama,
                &workload(),
                "POST",
                "/v1/chat/completions",
            )
            .await;
        g.set_decision(&Decision::Deny(Denial {
            rule: Some("r".into()),
            reason: "x".into(),
        }));
        g.set_phase(Phase::Upstream);
        drop(g);
        let a = rx.try_recv().expect("upload record");
        assert_eq!(a.outcome.to_string(), "cancelled while uploading");
        assert_eq!(a.action(), "cancelled");
        let b = rx.try_recv().expect("upstream record");
        assert_eq!(
            b.outcome.to_string(),
            "cancelled while waiting for the upstream"
        );
        assert_eq!(
            (b.action(), b.rules().to_string()),
            ("deny", "r".to_string())
        );
        assert_eq!(table.cancelled(), 1);
    }

    #[tokio::test]
    async fn the_metrics_rule_is_the_deciding_one_not_the_combination() {
        let (rec, mut rx, _, _) = recorder();
        let mut g = rec
            .start("t", Server::Openai, &workload(), "POST", "/")
            .await;
        g.set_decision(&Decision::Permit(crate::policy::Permit {
            rules: vec!["team-a".into(), "everyone".into()],
            by_default: false,
        }));
        g.finish(Outcome::Complete);
        let r = rx.try_recv().expect("record");
        assert_eq!(r.rules().to_string(), "team-a,everyone");
        assert_eq!(r.deciding_rule(), "team-a");
        let mut g = rec
            .start("t", Server::Openai, &workload(), "POST", "/")
            .await;
        g.set_decision(&Decision::Permit(crate::policy::Permit {
            rules: vec![],
            by_default: true,
        }));
        g.finish(Outcome::Complete);
        let r = rx.try_recv().expect("record");
        assert_eq!(r.deciding_rule(), "(target default)");
    }

    #[tokio::test]
    async fn drain_is_told_apart_from_a_client_leaving() {
        let (rec, mut rx, _, stop) = recorder();
        let mut g = rec
            .start("t", Server::Ollama, &workload(), "GET", "/")
            .await;
        g.set_status(StatusCode::OK);
        stop.cancel();
        drop(g);
        let r = rx.try_recv().expect("record");
        assert_eq!(r.outcome, Outcome::Drained(Phase::Response));
        assert_eq!(r.outcome.to_string(), "cut by drain");
    }

    #[tokio::test]
    async fn a_full_queue_makes_new_requests_wait_and_loses_no_record() {
        let (rec, mut rx, table, _) = recorder();
        let mut open = Vec::new();
        for _ in 0..QUEUE {
            open.push(
                rec.start("t", Server::Ollama, &workload(), "GET", "/")
                    .await,
            );
        }
        // Every place is taken: the next request waits for one.
        let w = workload();
        let waiting = rec.start("t", Server::Ollama, &w, "GET", "/next");
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), waiting.as_mut())
                .await
                .is_err(),
            "a request started without a place for its record"
        );
        for mut g in open {
            g.finish(Outcome::Complete);
        }
        // The writer takes one record: a place frees up and the waiting request starts.
        assert!(rx.recv().await.is_some());
        let mut g = waiting.await;
        g.finish(Outcome::Complete);
        let mut n = 1;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, QUEUE + 1, "every record reached the writer");
        assert_eq!(table.records_dropped(), 0);
    }
}
