//! Hostile requests as raw bytes through interception, checked case by case: the status the
//! client gets and whether anything reached the server. Shared by the hostile-input suites
//! (tests/tests/adversarial.rs, hostile_more.rs).
use crate::{Agent, TestCgroup, servers::Server};

/// An HTTP/1.1 request line, `Host`, `Connection: close`, the extra header lines, a
/// `Content-Length` for the body, then the body.
pub fn request(method: &str, target: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: models\r\nConnection: close\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// The status of the last response in `response` (an interim `100 Continue` comes first);
/// 0 when there is none.
pub fn status(response: &str) -> u16 {
    let last = response
        .rfind("HTTP/1.1 ")
        .map_or(response, |i| &response[i..]);
    last.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// "METHOD /path" of every request the server received.
pub fn seen(server: &Server) -> Vec<String> {
    server
        .seen
        .requests
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default()
}

pub struct Case {
    pub what: &'static str,
    pub bytes: Vec<u8>,
    /// The status the client must get (0: the connection is closed with no response).
    pub status: u16,
    /// Whether the request may reach the server.
    pub reaches: bool,
}

pub fn case(what: &'static str, bytes: Vec<u8>, status: u16, reaches: bool) -> Case {
    Case {
        what,
        bytes,
        status,
        reaches,
    }
}

/// Sends every case from inside `cg` (waiting up to `silence_secs` for each answer) and
/// reports all that failed, not only the first; the agent must still answer afterwards.
pub fn check_all(
    cg: &TestCgroup,
    vip: &str,
    server: &Server,
    agent: &Agent,
    cases: &[Case],
    silence_secs: u32,
) {
    let mut failed = Vec::new();
    for c in cases {
        let before = seen(server).len();
        let resp = crate::send_raw(cg, vip, &c.bytes, silence_secs);
        let reached = seen(server).len() > before;
        if status(&resp) != c.status || reached != c.reaches {
            failed.push(format!(
                "{}: want {} (reaches: {}), got {} (reaches: {reached}; server saw {:?}):\n{resp}",
                c.what,
                c.status,
                c.reaches,
                status(&resp),
                seen(server).get(before..).unwrap_or_default(),
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n{}\nagent log:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n---\n"),
        agent.log_text()
    );
    agent.status().expect("agent still answers");
}
