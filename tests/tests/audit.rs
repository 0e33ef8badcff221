//! End-to-end recording: real clients through interception, the real agent writing its
//! recording store, `sluice audit` reading it. Needs root: `#[ignore]`d, run by
//! `cargo xtask test` as root.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use serde_json::Value;
use sluice_tests::{
    Agent, AgentSpec, TempDir, TestCgroup, client_script, curl, require_root, servers, unique,
    virtual_ip,
};

/// An OpenAI target (default allow) on `vip:8000` and an Ollama target judged by the
/// ollama-safe pack on `vip:8001`, both to `upstream`; the store in `audit_dir`.
fn spec(
    cg: &TestCgroup,
    vip: &str,
    upstream: &str,
    fail_mode: &'static str,
    audit: &str,
) -> AgentSpec {
    AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode,
        targets: format!(
            "  - name: models\n    match: \"{vip}:8000\"\n    upstream: \"{upstream}\"\n    protocol: http\n    server: openai\n    default: allow\n  - name: ollama\n    match: \"{vip}:8001\"\n    upstream: \"{upstream}\"\n    protocol: http\n    server: ollama\n"
        ),
        listen_v6: true,
        extra: format!("policies: [\"builtin:ollama-safe\"]\n{audit}"),
    }
}

fn audit_yaml(dir: &Path, more: &str) -> String {
    format!(
        "audit:\n  dir: {}\n  level: metadata\n  durability: group\n  group_commit_ms: 5\n{more}",
        dir.display()
    )
}

fn sluice(agent: &Agent, args: &[&str]) -> (bool, String) {
    let out = agent.sluice(args);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn listed(agent: &Agent, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", "list", "--json"];
    args.extend_from_slice(filters);
    let (ok, out) = sluice(agent, &args);
    assert!(ok, "audit list: {out}");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record per line"))
        .collect()
}

fn verify_ok(agent: &Agent, pubkey: &Path) -> String {
    let (ok, out) = sluice(
        agent,
        &["audit", "verify", "--pubkey", &pubkey.display().to_string()],
    );
    assert!(ok, "audit verify failed:\n{out}");
    assert!(out.contains("ok: "), "{out}");
    out
}

/// Every file under `dir` but the signing keys, as bytes.
fn store_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("store dir").flatten() {
        let p = e.path();
        if p.is_file() {
            out.push((p.clone(), fs::read(&p).expect("read")));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn requests_are_recorded_listed_shown_and_verified_without_credentials() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("audit");
    let tmp = TempDir::new("audit");
    let store = tmp.path().join("audit");
    let mut agent = Agent::start(&spec(
        &cg,
        &vip,
        &server.addr.to_string(),
        "open",
        &audit_yaml(&store, ""),
    ));
    let canary = format!("sk-canary-{}", unique("k").replace(['/', '.'], "-"));

    let chat = curl(
        &cg,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("Authorization: Bearer {canary}"),
            "-H",
            &format!("Cookie: session={canary}"),
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"model":"gpt-audit","messages":[{"role":"user","content":"hi"}]}"#,
            &format!("http://{vip}:8000/v1/chat/completions"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&chat.stdout), "200");
    let pull = curl(
        &cg,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"model":"llama3.2"}"#,
            &format!("http://{vip}:8001/api/pull"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&pull.stdout), "403");
    let py = cg
        .command("python3")
        .args([
            "-c",
            "import http.client,sys\nc=http.client.HTTPConnection(sys.argv[1],8000,timeout=10)\nc.request('POST','/v1/chat/completions',body='{\"model\":\"py-model\"}',headers={'Content-Type':'application/json','x-api-key':sys.argv[2]})\nprint(c.getresponse().status)",
            &vip,
            &canary,
        ])
        .output()
        .expect("python");
    assert_eq!(String::from_utf8_lossy(&py.stdout).trim(), "200");

    // While the agent runs: its current segment is read past its index.
    let all = listed(&agent, &[]);
    assert_eq!(all.len(), 3, "{all:?}");
    let by_model = |m: &str| listed(&agent, &["--model", m]);
    let gpt = by_model("gpt-audit");
    assert_eq!(gpt.len(), 1, "{gpt:?}");
    let g = &gpt[0];
    assert_eq!(
        (g["status"].as_u64(), g["decision"].as_str()),
        (Some(200), Some("allow")),
        "{g}"
    );
    assert_eq!(g["workload"]["comm"], "curl", "{g}");
    assert_eq!(g["target"], "models");
    assert_eq!(g["record"]["kind"], "final");
    let denied = listed(
        &agent,
        &["--decision", "deny", "--rule", "ollama-deny-management"],
    );
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["model"], "llama3.2:latest");
    assert_eq!(denied[0]["status"], 403);
    assert_eq!(listed(&agent, &["--workload", "python3"]).len(), 1);
    assert_eq!(listed(&agent, &["--target", "ollama"]).len(), 1);
    assert_eq!(
        listed(&agent, &["--since", "1h", "--user", "root"]).len(),
        3
    );
    assert!(listed(&agent, &["--until", "2000-01-01T00:00:00Z"]).is_empty());
    let id = g["id"].as_u64().expect("id").to_string();
    let (ok, shown) = sluice(&agent, &["audit", "show", &id]);
    assert!(ok, "{shown}");
    assert!(
        shown.contains("\"kind\": \"open\"") && shown.contains("\"kind\": \"final\""),
        "{shown}"
    );
    assert!(
        shown.contains("\"authorization\"") && shown.contains("[removed]"),
        "{shown}"
    );
    let (ok, table) = sluice(&agent, &["audit", "list"]);
    assert!(
        ok && table.contains("gpt-audit") && table.contains("ollama-deny-"),
        "{table}"
    );

    agent.stop();
    let (ok, key) = sluice(&agent, &["audit", "pubkey"]);
    assert!(ok && key.starts_with("ed25519:"), "{key}");
    let pubkey = tmp.path().join("audit.pub");
    fs::write(&pubkey, &key).expect("pubkey");
    let out = verify_ok(&agent, &pubkey);
    assert!(
        !out.contains("not yet signed"),
        "a stopped agent closed its segment: {out}"
    );

    // No credential anywhere in the store, its index, or the log.
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        fs::metadata(&store).expect("dir").permissions().mode() & 0o777,
        0o700
    );
    for (p, bytes) in store_bytes(&store) {
        assert!(!contains(&bytes, &canary), "the key is in {}", p.display());
        assert_eq!(
            fs::metadata(&p).expect("meta").permissions().mode() & 0o777,
            0o600,
            "{}",
            p.display()
        );
    }
    assert!(!agent.log_text().contains(&canary));
}

/// Runs `audit_loop.py` in the cgroup against `vip:8000`; returns the child and its stdout
/// file.
fn client_loop(
    cg: &TestCgroup,
    vip: &str,
    dir: &Path,
    prefix: &str,
    max_refused: u32,
) -> (std::process::Child, PathBuf, PathBuf) {
    let out = dir.join(format!("{prefix}.out"));
    let stop = dir.join(format!("{prefix}.stop"));
    let child = cg
        .command("python3")
        .arg(client_script("audit_loop.py"))
        .args([
            &format!("{vip}:8000"),
            &stop.display().to_string(),
            prefix,
            &max_refused.to_string(),
        ])
        .stdout(Stdio::from(fs::File::create(&out).expect("client out")))
        .stderr(Stdio::null())
        .spawn()
        .expect("client loop");
    (child, out, stop)
}

fn results(out: &Path) -> Vec<Value> {
    fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Kills the child by pid if it is still running, and waits for it.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn kill_9_under_load_loses_no_answered_request_and_the_chain_continues() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("audit-crash");
    let tmp = TempDir::new("audit-crash");
    let store = tmp.path().join("audit");
    let mut agent = Agent::start(&spec(
        &cg,
        &vip,
        &server.addr.to_string(),
        "closed",
        &audit_yaml(&store, "  required: true\n  segment_bytes: 65536\n"),
    ));
    let (child, out, stop) = client_loop(&cg, &vip, tmp.path(), "crash", 1_000_000);
    let mut child = Reap(child);
    // Under load: kill only once the loop has been answered a few dozen times, and inside a
    // segment, away from a rotation (segments of 64 KiB, about 40 answers each here). A
    // crash between a segment's closing checkpoint and the next segment's first record
    // leaves nothing to close (recovery drops the empty segment, rightly), and this test is
    // about the crash that leaves an open segment behind.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while results(&out).iter().filter(|r| r["status"] == 200).count() < 40
        || !(4096..48 * 1024).contains(&newest_segment_len(&store))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the loop is not being answered: {:?}",
            results(&out)
        );
        thread::sleep(Duration::from_millis(50));
    }
    let mut running = agent.child.take().expect("agent running");
    running.kill().expect("SIGKILL the agent");
    let _ = running.wait();
    thread::sleep(Duration::from_millis(300));
    fs::write(&stop, "").expect("stop file");
    let _ = child.0.wait();
    let answered: Vec<String> = results(&out)
        .iter()
        .filter(|r| r["status"] == 200)
        .filter_map(|r| r["model"].as_str().map(str::to_string))
        .collect();
    assert!(answered.len() >= 40, "{}", answered.len());

    agent.spawn();
    assert!(
        agent.log_text().contains("\"closed_after_crash\":true"),
        "{}",
        agent.log_text()
    );
    let after = curl(
        &cg,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-d",
            r#"{"model":"after-restart"}"#,
            &format!("http://{vip}:8000/v1/chat/completions"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&after.stdout), "200");
    agent.stop();

    let (ok, key) = sluice(&agent, &["audit", "pubkey"]);
    assert!(ok, "{key}");
    let pubkey = tmp.path().join("audit.pub");
    fs::write(&pubkey, &key).expect("pubkey");
    verify_ok(&agent, &pubkey);
    let all = listed(&agent, &[]);
    let recorded: std::collections::HashMap<String, &Value> = all
        .iter()
        .filter_map(|r| Some((r["model"].as_str()?.to_string(), r)))
        .collect();
    let missing: Vec<&String> = answered
        .iter()
        .filter(|m| !recorded.contains_key(*m))
        .collect();
    assert!(missing.is_empty(), "answered but not recorded: {missing:?}");
    // The chain continued: the request after the restart has the newest id.
    let newest = all.iter().filter_map(|r| r["id"].as_u64()).max();
    assert_eq!(recorded["after-restart"]["id"].as_u64(), newest);
}

/// The size of the store's newest segment file (`NNNNNNNN.seg`), 0 when there is none.
fn newest_segment_len(store: &Path) -> u64 {
    fs::read_dir(store)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .max_by_key(|e| e.file_name())
                .and_then(|e| e.metadata().ok())
                .map_or(0, |m| m.len())
        })
        .unwrap_or(0)
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn a_full_disk_with_required_recording_refuses_requests_and_loses_nothing_answered() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("audit-full");
    let tmp = TempDir::new("audit-full");
    let fs_dir = tmp.path().join("small");
    fs::create_dir_all(&fs_dir).expect("mount point");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
        .arg(&fs_dir)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mount tmpfs");
    let _mount = Mount(fs_dir.clone());
    let store = fs_dir.join("audit");
    let mut agent = Agent::start(&spec(
        &cg,
        &vip,
        &server.addr.to_string(),
        "open",
        &audit_yaml(&store, "  required: true\n  segment_bytes: 65536\n"),
    ));
    let (child, out, _stop) = client_loop(&cg, &vip, tmp.path(), "full", 20);
    let mut child = Reap(child);
    let _ = child.0.wait();
    let res = results(&out);
    let answered: Vec<String> = res
        .iter()
        .filter(|r| r["status"] == 200)
        .filter_map(|r| r["model"].as_str().map(str::to_string))
        .collect();
    let refused: Vec<&Value> = res.iter().filter(|r| r["status"] == 503).collect();
    assert!(!answered.is_empty(), "{res:?}");
    assert!(
        refused.len() >= 20,
        "the full disk never refused a request: {res:?}"
    );
    for r in &refused {
        assert_eq!(r["code"], "sluice_recording_unavailable", "{r}");
        let msg = r["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("recording is required") && msg.contains("No space left on device"),
            "{msg}"
        );
    }
    assert!(agent.log_text().contains("audit store cannot write"));
    agent.stop();

    let (ok, key) = sluice(&agent, &["audit", "pubkey"]);
    assert!(ok, "{key}");
    let pubkey = tmp.path().join("audit.pub");
    fs::write(&pubkey, &key).expect("pubkey");
    verify_ok(&agent, &pubkey);
    let recorded: std::collections::HashSet<String> = listed(&agent, &[])
        .iter()
        .filter_map(|r| r["model"].as_str().map(str::to_string))
        .collect();
    let missing: Vec<&String> = answered.iter().filter(|m| !recorded.contains(*m)).collect();
    assert!(missing.is_empty(), "answered but not recorded: {missing:?}");
}

const FULL_PACK: &str = r#"apiVersion: sluice.dev/v1alpha1
kind: PolicyPack
metadata: {name: audit-full-e2e}
spec:
  rules:
    - id: allow-all
      action: allow
  masking:
    rules:
      - id: mask-mail
        direction: request
        detectors: {email: redact}
"#;

/// Lines of a child's stdout that start with `data:`, each with when it arrived.
fn timed_data_lines(child: &mut std::process::Child) -> Vec<(std::time::Instant, String)> {
    use std::io::BufRead as _;
    let out = child.stdout.take().expect("piped stdout");
    std::io::BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.starts_with("data:"))
        .map(|l| (std::time::Instant::now(), l))
        .collect()
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn a_streamed_completion_recorded_at_full_replays_at_its_pace_and_resends() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("audit-replay");
    let tmp = TempDir::new("audit-replay");
    let store = tmp.path().join("audit");
    let pack = tmp.path().join("pack");
    fs::create_dir_all(&pack).expect("pack dir");
    fs::write(pack.join("pack.yaml"), FULL_PACK).expect("pack");
    let mut agent = Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "open",
        targets: format!(
            "  - name: models\n    match: \"{vip}:8000\"\n    upstream: \"{}\"\n    protocol: http\n    server: openai\n",
            server.addr
        ),
        listen_v6: false,
        extra: format!(
            "policies: [\"{}\"]\n{}",
            pack.display(),
            audit_yaml(&store, "").replace("level: metadata", "level: full")
        ),
    });
    // 300 ms after each delta: a pace whose 10% is well above a loaded machine's jitter.
    let mail = "carol.audit@example.com";
    let sdk = cg
        .command("python3")
        .env("PROMPT", format!("write to {mail} today"))
        .arg(client_script("openai_chat.py"))
        .args([&format!("http://{vip}:8000/v1"), "paced-300", "stream"])
        .output()
        .expect("openai sdk");
    let got: Value = serde_json::from_slice(&sdk.stdout).unwrap_or_else(|_| {
        panic!(
            "sdk: {}{}",
            String::from_utf8_lossy(&sdk.stdout),
            String::from_utf8_lossy(&sdk.stderr)
        )
    });
    assert_eq!(got["ok"], true, "{got}");
    let times: Vec<f64> = got["times"]
        .as_array()
        .expect("times")
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert!(times.len() >= 4, "{got}");
    let recorded = listed(&agent, &["--model", "paced-300"]);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let id = recorded[0]["id"].as_u64().expect("id").to_string();
    let body = &recorded[0]["body"];
    assert!(
        body["response_chunks"].as_u64().unwrap_or(0) >= 4
            && body["request_bytes"].as_u64().unwrap_or(0) > 0,
        "{}",
        recorded[0]
    );

    // The recorded pace: each `data:` line's chunk offset (µs from the request's start), as
    // `export` prints the body entries.
    let (ok, exported) = sluice(&agent, &["audit", "export", "--format", "jsonl"]);
    assert!(ok, "{exported}");
    let entries: Vec<Value> = exported
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json line"))
        .filter(|v| v["id"].as_u64().map(|i| i.to_string()) == Some(id.clone()))
        .collect();
    let recorded_at: Vec<f64> = entries
        .iter()
        .filter(|v| v["record"]["kind"] == "body" && v["dir"] == "response")
        .flat_map(|v| {
            let n = v["text"].as_str().unwrap_or("").matches("data:").count();
            std::iter::repeat_n(v["t_us"].as_f64().unwrap_or(0.0) / 1e6, n)
        })
        .collect();

    // The replay's events come at the recorded pace, measured from the first one; and the
    // whole stream spans what it spanned for the SDK's client.
    let mut replay = Command::new(sluice_tests::sluice_bin())
        .args(["audit", "replay", &id, "--speed", "1", "--config"])
        .arg(&agent.config)
        .stdout(Stdio::piped())
        .spawn()
        .expect("replay");
    let lines = timed_data_lines(&mut replay);
    assert!(replay.wait().expect("replay exit").success());
    assert_eq!(lines.len(), recorded_at.len(), "{lines:?}");
    assert!(
        lines.iter().any(|(_, l)| l.contains("[REDACTED")),
        "{lines:?}"
    );
    assert_eq!(lines.last().map(|(_, l)| l.as_str()), Some("data: [DONE]"));
    let (c0, r0) = (recorded_at[0], lines[0].0);
    let pairs: Vec<(f64, f64)> = recorded_at
        .iter()
        .zip(&lines)
        .map(|(c, (t, _))| (c - c0, (*t - r0).as_secs_f64()))
        .collect();
    eprintln!(
        "data lines from the first (recorded s, replayed s): {pairs:.3?}; the SDK's events: {:.3?}",
        times.iter().map(|t| t - times[0]).collect::<Vec<_>>()
    );
    assert!(
        pairs.last().is_some_and(|p| p.0 > 0.8),
        "the stream was paced: {pairs:?}"
    );
    for (i, &(original, replayed)) in pairs.iter().enumerate() {
        assert!(
            (replayed - original).abs() <= 0.10 * original,
            "line {i}: {replayed:.3} s after the first in the replay, {original:.3} s as recorded"
        );
    }
    // The client's own view: its first to last event, against the replay's.
    let sdk_span = times[times.len() - 1] - times[0];
    let replay_span = (lines[times.len() - 1].0 - r0).as_secs_f64();
    assert!(
        (replay_span - sdk_span).abs() <= 0.10 * sdk_span,
        "the SDK saw {sdk_span:.3} s from first to last event, the replay took {replay_span:.3} s"
    );

    // --to sends the recorded request (masked, without the client's key) to a loopback
    // server, and prints its answer.
    let other = servers::http("127.0.0.1:0");
    let (ok, out) = sluice(
        &agent,
        &[
            "audit",
            "replay",
            &id,
            "--to",
            &format!("http://{}", other.addr),
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("< 200") && out.contains("[DONE]"), "{out}");
    let reqs = other.seen.requests.lock().expect("requests").clone();
    assert_eq!(reqs, ["POST /v1/chat/completions"]);
    let sent = other.seen.bodies.lock().expect("bodies").concat();
    let sent = String::from_utf8_lossy(&sent);
    assert!(
        sent.contains("paced-300") && sent.contains("[REDACTED") && !sent.contains(mail),
        "{sent}"
    );
    let headers = other.seen.headers.lock().expect("headers").join("\n");
    assert!(
        !headers.contains("authorization") && !headers.contains("sk-client-secret"),
        "{headers}"
    );

    // export: the request's records and its body entries, one JSON object per line.
    let kinds: Vec<String> = exported
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json line"))
        .filter(|v| v["id"].as_u64().map(|i| i.to_string()) == Some(id.clone()))
        .map(|v| v["record"]["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("open"), "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("final"), "{kinds:?}");
    assert!(
        kinds.iter().filter(|k| *k == "body").count() >= 5,
        "{kinds:?}"
    );

    agent.stop();
    let (ok, key) = sluice(&agent, &["audit", "pubkey"]);
    assert!(ok, "{key}");
    let pubkey = tmp.path().join("audit.pub");
    fs::write(&pubkey, &key).expect("pubkey");
    verify_ok(&agent, &pubkey);
    for (p, bytes) in store_bytes(&store) {
        assert!(
            !contains(&bytes, mail),
            "the unmasked address is in {}",
            p.display()
        );
        assert!(
            !contains(&bytes, "sk-client-secret"),
            "the key is in {}",
            p.display()
        );
    }
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn export_follow_prints_records_as_they_are_written() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("audit-follow");
    let tmp = TempDir::new("audit-follow");
    let store = tmp.path().join("audit");
    let agent = Agent::start(&spec(
        &cg,
        &vip,
        &server.addr.to_string(),
        "open",
        &audit_yaml(&store, "  segment_bytes: 8192\n"),
    ));
    let out = tmp.path().join("follow.out");
    let follow = Command::new(sluice_tests::sluice_bin())
        .args(["audit", "export", "--follow", "--poll-ms", "50", "--config"])
        .arg(&agent.config)
        .stdout(Stdio::from(fs::File::create(&out).expect("out")))
        .spawn()
        .expect("export --follow");
    let _follow = Reap(follow);
    // Enough requests to rotate the 8 KiB segments several times while it follows.
    for i in 0..40 {
        let r = curl(
            &cg,
            &[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-d",
                &format!(r#"{{"model":"follow-{i}"}}"#),
                &format!("http://{vip}:8000/v1/chat/completions"),
            ],
        );
        assert_eq!(String::from_utf8_lossy(&r.stdout), "200");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let finals = || -> Vec<String> {
        fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["record"]["kind"] == "final")
            .filter_map(|v| v["model"].as_str().map(str::to_string))
            .collect()
    };
    while finals().len() < 40 && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let got = finals();
    let want: Vec<String> = (0..40).map(|i| format!("follow-{i}")).collect();
    assert_eq!(got, want, "every request once, in order");
    let segments = fs::read_dir(&store)
        .expect("store")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .count();
    assert!(segments >= 2, "the segments rotated while it followed");
}
