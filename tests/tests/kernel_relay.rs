//! End-to-end tests of the in-kernel L4 relay (`l4_relay: kernel`, sockmap redirect) and of
//! what it shares with splice: integrity, half-close, the upstream going away, many
//! connections leaving no map entry behind, and what happens when a client stops reading
//! (splice: the upstream is blocked; kernel: the connection is reset at its queue limit,
//! since the kernel's redirect queue gives no back-pressure). Real eBPF, real cgroups, real
//! sockets, loopback only. Needs root: `#[ignore]`d, run by `cargo xtask test` as root.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::{
    Agent, AgentSpec, TestCgroup, client_script, log_events, require_root, run_ok, servers,
    virtual_ip, wait_log_events,
};

const MIB: u64 = 1024 * 1024;

/// An agent relaying `vip:port` to `upstream` for a fresh cgroup, on the given relay path.
fn agent_for(
    upstream: SocketAddr,
    tag: &str,
    port: u16,
    relay: &str,
) -> (String, TestCgroup, Agent) {
    agent_with(upstream, tag, port, &format!("l4_relay: {relay}\n"))
}

/// `agent_for` with the settings given as YAML lines.
fn agent_with(
    upstream: SocketAddr,
    tag: &str,
    port: u16,
    settings: &str,
) -> (String, TestCgroup, Agent) {
    let vip = virtual_ip();
    let cg = TestCgroup::new(tag);
    let agent = Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "open",
        targets: format!(
            "  - name: {tag}\n    match: \"{vip}:{port}\"\n    upstream: \"{upstream}\"\n    protocol: tcp\n"
        ),
        listen_v6: false,
        extra: settings.to_string(),
    });
    (vip, cg, agent)
}

/// A server on loopback that runs `handler` for every connection.
fn server(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let handler = Arc::new(handler);
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            let h = handler.clone();
            thread::spawn(move || h(c));
        }
    });
    addr
}

fn stream(cg: &TestCgroup, args: &[&str]) -> Value {
    let out = run_ok(
        cg.command("python3")
            .arg(client_script("stream.py"))
            .args(args),
    );
    serde_json::from_str(out.trim()).expect("stream.py json")
}

fn closed_event(agent: &Agent) -> Value {
    let ev = wait_log_events(agent, "connection closed", 1);
    assert_eq!(ev.len(), 1, "{}", agent.log_text());
    ev[0].clone()
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn a_gigabyte_each_way_is_intact_in_the_kernel() {
    require_root();
    const SIZE: u64 = 1024 * MIB;
    let echo = servers::echo("127.0.0.1:0");
    // The Python client hashes what it reads more slowly than the echo server answers, so
    // the queue toward it has been seen past 60 MiB: above the default limit, that would test
    // the limit (its own test) rather than the bytes.
    let (vip, cg, agent) = agent_with(
        echo.addr,
        "gib",
        9000,
        "l4_relay: kernel\nl4_kernel_max_queue_bytes: 1073741824\n",
    );
    let out = run_ok(
        cg.command("python3")
            .arg(client_script("transfer.py"))
            .args([vip.as_str(), "9000", &SIZE.to_string()]),
    );
    let r: Value = serde_json::from_str(out.trim()).expect("transfer.py json");
    if !r["error"].is_null() {
        // The one accepted failure: this kernel sometimes sends one redirected skb twice
        // (docs/architecture.md, "Duplicated bytes"); the agent sees the destination count
        // more than the source sent and resets both sides instead of ending cleanly.
        let ended = wait_log_events(&agent, "connection ended with error", 1);
        assert_eq!(ended.len(), 1, "{r}: {}", agent.log_text());
        let error = ended[0]["error"].as_str().unwrap_or_default();
        assert!(error.contains("duplicated"), "{r}: {error}");
        eprintln!("the kernel duplicated bytes; the agent reset the connection: {error}");
        return;
    }
    assert_eq!(r["sent"].as_u64(), Some(SIZE));
    assert_eq!(r["received"].as_u64(), Some(SIZE));
    assert_eq!(r["sent_sha256"], r["recv_sha256"]);
    let closed = closed_event(&agent);
    assert_eq!(closed["path"], "kernel", "{closed}");
    assert_eq!(closed["bytes_up"].as_u64(), Some(SIZE));
    assert_eq!(closed["bytes_down"].as_u64(), Some(SIZE));
}

/// Waits until the agent lists one live connection on `path`.
fn wait_path(agent: &Agent, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = agent.status().expect("status");
        if status["connections"][0]["path"] == path {
            return;
        }
        assert!(Instant::now() < deadline, "{status}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn half_close_works_both_ways_on_both_paths() {
    require_root();
    // The client half-closes first: the server reads to EOF, then answers on the other half.
    let counts_then_answers = server(|mut s| {
        let mut n = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        let _ = s.write_all(format!("got {n}").as_bytes());
    });
    // The server half-closes first (when the test says so): it greets, sends its FIN, then
    // reads what the client sends.
    let (tx, rx) = mpsc::channel::<u64>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (tx, go_rx) = (std::sync::Mutex::new(tx), std::sync::Mutex::new(go_rx));
    let greets_then_counts = server(move |mut s| {
        let _ = s.write_all(b"hello");
        if let Ok(go) = go_rx.lock() {
            let _ = go.recv_timeout(Duration::from_secs(20));
        }
        let _ = s.shutdown(Shutdown::Write);
        let mut n = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        if let Ok(tx) = tx.lock() {
            let _ = tx.send(n);
        }
    });
    for relay in ["kernel", "splice"] {
        let (vip, cg, agent) = agent_for(counts_then_answers, "hc-client", 9000, relay);
        let mut client = cg
            .command("python3")
            .arg(client_script("stream.py"))
            .args(["half_close_client", &vip, "9000", "3000000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn client");
        wait_path(&agent, relay);
        client
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"go\n")
            .expect("tell the client");
        let out = client.wait_with_output().expect("client");
        let r: Value = serde_json::from_slice(&out.stdout).expect("stream.py json");
        assert_eq!(r["reply"], "got 3000000", "{relay}: {r}");
        assert_eq!(closed_event(&agent)["path"], relay);
        drop((agent, cg));

        let (vip, cg, agent) = agent_for(greets_then_counts, "hc-server", 9000, relay);
        let client = cg
            .command("python3")
            .arg(client_script("stream.py"))
            .args(["half_close_server", &vip, "9000", "3000000"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn client");
        wait_path(&agent, relay);
        go_tx.send(()).expect("tell the server");
        let out = client.wait_with_output().expect("client");
        let r: Value = serde_json::from_slice(&out.stdout).expect("stream.py json");
        assert_eq!(r["greeting"], "hello", "{relay}: {r}");
        assert_eq!(r["after"], "", "{relay}: {r}");
        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server count");
        assert_eq!(got, 3_000_000, "{relay}");
        let closed = closed_event(&agent);
        assert_eq!(closed["path"], relay);
        assert_eq!(closed["bytes_up"].as_u64(), Some(3_000_000), "{closed}");
        assert_eq!(closed["bytes_down"].as_u64(), Some(5), "{closed}");
    }
}

/// A client that connects and then never reads: the upstream writes as fast as it can and
/// counts what the kernel accepted. Returns the count once it has stopped growing (the
/// upstream is blocked, or its connection was ended), the client process and the agent.
fn stalled_upstream(relay: &str) -> (u64, Child, Agent, TestCgroup) {
    let written = Arc::new(AtomicU64::new(0));
    let ended = Arc::new(AtomicU64::new(0));
    let (w, e) = (written.clone(), ended.clone());
    let upstream = server(move |mut s| {
        let chunk = vec![0x5au8; MIB as usize];
        while let Ok(n) = s.write(&chunk) {
            w.fetch_add(n as u64, Ordering::SeqCst);
        }
        e.store(1, Ordering::SeqCst);
    });
    let (vip, cg, agent) = agent_for(upstream, &format!("stall-{relay}"), 9000, relay);
    let mut client = cg
        .command("python3")
        .arg(client_script("stream.py"))
        .args(["idle", &vip, "9000"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn idle client");
    let mut line = String::new();
    let out = client.stdout.take().expect("stdout");
    BufReader::new(out)
        .read_line(&mut line)
        .expect("client line");
    assert_eq!(line.trim(), "connected");
    // "Stopped growing": unchanged across ten looks in a row. This detects the stall; it
    // asserts nothing about speed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut same) = (u64::MAX, 0);
    while same < 10 {
        assert!(Instant::now() < deadline, "the upstream never stalled");
        thread::sleep(Duration::from_millis(100));
        let now = written.load(Ordering::SeqCst);
        same = if now == last && now > 0 { same + 1 } else { 0 };
        last = now;
    }
    (last, client, agent, cg)
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn a_client_that_stops_reading_blocks_the_upstream_with_splice() {
    require_root();
    let (written, mut client, agent, _cg) = stalled_upstream("splice");
    assert!(written < 256 * MIB, "upstream wrote {written} bytes");
    // Blocked, not ended: the connection is still live, on the splice path.
    let status = agent.status().expect("status");
    assert_eq!(status["connections"][0]["path"], "splice", "{status}");
    let _ = client.kill();
    let _ = client.wait();
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn a_client_that_stops_reading_is_reset_at_the_kernel_queue_limit() {
    require_root();
    let (written, mut client, agent, _cg) = stalled_upstream("kernel");
    // The default limit is 64 MiB a direction, looked at every 8 MiB the kernel redirects;
    // the upstream stops a few socket buffers past that.
    eprintln!("upstream wrote {written} bytes");
    assert!(written < 128 * MIB, "upstream wrote {written} bytes");
    let ended = wait_log_events(&agent, "connection ended with error", 1);
    assert_eq!(ended.len(), 1, "{}", agent.log_text());
    let error = ended[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("l4_kernel_max_queue_bytes"), "{error}");
    let _ = client.kill();
    let _ = client.wait();
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn the_upstream_dying_mid_transfer_never_looks_complete() {
    require_root();
    const ANNOUNCED: u64 = 64 * MIB;
    // Sends an eighth of what it announced, then resets.
    let dying = server(|mut s| {
        let chunk = vec![1u8; MIB as usize];
        for _ in 0..ANNOUNCED / 8 / MIB {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = socket_linger_zero(&s);
    });
    for relay in ["kernel", "splice"] {
        let (vip, cg, agent) = agent_for(dying, &format!("die-{relay}"), 9000, relay);
        let r = stream(&cg, &["read_all", &vip, "9000"]);
        let got = r["received"].as_u64().unwrap_or(0);
        assert!(got < ANNOUNCED, "{relay}: {r}");
        let ended = wait_log_events(&agent, "connection ended with error", 1);
        assert_eq!(ended.len(), 1, "{relay}: {}", agent.log_text());
        assert_eq!(ended[0]["path"], relay);
        // The bytes it did carry are reported (and counted in the metrics) although it
        // ended in an error: at least what reached the client.
        let carried = ended[0]["bytes_down"].as_u64().unwrap_or(0);
        assert!(
            carried > 0 && carried >= got,
            "{relay}: {} got {got}",
            ended[0]
        );
        if relay == "kernel" {
            // The agent resets the client: an error, not an EOF that could pass for the end.
            assert!(r["error"].is_string(), "{relay}: {r}");
        }
    }
}

fn socket_linger_zero(s: &TcpStream) -> std::io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a linger struct of the size given.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(s),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const l).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs many_connections.py with `n` connections at once from `cg` and returns its JSON.
fn many_connections(cg: &TestCgroup, vip: &str, n: u64, mode: &str) -> Value {
    // The client holds all N sockets at once: lift its own open-file limit first.
    let out = run_ok(
        cg.command("sh").args([
            "-c",
            "ulimit -n 8192 && exec python3 \"$@\"",
            "sh",
            client_script("many_connections.py")
                .to_str()
                .expect("utf-8 path"),
            vip,
            "9000",
            &n.to_string(),
            mode,
        ]),
    );
    serde_json::from_str(out.trim()).expect("many_connections.py json")
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn a_thousand_connections_take_the_kernel_path_and_leave_no_map_entry_behind() {
    require_root();
    const N: u64 = 1000;
    raise_fd_limit();
    let echo = servers::echo("127.0.0.1:0");
    let (vip, cg, agent) = agent_for(echo.addr, "thousand", 9000, "kernel");

    // Clients that keep their connection open until the echo is back: the echo can only come
    // back once the agent has chosen the path, so every socket is still established when it
    // is paired and every connection must take the kernel path.
    let r = many_connections(&cg, &vip, N, "echo-first");
    assert_eq!(r["ok"].as_u64(), Some(N), "{r}");
    let closed = wait_log_events(&agent, "connection closed", N as usize);
    assert_eq!(closed.len(), N as usize, "{}", agent.log_text());
    let kernel = closed.iter().filter(|c| c["path"] == "kernel").count();
    assert_eq!(
        kernel, N as usize,
        "echo-first connections not on the kernel path"
    );
    assert_eq!(status_u64_relay(&agent, "fallbacks"), 0);
    assert_no_relay_entries(&agent);

    // Clients that send their FIN right behind their message. Their connect returns once
    // the kernel has finished the handshake, long before the agent has accepted, attributed
    // and dialled the upstream for the last of a thousand; by then such a client socket is
    // in CLOSE_WAIT, the sockmap refuses it (EOPNOTSUPP), and the connection is spliced. How
    // many is a race with the client, so only the accounting is asserted.
    let r = many_connections(&cg, &vip, N, "fin-at-once");
    assert_eq!(r["ok"].as_u64(), Some(N), "{r}");
    let closed = wait_log_events(&agent, "connection closed", 2 * N as usize);
    assert_eq!(closed.len(), 2 * N as usize, "{}", agent.log_text());
    let second = &closed[N as usize..];
    let kernel = second.iter().filter(|c| c["path"] == "kernel").count();
    let spliced = second.iter().filter(|c| c["path"] == "splice").count();
    assert_eq!(kernel + spliced, N as usize);
    eprintln!("FIN at once: {kernel} kernel, {spliced} spliced");
    assert_eq!(status_u64_relay(&agent, "fallbacks"), spliced as u64);
    let not_established = log_events(
        &agent,
        "kernel L4 relay: socket no longer established; this connection is spliced",
    );
    assert_eq!(not_established.len(), spliced, "{}", agent.log_text());
    assert_no_relay_entries(&agent);
}

fn status_u64_relay(agent: &Agent, field: &str) -> u64 {
    let status = agent.status().expect("status");
    status["kernel_relay"][field].as_u64().unwrap_or(u64::MAX)
}

/// Every pairing is released when its connection closes: the three relay maps end empty.
fn assert_no_relay_entries(agent: &Agent) {
    let pid = agent.child.as_ref().expect("agent running").id();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entries = relay_map_entries(pid);
        assert_eq!(entries.len(), 3, "relay maps found: {entries:?}");
        if entries.iter().all(|(_, n)| *n == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "entries left: {entries:?}");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status_u64_relay(agent, "in_use"), 0);
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn sluice_connections_shows_the_path() {
    require_root();
    let echo = servers::echo("127.0.0.1:0");
    let (vip, cg, agent) = agent_for(echo.addr, "path", 9000, "kernel");
    let mut client = cg
        .command("python3")
        .arg(client_script("stream.py"))
        .args(["idle", &vip, "9000"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn idle client");
    let mut line = String::new();
    BufReader::new(client.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("client line");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = agent.status().expect("status");
        if status["connections"][0]["path"] == "kernel" {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        thread::sleep(Duration::from_millis(20));
    }
    let text = agent.sluice(&["connections"]);
    let text = String::from_utf8_lossy(&text.stdout);
    let row = text
        .lines()
        .find(|l| l.contains(&format!("{vip}:9000")))
        .unwrap_or_else(|| panic!("no row for the connection:\n{text}"));
    assert!(row.split_whitespace().any(|w| w == "kernel"), "{text}");
    assert!(text.contains("kernel L4 relay: 1 of"), "{text}");
    let _ = client.kill();
    let _ = client.wait();
    assert!(log_events(&agent, "connection ended with error").is_empty());
}

/// (map name, entries) of the agent's three relay maps, found through its open descriptors
/// (the maps are not pinned) and read with bpftool.
fn relay_map_entries(pid: u32) -> Vec<(String, usize)> {
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("fdinfo")
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        if let (Some(_), Some(id)) = (field("map_type:"), field("map_id:")) {
            ids.push(id);
        }
    }
    ids.sort();
    ids.dedup();
    let mut out = Vec::new();
    for id in ids {
        let show = Command::new("bpftool")
            .args(["-j", "map", "show", "id", &id])
            .output()
            .expect("bpftool");
        let show: Value = serde_json::from_slice(&show.stdout).unwrap_or_default();
        let name = show["name"].as_str().unwrap_or_default().to_string();
        // RELAY_WAKE is a ring buffer of notes, not entries.
        if !["RELAY_ON", "RELAY_SOCKS", "RELAY_PEER"].contains(&name.as_str()) {
            continue;
        }
        let dump = Command::new("bpftool")
            .args(["-j", "map", "dump", "id", &id])
            .output()
            .expect("bpftool");
        let dump: Value = serde_json::from_slice(&dump.stdout).unwrap_or_default();
        let n = dump.as_array().map_or(usize::MAX, Vec::len);
        out.push((name, n));
    }
    out
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reading and raising this process's own limit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
