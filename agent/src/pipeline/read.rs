//! Read: buffer the request body, because the model and the options policy decides on are
//! in it. Bounded three ways: its size (413), a deadline for the whole body (408), and the
//! agent-wide memory budget for buffered bodies (503 with Retry-After, never an abort).
use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body_util::BodyExt as _;

use super::{Request, context::RequestBody};
use crate::{
    connection::Ctx,
    record::{Outcome, Phase},
    respond::Refusal,
};

pub async fn read(rq: &mut Request, ctx: &Ctx) -> Result<(), Refusal> {
    let body = match std::mem::replace(&mut rq.body, RequestBody::Taken) {
        RequestBody::Unread(b) => b,
        other => {
            rq.body = other;
            return Ok(());
        }
    };
    if rq.grpc && streams(rq) {
        // A streaming call (Triton's ModelStreamInfer) goes through unread: its messages
        // come and go while it runs. Only targets that speak gRPC get here (admit).
        rq.body = RequestBody::Streaming(body);
        return Ok(());
    }
    let max = ctx.max_request_body;
    let declared = super::declared_length(&rq.parts.headers)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n <= max);
    let mut charge = ctx.body_budget.charge(rq.conn.workload.cgroup_id);
    let busy = |e: crate::limits::OverBudget| {
        Refusal::busy(
            "sluice_busy",
            format!("Sluice is buffering too many request bodies right now ({e}); retry shortly"),
            1,
        )
    };
    if let Some(n) = declared {
        ctx.body_budget.grow(&mut charge, n).map_err(busy)?;
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0));
    let mut body = body;
    let deadline = tokio::time::Instant::now() + ctx.timeouts.body;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(Refusal::client(
                    StatusCode::REQUEST_TIMEOUT,
                    "sluice_body_timeout",
                    format!(
                        "the request body did not arrive within {} ms",
                        ctx.timeouts.body.as_millis()
                    ),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                if e.client_gone() {
                    // The client closed before its body was whole: it is gone, and the
                    // refusal below will reach no one.
                    rq.record().finish(Outcome::ClientGone(Phase::Upload));
                }
                return Err(Refusal::client(
                    StatusCode::BAD_REQUEST,
                    "sluice_bad_body",
                    format!("could not read the request body: {e}"),
                ));
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue; // request trailers carry nothing policy reads
        };
        let len = buf.len() + data.len();
        if len > max {
            return Err(too_large(max));
        }
        ctx.body_budget.grow(&mut charge, len).map_err(busy)?;
        buf.extend_from_slice(&data);
    }
    let bytes: Bytes = buf.freeze();
    // The parsed tree is in memory beside the bytes: it is charged to the budget as it
    // grows. One body's tree may take at most as much again as the largest body, and never
    // more than its cgroup's share leaves beside its bytes: a body that could never fit is
    // refused as too dense (413), not sent to retry for ever (503).
    let tree_cap = max.min(ctx.body_budget.per_cgroup().saturating_sub(bytes.len()));
    let charge = std::cell::RefCell::new(charge);
    let grow = |tree: usize| {
        if tree > tree_cap {
            return Err(too_dense(tree_cap));
        }
        ctx.body_budget
            .grow(&mut charge.borrow_mut(), bytes.len() + tree)
            .map_err(busy)
    };
    rq.json = json(rq, &bytes, &grow)?;
    rq.record().set_request_bytes(bytes.len());
    rq.body = RequestBody::Buffered {
        bytes,
        charge: charge.into_inner(),
    };
    Ok(())
}

fn too_dense(max: usize) -> Refusal {
    Refusal::client(
        StatusCode::PAYLOAD_TOO_LARGE,
        "sluice_body_too_dense",
        format!(
            "request body holds more JSON values than Sluice inspects (their parsed form would take over {max} bytes)"
        ),
    )
}

pub fn too_large(max: usize) -> Refusal {
    Refusal::client(
        StatusCode::PAYLOAD_TOO_LARGE,
        "sluice_body_too_large",
        format!("request body is larger than the {max} bytes Sluice inspects"),
    )
}

/// Whether a gRPC call streams: its route says so, or no route knows it (unknown routes are
/// denied anyway, and a stream must not be waited for whole).
fn streams(rq: &Request) -> bool {
    crate::adapter::route(rq.conn.target.server, rq.parts.method.as_str(), &rq.path)
        .is_none_or(|r| matches!(r.stream, crate::adapter::StreamFrom::Always))
}

/// The body's JSON, read the way the target's server reads it (`decode::body`); for a unary
/// gRPC call, its message's string fields by number (`grpc.rs`).
fn json(
    rq: &Request,
    bytes: &[u8],
    grow: &dyn Fn(usize) -> Result<(), Refusal>,
) -> Result<Option<serde_json::Value>, Refusal> {
    if rq.grpc {
        return super::grpc::message_strings(bytes).map(Some);
    }
    super::decode::body_metered(
        rq.conn.target.server,
        rq.parts.method.as_str(),
        &rq.path,
        &rq.parts.headers,
        bytes,
        &rq.policy.body_roots,
        grow,
    )
}
