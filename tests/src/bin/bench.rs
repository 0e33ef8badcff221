//! `cargo xtask bench`: intercepted vs direct, side by side in one run, to the same server.
//!
//! The parent sets up a test cgroup, a real HTTP server and the agent (release build), then
//! runs this binary again as the client *inside* the cgroup. The client alternates between
//! the virtual address (redirected by eBPF through the agent) and the server's real address
//! (not a target, so direct) in interleaved blocks, so both paths see the same machine noise.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use sluice_tests::{Agent, AgentSpec, TestCgroup, servers, virtual_ip};

#[derive(Serialize, Deserialize, Default)]
struct PathResult {
    connect_us: Vec<f64>,
    first_response_us: Vec<f64>,
    request_us: Vec<f64>,
    download_mb_s: f64,
    upload_mb_s: f64,
}

#[derive(Serialize, Deserialize, Default)]
struct HttpResult {
    /// Non-streamed chat completion on a keep-alive connection.
    chat_us: Vec<f64>,
    /// Streamed chat completion: time to the first SSE chunk, and to the end.
    ttfb_us: Vec<f64>,
    stream_total_us: Vec<f64>,
}

#[derive(Serialize, Deserialize)]
struct Results {
    intercepted: PathResult,
    direct: PathResult,
    http_intercepted: HttpResult,
    http_direct: HttpResult,
    /// Streams through a target whose response passes a (never triggered) filter.
    http_filtered: HttpResult,
}

struct Params {
    workers: usize,
    setups: usize,
    requests: usize,
    bulk_mb: usize,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // In process, no root, no agent: `cargo run --release -p sluice-tests --bin sluice-bench
    // -- --policy-only`.
    if args.get(1).map(String::as_str) == Some("--policy-only") {
        return policy_scaling();
    }
    if args.get(1).map(String::as_str) == Some("client") {
        let via: SocketAddr = args.get(2).context("client VIA")?.parse()?;
        let direct: SocketAddr = args.get(3).context("client DIRECT")?.parse()?;
        let p = Params {
            workers: 0,
            setups: args.get(4).context("setups")?.parse()?,
            requests: args.get(5).context("requests")?.parse()?,
            bulk_mb: args.get(6).context("bulk")?.parse()?,
        };
        let r = client(via, direct, &p)?;
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let mut p = Params {
        workers: 0,
        setups: 1000,
        requests: 20000,
        bulk_mb: 512,
    };
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let mut val = || -> Result<usize> { Ok(it.next().context("missing value")?.parse()?) };
        match a.as_str() {
            "--setups" => p.setups = val()?,
            "--requests" => p.requests = val()?,
            "--bulk-mb" => p.bulk_mb = val()?,
            "--workers" => p.workers = val()?,
            other => bail!(
                "unknown argument {other}; use --setups N --requests N --bulk-mb N --workers N, or --policy-only alone"
            ),
        }
    }
    parent(&p)
}

fn parent(p: &Params) -> Result<()> {
    sluice_tests::require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("bench");
    let agent = Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "open",
        targets: format!(
            "  - name: bench\n    match: \"{vip}:8000\"\n    upstream: \"{0}\"\n    protocol: tcp\n  - name: bench-http\n    match: \"{vip}:8001\"\n    upstream: \"{0}\"\n    protocol: http\n    server: openai\n  - name: bench-http-filtered\n    match: \"{vip}:8002\"\n    upstream: \"{0}\"\n    protocol: http\n    server: openai\n    max_response_bytes: 1000000000\n",
            server.addr
        ),
        listen_v6: true,
        extra: format!(
            "policies: [\"{}\"]\nworker_threads: {}\n",
            sluice_tests::policies_dir().display(),
            p.workers
        ),
    });
    let agent_pid = agent.child.as_ref().map(|c| c.id()).context("agent pid")?;
    std::thread::sleep(Duration::from_millis(300));
    let idle_rss = rss_kib(agent_pid);
    let exe = std::env::current_exe()?;
    let out = cg
        .command(exe.to_str().context("exe path")?)
        .args([
            "client".to_string(),
            format!("{vip}:8000"),
            server.addr.to_string(),
            p.setups.to_string(),
            p.requests.to_string(),
            p.bulk_mb.to_string(),
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "bench client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let busy_rss = rss_kib(agent_pid);
    let r: Results = serde_json::from_slice(&out.stdout)?;
    report(&r, p, idle_rss, busy_rss, &agent);
    policy_cost(p.requests.max(10_000))?;
    filter_cost(200_000);
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn pct(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((s.len() as f64 - 1.0) * q).round() as usize;
    s[i]
}

fn report(r: &Results, p: &Params, idle_rss: u64, busy_rss: u64, agent: &Agent) {
    let (i, d) = (&r.intercepted, &r.direct);
    println!("sluice bench: L4 interception (protocol: tcp), loopback, concurrency 1");
    println!(
        "  {} fresh connections, {} keep-alive requests, {} MiB each way, per path, interleaved\n",
        p.setups, p.requests, p.bulk_mb
    );
    println!(
        "{:<34} {:>12} {:>12} {:>10} {:>12}",
        "metric", "intercepted", "direct", "ratio", "added"
    );
    let row = |name: &str, a: f64, b: f64, unit: &str| {
        println!(
            "{:<34} {:>9.1} {unit} {:>9.1} {unit} {:>9.2}x {:>+9.1} {unit}",
            name,
            a,
            b,
            a / b,
            a - b
        );
    };
    row(
        "connect() p50",
        pct(&i.connect_us, 0.5),
        pct(&d.connect_us, 0.5),
        "µs",
    );
    row(
        "connect() p99",
        pct(&i.connect_us, 0.99),
        pct(&d.connect_us, 0.99),
        "µs",
    );
    row(
        "new conn + first response p50",
        pct(&i.first_response_us, 0.5),
        pct(&d.first_response_us, 0.5),
        "µs",
    );
    row(
        "new conn + first response p99",
        pct(&i.first_response_us, 0.99),
        pct(&d.first_response_us, 0.99),
        "µs",
    );
    row(
        "request (keep-alive) p50",
        pct(&i.request_us, 0.5),
        pct(&d.request_us, 0.5),
        "µs",
    );
    row(
        "request (keep-alive) p99",
        pct(&i.request_us, 0.99),
        pct(&d.request_us, 0.99),
        "µs",
    );
    println!(
        "{:<34} {:>9.0} MB/s {:>7.0} MB/s {:>9.2}x",
        "download throughput",
        i.download_mb_s,
        d.download_mb_s,
        i.download_mb_s / d.download_mb_s
    );
    println!(
        "{:<34} {:>9.0} MB/s {:>7.0} MB/s {:>9.2}x",
        "upload throughput",
        i.upload_mb_s,
        d.upload_mb_s,
        i.upload_mb_s / d.upload_mb_s
    );
    let (hi, hd) = (&r.http_intercepted, &r.http_direct);
    println!("\nHTTP-aware interception (protocol: http, shipped policy packs, OpenAI adapter)");
    row(
        "chat completion (keep-alive) p50",
        pct(&hi.chat_us, 0.5),
        pct(&hd.chat_us, 0.5),
        "µs",
    );
    row(
        "chat completion (keep-alive) p99",
        pct(&hi.chat_us, 0.99),
        pct(&hd.chat_us, 0.99),
        "µs",
    );
    row(
        "stream time to first chunk p50",
        pct(&hi.ttfb_us, 0.5),
        pct(&hd.ttfb_us, 0.5),
        "µs",
    );
    row(
        "stream time to first chunk p99",
        pct(&hi.ttfb_us, 0.99),
        pct(&hd.ttfb_us, 0.99),
        "µs",
    );
    row(
        "stream complete p50",
        pct(&hi.stream_total_us, 0.5),
        pct(&hd.stream_total_us, 0.5),
        "µs",
    );
    row(
        "stream complete p99",
        pct(&hi.stream_total_us, 0.99),
        pct(&hd.stream_total_us, 0.99),
        "µs",
    );
    let hf = &r.http_filtered;
    println!(
        "\nA pass-through response filter (max_response_bytes, never reached) vs none, both intercepted"
    );
    row(
        "stream first chunk, filter p50",
        pct(&hf.ttfb_us, 0.5),
        pct(&hi.ttfb_us, 0.5),
        "µs",
    );
    row(
        "stream complete, filter p50",
        pct(&hf.stream_total_us, 0.5),
        pct(&hi.stream_total_us, 0.5),
        "µs",
    );
    row(
        "stream complete, filter p99",
        pct(&hf.stream_total_us, 0.99),
        pct(&hi.stream_total_us, 0.99),
        "µs",
    );
    println!(
        "\nagent RSS: {:.1} MiB idle, {:.1} MiB after the run",
        idle_rss as f64 / 1024.0,
        busy_rss as f64 / 1024.0
    );
    if let Ok(st) = agent.status() {
        println!(
            "agent counters: accepted {}, refused {}, kernel redirected {}",
            st["accepted_total"], st["refused_unattributed"], st["kernel"][0]
        );
    }
}

/// Reads one HTTP/1.1 response (headers + Content-Length body); returns body length.
fn read_response(r: &mut BufReader<TcpStream>) -> Result<usize> {
    let mut len = None;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("connection closed mid-response");
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line
            .to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().to_string())
        {
            len = Some(v.parse::<usize>()?);
        }
    }
    let n = len.context("no content-length")?;
    let copied = std::io::copy(&mut r.by_ref().take(n as u64), &mut std::io::sink())?;
    if copied as usize != n {
        bail!("short body");
    }
    Ok(n)
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

fn one_setup(addr: SocketAddr, out: &mut PathResult) -> Result<()> {
    let t0 = Instant::now();
    let s = TcpStream::connect(addr)?;
    let t1 = Instant::now();
    s.set_nodelay(true)?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    w.write_all(GET)?;
    read_response(&mut r)?;
    let t2 = Instant::now();
    out.connect_us.push((t1 - t0).as_secs_f64() * 1e6);
    out.first_response_us.push((t2 - t0).as_secs_f64() * 1e6);
    Ok(())
}

fn requests(addr: SocketAddr, n: usize, out: &mut PathResult) -> Result<()> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    // Warm the connection (and the agent's upstream connection) before timing.
    for _ in 0..50 {
        w.write_all(GET)?;
        read_response(&mut r)?;
    }
    for _ in 0..n {
        let t0 = Instant::now();
        w.write_all(GET)?;
        read_response(&mut r)?;
        out.request_us.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    Ok(())
}

fn bulk(addr: SocketAddr, mb: usize, out: &mut PathResult) -> Result<()> {
    let bytes = mb * 1024 * 1024;
    // Download.
    let s = TcpStream::connect(addr)?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::with_capacity(1 << 20, s);
    let t0 = Instant::now();
    write!(w, "GET /bytes/{bytes} HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    read_response(&mut r)?;
    out.download_mb_s = bytes as f64 / 1e6 / t0.elapsed().as_secs_f64();
    // Upload.
    let s = TcpStream::connect(addr)?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let chunk = vec![b'y'; 1 << 20];
    let t0 = Instant::now();
    write!(
        w,
        "POST /sink HTTP/1.1\r\nHost: bench\r\nContent-Length: {bytes}\r\n\r\n"
    )?;
    for _ in 0..mb {
        w.write_all(&chunk)?;
    }
    read_response(&mut r)?;
    out.upload_mb_s = bytes as f64 / 1e6 / t0.elapsed().as_secs_f64();
    Ok(())
}

fn client(via: SocketAddr, direct: SocketAddr, p: &Params) -> Result<Results> {
    let mut r = Results {
        intercepted: PathResult::default(),
        direct: PathResult::default(),
        http_intercepted: HttpResult::default(),
        http_direct: HttpResult::default(),
        http_filtered: HttpResult::default(),
    };
    const BLOCK: usize = 100;
    for round in 0..p.setups.div_ceil(BLOCK) {
        let n = BLOCK.min(p.setups - round * BLOCK);
        for _ in 0..n {
            one_setup(via, &mut r.intercepted)?;
        }
        for _ in 0..n {
            one_setup(direct, &mut r.direct)?;
        }
    }
    const REQ_BLOCK: usize = 1000;
    for round in 0..p.requests.div_ceil(REQ_BLOCK) {
        let n = REQ_BLOCK.min(p.requests - round * REQ_BLOCK);
        requests(via, n, &mut r.intercepted)?;
        requests(direct, n, &mut r.direct)?;
    }
    bulk(via, p.bulk_mb, &mut r.intercepted)?;
    bulk(direct, p.bulk_mb, &mut r.direct)?;
    let via_http = SocketAddr::new(via.ip(), via.port() + 1);
    for round in 0..p.requests.div_ceil(REQ_BLOCK) {
        let n = REQ_BLOCK.min(p.requests - round * REQ_BLOCK);
        chats(via_http, n, &mut r.http_intercepted)?;
        chats(direct, n, &mut r.http_direct)?;
        streams(
            SocketAddr::new(via.ip(), via.port() + 2),
            n / 4,
            &mut r.http_filtered,
        )?;
    }
    Ok(r)
}

const CHAT: &str = r#"{"model":"test-model","messages":[{"role":"user","content":"hello"}]}"#;
const CHAT_STREAM: &str =
    r#"{"model":"test-model","stream":true,"messages":[{"role":"user","content":"hello"}]}"#;

fn post(w: &mut TcpStream, body: &str) -> Result<()> {
    write!(
        w,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

/// Reads a chunked response; returns (time of the first data chunk, time of the end).
fn read_chunked(r: &mut BufReader<TcpStream>) -> Result<(Instant, Instant)> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("closed in headers");
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut first = None;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let n = usize::from_str_radix(line.trim(), 16)?;
        if n == 0 {
            line.clear();
            r.read_line(&mut line)?;
            return Ok((first.unwrap_or_else(Instant::now), Instant::now()));
        }
        let mut buf = vec![0u8; n + 2];
        r.read_exact(&mut buf)?;
        first.get_or_insert_with(Instant::now);
    }
}

fn chats(addr: SocketAddr, n: usize, out: &mut HttpResult) -> Result<()> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    for _ in 0..50 {
        post(&mut w, CHAT)?;
        read_response(&mut r)?;
    }
    for _ in 0..n {
        let t0 = Instant::now();
        post(&mut w, CHAT)?;
        read_response(&mut r)?;
        out.chat_us.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    for _ in 0..n / 4 {
        let t0 = Instant::now();
        post(&mut w, CHAT_STREAM)?;
        let (first, end) = read_chunked(&mut r)?;
        out.ttfb_us.push((first - t0).as_secs_f64() * 1e6);
        out.stream_total_us.push((end - t0).as_secs_f64() * 1e6);
    }
    Ok(())
}

/// Streamed completions only (for the filtered target).
fn streams(addr: SocketAddr, n: usize, out: &mut HttpResult) -> Result<()> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    for i in 0..n + 20 {
        let t0 = Instant::now();
        post(&mut w, CHAT_STREAM)?;
        let (first, end) = read_chunked(&mut r)?;
        if i >= 20 {
            out.ttfb_us.push((first - t0).as_secs_f64() * 1e6);
            out.stream_total_us.push((end - t0).as_secs_f64() * 1e6);
        }
    }
    Ok(())
}

/// In-process cost per chunk of the response body Sluice wraps every response in, without
/// filters and with one pass-through filter (max_response_bytes, never reached).
fn filter_cost(n: usize) {
    use sluice::filter::{Chain, Framing, RequestEnd, ResponseBody, Settings};
    let run = |chain: fn() -> Chain| {
        let (rec, _rx) = sluice::record::Recorder::new(
            std::sync::Arc::new(sluice::admin::Table::default()),
            Default::default(),
        );
        let guard = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(rec.start(
                "bench",
                sluice::adapter::Server::Openai,
                &sluice::workload::Workload::described(0, 0, "bench".into(), None),
                "POST",
                "/v1/chat/completions",
            ));
        let chunk = bytes::Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
        );
        let inner = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(
            futures_util::stream::iter(ChunkStream { left: n, chunk }),
        ));
        let mut body = ResponseBody::new(
            inner,
            chain(),
            RequestEnd {
                record: guard,
                in_flight: None,
            },
        );
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let t0 = Instant::now();
        let mut frames = 0usize;
        while let std::task::Poll::Ready(Some(Ok(_))) =
            http_body::Body::poll_frame(std::pin::Pin::new(&mut body), &mut cx)
        {
            frames += 1;
        }
        (
            t0.elapsed().as_secs_f64() * 1e9 / frames.max(1) as f64,
            frames,
        )
    };
    let (none, frames) = run(Chain::default);
    let (one, _) = run(|| {
        Settings {
            max_response_bytes: Some(u64::MAX),
        }
        .chain(sluice::adapter::Server::Openai, Framing::Sse)
    });
    println!(
        "response body per chunk ({frames} chunks, in process): {none:.0} ns without filters, {one:.0} ns with a pass-through filter (+{:.0} ns)",
        one - none
    );
}

/// `n` copies of one chunk, as body frames.
struct ChunkStream {
    left: usize,
    chunk: bytes::Bytes,
}

impl Iterator for ChunkStream {
    type Item = Result<http_body::Frame<bytes::Bytes>, sluice::respond::BodyError>;
    fn next(&mut self) -> Option<Self::Item> {
        (self.left > 0).then(|| {
            self.left -= 1;
            Ok(http_body::Frame::data(self.chunk.clone()))
        })
    }
}

/// In-process cost of classifying and deciding one request against the shipped packs.
fn policy_cost(n: usize) -> Result<()> {
    use sluice::{
        adapter::Server,
        policy::{Action, Query, load_paths},
    };
    let policy = load_paths(&[sluice_tests::policies_dir()])?;
    let body: serde_json::Value = serde_json::from_str(CHAT)?;
    let t0 = Instant::now();
    let mut allowed = 0usize;
    for _ in 0..n {
        let (_, d) = policy.decide(&Query {
            target: "bench-http",
            server: Server::Openai,
            method: "POST",
            path: "/v1/chat/completions",
            body: Some(&body),
            default: Action::Deny,
            workload: None,
        });
        allowed += usize::from(d.action() == Action::Allow);
    }
    let per = t0.elapsed().as_secs_f64() * 1e9 / n as f64;
    let parse_t0 = Instant::now();
    for _ in 0..n {
        let v: serde_json::Value = serde_json::from_str(CHAT)?;
        std::hint::black_box(v);
    }
    let parse = parse_t0.elapsed().as_secs_f64() * 1e9 / n as f64;
    println!(
        "policy decision (classify + evaluate, {} rules): {per:.0} ns/request; JSON body parse: {parse:.0} ns ({allowed}/{n} allowed)",
        policy.rule_count()
    );
    Ok(())
}

/// A pack of `n` rules as large organisations write them: one deny per team and model (a
/// model glob and a uid each), then one allow for everything else.
fn scaling_pack(n: usize) -> String {
    let mut t = String::from(
        "apiVersion: sluice.dev/v1alpha1\nkind: PolicyPack\nmetadata:\n  name: scale\nspec:\n  rules:\n",
    );
    for i in 0..n.saturating_sub(1) {
        t.push_str(&format!(
            "    - id: deny-{i}\n      action: deny\n      match:\n        models: [\"team{i}-*\"]\n        workload:\n          uids: [{}]\n",
            10_000 + i
        ));
    }
    t.push_str("    - id: allow-rest\n      action: allow\n      match:\n        operations: [inference]\n");
    t
}

/// Decision cost and load time at 10, 100, 1,000 and 10,000 rules, in process.
fn policy_scaling() -> Result<()> {
    use sluice::{
        adapter::Server,
        policy::{Action, Query, parse_pack},
        workload::Workload,
    };
    let body: serde_json::Value = serde_json::from_str(CHAT)?;
    let denied: serde_json::Value =
        serde_json::from_str(r#"{"model":"team7-llama","messages":[]}"#)?;
    let workload = Workload::described(10_007, 100, "python3".into(), None);
    println!("policy scaling: deny rules with a model glob and a uid each, plus one allow");
    println!(
        "{:>7} {:>10} {:>14} {:>14}",
        "rules", "load", "decide allow", "decide deny"
    );
    for n in [10usize, 100, 1_000, 10_000] {
        let text = scaling_pack(n);
        let origin = std::path::Path::new("scale.yaml");
        let loads = if n >= 10_000 { 3 } else { 10 };
        let mut load = f64::INFINITY;
        let mut policy = parse_pack(&text, origin)?;
        for _ in 0..loads {
            let t0 = Instant::now();
            policy = parse_pack(&text, origin)?;
            load = load.min(t0.elapsed().as_secs_f64() * 1e3);
        }
        let time = |body: &serde_json::Value, want: Action| -> Result<f64> {
            let q = Query {
                target: "bench-http",
                server: Server::Openai,
                method: "POST",
                path: "/v1/chat/completions",
                body: Some(body),
                default: Action::Deny,
                workload: Some(&workload),
            };
            if policy.decide(&q).1.action() != want {
                bail!("{n} rules: expected {want:?}");
            }
            // Enough rounds for a stable mean without minutes at the slow end.
            let rounds = (2_000_000 / n).clamp(200, 200_000);
            let t0 = Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(policy.decide(std::hint::black_box(&q)));
            }
            Ok(t0.elapsed().as_secs_f64() * 1e6 / rounds as f64)
        };
        let allow = time(&body, Action::Allow)?;
        let deny = time(&denied, Action::Deny)?;
        println!(
            "{:>7} {:>7.1} ms {:>11.2} µs {:>11.2} µs",
            policy.rule_count(),
            load,
            allow,
            deny
        );
    }
    // The shipped packs, as the full bench measures them.
    policy_cost(100_000)
}
