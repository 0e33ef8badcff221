//! The context of one request: everything its stages read and write, owned by
//! `pipeline::handle` from the request's first line. Dropping it before the response starts
//! (the client went away, the drain cut it) finishes its record with where it was.
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;

use crate::{
    adapter::Operation,
    connection::{Conn, Ctx},
    filter::RequestEnd,
    http::{ClientBody, InFlight},
    limits::BodyCharge,
    metrics::{Clock, Stage},
    policy::{Decision, Policy, Switch},
    record::{Guard, Phase},
};

/// The request body as the stages have it.
pub enum RequestBody {
    /// Not read yet (admit has not run or refused).
    Unread(ClientBody),
    /// Read whole by `read`; its bytes are charged to the body budget until dropped.
    Buffered { bytes: Bytes, charge: BodyCharge },
    /// Passed through unread: gRPC to a server that speaks it (its messages are framed, and
    /// policy decides on the path alone).
    Streaming(ClientBody),
    /// Handed to the upstream request.
    Taken,
}

/// Who the request is from, as far as the identify stage could tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Only the workload the eBPF hook attributed the connection to (no token).
    Workload,
    /// A verified token's principal, sent by that workload, and the headers the token came
    /// in (stripped before forwarding).
    Token(
        Arc<crate::identity::Principal>,
        crate::identity::TokenHeaders,
    ),
}

/// Where an approval stands. Requests the policy holds wait for a person (`approval::hold`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Approval {
    /// The decision did not ask for one.
    #[default]
    NotNeeded,
    /// Held, waiting for a decision.
    Waiting,
    /// A person approved it.
    Approved,
    /// A grant window an earlier approval opened covers it.
    Granted,
}

/// The upstream key the prepare stage put in the request in place of the client's
/// credentials (targets with `credential:`). Kept for the response: an echo of this key
/// is masked. Its `Debug` never shows the key.
#[derive(Debug, Clone)]
pub struct Credential {
    pub key: Arc<crate::custody::Key>,
    /// Headers of the target's other keys, stripped too.
    pub also: Arc<[http::HeaderName]>,
}

pub struct Request {
    /// The connection, its target resolved once at accept.
    pub conn: Arc<Conn>,
    /// The policy in force when the request started.
    pub policy: Arc<Policy>,
    pub parts: Parts,
    /// The path as the server will read it (percent-decoded once), set by admit.
    pub path: String,
    /// `application/grpc`: refusals are gRPC statuses.
    pub grpc: bool,
    pub body: RequestBody,
    pub json: Option<serde_json::Value>,
    pub operation: Option<Operation>,
    /// The protocol switch the request asks for, named by admit.
    pub switch: Option<Switch>,
    /// The client's half of that switch, taken out of the request by admit.
    pub client_upgrade: Option<crate::http::Upgrade>,
    /// An allowed switch the upstream accepted: run once the response head is out.
    pub tunnel: Option<super::switch::Tunnel>,
    pub subject: Option<Subject>,
    pub decision: Option<Decision>,
    pub approval: Approval,
    pub credential: Option<Credential>,
    /// The masking rules that apply, their plans and the caller's pseudonym session (set by
    /// decide; the mask stage uses the request plan, the response filter the response one).
    pub masking: Option<super::mask::Masking>,
    /// Times the stages when metrics or the overhead header want it.
    pub clock: Clock,
    /// Add `x-sluice-overhead-us` to the response.
    pub overhead_header: bool,
    /// The opening record in the store, until it is durable: awaited before the response
    /// (or a refusal) is released (`pipeline::handle`).
    pub opened: Option<crate::audit::Opened>,
    end: RequestEnd,
}

impl Request {
    /// Opens the request: its record starts now (once the writer's queue has a place).
    pub async fn start(
        ctx: &Ctx,
        conn: &Arc<Conn>,
        req: http::Request<ClientBody>,
        in_flight: InFlight,
    ) -> Self {
        // Started before anything else: waiting for a record slot is the agent's time too.
        let clock = Clock::new(ctx.overhead_header || crate::metrics::get().is_some());
        let (parts, body) = req.into_parts();
        let record = ctx
            .recorder
            .start(
                &conn.target.name,
                conn.target.server,
                &conn.workload,
                parts.method.as_str(),
                parts.uri.path(),
            )
            .await;
        // Only a server that speaks gRPC gets gRPC-shaped refusals and an unread body; gRPC
        // to any other is refused by admit, in that server's own shape.
        let grpc = super::decode::is_grpc_content_type(&parts.headers)
            && crate::adapter::speaks_grpc(conn.target.server);
        Request {
            conn: conn.clone(),
            policy: ctx.policy.current(),
            path: parts.uri.path().to_string(),
            parts,
            grpc,
            body: RequestBody::Unread(body),
            json: None,
            operation: None,
            switch: None,
            client_upgrade: None,
            tunnel: None,
            subject: None,
            decision: None,
            approval: Approval::default(),
            credential: None,
            masking: None,
            clock,
            overhead_header: ctx.overhead_header,
            opened: None,
            end: RequestEnd {
                record,
                in_flight: Some(in_flight),
                json: None,
            },
        }
    }

    /// The record of this request.
    pub fn record(&mut self) -> &mut Guard {
        &mut self.end.record
    }

    pub fn phase(&mut self, phase: Phase) {
        self.record().set_phase(phase);
    }

    /// The stage that just ran has ended.
    pub fn lap(&mut self, stage: Stage) {
        self.clock.lap(stage);
    }

    /// Hands the end of the request (record, in-flight mark) to the response body.
    pub fn into_end(mut self) -> RequestEnd {
        self.end.json = self.json.take();
        self.end
    }
}
