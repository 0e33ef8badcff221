//! The stages one HTTP request goes through, in order. Each stage is one call; a stage that
//! ends the request returns a `Refusal`, which `respond` renders in the server's dialect.
//!
//! | stage | may change | can end the request |
//! |---|---|---|
//! | admit: path, encoding, declared size | — | 400, 413, 415 |
//! | read: body up to the limit (not gRPC, which streams) | — | 400, 413 |
//! | classify: adapter → operation | — | no |
//! | decide: policy snapshot → Permit or Denial | — | 403 |
//! | send: upstream with the Permit | URI, hop-by-hop headers | 502 |
//! | record: one log line when the response body ends (`record.rs`) | — | no |
//!
//! The policy snapshot is taken when the request starts, so a reload never changes the
//! decision of a request in flight.
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header, request::Parts};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use record::{Record, Recorded};

use crate::{
    adapter::{self, Server},
    connection::{Conn, Ctx},
    policy::{Decision, Permit, Query},
    respond::{self, Body, Refusal},
    upstream::http::strip_hop_by_hop,
};

pub mod decode;
mod record;

enum ReqBody {
    Buffered(Bytes),
    Streaming(Incoming),
}

pub async fn handle(ctx: &Ctx, conn: &Conn, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let Some(target) = ctx.targets.get(conn.target_id as usize) else {
        return respond::render(
            Default::default(),
            false,
            &Refusal::client(
                StatusCode::INTERNAL_SERVER_ERROR,
                "sluice_internal",
                "unknown target",
            ),
        );
    };
    let server = target.server;
    // Only a server that speaks gRPC gets a gRPC body streamed past the read; any other
    // refuses it in `admit`.
    let grpc = is_grpc(req.headers()) && adapter::speaks_grpc(server);
    let policy = ctx.policy.current();
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_string();
    let path = parts.uri.path().to_string();

    let outcome = async {
        // Classification and policy see the decoded path; the request goes on as sent.
        let decoded = admit(&parts, server, ctx.max_request_body)?;
        let (body, json) = read(
            body,
            grpc,
            (server, &method, &decoded),
            &parts.headers,
            ctx.max_request_body,
        )
        .await?;
        let (op, decision) = policy.decide(&Query {
            target: &target.name,
            server,
            method: &method,
            path: &decoded,
            body: json.as_ref(),
            default: target.default,
            workload: Some(&conn.workload),
        });
        Ok::<_, Refusal>((op, decision, body))
    }
    .await;

    let (response, op, decision) = match outcome {
        Err(refusal) => (respond::render(server, grpc, &refusal), None, None),
        Ok((op, Decision::Deny(d), _)) => {
            let r = Refusal::policy(d.rule.clone(), &d.reason);
            (
                respond::render(server, grpc, &r),
                Some(op),
                Some(Decision::Deny(d)),
            )
        }
        Ok((op, Decision::Permit(p), body)) => {
            let resp = match send(ctx, conn, &p, parts, body, grpc).await {
                Ok(r) => r,
                Err(r) => respond::render(server, grpc, &r),
            };
            (resp, Some(op), Some(Decision::Permit(p)))
        }
    };
    ctx.table
        .count_request(decision.as_ref().map_or("refuse", Decision::label));
    let rec = Record::new(
        conn,
        &method,
        &path,
        op,
        decision,
        response.status(),
        started,
    );
    response.map(|body| Recorded::wrap(body, rec).boxed())
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Rejects what could make Sluice and the server disagree about what a request is; returns
/// the decoded path (`decode::request_target`).
fn admit(parts: &Parts, server: Server, max_body: usize) -> Result<String, Refusal> {
    let path = decode::request_target(server, parts.method.as_str(), &parts.uri)?;
    if !adapter::speaks_grpc(server) && decode::is_grpc_content_type(&parts.headers) {
        return Err(Refusal::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "sluice_grpc_unsupported",
            format!("this target's server ({server}) does not speak gRPC"),
        ));
    }
    if let Some(enc) = parts.headers.get(header::CONTENT_ENCODING)
        && !enc.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(Refusal::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "sluice_encoded_body",
            "compressed request bodies are not accepted: Sluice must read the request to apply policy",
        ));
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return Err(too_large(max_body));
    }
    Ok(path)
}

fn too_large(max: usize) -> Refusal {
    Refusal::client(
        StatusCode::PAYLOAD_TOO_LARGE,
        "sluice_body_too_large",
        format!("request body is larger than the {max} bytes Sluice inspects"),
    )
}

/// Buffers the body (bounded) so the adapter can read the model; gRPC streams untouched.
async fn read(
    body: Incoming,
    grpc: bool,
    (server, method, path): (Server, &str, &str),
    headers: &HeaderMap,
    max: usize,
) -> Result<(ReqBody, Option<serde_json::Value>), Refusal> {
    if grpc {
        return Ok((ReqBody::Streaming(body), None));
    }
    let bytes = match Limited::new(body, max).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large(max)),
        Err(e) => {
            return Err(Refusal::client(
                StatusCode::BAD_REQUEST,
                "sluice_bad_body",
                format!("could not read the request body: {e}"),
            ));
        }
    };
    let json = decode::body(server, method, path, headers, &bytes)?;
    Ok((ReqBody::Buffered(bytes), json))
}

/// Sends a permitted request upstream, trying the target's backends in order. Only
/// connection failures are retried, and only for buffered bodies, since nothing was sent.
async fn send(
    ctx: &Ctx,
    conn: &Conn,
    permit: &Permit,
    parts: Parts,
    body: ReqBody,
    grpc: bool,
) -> Result<Response<Body>, Refusal> {
    let order = ctx.upstreams.order(conn.target_id);
    let candidates: Vec<(Option<usize>, String)> = if order.is_empty() {
        vec![(None, conn.orig.to_string())]
    } else {
        order
            .iter()
            .map(|(i, ep)| (Some(*i), ep.to_string()))
            .collect()
    };
    let mut body = Some(body);
    let mut last = String::new();
    for (i, auth) in candidates {
        let mut parts = parts.clone();
        let b: Body = match body.take() {
            Some(ReqBody::Buffered(bytes)) => {
                // The body is re-framed with the length Sluice actually read: a client's
                // conflicting Content-Length / Transfer-Encoding never reaches the server
                // (no request smuggling through the agent).
                parts.headers.remove(header::TRANSFER_ENCODING);
                if bytes.is_empty() && !parts.headers.contains_key(header::CONTENT_LENGTH) {
                    // A bodyless request stays bodyless.
                } else {
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, http::HeaderValue::from(bytes.len()));
                }
                body = Some(ReqBody::Buffered(bytes.clone()));
                respond::full(bytes)
            }
            Some(ReqBody::Streaming(inc)) => inc.boxed(),
            None => break,
        };
        let req = Request::from_parts(parts, b);
        match ctx.http.send(permit, &auth, req, grpc).await {
            Ok(resp) => {
                if let Some(i) = i {
                    ctx.upstreams.report(conn.target_id, i, true);
                }
                let (mut rparts, rbody) = resp.into_parts();
                strip_hop_by_hop(&mut rparts.headers, true);
                return Ok(Response::from_parts(rparts, rbody.boxed()));
            }
            Err(e) if e.is_connect() => {
                if let Some(i) = i {
                    ctx.upstreams.report(conn.target_id, i, false);
                }
                tracing::warn!(target_name = %conn.target, upstream = %auth, error = %e, "upstream failed; skipping it for a while");
                last = format!("{auth}: {e}");
            }
            Err(e) => {
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
            conn.target
        ),
    ))
}
