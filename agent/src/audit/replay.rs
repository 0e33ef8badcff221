//! `sluice audit replay ID`: a recorded exchange printed as it happened (the response's
//! chunks re-emitted at their recorded pace, `--speed` times faster), or its request sent
//! again to another server (`--to`), to reproduce an incident.
//!
//! What is replayed is what was recorded: bodies after masking (a masked secret stays
//! masked), headers without their credentials (those headers are not sent at all).
use std::{
    io::Write,
    time::{Duration, Instant, UNIX_EPOCH},
};

use super::{Exchange, entry::REMOVED};

/// When each response chunk is due, after the replay's start: its recorded offset from the
/// moment the request went upstream (its body entry's offset; the request's first byte
/// when no body was recorded), divided by `speed`. `speed <= 0` means no waiting.
pub fn schedule(x: &Exchange, speed: f64) -> Vec<Duration> {
    let zero = x.request.first().map_or(0, |b| b.t_us);
    x.response
        .iter()
        .map(|c| {
            if speed <= 0.0 || !speed.is_finite() {
                return Duration::ZERO;
            }
            Duration::from_secs_f64(c.t_us.saturating_sub(zero) as f64 / 1e6 / speed)
        })
        .collect()
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("output closed: {0}")]
    Output(#[from] std::io::Error),
    #[error("{0}")]
    Resend(String),
}

/// Prints the exchange: the request's head and body, the response's head, then its body
/// chunk by chunk at the recorded pace (waiting on this thread: a command, not the agent).
pub fn print(x: &Exchange, speed: f64, out: &mut impl Write) -> Result<(), ReplayError> {
    let Some(e) = x.entry() else {
        return Ok(());
    };
    let when = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(e.unix_ms));
    writeln!(
        out,
        "# request {} at {when}: target {} ({}), {} by {}, decision {}{}",
        e.id,
        e.target,
        e.server,
        e.workload.comm,
        e.who(),
        e.decision,
        if e.rules.is_empty() {
            String::new()
        } else {
            format!(" [{}]", e.rules.join(","))
        }
    )?;
    if let Some(o) = &x.open {
        writeln!(out, "> {} {}", o.method, o.path)?;
        for (k, v) in &o.headers {
            writeln!(out, "> {k}: {v}")?;
        }
    }
    writeln!(out, ">")?;
    let body = x.request_body();
    out.write_all(&body)?;
    if !body.is_empty() && !body.ends_with(b"\n") {
        writeln!(out)?;
    }
    let note = e.body.as_ref();
    if note.is_some_and(|n| n.request_truncated) {
        writeln!(out, "# (request body truncated at max_body_bytes)")?;
    }
    if note.is_some_and(|n| n.request_unread) {
        writeln!(
            out,
            "# (request body streamed through unread: not recorded)"
        )?;
    }
    if note.is_none() && x.last.is_some() {
        writeln!(
            out,
            "# (no bodies recorded: the store's or the target's level was below full)"
        )?;
    }
    if let Some(l) = &x.last {
        writeln!(
            out,
            "< {}",
            l.status.map_or("-".to_string(), |s| s.to_string())
        )?;
        for (k, v) in &l.headers {
            writeln!(out, "< {k}: {v}")?;
        }
    }
    writeln!(out, "<")?;
    out.flush()?;
    let due = schedule(x, speed);
    let start = Instant::now();
    for (c, at) in x.response.iter().zip(due) {
        if let Some(wait) = at.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        out.write_all(&c.data())?;
        out.flush()?;
    }
    let end = match (&x.last, note) {
        (Some(l), Some(n)) => format!(
            "\n# end: {} chunk(s), {} byte(s) recorded{}{}; outcome {}",
            n.response_chunks,
            n.response_bytes,
            if n.response_truncated {
                ", truncated at max_body_bytes"
            } else {
                ""
            },
            if n.dropped > 0 {
                format!(
                    ", {} piece(s) dropped (the store's writer was behind)",
                    n.dropped
                )
            } else {
                String::new()
            },
            l.outcome.as_deref().unwrap_or("-")
        ),
        (Some(l), None) => format!("\n# end: outcome {}", l.outcome.as_deref().unwrap_or("-")),
        (None, _) => {
            "\n# end: no final record (the agent stopped before the request ended)".to_string()
        }
    };
    writeln!(out, "{end}")?;
    out.flush()?;
    Ok(())
}

/// Headers never sent again: framing and the connection's own (set for the new request),
/// and any whose value was not recorded.
fn resent(name: &str, value: &str) -> bool {
    const HOP: &[&str] = &[
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "proxy-connection",
        "proxy-authorization",
    ];
    !HOP.contains(&name) && value != REMOVED && value != "[binary]"
}

/// The request as it is sent again: method, `prefix` + recorded path, recorded headers
/// (without credentials), the recorded body.
pub fn request(
    x: &Exchange,
    uri: &http::Uri,
) -> Result<http::Request<http_body_util::Full<bytes::Bytes>>, ReplayError> {
    let o = x
        .open
        .as_ref()
        .or(x.last.as_ref())
        .ok_or_else(|| ReplayError::Resend("the request has no record to send again".into()))?;
    let authority = uri
        .authority()
        .ok_or_else(|| ReplayError::Resend(format!("{uri}: no host:port")))?;
    let prefix = uri.path().trim_end_matches('/');
    let path = format!("{prefix}{}", o.path);
    let body = bytes::Bytes::from(x.request_body());
    let mut b = http::Request::builder()
        .method(o.method.as_ref())
        .uri(path)
        .header(http::header::HOST, authority.as_str());
    for (k, v) in o.headers.iter().filter(|(k, v)| resent(k, v)) {
        b = b.header(k.as_ref(), v.as_ref());
    }
    if !body.is_empty() || matches!(o.method.as_ref(), "POST" | "PUT" | "PATCH") {
        b = b.header(http::header::CONTENT_LENGTH, body.len());
    }
    b.body(http_body_util::Full::new(body))
        .map_err(|e| ReplayError::Resend(format!("the recorded request cannot be rebuilt: {e}")))
}

/// Sends the recorded request to `uri` (`http://host:port[/prefix]`) over HTTP/1.1 and
/// prints the new response's head and body as they arrive.
pub fn resend(x: &Exchange, uri: &http::Uri, out: &mut impl Write) -> Result<(), ReplayError> {
    if uri.scheme_str() != Some("http") {
        return Err(ReplayError::Resend(format!(
            "{uri}: --to takes an http:// URL (a test server or a local endpoint)"
        )));
    }
    if x.entry()
        .and_then(|e| e.body.as_ref())
        .is_some_and(|n| n.request_truncated || n.request_unread)
    {
        eprintln!(
            "sluice: warning: the request body was not recorded whole; sending what was recorded"
        );
    }
    let req = request(x, uri)?;
    let host = uri.host().unwrap_or_default().to_string();
    let port = uri.port_u16().unwrap_or(80);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ReplayError::Resend(format!("cannot start a runtime: {e}")))?;
    rt.block_on(async move {
        use http_body_util::BodyExt as _;
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            ReplayError::Resend(format!("{what} {host}:{port}: {e}"))
        };
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| fail("cannot connect to", &e))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| fail("handshake with", &e))?;
        let driver = tokio::spawn(conn);
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| fail("no response from", &e))?;
        writeln!(out, "< {}", resp.status().as_u16())?;
        for (k, v) in resp.headers() {
            writeln!(out, "< {k}: {}", String::from_utf8_lossy(v.as_bytes()))?;
        }
        writeln!(out, "<")?;
        out.flush()?;
        let mut body = resp.into_body();
        while let Some(f) = body.frame().await {
            let f = f.map_err(|e| fail("response body from", &e))?;
            if let Some(d) = f.data_ref() {
                out.write_all(d)?;
                out.flush()?;
            }
        }
        driver.abort();
        Ok(())
    })
}
