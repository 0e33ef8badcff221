//! Announces each held request to a webhook (Slack-compatible JSON: `text`, `blocks`, and
//! the approval as `metadata.event_payload`), off the request path: the approve stage puts
//! the approval on a bounded queue and this task posts it, retrying with exponential
//! backoff. A delivery that fails for good is logged and shown in `sluice approvals list`;
//! it never changes what happens to the request.
use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::{
    settings::Webhook,
    store::{Delivery, Info, Store},
};

/// Deliveries in flight at once; the rest wait in the queue.
const CONCURRENT: usize = 8;
/// First pause between attempts; doubled each time, at most `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Bytes of a webhook's answer read (and thrown away).
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0}")]
    Url(String),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("answered {0}")]
    Status(http::StatusCode),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Posts every queued approval until `stop`.
pub async fn run(
    mut rx: mpsc::Receiver<Info>,
    hook: Webhook,
    store: Arc<Store>,
    mark: u32,
    stop: CancellationToken,
) {
    let tls = if hook.url.starts_with("https://") {
        match crate::tls::client_config(None, None, &[b"http/1.1"]) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                tracing::error!(error = %e, "approval webhook: no TLS roots; https deliveries will fail");
                None
            }
        }
    } else {
        None
    };
    let hook = Arc::new(hook);
    let slots = Arc::new(Semaphore::new(CONCURRENT));
    loop {
        let info = tokio::select! {
            () = stop.cancelled() => return,
            i = rx.recv() => match i { Some(i) => i, None => return },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (hook, store, tls, stop) = (hook.clone(), store.clone(), tls.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = deliver(&hook, &store, &info, mark, tls) => {}
            }
            drop(slot);
        });
    }
}

async fn deliver(
    hook: &Webhook,
    store: &Store,
    info: &Info,
    mark: u32,
    tls: Option<Arc<rustls::ClientConfig>>,
) {
    let body = Bytes::from(payload(info).to_string());
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let tried = match tokio::time::timeout(
            hook.timeout,
            post(&hook.url, body.clone(), mark, hook.timeout, tls.clone()),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(hook.timeout)),
        };
        match tried {
            Ok(()) => {
                store.set_delivery(
                    &info.id,
                    Delivery {
                        state: "delivered".into(),
                        attempts,
                        last_error: None,
                    },
                );
                return;
            }
            Err(e) => {
                let last = attempts > hook.retries;
                store.set_delivery(
                    &info.id,
                    Delivery {
                        state: if last { "failed" } else { "sending" }.into(),
                        attempts,
                        last_error: Some(e.to_string()),
                    },
                );
                if last {
                    tracing::warn!(approval = %info.id, attempts, error = %e, "approval webhook failed; approvers were not notified by it");
                    return;
                }
                tracing::info!(approval = %info.id, attempts, error = %e, retry_in_ms = backoff.as_millis() as u64, "approval webhook attempt failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn post(
    url: &str,
    body: Bytes,
    mark: u32,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(), Error> {
    super::settings::check_url(url).map_err(Error::Url)?;
    let uri: http::Uri = url.parse().map_err(|_| Error::Url(url.to_string()))?;
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let (stream, _) = crate::upstream::dial_host(host, port, mark, timeout, None)
        .await
        .map_err(Error::Connect)?;
    let authority = uri.authority().map_or("", |a| a.as_str()).to_string();
    let req = http::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "sluice")
        .body(Full::new(body))
        .map_err(|e| Error::Url(e.to_string()))?;
    if https {
        let cfg = tls.ok_or_else(|| Error::Tls("no TLS roots on this host".into()))?;
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| Error::Tls(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, stream)
            .await
            .map_err(|e| Error::Tls(crate::tls::describe(&e)))?;
        exchange(TokioIo::new(stream), req).await
    } else {
        exchange(TokioIo::new(stream), req).await
    }
}

async fn exchange<T>(io: T, req: http::Request<Full<Bytes>>) -> Result<(), Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let resp = tx.send_request(req).await?;
        let status = resp.status();
        // Read (bounded) so the server sees its answer taken; the content is not used.
        let _ = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await;
        if status.is_success() {
            Ok(())
        } else {
            Err(Error::Status(status))
        }
    }
    .await;
    driver.abort();
    result
}

/// The announcement: readable text for a chat channel, and the approval itself for
/// anything that wants to act on it.
pub fn payload(i: &Info) -> serde_json::Value {
    let r = &i.requester;
    let who = match (&r.subject, &r.user) {
        (Some(s), _) => format!("subject {s} (uid {}, {})", r.uid, r.comm),
        (None, Some(u)) => format!("{u} (uid {}, {})", r.uid, r.comm),
        (None, None) => format!("uid {} ({})", r.uid, r.comm),
    };
    // What the client controls (path, model, justification, excerpt, process and subject
    // names) is escaped: Slack reads `<!channel>` or `<https://x|text>` in mrkdwn as a
    // mention or a disguised link, a way to phish the approvers.
    let who = slack(&who);
    let model = slack(i.model.as_deref().unwrap_or("-"));
    let path = slack(&i.path);
    let justification = slack(i.justification.as_deref().unwrap_or("-"));
    let excerpt = slack(&i.excerpt);
    let approve = format!("sluice approvals approve {}", i.id);
    let deny = format!("sluice approvals deny {} --reason \"...\"", i.id);
    let text = format!(
        "Sluice is holding a request for approval {id}: {who} → {target} {method} {path} (model {model}). Rule {rule}: {reason}. Approve: `{approve}` Deny: `{deny}`",
        id = i.id,
        target = i.target,
        method = i.method,
        rule = i.rule,
        reason = slack(&i.reason),
    );
    let field =
        |title: &str, value: &str| json!({"type": "mrkdwn", "text": format!("*{title}*\n{value}")});
    json!({
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!(
                "*Request held for approval* `{}`\n*Rule* {}: {}", i.id, i.rule, slack(&i.reason))}},
            {"type": "section", "fields": [
                field("Requester", &who),
                field("Target", &format!("{} {} {path}", i.target, i.method)),
                field("Operation", &i.operation),
                field("Model", &model),
                field("Justification", &justification),
                field("Times out", &format!("in {} s; approvers: {}", i.timeout_secs, i.approvers)),
            ]},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": format!("Excerpt (masked): {excerpt}")}
            ]},
            {"type": "section", "text": {"type": "mrkdwn", "text": format!(
                "```{approve}\n{deny}```")}},
        ],
        "metadata": {"event_type": "sluice_approval_held", "event_payload": i},
    })
}

/// Text for Slack's mrkdwn: its three control characters escaped, as Slack documents.
fn slack(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_client_controls_cannot_mention_or_link_in_slack() {
        let i: Info = serde_json::from_value(serde_json::json!({
            "id": "01J0000000000000000000000A", "created_unix_ms": 0, "rule": "r",
            "reason": "why", "approvers": "users [root]", "target": "models",
            "method": "POST", "path": "/v1/<!channel>", "operation": "inference",
            "model": "<https://evil.example|ticket>",
            "requester": {"uid": 1000, "comm": "<!here>", "groups": []},
            "justification": "see <https://evil.example|JIRA-1> & approve",
            "excerpt": "{\"x\":\"<@U123>\"}", "timeout_secs": 60, "state": "pending"
        }))
        .expect("info");
        // What Slack renders (`metadata` carries the approval as data, for programs).
        let p = payload(&i);
        let text = format!("{}{}", p["text"], p["blocks"]);
        for raw in ["<!channel>", "<!here>", "<https://evil", "<@U123>"] {
            assert!(!text.contains(raw), "{raw} reached Slack unescaped: {text}");
        }
        assert!(text.contains("&lt;!channel&gt;"), "{text}");
        assert!(text.contains("&amp; approve"), "{text}");
        assert_eq!(slack("a<b>&c"), "a&lt;b&gt;&amp;c");
    }
}
