//! End-to-end: the `/metrics` endpoint and the overhead header, through real interception.
//! The series exist from the start, change as requests flow and policies reload, and never
//! carry a credential, a model name or body bytes. Needs root.
use std::{
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use serde_json::json;
use sluice_tests::{
    Agent, AgentSpec, TempDir, TestCgroup, curl, free_port, policies_dir, require_root, servers,
    virtual_ip,
};

/// GET `path` from the metrics endpoint (the test process is outside the cgroup: direct).
fn scrape(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint answers");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The value of the series whose line starts with `series` (labels included), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Scrapes until `ok` holds (records are counted by the writer task, just after the
/// response), or gives up after 10 s and returns the last scrape.
fn scrape_until(port: u16, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = scrape(port, "/metrics");
        if ok(&text) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The agent with one OpenAI target `models` on `vip:8000` in front of `server`.
fn start(cg: &TestCgroup, vip: &str, server: &servers::Server, extra: &str) -> Agent {
    Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "open",
        targets: format!(
            "  - name: models\n    match: \"{vip}:8000\"\n    upstream: \"{}\"\n    protocol: http\n    server: openai\n",
            server.addr
        ),
        listen_v6: false,
        extra: extra.to_string(),
    })
}

const ALLOWED: &str = r#"sluice_requests_total{target="models",server="openai",operation="openai.chat.completions",decision="allow",rule="openai-allow-use"}"#;
const DENIED: &str = r#"sluice_requests_total{target="models",server="openai",operation="openai.models.delete",decision="deny",rule="openai-deny-management"}"#;

#[test]
#[ignore = "end-to-end: needs root, cgroup v2 and the eBPF build"]
fn metrics_count_requests_stages_and_reloads_and_never_carry_secrets() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("metrics");
    let policy_dir = TempDir::new("metrics-policy");
    let pack = policy_dir.path().join("pack.yaml");
    let pack_text =
        fs::read_to_string(policies_dir().join("openai-safe/pack.yaml")).expect("openai-safe pack");
    fs::write(&pack, &pack_text).expect("write pack");
    let port = free_port();
    let agent = start(
        &cg,
        &vip,
        &server,
        &format!(
            "policies: [\"{}\"]\nmetrics_listen: 127.0.0.1:{port}\noverhead_header: true\n",
            pack.display()
        ),
    );

    // Before any request: every stage's histogram exists (at zero), no request series yet.
    let (status, text) = scrape(port, "/metrics");
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        value(
            &text,
            r#"sluice_stage_duration_seconds_count{stage="decide"}"#
        ),
        Some(0.0),
        "{text}"
    );
    assert!(!text.contains("sluice_requests_total{"), "{text}");
    assert_eq!(scrape(port, "/other").0, 404);

    // An allowed chat that carries a credential, a model name and body bytes to look for.
    let body = json!({
        "model": "canary-model-7731",
        "messages": [{"role": "user", "content": "BODY-CANARY-4242"}]
    })
    .to_string();
    let url = format!("http://{vip}:8000/v1/chat/completions");
    let out = curl(
        &cg,
        &[
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            "Authorization: Bearer sk-canary-SECRET-9911",
            "-H",
            "Content-Type: application/json",
            "--data",
            &body,
            &url,
        ],
    );
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let overhead: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("x-sluice-overhead-us:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no x-sluice-overhead-us header: {head}"));
    assert!(overhead > 0, "{head}");

    // A denied one: refused in the server's shape, counted with its rule and as a refusal.
    let out = curl(
        &cg,
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "DELETE",
            &format!("http://{vip}:8000/v1/models/canary-model-7731"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");

    let text = scrape_until(port, |t| {
        value(t, ALLOWED) == Some(1.0) && value(t, DENIED) == Some(1.0)
    });
    assert_eq!(value(&text, ALLOWED), Some(1.0), "{text}");
    assert_eq!(value(&text, DENIED), Some(1.0), "{text}");
    assert_eq!(
        value(
            &text,
            r#"sluice_refusals_total{reason="sluice_policy_denied"}"#
        ),
        Some(1.0),
        "{text}"
    );
    for (stage, n) in [
        ("admit", 2.0),
        ("decide", 2.0),
        ("upstream_wait", 1.0),
        ("overhead", 2.0),
    ] {
        assert_eq!(
            value(
                &text,
                &format!(r#"sluice_stage_duration_seconds_count{{stage="{stage}"}}"#)
            ),
            Some(n),
            "stage {stage}: {text}"
        );
    }
    let up = value(
        &text,
        r#"sluice_transferred_bytes_total{target="models",direction="up"}"#,
    );
    assert_eq!(up, Some(body.len() as f64), "{text}");
    assert!(
        value(
            &text,
            r#"sluice_transferred_bytes_total{target="models",direction="down"}"#
        )
        .is_some_and(|n| n > 0.0),
        "{text}"
    );
    // Both curl connections have closed: the gauge went up and back down.
    let conns = scrape_until(port, |t| {
        value(
            t,
            r#"sluice_active_connections{target="models",path="http"}"#,
        ) == Some(0.0)
    });
    assert_eq!(
        value(
            &conns,
            r#"sluice_active_connections{target="models",path="http"}"#
        ),
        Some(0.0),
        "{conns}"
    );

    // Reloads: a good edit is applied, a broken one is kept out; both are counted.
    fs::write(&pack, format!("{pack_text}\n# edited\n")).expect("edit pack");
    let text = scrape_until(port, |t| {
        value(t, r#"sluice_policy_reloads_total{result="ok"}"#).is_some()
    });
    assert_eq!(
        value(&text, r#"sluice_policy_reloads_total{result="ok"}"#),
        Some(1.0),
        "{text}"
    );
    fs::write(&pack, "spec: [unclosed").expect("break pack");
    let text = scrape_until(port, |t| {
        value(t, r#"sluice_policy_reloads_total{result="error"}"#).is_some()
    });
    assert_eq!(
        value(&text, r#"sluice_policy_reloads_total{result="error"}"#),
        Some(1.0),
        "{text}"
    );

    for secret in [
        "sk-canary",
        "SECRET-9911",
        "canary-model",
        "BODY-CANARY",
        "Bearer",
    ] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into /metrics:\n{text}"
        );
    }
    drop(agent);
}

#[test]
#[ignore = "end-to-end: needs root, cgroup v2 and the eBPF build"]
fn without_configuration_there_is_no_endpoint_and_no_header() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("metrics-off");
    let agent = start(
        &cg,
        &vip,
        &server,
        &format!(
            "policies: [\"{}\"]\n",
            policies_dir().join("openai-safe").display()
        ),
    );
    let out = curl(
        &cg,
        &[
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("http://{vip}:8000/v1/models"),
        ],
    );
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("x-sluice-overhead-us"), "{head}");
    assert!(
        !agent.log_text().contains("serving /metrics"),
        "metrics are off by default"
    );
    drop(agent);
}
