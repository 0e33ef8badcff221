//! End-to-end interception: real eBPF programs attached to real child cgroups, the real
//! agent binary, unmodified clients (curl, Python) and real servers, all on loopback.
//! See tests/README.md. Needs root: `#[ignore]`d, run by `cargo xtask test` as root.
use std::{
    net::SocketAddr,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::{
    Agent, AgentSpec, TestCgroup, attached_programs, client_script, free_port, log_events, probe,
    require_root, run_ok, servers, status_u64, virtual_ip,
};

fn target(name: &str, matches: &str, upstream: &str) -> String {
    format!(
        "  - name: {name}\n    match: \"{matches}\"\n    upstream: {upstream}\n    protocol: tcp\n"
    )
}

fn spec(cg: &TestCgroup, fail_mode: &'static str, targets: String) -> AgentSpec {
    AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode,
        targets,
        listen_v6: true,
        extra: String::new(),
    }
}

fn curl(cg: &TestCgroup, url: &str) -> std::process::Output {
    sluice_tests::curl(cg, &[url])
}

/// `server` reached through an agent (fail_mode open) at a fresh virtual `vip:port`, for
/// processes in a fresh cgroup; the target and the cgroup are named `tag`.
fn behind_agent(
    server: servers::Server,
    tag: &str,
    port: u16,
) -> (servers::Server, String, TestCgroup, Agent) {
    let vip = virtual_ip();
    let cg = TestCgroup::new(tag);
    let agent = Agent::start(&spec(
        &cg,
        "open",
        target(
            tag,
            &format!("{vip}:{port}"),
            &format!("\"{}\"", server.addr),
        ),
    ));
    (server, vip, cg, agent)
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn curl_and_python_reach_a_virtual_address_only_the_agent_serves() {
    require_root();
    let (server, vip, cg, agent) = behind_agent(servers::http("127.0.0.1:0"), "local-llama", 8000);

    let out = curl(&cg, &format!("http://{vip}:8000/"));
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from upstream\n"
    );

    let py = run_ok(
        cg.command("python3")
            .arg(client_script("http_get.py"))
            .args([vip.as_str(), "8000", "/"]),
    );
    assert_eq!(py.trim(), "200 hello from upstream");

    // A slow request stays open long enough to see it live, with the caller's identity.
    let slow = cg
        .command("curl")
        .args(["-sS", "-m", "10", &format!("http://{vip}:8000/slow")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn curl");
    let deadline = Instant::now() + Duration::from_secs(5);
    let live = loop {
        let st = agent.status().expect("status");
        // A connection is listed from accept on; its upstream appears once dialled.
        if let Some(c) = st["connections"]
            .as_array()
            .and_then(|a| a.first())
            .filter(|c| !c["upstream"].is_null())
            .cloned()
        {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "connection never showed up: {st}"
        );
        thread::sleep(Duration::from_millis(25));
    };
    assert_eq!(
        live["workload"]["tgid"].as_u64(),
        Some(u64::from(slow.id())),
        "{live}"
    );
    assert_eq!(live["workload"]["uid"].as_u64(), Some(0), "{live}");
    assert_eq!(live["workload"]["comm"], "curl", "{live}");
    assert!(
        live["workload"]["exe"]
            .as_str()
            .is_some_and(|e| e.ends_with("/curl")),
        "{live}"
    );
    assert_eq!(live["original_dst"], format!("{vip}:8000"), "{live}");
    assert_eq!(live["target"], "local-llama");
    assert_eq!(live["upstream"], server.addr.to_string());
    let out = slow.wait_with_output().expect("curl /slow");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from upstream\n"
    );

    assert_eq!(status_u64(&agent, "accepted_total"), 3);
    let st = agent.status().expect("status");
    assert!(
        st["kernel"][0].as_u64() >= Some(3),
        "kernel redirect counter: {st}"
    );
    // Every upstream connection came from the agent (loopback), and the log names the caller.
    assert_eq!(server.peers().len(), 3);
    let events = log_events(&agent, "connection intercepted");
    assert_eq!(events.len(), 3, "{}", agent.log_text());
    assert!(events.iter().any(|e| e["comm"] == "curl"
        && e["uid"] == 0
        && e["original_dst"] == format!("{vip}:8000")));
    assert!(events.iter().any(|e| e["comm"] == "python3"));
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn processes_outside_the_cgroup_and_other_ports_are_not_intercepted() {
    require_root();
    let (server, vip, cg, agent) = behind_agent(servers::http("127.0.0.1:0"), "scope", 8000);
    // This test process is not in the cgroup: the virtual address stays unreachable.
    let err =
        probe(format!("{vip}:8000").parse().expect("addr")).expect_err("must not be intercepted");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    // Inside the cgroup, a port that is not a target is not touched.
    let out = curl(&cg, &format!("http://{vip}:8001/"));
    assert_eq!(
        out.status.code(),
        Some(7),
        "expected connection refused: {out:?}"
    );
    // And the real server, dialled directly, is reached directly.
    let out = curl(&cg, &format!("http://{}/", server.addr));
    assert!(out.status.success());
    assert_eq!(status_u64(&agent, "accepted_total"), 0);
    assert_eq!(
        agent.status().expect("status")["kernel"][0].as_u64(),
        Some(0)
    );
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn ipv6_loopback_and_v4_mapped_targets_are_intercepted() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let p6 = free_port();
    let cg = TestCgroup::new("v6");
    let up = format!("\"{}\"", server.addr);
    let agent = Agent::start(&spec(
        &cg,
        "open",
        target("v6", &format!("[::1]:{p6}"), &up) + &target("v4", &format!("{vip}:8000"), &up),
    ));
    let out = curl(&cg, &format!("http://[::1]:{p6}/"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from upstream\n"
    );
    // A dual-stack socket dialling ::ffff:a.b.c.d goes through connect6 but is IPv4.
    let mapped = format!("::ffff:{vip}");
    let py = run_ok(
        cg.command("python3")
            .arg(client_script("http_get.py"))
            .args([mapped.as_str(), "8000", "/"]),
    );
    assert_eq!(py.trim(), "200 hello from upstream");
    // getpeername() tells each client the address it dialled, not the listener.
    for (host, port) in [
        ("::1".to_string(), p6),
        (vip.clone(), 8000),
        (mapped.clone(), 8000),
    ] {
        let out = run_ok(
            cg.command("python3")
                .arg(client_script("peername.py"))
                .args([host.as_str(), &port.to_string()]),
        );
        let peer: Value = serde_json::from_str(out.trim()).expect("peername json");
        assert_eq!(
            peer,
            serde_json::json!([host, port]),
            "getpeername for {host}:{port}"
        );
    }
    let events = log_events(&agent, "connection intercepted");
    let dsts: Vec<&str> = events
        .iter()
        .filter_map(|e| e["original_dst"].as_str())
        .collect();
    assert!(dsts.contains(&format!("[::1]:{p6}").as_str()), "{dsts:?}");
    assert!(dsts.contains(&format!("{vip}:8000").as_str()), "{dsts:?}");
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn transfer_of_100_mb_both_ways_is_intact() {
    require_root();
    const SIZE: u64 = 100 * 1024 * 1024;
    let (_echo, vip, cg, agent) = behind_agent(servers::echo("127.0.0.1:0"), "bulk", 9000);
    let out = run_ok(
        cg.command("python3")
            .arg(client_script("transfer.py"))
            .args([vip.as_str(), "9000", &SIZE.to_string()]),
    );
    let r: Value = serde_json::from_str(out.trim()).expect("transfer.py json");
    assert_eq!(r["sent"].as_u64(), Some(SIZE));
    assert_eq!(r["received"].as_u64(), Some(SIZE));
    assert_eq!(r["sent_sha256"], r["recv_sha256"]);
    // The agent saw exactly that many bytes each way, and the half-close ended it cleanly.
    let deadline = Instant::now() + Duration::from_secs(5);
    let closed = loop {
        let c = log_events(&agent, "connection closed");
        if !c.is_empty() || Instant::now() > deadline {
            break c;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(closed.len(), 1, "{}", agent.log_text());
    assert_eq!(closed[0]["bytes_up"].as_u64(), Some(SIZE));
    assert_eq!(closed[0]["bytes_down"].as_u64(), Some(SIZE));
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn many_concurrent_connections_all_succeed() {
    require_root();
    const N: u64 = 300;
    let (_echo, vip, cg, agent) = behind_agent(servers::echo("127.0.0.1:0"), "many", 9000);
    let out = run_ok(
        cg.command("python3")
            .arg(client_script("many_connections.py"))
            .args([vip.as_str(), "9000", &N.to_string()]),
    );
    let r: Value = serde_json::from_str(out.trim()).expect("many_connections.py json");
    assert_eq!(r["ok"].as_u64(), Some(N), "{r}");
    assert_eq!(status_u64(&agent, "accepted_total"), N);
    assert_eq!(status_u64(&agent, "refused_unattributed"), 0);
}

fn sorted_attachments(cg: &TestCgroup) -> Vec<String> {
    let mut v = attached_programs(&cg.dir);
    v.sort();
    v
}

fn expected_attachments() -> Vec<String> {
    [
        "cgroup_inet4_connect",
        "cgroup_inet4_getpeername",
        "cgroup_inet6_connect",
        "cgroup_inet6_getpeername",
        "cgroup_inet_sock_release",
        "cgroup_sock_ops",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn restart_replaces_programs_and_fail_mode_decides_the_gap() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let url = format!("http://{vip}:8000/");
    let cg = TestCgroup::new("restart");
    let mut agent = Agent::start(&spec(
        &cg,
        "closed",
        target("t", &format!("{vip}:8000"), &format!("\"{}\"", server.addr)),
    ));
    assert_eq!(sorted_attachments(&cg), expected_attachments());
    assert!(curl(&cg, &url).status.success());

    // fail_mode closed: with the agent down, the programs stay and target connections fail.
    let st = agent.stop().expect("agent was running");
    assert!(st.success(), "agent exit: {st}");
    assert_eq!(sorted_attachments(&cg), expected_attachments());
    let before = server.peers().len();
    let out = curl(&cg, &url);
    assert_eq!(
        out.status.code(),
        Some(7),
        "must be refused while the agent is down: {out:?}"
    );
    assert_eq!(
        server.peers().len(),
        before,
        "nothing may reach the server unseen"
    );

    // Restarting twice never stacks a second copy.
    for _ in 0..2 {
        agent.spawn();
        assert_eq!(sorted_attachments(&cg), expected_attachments());
        assert!(curl(&cg, &url).status.success());
        agent.stop();
    }
    assert!(
        agent
            .log_text()
            .contains("replaced links pinned by a previous agent")
    );

    // fail_mode open: stopping detaches everything.
    let cg2 = TestCgroup::new("open");
    let mut open = Agent::start(&spec(
        &cg2,
        "open",
        target("t", &format!("{vip}:8000"), &format!("\"{}\"", server.addr)),
    ));
    assert_eq!(sorted_attachments(&cg2), expected_attachments());
    open.stop();
    assert!(sorted_attachments(&cg2).is_empty());
    assert!(!open.pin_dir.join("connect4").exists());
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn the_listener_refuses_connections_that_were_not_redirected() {
    require_root();
    let (server, _vip, _cg, agent) = behind_agent(servers::http("127.0.0.1:0"), "direct", 8000);
    let listener: SocketAddr = format!("127.0.0.1:{}", agent.listen_port)
        .parse()
        .expect("addr");
    match probe(listener) {
        Ok(bytes) => assert!(
            bytes.is_empty(),
            "listener answered a direct connection: {bytes:?}"
        ),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{e}"
        ),
    }
    assert!(
        server.peers().is_empty(),
        "a direct connection reached the upstream"
    );
    assert_eq!(status_u64(&agent, "refused_unattributed"), 1);
    assert_eq!(
        log_events(
            &agent,
            "refused connection to the listener that was not redirected by Sluice"
        )
        .len(),
        1
    );
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn hostname_targets_resolve_and_dead_upstreams_are_skipped() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let dead = free_port();
    let vport = free_port();
    let cg = TestCgroup::new("dns");
    let agent = Agent::start(&spec(
        &cg,
        "open",
        target(
            "by-name",
            &format!("localhost:{vport}"),
            &format!("[\"127.0.0.1:{dead}\", \"{}\"]", server.addr),
        ),
    ));
    // The hostname is resolved by the agent just after start; wait for the map to fill.
    let url = format!("http://127.0.0.1:{vport}/");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !curl(&cg, &url).status.success() {
        assert!(
            Instant::now() < deadline,
            "hostname target never intercepted:\n{}",
            agent.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..4 {
        let out = curl(&cg, &url);
        assert!(out.status.success(), "{out:?}");
    }
    assert!(!log_events(&agent, "upstream failed; skipping it for a while").is_empty());
    assert!(!log_events(&agent, "target addresses updated").is_empty());
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn bad_config_and_missing_prerequisites_are_explained() {
    require_root();
    let tmp = sluice_tests::TempDir::new("cfg");
    let dir = tmp.path().to_path_buf();
    let bin = sluice_tests::sluice_bin();

    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "listen: 127.0.0.1:15001\ntargets:\n  - name: a\n    match: 127.0.0.1:80\n    upstreem: 127.0.0.1:81\n").expect("write");
    let out = std::process::Command::new(&bin)
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:5:5: targets[0]: unknown field `upstreem`, expected one of"),
        "{err}"
    );

    // A broken policy stops the start, with its location.
    std::fs::create_dir_all(dir.join("pack")).expect("dir");
    std::fs::write(dir.join("pack/pack.yaml"), "apiVersion: sluice.dev/v1alpha1\nkind: PolicyPack\nmetadata: {name: p}\nspec:\n  rules:\n    - id: r\n      action: maybe\n").expect("write");
    let with_policy = dir.join("policy.yaml");
    std::fs::write(&with_policy, format!("listen: 127.0.0.1:{}\nadmin_socket: {}\npolicies: [pack]\ntargets:\n  - name: a\n    match: 127.0.0.1:80\n    protocol: http\n", free_port(), dir.join("p.sock").display())).expect("write");
    let out = std::process::Command::new(&bin)
        .args(["run", "--config"])
        .arg(&with_policy)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pack/pack.yaml:7:15: spec.rules[0].action: unknown variant `maybe`"),
        "{err}"
    );

    let missing = dir.join("missing-cgroup.yaml");
    std::fs::write(&missing, format!("listen: 127.0.0.1:{}\ncgroup: /sluice-no-such-cgroup\nadmin_socket: {}\ntargets:\n  - name: a\n    match: 127.0.0.1:80\n", free_port(), dir.join("a.sock").display())).expect("write");
    let out = std::process::Command::new(&bin)
        .args(["run", "--config"])
        .arg(&missing)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist under the cgroup v2 mount")
    );

    // A start that fails after the per-core runtimes exist (here: pin_dir off bpffs) says
    // why and exits 1; it used to panic dropping those runtimes, hiding the reason.
    let off_bpffs = dir.join("off-bpffs.yaml");
    std::fs::write(
        &off_bpffs,
        format!(
            "listen: 127.0.0.1:{}
runtime: per-core
pin_dir: {}
admin_socket: {}
targets:
  - name: a
    match: 127.0.0.1:80
",
            free_port(),
            dir.join("pins").display(),
            dir.join("o.sock").display()
        ),
    )
    .expect("write");
    let out = std::process::Command::new(&bin)
        .args(["run", "--config"])
        .arg(&off_bpffs)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not on a bpf filesystem"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // Without privileges both run and doctor say what is missing. setpriv drops to nobody.
    let good = dir.join("good.yaml");
    std::fs::write(&good, format!("listen: 127.0.0.1:{}\nadmin_socket: {}\ntargets:\n  - name: a\n    match: 127.0.0.1:80\n", free_port(), dir.join("b.sock").display())).expect("write");
    for sub in ["run", "doctor"] {
        let out = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(&bin)
            .args([sub, "--config"])
            .arg(&good)
            .output()
            .expect("setpriv");
        assert_eq!(out.status.code(), Some(3), "{sub}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("missing CAP_BPF, CAP_NET_ADMIN"),
            "{sub}: {text}"
        );
    }
    let out = std::process::Command::new(&bin)
        .args(["doctor", "--config"])
        .arg(&good)
        .output()
        .expect("doctor");
    assert!(
        out.status.success(),
        "doctor as root: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("this host can run sluice"));
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn sigterm_lets_in_flight_connections_finish() {
    require_root();
    let (_server, vip, cg, mut agent) = behind_agent(servers::http("127.0.0.1:0"), "drain", 8000);
    let slow = cg
        .command("curl")
        .args(["-sS", "-m", "10", &format!("http://{vip}:8000/slow")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn curl");
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.status().expect("status")["connections"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        assert!(Instant::now() < deadline, "connection never showed up");
        thread::sleep(Duration::from_millis(20));
    }
    // SIGTERM while the request is in flight: the agent stops accepting, the request finishes.
    let status = agent.stop().expect("agent was running");
    assert!(status.success(), "agent exit: {status}");
    let out = slow.wait_with_output().expect("curl");
    assert!(out.status.success(), "in-flight request was cut: {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from upstream\n"
    );
    let drained = log_events(&agent, "connections drained");
    assert_eq!(drained.len(), 1, "{}", agent.log_text());
    assert_eq!(drained[0]["in_flight"], 1);
    assert_eq!(drained[0]["forced"], 0);
}
