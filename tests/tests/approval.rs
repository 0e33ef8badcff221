//! End-to-end just-in-time approval: a real agent holds requests that a `require-approval`
//! rule matches, real clients (curl, run as `nobody` inside the test cgroup) wait through
//! interception, and other processes decide with `sluice approvals` over the admin socket
//! (root) or the approvers' socket (another uid), or over the HTTP endpoint with tokens of a
//! real OpenID provider (tests/oidc). A test webhook receiver on 127.0.0.1 checks the
//! announcement and its retry. Needs root: `#[ignore]`d, run by `cargo xtask
//! test` as root.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::{
    Agent, AgentSpec, TempDir, TestCgroup, free_port, oidc::Provider, require_root, servers,
    sluice_bin, virtual_ip, wait_log_events,
};

/// The uid the held clients run as (an existing system account: nothing to create).
const NOBODY: &str = "65534";
/// The uid of an approver the rules do not name (`daemon`), allowed on the approvers'
/// socket through its group.
const DAEMON: &str = "1";

/// Masking: e-mails in prompts are redacted, AWS access keys blocked.
/// Rules: `big*` models need root's approval (grant windows up to an hour, per subject),
/// `slow*` ones time out after 2 s, `justified*` ones need a justification, `team*` ones a
/// member of group `sre` (token approvers, over HTTP); the rest pass.
fn pack(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.path().join("pack.yaml");
    std::fs::write(
        &path,
        r#"apiVersion: sluice.dev/v1alpha1
kind: PolicyPack
metadata: { name: jit }
spec:
  rules:
    - id: big-needs-approval
      description: the big model is expensive
      action: require-approval
      approval:
        approvers: { users: [root] }
        timeout: 60s
        grant: { for: 1h, scope: subject }
      match: { models: ["big*"] }
    - id: slow-times-out
      action: require-approval
      approval:
        reason: nobody watches this one
        approvers: { groups: [root] }
        timeout: 2s
      match: { models: ["slow*"] }
    - id: justified-only
      action: require-approval
      approval:
        approvers: { users: [root] }
        justification: { required: true }
        timeout: 60s
      match: { models: ["justified*"] }
    - id: team-needs-sre
      action: require-approval
      approval:
        approvers: { groups: [sre] }
        timeout: 60s
      match: { models: ["team*"] }
    - id: the-rest
      action: allow
  masking:
    rules:
      - id: mask-prompts
        direction: request
        detectors: {email: redact, aws_access_key: block}
"#,
    )
    .expect("write pack");
    path
}

struct Setup {
    agent: Agent,
    cg: TestCgroup,
    vip: String,
    server: servers::Server,
    _dir: TempDir,
}

fn setup(tag: &str, approvals: &str) -> Setup {
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new(tag);
    let dir = TempDir::new(tag);
    let pack = pack(&dir);
    let agent = Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "open",
        targets: format!(
            "  - name: models\n    match: \"{vip}:8000\"\n    upstream: \"{}\"\n    protocol: http\n    server: openai\n",
            server.addr
        ),
        listen_v6: false,
        extra: format!("policies: [\"{}\"]\n{approvals}", pack.display()),
    });
    Setup {
        agent,
        cg,
        vip,
        server,
        _dir: dir,
    }
}

/// A chat completion from curl in the test cgroup, as `nobody` unless `as_root`; prints
/// the body, then the status on its own line.
fn client(s: &Setup, model: &str, headers: &[&str], as_root: bool) -> Child {
    client_saying(s, model, "hi", headers, as_root)
}

/// `client`, with `content` as the prompt.
fn client_saying(s: &Setup, model: &str, content: &str, headers: &[&str], as_root: bool) -> Child {
    let body =
        serde_json::json!({"model": model, "messages": [{"role": "user", "content": content}]})
            .to_string();
    let mut c = if as_root {
        s.cg.command("curl")
    } else {
        let mut c = s.cg.command("setpriv");
        c.args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "curl",
        ]);
        c
    };
    c.args([
        "-sS",
        "-m",
        "90",
        "-w",
        "\n%{http_code}",
        "-H",
        "content-type: application/json",
    ]);
    for h in headers {
        c.args(["-H", h]);
    }
    c.args([
        "-d",
        &body,
        &format!("http://{}:8000/v1/chat/completions", s.vip),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("curl")
}

/// (status, body) of a finished client.
fn answer(child: Child) -> (u16, String) {
    let out = child.wait_with_output().expect("curl ran");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or(0),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

/// `sluice approvals ARGS` as root (the admin socket).
fn approvals(s: &Setup, args: &[&str]) -> Output {
    let mut all = vec!["approvals"];
    all.extend_from_slice(args);
    s.agent.sluice(&all)
}

fn listing(s: &Setup) -> Value {
    let out = approvals(s, &["list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("list json");
    v["listing"].clone()
}

/// Waits until `n` approvals are pending; returns their ids, oldest first.
fn pending(s: &Setup, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = listing(s);
        let ids: Vec<String> = l["pending"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["id"].as_str().map(str::to_string))
            .collect();
        if ids.len() >= n {
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "{n} pending approvals never appeared: {l}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn upstream_requests(s: &Setup) -> usize {
    s.server
        .seen
        .requests
        .lock()
        .map(|r| {
            r.iter()
                .filter(|x| x.contains("/v1/chat/completions"))
                .count()
        })
        .unwrap_or(0)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn records_with_approval(agent: &Agent, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r: Vec<Value> = wait_log_events(agent, "request", 0)
            .into_iter()
            .filter(|r| r.get("approval").is_some())
            .collect();
        if r.len() >= n || Instant::now() > deadline {
            return r;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The message of a held client's refusal: 403 `sluice_approval_denied` in OpenAI's shape.
fn denied(held: Child) -> String {
    let (code, body) = answer(held);
    assert_eq!(code, 403, "{body}");
    let v: Value = serde_json::from_str(&body).expect("openai error json");
    assert_eq!(v["error"]["code"], "sluice_approval_denied");
    v["error"]["message"].as_str().unwrap_or("").to_string()
}

/// (approval outcome, approved_by) of each record.
fn outcomes(records: &[Value]) -> Vec<(&str, &str)> {
    records
        .iter()
        .map(|r| {
            (
                r["approval"].as_str().unwrap_or(""),
                r["approved_by"].as_str().unwrap_or(""),
            )
        })
        .collect()
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn a_held_request_waits_for_a_person_who_approves_or_denies_it_and_never_their_own() {
    require_root();
    let dir = TempDir::new("approvers");
    let sock = dir.path().join("approvals.sock");
    let s = setup(
        "approval",
        &format!(
            "approvals:\n  socket: \"{}\"\n  socket_group: daemon\n",
            sock.display()
        ),
    );
    // Not held: passes at once.
    let (code, body) = answer(client(&s, "small", &[], false));
    assert_eq!(code, 200, "{body}");
    assert_eq!(upstream_requests(&s), 1);

    // Held: nothing reaches the upstream until root approves.
    let held = client(&s, "big-1", &[], false);
    let id = pending(&s, 1).remove(0);
    assert_eq!(id.len(), 26, "{id}");
    let l = listing(&s);
    let info = &l["pending"][0];
    assert_eq!(info["rule"], "big-needs-approval");
    assert_eq!(info["reason"], "the big model is expensive");
    assert_eq!(info["model"], "big-1");
    assert_eq!(info["requester"]["uid"], 65534);
    assert_eq!(info["requester"]["user"], "nobody");
    assert!(
        info["excerpt"].as_str().unwrap_or("").contains("big-1"),
        "{info}"
    );
    assert_eq!(upstream_requests(&s), 1, "held, not sent");

    // The approvers' socket is mode 0660 with group daemon; daemon is not an approver of
    // this rule, and a made-up or malformed id is refused clearly.
    let mode = std::fs::metadata(&sock)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(mode.ok(), Some(0o660));
    let outsider = Command::new("setpriv")
        .args([
            &format!("--reuid={DAEMON}"),
            &format!("--regid={DAEMON}"),
            "--init-groups",
        ])
        .arg(sluice_bin())
        .args(["approvals", "approve", &id, "--config"])
        .arg(&s.agent.config)
        .output()
        .expect("sluice as daemon");
    assert!(!outsider.status.success());
    assert!(
        text(&outsider).contains("daemon (uid 1) is not an approver of rule big-needs-approval"),
        "{}",
        text(&outsider)
    );
    let unknown = approvals(&s, &["approve", &"a".repeat(26)]);
    assert!(text(&unknown).contains("unknown id"), "{}", text(&unknown));
    let malformed = approvals(&s, &["approve", "nope"]);
    assert!(
        text(&malformed).contains("is not an approval id"),
        "{}",
        text(&malformed)
    );
    // nobody cannot reach either socket at all.
    let stranger = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
        ])
        .arg(sluice_bin())
        .args(["approvals", "list", "--config"])
        .arg(&s.agent.config)
        .output()
        .expect("sluice as nobody");
    assert_eq!(stranger.status.code(), Some(4), "{}", text(&stranger));

    let ok = approvals(&s, &["approve", &id]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(
        text(&ok).contains(&format!("approved {id} as root (uid 0)")),
        "{}",
        text(&ok)
    );
    let (code, body) = answer(held);
    assert_eq!(code, 200, "{body}");
    assert_eq!(upstream_requests(&s), 2);
    let again = approvals(&s, &["deny", &id, "--reason", "late"]);
    assert!(
        text(&again).contains("already finished (approved)"),
        "{}",
        text(&again)
    );

    // Deny: the client gets a 403 in OpenAI's shape naming the id and the reason.
    let held = client(&s, "big-2", &[], false);
    let id = pending(&s, 1).remove(0);
    let no = approvals(&s, &["deny", &id, "--reason", "not during the freeze"]);
    assert!(no.status.success(), "{}", text(&no));
    let msg = denied(held);
    assert!(
        msg.contains(&id) && msg.contains("not during the freeze") && msg.contains("root (uid 0)"),
        "{msg}"
    );
    assert_eq!(upstream_requests(&s), 2);

    // Self-approval: a request root makes cannot be approved by root.
    let held = client(&s, "big-3", &[], true);
    let id = pending(&s, 1).remove(0);
    let own = approvals(&s, &["approve", &id]);
    assert!(!own.status.success());
    assert!(
        text(&own).contains("nobody approves their own request"),
        "{}",
        text(&own)
    );
    let no = approvals(&s, &["deny", &id, "--reason", "own"]);
    assert!(
        text(&no).contains("nobody approves their own request"),
        "{}",
        text(&no)
    );
    // It is still pending; the client leaving ends it as cancelled.
    let mut held = held;
    let _ = held.kill();
    let _ = held.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = listing(&s);
        let cancelled = l["recent"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["id"] == id.as_str() && i["state"] == "cancelled");
        if cancelled && l["pending"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(Instant::now() < deadline, "not cancelled: {l}");
        thread::sleep(Duration::from_millis(50));
    }

    // Every decision is in the records: approved, denied, cancelled, with who and how long.
    let records = records_with_approval(&s.agent, 3);
    let outcomes = outcomes(&records);
    assert!(
        outcomes.contains(&("approved", "root (uid 0)")),
        "{records:?}"
    );
    assert!(
        outcomes.contains(&("denied", "root (uid 0)")),
        "{records:?}"
    );
    assert!(
        outcomes.iter().any(|(o, _)| *o == "cancelled"),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .all(|r| r["approval_id"].as_str().is_some_and(|i| i.len() == 26))
    );
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn timeouts_justifications_and_grant_windows() {
    require_root();
    let s = setup("approval-windows", "");
    // Nobody decides: refused after the rule's 2 s, naming the id and the reason.
    let started = Instant::now();
    let held = client(&s, "slow-1", &[], false);
    let id = pending(&s, 1).remove(0);
    let (code, body) = answer(held);
    assert_eq!(code, 403, "{body}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["error"]["code"], "sluice_approval_timeout");
    let msg = v["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains(&id)
            && msg.contains("timed out after 2s")
            && msg.contains("nobody watches this one"),
        "{msg}"
    );
    let late = approvals(&s, &["approve", &id]);
    assert!(
        text(&late).contains("already finished (timeout)"),
        "{}",
        text(&late)
    );

    // A justification is required: refused at once without one, held with one.
    let (code, body) = answer(client(&s, "justified-1", &[], false));
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("sluice_justification_required") && body.contains("x-sluice-justification"),
        "{body}"
    );
    let held = client(
        &s,
        "justified-2",
        &["x-sluice-justification: ticket OPS-42"],
        false,
    );
    let id = pending(&s, 1).remove(0);
    assert_eq!(listing(&s)["pending"][0]["justification"], "ticket OPS-42");
    assert!(approvals(&s, &["approve", &id]).status.success());
    assert_eq!(answer(held).0, 200);

    // A rule without a grant window refuses --for; one with it opens a window for the same
    // subject (uid 65534 here) that lets the next requests through, until it ends.
    let held = client(&s, "justified-3", &["x-sluice-justification: again"], false);
    let id = pending(&s, 1).remove(0);
    let refused = approvals(&s, &["approve", &id, "--for", "10m"]);
    assert!(
        text(&refused).contains("opens no grant window"),
        "{}",
        text(&refused)
    );
    assert!(
        approvals(&s, &["deny", &id, "--reason", "cleanup"])
            .status
            .success()
    );
    assert_eq!(answer(held).0, 403);

    let before = upstream_requests(&s);
    let held = client(&s, "big-window", &[], false);
    let id = pending(&s, 1).remove(0);
    let ok = approvals(&s, &["approve", &id, "--for", "4s"]);
    assert!(
        text(&ok).contains("grant window open for 4s"),
        "{}",
        text(&ok)
    );
    let opened = Instant::now();
    assert_eq!(answer(held).0, 200);
    assert_eq!(listing(&s)["grants"][0]["rule"], "big-needs-approval");
    // Within the window: passes without a new approval.
    let (code, body) = answer(client(&s, "big-window", &[], false));
    assert!(
        opened.elapsed() < Duration::from_secs(4),
        "the check ran too late to mean anything"
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(upstream_requests(&s), before + 2);
    // A root request is another subject: not covered, so held (root cannot decide its own
    // request; the client gives up, which cancels it).
    let mut other = client(&s, "big-window", &[], true);
    pending(&s, 1);
    assert!(
        opened.elapsed() < Duration::from_secs(4),
        "checked too late to mean anything"
    );
    let _ = other.kill();
    let _ = other.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listing(&s)["pending"].as_array().is_some_and(Vec::is_empty) {
        assert!(
            Instant::now() < deadline,
            "the cancelled request stayed pending"
        );
        thread::sleep(Duration::from_millis(50));
    }
    // After the window: held again.
    while opened.elapsed() < Duration::from_millis(4200) {
        thread::sleep(Duration::from_millis(100));
    }
    let held = client(&s, "big-window", &[], false);
    let id = pending(&s, 1).remove(0);
    assert!(
        approvals(&s, &["deny", &id, "--reason", "window over"])
            .status
            .success()
    );
    assert_eq!(answer(held).0, 403);
    assert_eq!(upstream_requests(&s), before + 2);
    let records = records_with_approval(&s.agent, 1);
    assert!(
        records.iter().any(|r| r["approval"] == "granted"),
        "{records:?}"
    );
    assert!(
        records.iter().any(|r| r["approval"] == "timeout"),
        "{records:?}"
    );
}

/// A webhook receiver on 127.0.0.1 that answers 500 to the first `fail_first` posts, then
/// 200; keeps every body.
fn receiver(fail_first: usize) -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
    let port = l.local_addr().expect("addr").port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    thread::spawn(move || {
        for (n, conn) in l.incoming().enumerate() {
            let Ok(mut s) = conn else { continue };
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut len = 0usize;
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            if let Ok(mut b) = seen.lock() {
                b.push(String::from_utf8_lossy(&body).into_owned());
            }
            let status = if n < fail_first {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            );
        }
    });
    (port, bodies)
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn the_webhook_announces_each_held_request_and_retries_a_failure() {
    require_root();
    let (port, bodies) = receiver(1);
    let s = setup(
        "approval-webhook",
        &format!(
            "approvals:\n  webhook: {{url: \"http://127.0.0.1:{port}/hook\", timeout_ms: 2000, retries: 3}}\n"
        ),
    );
    let held = client(
        &s,
        "big-hook",
        &["x-sluice-justification: quarterly report"],
        false,
    );
    let id = pending(&s, 1).remove(0);
    let deadline = Instant::now() + Duration::from_secs(15);
    let delivery = loop {
        let w = listing(&s)["pending"][0]["webhook"].clone();
        if w["state"] == "delivered" || Instant::now() > deadline {
            break w;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(delivery["state"], "delivered", "{delivery}");
    assert_eq!(
        delivery["attempts"], 2,
        "one failure, then delivered: {delivery}"
    );
    let posts = bodies.lock().map(|b| b.clone()).unwrap_or_default();
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert_eq!(posts[0], posts[1], "a retry sends the same announcement");
    let v: Value = serde_json::from_str(&posts[1]).expect("webhook JSON");
    let text = v["text"].as_str().unwrap_or("");
    for want in [
        id.as_str(),
        "big-needs-approval",
        "big-hook",
        "models",
        "nobody (uid 65534",
        &format!("sluice approvals approve {id}"),
        &format!("sluice approvals deny {id}"),
    ] {
        assert!(text.contains(want), "{want:?} not in {text}");
    }
    assert!(v["blocks"].as_array().is_some_and(|b| b.len() >= 3), "{v}");
    let payload = &v["metadata"]["event_payload"];
    assert_eq!(payload["id"], id.as_str());
    assert_eq!(payload["justification"], "quarterly report");
    assert!(
        !posts[1].contains("sk-"),
        "no credential in the announcement"
    );
    assert!(approvals(&s, &["approve", &id]).status.success());
    assert_eq!(answer(held).0, 200);
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn held_requests_are_refused_when_the_agent_stops_never_passed() {
    require_root();
    let mut s = setup("approval-restart", "");
    let held: Vec<Child> = (0..3)
        .map(|i| client(&s, &format!("big-{i}"), &[], false))
        .collect();
    let ids = pending(&s, 3);
    s.agent.stop();
    for c in held {
        let (code, body) = answer(c);
        assert_eq!(code, 503, "{body}");
        assert!(
            body.contains("sluice_approval_stopped")
                && body.contains("still pending when the agent stopped"),
            "{body}"
        );
    }
    assert_eq!(upstream_requests(&s), 0);
    let stopped = records_with_approval(&s.agent, 3);
    assert_eq!(
        stopped
            .iter()
            .filter(|r| r["approval"] == "stopped")
            .count(),
        3,
        "{stopped:?}"
    );
    // Started again, nothing is pending: a decision for an old id is refused clearly.
    s.agent.spawn();
    assert!(listing(&s)["pending"].as_array().is_some_and(Vec::is_empty));
    let old = approvals(&s, &["approve", &ids[0]]);
    assert!(!old.status.success());
    assert!(text(&old).contains("unknown id"), "{}", text(&old));
}

/// `curl` to the approvals endpoint on 127.0.0.1: (status, JSON answer).
fn endpoint(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-m", "30", "-w", "\n%{http_code}", "-X", method]);
    if let Some(t) = token {
        c.args(["-H", &format!("authorization: Bearer {t}")]);
    }
    if !body.is_empty() {
        c.args(["-H", "content-type: application/json", "-d", body]);
    }
    let out = c
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl the approvals endpoint");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let v = serde_json::from_str(body).unwrap_or_else(|_| Value::String(text.clone()));
    (code.trim().parse().unwrap_or(0), v)
}

#[test]
#[ignore = "end-to-end: needs root, cgroup v2 and the test OpenID provider (cargo xtask test)"]
fn approvers_with_a_token_from_an_approver_group_decide_over_http() {
    require_root();
    let dir = TempDir::new("approval-http");
    let provider = Provider::start(free_port(), &dir.path().join("provider-keys.json"), false);
    let port = free_port();
    let iss = provider.issuer();
    let s = setup(
        "approval-http",
        &format!(
            "identity:\n  issuers:\n    - issuer: {iss}\n      audiences: [sluice]\n      groups_claim: groups\n      jwks_min_refresh_secs: 1\napprovals:\n  http:\n    listen: 127.0.0.1:{port}\n    audience: sluice-approvals\n"
        ),
    );
    let carol = provider.approvals_token("carol-sre");
    let dana = provider.approvals_token("dana-sre");
    let bob = provider.approvals_token("bob-svc");
    let carol_requests = provider.token("carol-sre");
    let list = "/v1/approvals";

    // Held until a member of sre approves over HTTP.
    let held = client(&s, "team-1", &[], false);
    let id = pending(&s, 1).remove(0);
    let approve = format!("/v1/approvals/{id}/approve");
    // No token, a bad one, and carol's token for the model servers: 401, never the token.
    let (code, v) = endpoint(port, "GET", list, None, "");
    assert_eq!(
        (code, &v["error"]["code"]),
        (401, &Value::from("missing_token")),
        "{v}"
    );
    let mut forged = carol.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    let (code, v) = endpoint(port, "POST", &approve, Some(&forged), "");
    assert_eq!(
        (code, &v["error"]["code"]),
        (401, &Value::from("invalid_token")),
        "{v}"
    );
    let (code, v) = endpoint(port, "POST", &approve, Some(&carol_requests), "");
    assert_eq!(
        code, 401,
        "a token for the model servers decides nothing: {v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("audience"),
        "{v}"
    );
    // bob-svc is in group ops only: sees nothing to decide, and is refused.
    let (code, v) = endpoint(port, "GET", list, Some(&bob), "");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["pending"], serde_json::json!([]), "{v}");
    let (code, v) = endpoint(port, "POST", &approve, Some(&bob), "");
    assert_eq!(
        (code, &v["error"]["code"]),
        (403, &Value::from("not_an_approver")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains(&format!(
                "subject bob-svc of {iss} is not an approver of rule team-needs-sre"
            )),
        "{v}"
    );
    assert_eq!(upstream_requests(&s), 0, "held, not sent");
    let (code, v) = endpoint(port, "GET", list, Some(&carol), "");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["pending"][0]["id"], Value::from(id.clone()), "{v}");
    assert_eq!(v["pending"][0]["model"], "team-1");
    let (code, v) = endpoint(port, "POST", &approve, Some(&carol), "{}");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["decided"]["result"], "approved");
    let by = format!("subject carol-sre of {iss}");
    assert_eq!(v["approver"], Value::from(by.clone()));
    let (code, body) = answer(held);
    assert_eq!(code, 200, "{body}");
    assert_eq!(upstream_requests(&s), 1);
    let (code, v) = endpoint(port, "POST", &approve, Some(&dana), "");
    assert_eq!(
        (code, &v["error"]["code"]),
        (409, &Value::from("already_decided")),
        "{v}"
    );
    let unknown = format!("/v1/approvals/{}/approve", "a".repeat(26));
    let (code, v) = endpoint(port, "POST", &unknown, Some(&dana), "");
    assert_eq!(
        (code, &v["error"]["code"]),
        (404, &Value::from("unknown_approval")),
        "{v}"
    );

    // Deny over HTTP: the client's refusal names the id, the approver and the reason.
    let held = client(&s, "team-2", &[], false);
    let id = pending(&s, 1).remove(0);
    let (code, v) = endpoint(
        port,
        "POST",
        &format!("/v1/approvals/{id}/deny"),
        Some(&dana),
        r#"{"reason":"not during the freeze"}"#,
    );
    assert_eq!(code, 200, "{v}");
    let msg = denied(held);
    assert!(
        msg.contains(&id)
            && msg.contains(&format!("denied by subject dana-sre of {iss}"))
            && msg.contains("not during the freeze"),
        "{msg}"
    );

    // A request made with carol's token: carol cannot approve it, dana can.
    let held = client(
        &s,
        "team-3",
        &[&format!("authorization: Bearer {carol_requests}")],
        false,
    );
    let id = pending(&s, 1).remove(0);
    let approve = format!("/v1/approvals/{id}/approve");
    let (code, v) = endpoint(port, "POST", &approve, Some(&carol), "");
    assert_eq!(
        (code, &v["error"]["code"]),
        (403, &Value::from("own_request")),
        "{v}"
    );
    let (_, v) = endpoint(port, "GET", list, Some(&carol), "");
    assert_eq!(
        v["pending"],
        serde_json::json!([]),
        "nobody is shown their own request: {v}"
    );
    let (code, v) = endpoint(port, "POST", &approve, Some(&dana), "");
    assert_eq!(code, 200, "{v}");
    let (code, body) = answer(held);
    assert_eq!(code, 200, "{body}");
    assert_eq!(upstream_requests(&s), 2);

    // Records name who decided; no token is in the agent's log.
    let records = records_with_approval(&s.agent, 3);
    let decided = outcomes(&records);
    assert!(decided.contains(&("approved", by.as_str())), "{decided:?}");
    let log = s.agent.log_text();
    for t in [&carol, &dana, &bob, &carol_requests, &forged] {
        let sig = t.rsplit('.').next().unwrap_or(t);
        assert!(
            !log.contains(sig),
            "a token's signature is in the agent's log"
        );
    }
    assert!(
        log.contains("approval decision") && log.contains(&by),
        "decisions are logged with the approver"
    );
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn a_held_request_is_masked_before_approvers_see_it_and_a_blocked_one_is_never_held() {
    require_root();
    const EMAIL: &str = "jane.doe@example.com";
    let s = setup("approval-mask", "");
    // A prompt masking blocks is refused at once: nobody is asked to approve it.
    let (code, body) = answer(client_saying(
        &s,
        "big-blocked",
        "my key is AKIAQ3EGRSZ7XN5TB2LP",
        &[],
        false,
    ));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("sluice_mask_blocked"), "{body}");
    assert!(
        listing(&s)["pending"].as_array().is_none_or(Vec::is_empty),
        "a blocked request was held"
    );
    assert_eq!(upstream_requests(&s), 0);

    // An e-mail: approvers see the masked prompt, and the approved request goes upstream
    // masked, as approved.
    let held = client_saying(&s, "big-mail", &format!("write to {EMAIL} now"), &[], false);
    let id = pending(&s, 1).remove(0);
    let info = listing(&s)["pending"][0].clone();
    let excerpt = info["excerpt"].as_str().unwrap_or("");
    assert!(
        !excerpt.contains(EMAIL) && excerpt.contains("[REDACTED:email]"),
        "{info}"
    );
    let out = approvals(&s, &["approve", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let (code, body) = answer(held);
    assert_eq!(code, 200, "{body}");
    let sent: Vec<String> = s
        .server
        .seen
        .bodies
        .lock()
        .map(|b| {
            b.iter()
                .map(|x| String::from_utf8_lossy(x).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let sent = sent
        .last()
        .expect("the approved request reached the upstream");
    assert!(
        !sent.contains(EMAIL) && sent.contains("[REDACTED:email]"),
        "{sent}"
    );
    let records = records_with_approval(&s.agent, 1);
    let r = records
        .iter()
        .find(|r| r["model"] == "big-mail")
        .expect("the approved request's record");
    assert_eq!(r["mask_request"]["verdict"], "masked", "{r}");
    assert!(!s.agent.log_text().contains(EMAIL), "the e-mail was logged");
}
