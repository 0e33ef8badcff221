//! Harness for Sluice's end-to-end tests and benchmarks: real cgroups, the real agent binary,
//! real servers and clients on loopback. Everything created here is removed on drop.
//!
//! End-to-end tests are `#[ignore]`d: a plain `cargo test` reports them as ignored (skipped),
//! never as passed. `cargo xtask test` runs them with `--include-ignored` when it is root, and
//! reports them as skipped when it is not.
use std::{
    fs,
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

pub mod hostile;
pub mod oidc;
pub mod servers;
pub mod tls;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An end-to-end test was asked to run: it must be able to, or it fails loudly.
pub fn require_root() {
    assert!(
        is_root(),
        "end-to-end tests need root (real eBPF programs in real cgroups); run `cargo xtask test` as root"
    );
}

/// The agent binary: SLUICE_BIN, else target/debug/sluice.
pub fn sluice_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sluice");
    assert!(
        p.exists(),
        "{} not built: run `cargo build -p sluice` or `cargo xtask test`",
        p.display()
    );
    p
}

static UNIQUE: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, for cgroups, pin dirs and sockets.
pub fn unique(tag: &str) -> String {
    format!(
        "sluice-test-{}-{}-{tag}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn cgroup2_mount() -> PathBuf {
    let mounts = fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .expect("no cgroup2 mount in /proc/mounts")
}

/// A child cgroup of the cgroup2 root; processes started with `command` run inside it.
pub struct TestCgroup {
    pub rel: String,
    pub dir: PathBuf,
}

impl TestCgroup {
    pub fn new(tag: &str) -> Self {
        let rel = unique(tag);
        let dir = cgroup2_mount().join(&rel);
        fs::create_dir(&dir).expect("create test cgroup");
        TestCgroup { rel, dir }
    }

    /// A command that moves itself into this cgroup, then execs `program`.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(&self.dir)
            .arg(program);
        c
    }

    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl TestCgroup {
    /// A cgroup at `rel` below this one (e.g. a runtime-shaped path such as
    /// `system.slice/docker-<id>.scope`), made with every missing parent; all of them are
    /// removed on drop. Drop it before the `TestCgroup` it is under.
    pub fn nested(&self, rel: &str) -> NestedCgroup {
        let mut made = Vec::new();
        let mut dir = self.dir.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            dir.push(part);
            if !dir.exists() {
                fs::create_dir(&dir).expect("create nested cgroup");
                made.push(dir.clone());
            }
        }
        NestedCgroup {
            rel: format!("/{}/{}", self.rel, rel.trim_matches('/')),
            dir,
            made,
        }
    }
}

/// A cgroup below a `TestCgroup`, with the parents it had to create.
pub struct NestedCgroup {
    /// The path as `/proc/<pid>/cgroup` shows it (from the cgroup2 root).
    pub rel: String,
    pub dir: PathBuf,
    made: Vec<PathBuf>,
}

impl NestedCgroup {
    /// A command that moves itself into this cgroup, then execs `program`.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(&self.dir)
            .arg(program);
        c
    }
}

impl Drop for NestedCgroup {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: plain syscall on a pid this test put into its own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let removed = (0..50).any(|_| {
                let ok = fs::remove_dir(dir).is_ok();
                if !ok {
                    thread::sleep(Duration::from_millis(20));
                }
                ok
            });
            if !removed {
                eprintln!("warning: could not remove cgroup {}", dir.display());
            }
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for pid in self.pids() {
            // SAFETY: plain syscall on a pid we put into our own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove cgroup {}", self.dir.display());
    }
}

/// Any free loopback port (bind-and-release; fine for tests on loopback).
/// Writes a key file as the agent requires: readable and writable by its owner only (the
/// agent refuses key files others can read or replace).
pub fn write_secret(path: &Path, content: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, content).expect("write secret");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// The body and head of `GET /metrics` on the agent's metrics listener at `port` (loopback).
pub fn scrape_metrics(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint answers");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

/// A loopback port that is free now (on 127.0.0.1 and ::1), taken below the kernel's
/// ephemeral range: a port the kernel handed out (bind to 0) could be given to any client
/// socket the tests connect before the agent binds it, which happened.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral.saturating_sub(FIRST).max(1);
    // Spread by process (the test binaries run one at a time, but a leftover agent may hold
    // a port), then one after another within it.
    let start = std::process::id().wrapping_mul(7_919);
    let v6 = TcpListener::bind(("::1", 0)).is_ok();
    for _ in 0..span.min(2_000) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let Ok(port) = u16::try_from(FIRST + start.wrapping_add(n) % span) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && (!v6 || TcpListener::bind(("::1", port)).is_ok())
        {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A virtual loopback address per call: 127.0.<pid-derived>.<n>, on which nothing listens.
pub fn virtual_ip() -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    format!(
        "127.77.{}.{}",
        (std::process::id() % 250) + 1,
        (n % 250) + 2
    )
}

/// Settings for one agent under test.
pub struct AgentSpec {
    pub cgroup: String,
    pub fail_mode: &'static str,
    /// YAML list items under `targets:`, already indented by two spaces.
    pub targets: String,
    pub listen_v6: bool,
    /// More top-level YAML (e.g. `policies:`), one key per line.
    pub extra: String,
}

/// A running `sluice run` with its own listener, pin dir, admin socket and log file.
pub struct Agent {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub admin: PathBuf,
    pub pin_dir: PathBuf,
    pub listen_port: u16,
    pub log: PathBuf,
    /// `--log-format`: "json" (what the helpers here parse) unless started with
    /// `start_with_log_format`.
    pub log_format: &'static str,
}

impl Agent {
    pub fn config_yaml(spec: &AgentSpec, listen_port: u16, pin_dir: &Path, admin: &Path) -> String {
        let v6 = if spec.listen_v6 {
            format!("\"[::1]:{listen_port}\"")
        } else {
            "null".to_string()
        };
        // SLUICE_TEST_L4_RELAY runs the whole suite on one L4 relay path (kernel, splice);
        // a test that names its own `l4_relay` keeps it.
        let relay = match std::env::var("SLUICE_TEST_L4_RELAY") {
            Ok(mode) if !mode.is_empty() && !spec.extra.contains("l4_relay:") => {
                format!("l4_relay: {mode}\n")
            }
            _ => String::new(),
        };
        format!(
            "listen: 127.0.0.1:{listen_port}\nlisten_v6: {v6}\ncgroup: /{}\nfail_mode: {}\npin_dir: {}\nadmin_socket: {}\ndrain_timeout_secs: 2\n{relay}{}targets:\n{}",
            spec.cgroup,
            spec.fail_mode,
            pin_dir.display(),
            admin.display(),
            spec.extra,
            spec.targets
        )
    }

    pub fn start(spec: &AgentSpec) -> Agent {
        Self::start_with_log_format(spec, "json")
    }

    /// `start` with `--log-format text` or `json`.
    pub fn start_with_log_format(spec: &AgentSpec, log_format: &'static str) -> Agent {
        let mut agent = Self::configured(spec, log_format);
        agent.spawn();
        agent
    }

    /// `start` through a wrapper command (see `spawn_under`).
    pub fn start_under(spec: &AgentSpec, wrapper: &[&str]) -> Agent {
        let mut agent = Self::configured(spec, "json");
        agent.spawn_under(wrapper);
        agent
    }

    /// An agent with its directory and config written, not yet started.
    fn configured(spec: &AgentSpec, log_format: &'static str) -> Agent {
        let dir = std::env::temp_dir().join(unique("agent"));
        fs::create_dir_all(&dir).expect("agent temp dir");
        let listen_port = free_port();
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(unique("pins"));
        let admin = dir.join("admin.sock");
        let config = dir.join("sluice.yaml");
        fs::write(
            &config,
            Self::config_yaml(spec, listen_port, &pin_dir, &admin),
        )
        .expect("write config");
        Agent {
            child: None,
            dir: dir.clone(),
            config,
            admin,
            pin_dir,
            listen_port,
            log: dir.join("agent.log"),
            log_format,
        }
    }

    /// Starts (or restarts) the agent process with the same config; waits until it answers.
    pub fn spawn(&mut self) {
        self.spawn_under(&[]);
    }

    /// `spawn` through a wrapper that execs the agent (so the child's pid stays the agent's),
    /// e.g. `["prlimit", "--nofile=1024:4096", "--"]`; empty runs the agent itself.
    pub fn spawn_under(&mut self, wrapper: &[&str]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(sluice_bin());
                c
            }
            None => Command::new(sluice_bin()),
        };
        let child = cmd
            .args(["--log-format", self.log_format, "run", "--config"])
            .arg(&self.config)
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sluice");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("agent exited early ({status}); log:\n{}", self.log_text());
            }
            if self.status().is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("agent did not come up; log:\n{}", self.log_text());
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `sluice connections --json` parsed.
    pub fn status(&self) -> Result<serde_json::Value, String> {
        let out = self.sluice(&["connections", "--json"]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    /// Runs another `sluice` subcommand against this agent's config.
    pub fn sluice(&self, args: &[&str]) -> Output {
        Command::new(sluice_bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run sluice")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        // Detach anything left pinned (fail_mode closed) and remove the pin dir.
        let _ = Command::new(sluice_bin())
            .args(["detach", "--config"])
            .arg(&self.config)
            .output();
        let _ = fs::remove_dir(&self.pin_dir);
        if std::env::var_os("SLUICE_KEEP_LOGS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Program attachments on a cgroup as bpftool reports them: attach types, e.g.
/// "cgroup_inet4_connect", "cgroup_inet6_connect", "cgroup_sock_ops".
pub fn attached_programs(cgroup_dir: &Path) -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup_dir)
        .output()
        .expect("bpftool (installed by `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "bpftool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["attach_type"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `cmd` and returns its output, failing with its stderr when it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Connects from *this* (un-intercepted) process and returns the first bytes read or the error.
pub fn probe(addr: SocketAddr) -> io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    Ok(buf)
}

/// What a test server saw, shared with the test.
#[derive(Clone, Default)]
pub struct Seen {
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
    /// "METHOD /path" of every HTTP request received.
    pub requests: Arc<Mutex<Vec<String>>>,
    /// Every request header received, as "name: value" with the name in lower case.
    pub headers: Arc<Mutex<Vec<String>>>,
    /// The body of every request to a model route (`/v1/`, `/api/`).
    pub bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    pub stop: Arc<AtomicBool>,
    /// Opened by `GET /release`; a gated stream waits for it after its first chunk.
    pub gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
    /// `Some`: `/v1/` routes answer 401 unless `Authorization: Bearer <one of these>` came
    /// (a server started with an API key, like llama.cpp's `--api-key`).
    pub keys: Arc<Mutex<Option<Vec<String>>>>,
    /// Keep none of the above lists (peers, requests, headers, bodies): a benchmark's millions of
    /// requests would grow them without bound.
    pub unrecorded: bool,
    /// Time a model route takes before it answers (its first byte), as a model computes:
    /// zero for the tests; a benchmark sets it to see what is hidden behind a real model's
    /// answer time.
    pub think: Duration,
}

/// A client script in tests/clients.
pub fn client_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(name)
}

/// The repository's shipped policy packs.
pub fn policies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// JSON log events of the agent with this message.
pub fn log_events(agent: &Agent, message: &str) -> Vec<serde_json::Value> {
    agent
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

/// Waits (up to 10 s) until the agent has logged at least `n` events with this message; the
/// agent writes a request's record when its response body ends, which can be a moment after
/// the client has read the last byte.
pub fn wait_log_events(agent: &Agent, message: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = log_events(agent, message);
        if events.len() >= n || Instant::now() > deadline {
            return events;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A numeric field of `sluice connections --json`.
pub fn status_u64(agent: &Agent, field: &str) -> u64 {
    agent.status().expect("status")[field]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Sends `bytes` to `vip:8000` from a Python socket inside the cgroup and returns what came
/// back until the agent closed, reset, or stayed silent for `silence_secs`.
pub fn send_raw(cg: &TestCgroup, vip: &str, bytes: &[u8], silence_secs: u32) -> String {
    let mut child = cg
        .command("python3")
        .arg(client_script("send_raw.py"))
        .args([vip, "8000", &silence_secs.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write request");
    let out = child.wait_with_output().expect("python3");
    assert!(
        out.status.success(),
        "raw client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `curl -sS -g -m 10 ARGS...` inside the cgroup.
pub fn curl(cg: &TestCgroup, args: &[&str]) -> Output {
    cg.command("curl")
        .args(["-sS", "-g", "-m", "10"])
        .args(args)
        .output()
        .expect("curl")
}

/// A temporary directory removed on drop, even when the test panics.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(tag));
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
