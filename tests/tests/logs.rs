//! End-to-end: what a workload controls cannot forge agent log lines. A real process renames
//! itself (prctl(PR_SET_NAME), the kernel's comm that the eBPF hook records) to
//! `a\nINFO forged` and sends a hostile model name, through an agent logging in the text
//! format. Needs root: `#[ignore]`d, run by `cargo xtask test` as root.
use std::{
    thread,
    time::{Duration, Instant},
};

use sluice_tests::{Agent, AgentSpec, TestCgroup, require_root, run_ok, servers, virtual_ip};

/// Renames itself, then makes one request through each target; prints what it saw.
const CLIENT: &str = r#"
import ctypes, http.client, json, sys
comm, vip, model = sys.argv[1].encode(), sys.argv[2], sys.argv[3]
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NAME = 15
if libc.prctl(PR_SET_NAME, ctypes.c_char_p(comm), 0, 0, 0) != 0:
    raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")
with open("/proc/thread-self/comm", "rb") as f:
    assert f.read() == comm + b"\n", "comm not set"
c = http.client.HTTPConnection(vip, 8000, timeout=10)
c.request("GET", "/")
r = c.getresponse()
print("tcp", r.status, r.read().decode().strip())
c.close()
c = http.client.HTTPConnection(vip, 8001, timeout=10)
c.request("POST", "/api/pull", body=json.dumps({"model": model}),
          headers={"Content-Type": "application/json"})
r = c.getresponse()
r.read()
print("http", r.status)
c.close()
"#;

const COMM: &str = "a\nINFO forged";
const MODEL: &str = "m\nINFO forged\u{1b}[2J\u{202e}x";

fn wait_for(agent: &Agent, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = agent.log_text();
        if needles.iter().all(|n| log.contains(n)) || Instant::now() > deadline {
            return log;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The text format's lines start with an RFC 3339 timestamp, e.g. `2026-01-02T03:04:05.…Z`.
fn starts_like_an_event(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 20 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b'T'
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn a_process_name_with_a_newline_cannot_forge_a_text_log_line() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("logs");
    let targets = format!(
        "  - name: plain-tcp\n    match: \"{vip}:8000\"\n    upstream: \"{addr}\"\n    protocol: tcp\n  - name: ollama-http\n    match: \"{vip}:8001\"\n    upstream: \"{addr}\"\n    protocol: http\n    server: ollama\n",
        addr = server.addr
    );
    let agent = Agent::start_with_log_format(
        &AgentSpec {
            cgroup: cg.rel.clone(),
            fail_mode: "open",
            targets,
            listen_v6: true,
            extra: "policies: [\"builtin:ollama-safe\"]\n".into(),
        },
        "text",
    );

    let out = run_ok(
        cg.command("python3")
            .args(["-c", CLIENT, COMM, &vip, MODEL]),
    );
    assert!(out.contains("tcp 200 hello from upstream"), "{out}");
    assert!(
        out.contains("http 403"),
        "pull is denied by ollama-safe: {out}"
    );

    let escaped_comm = r"comm=a\nINFO forged";
    let log = wait_for(&agent, &["connection intercepted", " request "]);
    // The workload's name reached the log, escaped, on the lines that name it.
    let named: Vec<&str> = log.lines().filter(|l| l.contains(escaped_comm)).collect();
    assert!(
        named.iter().any(|l| l.contains("connection intercepted"))
            && named.iter().any(|l| l.contains(" request ")),
        "escaped comm missing from the connection and request lines; log:\n{log}"
    );
    // No line was forged: every line is a whole event, and "INFO forged" only ever appears
    // right after an escaped newline.
    for line in log.lines().filter(|l| !l.is_empty()) {
        assert!(
            starts_like_an_event(line),
            "forged or broken line {line:?}; log:\n{log}"
        );
    }
    for (i, _) in log.match_indices("INFO forged") {
        assert!(
            log[..i].ends_with(r"\n"),
            "unescaped newline before INFO forged at byte {i}; log:\n{log}"
        );
    }
    let raw: Vec<char> = log
        .chars()
        .filter(|c| (c.is_control() && *c != '\n') || matches!(c, '\u{202a}'..='\u{202e}'))
        .collect();
    assert!(
        raw.is_empty(),
        "raw control characters {raw:?} in the log:\n{log}"
    );
}
