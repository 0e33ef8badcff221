//! End-to-end tests of response masking through real interception: unmodified SDK clients
//! (OpenAI, Anthropic) and curl inside the test cgroup, the test model server streaming
//! back what it was asked (an echo of the prompt, split into four-character deltas so a
//! secret crosses events). Masking rules for the response direction only, so the upstream
//! sees the secrets and the tests see what Sluice did to its answer. Needs root.
use serde_json::Value;
use sluice_tests::{
    Agent, AgentSpec, TempDir, TestCgroup, client_script, curl, log_events, require_root, run_ok,
    servers, virtual_ip, wait_log_events,
};

const AWS_KEY: &str = "AKIAQ3EGRSZ7XN5TB2LP";
const EMAIL: &str = "jane.doe@example.com";
const PROMPT: &str = "key AKIAQ3EGRSZ7XN5TB2LP and mail jane.doe@example.com please";

const PACK: &str = r#"apiVersion: sluice.dev/v1alpha1
kind: PolicyPack
metadata: {name: masking-response-e2e}
spec:
  rules:
    - id: allow-all
      action: allow
  masking:
    rules:
      - id: answers
        direction: response
        match: {targets: [openai, ollama, anthropic, strict]}
        detectors: {aws_access_key: redact, email: redact}
      - id: pseudonyms
        direction: both
        match: {targets: [pseudo]}
        detectors: {email: pseudonym}
      - id: everything
        direction: response
        match: {targets: [canary]}
        detectors: {all: redact}
"#;

struct Setup {
    agent: Agent,
    cg: TestCgroup,
    server: servers::Server,
    /// Target name → virtual address.
    vips: Vec<(&'static str, String)>,
    _dir: TempDir,
}

impl Setup {
    fn vip(&self, target: &str) -> &str {
        self.vips
            .iter()
            .find(|(t, _)| *t == target)
            .map(|(_, v)| v.as_str())
            .expect("target")
    }

    /// The last record of a request on `target`, once `n` records exist.
    fn record(&self, n: usize, target: &str) -> Value {
        wait_log_events(&self.agent, "request", n);
        log_events(&self.agent, "request")
            .into_iter()
            .rev()
            .find(|r| r["target_name"] == target)
            .unwrap_or_else(|| panic!("no record of {target}: {}", self.agent.log_text()))
    }

    fn no_value_logged(&self) {
        let log = self.agent.log_text();
        for v in [AWS_KEY, EMAIL] {
            assert!(!log.contains(v), "{v} appears in the agent's log");
        }
    }
}

fn setup(tag: &str) -> Setup {
    setup_with(tag, "")
}

/// `setup` with more top-level agent configuration (`extra`, one key per line).
fn setup_with(tag: &str, extra: &str) -> Setup {
    let server = servers::http("127.0.0.1:0");
    let dir = TempDir::new(tag);
    let pack = dir.path().join("masking");
    std::fs::create_dir_all(&pack).expect("pack dir");
    std::fs::write(pack.join("pack.yaml"), PACK).expect("write pack");
    let cg = TestCgroup::new(tag);
    let targets = [
        ("openai", "openai", ""),
        ("ollama", "ollama", ""),
        ("anthropic", "anthropic", ""),
        ("pseudo", "openai", ""),
        ("strict", "openai", ""),
        ("canary", "openai", ""),
    ];
    let vips: Vec<(&'static str, String)> =
        targets.iter().map(|(n, _, _)| (*n, virtual_ip())).collect();
    let yaml: String = targets
        .iter()
        .zip(&vips)
        .map(|((name, family, extra), (_, vip))| {
            format!(
                "  - name: {name}\n    match: \"{vip}:8000\"\n    upstream: \"{}\"\n    protocol: http\n    server: {family}\n{extra}",
                server.addr
            )
        })
        .collect();
    let agent = Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "open",
        targets: yaml,
        listen_v6: false,
        extra: format!("policies: [\"{}\"]\n{extra}", pack.display()),
    });
    Setup {
        agent,
        cg,
        server,
        vips,
        _dir: dir,
    }
}

fn openai(s: &Setup, target: &str, model: &str, mode: &str, release: bool) -> Value {
    let mut cmd = s.cg.command("python3");
    cmd.env("PROMPT", PROMPT)
        .arg(client_script("openai_chat.py"))
        .args([
            format!("http://{}:8000/v1", s.vip(target)),
            model.to_string(),
            mode.to_string(),
        ]);
    if release {
        cmd.arg(format!("http://{}/release", s.server.addr));
    }
    serde_json::from_str(run_ok(&mut cmd).trim()).expect("openai_chat.py json")
}

#[test]
#[ignore = "end-to-end: needs root, cgroup v2 and bpffs"]
fn an_openai_stream_reaches_the_sdk_masked_event_by_event() {
    require_root();
    let s = setup("mask-resp-openai");
    // The server holds the stream after its first event until the client has read it: this
    // finishes only if masking held no event back beyond what it needed.
    let r = openai(&s, "openai", "gated-split", "stream", true);
    assert_eq!(r["ok"], true, "{r}\n{}", s.agent.log_text());
    let text = r["text"].as_str().expect("text");
    assert_eq!(
        text, "echo: key [REDACTED:aws_access_key] and mail [REDACTED:email] please",
        "{r}"
    );
    // Every event still arrives as its own event: "echo:", " ", one per four characters of
    // the prompt, and the finish event (with no content), as the server sent them.
    let sent = 2 + PROMPT.chars().count().div_ceil(4) + 1;
    assert_eq!(r["chunks"].as_u64(), Some(sent as u64), "{r}");
    let rec = s.record(1, "openai");
    assert_eq!(rec["outcome"], "complete", "{rec}");
    let v = &rec["mask_response"];
    assert_eq!(v["verdict"], "masked", "{rec}");
    assert_eq!(v["counts"]["aws_access_key"], 1, "{rec}");
    assert_eq!(v["counts"]["email"], 1, "{rec}");
    assert_eq!(rec["mask_request"]["verdict"], "off", "{rec}");

    // Not streamed: the JSON body's string is masked, the JSON stays valid for the SDK.
    let r = openai(&s, "openai", "test-model", "plain", false);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        r["text"],
        "echo: key [REDACTED:aws_access_key] and mail [REDACTED:email] please"
    );
    s.no_value_logged();
}

#[test]
#[ignore = "end-to-end: needs root, cgroup v2 and bpffs"]
fn ollama_ndjson_and_anthropic_sse_streams_are_masked_across_deltas() {
    require_root();
    let s = setup("mask-resp-streams");
    // Ollama: curl, NDJSON, the secret split over lines.
    let body = serde_json::json!({
        "model": "llama-split", "stream": true,
        "messages": [{"role": "user", "content": PROMPT}]
    })
    .to_string();
    let url = format!("http://{}:8000/api/chat", s.vip("ollama"));
    let out = curl(&s.cg, &["-N", "--data-binary", &body, &url]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} in {text}")))
        .collect();
    // Every line sent arrives as its own line. The answer is shorter than the masker's
    // hold-back, so its text is released at the end; the server's last line has no
    // `message` to carry it, so it comes in one added line just before that one.
    let sent = 2 + PROMPT.chars().count().div_ceil(4) + 1;
    assert_eq!(lines.len(), sent + 1, "{text}");
    let answer: String = lines
        .iter()
        .filter_map(|l| l["message"]["content"].as_str())
        .collect();
    assert_eq!(
        answer,
        "echo: key [REDACTED:aws_access_key] and mail [REDACTED:email] please"
    );
    assert_eq!(
        lines.last().map(|l| l["done"].clone()),
        Some(Value::Bool(true))
    );
    let rec = s.record(1, "ollama");
    assert_eq!(rec["mask_response"]["verdict"], "masked", "{rec}");

    // Anthropic: the unmodified SDK reads the masked deltas and every event type.
    let mut cmd = s.cg.command("python3");
    cmd.env("PROMPT", PROMPT)
        .arg(client_script("anthropic_chat.py"))
        .args([
            format!("http://{}:8000", s.vip("anthropic")),
            "claude-split".to_string(),
            "stream".to_string(),
        ]);
    let r: Value = serde_json::from_str(run_ok(&mut cmd).trim()).expect("anthropic json");
    assert_eq!(r["ok"], true, "{r}\n{}", s.agent.log_text());
    assert_eq!(
        r["text"], "echo: key [REDACTED:aws_access_key] and mail [REDACTED:email] please",
        "{r}"
    );
    // Every delta sent, plus one: `content_block_stop` has no text field, so the text still
    // held back at the block's end goes in one added delta just before it.
    assert_eq!(
        r["deltas"].as_u64(),
        Some((2 + PROMPT.chars().count().div_ceil(4) + 1) as u64),
        "{r}"
    );
    let kinds: Vec<&str> = r["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for k in [
        "message_start",
        "content_block_start",
        "content_block_stop",
        "message_stop",
    ] {
        assert!(kinds.contains(&k), "{k} missing: {r}");
    }
    let rec = s.record(2, "anthropic");
    assert_eq!(rec["mask_response"]["counts"]["aws_access_key"], 1, "{rec}");
    s.no_value_logged();
}

#[test]
#[ignore = "end-to-end: needs root, cgroup v2 and bpffs"]
fn a_pseudonym_round_trips_and_a_compressed_answer_is_refused() {
    require_root();
    let s = setup("mask-resp-pseudo");
    // The e-mail is replaced before the upstream sees it; the answer echoing the pseudonym
    // gets the original back for this caller.
    for mode in ["plain", "stream"] {
        let r = openai(&s, "pseudo", "test-split", mode, false);
        assert_eq!(r["ok"], true, "{mode}: {r}\n{}", s.agent.log_text());
        assert_eq!(r["text"], format!("echo: {PROMPT}"), "{mode}: {r}");
    }
    let seen = s.server.bodies();
    assert!(!seen.is_empty(), "the upstream was reached");
    for body in &seen {
        let body = String::from_utf8_lossy(body);
        assert!(!body.contains(EMAIL), "the upstream saw the e-mail: {body}");
        assert!(
            body.contains("[email:"),
            "the upstream saw a pseudonym: {body}"
        );
    }
    let rec = s.record(2, "pseudo");
    assert_eq!(rec["mask_request"]["counts"]["email"], 1, "{rec}");

    // A response the upstream compresses anyway cannot be scanned: refused, and said so.
    let r = openai(&s, "strict", "gzipped", "plain", false);
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["status"], 502, "{r}");
    let msg = r["message"].to_string();
    assert!(
        msg.contains("compressed") && msg.contains("on_unscannable: refuse"),
        "{r}"
    );
    let rec = s.record(3, "strict");
    assert_eq!(rec["mask_response"]["verdict"], "unscanned", "{rec}");
    assert_eq!(rec["mask_response"]["reason"], "compressed", "{rec}");
}

#[test]
#[ignore = "end-to-end: needs root, cgroup v2 and bpffs"]
fn a_canary_secret_is_in_no_log_line_metric_or_record() {
    require_root();
    let metrics_port = sluice_tests::free_port();
    let dir = TempDir::new("mask-canary-audit");
    let store = dir.path().join("audit");
    let mut s = setup_with(
        "mask-resp-canary",
        &format!(
            "metrics_listen: 127.0.0.1:{metrics_port}\naudit:\n  dir: {}\n  level: metadata\n  durability: group\n  group_commit_ms: 5\n",
            store.display()
        ),
    );
    // An OpenAI-shaped key, unique to this run; the prompt carries it and the upstream
    // echoes it back (plain and streamed, split over events), so it crosses the agent in
    // both directions.
    let canary = format!(
        "sk-proj-Cn4ry{}",
        sluice_tests::unique("x").replace(|c: char| !c.is_ascii_alphanumeric(), "")
    );
    let url = format!("http://{}:8000/v1/chat/completions", s.vip("canary"));
    for stream in [false, true] {
        let body = serde_json::json!({
            "model": "canary-split", "stream": stream,
            "messages": [{"role": "user", "content": format!("my key is {canary} ok")}]
        })
        .to_string();
        let out = curl(
            &s.cg,
            &[
                "-sN",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &body,
                &url,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            !text.contains(&canary),
            "the answer carries the canary: {text}"
        );
        assert!(
            text.contains("[REDACTED:openai_key]"),
            "stream {stream}: {text}"
        );
    }
    let seen = s.server.bodies();
    assert!(
        seen.iter()
            .any(|b| String::from_utf8_lossy(b).contains(&canary)),
        "the upstream got the canary in the prompt"
    );
    let rec = s.record(2, "canary");
    assert_eq!(rec["mask_response"]["verdict"], "masked", "{rec}");
    assert_eq!(rec["mask_response"]["counts"]["openai_key"], 1, "{rec}");

    let scraped = sluice_tests::scrape_metrics(metrics_port);
    assert!(scraped.contains("sluice_"), "{scraped}");
    assert!(!scraped.contains(&canary), "the canary is in /metrics");
    let status = s.agent.status().expect("status").to_string();
    assert!(!status.contains(&canary), "the canary is in the status");
    // Stopped: every record is in the store's files.
    s.agent.stop();
    let log = s.agent.log_text();
    assert!(!log.is_empty());
    assert!(
        !log.contains(&canary),
        "the canary is in the agent's log:\n{log}"
    );
    let mut files = 0;
    let mut stack = vec![store.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("store dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).expect("read store file");
                files += 1;
                assert!(
                    !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
                    "the canary is in {}",
                    p.display()
                );
            }
        }
    }
    assert!(files > 0, "the store holds files");
}
