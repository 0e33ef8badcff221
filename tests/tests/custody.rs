//! End-to-end credential custody: a real server that requires an API key, the unmodified
//! OpenAI Python SDK in a test cgroup holding only a wrong key, the real agent holding the
//! right one. Needs root: `#[ignore]`d, run by `cargo xtask test` as root.
use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::{
    Agent, AgentSpec, TempDir, TestCgroup, client_script, curl, free_port, require_root, run_ok,
    servers, servers::Server, unique, virtual_ip, wait_log_events, write_secret,
};

/// An OpenAI target on `vip:8000` whose key Sluice reads from `key_file`; no policy, so
/// every request is allowed (custody is what is under test).
fn start(cg: &TestCgroup, vip: &str, server: &Server, key_file: &Path, extra: &str) -> Agent {
    Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "open",
        targets: format!(
            "  - name: models\n    match: \"{vip}:8000\"\n    upstream: \"{}\"\n    protocol: http\n    server: openai\n    default: allow\n    credential: {{file: \"{}\"}}\n",
            server.addr,
            key_file.display()
        ),
        listen_v6: true,
        extra: extra.to_string(),
    })
}

fn canary() -> String {
    format!("sk-canary-{}", unique("key").replace(['/', '.'], "-"))
}

/// Replaces the key file the way operators (and Kubernetes) do: a new file moved into place.
fn write_key(path: &Path, content: &str) {
    let tmp = path.with_extension("new");
    write_secret(&tmp, content);
    std::fs::rename(&tmp, path).expect("rename key");
}

fn sdk(cmd: &mut Command, base: &str) -> Value {
    cmd.arg(client_script("openai_chat.py"))
        .args([base, "test-model", "plain"]);
    serde_json::from_str(run_ok(cmd).trim()).expect("openai_chat.py json")
}

/// Requests the upstream got with `Authorization: Bearer <key>`.
fn with_key(server: &Server, key: &str) -> usize {
    let want = format!("authorization: Bearer {key}");
    server
        .seen
        .headers
        .lock()
        .map(|h| h.iter().filter(|x| **x == want).count())
        .unwrap_or(0)
}

fn wait_for(what: &str, secs: u64, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn assert_secret_absent(agent: &Agent, metrics_port: u16, keys: &[&str]) {
    let log = agent.log_text();
    let status = agent.status().expect("status").to_string();
    let scraped = sluice_tests::scrape_metrics(metrics_port);
    assert!(scraped.contains("sluice_"), "{scraped}");
    for key in keys {
        assert!(!log.contains(key), "key in the agent's log:\n{log}");
        assert!(
            !status.contains(key),
            "key in `sluice connections`: {status}"
        );
        assert!(!scraped.contains(key), "key in /metrics");
    }
}

/// The recording store in `dir`/audit (every request recorded, durably).
fn audit(dir: &Path) -> String {
    format!(
        "audit:\n  dir: {}\n  level: metadata\n  durability: record\n",
        dir.join("audit").display()
    )
}

/// Neither the upstream key nor the client's own credential is in any file of the store
/// (segments, indexes), and the store did record requests.
fn assert_secret_absent_from_store(dir: &Path, keys: &[&str]) {
    let store = dir.join("audit");
    let mut records = 0;
    for e in std::fs::read_dir(&store).expect("audit store").flatten() {
        let Ok(bytes) = std::fs::read(e.path()) else {
            continue;
        };
        if e.path().extension().is_some_and(|x| x == "seg") {
            records += bytes.windows(9).filter(|w| w == b"\"method\":").count();
        }
        for key in keys {
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                "a credential is in {}",
                e.path().display()
            );
        }
    }
    assert!(records > 0, "the store recorded nothing");
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn a_workload_with_a_wrong_key_succeeds_only_through_sluice_and_never_sees_the_real_one() {
    require_root();
    let key = canary();
    let server = servers::keyed("127.0.0.1:0", &[&key]);
    let dir = TempDir::new("custody");
    let key_file = dir.path().join("openai.key");
    write_secret(&key_file, format!("{key}\n"));
    let vip = virtual_ip();
    let cg = TestCgroup::new("custody");
    let metrics_port = free_port();
    let agent = start(
        &cg,
        &vip,
        &server,
        &key_file,
        &format!(
            "metrics_listen: 127.0.0.1:{metrics_port}\n{}",
            audit(dir.path())
        ),
    );

    // Straight to the server, the SDK's key is refused.
    let direct = sdk(
        &mut Command::new("python3"),
        &format!("http://{}/v1", server.addr),
    );
    assert_eq!(direct["ok"], false, "{direct}");
    assert_eq!(direct["status"], 401, "{direct}");
    let direct_headers = server.seen.headers.lock().map(|h| h.len()).unwrap_or(0);

    // Through Sluice, the same client with the same wrong key succeeds.
    let r = sdk(&mut cg.command("python3"), &format!("http://{vip}:8000/v1"));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["text"], "echo: hello");
    assert_eq!(with_key(&server, &key), 1);
    let headers = server
        .seen
        .headers
        .lock()
        .map(|h| h[direct_headers..].to_vec())
        .unwrap_or_default();
    assert!(
        !headers.iter().any(|h| h.contains("sk-client-secret")),
        "the client's key reached the upstream: {headers:?}"
    );

    // A client with no key at all gets the same service.
    let out = curl(
        &cg,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{vip}:8000/v1/models"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");

    // Every client credential goes, in headers and in the query; the rest of the query stays.
    let out = curl(
        &cg,
        &[
            "-i",
            "-H",
            "authorization: Bearer sk-client-secret",
            "-H",
            "x-api-key: sk-client-secret",
            &format!("http://{vip}:8000/v1/debug/auth?key=sk-client-secret&keep=1&api_key=x"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let reqs = server
        .seen
        .requests
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    assert!(
        reqs.iter().any(|r| r == "GET /v1/debug/auth?keep=1"),
        "{reqs:?}"
    );
    // The upstream echoed the key: the client gets it masked, with a true Content-Length.
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    assert!(!text.contains(&key), "{text}");
    let echoed: Value = serde_json::from_str(body).expect("a whole JSON body");
    let masked = echoed["authorization"].as_str().unwrap_or_default();
    assert!(masked.starts_with("Bearer [REDACTED]"), "{body}");
    assert_eq!(masked.len(), "Bearer ".len() + key.len());
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {}", body.len())),
        "{head}"
    );

    // The same echo in 3-byte chunks, so the key is cut across many of them.
    let out = curl(&cg, &[&format!("http://{vip}:8000/v1/debug/auth-chunked")]);
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!body.contains(&key), "{body}");
    let echoed: Value = serde_json::from_str(&body).expect("a whole JSON body");
    assert!(
        echoed["authorization"]
            .as_str()
            .is_some_and(|a| a.starts_with("Bearer [REDACTED]")),
        "{body}"
    );

    wait_log_events(&agent, "request", 3);
    assert_secret_absent(&agent, metrics_port, &[&key]);
    assert_secret_absent_from_store(dir.path(), &[&key, "sk-client-wrong-key"]);
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn rotating_the_key_file_mid_traffic_fails_no_request() {
    require_root();
    let (old, new) = (canary(), canary());
    let server = servers::keyed("127.0.0.1:0", &[&old]);
    let dir = TempDir::new("rotate");
    let key_file = dir.path().join("openai.key");
    write_key(&key_file, &old);
    let vip = virtual_ip();
    let cg = TestCgroup::new("rotate");
    let metrics_port = free_port();
    let agent = start(
        &cg,
        &vip,
        &server,
        &key_file,
        &format!(
            "metrics_listen: 127.0.0.1:{metrics_port}\n{}",
            audit(dir.path())
        ),
    );
    let stop = dir.path().join("stop");
    let client = cg
        .command("python3")
        .arg(client_script("openai_loop.py"))
        .args([&format!("http://{vip}:8000/v1"), "test-model"])
        .arg(&stop)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loop client");

    wait_for("traffic with the old key", 30, || {
        with_key(&server, &old) >= 10
    });
    // The provider issues a new key; the old one works until it is revoked.
    servers::accept_keys(&server, &[&old, &new]);
    write_key(&key_file, &format!("{new}\n"));
    wait_for("the new key in use", 15, || with_key(&server, &new) >= 1);
    servers::accept_keys(&server, &[&new]);
    let before = with_key(&server, &new);
    wait_for("traffic after the old key was revoked", 30, || {
        with_key(&server, &new) >= before + 10
    });
    // A file that empties keeps the key in use, with a warning.
    write_key(&key_file, "\n");
    let warned = wait_log_events(
        &agent,
        "credential source changed or was re-run but gave no usable key; keeping the previous key",
        1,
    );
    assert_eq!(warned.len(), 1, "{}", agent.log_text());
    let before = with_key(&server, &new);
    wait_for("traffic after the file emptied", 30, || {
        with_key(&server, &new) >= before + 10
    });

    std::fs::write(&stop, "").expect("stop file");
    let out = client.wait_with_output().expect("loop client ends");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "openai_loop.py output ({e}): {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!("loop client: {r}");
    assert_eq!(r["failed"], serde_json::json!([]), "{r}");
    assert!(r["ok"].as_u64() >= Some(30), "{r}");
    assert_eq!(
        wait_log_events(
            &agent,
            "credential rotated; new requests use the new key",
            1
        )
        .len(),
        1
    );
    assert_secret_absent(&agent, metrics_port, &[&old, &new]);
    assert_secret_absent_from_store(dir.path(), &[&old, &new, "sk-client-wrong-key"]);
}

/// Keys per caller: the workload in `team-a.service` goes out with team A's key, any other
/// with the target's default key; on a target that holds only a key for team A, anyone else
/// is refused (never sent with their own credential). Each key reaches the server only for
/// its own callers.
#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn each_caller_goes_out_with_its_own_key_and_a_caller_without_one_is_refused() {
    require_root();
    let (team_key, default_key) = (canary(), canary());
    let server = servers::keyed("127.0.0.1:0", &[&team_key, &default_key]);
    let dir = TempDir::new("custody-per-caller");
    let (team_file, default_file) = (
        dir.path().join("team-a.key"),
        dir.path().join("default.key"),
    );
    write_secret(&team_file, &team_key);
    write_secret(&default_file, &default_key);
    let (shared, team_only) = (virtual_ip(), virtual_ip());
    let cg = TestCgroup::new("custody-caller");
    let target = |name: &str, vip: &str, default: bool| {
        format!(
            "  - name: {name}\n    match: \"{vip}:8000\"\n    upstream: \"{}\"\n    protocol: http\n    server: openai\n    default: allow\n    credentials:\n      - {{when: {{units: [team-a.service]}}, file: \"{}\"}}\n{}",
            server.addr,
            team_file.display(),
            if default {
                format!("    credential: {{file: \"{}\"}}\n", default_file.display())
            } else {
                String::new()
            }
        )
    };
    let agent = Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "open",
        targets: format!(
            "{}{}",
            target("shared", &shared, true),
            target("team-only", &team_only, false)
        ),
        listen_v6: false,
        extra: String::new(),
    });
    let team = cg.nested("system.slice/team-a.service");
    let other = cg.nested("system.slice/web.service");
    let call = |who: &sluice_tests::NestedCgroup, vip: &str| {
        let out = who
            .command("curl")
            .args(["-sS", "-m", "10", "-w", "\n%{http_code}"])
            .args(["-H", "authorization: Bearer sk-the-workloads-own"])
            .arg(format!("http://{vip}:8000/v1/models"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().to_string(), body.to_string())
    };
    assert_eq!(call(&team, &shared).0, "200");
    assert_eq!(
        (
            with_key(&server, &team_key),
            with_key(&server, &default_key)
        ),
        (1, 0)
    );
    assert_eq!(call(&other, &shared).0, "200");
    assert_eq!(
        (
            with_key(&server, &team_key),
            with_key(&server, &default_key)
        ),
        (1, 1)
    );
    assert_eq!(call(&team, &team_only).0, "200");
    assert_eq!(with_key(&server, &team_key), 2);
    let (code, body) = call(&other, &team_only);
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains("holds no upstream key for this caller"),
        "{body}"
    );
    assert!(body.contains("unit web.service"), "{body}");
    assert_eq!(
        (
            with_key(&server, &team_key),
            with_key(&server, &default_key)
        ),
        (2, 1),
        "the refused request reached no server"
    );
    let own = server
        .seen
        .headers
        .lock()
        .map(|h| {
            h.iter()
                .filter(|x| x.contains("sk-the-workloads-own"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(
        own, 0,
        "the workload's own credential never reached the server"
    );
    let log = agent.log_text();
    assert!(
        !log.contains(&team_key) && !log.contains(&default_key),
        "{log}"
    );
    // The later one first: the first made the `system.slice` both are in.
    drop((other, team));
}
