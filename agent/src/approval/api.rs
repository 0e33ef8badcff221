//! What the approvals endpoint answers: who the bearer is (their token, checked by the same
//! verifier as requests' tokens, for the endpoint's own audience), then list, approve or
//! deny as them through the one decision path the sockets use. JSON in and out; a refusal is
//! `{"error": {"code", "message"}}` with its status, and never repeats the token.
//!
//! - `GET /v1/approvals`: the pending approvals this bearer may decide.
//! - `POST /v1/approvals/{id}/approve`, body `{}` or `{"for": "30m"}` (a grant window).
//! - `POST /v1/approvals/{id}/deny`, body `{"reason": "..."}`.
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header, request::Parts};
use http_body_util::Full;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Approvals,
    approver::{Approver, NotAllowed},
    store::{Decide, DecideError},
};
use crate::identity::{Identity, Rejection};

/// Where the endpoint's resources are.
pub const PREFIX: &str = "/v1/approvals";

/// What answering needs: the approvals, and the verifier of approvers' tokens.
pub struct Api {
    pub approvals: Arc<Approvals>,
    pub identity: Arc<Identity>,
}

/// A refusal, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

fn fail(status: StatusCode, code: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        status,
        code,
        message: message.into(),
    }
}

enum Route<'a> {
    List,
    Approve(&'a str),
    Deny(&'a str),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    /// The grant window: `"30m"` as the CLI's `--for` writes it, or seconds.
    #[serde(rename = "for", default)]
    window: Option<Window>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Window {
    Secs(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyBody {
    reason: String,
}

/// The answer to one request whose body (at most the endpoint's bound) has been read.
pub async fn answer(api: &Api, parts: &Parts, body: &[u8]) -> Response<Full<Bytes>> {
    match run(api, parts, body).await {
        Ok(v) => respond(StatusCode::OK, &v),
        Err(f) => failure(&f),
    }
}

async fn run(api: &Api, parts: &Parts, body: &[u8]) -> Result<Value, Failure> {
    // Who asks comes first: without a valid token nothing else is said.
    let who = authenticate(&api.identity, parts).await?;
    match route(&parts.method, parts.uri.path())? {
        Route::List => Ok(json!({
            "approver": who.name(),
            "pending": api.approvals.store.pending_for(&who),
        })),
        Route::Approve(id) => {
            let b: ApproveBody = parse(body)?;
            let for_secs = match b.window {
                None => None,
                Some(Window::Secs(s)) => Some(s),
                Some(Window::Text(t)) => Some(
                    crate::policy::approval::parse_window(&t)
                        .map_err(|m| fail(StatusCode::BAD_REQUEST, "bad_request", m))?
                        .as_secs(),
                ),
            };
            decide(&api.approvals, id, &who, Decide::Approve { for_secs })
        }
        Route::Deny(id) => {
            let b: DenyBody = parse(body)?;
            decide(&api.approvals, id, &who, Decide::Deny { reason: b.reason })
        }
    }
}

/// The bearer's token, checked by the endpoint's verifier: the approver it names.
async fn authenticate(identity: &Identity, parts: &Parts) -> Result<Approver, Failure> {
    match identity.authenticate(parts).await {
        Ok(Some((p, _))) => Ok(Approver::from_token(&p)),
        Ok(None) => Err(fail(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "this endpoint needs `Authorization: Bearer <token>`, a JWT from an issuer in identity.issuers for the approvals audience; the request has none",
        )),
        // The issuer could not be asked: not the caller's fault, and worth a retry.
        Err(Rejection::KeysUnavailable) => Err(fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "keys_unavailable",
            Rejection::KeysUnavailable.to_string(),
        )),
        Err(r) => Err(fail(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            r.to_string(),
        )),
    }
}

fn route<'a>(method: &Method, path: &'a str) -> Result<Route<'a>, Failure> {
    let not_found = || {
        fail(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "this endpoint serves GET {PREFIX}, POST {PREFIX}/ID/approve and POST {PREFIX}/ID/deny"
            ),
        )
    };
    let wrong = |allowed: &str| {
        fail(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{allowed} only"),
        )
    };
    let rest = path.strip_prefix(PREFIX).ok_or_else(not_found)?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return match *method {
            Method::GET => Ok(Route::List),
            _ => Err(wrong("GET")),
        };
    }
    let (id, verb) = rest
        .strip_prefix('/')
        .and_then(|r| r.split_once('/'))
        .ok_or_else(not_found)?;
    let r = match verb {
        "approve" => Route::Approve(id),
        "deny" => Route::Deny(id),
        _ => return Err(not_found()),
    };
    match *method {
        Method::POST => Ok(r),
        _ => Err(wrong("POST")),
    }
}

/// A JSON body; an empty one is `{}` (an approval without a window).
fn parse<T: for<'de> Deserialize<'de> + Default>(body: &[u8]) -> Result<T, Failure> {
    if body.trim_ascii().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        fail(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body is not the JSON this endpoint takes: {e}"),
        )
    })
}

impl Default for DenyBody {
    /// No reason: refused by the decision itself (`a deny needs a reason`).
    fn default() -> Self {
        DenyBody {
            reason: String::new(),
        }
    }
}

fn decide(approvals: &Approvals, id: &str, who: &Approver, d: Decide) -> Result<Value, Failure> {
    match approvals.decide(id, who, d) {
        Ok((decided, approval)) => Ok(json!({
            "approver": who.name(),
            "decided": decided,
            "approval": approval,
        })),
        Err(e) => Err(refused(&e)),
    }
}

/// A refused decision's status: who may not (403), what is not there (404), what is over
/// (409), what was asked wrongly (400).
fn refused(e: &DecideError) -> Failure {
    let (status, code) = match e {
        DecideError::Malformed(_) | DecideError::Unknown(_) => {
            (StatusCode::NOT_FOUND, "unknown_approval")
        }
        DecideError::Finished { .. } => (StatusCode::CONFLICT, "already_decided"),
        DecideError::NotAllowed(NotAllowed::Own { .. }) => (StatusCode::FORBIDDEN, "own_request"),
        DecideError::NotAllowed(NotAllowed::NotApprover { .. }) => {
            (StatusCode::FORBIDDEN, "not_an_approver")
        }
        DecideError::NotAllowed(NotAllowed::Again { .. }) => {
            (StatusCode::CONFLICT, "already_approved")
        }
        DecideError::NoGrant { .. } | DecideError::GrantTooLong { .. } => {
            (StatusCode::BAD_REQUEST, "bad_grant")
        }
        DecideError::NoReason => (StatusCode::BAD_REQUEST, "reason_required"),
    };
    fail(status, code, e.to_string())
}

/// A refusal as JSON; a 401 also says how to authenticate (RFC 6750).
pub fn failure(f: &Failure) -> Response<Full<Bytes>> {
    let mut r = respond(
        f.status,
        &json!({ "error": { "code": f.code, "message": f.message } }),
    );
    if f.status == StatusCode::UNAUTHORIZED {
        let v = match f.code {
            "invalid_token" => "Bearer error=\"invalid_token\"",
            _ => "Bearer",
        };
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(v));
    }
    r
}

fn respond(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Listings name requesters and show excerpts: no cache keeps them.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
pub(crate) mod tests;
