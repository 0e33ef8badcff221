//! The stages one HTTP request goes through, in this order. Each stage is a plain function
//! over the request's context ([`context::Request`]); a stage that ends the request returns a
//! `Refusal`, which `respond` renders in the server's dialect.
//!
//! | stage | module | reads | writes | can end the request |
//! |---|---|---|---|---|
//! | admit | `admit.rs`, `decode.rs`, `switch.rs` | method, path, query, headers | decoded path, the switch asked for | 400, 403 (a protocol switch it cannot name), 413, 415 |
//! | read | `read.rs`, `decode.rs` | body (bounded: size, deadline, memory budget), read as the server reads it | body bytes, JSON | 400, 408, 413, 503 |
//! | classify | `adapter` | method, decoded path, JSON | operation | no |
//! | identify | `identify` below, `identity` | connection's workload, credential headers, query | subject | 401 (bad token, conflicting credentials, token in the query, none where required) |
//! | decide | `policy`, then `open_record` below → `audit` | operation, subject, JSON, switch | decision, masking plans (`mask.rs`), the opening record (handed to the store here; durable before the response is released) | 503 when recording is required and cannot be written |
//! | mask | `mask.rs` → `mask::body` | body, JSON, the masking plans decide made | the masked body; `mask_request` in the record | 403 (a `block` detector found something), 415/403/500 (a body it cannot scan, under `on_unscannable: refuse`) |
//! | approve | `approve` below → `approval::hold` | decision, subject, workload, headers (justification), body (excerpt) | `Permit`, approval state | 403 on deny, on an approver's deny, on an approval's timeout, on a missing justification; 503 over the pending bounds or when the agent stops while held |
//! | record body | `recording.rs` → `audit::Tap` (at `full` level) | the masked body | its body entries | 503 when recording is required and cannot be written |
//! | prepare | `choose_key` below, `send.rs` → `custody` | parts, body, `Permit`, filters, subject and workload (which of the target's keys) | `credential`, the upstream request (client credentials stripped, the key injected) | 403 (the target holds keys, none for this caller) |
//! | send | `send.rs` | upstream request | response head | 502, 504 (no response head within `upstream_head_timeout_ms`) |
//! | respond | `respond` below | response head, filters, `credential` (echoes masked) | the response body, or the tunnel of an allowed switch (`switch.rs`) | 502 (too large) |
//!
//! The record of the request is opened before the first stage and finished exactly once,
//! by the response body at its end or by the context being dropped (`record`).
//!
//! The policy snapshot is taken when the request starts, so a reload never changes the
//! decision of a request in flight.
use crate::{
    connection::{Conn, Ctx},
    filter::{Chain, Framing, RequestEnd, ResponseBody},
    http::ClientBody,
    http::InFlight,
    metrics::Stage,
    policy::{Decision, Facts, Permit, Switch},
    record::Phase,
    respond::{self, Body, Refusal},
    upstream::http::strip_hop_by_hop,
};
use http::{Response, StatusCode, header};

mod admit;
pub mod context;
pub mod decode;
mod grpc;
pub mod mask;
mod read;
mod recording;
mod send;
mod switch;

pub use context::{Request, Subject};

/// Runs one request through the stages and returns its response, whose body finishes the
/// request's record.
pub async fn handle(
    ctx: &Ctx,
    conn: &std::sync::Arc<Conn>,
    req: http::Request<ClientBody>,
    in_flight: InFlight,
) -> Response<Body> {
    let mut rq = Request::start(ctx, conn, req, in_flight).await;
    let mut outcome = stages(ctx, &mut rq).await;
    // The opening record was written and synced while the request went upstream: nothing
    // is released to the client before it is durable. With `required`, one that could not
    // be made durable refuses the request here (the upstream's answer is dropped).
    if let Some(opened) = rq.opened.take()
        && let Err(why) = opened.durable().await
        && ctx
            .recorder
            .audit()
            .is_some_and(crate::audit::Handle::required)
    {
        outcome = Err(Refusal::unrecorded(&why));
    }
    let (response, chain) = match outcome {
        Ok(ok) => ok,
        Err(refusal) => {
            crate::metrics::refused(refusal.code);
            (
                respond::render(conn.target.server, rq.grpc, &refusal),
                Chain::default(),
            )
        }
    };
    rq.respond(response, chain)
}

/// The stages in order; each `lap` closes the one before it for the latency metrics.
async fn stages(ctx: &Ctx, rq: &mut Request) -> Result<(Response<Body>, Chain), Refusal> {
    if let Some(why) = ctx.recorder.audit().and_then(crate::audit::Handle::refusal) {
        return Err(Refusal::unrecorded(&why));
    }
    admit::admit(rq, ctx)?;
    rq.lap(Stage::Admit);
    read::read(rq, ctx).await?;
    rq.lap(Stage::Read);
    rq.phase(Phase::Decide);
    classify(rq);
    rq.lap(Stage::Classify);
    identify(ctx, rq).await?;
    rq.lap(Stage::Identify);
    decide(ctx, rq);
    open_record(ctx, rq).await?;
    rq.lap(Stage::Decide);
    // Before any hold: approvers see, and approve, the body that will go upstream, and a
    // body that masking blocks never waits for an approver.
    mask::request(ctx, rq)?;
    rq.lap(Stage::Mask);
    // Taken: no stage after this one reads the decision (the record has its own copy).
    let permit = match rq.decision.take() {
        Some(Decision::Hold(h)) => {
            Box::pin(crate::approval::hold(&ctx.approvals, rq, &h, &ctx.shutdown)).await?
        }
        d => approve(d)?,
    };
    rq.lap(Stage::Approve);
    choose_key(ctx, rq)?;
    recording::request_body(rq)?;
    let forward = send::prepare(rq, permit);
    rq.lap(Stage::Prepare);
    rq.phase(Phase::Upstream);
    let head = send::send(ctx, &rq.conn, forward).await;
    // Lapped before `?`: a failed attempt's time is the upstream's too, not the agent's.
    rq.lap(Stage::UpstreamWait);
    if let Err(r) = &head
        && r.code == respond::UPSTREAM_TIMEOUT
    {
        // The 504 is sent whole; the record still says the request did not complete.
        rq.record()
            .failed(crate::record::Outcome::UpstreamTimeout(r.message.clone()));
    }
    let head = head?;
    let response = response(rq, head)?;
    rq.lap(Stage::Respond);
    Ok(response)
}

/// What the request does, as the target's adapter reads it.
fn classify(rq: &mut Request) {
    let op = crate::adapter::classify(
        rq.conn.target.server,
        rq.parts.method.as_str(),
        &rq.path,
        rq.json.as_ref(),
    );
    rq.record().set_operation(&op);
    rq.operation = Some(op);
}

/// Who is asking: the workload the connect hook saw, and, when issuers are configured and
/// the request carries a token, the token's verified principal. Without issuers this is one
/// branch: no header is read.
async fn identify(ctx: &Ctx, rq: &mut Request) -> Result<(), Refusal> {
    let Some(identity) = ctx.identity.as_ref() else {
        rq.subject = Some(Subject::Workload);
        return Ok(());
    };
    // Boxed: token verification's future (key fetches included) is kilobytes, and only
    // requests to targets with issuers carry it.
    match Box::pin(identity.authenticate(&rq.parts)).await {
        Ok(Some((principal, carried))) => {
            rq.record().set_principal(&principal);
            rq.subject = Some(Subject::Token(principal, carried));
            Ok(())
        }
        Ok(None) if rq.conn.target.identity == crate::identity::Requirement::Required => Err(
            Refusal::unauthenticated(crate::identity::Rejection::Missing),
        ),
        Ok(None) => {
            rq.subject = Some(Subject::Workload);
            Ok(())
        }
        Err(why) => Err(Refusal::unauthenticated(why)),
    }
}

fn decide(ctx: &Ctx, rq: &mut Request) {
    let Some(op) = rq.operation.as_ref() else {
        return;
    };
    let target = &rq.conn.target;
    let facts = Facts {
        target: &target.name,
        server: target.server,
        method: rq.parts.method.as_str(),
        path: &rq.path,
        operation: op,
        body: rq.json.as_ref(),
        default: target.default,
        workload: rq.subject.as_ref().map(|_| &*rq.conn.workload),
        identity: match &rq.subject {
            Some(Subject::Token(p, _)) => Some(p),
            _ => None,
        },
        switch: rq.switch,
    };
    let decision = rq.policy.evaluate(&facts);
    // A denied request is neither scanned nor given a pseudonym session; one held for
    // approval is masked like an allowed one (it goes upstream once approved).
    if !matches!(decision, Decision::Deny(_)) {
        let applied = rq.policy.masking.evaluate(&facts);
        rq.masking = mask::plans(ctx, rq, &applied);
    }
    rq.record().set_decision(&decision);
    rq.decision = Some(decision);
}

/// The request's opening record, once its decision is made and before anything goes
/// upstream or back. It is made durable (written, synced at the store's configured level)
/// while the request goes on: `handle` waits for that before releasing the response, so the
/// fsync overlaps the upstream's time instead of adding to it. With `required`, a store that
/// has failed or whose queue is full refuses the request here, before anything is sent.
async fn open_record(ctx: &Ctx, rq: &mut Request) -> Result<(), Refusal> {
    let Some(audit) = ctx.recorder.audit() else {
        return Ok(());
    };
    if rq.conn.target.audit_level == Some(crate::audit::Level::None) {
        rq.record().set_unaudited();
        return Ok(());
    }
    let Some(snapshot) = rq.record().snapshot() else {
        return Ok(());
    };
    let headers = crate::audit::sanitize_headers(&rq.parts.headers);
    match audit.begin(snapshot, headers).await {
        Err(why) if audit.required() => Err(Refusal::unrecorded(&why)),
        Err(_) => {
            recording::bodies(audit, rq);
            Ok(())
        }
        Ok(opened) => {
            rq.opened = Some(opened);
            recording::bodies(audit, rq);
            Ok(())
        }
    }
}

/// Which of the target's upstream keys the request goes out with (`custody::Vault::choose`):
/// the first whose `when` the caller meets. A target that holds keys but none for this caller
/// refuses it rather than send the client's own credential, or another caller's key.
fn choose_key(ctx: &Ctx, rq: &mut Request) -> Result<(), Refusal> {
    let who = match &rq.subject {
        Some(Subject::Token(p, _)) => Some(&**p),
        _ => None,
    };
    match ctx
        .custody
        .choose(rq.conn.target_id, who, &rq.conn.workload)
    {
        crate::custody::Choice::NotHeld => Ok(()),
        // A switched stream is passed on unread: an echo of the key in it could not be
        // masked, and an h2c upgrade would carry the key into a stream Sluice cannot see.
        crate::custody::Choice::Key { .. } if rq.switch.is_some() => Err(Refusal::policy(
            None,
            &format!(
                "target {} holds an upstream key; a protocol switch would carry it into a stream Sluice cannot read or mask",
                rq.conn.target.name
            ),
        )),
        crate::custody::Choice::Key { key, headers } => {
            rq.credential = Some(context::Credential { key, also: headers });
            Ok(())
        }
        crate::custody::Choice::NoneForCaller => Err(Refusal::policy(
            None,
            &format!(
                "target {} holds no upstream key for this caller ({})",
                rq.conn.target.name,
                match who {
                    Some(p) => format!("subject {}, groups [{}]", p.subject, p.groups.join(", ")),
                    None => format!(
                        "no token; user {}, unit {}",
                        rq.conn.workload.user.as_deref().unwrap_or("-"),
                        rq.conn.workload.unit.as_deref().unwrap_or("-")
                    ),
                }
            ),
        )),
    }
}

/// Turns the decision into a `Permit`, the only thing `prepare` takes. A held request waits
/// for a person in `approval::hold`; one that reaches here is refused rather than guessed.
fn approve(decision: Option<Decision>) -> Result<Permit, Refusal> {
    match decision {
        Some(Decision::Permit(p)) => Ok(p),
        Some(Decision::Deny(d)) => Err(Refusal::policy(d.rule, &d.reason)),
        Some(Decision::Hold(h)) => Err(Refusal::policy(
            Some(h.rule.clone()),
            &format!("{}; this request needs a person's approval", h.reason),
        )),
        None => Err(Refusal::client(
            StatusCode::INTERNAL_SERVER_ERROR,
            "sluice_internal",
            "no decision was reached",
        )),
    }
}

/// The upstream's response head: hop-by-hop headers removed, the target's filters set up. A
/// body that declares more than the target lets through is refused before any of it is sent.
fn response(rq: &mut Request, head: send::Upstream) -> Result<(Response<Body>, Chain), Refusal> {
    let head = match head {
        send::Upstream::Plain(head) => head,
        send::Upstream::Switched(head) => {
            if let Some(switch) = rq.switch
                && switch::accepted(switch, head.status(), head.headers().get(header::UPGRADE))
            {
                return Ok((switched(rq, switch, head), Chain::default()));
            }
            head
        }
    };
    let (mut parts, body) = head.into_parts();
    // Sluice strips `Upgrade` unless the policy allowed a switch, and the HTTP/1.1 clients
    // skip other 1xx heads (Sluice's own refuses a 101), so one here is an upstream
    // switching protocols on its own (or to another switch than the one allowed): not
    // passed on.
    if parts.status.is_informational() {
        return Err(Refusal::upstream(
            StatusCode::BAD_GATEWAY,
            format!(
                "the upstream answered {} to a request that asked for no protocol switch",
                parts.status
            ),
        ));
    }
    strip_hop_by_hop(&mut parts.headers, true);
    let masking = mask::response(rq, &parts.headers)?;
    let filters = rq.conn.filters();
    let mut chain = Chain::default();
    if filters.may_change_body() {
        match (declared_length(&parts.headers), filters.max_response_bytes) {
            (Some(n), Some(max)) if n > max => {
                return Err(Refusal::upstream(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "the upstream's response ({n} bytes) is larger than this target's max_response_bytes ({max})"
                    ),
                ));
            }
            // A declared length within every limit cannot be changed: no filter needed.
            (Some(_), _) => {}
            (None, _) => {
                chain = filters.chain(rq.conn.target.server, Framing::of(&parts.headers));
                parts.headers.remove(header::CONTENT_LENGTH);
            }
        }
    }
    if let Some(m) = masking {
        if chain.is_empty() {
            chain = filters.chain(rq.conn.target.server, Framing::of(&parts.headers));
        }
        // Before the other filters: max_response_bytes then counts and cuts what the
        // client gets. Masking changes lengths, so the declared one cannot stay.
        chain.push_first(m);
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    if let Some(cred) = &rq.credential {
        mask_echoes(&mut parts.headers, &mut chain, cred);
        mask_reason(&mut parts.extensions, cred.key.secret().expose());
    }
    Ok((Response::from_parts(parts, body), chain))
}

/// The key this request went out with, echoed back, is masked in the response's headers and
/// body. The mask keeps the key's length, so a declared `Content-Length` stays true and a
/// body whose length no other filter changes keeps it.
fn mask_echoes(headers: &mut http::HeaderMap, chain: &mut Chain, cred: &context::Credential) {
    let key = cred.key.secret().expose();
    for v in headers.values_mut() {
        if let Some(masked) = crate::filter::mask_value(key, v.as_bytes())
            && let Ok(m) = header::HeaderValue::from_bytes(&masked)
        {
            *v = m;
        }
    }
    // First: the filters after it (max_response_bytes) then count and cut what the client
    // gets, and a cut never loses bytes the mask held back.
    chain.push_first(crate::filter::EchoMask::new(key));
}

/// A reason phrase other than the status's own reaches the client as the server wrote it
/// (both HTTP/1.1 clients keep it, `http/h1/write.rs` writes it): a key echoed there is masked
/// as in a header, or the phrase dropped if the masked one is not a reason phrase.
fn mask_reason(extensions: &mut http::Extensions, key: &[u8]) {
    let Some(masked) = extensions
        .get::<hyper::ext::ReasonPhrase>()
        .and_then(|r| crate::filter::mask_value(key, r.as_bytes()))
    else {
        return;
    };
    match hyper::ext::ReasonPhrase::try_from(masked) {
        Ok(r) => {
            extensions.insert(r);
        }
        Err(_) => {
            extensions.remove::<hyper::ext::ReasonPhrase>();
        }
    }
}

/// The upstream accepted an allowed switch: the client gets its head (with `Upgrade` and
/// `Connection` as the switch needs them) and no body; the two connections are joined once
/// that head is out (`Request::respond`).
fn switched(rq: &mut Request, switch: Switch, mut head: Response<Body>) -> Response<Body> {
    let upstream = hyper::upgrade::on(&mut head);
    let (mut parts, _) = head.into_parts();
    let upgrade = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers, false);
    // Nothing follows the head but the stream: hyper refuses a length on a CONNECT's 2xx,
    // and a 101 has no body.
    parts.headers.remove(header::CONTENT_LENGTH);
    if let Some(u) = upgrade.filter(|_| switch != Switch::Connect) {
        parts.headers.insert(header::UPGRADE, u);
        parts.headers.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("upgrade"),
        );
    }
    if let Some(client) = rq.client_upgrade.take() {
        rq.tunnel = Some(switch::Tunnel {
            switch,
            client,
            upstream,
        });
    }
    Response::from_parts(parts, respond::full(bytes::Bytes::new()))
}

/// The microseconds the agent spent on a request before its response head (without the
/// upstream's time); sent when `overhead_header` is on.
pub const OVERHEAD_HEADER: header::HeaderName =
    header::HeaderName::from_static("x-sluice-overhead-us");

/// The `Content-Length` a message declares, if it is a number.
fn declared_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

impl Request {
    /// The last step: the response's body takes over the end of the request.
    fn respond(mut self, mut response: Response<Body>, chain: Chain) -> Response<Body> {
        if let Some(spent) = self.clock.overhead()
            && self.overhead_header
        {
            response.headers_mut().insert(
                OVERHEAD_HEADER,
                header::HeaderValue::from(spent.as_micros() as u64),
            );
        }
        let tunnel = self.tunnel.take();
        let mut end: RequestEnd = self.into_end();
        end.record.set_status(response.status());
        end.record.set_response_headers(response.headers());
        if let Some(tunnel) = tunnel {
            // The record and the in-flight mark go with the tunnel: the connection's task
            // runs it once this head is out and the client's socket is handed over.
            if let Some(slot) = end.in_flight.as_ref().map(InFlight::tunnel_slot) {
                let cut = slot.cut();
                slot.set(Box::pin(tunnel.run(end, cut)));
            }
            return response;
        }
        response.map(|body| ResponseBody::new(body, chain, end).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Denial, Hold};

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, D, F: std::future::Future>(_: impl FnOnce(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every request's future is moved into place and polled through its whole state: the
    /// rare paths (gRPC and protocol switches on hyper, token verification, approval holds,
    /// new upstream connections) are boxed so that it stays small. Unboxed it was 14 KiB
    /// (and the server copied it twice per request).
    #[test]
    fn the_per_request_future_stays_small() {
        let size =
            future_size::<&'static Ctx, &'static std::sync::Arc<Conn>, _, InFlight, _>(handle);
        assert!(
            size <= 8 * 1024,
            "pipeline::handle's future is {size} bytes"
        );
    }

    /// A server that echoes the injected key in its reason phrase: the client never gets it.
    #[test]
    fn a_key_echoed_in_the_reason_phrase_is_masked() {
        let key = b"sk-canary-0123456789";
        let mut ext = http::Extensions::new();
        ext.insert(
            hyper::ext::ReasonPhrase::try_from(&b"Bad key sk-canary-0123456789 here"[..])
                .expect("reason"),
        );
        mask_reason(&mut ext, key);
        let reason = ext
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| r.as_bytes().to_vec());
        assert!(
            reason.is_none_or(|r| !r.windows(key.len()).any(|w| w == key)),
            "the key reached the client in the reason phrase"
        );
        let mut clean = http::Extensions::new();
        clean.insert(hyper::ext::ReasonPhrase::from_static(b"Fine"));
        mask_reason(&mut clean, key);
        assert_eq!(
            clean
                .get::<hyper::ext::ReasonPhrase>()
                .map(|r| r.as_bytes()),
            Some(&b"Fine"[..])
        );
    }

    #[test]
    fn only_a_permit_goes_on_and_a_hold_never_passes_without_the_approval_stage() {
        let permit = Permit {
            rules: vec!["allow-chat".into()],
            by_default: false,
        };
        assert_eq!(
            approve(Some(Decision::Permit(permit.clone()))).ok(),
            Some(permit)
        );
        let denied = approve(Some(Decision::Deny(Denial {
            rule: Some("no-pull".into()),
            reason: "pull is management".into(),
        })))
        .expect_err("deny");
        assert_eq!(
            (denied.status, denied.rule.as_deref()),
            (StatusCode::FORBIDDEN, Some("no-pull"))
        );
        let held = approve(Some(Decision::Hold(Hold {
            rule: "big-model".into(),
            reason: "needs sign-off".into(),
            approval: std::sync::Arc::new(crate::policy::approval::Approval {
                reason: "needs sign-off".into(),
                users: vec!["alice".into()],
                groups: Vec::new(),
                require: crate::policy::approval::Require::Any,
                justification_header: None,
                justification_required: false,
                timeout: std::time::Duration::from_secs(60),
                grant: None,
            }),
        })))
        .expect_err("hold is refused");
        assert_eq!(held.status, StatusCode::FORBIDDEN);
        assert!(held.message.contains("approval"), "{}", held.message);
        assert_eq!(
            approve(None).expect_err("no decision").status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
