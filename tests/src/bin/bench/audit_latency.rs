//! Part of `--audit-only` (and the full run): what recording at `full` adds to a request
//! through the real agent. One agent whose store records at `full` (group commit, under the
//! system's temp directory), two targets to the same server: one at the store's level, one
//! with `audit_level: none`. A child in the test cgroup sends chat completions and streamed
//! ones to both, paired request by request (the order swapped each time).
use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use sluice_tests::{Agent, AgentSpec, TempDir, TestCgroup, servers, virtual_ip};

use crate::client::{HttpResult, Side, paired};

#[derive(Serialize, Deserialize)]
pub struct Plan {
    full: SocketAddr,
    off: SocketAddr,
    requests: usize,
}

#[derive(Serialize, Deserialize, Default)]
pub struct Results {
    full: HttpResult,
    off: HttpResult,
}

/// How long the model server of the last run takes before its first byte: far shorter than
/// any model's time to first token, long enough to cover this disk's fsync.
const THINK: Duration = Duration::from_millis(5);

/// Both durabilities against a server that answers at once: `group` (the shipped one: a
/// response waits for its opening record's fsync) and `none` (no wait: what recording the
/// bodies costs apart from the disk); then `group` against a server that takes `THINK`
/// before it answers, as a model does, so the fsync runs while the model computes.
pub fn run(requests: usize) -> Result<()> {
    sluice_tests::require_root();
    println!("\n### Recording at `full` vs recording off\n");
    for durability in ["group", "none"] {
        run_one(requests, durability, Duration::ZERO)?;
    }
    // Each request takes THINK: fewer of them, so the run stays short.
    run_one((requests / 10).max(400), "group", THINK)
}

/// The server, one agent, the child; prints one table.
fn run_one(requests: usize, durability: &str, think: Duration) -> Result<()> {
    let server = servers::http_thinking("127.0.0.1:0", think);
    let vip = virtual_ip();
    let dir = TempDir::new("bench-audit-latency");
    let store = dir.path().join("audit");
    let cg = TestCgroup::new("bench-audit-latency");
    let target = |name: &str, port: u16, extra: &str| {
        format!(
            "  - name: {name}\n    match: \"{vip}:{port}\"\n    upstream: \"{}\"\n    protocol: http\n    server: openai\n    default: allow\n{extra}",
            server.addr
        )
    };
    let agent = Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "open",
        targets: format!(
            "{}{}",
            target("recorded-full", 8011, ""),
            target("recorded-off", 8012, "    audit_level: none\n")
        ),
        listen_v6: false,
        extra: format!(
            "audit: {{dir: \"{}\", level: full, durability: {durability}, group_commit_ms: 5}}\n",
            store.display()
        ),
    });
    let plan = Plan {
        full: format!("{vip}:8011").parse()?,
        off: format!("{vip}:8012").parse()?,
        requests,
    };
    let exe = std::env::current_exe()?;
    let out = cg
        .command(exe.to_str().context("exe path")?)
        .arg("audit-latency-client")
        .arg(serde_json::to_string(&plan)?)
        .output()?;
    if !out.status.success() {
        bail!(
            "audit latency client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let r: Results = serde_json::from_slice(&out.stdout)?;
    let stored: u64 = std::fs::read_dir(&store)?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let answers = if think.is_zero() {
        "a server that answers at once".to_string()
    } else {
        format!(
            "a server that takes {} ms before it answers (a model's compute time)",
            think.as_millis()
        )
    };
    println!(
        "`durability: {durability}`, {answers}. Concurrency 1: {requests} chat completions then {} streamed ones (the test server's, a few SSE events each) to two targets of one agent whose store records at `full` (group commit every 5 ms; with `group` a response waits for its opening record's fsync, which runs while the request is upstream; with `none` nothing waits): one at the store's level (request body and every response chunk recorded), one with `audit_level: none`; paired request by request, the order swapped every time. The store ({}) held {:.1} MiB after the run.\n",
        requests / 4,
        super::audit::fs_type(&store),
        stored as f64 / (1 << 20) as f64
    );
    {
        use crate::report::Metric::*;
        crate::report::variant(
            (
                &if think.is_zero() {
                    format!("full, {durability}")
                } else {
                    format!("full, {durability}, {} ms server", think.as_millis())
                },
                "recording off",
            ),
            &r.full,
            &r.off,
            &[
                Chat(0.5),
                Chat(0.99),
                FirstChunk(0.5),
                StreamTotal(0.5),
                StreamTotal(0.99),
            ],
        );
    }
    println!();
    drop(agent);
    Ok(())
}

/// The child, inside the test cgroup.
pub fn child(plan: &Plan) -> Result<Results> {
    let mut r = Results::default();
    let mut full = Side::tcp(plan.full, None)?;
    let mut off = Side::tcp(plan.off, None)?;
    paired(
        &mut full,
        &mut off,
        (&mut r.full, &mut r.off),
        plan.requests,
        plan.requests / 4,
    )?;
    Ok(r)
}
