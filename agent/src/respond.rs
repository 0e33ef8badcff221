//! The one place where refusals and errors become HTTP responses, in the dialect of the
//! server the client thinks it is talking to, so an unmodified SDK shows a readable error.
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use serde_json::json;

use crate::{adapter::Server, filter::Framing};

/// Every response body Sluice sends: the upstream's (through the filter chain) or its own.
pub type Body = BoxBody<Bytes, BodyError>;

/// Why a response body ended early: the upstream failed, or Sluice ended it on purpose (a
/// response filter, a limit). Either way the client sees a truncated transfer, never a
/// clean end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream: {0}")]
    Upstream(#[from] hyper::Error),
    /// From the pooled HTTP/1.1 client; the message names the upstream.
    #[error("{0}")]
    UpstreamH1(#[from] crate::upstream::BodyFailure),
    /// A streamed request body, read from the client while the response came back.
    #[error("client: {0}")]
    Client(#[from] crate::http::body::ClientBodyError),
    /// The upstream went silent mid-body for `upstream_idle_timeout_ms`.
    #[error("{0}")]
    UpstreamSilent(#[from] crate::upstream::Silent),
    #[error("ended by Sluice: {0}")]
    Sluice(String),
}

impl BodyError {
    /// How the request's record ends when its response body fails with this error.
    pub fn outcome(&self) -> crate::record::Outcome {
        match self {
            BodyError::UpstreamSilent(s) => crate::record::Outcome::UpstreamTimeout(s.to_string()),
            _ => crate::record::Outcome::UpstreamError,
        }
    }
}

/// The refusal code of an upstream that sent no response head in time (504).
pub const UPSTREAM_TIMEOUT: &str = "sluice_upstream_timeout";

/// Who caused an error: the client (4xx), the upstream (502/504), or Sluice itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Sluice,
}

/// A refusal or failure to turn into a response.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub side: Side,
    /// Machine-readable code, e.g. `sluice_policy_denied`.
    pub code: &'static str,
    pub message: String,
    pub rule: Option<String>,
    /// Seconds after which a retry may succeed (503 when Sluice is over a budget).
    pub retry_after: Option<u32>,
}

impl Refusal {
    pub fn client(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status,
            side: Side::Client,
            code,
            message: message.into(),
            rule: None,
            retry_after: None,
        }
    }

    /// Sluice is over one of its budgets: 503 with `Retry-After`, never a dropped connection.
    pub fn busy(code: &'static str, message: impl Into<String>, retry_after: u32) -> Self {
        Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            side: Side::Sluice,
            code,
            message: message.into(),
            rule: None,
            retry_after: Some(retry_after),
        }
    }

    pub fn upstream(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            side: Side::Upstream,
            code: "sluice_upstream_error",
            message: message.into(),
            rule: None,
            retry_after: None,
        }
    }

    /// The upstream took the request and sent no response head within
    /// `upstream_head_timeout_ms`: 504, the message naming the upstream and the time.
    pub fn upstream_timeout(message: impl Into<String>) -> Self {
        Refusal {
            status: StatusCode::GATEWAY_TIMEOUT,
            code: UPSTREAM_TIMEOUT,
            ..Refusal::upstream(StatusCode::GATEWAY_TIMEOUT, message)
        }
    }

    /// A credential that did not verify, or none where the target requires one. The message
    /// is the rejection's fixed text: it never repeats the token.
    pub fn unauthenticated(why: crate::identity::Rejection) -> Self {
        Refusal {
            status: StatusCode::UNAUTHORIZED,
            side: Side::Client,
            code: "sluice_unauthenticated",
            message: format!("Sluice refused the request's credential: {why}"),
            rule: None,
            retry_after: None,
        }
    }

    /// Recording is required and the store cannot take this request's record: 503, so a
    /// client retries once the store writes again.
    pub fn unrecorded(why: &crate::audit::Unavailable) -> Self {
        Refusal::busy(
            "sluice_recording_unavailable",
            format!(
                "Sluice refused the request: recording is required and the audit store cannot record it ({why})"
            ),
            5,
        )
    }

    pub fn policy(rule: Option<String>, reason: &str) -> Self {
        let message = match &rule {
            Some(r) => format!("blocked by Sluice policy rule {r}: {reason}"),
            None => format!("blocked by Sluice: {reason}"),
        };
        Refusal {
            status: StatusCode::FORBIDDEN,
            side: Side::Sluice,
            code: "sluice_policy_denied",
            message,
            rule,
            retry_after: None,
        }
    }
}

/// Renders a refusal for `server`; gRPC requests get a trailers-only gRPC status instead.
pub fn render(server: Server, grpc: bool, r: &Refusal) -> Response<Body> {
    if grpc {
        return grpc_status(r);
    }
    let body = match server {
        Server::Ollama | Server::Triton => json!({ "error": r.message }),
        Server::Tgi => json!({ "error": r.message, "error_type": r.code }),
        Server::Anthropic => json!({
            "type": "error",
            "error": { "type": anthropic_type(r.status), "message": r.message },
        }),
        Server::Openai | Server::Vllm | Server::LlamaCpp => json!({
            "error": {
                "message": r.message,
                "type": openai_type(r.status, r.side),
                "param": null,
                "code": r.code,
            }
        }),
    };
    let mut resp = Response::new(full(Bytes::from(body.to_string())));
    *resp.status_mut() = r.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(rule) = r
        .rule
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        h.insert("x-sluice-rule", rule);
    }
    if r.status == StatusCode::UNAUTHORIZED {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
    }
    if let Some(secs) = r.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

fn openai_type(status: StatusCode, side: Side) -> &'static str {
    match (status, side) {
        (StatusCode::FORBIDDEN, _) => "permission_error",
        (StatusCode::UNAUTHORIZED, _) => "authentication_error",
        (_, Side::Upstream) => "api_error",
        (s, _) if s.is_client_error() => "invalid_request_error",
        _ => "api_error",
    }
}

fn anthropic_type(status: StatusCode) -> &'static str {
    match status {
        StatusCode::FORBIDDEN => "permission_error",
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
        s if s.is_client_error() => "invalid_request_error",
        _ => "api_error",
    }
}

fn grpc_status(r: &Refusal) -> Response<Body> {
    // gRPC codes: 7 PERMISSION_DENIED, 16 UNAUTHENTICATED, 3 INVALID_ARGUMENT,
    // 8 RESOURCE_EXHAUSTED, 4 DEADLINE_EXCEEDED, 14 UNAVAILABLE.
    let code = match r.status {
        StatusCode::FORBIDDEN => "7",
        StatusCode::GATEWAY_TIMEOUT => "4",
        StatusCode::UNAUTHORIZED => "16",
        StatusCode::PAYLOAD_TOO_LARGE => "8",
        s if s.is_client_error() => "3",
        _ => "14",
    };
    let mut resp = Response::new(full(Bytes::new()));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static(code));
    // grpc-message is percent-encoded; keep it to safe ASCII.
    let msg: String = r
        .message
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " .,:-_()".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&msg.replace(' ', "%20")) {
        h.insert("grpc-message", v);
    }
    resp
}

pub fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

/// An error as the last unit of a streamed response, in the server's own shape: an SSE
/// error event, or an NDJSON error line for Ollama's native streams. Empty where the framing
/// has no place for one (a plain body is then only cut).
pub fn stream_error(server: Server, framing: Framing, code: &str, message: &str) -> Bytes {
    match framing {
        Framing::Sse => {
            let (event, data) = match server {
                Server::Anthropic => (
                    "event: error\n",
                    json!({"type": "error", "error": {"type": "api_error", "message": message}}),
                ),
                Server::Tgi => ("", json!({"error": message, "error_type": code})),
                _ => (
                    "",
                    json!({"error": {"message": message, "type": "api_error", "param": null, "code": code}}),
                ),
            };
            Bytes::from(format!("{event}data: {data}\n\n"))
        }
        Framing::Ndjson => Bytes::from(format!("{}\n", json!({ "error": message }))),
        Framing::Json | Framing::Other => Bytes::new(),
    }
}
