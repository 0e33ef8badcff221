//! `--floor-only`: how little can a userspace proxy add on this machine? Three minimal
//! proxies built into the bench, on the agent's runtime shape (`shards`), side by side with
//! direct, HAProxy and (unless `--no-sluice`) Sluice HTTP-aware and L4, against one test
//! server on loopback:
//! - floor A (`relay`): bytes copied both ways, nothing parsed;
//! - floor B (`h1`): HTTP/1.1 keep-alive on `httparse`, bodies by their framing;
//! - floor C (`hyper`): B's job through hyper's server and client connections.
//!
//! Each round (client processes inside the test cgroup, so the Sluice rows are intercepted):
//! keep-alive chat completions on every path interleaved request by request, for latency; then
//! a block per path, the order rotated each round, for each proxy's CPU time (read from
//! `/proc/…/schedstat` around its block: the agent serves two rows, so only blocks separate
//! them).
use std::{net::SocketAddr, time::Instant};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use sluice_tests::{Agent, AgentSpec, TestCgroup, servers, virtual_ip};

use crate::{
    client::{self, HttpResult},
    peers,
    report::pct,
};

mod h1;
mod hyper;
mod relay;
mod shards;

use shards::{Shards, process_cpu_ns};

pub struct Params {
    pub rounds: usize,
    /// Chat completions per path per round (streamed ones: a quarter of that).
    pub requests: usize,
    pub sluice: bool,
}

/// Untimed requests at the start of every block (a new connection, and for the proxies a
/// new upstream connection).
const WARM: usize = 50;

/// One block of the client, as JSON on its command line.
#[derive(Serialize, Deserialize)]
pub struct Plan {
    pub addr: SocketAddr,
    pub chats: usize,
    pub streams: usize,
}

/// The client side of one block: `WARM` untimed chat completions, then `chats` timed ones,
/// then `streams` streamed ones, on one keep-alive connection.
pub fn child(plan: &Plan) -> Result<HttpResult> {
    use std::io::BufReader;
    let s = std::net::TcpStream::connect(plan.addr)?;
    s.set_nodelay(true)?;
    let mut r = BufReader::new(s);
    let mut out = HttpResult::default();
    for _ in 0..WARM {
        client::post_as(r.get_mut(), client::CHAT, None)?;
        client::read_response(&mut r)?;
    }
    for _ in 0..plan.chats {
        let t0 = Instant::now();
        client::post_as(r.get_mut(), client::CHAT, None)?;
        client::read_response(&mut r)?;
        out.chat_us.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    for _ in 0..plan.streams {
        let t0 = Instant::now();
        client::post_as(r.get_mut(), client::CHAT_STREAM, None)?;
        let (first, end) = client::read_chunked(&mut r)?;
        out.ttfb_us.push((first - t0).as_secs_f64() * 1e6);
        out.stream_total_us.push((end - t0).as_secs_f64() * 1e6);
    }
    Ok(out)
}

/// The latency rounds, as JSON on the client's command line: one keep-alive connection per
/// path, one chat completion on each in turn.
#[derive(Serialize, Deserialize)]
pub struct Interleaved {
    pub addrs: Vec<SocketAddr>,
    pub chats: usize,
}

/// The client side of one latency round: `WARM` untimed chat completions per path, then
/// `chats` timed ones per path, one on each connection in turn, the first path of the turn
/// moving on by one each time. Request by request, every path meets the same machine: on this
/// VM a block of a few seconds can fall in a quiet moment (a wakeup that crosses to an idle
/// vCPU: direct ~120 µs p50) while the next falls in a busy one (~30 µs), and the difference
/// between two blocks was then the machine's, not the paths'.
pub fn child_interleaved(plan: &Interleaved) -> Result<Vec<Vec<f64>>> {
    use std::io::BufReader;
    let mut conns = plan
        .addrs
        .iter()
        .map(|a| {
            let s = std::net::TcpStream::connect(a)?;
            s.set_nodelay(true)?;
            Ok(BufReader::new(s))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut out = vec![Vec::with_capacity(plan.chats); conns.len()];
    let n = conns.len();
    for i in 0..WARM + plan.chats {
        for j in 0..n {
            let k = (i + j) % n;
            let r = &mut conns[k];
            let t0 = Instant::now();
            client::post_as(r.get_mut(), client::CHAT, None)?;
            client::read_response(r)?;
            if i >= WARM {
                out[k].push(t0.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    Ok(out)
}

/// Whose CPU time a row reports.
enum Cpu<'a> {
    None,
    Process(u32),
    Threads(&'a Shards),
}

impl Cpu<'_> {
    fn ns(&self) -> Option<u64> {
        match self {
            Cpu::None => None,
            Cpu::Process(pid) => Some(process_cpu_ns(*pid)),
            Cpu::Threads(s) => Some(s.cpu_ns()),
        }
    }
}

struct Path<'a> {
    name: &'static str,
    addr: SocketAddr,
    cpu: Cpu<'a>,
}

/// One round's results for one path.
struct Block {
    /// The interleaved latency round.
    mixed: Vec<f64>,
    /// The path's own block.
    chat: HttpResult,
    stream: HttpResult,
    /// CPU time of the proxy per chat completion (warm-up included in both), µs.
    cpu_us: Option<f64>,
}

pub fn run(p: &Params) -> Result<()> {
    sluice_tests::require_root();
    let server = servers::http_unrecorded("127.0.0.1:0");
    let up = server.addr;
    let threads = crate::cores();
    let cg = TestCgroup::new("bench-floor");
    let vip = virtual_ip();
    let agent = p.sluice.then(|| {
        Agent::start(&AgentSpec {
            cgroup: cg.rel.clone(),
            fail_mode: "open",
            targets: format!(
                "  - name: bench\n    match: \"{vip}:8000\"\n    upstream: \"{up}\"\n    protocol: tcp\n  - name: bench-http\n    match: \"{vip}:8001\"\n    upstream: \"{up}\"\n    protocol: http\n    server: openai\n"
            ),
            listen_v6: true,
            extra: format!(
                "policies: [\"{}\"]\nworker_threads: 0\nruntime: per-core\n",
                sluice_tests::policies_dir().display()
            ),
        })
    });
    let haproxy = peers::Peer::haproxy(up, threads)?;
    let a = Shards::start("floor-a", threads, move |s| relay::serve(s, up))?;
    let b = Shards::start("floor-b", threads, move |s| h1::serve(s, up))?;
    let c = Shards::start("floor-c", threads, move |s| hyper::serve(s, up))?;
    let mut paths = vec![
        Path {
            name: "direct",
            addr: up,
            cpu: Cpu::None,
        },
        Path {
            name: "HAProxy",
            addr: haproxy.addr,
            cpu: Cpu::Process(haproxy.pid()),
        },
    ];
    if let Some(agent) = &agent {
        let pid = agent.child.as_ref().map(|c| c.id()).context("agent pid")?;
        let at = |port: u16| -> Result<SocketAddr> { Ok(format!("{vip}:{port}").parse()?) };
        paths.push(Path {
            name: "Sluice HTTP-aware",
            addr: at(8001)?,
            cpu: Cpu::Process(pid),
        });
        paths.push(Path {
            name: "Sluice L4",
            addr: at(8000)?,
            cpu: Cpu::Process(pid),
        });
    }
    for (name, s) in [
        ("floor A: tokio byte relay", &a),
        ("floor B: httparse HTTP/1.1", &b),
        ("floor C: hyper HTTP/1.1", &c),
    ] {
        paths.push(Path {
            name,
            addr: s.addr,
            cpu: Cpu::Threads(s),
        });
    }
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().context("exe path")?;
    let block = |addr: SocketAddr, chats: usize, streams: usize| -> Result<HttpResult> {
        let plan = Plan {
            addr,
            chats,
            streams,
        };
        let out = cg
            .command(exe)
            .arg("floor-client")
            .arg(serde_json::to_string(&plan)?)
            .output()?;
        if !out.status.success() {
            bail!(
                "floor client on {addr} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let interleaved = |chats: usize| -> Result<Vec<Vec<f64>>> {
        let plan = Interleaved {
            addrs: paths.iter().map(|p| p.addr).collect(),
            chats,
        };
        let out = cg
            .command(exe)
            .arg("floor-client-interleaved")
            .arg(serde_json::to_string(&plan)?)
            .output()?;
        if !out.status.success() {
            bail!(
                "interleaved floor client failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let mut results: Vec<Vec<Block>> = paths.iter().map(|_| Vec::new()).collect();
    for round in 0..p.rounds {
        let mut mixed = interleaved(p.requests)?.into_iter();
        // The order rotates: the place in the cycle alone moved results by tens of µs.
        for k in 0..paths.len() {
            let i = (k + round) % paths.len();
            let path = &paths[i];
            let before = path.cpu.ns();
            let chat = block(path.addr, p.requests, 0).with_context(|| path.name)?;
            let cpu_us = before
                .zip(path.cpu.ns())
                .map(|(b, a)| (a - b) as f64 / 1e3 / (p.requests + WARM) as f64);
            let stream = block(path.addr, 0, p.requests / 4).with_context(|| path.name)?;
            results[i].push(Block {
                mixed: Vec::new(),
                chat,
                stream,
                cpu_us,
            });
        }
        for r in results.iter_mut() {
            if let Some(b) = r.last_mut() {
                b.mixed = mixed
                    .next()
                    .context("a path missing from the interleaved round")?;
            }
        }
    }
    report(p, &paths, &results, threads);
    drop((a, b, c, haproxy, agent));
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn report(p: &Params, paths: &[Path<'_>], results: &[Vec<Block>], threads: usize) {
    let direct = &results[0];
    // Per path and round: a statistic of this path's round minus direct's in that round.
    let added = |i: usize, f: &dyn Fn(&Block) -> f64| -> Vec<f64> {
        results[i]
            .iter()
            .zip(direct)
            .map(|(b, d)| f(b) - f(d))
            .collect()
    };
    let mixed = |q: f64| move |b: &Block| pct(&b.mixed, q);
    let block = |q: f64| move |b: &Block| pct(&b.chat.chat_us, q);
    let ttfb = |b: &Block| pct(&b.stream.ttfb_us, 0.5);
    let cell = |v: Vec<f64>| format!("{:+.0} µs", median(v));
    println!("## The floor: minimal proxies on this machine (one run)\n");
    println!(
        "{} cores; the floor proxies and HAProxy with {threads} threads each, Sluice `runtime: per-core`, worker_threads 0; {}.\n",
        crate::cores(),
        crate::command_line(&["haproxy", "-v"]),
    );
    println!(
        "Concurrency 1, keep-alive chat completions (POST, not streamed), {} rounds. Each round: {n} per path interleaved request by request (one connection per path, one request on each in turn), after {WARM} untimed each; then per path, the order rotated every round, a block of {n} on a connection of its own (after {WARM} untimed) and {} streamed ones on another. Added = the path's percentile − direct's in the same round, the median over rounds; the p50 and p99 columns pool all rounds. CPU: the proxy's time on CPU during its block (`schedstat`; the floors' runtime threads, HAProxy's and the agent's whole process) per chat completion, warm-up included.\n",
        p.rounds,
        p.requests / 4,
        n = p.requests,
    );
    println!(
        "| path | p50 | added p50 | p99 | added p99 | added p50, blocks | first chunk p50 added, blocks | proxy CPU / request |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (i, path) in paths.iter().enumerate() {
        let r = &results[i];
        let all: Vec<f64> = r.iter().flat_map(|b| b.mixed.clone()).collect();
        let cpu: Vec<f64> = r.iter().filter_map(|b| b.cpu_us).collect();
        let cells = if i == 0 {
            vec![String::new(); 4]
        } else {
            vec![
                cell(added(i, &mixed(0.5))),
                cell(added(i, &mixed(0.99))),
                cell(added(i, &block(0.5))),
                cell(added(i, &ttfb)),
            ]
        };
        println!(
            "| {} | {:.1} µs | {} | {:.1} µs | {} | {} | {} | {} |",
            path.name,
            pct(&all, 0.5),
            cells[0],
            pct(&all, 0.99),
            cells[1],
            cells[2],
            cells[3],
            if cpu.is_empty() {
                "—".to_string()
            } else {
                format!("{:.1} µs", median(cpu))
            },
        );
    }
    let head = (1..=p.rounds)
        .map(|r| format!("round {r}"))
        .collect::<Vec<_>>()
        .join(" | ");
    let per_round = |title: &str, f: &dyn Fn(&Block) -> f64| {
        println!("\n{title} per round (µs; direct: its own):\n");
        println!("| path | {head} |");
        println!("|---|{}", "---|".repeat(p.rounds));
        for (i, path) in paths.iter().enumerate() {
            let cells: Vec<String> = if i == 0 {
                direct.iter().map(|b| format!("{:.0}", f(b))).collect()
            } else {
                added(i, f).iter().map(|v| format!("{v:+.0}")).collect()
            };
            println!("| {} | {} |", path.name, cells.join(" | "));
        }
    };
    per_round("Added p50, interleaved,", &mixed(0.5));
    per_round("Added p99, interleaved,", &mixed(0.99));
    per_round("Added p50, blocks,", &block(0.5));
    println!("\nProxy CPU per chat completion per round (µs):\n");
    println!("| path | {head} |");
    println!("|---|{}", "---|".repeat(p.rounds));
    for (i, path) in paths.iter().enumerate().skip(1) {
        let cells: Vec<String> = results[i]
            .iter()
            .map(|b| b.cpu_us.map_or("—".into(), |c| format!("{c:.1}")))
            .collect();
        println!("| {} | {} |", path.name, cells.join(" | "));
    }
}
