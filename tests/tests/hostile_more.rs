//! End-to-end: more hostile input for issue 11 §4, beyond the cases in hostile_requests.rs and
//! adversarial.rs: Go's integer overflow in Ollama's `keep_alive`, Ollama's other load
//! spellings, interception of MPTCP / TCP Fast Open / v4-mapped connects, the memory a parsed
//! body costs over its raw bytes, idle and stalled HTTP/2 connections, and control characters
//! in models reaching the text log. Every request goes through real interception from a
//! socket in a test cgroup. Needs root.
use std::{
    fs,
    time::{Duration, Instant},
};

use sluice_tests::{
    Agent, AgentSpec, TestCgroup,
    hostile::{case, check_all, request, seen, status},
    policies_dir, require_root, servers,
    servers::Server,
    virtual_ip,
};

fn raw(cg: &TestCgroup, vip: &str, bytes: &[u8]) -> String {
    sluice_tests::send_raw(cg, vip, bytes, 10)
}

fn start(cg: &TestCgroup, vip: &str, server: &Server, family: &str, extra: &str) -> Agent {
    Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "open",
        targets: format!(
            "  - name: models\n    match: \"{vip}:8000\"\n    upstream: \"{}\"\n    protocol: http\n    server: {family}\n",
            server.addr
        ),
        listen_v6: false,
        extra: extra.to_string(),
    })
}

fn pack(name: &str) -> String {
    format!("policies: [\"{}\"]\n", policies_dir().join(name).display())
}

const JSON: &str = "Content-Type: application/json";

/// Ollama's `api.Duration` reads a number as `time.Duration(int(t) * int(time.Second))`: the
/// product wraps for t >= 2^63 / 1e9 (about 9.22e9 s), and for t >= 2^63 `int(t)` is
/// MinInt64 on amd64, whose product with 1e9 is exactly 0: `keep_alive: 1e19` is
/// `keep_alive: 0` to Ollama, an unload. Sluice must read it as Ollama does.
#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn ollama_keep_alive_numbers_that_overflow_go_durations_are_unloads() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("more-keepalive");
    let agent = start(&cg, &vip, &server, "ollama", &pack("ollama-safe"));
    let post = |path: &str, body: &str| request("POST", path, &[JSON], body.as_bytes());
    let cases = vec![
        case(
            "keep_alive 1e19 with a prompt (Go: int(1e19)*1e9 == 0)",
            post(
                "/api/generate",
                r#"{"model":"llama3.2","prompt":"hi","keep_alive":1e19}"#,
            ),
            403,
            false,
        ),
        case(
            "keep_alive 1e300 on chat (Go: 0)",
            post(
                "/api/chat",
                r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"keep_alive":1e300}"#,
            ),
            403,
            false,
        ),
        case(
            "keep_alive 9223372036854775808 as an integer literal (Go: float 2^63 -> 0)",
            post(
                "/api/generate",
                r#"{"model":"llama3.2","prompt":"hi","keep_alive":9223372036854775808}"#,
            ),
            403,
            false,
        ),
        case(
            "keep_alive 1e10 (Go: wraps negative, expires at once)",
            post(
                "/api/generate",
                r#"{"model":"llama3.2","prompt":"hi","keep_alive":1e10}"#,
            ),
            403,
            false,
        ),
        case(
            "empty prompt string loads the model",
            post("/api/generate", r#"{"model":"llama3.2","prompt":""}"#),
            403,
            false,
        ),
        case(
            "messages null loads the model",
            post("/api/chat", r#"{"model":"llama3.2","messages":null}"#),
            403,
            false,
        ),
        case(
            "embed with an empty string input loads the model",
            post("/api/embed", r#"{"model":"llama3.2","input":""}"#),
            403,
            false,
        ),
        case(
            "keep_alive -0 (Go: not negative, int(-0)=0: unload)",
            post(
                "/api/generate",
                r#"{"model":"llama3.2","prompt":"hi","keep_alive":-0.0}"#,
            ),
            403,
            false,
        ),
        case(
            "keep_alive 0.999 (Go: int truncates to 0)",
            post(
                "/api/generate",
                r#"{"model":"llama3.2","prompt":"hi","keep_alive":0.999}"#,
            ),
            403,
            false,
        ),
        case(
            "keep_alive \"-0s\" (Go: 0, not negative)",
            post(
                "/api/generate",
                r#"{"model":"llama3.2","prompt":"hi","keep_alive":"-0s"}"#,
            ),
            403,
            false,
        ),
        case(
            "keep_alive \"1\u{b5}s\" (micro sign)",
            post(
                "/api/generate",
                "{\"model\":\"llama3.2\",\"prompt\":\"hi\",\"keep_alive\":\"1\u{b5}s\"}",
            ),
            403,
            false,
        ),
        case(
            "keep_alive 3600 is a normal keep (control; the test server has no /api/generate)",
            post(
                "/api/generate",
                r#"{"model":"llama3.2","prompt":"hi","keep_alive":3600}"#,
            ),
            404,
            true,
        ),
    ];
    check_all(&cg, &vip, &server, &agent, &cases, 10);
}

const CONNECT_CLIENT: &str = r#"
import socket, sys
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
req = b"POST /api/pull HTTP/1.1\r\nHost: m\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{\"model\":\"llama3.2\"}"
try:
    if mode == "tcp":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5); s.connect((host, port)); s.sendall(req)
    elif mode == "mptcp":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
        s.settimeout(5); s.connect((host, port)); s.sendall(req)
    elif mode == "mptcp-unspecified":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
        s.settimeout(5); s.connect(("0.0.0.0", port)); s.sendall(req)
    elif mode == "mptcp6-mapped":
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM, 262)
        s.settimeout(5); s.connect(("::ffff:" + host, port)); s.sendall(req)
    elif mode == "fastopen-sendto":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.sendto(req, socket.MSG_FASTOPEN, (host, port)); s.settimeout(5)
    elif mode == "fastopen-connect":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, 30, 1)
        s.settimeout(5); s.connect((host, port)); s.sendall(req)
    elif mode == "v6-mapped":
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.settimeout(5); s.connect(("::ffff:" + host, port)); s.sendall(req)
    elif mode == "v6-mapped-fastopen":
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.sendto(req, socket.MSG_FASTOPEN, ("::ffff:" + host, port)); s.settimeout(5)
    out = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        out += d
    print(out.decode(errors="replace").split("\r\n")[0])
except Exception as e:
    print("ERR", type(e).__name__, e)
"#;

/// The connect hook must see every way a stream socket can reach a target: MPTCP sockets
/// (SOCK_STREAM, IPPROTO_MPTCP), TCP Fast Open (`sendto(MSG_FASTOPEN)` and
/// `TCP_FASTOPEN_CONNECT`), and IPv4-mapped addresses on IPv6 sockets. Each sends a pull to
/// a server that really listens on the target address: intercepted, it is refused (403);
/// not intercepted, the server gets it.
#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn mptcp_fast_open_and_v4_mapped_connects_are_intercepted() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let port = server.addr.port();
    let cg = TestCgroup::new("more-connect");
    let agent = Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "closed",
        targets: format!(
            "  - name: ollama\n    match: \"127.0.0.1:{port}\"\n    protocol: http\n    server: ollama\n"
        ),
        listen_v6: true,
        extra: pack("ollama-safe"),
    });
    let mut failed = Vec::new();
    for mode in [
        "tcp",
        "mptcp",
        "mptcp-unspecified",
        "mptcp6-mapped",
        "fastopen-sendto",
        "fastopen-connect",
        "v6-mapped",
        "v6-mapped-fastopen",
    ] {
        let before = seen(&server).len();
        let out = cg
            .command("python3")
            .args(["-c", CONNECT_CLIENT, mode, "127.0.0.1", &port.to_string()])
            .output()
            .expect("python3");
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let reached = seen(&server).len() > before;
        // Refused by policy (403) is right; a refused connect (fail closed) is safe too but
        // not service: both are reported, only reaching the server fails hard.
        if reached || !line.contains("403") {
            failed.push(format!(
                "{mode}: reached the server: {reached}; client: {line}"
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{}\nagent log:\n{}",
        failed.join("\n"),
        agent.log_text()
    );
}

fn vm_hwm_kib(agent: &Agent) -> u64 {
    let pid = agent.child.as_ref().expect("agent running").id();
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A parsed body is larger than its bytes: a 15 MiB array of `0` is 7.8 million
/// `serde_json::Value`s (32 bytes each, plus vector growth), about 16-32 times its bytes. The
/// parse is charged to the body budget as it grows, and one body's tree may take at most
/// `max_request_body_bytes`: this one is refused (413) long before, and the agent's peak
/// memory grows by a small multiple of the body, not by the tree's full size.
#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn a_json_body_of_tiny_values_costs_memory_near_its_size() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("more-jsonmem");
    let agent = start(&cg, &vip, &server, "ollama", &pack("ollama-safe"));
    let small = raw(
        &cg,
        &vip,
        &request("POST", "/api/pull", &[JSON], br#"{"model":"llama3.2"}"#),
    );
    assert_eq!(status(&small), 403, "{small}");
    let before = vm_hwm_kib(&agent);
    let n = 15 * 1024 * 1024 / 2 - 64;
    let mut body = String::with_capacity(n * 2 + 64);
    body.push_str(r#"{"model":"llama3.2","x":["#);
    body.push('0');
    for _ in 1..n {
        body.push_str(",0");
    }
    body.push_str("]}");
    let resp = raw(
        &cg,
        &vip,
        &request("POST", "/api/pull", &[JSON], body.as_bytes()),
    );
    let after = vm_hwm_kib(&agent);
    let grew_mib = after.saturating_sub(before) / 1024;
    eprintln!(
        "body {} MiB: agent VmHWM {} -> {} MiB (+{grew_mib} MiB)",
        body.len() >> 20,
        before / 1024,
        after / 1024
    );
    assert_eq!(
        status(&resp),
        413,
        "{}",
        resp.lines().next().unwrap_or_default()
    );
    assert!(
        resp.contains("more JSON values than Sluice inspects"),
        "{resp}"
    );
    assert!(
        grew_mib <= 3 * (body.len() as u64 >> 20),
        "a {} MiB body raised the agent's peak RSS by {grew_mib} MiB; the 128 MiB body budget \
         then admits {} such requests at once",
        body.len() >> 20,
        128 / (body.len() >> 20).max(1)
    );
}

const H2_IDLE: &str = r#"
import socket, sys, time
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=1)
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
if mode == "open-stream":
    # HEADERS on stream 1: POST /api/chat, authority m, no END_STREAM: a body never sent.
    block = b"\x83\x86" + b"\x04\x09/api/chat" + b"\x01\x01m"
    s.sendall(len(block).to_bytes(3, "big") + b"\x01\x04" + (1).to_bytes(4, "big") + block)
elif mode == "trickle":
    block = b"\x83\x86" + b"\x04\x09/api/chat" + b"\x01\x01m"
    s.sendall(len(block).to_bytes(3, "big") + b"\x01\x04" + (1).to_bytes(4, "big") + block)
start = time.monotonic()
closed = None
got = b""
last = 0
while time.monotonic() - start < 12:
    if mode == "trickle" and time.monotonic() - last > 0.3:
        try:
            s.sendall(b"\x00\x00\x01\x00\x00" + (1).to_bytes(4, "big") + b" ")
        except OSError:
            closed = time.monotonic() - start
            break
        last = time.monotonic()
    try:
        d = s.recv(65536)
        if not d:
            closed = time.monotonic() - start
            break
        got += d
    except socket.timeout:
        continue
    except OSError:
        closed = time.monotonic() - start
        break
print(("closed %.1f" % closed) if closed is not None else "open", len(got))
"#;

/// HTTP/2 connections are held to the same timeouts as HTTP/1: a connection that only sent
/// its preface and SETTINGS is closed by the idle timeout, one that opened a request stream
/// and never sends its body is ended by the body deadline, and one that trickles a byte of
/// body every 300 ms is ended by the body deadline too.
#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn idle_and_stalled_http2_connections_are_closed() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("more-h2idle");
    let agent = start(
        &cg,
        &vip,
        &server,
        "ollama",
        &format!(
            "header_timeout_ms: 800\nbody_timeout_ms: 1500\nidle_timeout_secs: 2\n{}",
            pack("ollama-safe")
        ),
    );
    let mut failed = Vec::new();
    for mode in ["preface-only", "open-stream", "trickle"] {
        let t = Instant::now();
        let out = cg
            .command("python3")
            .args(["-c", H2_IDLE, &vip, "8000", mode])
            .output()
            .expect("python3");
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string()
            + &String::from_utf8_lossy(&out.stderr);
        eprintln!("{mode}: {line} ({:?})", t.elapsed());
        if !line.starts_with("closed") {
            failed.push(format!("{mode}: {line}"));
        }
    }
    assert!(seen(&server).is_empty(), "{:?}", seen(&server));
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    agent.status().expect("agent still answers");
}

/// Model names with controls that `char::is_control` misses or that terminals interpret
/// reach the `request` record escaped in the text log.
#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn hostile_models_cannot_forge_text_log_lines() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("more-logs");
    let agent = Agent::start_with_log_format(
        &AgentSpec {
            cgroup: cg.rel.clone(),
            fail_mode: "open",
            targets: format!(
                "  - name: models\n    match: \"{vip}:8000\"\n    upstream: \"{}\"\n    protocol: http\n    server: openai\n",
                server.addr
            ),
            listen_v6: false,
            extra: pack("openai-safe"),
        },
        "text",
    );
    let models = [
        r#"x\nINFO forged one"#,
        r#"x\rINFO forged two"#,
        r#"x\u2028INFO forged three"#,
        r#"x\u0085INFO forged four"#,
        r#"x\u001b[2KINFO forged five"#,
        r#"x\u000bINFO forged six"#,
        r#"x\u000cINFO forged seven"#,
        r#"x\u2029INFO forged eight"#,
        r#"x\u200eINFO forged nine"#,
    ];
    for m in models {
        let body = format!(r#"{{"model":"{m}","messages":[{{"role":"user","content":"hi"}}]}}"#);
        raw(
            &cg,
            &vip,
            &request("POST", "/v1/chat/completions", &[JSON], body.as_bytes()),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = agent.log_text();
    while log.matches(" request ").count() < models.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        log = agent.log_text();
    }
    let mut bad = Vec::new();
    for line in log.lines().filter(|l| !l.is_empty()) {
        if line.contains("INFO forged") && !line.contains(" request ") && !line.contains("sluice") {
            bad.push(line.to_string());
        }
        let raw: Vec<char> = line
            .chars()
            .filter(|c| {
                c.is_control()
                    || matches!(*c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
            })
            .collect();
        if !raw.is_empty() {
            bad.push(format!("raw {raw:?} in {line:?}"));
        }
    }
    // Each hostile model's line break landed inside a request line, never starting one.
    for l in log.lines() {
        if l.starts_with("INFO forged") || l.trim_start().starts_with("INFO forged") {
            bad.push(format!("forged line {l:?}"));
        }
    }
    assert!(bad.is_empty(), "{}\nlog:\n{log}", bad.join("\n"));
}

/// Request-target, upgrade and model-name variants on Ollama not in the other suites.
#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn ollama_fragments_upgrades_and_model_spellings() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("more-ollama");
    let agent = start(&cg, &vip, &server, "ollama", &pack("ollama-safe"));
    let pull = br#"{"model":"llama3.2"}"#;
    let chat = |model: &str| {
        format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
    };
    let post = |path: &str, body: &str| request("POST", path, &[JSON], body.as_bytes());
    let cases = vec![
        case(
            "fragment after a pull",
            request("POST", "/api/pull#frag", &[JSON], pull),
            403,
            false,
        ),
        case(
            "fragment hiding a pull behind a chat path",
            request("POST", "/api/chat#/../pull", &[JSON], pull),
            403,
            false,
        ),
        case(
            "absolute-form with userinfo and a fragment",
            request("POST", "http://a@models/api/pull#x", &[JSON], pull),
            403,
            false,
        ),
        case(
            "Upgrade: websocket without Connection: upgrade",
            request("POST", "/api/pull", &[JSON, "Upgrade: websocket"], pull),
            403,
            false,
        ),
        case(
            "Connection: keep-alive, UPGRADE with Upgrade: h2c on a chat",
            request(
                "POST",
                "/api/chat",
                &[JSON, "Connection: keep-alive, UPGRADE", "Upgrade: h2c"],
                chat("llama3.2").as_bytes(),
            ),
            403,
            false,
        ),
        case(
            "HTTP/1.0 Upgrade",
            b"GET /api/tags HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n".to_vec(),
            403,
            false,
        ),
        case(
            "cloud model with a tab after it",
            post("/api/chat", &chat(r"x:cloud\t")),
            403,
            false,
        ),
        case(
            "cloud model with a newline before it",
            post("/api/chat", &chat(r"\nx:cloud")),
            403,
            false,
        ),
        case(
            "cloud model with a host and namespace",
            post("/api/chat", &chat("ollama.com/library/gpt-oss:120b-CLOUD")),
            403,
            false,
        ),
        case(
            "cloud model through the OpenAI layer",
            post("/v1/chat/completions", &chat("x:cloud")),
            403,
            false,
        ),
        case(
            "cloud model through the OpenAI layer, capitalised key",
            post(
                "/v1/chat/completions",
                r#"{"MODEL":"x:cloud","messages":[{"role":"user","content":"hi"}]}"#,
            ),
            403,
            false,
        ),
        case(
            "cloud model in /v1/embeddings",
            post("/v1/embeddings", r#"{"model":"x:cloud","input":"hi"}"#),
            403,
            false,
        ),
        case(
            "cloud model in /v1/completions",
            post("/v1/completions", r#"{"model":"x:cloud","prompt":"hi"}"#),
            403,
            false,
        ),
        case(
            "cloud model in the Anthropic layer (/v1/messages)",
            post(
                "/v1/messages",
                r#"{"model":"x:cloud","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
            ),
            403,
            false,
        ),
        case(
            "cloud model in an urlencoded form body (Go FormValue parses it)",
            request(
                "POST",
                "/v1/audio/transcriptions",
                &["Content-Type: application/x-www-form-urlencoded"],
                b"model=x%3Acloud",
            ),
            403,
            false,
        ),
        case(
            "plain chat (control)",
            post("/api/chat", &chat("llama3.2")),
            200,
            true,
        ),
    ];
    check_all(&cg, &vip, &server, &agent, &cases, 10);
    let headers = server
        .seen
        .headers
        .lock()
        .map(|h| h.clone())
        .unwrap_or_default();
    assert!(
        !headers.iter().any(|h| h.starts_with("upgrade")),
        "an Upgrade header reached the server: {headers:?}"
    );
}

/// Management and admin routes of the other server families through spellings that a naive
/// route table misses.
#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn other_families_admin_routes_are_refused_in_every_spelling() {
    require_root();
    for (family, pack_name, cases) in [
        (
            "vllm",
            "vllm-safe",
            vec![
                ("POST", "/v1/load_lora_adapter?x=1"),
                ("POST", "/v1/load_lora_adapter;x"),
                ("POST", "/v1/load_lora_%61dapter"),
                ("POST", "/collective_rpc"),
                ("POST", "/sleep?level=1"),
                ("POST", "/reset_prefix_cache"),
                ("POST", "/scale_elastic_ep"),
                ("POST", "/V1/load_lora_adapter"),
                ("POST", "http://x/v1/unload_lora_adapter"),
            ],
        ),
        (
            "llama-cpp",
            "llamacpp-safe",
            vec![
                ("POST", "/slots/0?action=erase"),
                ("GET", "/slots"),
                ("POST", "/lora-adapters"),
                ("POST", "/props"),
                ("POST", "/%70rops"),
                ("POST", "/slots/%30?action=save"),
            ],
        ),
        (
            "anthropic",
            "openai-safe",
            vec![
                ("POST", "/v1/messages/batches"),
                ("POST", "/v1/files"),
                ("GET", "/v1/organizations/users"),
            ],
        ),
        (
            "tgi",
            "tgi-safe",
            vec![
                ("POST", "/metrics"),
                ("POST", "/%67enerate"),
                ("POST", "/generate/"),
            ],
        ),
    ] {
        let server = servers::http("127.0.0.1:0");
        let vip = virtual_ip();
        let cg = TestCgroup::new("more-families");
        let agent = start(&cg, &vip, &server, family, &pack(pack_name));
        let mut failed = Vec::new();
        for (method, path) in cases {
            let before = seen(&server).len();
            let resp = raw(&cg, &vip, &request(method, path, &[JSON], b"{}"));
            let reached = seen(&server).len() > before;
            let st = status(&resp);
            if reached || !(st == 403 || st == 400) {
                failed.push(format!("{family} {method} {path}: {st}, reached {reached}"));
            }
        }
        assert!(
            failed.is_empty(),
            "{}\n{}",
            failed.join("\n"),
            agent.log_text()
        );
    }
}

/// A test policy that refuses one model on vLLM: a transcription upload naming it in an
/// `application/x-www-form-urlencoded` body (Starlette's `request.form()` reads it as it
/// reads multipart) must be refused as the multipart spelling is.
#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn a_model_named_in_an_urlencoded_form_is_judged() {
    require_root();
    let dir = sluice_tests::TempDir::new("more-formpack");
    fs::write(
        dir.path().join("pack.yaml"),
        "apiVersion: sluice.dev/v1alpha1\nkind: PolicyPack\nmetadata:\n  name: forms\nspec:\n  rules:\n    - id: deny-forbidden\n      action: deny\n      match:\n        models: [\"forbidden*\"]\n    - id: allow-rest\n      action: allow\n      match: {}\n",
    )
    .expect("pack");
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("more-forms");
    let agent = start(
        &cg,
        &vip,
        &server,
        "vllm",
        &format!("policies: [\"{}\"]\n", dir.path().display()),
    );
    let cases = vec![
        case(
            "multipart form naming the model (control)",
            request(
                "POST",
                "/v1/audio/transcriptions",
                &["Content-Type: multipart/form-data; boundary=b0und"],
                b"--b0und\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nforbidden-1\r\n--b0und--\r\n",
            ),
            403,
            false,
        ),
        case(
            "urlencoded form naming the model",
            request(
                "POST",
                "/v1/audio/transcriptions",
                &["Content-Type: application/x-www-form-urlencoded"],
                b"model=forbidden-1&language=en",
            ),
            403,
            false,
        ),
        case(
            "urlencoded form, translation route",
            request(
                "POST",
                "/v1/audio/translations",
                &["Content-Type: application/x-www-form-urlencoded"],
                b"model=forbidden-1",
            ),
            403,
            false,
        ),
    ];
    check_all(&cg, &vip, &server, &agent, &cases, 10);
}
