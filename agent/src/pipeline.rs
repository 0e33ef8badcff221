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
    connection::{Conn, Ctx},
    policy::{Decision, Permit, Query},
    respond::{self, Body, Refusal},
    upstream::http::strip_hop_by_hop,
};

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
    let grpc = is_grpc(req.headers());
    let policy = ctx.policy.current();
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_string();
    let path = parts.uri.path().to_string();

    let outcome = async {
        admit(&parts, ctx.max_request_body)?;
        let (body, json) = read(body, grpc, &parts.headers, ctx.max_request_body).await?;
        let (op, decision) = policy.decide(&Query {
            target: &target.name,
            server,
            method: &method,
            path: &path,
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

/// Rejects what could make Sluice and the server disagree about what a request is.
fn admit(parts: &Parts, max_body: usize) -> Result<(), Refusal> {
    let raw = parts.uri.path();
    let lower = raw.to_ascii_lowercase();
    // Encoded slashes and dots, dot segments and empty segments are spellings a server may
    // normalise differently from Sluice (e.g. FastAPI's slash redirects): refuse them.
    if lower.contains("%2f")
        || lower.contains("%2e")
        || lower.contains("%5c")
        || raw.contains("//")
        || raw.split('/').any(|s| s == ".." || s == ".")
    {
        return Err(Refusal::client(
            StatusCode::BAD_REQUEST,
            "sluice_bad_path",
            format!("request path {raw:?} is not in normal form"),
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
    Ok(())
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
    if bytes.is_empty() {
        return Ok((ReqBody::Buffered(bytes), None));
    }
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ctype.starts_with("multipart/") || ctype.starts_with("application/octet-stream") {
        return Ok((ReqBody::Buffered(bytes), None));
    }
    // A body Sluice cannot parse could still be parsed leniently by the server: refuse it
    // rather than decide without seeing the model. Likewise a top-level key given twice:
    // parsers disagree on which copy wins, so `"model"` could say one thing to Sluice and
    // another to the server.
    match parse_json(&bytes) {
        Ok((v, None)) => Ok((ReqBody::Buffered(bytes), Some(v))),
        Ok((_, Some(key))) => Err(Refusal::client(
            StatusCode::BAD_REQUEST,
            "sluice_ambiguous_json",
            format!("request body gives the key {key:?} more than once"),
        )),
        Err(e) => Err(Refusal::client(
            StatusCode::BAD_REQUEST,
            "sluice_bad_json",
            format!("request body is not valid JSON: {e}"),
        )),
    }
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

/// Parses a JSON body in one pass, also returning the first top-level key given twice.
fn parse_json(bytes: &[u8]) -> Result<(serde_json::Value, Option<String>), serde_json::Error> {
    use serde::de::{Deserializer as _, MapAccess, Visitor};

    struct Object;
    impl<'de> Visitor<'de> for Object {
        type Value = (serde_json::Map<String, serde_json::Value>, Option<String>);
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = serde_json::Map::new();
            let mut dup = None;
            while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                if let Some(_earlier) = out.insert(k.clone(), v)
                    && dup.is_none()
                {
                    dup = Some(k);
                }
            }
            Ok((out, dup))
        }
    }
    let is_object = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    if !is_object {
        return serde_json::from_slice(bytes).map(|v| (v, None));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let (map, dup) = de.deserialize_map(Object)?;
    de.end()?;
    Ok((serde_json::Value::Object(map), dup))
}

#[cfg(test)]
mod tests {
    use super::parse_json;

    fn duplicate_top_level_key(bytes: &[u8]) -> Option<String> {
        parse_json(bytes).ok().and_then(|(_, dup)| dup)
    }

    #[test]
    fn parses_objects_and_other_values_and_rejects_trailing_data() {
        let (v, dup) = parse_json(br#" {"model":"a","n":[1,2]} "#).expect("valid");
        assert_eq!((v["model"].as_str(), dup), (Some("a"), None));
        assert_eq!(parse_json(b"[1,2]").expect("array").0[1], 2);
        assert!(parse_json(br#"{"model":"a"} x"#).is_err());
        assert!(parse_json(br#"{"model":"a""#).is_err());
    }

    #[test]
    fn finds_duplicate_top_level_keys_only() {
        assert_eq!(
            duplicate_top_level_key(br#"{"model":"a","x":1,"model":"b"}"#),
            Some("model".into())
        );
        assert_eq!(
            duplicate_top_level_key(br#"{"model":"a","m":{"k":1,"k":2}}"#),
            None
        );
        assert_eq!(duplicate_top_level_key(br#"[{"a":1,"a":2}]"#), None);
        assert_eq!(duplicate_top_level_key(br#"{"model":"a"}"#), None);
        assert_eq!(
            duplicate_top_level_key(br#"{"model":"test-model","model":"gpt-4o","messages":[]}"#),
            Some("model".into())
        );
        assert_eq!(duplicate_top_level_key(b"not json"), None);
    }
}
