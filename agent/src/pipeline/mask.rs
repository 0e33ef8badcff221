//! Mask: the request body, before it goes upstream, as the masking rules that apply to the
//! request say (`policy::masking`). Runs once the request is allowed or held for approval
//! (before the hold, so approvers see the body that will go upstream), so a denied request
//! costs no scan.
//!
//! Every outcome is recorded (`mask_request`): clean, masked with counts per detector,
//! blocked (refused, 403 in the server's dialect, naming the detector and never the value),
//! or unscanned with the reason. A body that cannot be scanned is refused unless the target
//! says `on_unscannable: pass`; an internal error counts as unscannable, so it fails closed
//! the same way. A body whose scan found values never goes on unmasked, whatever
//! `on_unscannable` says: without room for the masked copy it is refused (503). The response
//! plan and the session's vault are kept in the request context ([`Masking`]) for the
//! response filter.
use std::sync::Arc;

use bytes::Bytes;
use http::{StatusCode, header};

use super::{
    Request,
    context::{RequestBody, Subject},
};
use crate::{
    connection::Ctx,
    mask::{
        Plan, Session, Unscannable, Vault, Verdict,
        body::{Layout, mask_body},
    },
    policy::masking::{Applied, OnUnscannable},
    respond::Refusal,
};

/// What masking applies to one request, for its stages and its response.
#[derive(Debug)]
pub struct Masking {
    /// The masking rules that matched, for refusals and `explain`.
    pub rules: Vec<String>,
    pub request: Option<Plan>,
    /// The response filter's plan; `None` when no rule covers this request's response.
    pub response: Option<Plan>,
    /// The caller's pseudonym key and vault: the response filter restores from it.
    pub session: Arc<Session>,
    pub on_unscannable: OnUnscannable,
}

/// The plans for the masking rules `applied` to this request (`None` when none did).
pub fn plans(ctx: &Ctx, rq: &Request, applied: &Applied) -> Option<Masking> {
    if !applied.any() {
        return None;
    }
    let scanner = rq.policy.masking.scanner()?;
    let session = ctx.mask_sessions.get(&session_id(rq));
    let (request, response) = applied.plans(scanner, &session.key);
    Some(Masking {
        rules: applied.rules.clone(),
        request,
        response,
        session,
        on_unscannable: rq.conn.target.on_unscannable,
    })
}

/// One caller on one target: the verified token's issuer and subject, or without a token
/// the workload's uid and cgroup (a service, a container). Kept only as the session map's
/// key in memory.
fn session_id(rq: &Request) -> String {
    let target = &rq.conn.target.name;
    match &rq.subject {
        Some(Subject::Token(p, _)) => format!("{target}\0token\0{}\0{}", p.issuer, p.subject),
        _ => {
            let w = &rq.conn.workload;
            format!("{target}\0workload\0{}\0{}", w.uid, w.cgroup_id)
        }
    }
}

/// Masks the request body with the request plan, or refuses the request.
pub fn request(ctx: &Ctx, rq: &mut Request) -> Result<(), Refusal> {
    let Some(m) = rq.masking.as_ref() else {
        return Ok(());
    };
    let on_unscannable = m.on_unscannable;
    if rq.switch.is_some() {
        // The tunnel after a switch carries both directions unread.
        let reason = Unscannable::Upgrade;
        let (req, resp) = (m.request.is_some(), m.response.is_some());
        if req {
            rq.record().set_mask_request(Verdict::Unscanned { reason });
        }
        if resp {
            rq.record().set_mask_response(Verdict::Unscanned { reason });
        }
        return match on_unscannable {
            OnUnscannable::Pass => Ok(()),
            OnUnscannable::Refuse => Err(unscannable(rq, reason)),
        };
    }
    let Some(plan) = m.request.clone() else {
        return Ok(());
    };
    let session = m.session.clone();
    let verdict = match scan(ctx, rq, &plan, &session) {
        Ok(v) => v,
        // Values were found but the masked body has no room: the original must not go on,
        // whatever `on_unscannable` says (that is for bodies that could not be scanned).
        Err(Stop::NoRoom(verdict)) => {
            rq.record().set_mask_request(verdict);
            return Err(Refusal::busy(
                "sluice_busy",
                "Sluice masked this request but has no memory left to hold the masked body; retry shortly",
                1,
            ));
        }
        Err(Stop::Unscannable(reason)) => {
            rq.record().set_mask_request(Verdict::Unscanned { reason });
            return match on_unscannable {
                OnUnscannable::Pass => Ok(()),
                OnUnscannable::Refuse => Err(unscannable(rq, reason)),
            };
        }
    };
    rq.record().set_mask_request(verdict.clone());
    if let Verdict::Blocked { detector } = verdict {
        let rules = rq
            .masking
            .as_ref()
            .map(|m| m.rules.join(", "))
            .unwrap_or_default();
        return Err(Refusal {
            status: StatusCode::FORBIDDEN,
            side: crate::respond::Side::Sluice,
            code: "sluice_mask_blocked",
            message: format!(
                "blocked by Sluice masking (rules {rules}): the request carries a value the {detector} detector found, which this target does not let through"
            ),
            rule: None,
            retry_after: None,
        });
    }
    Ok(())
}

/// Why `scan` did not put a masked body in place.
enum Stop {
    /// The body could not be scanned.
    Unscannable(Unscannable),
    /// It was scanned and has findings (the verdict), but the body budget cannot hold the
    /// masked copy.
    NoRoom(Verdict),
}

impl From<Unscannable> for Stop {
    fn from(u: Unscannable) -> Self {
        Stop::Unscannable(u)
    }
}

/// Scans the body and puts the masked one in its place; `Err` is why it could not be.
fn scan(ctx: &Ctx, rq: &mut Request, plan: &Plan, session: &Session) -> Result<Verdict, Stop> {
    let Some(layout) = layout(rq)? else {
        return Ok(Verdict::Clean);
    };
    let RequestBody::Buffered { bytes, .. } = &rq.body else {
        return Err(Unscannable::Error.into());
    };
    // Pseudonyms go into a vault of the request's own first: the session's lock is taken
    // only to hand them over, never while the body is scanned.
    let mut mine = Vault::default();
    let masked = mask_body(plan, layout, bytes, Some(&mut mine))?;
    if !mine.is_empty() {
        // A poisoned vault only means another request panicked mid-record: still a map.
        let mut vault = session.vault.lock().unwrap_or_else(|e| e.into_inner());
        vault.absorb(mine);
    }
    let verdict = masked.verdict(plan);
    if let Some(new) = masked.body
        && !matches!(verdict, Verdict::Blocked { .. })
    {
        let RequestBody::Buffered { bytes, charge } = &mut rq.body else {
            return Err(Unscannable::Error.into());
        };
        // Masks may be longer than what they replace; the body budget holds both until the
        // old bytes go.
        let grown = charge.held() + new.len().saturating_sub(bytes.len());
        if ctx.body_budget.grow(charge, grown).is_err() {
            return Err(Stop::NoRoom(verdict));
        }
        *bytes = Bytes::from(new);
    }
    Ok(verdict)
}

/// How the body is laid out for masking, `None` when there is none to scan. Decided by how
/// the server reads the body (the route's body kind, as the read stage parsed it), never by
/// the client's headers alone: a JSON route's server decodes JSON whatever the
/// `Content-Type` says, so a body labelled as a form there is still masked as JSON, with its
/// `\u` escapes decoded first.
fn layout(rq: &Request) -> Result<Option<Layout>, Unscannable> {
    if rq.grpc {
        return Err(Unscannable::Grpc);
    }
    let bytes = match &rq.body {
        RequestBody::Buffered { bytes, .. } => bytes,
        RequestBody::Streaming(_) => return Err(Unscannable::Grpc),
        RequestBody::Unread(_) | RequestBody::Taken => return Err(Unscannable::Error),
    };
    let h = &rq.parts.headers;
    // Admit refuses these already; kept so this stage never depends on it. Every value is
    // looked at: a second `Content-Encoding` is one the server may apply.
    if h.get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|e| !e.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"))
    {
        return Err(Unscannable::Compressed);
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    let server = rq.conn.target.server;
    let media = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let route = crate::adapter::route(server, rq.parts.method.as_str(), &rq.path);
    match route.map(|r| r.body) {
        Some(crate::adapter::BodyKind::Json) => {
            // Triton's binary tensor extension: JSON, then raw tensor bytes.
            if server == crate::adapter::Server::Triton
                && h.contains_key("inference-header-content-length")
            {
                return Err(Unscannable::Binary);
            }
            // The read stage parsed it as JSON or refused it.
            Ok(Some(Layout::Json))
        }
        Some(crate::adapter::BodyKind::Raw) => {
            if media.starts_with("multipart/") {
                Err(Unscannable::Multipart)
            } else if media == "application/x-www-form-urlencoded" && rq.json.is_some() {
                Ok(Some(Layout::Form))
            } else if media.starts_with("text/") {
                Ok(Some(Layout::Text))
            } else {
                Err(Unscannable::Binary)
            }
        }
        // A route no adapter knows: the server's reading is unknown, so a body that parses
        // as JSON is masked as JSON (escapes decoded) whatever it is labelled.
        None => {
            if rq.json.is_some() || serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
                Ok(Some(Layout::Json))
            } else if media.starts_with("multipart/") {
                Err(Unscannable::Multipart)
            } else if media == "application/x-www-form-urlencoded" {
                Ok(Some(Layout::Form))
            } else if media.starts_with("text/") {
                Ok(Some(Layout::Text))
            } else {
                Err(Unscannable::Binary)
            }
        }
    }
}

fn unscannable(rq: &Request, reason: Unscannable) -> Refusal {
    let (status, code) = match reason {
        Unscannable::Error => (StatusCode::INTERNAL_SERVER_ERROR, "sluice_mask_error"),
        Unscannable::Upgrade => (StatusCode::FORBIDDEN, "sluice_unscannable"),
        _ => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "sluice_unscannable"),
    };
    let why = match reason {
        Unscannable::Error => "masking failed".to_string(),
        r => format!("its body is {} and cannot be scanned", what(r)),
    };
    Refusal {
        status,
        side: crate::respond::Side::Sluice,
        code,
        message: format!(
            "Sluice refused the request: a masking rule applies to it but {why}; target {} refuses what it cannot scan (on_unscannable: refuse)",
            rq.conn.target.name
        ),
        rule: None,
        retry_after: None,
    }
}

fn what(r: Unscannable) -> &'static str {
    match r {
        Unscannable::Compressed => "compressed",
        Unscannable::Binary => "binary (not JSON, a form or text)",
        Unscannable::Multipart => "multipart",
        Unscannable::OverLimit => "over the scan limit",
        Unscannable::Grpc => "gRPC",
        Unscannable::Upgrade => "a protocol switch's stream",
        Unscannable::Error => "not scannable",
    }
}

/// The response direction, at the response head: the filter that masks the body by the
/// response plan (`filter::ResponseMask`: SSE and NDJSON events, JSON strings, text), with
/// the pseudonyms issued to this caller restored from its session's vault. The record takes
/// the filter's verdict when it is finished. A body the filter cannot scan (compressed,
/// binary, multipart, gRPC) is refused under `on_unscannable: refuse` and passed, recorded
/// unscanned with the reason, under `pass`: never passed as if it had been scanned.
pub fn response(
    rq: &mut Request,
    headers: &http::HeaderMap,
) -> Result<Option<crate::filter::ResponseMask>, Refusal> {
    let Some(m) = rq.masking.as_ref() else {
        return Ok(None);
    };
    let Some(plan) = m.response.clone() else {
        return Ok(None);
    };
    let on_unscannable = m.on_unscannable;
    let session = m.session.clone();
    // Restored values are looked up under the vault's lock one token at a time, never while
    // a body is scanned.
    let lookup: crate::mask::Lookup = Arc::new(move |token: &str| {
        let vault = session.vault.lock().ok()?;
        let value = vault.get(token.as_bytes())?;
        Some(zeroize::Zeroizing::new(
            String::from_utf8_lossy(value).into_owned(),
        ))
    });
    let server = rq.conn.target.server;
    match crate::filter::ResponseMask::from_headers(plan, server, headers, Some(lookup)) {
        Ok(filter) => {
            rq.record().watch_mask_response(filter.handle());
            Ok(Some(filter))
        }
        Err(reason) => {
            rq.record().set_mask_response(Verdict::Unscanned { reason });
            match on_unscannable {
                OnUnscannable::Pass => Ok(None),
                OnUnscannable::Refuse => Err(Refusal::upstream(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "the upstream's response is {} and a masking rule covers it; target {} refuses what it cannot scan (on_unscannable: refuse)",
                        what(reason),
                        rq.conn.target.name
                    ),
                )),
            }
        }
    }
}
