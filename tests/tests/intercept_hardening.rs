//! End-to-end tests for the interception hardening of issue 11: unspecified destinations, a
//! bypass mark only the agent may use, `local` targets that follow the host's addresses, and
//! the target map's capacity. Real eBPF programs in real child cgroups, the real agent, real
//! clients (python3) and servers; every dial goes to loopback. Needs root.
use std::{
    collections::BTreeSet,
    fs,
    net::IpAddr,
    path::PathBuf,
    process::Command,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::{
    Agent, AgentSpec, TestCgroup, client_script, free_port, log_events, require_root, run_ok,
    servers, status_u64, virtual_ip,
};

/// Indexes of `kernel` in the status (agent_common::stat).
const K_REDIRECTED: usize = 0;
const K_BYPASSED: usize = 3;
const K_MARK_NOT_AGENT: usize = 5;
const K_UNSPECIFIED: usize = 6;
/// The target map's capacity (agent_common::MAX_TARGETS).
const CAPACITY: usize = 4096;

fn tcp_target(name: &str, matches: &str, upstream: Option<&str>) -> String {
    let up = upstream.map_or(String::new(), |u| format!("    upstream: \"{u}\"\n"));
    format!("  - name: {name}\n    match: \"{matches}\"\n{up}    protocol: tcp\n")
}

fn spec(cgroup: &str, targets: String) -> AgentSpec {
    AgentSpec {
        cgroup: cgroup.to_string(),
        fail_mode: "open",
        targets,
        listen_v6: true,
        extra: String::new(),
    }
}

fn kernel(agent: &Agent, i: usize) -> u64 {
    agent.status().expect("status")["kernel"][i]
        .as_u64()
        .unwrap_or(0)
}

fn intercepted_dsts(agent: &Agent) -> Vec<String> {
    log_events(agent, "connection intercepted")
        .iter()
        .filter_map(|e| e["original_dst"].as_str().map(str::to_string))
        .collect()
}

/// `python3 -c CODE ARGS...` in the cgroup; returns stdout, failing with stderr.
fn python(cg: &TestCgroup, code: &str, args: &[&str]) -> String {
    run_ok(cg.command("python3").arg("-c").arg(code).args(args))
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn unspecified_destinations_are_intercepted_as_the_loopback_they_become() {
    require_root();
    // Real servers on both loopbacks, on the same port; the targets name them exactly, and
    // forward to the address the client (really) dialled.
    let port = free_port();
    let v4 = servers::http(&format!("127.0.0.1:{port}"));
    let v6 = servers::http(&format!("[::1]:{port}"));
    let cg = TestCgroup::new("unspec");
    let agent = Agent::start(&spec(
        &cg.rel,
        tcp_target("v4", &format!("127.0.0.1:{port}"), None)
            + &tcp_target("v6", &format!("[::1]:{port}"), None),
    ));
    let p = port.to_string();
    for host in ["0.0.0.0", "::", "::ffff:0.0.0.0"] {
        let out = run_ok(
            cg.command("python3")
                .arg(client_script("http_get.py"))
                .args([host, p.as_str(), "/"]),
        );
        assert_eq!(out.trim(), "200 hello from upstream", "{host}");
    }
    // All three went through the agent, each recorded as the loopback it becomes.
    assert_eq!(status_u64(&agent, "accepted_total"), 3);
    let mut dsts = intercepted_dsts(&agent);
    dsts.sort();
    let mut want = vec![
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ];
    want.sort();
    assert_eq!(dsts, want, "{}", agent.log_text());
    assert!(kernel(&agent, K_UNSPECIFIED) >= 3);
    // Every connection the servers saw came from the agent, not from the client directly:
    // the agent's upstream sockets are the only ones made by its process.
    assert_eq!(v4.peers().len(), 2);
    assert_eq!(v6.peers().len(), 1);

    // A socket bound to a loopback address reaches *that* address when it dials 0.0.0.0: the
    // hook must look it up as that address, here a virtual one only the agent serves.
    let vip = virtual_ip();
    let server = servers::http("127.0.0.1:0");
    let cg2 = TestCgroup::new("unspec-bound");
    let agent2 = Agent::start(&spec(
        &cg2.rel,
        tcp_target(
            "vip",
            &format!("{vip}:8000"),
            Some(&server.addr.to_string()),
        ),
    ));
    let out = python(
        &cg2,
        "import socket,sys\n\
         s=socket.socket(); s.settimeout(10); s.bind((sys.argv[1],0)); s.connect(('0.0.0.0',8000))\n\
         s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); d=b''\n\
         while True:\n  c=s.recv(4096)\n  if not c: break\n  d+=c\n\
         print(d.decode().split('\\r\\n\\r\\n',1)[1].strip())",
        &[&vip],
    );
    assert_eq!(out.trim(), "hello from upstream");
    assert_eq!(intercepted_dsts(&agent2), vec![format!("{vip}:8000")]);
    assert_eq!(server.peers().len(), 1);
}

/// A cgroup nested under another test cgroup, removed on drop (before its parent, if
/// declared after it).
fn nested(parent: &TestCgroup, name: &str) -> TestCgroup {
    let rel = format!("{}/{name}", parent.rel);
    let dir = parent.dir.join(name);
    fs::create_dir(&dir).expect("create nested cgroup");
    TestCgroup { rel, dir }
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn the_bypass_mark_lets_only_the_agent_through() {
    require_root();
    // The agent itself runs inside the intercepted subtree, and its upstream (the address
    // the client dialled) is itself a target: only its own marked sockets may leave.
    let server = servers::http("127.0.0.1:0");
    let port = server.addr.port();
    let top = TestCgroup::new("mark");
    let agent_cg = nested(&top, "agent");
    let client_cg = nested(&top, "client");
    let agent = Agent::start(&spec(
        &top.rel,
        tcp_target("srv", &format!("127.0.0.1:{port}"), None),
    ));
    let pid = agent.child.as_ref().expect("agent process").id();
    fs::write(agent_cg.dir.join("cgroup.procs"), pid.to_string()).expect("move agent");

    // As root, with CAP_NET_ADMIN, a client sets the agent's bypass mark on its socket.
    let marked = "import socket,sys\n\
        s=socket.socket(); s.settimeout(10)\n\
        s.setsockopt(socket.SOL_SOCKET, getattr(socket,'SO_MARK',36), 0x51ce)\n\
        s.connect(('127.0.0.1', int(sys.argv[1])))\n\
        s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); d=b''\n\
        while True:\n  c=s.recv(4096)\n  if not c: break\n  d+=c\n\
        print(s.getsockopt(socket.SOL_SOCKET, getattr(socket,'SO_MARK',36)), d.decode().split('\\r\\n\\r\\n',1)[1].strip())";
    let out = python(&client_cg, marked, &[&port.to_string()]);
    assert_eq!(out.trim(), format!("{} hello from upstream", 0x51ce));
    // It was intercepted anyway, and the agent's own marked upstream socket was let through
    // (had it been redirected, the agent would have served itself and never reached the
    // server).
    assert_eq!(status_u64(&agent, "accepted_total"), 1);
    assert_eq!(
        intercepted_dsts(&agent),
        vec![format!("127.0.0.1:{port}")],
        "{}",
        agent.log_text()
    );
    assert_eq!(kernel(&agent, K_MARK_NOT_AGENT), 1);
    assert_eq!(kernel(&agent, K_BYPASSED), 1);
    assert_eq!(kernel(&agent, K_REDIRECTED), 1);
    assert_eq!(server.peers().len(), 1);
}

/// Tests that change or count the host's addresses run one at a time: each would see the
/// other's interface.
static HOST_ADDRESSES: Mutex<()> = Mutex::new(());
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A veth pair created for the test, deleted on drop (deleting one end removes both).
struct Veth(String);

impl Veth {
    fn new() -> Self {
        let name = format!(
            "sluicet{}{}",
            std::process::id() % 10_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let _ = Command::new("ip").args(["link", "del", &name]).output();
        run_ok(Command::new("ip").args([
            "link",
            "add",
            &name,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{name}p"),
        ]));
        let v = Veth(name);
        run_ok(Command::new("ip").args(["link", "set", &v.0, "up"]));
        v
    }

    fn add(&self, addr: &str) {
        run_ok(Command::new("ip").args(["addr", "add", addr, "dev", &self.0, "nodad"]));
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

fn target_map(agent: &Agent) -> Value {
    agent.status().expect("status")["target_map"].clone()
}

fn local_addresses(agent: &Agent) -> BTreeSet<IpAddr> {
    target_map(agent)["local_addresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `f` for up to 10 s.
fn eventually(what: &str, agent: &Agent, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what} never happened; log:\n{}",
            agent.log_text()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A test address in the unique-local range, assigned to our own interface, never dialled.
fn test_address() -> IpAddr {
    format!(
        "fd5c:51ce:{:x}::{:x}",
        std::process::id() % 0xffff,
        NEXT.fetch_add(1, Ordering::Relaxed) + 1
    )
    .parse()
    .expect("ip")
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn local_targets_cover_loopback_and_follow_the_hosts_addresses() {
    require_root();
    let _serial = HOST_ADDRESSES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let server = servers::http("127.0.0.1:0");
    let port = server.addr.port();
    let cg = TestCgroup::new("local");
    let agent = Agent::start(&spec(
        &cg.rel,
        tcp_target("here", &format!("local:{port}"), None),
    ));
    // Loopback and the unspecified address are covered from the start.
    for host in ["127.0.0.1", "0.0.0.0"] {
        let out = run_ok(
            cg.command("python3")
                .arg(client_script("http_get.py"))
                .args([host, &port.to_string(), "/"]),
        );
        assert_eq!(out.trim(), "200 hello from upstream", "{host}");
    }
    assert_eq!(status_u64(&agent, "accepted_total"), 2);

    let addr = test_address();
    assert!(!local_addresses(&agent).contains(&addr));
    let before = target_map(&agent)["entries"].as_u64().expect("entries");
    let veth = Veth::new();
    veth.add(&format!("{addr}/128"));
    eventually("the new address entering the target map", &agent, || {
        local_addresses(&agent).contains(&addr)
    });
    // One port: one entry more.
    assert_eq!(target_map(&agent)["entries"].as_u64(), Some(before + 1));
    drop(veth);
    eventually("the removed address leaving the target map", &agent, || {
        !local_addresses(&agent).contains(&addr)
    });
    assert_eq!(target_map(&agent)["entries"].as_u64(), Some(before));
    assert!(!log_events(&agent, "local targets follow the host's addresses").is_empty());
}

/// Targets on never-dialled ULA addresses taking exactly `n` target map entries.
fn filler(n: usize) -> String {
    let mut out = String::new();
    let mut left = n;
    let mut i = 0;
    while left > 0 {
        let ports = left.min(64);
        out += &tcp_target(
            &format!("fill{i}"),
            &format!("[fd5c:51ce:ffff::{:x}]:1000-{}", i + 1, 1000 + ports - 1),
            Some("127.0.0.1:9"),
        );
        left -= ports;
        i += 1;
    }
    out
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn target_map_overflow_is_refused_loudly_and_shown() {
    require_root();
    let _serial = HOST_ADDRESSES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // A static config that does not fit is a config error, before anything is loaded.
    let tmp = sluice_tests::TempDir::new("cap");
    let too_big: PathBuf = tmp.path().join("too-big.yaml");
    fs::write(
        &too_big,
        format!(
            "listen: 127.0.0.1:{}\ntargets:\n{}",
            free_port(),
            filler(CAPACITY + 1)
        ),
    )
    .expect("write");
    let out = Command::new(sluice_tests::sluice_bin())
        .args(["check-config"])
        .arg(&too_big)
        .output()
        .expect("check-config");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("holds 4096 entries") && err.contains("need 4097"),
        "{err}"
    );

    // A `local` target whose interface addresses fill the map exactly: one more address
    // cannot be added, and the agent says so instead of silently leaving it uncovered.
    let here = sluice::intercept::local::interface_addresses()
        .expect("getifaddrs")
        .len();
    let port = free_port();
    let cg = TestCgroup::new("cap");
    let agent = Agent::start(&spec(
        &cg.rel,
        tcp_target("here", &format!("local:{port}"), None) + &filler(CAPACITY - 2 - here),
    ));
    let map = target_map(&agent);
    assert_eq!(map["entries"].as_u64(), Some(CAPACITY as u64), "{map}");
    assert_eq!(map["refused_updates"].as_u64(), Some(0), "{map}");
    let addr = test_address();
    let veth = Veth::new();
    veth.add(&format!("{addr}/128"));
    eventually("the refusal", &agent, || {
        target_map(&agent)["refused_updates"].as_u64() >= Some(1)
    });
    let map = target_map(&agent);
    assert!(!local_addresses(&agent).contains(&addr), "{map}");
    assert_eq!(map["entries"].as_u64(), Some(CAPACITY as u64), "{map}");
    assert!(
        map["last_refused"]
            .as_str()
            .is_some_and(|s| s.contains("local addresses") && s.contains("holds 4096")),
        "{map}"
    );
    let refused = log_events(&agent, "target map update refused");
    assert!(!refused.is_empty(), "{}", agent.log_text());
    assert_eq!(refused[0]["level"], "ERROR");
    drop(veth);

    // `sluice connections` and `sluice doctor` both show it.
    let text = String::from_utf8_lossy(&agent.sluice(&["connections"]).stdout).into_owned();
    assert!(text.contains("target map: 4096 of 4096 entries"), "{text}");
    assert!(text.contains("REFUSED 1 target map update(s)"), "{text}");
    let doctor = String::from_utf8_lossy(&agent.sluice(&["doctor"]).stdout).into_owned();
    assert!(doctor.contains("update(s) REFUSED"), "{doctor}");
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn a_dns_answer_that_does_not_fit_is_refused_loudly() {
    require_root();
    // The config's own networks fill the map; `localhost` resolves (after start) to
    // 127.0.0.1 and ::1, two entries more than fit.
    let port = free_port();
    let cg = TestCgroup::new("cap-dns");
    let agent = Agent::start(&spec(
        &cg.rel,
        tcp_target("byname", &format!("localhost:{port}"), Some("127.0.0.1:9")) + &filler(CAPACITY),
    ));
    eventually("the refusal", &agent, || {
        target_map(&agent)["refused_updates"].as_u64() >= Some(1)
    });
    let map = target_map(&agent);
    assert_eq!(map["entries"].as_u64(), Some(CAPACITY as u64), "{map}");
    assert!(
        map["last_refused"]
            .as_str()
            .is_some_and(|s| s.contains("target byname (localhost)") && s.contains("holds 4096")),
        "{map}"
    );
    let refused = log_events(&agent, "target map update refused");
    assert!(
        refused
            .iter()
            .any(|e| e["target_name"] == "byname" && e["level"] == "ERROR"),
        "{}",
        agent.log_text()
    );
    assert!(log_events(&agent, "target addresses updated").is_empty());
}
