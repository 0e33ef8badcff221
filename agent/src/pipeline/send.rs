//! Prepare and send: the permitted request as the upstream gets it, then the upstream's
//! response head. Only connection failures are retried on the next backend, and only for
//! buffered bodies, since nothing was sent. An upstream that takes the request and sends no
//! head within `upstream_head_timeout_ms` gets 504: it may have acted on the request, so it
//! is never sent again.

use super::{Request, context::RequestBody};
use crate::{
    connection::{Conn, Ctx},
    http::ClientBody,
    limits::BodyCharge,
    policy::{Permit, Switch},
    respond::{Body, BodyError, Refusal},
    upstream::Payload,
};
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header, request::Parts};
use http_body_util::BodyExt as _;

/// A request ready for the upstream. Only `prepare` makes one, and it takes a `Permit`:
/// nothing reaches a server that the policy did not allow.
pub struct Forward {
    /// The allow rules the request goes out under.
    pub permit: Permit,
    parts: Parts,
    body: Outgoing,
    grpc: bool,
    /// The protocol switch the policy allowed, if the request asks for one.
    switch: Option<Switch>,
}

enum Outgoing {
    /// Kept (and charged to the budget) until the response head arrives, for retries.
    Buffered {
        bytes: Bytes,
        _charge: BodyCharge,
    },
    Streaming(ClientBody),
}

/// Builds the upstream request: the client's own framing never reaches the server (the body
/// is re-framed with the length Sluice read: no request smuggling through the agent),
/// compressed responses are not asked for when a filter may change the body, and a target
/// whose key Sluice holds gets that key in place of every credential the client sent.
pub fn prepare(rq: &mut Request, permit: Permit) -> Forward {
    // The parts themselves go upstream (no stage after this one reads them): a header map
    // clone is a dozen allocations per request.
    let mut parts = std::mem::replace(&mut rq.parts, http::Request::new(()).into_parts().0);
    if let Some(c) = &rq.credential {
        c.key.apply(&mut parts, &c.also);
    } else if let Some(super::Subject::Token(_, carried)) = &rq.subject {
        carried.strip(&mut parts.headers);
    }
    // A compressed echo of the key, or a compressed response a masking rule covers, could
    // not be masked.
    let masks_response = rq.masking.as_ref().is_some_and(|m| m.response.is_some());
    if rq.conn.filters().may_change_body() || rq.credential.is_some() || masks_response {
        parts.headers.remove(header::ACCEPT_ENCODING);
    }
    let body = match std::mem::replace(&mut rq.body, RequestBody::Taken) {
        RequestBody::Buffered { bytes, charge } => {
            parts.headers.remove(header::TRANSFER_ENCODING);
            // gRPC frames its own messages; HTTP/2 needs no declared length.
            if !rq.grpc && (!bytes.is_empty() || parts.headers.contains_key(header::CONTENT_LENGTH))
            {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            }
            Outgoing::Buffered {
                bytes,
                _charge: charge,
            }
        }
        RequestBody::Streaming(b) | RequestBody::Unread(b) => Outgoing::Streaming(b),
        RequestBody::Taken => Outgoing::Buffered {
            bytes: Bytes::new(),
            _charge: BodyCharge::default(),
        },
    };
    Forward {
        permit,
        parts,
        body,
        grpc: rq.grpc,
        switch: rq.switch,
    }
}

/// The upstream's answer: most through Sluice's own HTTP/1.1 client or gRPC's; a request
/// that asked for a protocol switch went on hyper's client, whose response carries the
/// upgrade in its extensions.
pub enum Upstream {
    Plain(Response<Body>),
    Switched(Response<Body>),
}

/// Sends to the target's backends in order (or to the address the client dialled).
pub async fn send(ctx: &Ctx, conn: &Conn, fwd: Forward) -> Result<Upstream, Refusal> {
    let tls = ctx.upstreams.tls(conn.target_id).map(|t| &**t);
    let mut candidates = ctx.upstreams.order_authorities(conn.target_id);
    if candidates.is_empty() {
        candidates.push((None, conn.orig_authority.clone()));
    }
    let Forward {
        permit,
        parts,
        body,
        grpc,
        switch,
    } = fwd;
    // The charge is held until the response head is in: the bytes live until then.
    let (buffered, mut streaming, _charge) = match body {
        Outgoing::Buffered { bytes, _charge } => (Some(bytes), None, Some(_charge)),
        Outgoing::Streaming(b) => (None, Some(b), None),
    };
    let mut last = String::new();
    let (mut parts, tries) = (Some(parts), candidates.len());
    for (n, (i, auth)) in candidates.into_iter().enumerate() {
        let b = match (&buffered, streaming.take()) {
            (Some(bytes), _) => Payload::Full(bytes.clone()),
            (None, Some(inc)) => Payload::Stream(inc.map_err(BodyError::from).boxed()),
            // A streamed body went to a backend that failed: it cannot be sent again.
            (None, None) => break,
        };
        // Only a backend that may be followed by another needs a copy of the head (a
        // streamed body cannot be sent twice, so it never is).
        let head = if n + 1 < tries && buffered.is_some() {
            parts.clone()
        } else {
            parts.take()
        };
        let Some(head) = head else { break };
        let req = http::Request::from_parts(head, b);
        let sent = match switch {
            // Boxed, as rare and large (hyper's client): the common path's future stays small.
            Some(s) => Box::pin(ctx.http.switch(
                &auth,
                conn.netns.as_ref(),
                tls,
                req.map(Payload::into_body),
                s,
            ))
            .await
            .map(Upstream::Switched),
            None => ctx
                .http
                .send(&auth, conn.netns.as_ref(), tls, req, grpc)
                .await
                .map(Upstream::Plain),
        };
        match sent {
            Ok(resp) => {
                if let Some(i) = i {
                    ctx.upstreams.report(conn.target_id, i, true);
                }
                return Ok(resp);
            }
            Err(e) if e.is_connect() => {
                if let Some(i) = i {
                    ctx.upstreams.report(conn.target_id, i, false);
                }
                tracing::warn!(target_name = %conn.target.name, upstream = %auth, rules = ?permit.rules, error = %e, "upstream failed; skipping it for a while");
                // A TLS failure names the upstream itself, with the target, name and why.
                last = if e.is_tls() {
                    e.to_string()
                } else {
                    format!("{auth}: {e}")
                };
            }
            Err(e) if e.is_timeout() => {
                tracing::warn!(target_name = %conn.target.name, upstream = %auth, rules = ?permit.rules, error = %e, "upstream sent no response head in time");
                return Err(Refusal::upstream_timeout(format!(
                    "target {}: {e}",
                    conn.target.name
                )));
            }
            Err(e) => {
                tracing::warn!(target_name = %conn.target.name, upstream = %auth, rules = ?permit.rules, error = %e, "upstream request failed");
                return Err(Refusal::upstream(
                    StatusCode::BAD_GATEWAY,
                    format!("upstream {auth} failed: {e}"),
                ));
            }
        }
    }
    Err(Refusal::upstream(
        StatusCode::BAD_GATEWAY,
        format!(
            "no upstream of target {} is reachable ({last})",
            conn.target.name
        ),
    ))
}
