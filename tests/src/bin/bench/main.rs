//! `cargo xtask bench`: Sluice, its peers and the direct path, side by side in one run, to the
//! same server.
//!
//! The parent sets up a test cgroup, a real HTTP server, the agent (release build), HAProxy and
//! nginx in front of that server, then runs this binary again as the client *inside* the
//! cgroup. The client alternates, in interleaved blocks, between every path: the virtual
//! address (redirected by eBPF through the agent, L4 or HTTP-aware), each peer's port and the
//! server's real address (neither is a target, so both are dialled directly), so all paths
//! see the same machine noise. Then wrk (also inside the cgroup) loads every path in turn.
//! The report is markdown, ready for docs/benchmarks.md.
//!
//! `--stress` instead runs wrk with many connections for a long while through HTTP-aware
//! interception (stress.rs); `--policy-only` runs the in-process policy numbers alone,
//! `--identity-only` the in-process cost of attributing a connection (cgroup, container, pod),
//! `--netns-only` the added latency from a container's network namespace vs the host's
//! (netns.rs; also part of the full run), `--masking-only` the masking engine in process and
//! response masking through the agent, on vs off (masking.rs; also in the full run),
//! `--approvals-only` other clients' latency and the
//! agent's memory with 1,000 requests held for approval (approvals.rs; also in the full run),
//! `--floor-only` what minimal proxies built into the bench add next to HAProxy and Sluice
//! (floor.rs).
use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, bail};
use sluice_tests::{Agent, AgentSpec, TestCgroup, servers, virtual_ip};

mod approvals;
mod audit;
mod audit_latency;
mod client;
mod floor;
mod inprocess;
mod masking;
mod netns;
mod peers;
mod report;
mod stress;
mod tokens;
mod wrk;

struct Params {
    workers: usize,
    /// The agent's `runtime:` (per-core or shared).
    runtime: String,
    /// More agent configuration (`--agent-yaml "l4_relay: kernel"`), one `key: value`.
    agent_yaml: Vec<String>,
    setups: usize,
    requests: usize,
    bulk_mb: usize,
    /// wrk: connections, seconds per round, rounds per path.
    load_connections: usize,
    load_seconds: u64,
    load_rounds: usize,
}

const USAGE: &str = "use --runtime per-core|shared --agent-yaml \"key: value\" --setups N --requests N --bulk-mb N --workers N --load-connections N --load-seconds S --load-rounds N; or --stress [--seconds S] [--connections N] [--workers N]; or --floor-only [--rounds N] [--requests N] [--no-sluice]; or --policy-only, --identity-only, --mask-only, --masking-only, --netns-only, --approvals-only, --tokens-only or --audit-only alone";

/// The streams of the masking rows: events per stream, the upstream's gap between events,
/// streams per side.
const MASK_EVENTS: usize = 60;
const MASK_GAP_US: u64 = 500;
const MASK_PAIRS: usize = 200;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // In process, no root, no agent: `cargo run --release -p sluice-tests --bin sluice-bench
    // -- --policy-only`.
    match args.get(1).map(String::as_str) {
        Some("--policy-only") => return inprocess::policy_scaling(),
        Some("--identity-only") => return inprocess::identity_cost(20_000),
        Some("--mask-only") => {
            inprocess::mask_cost();
            return Ok(());
        }
        Some("--masking-only") => {
            masking::run(MASK_EVENTS, MASK_GAP_US, MASK_PAIRS)?;
            inprocess::mask_cost();
            return Ok(());
        }
        Some("masking-client") => {
            let plan: masking::Plan =
                serde_json::from_str(args.get(2).context("masking-client PLAN")?)
                    .context("plan")?;
            let r = masking::child(&plan)?;
            println!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        Some("--tokens-only") => return tokens::token_cost(20_000),
        Some("--audit-only") => {
            audit::audit_cost()?;
            return audit_latency::run(10_000);
        }
        Some("audit-latency-client") => {
            let plan: audit_latency::Plan =
                serde_json::from_str(args.get(2).context("audit-latency-client PLAN")?)
                    .context("plan")?;
            let r = audit_latency::child(&plan)?;
            println!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        Some("client") => {
            let plan: client::Plan =
                serde_json::from_str(args.get(2).context("client PLAN")?).context("plan")?;
            let r = client::run(&plan)?;
            println!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        Some("netns-client") => {
            let plan: netns::Plan =
                serde_json::from_str(args.get(2).context("netns-client PLAN")?).context("plan")?;
            let r = netns::child(&plan)?;
            println!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        Some("--netns-only") => return netns_only(),
        Some("--approvals-only") => return approvals::run(1000, 5000),
        Some("approvals-client") => {
            let plan: approvals::Plan =
                serde_json::from_str(args.get(2).context("approvals-client PLAN")?)
                    .context("plan")?;
            let r = approvals::child(&plan)?;
            println!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        Some("--stress") => return stress::run(&stress_params(&args[2..])?),
        Some("--floor-only") => return floor::run(&floor_params(&args[2..])?),
        Some("floor-client") => {
            let plan: floor::Plan =
                serde_json::from_str(args.get(2).context("floor-client PLAN")?).context("plan")?;
            let r = floor::child(&plan)?;
            println!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        Some("floor-client-interleaved") => {
            let plan: floor::Interleaved =
                serde_json::from_str(args.get(2).context("floor-client-interleaved PLAN")?)
                    .context("plan")?;
            let r = floor::child_interleaved(&plan)?;
            println!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        _ => {}
    }
    let mut p = Params {
        workers: 0,
        runtime: "per-core".into(),
        agent_yaml: Vec::new(),
        setups: 1000,
        requests: 20000,
        bulk_mb: 512,
        load_connections: 32,
        load_seconds: 5,
        load_rounds: 3,
    };
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "--runtime" {
            p.runtime = it.next().context("--runtime per-core|shared")?.clone();
            continue;
        }
        if a == "--agent-yaml" {
            p.agent_yaml
                .push(it.next().context("--agent-yaml \"key: value\"")?.clone());
            continue;
        }
        let mut val = || -> Result<usize> { Ok(it.next().context("missing value")?.parse()?) };
        match a.as_str() {
            "--setups" => p.setups = val()?,
            "--requests" => p.requests = val()?,
            "--bulk-mb" => p.bulk_mb = val()?,
            "--workers" => p.workers = val()?,
            "--load-connections" => p.load_connections = val()?,
            "--load-seconds" => p.load_seconds = val()? as u64,
            "--load-rounds" => p.load_rounds = val()?,
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    parent(&p)
}

fn stress_params(args: &[String]) -> Result<stress::Params> {
    let mut p = stress::Params {
        seconds: 60,
        connections: 256,
        workers: 0,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || -> Result<usize> { Ok(it.next().context("missing value")?.parse()?) };
        match a.as_str() {
            "--seconds" => p.seconds = val()? as u64,
            "--connections" => p.connections = val()?,
            "--workers" => p.workers = val()?,
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    Ok(p)
}

fn floor_params(args: &[String]) -> Result<floor::Params> {
    let mut p = floor::Params {
        rounds: 5,
        requests: 3000,
        sluice: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--no-sluice" {
            p.sluice = false;
            continue;
        }
        let mut val = || -> Result<usize> { Ok(it.next().context("missing value")?.parse()?) };
        match a.as_str() {
            "--rounds" => p.rounds = val()?,
            "--requests" => p.requests = val()?,
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    Ok(p)
}

/// CPUs this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// One path from the client to the test server.
struct Route {
    name: &'static str,
    addr: SocketAddr,
    /// The process whose memory the row reports (with its children), if any.
    pid: Option<u32>,
    /// Said under the load table.
    note: Option<&'static str>,
}

/// `--netns-only`: the agent and the namespace comparison alone.
fn netns_only() -> Result<()> {
    sluice_tests::require_root();
    let (vip, port) = (virtual_ip(), sluice_tests::free_port());
    let cg = TestCgroup::new("bench-netns");
    let _agent = Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "closed",
        targets: netns::targets(&vip, port),
        listen_v6: true,
        extra: format!(
            "policies: [\"{}\"]\n",
            sluice_tests::policies_dir().display()
        ),
    });
    netns::compare(&cg, &vip, port, 1000, 10_000)
}

fn parent(p: &Params) -> Result<()> {
    sluice_tests::require_root();
    let server = servers::http_unrecorded("127.0.0.1:0");
    let vip = virtual_ip();
    let netns_port = sluice_tests::free_port();
    // A JWKS on loopback: the agent verifies the token rows' token once, then hits its cache.
    let issuer = tokens::key_server()?;
    let token = tokens::bench_token(&issuer)?;
    // An HTTPS front (a test CA's certificate for localhost) before the same server: reached
    // over TLS by the client itself, and through a target that originates the TLS.
    let tls_dir = sluice_tests::TempDir::new("bench-tls");
    let ca = sluice_tests::tls::TestCa::new(tls_dir.path(), "bench");
    let front = sluice_tests::tls::front(
        server.addr,
        &ca.issue("localhost", &["localhost", "127.0.0.1"]),
        None,
    );
    let cg = TestCgroup::new("bench");
    let agent = Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "open",
        targets: format!(
            "  - name: bench\n    match: \"{vip}:8000\"\n    upstream: \"{0}\"\n    protocol: tcp\n  - name: bench-http\n    match: \"{vip}:8001\"\n    upstream: \"{0}\"\n    protocol: http\n    server: openai\n  - name: bench-http-filtered\n    match: \"{vip}:8002\"\n    upstream: \"{0}\"\n    protocol: http\n    server: openai\n    max_response_bytes: 1000000000\n  - name: bench-http-token\n    match: \"{vip}:8005\"\n    upstream: \"{0}\"\n    protocol: http\n    server: openai\n  - name: bench-https\n    match: \"{vip}:8006\"\n    upstream: \"{2}\"\n    protocol: http\n    server: openai\n    tls: {{ca_file: \"{3}\", server_name: localhost}}\n{1}",
            server.addr,
            netns::targets(&vip, netns_port),
            front.addr,
            ca.ca_file().display()
        ),
        listen_v6: true,
        extra: format!(
            "policies: [\"{}\"]\n{}worker_threads: {}\nruntime: {}\n{}",
            sluice_tests::policies_dir().display(),
            tokens::identity_yaml(&issuer)?,
            p.workers,
            p.runtime,
            p.agent_yaml
                .iter()
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        ),
    });
    let agent_pid = agent.child.as_ref().map(|c| c.id()).context("agent pid")?;
    // The peers get as many threads / workers as the agent's runtime.
    let threads = if p.workers == 0 { cores() } else { p.workers };
    let haproxy = peers::Peer::haproxy(server.addr, threads)?;
    let nginx = peers::Peer::nginx(server.addr, threads)?;
    let at = |port: u16| -> Result<SocketAddr> { Ok(format!("{vip}:{port}").parse()?) };
    // Report order. Another path is one more entry here.
    let routes = [
        Route {
            name: "Sluice HTTP-aware",
            addr: at(8001)?,
            pid: Some(agent_pid),
            note: Some("RSS is the whole agent, which serves both Sluice rows"),
        },
        Route {
            name: "Sluice L4",
            addr: at(8000)?,
            pid: Some(agent_pid),
            note: None,
        },
        Route {
            name: "HAProxy",
            addr: haproxy.addr,
            pid: Some(haproxy.pid()),
            note: None,
        },
        Route {
            name: "nginx",
            addr: nginx.addr,
            pid: Some(nginx.pid()),
            note: Some("RSS is the master and its workers together"),
        },
        Route {
            name: "direct",
            addr: server.addr,
            pid: None,
            note: None,
        },
    ];
    std::thread::sleep(Duration::from_millis(300));
    let idle_rss: Vec<Option<u64>> = routes
        .iter()
        .map(|r| r.pid.map(peers::tree_rss_kib))
        .collect();
    let plan = client::Plan {
        l4: at(8000)?,
        direct: server.addr,
        http_paths: routes
            .iter()
            .map(|r| (r.name.to_string(), r.addr))
            .collect(),
        filtered: at(8002)?,
        tokened: Some((at(8005)?, token.clone())),
        tls: Some(client::TlsPaths {
            direct: front.addr,
            ca_file: ca.ca_file(),
            via_sluice: at(8006)?,
        }),
        setups: p.setups,
        requests: p.requests,
        bulk_mb: p.bulk_mb,
    };
    let exe = std::env::current_exe()?;
    let out = cg
        .command(exe.to_str().context("exe path")?)
        .arg("client")
        .arg(serde_json::to_string(&plan)?)
        .output()?;
    if !out.status.success() {
        bail!(
            "bench client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let r: client::Results = serde_json::from_slice(&out.stdout)?;
    let wrk = wrk::Wrk::new(threads)?;
    let mut rounds: Vec<Vec<wrk::Load>> = routes.iter().map(|_| Vec::new()).collect();
    for _ in 0..p.load_rounds {
        for (route, out) in routes.iter().zip(rounds.iter_mut()) {
            out.push(
                wrk.run(&cg, route.addr, p.load_connections, p.load_seconds)
                    .with_context(|| format!("wrk on {}", route.name))?,
            );
        }
    }
    let after_rss: Vec<Option<u64>> = routes
        .iter()
        .map(|r| r.pid.map(peers::tree_rss_kib))
        .collect();
    let rows: Vec<report::HttpRow<'_>> = routes
        .iter()
        .enumerate()
        .map(|(i, route)| report::HttpRow {
            name: route.name,
            latency: &r.http[i],
            load: wrk::merge(&rounds[i]),
            rss_idle: idle_rss[i],
            rss_after: after_rss[i],
            rss_note: route.note.map(str::to_string),
        })
        .collect();
    let direct = rows
        .iter()
        .find(|r| r.name == "direct")
        .context("no direct row")?;
    println!("## Sluice, HAProxy, nginx and direct (one run)\n");
    println!(
        "{} cores, kernel {}; agent runtime {}{}, worker_threads {}, HAProxy nbthread {threads}, nginx worker_processes {threads}; {}.\n",
        cores(),
        command_line(&["uname", "-r"]),
        p.runtime,
        p.agent_yaml
            .iter()
            .map(|l| format!(", {l}"))
            .collect::<String>(),
        if p.workers == 0 {
            format!("0 (one per CPU = {threads})")
        } else {
            p.workers.to_string()
        },
        [
            command_line(&["haproxy", "-v"]),
            command_line(&["nginx", "-v"]),
            command_line(&["wrk", "-v"]),
        ]
        .join(", ")
    );
    println!(
        "Concurrency 1, keep-alive: per path {} chat completions (POST, not streamed) and {} streamed ones, in interleaved blocks of 1000; added = path − direct.\n",
        p.requests,
        p.requests / 4
    );
    report::http(&rows, direct);
    println!(
        "\nConcurrency {}: wrk, {} threads, chat completions on keep-alive connections, {} rounds of {} s per path, interleaved; requests/s over all rounds, latency the median of the rounds' percentiles (wrk's own, `--timeout {}s`). RSS (VmRSS): idle after start, before any request; after all latency and load runs.\n",
        p.load_connections,
        threads.min(p.load_connections),
        p.load_rounds,
        p.load_seconds,
        wrk.timeout_secs
    );
    report::load(&rows, direct, p.load_connections);
    println!("\n## Layer 4 (`protocol: tcp`)\n");
    println!(
        "Concurrency 1: {} fresh connections, {} keep-alive requests (`GET /`), {} MiB each way, per path, interleaved.\n",
        p.setups, p.requests, p.bulk_mb
    );
    report::l4(&r.l4, &r.direct);
    println!("\n### A pass-through response filter\n");
    println!(
        "`max_response_bytes: 1000000000` (runs on every chunk, never triggers) vs none, both Sluice HTTP-aware, same run, paired: one streamed completion on each connection in turn, the order swapped every time.\n"
    );
    {
        use report::Metric::*;
        report::variant(
            ("filter", "no filter"),
            &r.filtered,
            &r.unfiltered,
            &[FirstChunk(0.5), StreamTotal(0.5), StreamTotal(0.99)],
        );
    }
    println!("\n### A verified token, cached\n");
    println!(
        "Every request with `Authorization: Bearer <RS256 token>` (verified on first sight, then a blake3 hash and a cache lookup) vs none, both on the same Sluice HTTP-aware target (an issuer configured), same run, paired: one request on each connection in turn, the order swapped every time.\n"
    );
    {
        use report::Metric::*;
        report::variant(
            ("cached token", "no token"),
            &r.tokened,
            &r.untokened,
            &[Chat(0.5), Chat(0.99), FirstChunk(0.5)],
        );
    }
    println!("\n### TLS to the upstream\n");
    println!(
        "One HTTPS server (a TLS front on loopback before the test server): the client speaking TLS to it itself, against the client speaking plain HTTP to a Sluice target that originates the TLS (`tls:` with the test CA), same run, paired request by request.\n"
    );
    {
        use report::Metric::*;
        report::variant(
            ("Sluice, plain → TLS", "direct TLS"),
            &r.tls_via_sluice,
            &r.tls_direct,
            &[Chat(0.5), Chat(0.99), FirstChunk(0.5)],
        );
    }
    if let Ok(st) = agent.status() {
        println!(
            "\nagent counters: accepted {}, refused {}, kernel redirected {}",
            st["accepted_total"], st["refused_unattributed"], st["kernel"][0]
        );
    }
    netns::compare(&cg, &vip, netns_port, p.setups, p.requests.min(10_000))?;
    println!();
    approvals::run(1000, p.requests.min(5000))?;
    println!();
    inprocess::policy_cost(p.requests.max(10_000))?;
    inprocess::filter_cost(200_000);
    inprocess::mask_cost();
    masking::run(MASK_EVENTS, MASK_GAP_US, MASK_PAIRS)?;
    inprocess::identity_cost(20_000)?;
    tokens::token_cost(20_000)?;
    audit::audit_cost()?;
    audit_latency::run(p.requests.min(10_000))?;
    drop((haproxy, nginx));
    Ok(())
}

/// The first line a tool prints about itself (stdout or stderr), or "?".
fn command_line(cmd: &[&str]) -> String {
    std::process::Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .ok()
        .and_then(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "?".to_string())
}
