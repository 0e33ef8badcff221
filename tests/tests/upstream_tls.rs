//! End-to-end TLS origination: a workload speaks plain HTTP to a virtual address and the
//! agent speaks TLS to the real server (a TLS front on 127.0.0.1 with a CA made in the
//! test, before one of the test servers). Needs root: `#[ignore]`d, run by
//! `cargo xtask test` as root.
use std::process::Command;

use serde_json::Value;
use sluice_tests::{
    Agent, AgentSpec, TempDir, TestCgroup, client_script, curl, require_root, run_ok, servers, tls,
    unique, virtual_ip, write_secret,
};

/// One `protocol: http` OpenAI target per entry: (name, port on `vip`, upstream, YAML lines
/// added under the target).
fn start(cg: &TestCgroup, vip: &str, targets: &[(&str, u16, String, String)]) -> Agent {
    let targets = targets
        .iter()
        .map(|(name, port, upstream, extra)| {
            format!(
                "  - name: {name}\n    match: \"{vip}:{port}\"\n    upstream: \"{upstream}\"\n    protocol: http\n    server: openai\n    default: allow\n{extra}"
            )
        })
        .collect::<String>();
    Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "open",
        targets,
        listen_v6: true,
        extra: String::new(),
    })
}

/// `curl -i` in the cgroup: (status, body).
fn get(cg: &TestCgroup, url: &str) -> (u16, String) {
    let out = curl(cg, &["-i", url]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn handshakes(front: &tls::TlsFront) -> Vec<(Option<String>, Option<String>)> {
    front
        .handshakes
        .ok
        .lock()
        .map(|h| h.clone())
        .unwrap_or_default()
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn a_plain_http_workload_reaches_an_https_server_and_names_are_chosen_right() {
    require_root();
    let dir = TempDir::new("tls-basic");
    let ca = tls::TestCa::new(dir.path(), "good");
    let server = servers::http("127.0.0.1:0");
    let front = tls::front(
        server.addr,
        &ca.issue("server", &["localhost", "127.0.0.1"]),
        None,
    );
    let vip = virtual_ip();
    let cg = TestCgroup::new("tls-basic");
    let ca_file = ca.ca_file();
    let agent = start(
        &cg,
        &vip,
        &[
            // Named: SNI and the certificate check use `server_name`.
            (
                "named",
                8000,
                front.addr.to_string(),
                format!(
                    "    tls: {{ca_file: \"{}\", server_name: localhost}}\n",
                    ca_file.display()
                ),
            ),
            // No name: the upstream's host, here an IP address the certificate lists.
            (
                "by-ip",
                8001,
                front.addr.to_string(),
                format!("    tls: {{ca_file: \"{}\"}}\n", ca_file.display()),
            ),
            // The same server without `tls`: cleartext, which a TLS server refuses. Its
            // requests never borrow the TLS targets' pooled connections.
            ("cleartext", 8002, front.addr.to_string(), String::new()),
        ],
    );

    let (status, body) = get(&cg, &format!("http://{vip}:8000/v1/models"));
    assert_eq!(status, 200, "{body}\n{}", agent.log_text());
    assert!(body.contains("test-model"), "{body}");
    let (status, body) = get(&cg, &format!("http://{vip}:8001/v1/models"));
    assert_eq!(status, 200, "{body}\n{}", agent.log_text());
    let seen = handshakes(&front);
    assert_eq!(
        seen,
        vec![
            (Some("localhost".to_string()), Some("http/1.1".to_string())),
            // rustls sends no SNI for an IP address (RFC 6066 allows names only).
            (None, Some("http/1.1".to_string())),
        ]
    );

    // Several requests: pooled connections are reused, still over TLS.
    for _ in 0..5 {
        let (status, _) = get(&cg, &format!("http://{vip}:8000/v1/models"));
        assert_eq!(status, 200);
    }
    let (status, body) = get(&cg, &format!("http://{vip}:8002/v1/models"));
    assert_ne!(status, 200, "cleartext to a TLS server must fail: {body}");
    assert!(
        !failed_handshakes(&front, |_| true).is_empty(),
        "the cleartext target dialled its own connection"
    );
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn a_server_requiring_a_client_certificate_gets_it_only_when_configured() {
    require_root();
    let dir = TempDir::new("tls-mtls");
    let ca = tls::TestCa::new(dir.path(), "mtls");
    let server = servers::http("127.0.0.1:0");
    let front = tls::front(
        server.addr,
        &ca.issue("server", &["localhost"]),
        Some(&ca.ca_file()),
    );
    let client = ca.issue("client", &["sluice-agent"]);
    let vip = virtual_ip();
    let cg = TestCgroup::new("tls-mtls");
    let ca_file = ca.ca_file();
    let agent = start(
        &cg,
        &vip,
        &[
            (
                "with-cert",
                8000,
                front.addr.to_string(),
                format!(
                    "    tls:\n      ca_file: \"{}\"\n      server_name: localhost\n      client_cert: \"{}\"\n      client_key: \"{}\"\n",
                    ca_file.display(),
                    client.cert.display(),
                    client.key.display()
                ),
            ),
            (
                "without-cert",
                8001,
                front.addr.to_string(),
                format!(
                    "    tls: {{ca_file: \"{}\", server_name: localhost}}\n",
                    ca_file.display()
                ),
            ),
        ],
    );
    let (status, body) = get(&cg, &format!("http://{vip}:8001/v1/models"));
    assert_eq!(status, 502, "{body}");
    let failed = failed_handshakes(&front, |f| f.to_lowercase().contains("certificate"));
    assert!(
        failed
            .iter()
            .any(|f| f.to_lowercase().contains("certificate")),
        "the server refused for want of a client certificate: {failed:?}"
    );
    let (status, body) = get(&cg, &format!("http://{vip}:8000/v1/models"));
    assert_eq!(status, 200, "{body}\n{}", agent.log_text());
    // The key file's contents never reach the log.
    let key = std::fs::read_to_string(&client.key).expect("key");
    let secret_line = key
        .lines()
        .find(|l| !l.starts_with("-----"))
        .expect("key body");
    assert!(!agent.log_text().contains(secret_line));
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn a_wrong_ca_is_a_502_naming_the_target_the_name_and_why_and_the_log_says_it() {
    require_root();
    let dir = TempDir::new("tls-wrong-ca");
    let good = tls::TestCa::new(dir.path(), "good");
    let other = tls::TestCa::new(dir.path(), "other");
    let server = servers::http("127.0.0.1:0");
    let front = tls::front(server.addr, &good.issue("server", &["localhost"]), None);
    let vip = virtual_ip();
    let cg = TestCgroup::new("tls-wrong-ca");
    let agent = start(
        &cg,
        &vip,
        &[
            (
                "openai",
                8000,
                front.addr.to_string(),
                format!(
                    "    tls: {{ca_file: \"{}\", server_name: localhost}}\n",
                    other.ca_file().display()
                ),
            ),
            // The right CA, the wrong name.
            (
                "misnamed",
                8001,
                front.addr.to_string(),
                format!(
                    "    tls: {{ca_file: \"{}\", server_name: models.internal}}\n",
                    good.ca_file().display()
                ),
            ),
        ],
    );
    let (status, body) = get(&cg, &format!("http://{vip}:8000/v1/models"));
    assert_eq!(status, 502, "{body}");
    // In OpenAI's error shape, as the client's SDK expects.
    let v: Value = serde_json::from_str(&body).expect("JSON error body");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    let want = format!(
        "upstream {} (target openai, name localhost): TLS: invalid peer certificate: UnknownIssuer",
        front.addr
    );
    assert!(message.contains(&want), "{message}");
    let (status, body) = get(&cg, &format!("http://{vip}:8001/v1/models"));
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("(target misnamed, name models.internal): TLS: invalid peer certificate")
            && body.contains("not valid for name"),
        "{body}"
    );
    let log = agent.log_text();
    assert!(log.contains(&want), "{log}");
    assert!(server.peers().is_empty(), "nothing reached the server");
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn custody_end_to_end_a_keyless_workload_reaches_a_keyed_https_server() {
    require_root();
    let dir = TempDir::new("tls-custody");
    let ca = tls::TestCa::new(dir.path(), "custody");
    let key = format!("sk-canary-{}", unique("tlskey").replace(['/', '.'], "-"));
    let server = servers::keyed("127.0.0.1:0", &[&key]);
    let front = tls::front(server.addr, &ca.issue("server", &["localhost"]), None);
    let key_file = dir.path().join("openai.key");
    write_secret(&key_file, format!("{key}\n"));
    let vip = virtual_ip();
    let cg = TestCgroup::new("tls-custody");
    let agent = start(
        &cg,
        &vip,
        &[(
            "openai",
            8000,
            front.addr.to_string(),
            format!(
                "    credential: {{file: \"{}\"}}\n    tls: {{ca_file: \"{}\", server_name: localhost}}\n",
                key_file.display(),
                ca.ca_file().display()
            ),
        )],
    );

    // Straight to the HTTPS server, with its CA but without the key: refused.
    let direct = Command::new("curl")
        .args([
            "-sS",
            "-m",
            "10",
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["--cacert", &ca.ca_file().display().to_string()])
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", front.addr.port()),
        ])
        .arg(format!("https://localhost:{}/v1/models", front.addr.port()))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&direct.stdout),
        "401",
        "{}",
        String::from_utf8_lossy(&direct.stderr)
    );

    // The workload holds no key and speaks plain HTTP to the virtual address; the `Host`
    // it sends (a name of its choosing) does not reach the server: the configured name does.
    let out = curl(
        &cg,
        &[
            "-i",
            "-H",
            "Host: attacker-app.example",
            "-H",
            "X-Forwarded-Host: attacker-app.example",
            &format!("http://{vip}:8000/v1/models"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{text}\n{}",
        agent.log_text()
    );
    let hosts: Vec<String> = server
        .seen
        .headers
        .lock()
        .map(|h| {
            h.iter()
                .filter(|x| x.starts_with("host: ") || x.starts_with("x-forwarded-host"))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    // (The first is the direct curl's, above.)
    assert_eq!(
        hosts.last().map(String::as_str),
        Some("host: localhost"),
        "{hosts:?}"
    );
    assert!(
        !hosts.iter().any(|h| h.contains("attacker")),
        "the client's Host never reached the server: {hosts:?}"
    );
    let want = format!("authorization: Bearer {key}");
    let keyed = server
        .seen
        .headers
        .lock()
        .map(|h| h.iter().filter(|x| **x == want).count())
        .unwrap_or(0);
    assert_eq!(keyed, 1, "the agent put the key in, over TLS");
    assert!(
        handshakes(&front)
            .iter()
            .any(|(sni, _)| sni.as_deref() == Some("localhost"))
    );
    assert!(!agent.log_text().contains(&key), "key in the agent's log");
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn grpc_goes_over_tls_with_alpn_h2() {
    require_root();
    // A real grpcio server (cleartext HTTP/2) behind the TLS front, outside the cgroup.
    /// Ends the server (by its own pid) however the test ends.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut grpc_server = Kill(
        Command::new("python3")
            .arg(client_script("grpc_echo.py"))
            .arg("serve")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("grpc server"),
    );
    let mut port = String::new();
    {
        use std::io::BufRead as _;
        let out = grpc_server.0.stdout.take().expect("stdout");
        std::io::BufReader::new(out)
            .read_line(&mut port)
            .expect("port");
    }
    let inner: std::net::SocketAddr = format!("127.0.0.1:{}", port.trim())
        .parse()
        .expect("grpc addr");
    let dir = TempDir::new("tls-grpc");
    let ca = tls::TestCa::new(dir.path(), "grpc");
    let front = tls::front(inner, &ca.issue("server", &["localhost"]), None);
    let vip = virtual_ip();
    let cg = TestCgroup::new("tls-grpc");
    let agent = Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "open",
        targets: format!(
            "  - name: triton\n    match: \"{vip}:8000\"\n    upstream: \"{}\"\n    protocol: http\n    server: triton\n    default: allow\n    tls: {{ca_file: \"{}\", server_name: localhost}}\n",
            front.addr,
            ca.ca_file().display()
        ),
        listen_v6: true,
        // One runtime thread: the upstream pool is per thread, so with one the three calls
        // below must share one connection.
        extra: "worker_threads: 1\n".to_string(),
    });
    // Three calls from three client processes (three client connections): one TLS
    // connection upstream carries them all (each runtime thread keeps its own).
    for _ in 0..3 {
        let out = run_ok(
            cg.command("python3")
                .arg(client_script("grpc_echo.py"))
                .args([
                    "call",
                    &format!("{vip}:8000"),
                    "/inference.GRPCInferenceService/ModelInfer",
                ]),
        );
        let v: Value = serde_json::from_str(out.trim()).expect("grpc_echo json");
        assert_eq!(v["ok"], true, "{v}\n{}", agent.log_text());
        assert_eq!(v["echoed"], true);
    }
    drop(grpc_server);
    assert_eq!(
        handshakes(&front),
        vec![(Some("localhost".to_string()), Some("h2".to_string()))],
        "one pooled HTTP/2 connection over TLS"
    );
}

#[test]
#[ignore = "end-to-end: runs the agent's binary (cargo xtask test runs it)"]
fn bad_tls_files_and_settings_are_start_up_errors_that_say_where() {
    let dir = TempDir::new("tls-check");
    let ca = tls::TestCa::new(dir.path(), "check");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").expect("write");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let check = |tls: &str| {
        let cfg = dir.path().join("sluice.yaml");
        std::fs::write(
            &cfg,
            format!(
                "listen: 127.0.0.1:15001\ntargets:\n  - name: openai\n    match: 127.77.0.9:80\n    upstream: 127.0.0.1:8443\n    protocol: http\n{tls}"
            ),
        )
        .expect("write config");
        let out = Command::new(sluice_tests::sluice_bin())
            .arg("check-config")
            .arg(&cfg)
            .output()
            .expect("check-config");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = check(&format!(
        "    tls: {{ca_file: \"{}\"}}\n",
        ca.ca_file().display()
    ));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("http/openai+tls"), "{out}");
    let (code, _, err) = check(&format!("    tls: {{ca_file: \"{}\"}}\n", junk.display()));
    assert_eq!(code, Some(2));
    assert!(
        err.contains(&format!(
            "targets[0] (openai): tls.ca_file {}: holds no PEM certificate",
            junk.display()
        )),
        "{err}"
    );
    let client = ca.issue("client", &["agent"]);
    let with_key = |key: &std::path::Path| {
        check(&format!(
            "    tls:\n      ca_file: \"{}\"\n      client_cert: \"{}\"\n      client_key: \"{}\"\n",
            ca.ca_file().display(),
            client.cert.display(),
            key.display()
        ))
    };
    // A private key everyone can read is refused before it is parsed.
    let (code, _, err) = with_key(&junk);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("tls.client_key") && err.contains("readable by everyone (mode 0644)"),
        "{err}"
    );
    write_secret(&junk, "not a key\n");
    let (code, _, err) = with_key(&junk);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("tls.client_key") && err.contains("holds no PEM private key"),
        "{err}"
    );
    let (code, _, err) = check("    tls:\n      sever_name: x\n");
    assert_eq!(code, Some(2));
    assert!(
        err.contains("sluice.yaml:8:7: ") && err.contains("unknown field `sever_name`"),
        "{err}"
    );
}

#[test]
#[ignore = "end-to-end: needs root, cgroup v2 and network namespaces (cargo xtask test runs it as root)"]
fn tls_is_originated_from_inside_a_clients_network_namespace() {
    require_root();
    let dir = TempDir::new("tls-netns");
    let ca = tls::TestCa::new(dir.path(), "netns");
    let server = ca.issue("sidecar", &["localhost"]);
    // The upstream listens only on the namespace's own loopback, over HTTPS.
    let (vip, sidecar) = (virtual_ip(), sluice_tests::free_port());
    let cg = TestCgroup::new("tls-netns");
    let agent = Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "closed",
        targets: format!(
            "  - name: sidecar\n    match: \"{vip}:8000\"\n    upstream: \"127.0.0.1:{sidecar}\"\n    protocol: http\n    server: openai\n    default: allow\n    tls: {{ca_file: \"{}\", server_name: localhost}}\n",
            ca.ca_file().display()
        ),
        listen_v6: true,
        extra: String::new(),
    });
    let out = cg
        .command("unshare")
        .args(["--net", "python3"])
        .arg(client_script("netns_client.py"))
        .args([
            &sidecar.to_string(),
            "ns-tls",
            &vip,
            "8000",
            "get",
            "/v1/models",
        ])
        .env(
            "NETNS_SIDECAR_TLS",
            format!("{}:{}", server.cert.display(), server.key.display()),
        )
        .output()
        .expect("netns client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "{e}: {text}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            agent.log_text()
        )
    });
    assert_eq!(v["status"], 200, "{v}\n{}", agent.log_text());
    assert!(
        v["body"]
            .as_str()
            .is_some_and(|b| b.contains("\"from\": \"ns-tls\"")),
        "{v}"
    );
}

/// The server's failed handshakes once one matches `want`, waiting up to 2 s: the server
/// records a failure after it has sent its alert, and the agent may read that alert and
/// answer 502 first.
fn failed_handshakes(front: &tls::TlsFront, want: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let failed = front
            .handshakes
            .failed
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default();
        if failed.iter().any(|f| want(f)) || std::time::Instant::now() > deadline {
            return failed;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
