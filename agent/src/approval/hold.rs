//! The approve stage for a held request: a grant window may let it pass; otherwise it is
//! entered in the table and waits, its body still charged to the body budget, until a
//! person decides, the rule's timeout passes, or the agent stops. Only an approval makes a
//! `Permit`; every other end is a refusal naming the approval id and why.
use std::sync::{Arc, OnceLock};

use http::StatusCode;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    Approvals,
    approver::Requester,
    store::{Caller, Delivery, Info, NewHold, State, Verdict, unix_ms},
};
use crate::{
    pipeline::{
        Request, Subject,
        context::{Approval as Stage, RequestBody},
    },
    policy::{Hold, Permit, approval::GrantScope},
    record::{ApprovalNote, Phase},
    respond::{Refusal, Side},
};

/// Request body bytes masked for the excerpt: wider than the widest detector window, so a
/// secret near the start is seen whole before the excerpt is cut.
const EXCERPT_SCAN: usize = 8 * 1024;
/// Largest JSON body masked whole for the excerpt (about half a millisecond of scanning on
/// the runtime's thread); a larger one is masked as bytes, its head only.
const EXCERPT_JSON: usize = 256 * 1024;
/// Characters of the excerpt approvers see.
const EXCERPT_CHARS: usize = 300;
/// Characters of a justification kept.
const JUSTIFICATION_CHARS: usize = 500;

/// Waits for the decision on a held request; `Ok` only when a person approved it (or a
/// grant window they opened covers it).
pub async fn hold(
    approvals: &Arc<Approvals>,
    rq: &mut Request,
    h: &Hold,
    shutdown: &CancellationToken,
) -> Result<Permit, Refusal> {
    let a = &h.approval;
    let permit = Permit {
        rules: vec![h.rule.clone()],
        by_default: false,
    };
    let principal = match &rq.subject {
        Some(Subject::Token(p, _)) => Some(p.clone()),
        _ => None,
    };
    let w = rq.conn.workload.clone();
    let identity = match &principal {
        Some(p) => format!("subject {} of {}", p.subject, p.issuer),
        None => format!("uid {}", w.uid),
    };
    let grant_key = a.grant.map(|(_, scope)| match (scope, &principal) {
        (GrantScope::Subject, Some(_)) => identity.clone(),
        // Without a token the only subject is a uid, which every container on the node may
        // run as (root most of all): the grant narrows to the workload that was approved.
        (GrantScope::Subject | GrantScope::Workload, _) => format!(
            "workload uid {} cgroup {}",
            w.uid,
            w.cgroup.as_deref().or(w.exe.as_deref()).unwrap_or(&w.comm)
        ),
    });
    if let Some(key) = &grant_key
        && approvals.store.covers(&h.rule, key)
    {
        rq.record().set_approval(ApprovalNote {
            id: String::new(),
            outcome: "granted",
            decided_by: format!("grant window for {key}"),
            waited_ms: None,
        });
        rq.approval = Stage::Granted;
        return Ok(permit);
    }
    // A rule that names no header still shows what a client sent in the default one.
    let header = a
        .justification_header
        .as_deref()
        .unwrap_or(crate::policy::approval::DEFAULT_JUSTIFICATION_HEADER);
    let justification = Some(header).and_then(|name| {
        rq.parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| super::clean(v, JUSTIFICATION_CHARS))
    });
    if a.justification_required && justification.is_none() {
        return Err(refusal(
            StatusCode::FORBIDDEN,
            "sluice_justification_required",
            &h.rule,
            format!(
                "rule {} holds this request for approval and needs a justification: send it in the {header} header (an SDK's default headers can set it)",
                h.rule
            ),
        ));
    }
    let id = super::id::new().map_err(|e| {
        tracing::error!(error = %e, "no approval id: the held request is refused");
        refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "sluice_approval_unavailable",
            &h.rule,
            format!(
                "rule {} holds this request for approval, and the agent could not open one",
                h.rule
            ),
        )
    })?;
    let op = rq.operation.as_ref();
    let info = Info {
        id: id.clone(),
        created_unix_ms: unix_ms(),
        rule: h.rule.clone(),
        reason: h.reason.clone(),
        approvers: a.approvers(),
        target: rq.conn.target.name.clone(),
        method: rq.parts.method.to_string(),
        path: super::clean(&rq.path, 200),
        operation: op.map_or("unknown", |o| o.route).to_string(),
        model: op.and_then(|o| o.model.clone()),
        requester: Caller {
            uid: w.uid,
            user: w.user.clone(),
            comm: w.comm.clone(),
            exe: w.exe.clone(),
            unit: w.unit.clone(),
            cgroup: w.cgroup.clone(),
            container: w.container.as_ref().map(|c| c.id.clone()),
            issuer: principal.as_ref().map(|p| p.issuer.to_string()),
            subject: principal.as_ref().map(|p| p.subject.clone()),
            groups: principal
                .as_ref()
                .map(|p| p.groups.clone())
                .unwrap_or_default(),
        },
        justification,
        excerpt: match &rq.body {
            RequestBody::Buffered { bytes, .. } => excerpt(bytes),
            _ => "(body not read)".into(),
        },
        timeout_secs: a.timeout.as_secs(),
        state: State::Pending,
        decided_by: Vec::new(),
        decided_unix_ms: None,
        deny_reason: None,
        grant_secs: None,
        waited_ms: None,
        webhook: Delivery {
            state: "off".into(),
            ..Delivery::default()
        },
    };
    let announced = info.clone();
    let registered = approvals.store.register(NewHold {
        info,
        approval: a.clone(),
        requester: Requester {
            uid: w.uid,
            user: w.user.clone(),
            subject: principal.as_ref().map(|p| p.subject.clone()),
            cgroup: w.cgroup.clone(),
        },
        identity,
        grant_key,
    });
    let (mut ticket, mut rx) = match registered {
        Ok(t) => t,
        Err(full) => {
            let mut r = refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "sluice_approvals_full",
                &h.rule,
                format!(
                    "rule {} holds this request for approval, and {full}: refused, not queued",
                    h.rule
                ),
            );
            r.retry_after = Some(30);
            return Err(r);
        }
    };
    approvals.announce(&announced);
    tracing::info!(approval = %id, rule = %h.rule, target = %rq.conn.target.name, "request held for approval");
    // Until a decision says otherwise the record reads as cancelled: a client that leaves
    // drops this future, and with it the record and the ticket (which ends the entry).
    rq.record().set_approval(ApprovalNote {
        id: id.clone(),
        outcome: "cancelled",
        decided_by: String::new(),
        waited_ms: None,
    });
    rq.phase(Phase::Approval);
    rq.approval = Stage::Waiting;
    let since = Instant::now();
    let store = &approvals.store;
    let verdict = tokio::select! {
        v = &mut rx => v.ok(),
        () = tokio::time::sleep(a.timeout) => {
            if store.end(&id, State::Timeout, Some(since.elapsed())) { None } else { rx.await.ok() }
        }
        () = shutdown.cancelled() => {
            if store.end(&id, State::Stopped, Some(since.elapsed())) { None } else { rx.await.ok() }
        }
    };
    ticket.settle();
    let waited = since.elapsed();
    rq.clock.exclude(waited);
    rq.phase(Phase::Decide);
    // Not decided by a person: timed out, or the agent is stopping.
    let state = match &verdict {
        Some(Verdict::Approved { .. }) => State::Approved,
        Some(Verdict::Denied { .. }) => State::Denied,
        None if shutdown.is_cancelled() => State::Stopped,
        None => State::Timeout,
    };
    let by = match &verdict {
        Some(Verdict::Approved { by } | Verdict::Denied { by, .. }) => by.clone(),
        None => String::new(),
    };
    rq.record().set_approval(ApprovalNote {
        id: id.clone(),
        outcome: state.as_str(),
        decided_by: by,
        waited_ms: Some(waited.as_millis() as u64),
    });
    tracing::info!(approval = %id, rule = %h.rule, outcome = state.as_str(), waited_ms = waited.as_millis() as u64, "approval ended");
    match verdict {
        Some(Verdict::Approved { .. }) => {
            rq.approval = Stage::Approved;
            Ok(permit)
        }
        Some(Verdict::Denied { by, reason }) => Err(refusal(
            StatusCode::FORBIDDEN,
            "sluice_approval_denied",
            &h.rule,
            format!(
                "approval {id} (rule {}) was denied by {by}: {reason}",
                h.rule
            ),
        )),
        None if state == State::Stopped => {
            let mut r = refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "sluice_approval_stopped",
                &h.rule,
                format!(
                    "approval {id} (rule {}) was still pending when the agent stopped: the request was refused, not sent",
                    h.rule
                ),
            );
            r.retry_after = Some(5);
            Err(r)
        }
        None => Err(refusal(
            StatusCode::FORBIDDEN,
            "sluice_approval_timeout",
            &h.rule,
            format!(
                "approval {id} (rule {}) timed out after {}: nobody decided ({})",
                h.rule,
                humantime::format_duration(a.timeout),
                h.reason
            ),
        )),
    }
}

fn refusal(status: StatusCode, code: &'static str, rule: &str, message: String) -> Refusal {
    Refusal {
        status,
        side: Side::Sluice,
        code,
        message,
        rule: Some(rule.to_string()),
        retry_after: None,
    }
}

/// The start of the body as approvers see it: secrets and personal data masked by the
/// built-in detectors, then cut. Headers (where credentials travel) are never part of it.
fn excerpt(bytes: &[u8]) -> String {
    use crate::mask::{
        Action, Plan, Scanner,
        body::{Layout, mask_body},
    };
    static PLAN: OnceLock<Plan> = OnceLock::new();
    let plan = PLAN.get_or_init(|| {
        let scanner = std::sync::Arc::new(Scanner::builtin());
        let n = scanner.detectors().len();
        Plan::new(scanner, vec![Some(Action::Redact); n])
    });
    // A JSON body is masked string by string as decoded, so an escaped value
    // (`jane\u0040example.com`) is found as the server will read it; anything else as bytes.
    if bytes.len() <= EXCERPT_JSON
        && let Ok(m) = mask_body(plan, Layout::Json, bytes, None)
    {
        let text = m.body.as_deref().unwrap_or(bytes);
        let head = &text[..text.len().min(EXCERPT_SCAN)];
        return super::clean(&String::from_utf8_lossy(head), EXCERPT_CHARS);
    }
    let head = &bytes[..bytes.len().min(EXCERPT_SCAN)];
    let masked = crate::mask::mask(plan.scanner(), head, &Action::Redact);
    super::clean(&String::from_utf8_lossy(&masked), EXCERPT_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_excerpt_masks_escaped_values_in_json() {
        let e = excerpt(
            br#"{"messages":[{"content":"mail jane.doe@example.com or AKIAQQ3EGRSZ7XN5TB2L"}]}"#,
        );
        assert!(!e.contains("jane.doe"), "{e}");
        assert!(!e.contains("EGRSZ7XN5TB2L"), "{e}");
        assert!(e.contains("[REDACTED:email]"), "{e}");
    }

    #[test]
    fn the_excerpt_masks_secrets_and_is_capped() {
        let body = format!(
            "{{\"messages\":[{{\"role\":\"user\",\"content\":\"use sk-proj-{} please\"}}],\"pad\":\"{}\"}}",
            "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0",
            "x".repeat(5000)
        );
        let e = excerpt(body.as_bytes());
        assert!(!e.contains("A1b2C3d4E5f6"), "{e}");
        assert!(e.contains("[REDACTED:"), "{e}");
        assert!(e.chars().count() <= EXCERPT_CHARS + 1, "{}", e.len());
    }
}
