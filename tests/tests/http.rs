//! End-to-end HTTP-aware interception with policy: real clients (the OpenAI Python SDK,
//! curl, raw sockets) inside a test cgroup, the real agent, a real OpenAI/Ollama-compatible
//! server with real SSE/NDJSON streaming. Needs root: `#[ignore]`d, run by `cargo xtask test` as root.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::{
    Agent, AgentSpec, TestCgroup, client_script, curl, log_events, policies_dir, require_root,
    run_ok, servers, servers::Server, virtual_ip, wait_log_events,
};

/// An HTTP target on `vip:8000` forwarding to `server`, with the given server family.
fn http_target(vip: &str, server: &Server, family: &str) -> String {
    format!(
        "  - name: models\n    match: \"{vip}:8000\"\n    upstream: \"{}\"\n    protocol: http\n    server: {family}\n",
        server.addr
    )
}

fn start(cg: &TestCgroup, targets: String, policies: &[&Path], extra: &str) -> Agent {
    let list: Vec<String> = policies
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect();
    Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "open",
        targets,
        listen_v6: true,
        extra: format!("policies: [{}]\n{extra}", list.join(", ")),
    })
}

fn sdk(cg: &TestCgroup, vip: &str, model: &str, mode: &str, release: Option<String>) -> Value {
    let mut cmd = cg.command("python3");
    cmd.arg(client_script("openai_chat.py")).args([
        format!("http://{vip}:8000/v1"),
        model.to_string(),
        mode.to_string(),
    ]);
    if let Some(r) = release {
        cmd.arg(r);
    }
    serde_json::from_str(run_ok(&mut cmd).trim()).expect("openai_chat.py json")
}

fn upstream_saw(server: &Server, what: &str) -> bool {
    server
        .seen
        .requests
        .lock()
        .map(|r| r.iter().any(|x| x == what))
        .unwrap_or(false)
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn openai_sdk_streams_and_completes_through_interception() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("sdk");
    let agent = start(
        &cg,
        http_target(&vip, &server, "openai"),
        &[&policies_dir().join("openai-safe")],
        "",
    );

    let r = sdk(&cg, &vip, "test-model", "plain", None);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["text"], "echo: hello");

    // The server holds the stream after its first chunk until the client has received it,
    // so this finishes only if Sluice passes chunks through as they come.
    let release = format!("http://{}/release", server.addr);
    let r = sdk(&cg, &vip, "gated", "stream", Some(release));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["text"], "echo: hello");
    assert!(r["chunks"].as_u64() >= Some(3), "{r}");

    let reqs = wait_log_events(&agent, "request", 2);
    assert_eq!(reqs.len(), 2, "{}", agent.log_text());
    let stream = reqs
        .iter()
        .find(|e| e["model"] == "gated")
        .expect("streamed request logged");
    assert_eq!(stream["decision"], "allow");
    assert_eq!(stream["rules"], "openai-allow-use");
    assert_eq!(stream["streaming"], true);
    assert_eq!(stream["comm"], "python3");
    // Recorded once, when the stream ended, with its size.
    assert_eq!(stream["outcome"], "complete", "{stream}");
    assert!(stream["response_bytes"].as_u64() > Some(300), "{stream}");
    // The client's key never shows up in the agent's log.
    assert!(!agent.log_text().contains("sk-client-secret"));
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn a_denied_model_is_refused_with_a_readable_error_and_never_reaches_the_server() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("model");
    let tmp = sluice_tests::TempDir::new("pack");
    let dir = tmp.path().to_path_buf();
    std::fs::write(
        dir.join("pack.yaml"),
        "apiVersion: sluice.dev/v1alpha1\nkind: PolicyPack\nmetadata: {name: models}\nspec:\n  rules:\n    - id: only-approved-models\n      description: only approved models\n      action: deny\n      match:\n        operations: [inference]\n        exceptModels: [\"test-*\"]\n",
    )
    .expect("write pack");
    let _agent = start(
        &cg,
        http_target(&vip, &server, "openai"),
        &[&policies_dir().join("openai-safe"), &dir],
        "",
    );
    let ok = sdk(&cg, &vip, "test-model", "plain", None);
    assert_eq!(ok["ok"], true, "{ok}");
    let denied = sdk(&cg, &vip, "gpt-4o", "plain", None);
    assert_eq!(denied["ok"], false, "{denied}");
    assert_eq!(denied["status"], 403);
    let msg = denied["message"].as_str().unwrap_or_default();
    assert!(msg.contains("only-approved-models"), "{msg}");
    assert_eq!(denied["body"]["code"], "sluice_policy_denied", "{denied}");
    assert_eq!(denied["body"]["type"], "permission_error", "{denied}");
    let reached = server.seen.requests.lock().map(|r| r.len()).unwrap_or(0);
    assert_eq!(reached, 1, "only the approved request may reach the server");
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn ollama_pull_is_blocked_with_an_ollama_error_and_chat_streams() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("ollama");
    let agent = start(
        &cg,
        http_target(&vip, &server, "ollama"),
        &[&policies_dir().join("ollama-safe")],
        "",
    );
    let url = format!("http://{vip}:8000/api/pull");
    let out = curl(
        &cg,
        &[
            "-w",
            "\n%{http_code}",
            "-d",
            r#"{"model":"llama3.2"}"#,
            &url,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').expect("status line");
    assert_eq!(code, "403", "{text}");
    let v: Value = serde_json::from_str(body).expect("ollama error json");
    let err = v["error"].as_str().expect("{\"error\": string}");
    assert!(err.contains("ollama-deny-management"), "{err}");
    assert!(!upstream_saw(&server, "POST /api/pull"));

    let chat = curl(
        &cg,
        &[
            "-d",
            r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}"#,
            &format!("http://{vip}:8000/api/chat"),
        ],
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&chat.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("ndjson line"))
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[3]["done"], true);
    // The operator sees both outcomes counted.
    let st = agent.status().expect("status");
    assert_eq!(
        (st["http_allowed"].as_u64(), st["http_denied"].as_u64()),
        (Some(1), Some(1)),
        "{st}"
    );
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn http2_prior_knowledge_and_unknown_routes() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("h2");
    let _agent = start(
        &cg,
        http_target(&vip, &server, "vllm"),
        &[&policies_dir().join("vllm-safe")],
        "",
    );
    let out = curl(
        &cg,
        &[
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_version}",
            &format!("http://{vip}:8000/v1/models"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("\n2"),
        "not HTTP/2: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("test-model"), "{text}");
    // vLLM's collective_rpc runs any worker method: refused, in OpenAI's error shape.
    let out = curl(
        &cg,
        &[
            "-w",
            "\n%{http_code}",
            "-d",
            "{}",
            &format!("http://{vip}:8000/collective_rpc"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n403"), "{text}");
    assert!(text.contains("vllm-deny-ops"), "{text}");
    // A route no adapter knows is denied by default.
    let out = curl(
        &cg,
        &[
            "-w",
            "\n%{http_code}",
            &format!("http://{vip}:8000/some/new/route"),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("\n403"));
    assert!(!upstream_saw(&server, "POST /collective_rpc"));
    assert!(!upstream_saw(&server, "GET /some/new/route"));
}

/// Sends raw bytes on a fresh connection from inside the cgroup (Python socket) and returns
/// the status line of the answer.
fn raw_status(cg: &TestCgroup, vip: &str, payload: &str) -> String {
    let script = format!(
        "import socket,sys\ns=socket.create_connection(('{vip}',8000),timeout=10)\ns.sendall(sys.argv[1].encode())\nd=b''\nwhile b'\\r\\n' not in d:\n    c=s.recv(4096)\n    if not c: break\n    d+=c\nprint(d.split(b'\\r\\n')[0].decode())\n"
    );
    run_ok(cg.command("python3").args(["-c", &script, payload]))
        .trim()
        .to_string()
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn oversized_and_malformed_requests_get_4xx_while_other_connections_continue() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("limits");
    let agent = start(
        &cg,
        http_target(&vip, &server, "openai"),
        &[&policies_dir().join("openai-safe")],
        "max_request_body_bytes: 4096\nmax_header_bytes: 16384\n",
    );
    // A keep-alive connection from a process in the cgroup, held open throughout.
    let mut keep = cg
        .command("python3")
        .args(["-c", &format!(
            "import http.client,sys\nc=http.client.HTTPConnection('{vip}',8000,timeout=20)\nfor line in sys.stdin:\n    c.request('GET','/v1/models')\n    r=c.getresponse(); r.read(); print(r.status, flush=True)\n"
        )])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("keep-alive client");
    let mut keep_in = keep.stdin.take().expect("stdin");
    let mut keep_out = keep.stdout.take().expect("stdout");
    let mut ask = |tag: &str| {
        writeln!(keep_in, "{tag}").expect("write");
        let mut b = [0u8; 4];
        keep_out.read_exact(&mut b).expect("read");
        assert_eq!(&b, b"200\n", "keep-alive connection failed at {tag}");
    };
    ask("before");

    let big = "x".repeat(10_000);
    let body = format!(
        "{{\"model\":\"test-model\",\"messages\":[{{\"role\":\"user\",\"content\":\"{big}\"}}]}}"
    );
    let out = curl(
        &cg,
        &[
            "-w",
            "\n%{http_code}",
            "-H",
            "content-type: application/json",
            "-d",
            &body,
            &format!("http://{vip}:8000/v1/chat/completions"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n413"), "{text}");
    assert!(text.contains("sluice_body_too_large"), "{text}");
    // Same, chunked (no declared length): the limit applies while reading.
    let out = curl(
        &cg,
        &[
            "-w",
            "\n%{http_code}",
            "-H",
            "transfer-encoding: chunked",
            "-d",
            &body,
            &format!("http://{vip}:8000/v1/chat/completions"),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("\n413"));

    assert_eq!(
        raw_status(&cg, &vip, "BLAH BLAH\r\n\r\n"),
        "HTTP/1.1 400 Bad Request"
    );
    let huge_header = format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    assert_eq!(
        raw_status(&cg, &vip, &huge_header),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    let out = curl(
        &cg,
        &[
            "-w",
            "\n%{http_code}",
            "-d",
            "{not json",
            &format!("http://{vip}:8000/v1/chat/completions"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("\n400") && text.contains("sluice_bad_json"),
        "{text}"
    );
    let out = curl(
        &cg,
        &[
            "-w",
            "\n%{http_code}",
            "--path-as-is",
            &format!("http://{vip}:8000/v1/../v1/models"),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("\n400"));
    let out = curl(
        &cg,
        &[
            "-w",
            "\n%{http_code}",
            "-H",
            "content-encoding: gzip",
            "-d",
            "{}",
            &format!("http://{vip}:8000/v1/chat/completions"),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("\n415"));

    // The same top-level key twice could mean different things to Sluice and the server.
    let out = curl(
        &cg,
        &[
            "-w",
            "\n%{http_code}",
            "-d",
            r#"{"model":"test-model","model":"gpt-4o","messages":[]}"#,
            &format!("http://{vip}:8000/v1/chat/completions"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("\n400") && text.contains("sluice_ambiguous_json"),
        "{text}"
    );

    // Conflicting framing (Content-Length and chunked) is re-framed, never passed on.
    let body = r#"{"model":"test-model","messages":[]}"#;
    let smuggle = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    // hyper reads the body as chunked (Transfer-Encoding wins, RFC 9112 §6.3) and Sluice
    // forwards it with the length it read: the server sees one well-framed request.
    assert_eq!(raw_status(&cg, &vip, &smuggle), "HTTP/1.1 200 OK");
    let seen: Vec<String> = server
        .seen
        .requests
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    assert!(
        seen.iter()
            .all(|r| r == "GET /v1/models" || r == "POST /v1/chat/completions"),
        "the server saw a request the client did not send: {seen:?}"
    );

    ask("after");
    drop(keep_in);
    let _ = keep.wait();
    // Only the re-framed request above may have reached the server; every refused one not.
    let posts: Vec<String> = server
        .seen
        .requests
        .lock()
        .map(|r| {
            r.iter()
                .filter(|x| x.starts_with("POST"))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    assert!(
        posts.len() <= 1,
        "a refused request reached the server: {posts:?}"
    );
    // The agent is still serving.
    assert!(agent.status().is_ok());
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn hot_reload_applies_good_policies_and_keeps_the_old_one_on_a_broken_file() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("reload");
    let tmp = sluice_tests::TempDir::new("reload");
    let dir = tmp.path().to_path_buf();
    let pack = dir.join("pack.yaml");
    let allow = |models: &str| {
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: PolicyPack\nmetadata: {{name: reload}}\nspec:\n  rules:\n    - id: allow-{}\n      action: allow\n      match:\n        operations: [inference]\n        models: [{models}]\n",
            models.replace(['"', ',', ' '], "")
        )
    };
    std::fs::write(&pack, allow("\"alpha\"")).expect("write");
    let agent = start(&cg, http_target(&vip, &server, "openai"), &[&dir], "");
    assert_eq!(sdk(&cg, &vip, "alpha", "plain", None)["ok"], true);
    assert_eq!(sdk(&cg, &vip, "beta", "plain", None)["status"], 403);

    // A good change is picked up (file watch), without restarting or dropping anything.
    std::fs::write(&pack, allow("\"alpha\", \"beta\"")).expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    while sdk(&cg, &vip, "beta", "plain", None)["ok"] != true {
        assert!(
            Instant::now() < deadline,
            "reload never applied:\n{}",
            agent.log_text()
        );
        thread::sleep(Duration::from_millis(200));
    }
    // A broken file is reported; the running policy stays.
    std::fs::write(
        &pack,
        "apiVersion: sluice.dev/v1alpha1\nkind: PolicyPack\nspec: [broken\n",
    )
    .expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    while log_events(&agent, "policy reload failed; keeping the running policy").is_empty() {
        assert!(
            Instant::now() < deadline,
            "broken file not reported:\n{}",
            agent.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let failed = log_events(&agent, "policy reload failed; keeping the running policy");
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("pack.yaml:")),
        "{failed:?}"
    );
    assert_eq!(sdk(&cg, &vip, "beta", "plain", None)["ok"], true);
    assert_eq!(sdk(&cg, &vip, "gamma", "plain", None)["status"], 403);

    // SIGHUP reloads too.
    std::fs::write(&pack, allow("\"gamma\"")).expect("write");
    if let Some(c) = agent.child.as_ref() {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGHUP) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while sdk(&cg, &vip, "gamma", "plain", None)["ok"] != true {
        assert!(Instant::now() < deadline, "SIGHUP reload never applied");
        thread::sleep(Duration::from_millis(100));
    }
    let _ = TcpStream::connect(server.addr);
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn grpc_over_h2c_passes_and_is_refused_with_a_grpc_status() {
    require_root();
    // A real grpcio server, outside the cgroup.
    let mut grpc_server = std::process::Command::new("python3")
        .arg(client_script("grpc_echo.py"))
        .arg("serve")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("grpc server");
    let mut port = String::new();
    {
        use std::io::BufRead as _;
        let out = grpc_server.stdout.take().expect("stdout");
        std::io::BufReader::new(out)
            .read_line(&mut port)
            .expect("port");
    }
    let upstream = format!("127.0.0.1:{}", port.trim());
    let vip = virtual_ip();
    let cg = TestCgroup::new("grpc");
    let agent = start(
        &cg,
        format!(
            "  - name: triton\n    match: \"{vip}:8000\"\n    upstream: \"{upstream}\"\n    protocol: http\n    server: triton\n"
        ),
        &[&policies_dir().join("triton-safe")],
        "",
    );
    let call = |method: &str| -> Value {
        let out = run_ok(
            cg.command("python3")
                .arg(client_script("grpc_echo.py"))
                .args(["call", &format!("{vip}:8000"), method]),
        );
        serde_json::from_str(out.trim()).expect("grpc_echo json")
    };
    let ok = call("/inference.GRPCInferenceService/ModelInfer");
    assert_eq!(ok["ok"], true, "{ok}\n{}", agent.log_text());
    assert_eq!(ok["echoed"], true);
    let denied = call("/inference.GRPCInferenceService/RepositoryModelLoad");
    assert_eq!(denied["code"], "PERMISSION_DENIED", "{denied}");
    assert!(
        denied["details"]
            .as_str()
            .is_some_and(|d| d.contains("triton-deny-control")),
        "{denied}"
    );
    let _ = grpc_server.kill();
    let _ = grpc_server.wait();
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn an_upstream_that_dies_mid_stream_is_not_turned_into_a_clean_end() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("dies");
    let agent = start(
        &cg,
        http_target(&vip, &server, "openai"),
        &[&policies_dir().join("openai-safe")],
        "",
    );
    let out = curl(
        &cg,
        &[
            "-N",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"model":"dies","stream":true,"messages":[{"role":"user","content":"x"}]}"#,
            &format!("http://{vip}:8000/v1/chat/completions"),
        ],
    );
    // The chunk sent before the crash arrived, and the client knows the stream is broken.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("echo:"),
        "{out:?}"
    );
    assert_eq!(
        out.status.code(),
        Some(18),
        "curl must see a truncated transfer: {out:?}"
    );
    let rec = wait_log_events(&agent, "request", 1);
    assert_eq!(rec.len(), 1, "{}", agent.log_text());
    assert_eq!(rec[0]["outcome"], "upstream error", "{}", rec[0]);
}

/// An upstream that takes the request and never answers: the client gets 504 in the
/// server's own error shape within the head timeout, and the request one record that says
/// why.
#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn an_upstream_that_never_answers_is_a_504_in_the_servers_shape() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("stalls");
    let agent = start(
        &cg,
        http_target(&vip, &server, "openai"),
        &[&policies_dir().join("openai-safe")],
        "upstream_head_timeout_ms: 500\n",
    );
    let t = Instant::now();
    let out = curl(
        &cg,
        &[
            "-w",
            "\n%{http_code}",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"model":"stalls","messages":[{"role":"user","content":"x"}]}"#,
            &format!("http://{vip}:8000/v1/chat/completions"),
        ],
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "not cut by the timeout"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').expect("body and status");
    assert_eq!(code, "504", "{out:?}\n{}", agent.log_text());
    let v: Value = serde_json::from_str(body).expect("a JSON error body");
    assert_eq!(v["error"]["code"], "sluice_upstream_timeout", "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&server.addr.to_string()) && message.contains("500 ms"),
        "{message}"
    );
    let rec = the_one_timed_out_record(&agent);
    assert_eq!(rec["status"], 504, "{rec}");
    // The agent goes on serving.
    let out = curl(&cg, &[&format!("http://{vip}:8000/v1/models")]);
    assert!(out.status.success(), "{out:?}");
}

/// A stream that goes silent past the idle timeout is cut exactly as one whose upstream
/// died: the bytes sent before it reach the client, and the client sees a truncated
/// transfer, never a clean end.
#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn a_stream_that_goes_silent_is_cut_not_ended() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("silent");
    let agent = start(
        &cg,
        http_target(&vip, &server, "openai"),
        &[&policies_dir().join("openai-safe")],
        "upstream_idle_timeout_ms: 500\n",
    );
    let t = Instant::now();
    let out = curl(
        &cg,
        &[
            "-N",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"model":"stalls","stream":true,"messages":[{"role":"user","content":"x"}]}"#,
            &format!("http://{vip}:8000/v1/chat/completions"),
        ],
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "not cut by the timeout"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("echo:"),
        "{out:?}"
    );
    assert_eq!(
        out.status.code(),
        Some(18),
        "curl must see a truncated transfer: {out:?}"
    );
    let rec = the_one_timed_out_record(&agent);
    assert!(
        rec["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("500 ms")),
        "{rec}"
    );
}

/// The request's one record, whose outcome says an upstream timeout ended it.
fn the_one_timed_out_record(agent: &Agent) -> Value {
    let mut rec = wait_log_events(agent, "request", 1);
    assert_eq!(rec.len(), 1, "{}", agent.log_text());
    let rec = rec.remove(0);
    assert!(
        rec["outcome"]
            .as_str()
            .is_some_and(|o| o.starts_with("upstream timeout: ")),
        "{rec}"
    );
    rec
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn both_runtime_models_serve_streams_and_many_connections() {
    require_root();
    for (runtime, threads) in [("shared", 2), ("per-core", 3)] {
        let server = servers::http("127.0.0.1:0");
        let vip = virtual_ip();
        let cg = TestCgroup::new("runtime");
        let agent = start(
            &cg,
            http_target(&vip, &server, "openai"),
            &[&policies_dir().join("openai-safe")],
            &format!("runtime: {runtime}\nworker_threads: {threads}\n"),
        );
        let release = format!("http://{}/release", server.addr);
        let r = sdk(&cg, &vip, "gated", "stream", Some(release));
        assert_eq!(r["ok"], true, "{runtime}: {r}");
        assert_eq!(r["text"], "echo: hello", "{runtime}");
        // Forty connections at once: with per-core runtimes the kernel spreads them over
        // the threads' listeners; every one must be answered whichever thread took it.
        let url = format!("http://{vip}:8000/v1/models");
        let clients: Vec<_> = (0..40)
            .map(|_| {
                cg.command("curl")
                    .args([
                        "-s",
                        "-m",
                        "10",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        &url,
                    ])
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("curl")
            })
            .collect();
        for c in clients {
            let out = c.wait_with_output().expect("curl output");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{runtime}");
        }
        if runtime == "per-core" {
            assert!(
                agent.log_text().contains("per-core runtimes"),
                "{}",
                agent.log_text()
            );
        }
        let reqs = wait_log_events(&agent, "request", 41);
        assert_eq!(reqs.len(), 41, "{runtime}: every request recorded once");
    }
}
