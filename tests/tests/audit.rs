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
    // Under load: kill only once the loop has been answered a few dozen times.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while results(&out).iter().filter(|r| r["status"] == 200).count() < 40 {
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
