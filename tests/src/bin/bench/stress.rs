//! `--stress`: wrk at many connections for a long while through HTTP-aware interception
//! (chat completions, keep-alive), to show that nothing fails under load and memory comes
//! back. Exits non-zero when any request failed, after printing what failed.
use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, bail};
use sluice_tests::{Agent, AgentSpec, TestCgroup, servers, virtual_ip};

use crate::{
    peers::{hwm_kib, rss_kib},
    report,
    wrk::Wrk,
};

pub struct Params {
    pub seconds: u64,
    pub connections: usize,
    pub workers: usize,
}

pub fn run(p: &Params) -> Result<()> {
    sluice_tests::require_root();
    let server = servers::http_unrecorded("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("stress");
    let agent = Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "open",
        targets: format!(
            "  - name: bench-http\n    match: \"{vip}:8001\"\n    upstream: \"{}\"\n    protocol: http\n    server: openai\n",
            server.addr
        ),
        listen_v6: true,
        extra: format!(
            "policies: [\"{}\"]\nworker_threads: {}\n",
            sluice_tests::policies_dir().display(),
            p.workers
        ),
    });
    let pid = agent.child.as_ref().map(|c| c.id()).context("agent pid")?;
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(pid);
    let threads = crate::cores();
    let wrk = Wrk::new(threads)?;
    let load = wrk.run(
        &cg,
        format!("{vip}:8001").parse()?,
        p.connections,
        p.seconds,
    )?;
    let after = rss_kib(pid);
    let peak = hwm_kib(pid);
    // Closed connections leave the table once their tasks end.
    std::thread::sleep(Duration::from_secs(1));
    let settled = rss_kib(pid);
    let status = agent.status().map_err(anyhow::Error::msg)?;
    println!("## Stress: HTTP-aware interception under load\n");
    println!(
        "wrk, {} connections, {} threads, {} s, keep-alive chat completions (POST), timeout {} s; agent worker_threads {}; {} cores.\n",
        p.connections,
        threads.min(p.connections),
        p.seconds,
        wrk.timeout_secs,
        if p.workers == 0 {
            "0 (one per CPU)".to_string()
        } else {
            p.workers.to_string()
        },
        crate::cores()
    );
    println!("| metric | value |");
    println!("|---|---|");
    let kib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
    let rows: Vec<(&str, String)> = vec![
        ("requests", load.requests.to_string()),
        ("requests/s", format!("{:.0}", load.rps())),
        ("errors", report::errors(&load)),
        ("latency p50", format!("{:.0} µs", load.p50_us)),
        ("latency p90", format!("{:.0} µs", load.p90_us)),
        ("latency p99", format!("{:.0} µs", load.p99_us)),
        ("latency p99.9", format!("{:.0} µs", load.p999_us)),
        ("latency max", format!("{:.0} µs", load.max_us)),
        ("agent RSS before", kib(before)),
        ("agent RSS after", kib(after)),
        ("agent RSS 1 s later", kib(settled)),
        ("agent peak RSS (VmHWM)", kib(peak)),
        (
            "agent: accepted connections",
            status["accepted_total"].to_string(),
        ),
        (
            "agent: live connections 1 s after",
            status["connections"]
                .as_array()
                .map_or(0, Vec::len)
                .to_string(),
        ),
        (
            "agent: allowed / denied / refused requests",
            format!(
                "{} / {} / {}",
                status["http_allowed"], status["http_denied"], status["http_refused"]
            ),
        ),
        (
            "agent: cancelled by client",
            status["http_cancelled"].to_string(),
        ),
        (
            "agent: over a connection cap",
            status["connections_over_limit"].to_string(),
        ),
        (
            "agent: upstream failures",
            status["upstream_failures"].to_string(),
        ),
        (
            "agent: records dropped",
            status["records_dropped"].to_string(),
        ),
    ];
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    let complaints = complaints(&agent);
    if !complaints.is_empty() {
        println!("\nagent warnings and errors during the run:\n");
        for ((level, msg), n) in &complaints {
            println!("- {level} x{n}: {msg}");
        }
    }
    if load.errors() > 0 {
        bail!(
            "stress: {} of {} requests failed: {}",
            load.errors(),
            load.requests + load.socket_errors(),
            report::errors(&load)
        );
    }
    Ok(())
}

/// The agent's WARN and ERROR log lines, counted by message. Read line by line: the log
/// holds one record per request, hundreds of megabytes after a long run.
fn complaints(agent: &Agent) -> BTreeMap<(String, String), usize> {
    use std::io::BufRead as _;
    let mut out = BTreeMap::new();
    let Ok(file) = std::fs::File::open(&agent.log) else {
        return out;
    };
    for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
        if !line.contains("\"WARN\"") && !line.contains("\"ERROR\"") {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let level = v["level"].as_str().unwrap_or_default().to_string();
        if level == "WARN" || level == "ERROR" {
            let msg = v["message"].as_str().unwrap_or_default().to_string();
            *out.entry((level, msg)).or_default() += 1;
        }
    }
    out
}
