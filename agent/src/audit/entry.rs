//! What a frame's body says, as JSON.
//!
//! Why JSON: records are read by people and by log shippers as often as by `sluice audit`,
//! a self-describing body lets fields be added without a format version (bodies at `full`
//! level will be further optional fields and `chunk` entries, see below). The store writes
//! request entries by hand (`json.rs`, byte for byte what serde_json writes for
//! `RequestEntry`): about a third of a microsecond a record, less than its hash.
//!
//! Bodies (`level: full`): `body` entries (`Kind::Body`) follow a request's opening record,
//! each naming the request id, its direction, its byte offset in that direction and its
//! time offset from the request's first byte, and carrying the masked bytes (as text when
//! they are UTF-8, else base64). The chain and checkpoints cover them as any other record;
//! the index does not list them (`list` never reads them; `replay` and `export` do). The
//! final record's `body` says what was recorded and what was not (truncated, dropped).
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::record::Record;

/// What a frame holds (the frame's `kind` byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Kind {
    /// A segment's first record: its number.
    Start = 1,
    /// A request's opening record, written once its decision is made.
    Open = 2,
    /// A request's final record: how it ended.
    Final = 3,
    /// A signed checkpoint.
    Checkpoint = 4,
    /// Part of a request's or response's body (`level: full`).
    Body = 5,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Start,
            2 => Kind::Open,
            3 => Kind::Final,
            4 => Kind::Checkpoint,
            5 => Kind::Body,
            _ => return None,
        })
    }
}

/// A segment's first record.
#[derive(Debug, Serialize, Deserialize)]
pub struct Start {
    pub segment: u64,
    pub unix_ms: u64,
}

/// A request's record as stored (and as `list --json` / `show` print it). Fields of the final
/// record only are absent from the opening one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestEntry<'a> {
    pub id: u64,
    pub unix_ms: u64,
    pub target: Cow<'a, str>,
    pub server: Cow<'a, str>,
    pub workload: WorkloadEntry<'a>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<PrincipalEntry<'a>>,
    pub method: Cow<'a, str>,
    pub path: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub streaming: bool,
    /// allow, deny, hold, refuse or cancelled (`Record::action`).
    pub decision: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'a, str>>,
    /// The request's headers (opening record) or the response's (final record), with every
    /// credential's value removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// What masking did to each direction (final record; absent when no masking rule
    /// applied): counts per detector, never values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_request: Option<crate::mask::Verdict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_response: Option<crate::mask::Verdict>,
    /// For a request a rule held for approval (final record): its id, how it ended
    /// (approved, denied, timeout, cancelled, stopped, granted) and who decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<Cow<'a, str>>,
    /// At `full` level (final record): what the body entries hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyNote>,
}

/// Which way a body went.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The request's body as the upstream received it (after masking).
    Request,
    /// The response's body as the client received it (after masking and filters).
    Response,
}

/// Part of a body (`Kind::Body`): one stream chunk, or a piece of a longer body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BodyEntry<'a> {
    pub id: u64,
    pub dir: Direction,
    /// The piece's number in its direction, from 0.
    pub n: u64,
    /// Where its first byte is in its direction's body.
    pub at: u64,
    /// When it passed, in microseconds since the request's first byte.
    pub t_us: u64,
    /// The bytes, when they are UTF-8 (JSON, SSE, NDJSON: readable as stored)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Cow<'a, str>>,
    /// ...else base64 (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b64: Option<String>,
}

impl<'a> BodyEntry<'a> {
    pub fn new(id: u64, dir: Direction, n: u64, at: u64, t_us: u64, data: &'a [u8]) -> Self {
        let (text, b64) = match std::str::from_utf8(data) {
            Ok(t) => (Some(Cow::Borrowed(t)), None),
            Err(_) => (
                None,
                Some(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    data,
                )),
            ),
        };
        BodyEntry {
            id,
            dir,
            n,
            at,
            t_us,
            text,
            b64,
        }
    }

    pub fn into_owned(self) -> BodyEntry<'static> {
        BodyEntry {
            text: self.text.map(|t| Cow::Owned(t.into_owned())),
            id: self.id,
            dir: self.dir,
            n: self.n,
            at: self.at,
            t_us: self.t_us,
            b64: self.b64,
        }
    }

    /// The recorded bytes (empty when the base64 is damaged: `verify` says so first).
    pub fn data(&self) -> Vec<u8> {
        match (&self.text, &self.b64) {
            (Some(t), _) => t.as_bytes().to_vec(),
            (None, Some(b)) => {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b)
                    .unwrap_or_default()
            }
            (None, None) => Vec::new(),
        }
    }
}

/// What a request's body entries hold (final record, `level: full`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BodyNote {
    /// Request body bytes recorded.
    pub request_bytes: u64,
    /// Response body bytes recorded, in `response_chunks` entries.
    pub response_bytes: u64,
    pub response_chunks: u64,
    /// The request body was longer than `max_body_bytes`: only its beginning is recorded.
    #[serde(default, skip_serializing_if = "is_false")]
    pub request_truncated: bool,
    /// The response was longer than `max_body_bytes`: the rest passed unrecorded.
    #[serde(default, skip_serializing_if = "is_false")]
    pub response_truncated: bool,
    /// The request body streamed through unread (gRPC): not recorded.
    #[serde(default, skip_serializing_if = "is_false")]
    pub request_unread: bool,
    /// Pieces not recorded because the store's writer was behind (`max_backlog`,
    /// `max_backlog_bytes`) and recording is not `required`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped: u64,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkloadEntry<'a> {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<Cow<'a, str>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PrincipalEntry<'a> {
    pub issuer: Cow<'a, str>,
    pub subject: Cow<'a, str>,
    #[serde(default)]
    pub groups: Vec<Cow<'a, str>>,
}

impl<'a> RequestEntry<'a> {
    /// The record as its opening entry (`Kind::Open`) or final one (`Kind::Final`).
    pub fn of(r: &'a Record, kind: Kind, headers: &'a [(String, String)]) -> Self {
        let b = Cow::Borrowed;
        let ob = |s: &'a Option<String>| s.as_deref().map(Cow::Borrowed);
        let w = &r.workload;
        let op = r.operation.as_ref();
        let fin = kind == Kind::Final;
        RequestEntry {
            id: r.id,
            unix_ms: r.unix_ms,
            target: b(&r.target),
            server: b(r.server.name()),
            workload: WorkloadEntry {
                pid: w.tgid,
                uid: w.uid,
                gid: w.gid,
                comm: b(&w.comm),
                exe: ob(&w.exe),
                user: ob(&w.user),
                cgroup: ob(&w.cgroup),
                unit: ob(&w.unit),
                container: w.container.as_ref().map(|c| b(c.id.as_str())),
                pod_uid: ob(&w.pod_uid),
            },
            principal: r.principal.as_ref().map(|p| PrincipalEntry {
                issuer: b(&p.issuer),
                subject: b(&p.subject),
                groups: p.groups.iter().map(|g| b(g.as_str())).collect(),
            }),
            method: b(&r.method),
            path: sanitize_path(&r.path),
            operation: op.map(|o| b(o.class.as_str())),
            route: op.map(|o| b(o.route)),
            model: op.and_then(|o| o.model.as_deref()).map(b),
            streaming: op.is_some_and(|o| o.streaming),
            decision: b(decision_of(r, kind)),
            rules: r
                .decision
                .as_ref()
                .map(|d| d.rules().map(b).collect())
                .unwrap_or_default(),
            reason: match &r.decision {
                Some(crate::policy::Decision::Deny(d)) => Some(b(&d.reason)),
                Some(crate::policy::Decision::Hold(h)) => Some(b(&h.reason)),
                _ => None,
            },
            headers: headers
                .iter()
                .map(|(k, v)| (b(k.as_str()), b(v.as_str())))
                .collect(),
            status: fin.then(|| r.status.map_or(0, |s| s.as_u16())),
            outcome: fin.then(|| r.outcome.to_string()),
            request_bytes: fin.then_some(r.request_bytes),
            response_bytes: fin.then_some(r.response_bytes),
            headers_ms: if fin { r.headers_ms } else { None },
            duration_ms: fin.then_some(r.duration_ms),
            mask_request: verdict(fin, &r.mask_request),
            mask_response: verdict(fin, &r.mask_response),
            approval_id: r
                .approval
                .as_ref()
                .filter(|_| fin)
                .map(|a| b(a.id.as_str())),
            approval: r.approval.as_ref().filter(|_| fin).map(|a| b(a.outcome)),
            approved_by: r
                .approval
                .as_ref()
                .filter(|_| fin)
                .map(|a| b(a.decided_by.as_str())),
            body: r.body.clone().filter(|_| fin),
        }
    }

    /// The user or, without one, the uid; for tables.
    pub fn who(&self) -> String {
        match (&self.principal, &self.workload.user) {
            (Some(p), _) => p.subject.to_string(),
            (None, Some(u)) => u.to_string(),
            (None, None) => format!("uid {}", self.workload.uid),
        }
    }
}

/// A final record's masking verdict, `None` when masking was off for that direction.
fn verdict(fin: bool, v: &crate::mask::Verdict) -> Option<crate::mask::Verdict> {
    (fin && *v != crate::mask::Verdict::Off).then(|| v.clone())
}

/// The entry's `decision`: an opening record's is the policy's (the outcome is not known
/// yet), a final record's says how the request ended.
pub(super) fn decision_of(r: &Record, kind: Kind) -> &'static str {
    if kind == Kind::Final {
        r.action()
    } else {
        r.decision.as_ref().map_or("refuse", |d| d.label())
    }
}

/// Header names whose values are credentials or session state: never stored. Matched
/// case-insensitively as substrings, so vendor spellings (`x-goog-api-key`,
/// `x-amz-security-token`) are covered too.
const SECRET_NAMES: &[&str] = &[
    "authorization",
    "cookie",
    "key",
    "token",
    "secret",
    "password",
    "credential",
    "session",
    "signature",
    "auth",
    "jwt",
    "assertion",
];

/// A value that carries a credential whatever its header is called: an authorization
/// scheme (any case), or a JWT (`eyJ….eyJ…`).
fn secret_value(v: &[u8]) -> bool {
    let starts = |p: &[u8]| v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p);
    starts(b"bearer ")
        || starts(b"basic ")
        || starts(b"digest ")
        || (v.starts_with(b"eyJ") && v.windows(4).any(|w| w == b".eyJ"))
}

/// What a removed value is replaced with: the header's presence is evidence, its value is not.
pub const REMOVED: &str = "[removed]";

/// The headers as recorded: every value of a credential-like header replaced by
/// `[removed]`, and values that are not UTF-8 shown as `[binary]`.
pub fn sanitize_headers(h: &http::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            let name = k.as_str();
            let secret =
                SECRET_NAMES.iter().any(|s| name.contains(s)) || secret_value(v.as_bytes());
            let value = if secret {
                REMOVED.to_string()
            } else {
                v.to_str()
                    .map_or_else(|_| "[binary]".into(), str::to_string)
            };
            (name.to_string(), value)
        })
        .collect()
}

/// The path as recorded: values of credential-like query parameters (`?key=`, `?api_key=`,
/// `?access_token=`) removed, as header values are.
pub fn sanitize_path(path: &str) -> Cow<'_, str> {
    let Some((p, q)) = path.split_once('?') else {
        return Cow::Borrowed(path);
    };
    let secret = |name: &str| {
        let name = name.to_ascii_lowercase();
        SECRET_NAMES.iter().any(|s| name.contains(s))
    };
    if !q
        .split('&')
        .any(|kv| secret(kv.split('=').next().unwrap_or("")))
    {
        return Cow::Borrowed(path);
    }
    let q: Vec<String> = q
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if secret(k) => format!("{k}={REMOVED}"),
            _ => kv.to_string(),
        })
        .collect();
    Cow::Owned(format!("{p}?{}", q.join("&")))
}
