//! `--approvals-only` (also part of the full run): requests held for a person's approval
//! must not slow anyone else. A child in the test cgroup measures chat completions through
//! Sluice and direct, paired request by request, first with nothing held, then with 1,000
//! requests held at once (1,000 connections whose request a `require-approval` rule holds),
//! and reads the agent's RSS before and while they are held.
use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use sluice_tests::{Agent, AgentSpec, TempDir, TestCgroup, servers, virtual_ip};

use crate::{
    client::{HttpResult, Side, paired},
    peers::rss_kib,
    report::pct,
};

#[derive(Serialize, Deserialize)]
pub struct Plan {
    sluice: SocketAddr,
    direct: SocketAddr,
    held: usize,
    requests: usize,
    agent_pid: u32,
    sluice_bin: String,
    config: String,
}

#[derive(Serialize, Deserialize, Default)]
pub struct Results {
    none: (HttpResult, HttpResult),
    held: (HttpResult, HttpResult),
    pending: usize,
    rss_before_kib: u64,
    rss_held_kib: u64,
}

const PACK: &str = r#"apiVersion: sluice.dev/v1alpha1
kind: PolicyPack
metadata: { name: bench-approval }
spec:
  rules:
    - id: held-models
      action: require-approval
      approval:
        approvers: { users: [root] }
        timeout: 1h
      match: { models: ["held*"] }
    - id: the-rest
      action: allow
"#;

/// The parent: a server, an agent with the pack, the child in the cgroup; prints the table.
pub fn run(held: usize, requests: usize) -> Result<()> {
    sluice_tests::require_root();
    let server = servers::http_unrecorded("127.0.0.1:0");
    let vip = virtual_ip();
    let dir = TempDir::new("bench-approval");
    let pack = dir.path().join("pack.yaml");
    std::fs::write(&pack, PACK)?;
    let cg = TestCgroup::new("bench-approval");
    let agent = Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "open",
        targets: format!(
            "  - name: bench-approval\n    match: \"{vip}:8007\"\n    upstream: \"{}\"\n    protocol: http\n    server: openai\n",
            server.addr
        ),
        listen_v6: false,
        extra: format!(
            "policies: [\"{}\"]\napprovals: {{max_pending: {max}, max_pending_per_identity: {max}}}\n",
            pack.display(),
            max = held.max(1) * 2
        ),
    });
    let plan = Plan {
        sluice: format!("{vip}:8007").parse()?,
        direct: server.addr,
        held,
        requests,
        agent_pid: agent.child.as_ref().map(|c| c.id()).context("agent pid")?,
        sluice_bin: sluice_tests::sluice_bin().display().to_string(),
        config: agent.config.display().to_string(),
    };
    let exe = std::env::current_exe()?;
    let out = cg
        .command(exe.to_str().context("exe path")?)
        .arg("approvals-client")
        .arg(serde_json::to_string(&plan)?)
        .output()?;
    if !out.status.success() {
        bail!(
            "approvals bench client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let r: Results = serde_json::from_slice(&out.stdout)?;
    println!("\n## Requests held for approval\n");
    println!(
        "Concurrency 1: {requests} chat completions through Sluice HTTP-aware and direct, paired request by request (the order swapped each time), in {ROUNDS} rounds of: a block with no request held, then a block with {} requests held at once (one connection each, a `require-approval` rule holding them; {} seen pending), then their clients leave. Added = Sluice − direct; RSS (VmRSS) of the agent before any is held (after one warm-up hold) and its highest while they are held.\n",
        held, r.pending
    );
    println!("| held at once | added p50 | added p99 | agent RSS |");
    println!("|---|---|---|---|");
    let added = |(s, d): &(HttpResult, HttpResult), q: f64| pct(&s.chat_us, q) - pct(&d.chat_us, q);
    let (p50_0, p99_0) = (added(&r.none, 0.5), added(&r.none, 0.99));
    let (p50_h, p99_h) = (added(&r.held, 0.5), added(&r.held, 0.99));
    println!(
        "| 0 | {p50_0:+.0} µs | {p99_0:+.0} µs | {:.1} MiB |",
        r.rss_before_kib as f64 / 1024.0
    );
    println!(
        "| {held} | {p50_h:+.0} µs ({:+.0}%) | {p99_h:+.0} µs ({:+.0}%) | {:.1} MiB ({:+.1} KiB per held request) |",
        (p50_h - p50_0) / p50_0.abs().max(1.0) * 100.0,
        (p99_h - p99_0) / p99_0.abs().max(1.0) * 100.0,
        r.rss_held_kib as f64 / 1024.0,
        (r.rss_held_kib as f64 - r.rss_before_kib as f64) / held.max(1) as f64
    );
    drop(agent);
    Ok(())
}

/// The child, inside the test cgroup.
pub fn child(plan: &Plan) -> Result<Results> {
    raise_fd_limit();
    let mut r = Results::default();
    let mut a = Side::tcp(plan.sluice, None)?;
    let mut b = Side::tcp(plan.direct, None)?;
    // One request held and let go first: what the first hold builds once (the excerpt's
    // detectors) is not counted per held request.
    let warm = hold(plan.sluice, usize::MAX)?;
    wait_pending(plan, 1)?;
    drop(warm);
    wait_none(plan)?;
    r.rss_before_kib = rss_kib(plan.agent_pid);
    // Rounds of both conditions in turn, so machine noise falls on both alike.
    let per_round = (plan.requests / ROUNDS).max(1);
    for _ in 0..ROUNDS {
        paired(&mut a, &mut b, (&mut r.none.0, &mut r.none.1), per_round, 0)?;
        let held = (0..plan.held)
            .map(|i| hold(plan.sluice, i))
            .collect::<Result<Vec<_>>>()?;
        r.pending = wait_pending(plan, plan.held)?;
        r.rss_held_kib = r.rss_held_kib.max(rss_kib(plan.agent_pid));
        paired(&mut a, &mut b, (&mut r.held.0, &mut r.held.1), per_round, 0)?;
        drop(held);
        wait_none(plan)?;
    }
    Ok(r)
}

/// Rounds of (nothing held, N held).
const ROUNDS: usize = 4;

/// Waits until the agent has let every held request go (their clients left).
fn wait_none(plan: &Plan) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while pending(plan)? > 0 {
        if Instant::now() > deadline {
            bail!("held requests stayed pending after their clients left");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A connection whose request the pack holds.
fn hold(addr: SocketAddr, i: usize) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    let body =
        format!(r#"{{"model":"held-{i}","messages":[{{"role":"user","content":"hello"}}]}}"#);
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    Ok(s)
}

/// Waits until at least `n` approvals are pending; returns how many are.
fn wait_pending(plan: &Plan, n: usize) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = pending(plan)?;
        if seen >= n {
            return Ok(seen);
        }
        if Instant::now() > deadline {
            bail!("only {seen} of {n} requests were held");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pending(plan: &Plan) -> Result<usize> {
    let out = Command::new(&plan.sluice_bin)
        .args(["approvals", "list", "--json", "--config", &plan.config])
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
    Ok(v["listing"]["pending"].as_array().map_or(0, Vec::len))
}

/// One descriptor per held connection: the soft limit up to the hard one.
fn raise_fd_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to our own struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}
