//! Response masking through the agent (issue 15): what it adds per SSE event and to the time
//! to first token. An upstream in the client process streams a chat completion, one OpenAI
//! event every `gap`, each stamped with when it was written; the client reads it through a
//! target with a response masking rule (every built-in detector, redact) and through one
//! without, paired: one stream on each keep-alive connection in turn, the order swapped every
//! time, so both see the same machine noise. The upstream lives in the client process so the
//! stamps and the reads share one monotonic clock.
use std::{
    io::{BufRead as _, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use sluice_tests::{Agent, AgentSpec, TempDir, TestCgroup, free_port, virtual_ip};

use crate::{client::CHAT, report};

const PACK: &str = r#"apiVersion: sluice.dev/v1alpha1
kind: PolicyPack
metadata: {name: bench-masking}
spec:
  rules:
    - id: allow-all
      action: allow
  masking:
    rules:
      - id: answers
        direction: response
        match: {targets: [bench-masked]}
        detectors: {all: redact}
"#;

/// What the upstream says, four characters per event (a key and an email in it, so the
/// masked side has work to do).
const ANSWER: &str = "Sure. The deployment uses the key AKIAQ3EGRSZ7XN5TB2LP for uploads; write to jane.doe@example.com if it fails, and retry with exponential backoff after 2026-11-20 when the quota resets. ";

#[derive(Serialize, Deserialize)]
pub struct Plan {
    masked: SocketAddr,
    plain: SocketAddr,
    /// Where the client process serves the upstream (the targets' `upstream`).
    upstream: SocketAddr,
    events: usize,
    gap_us: u64,
    pairs: usize,
}

#[derive(Serialize, Deserialize, Default)]
pub struct Side {
    /// Per event: upstream write to client read.
    event_us: Vec<f64>,
    /// From the request's write: the first chunk, the first event with text, the end.
    first_chunk_us: Vec<f64>,
    first_token_us: Vec<f64>,
    total_us: Vec<f64>,
    /// Events before the first one with text.
    empty_before_text: Vec<f64>,
    text: String,
}

#[derive(Serialize, Deserialize)]
pub struct Results {
    masked: Side,
    plain: Side,
}

/// `--masking-only` and the full bench: an agent with the two targets, the client in its
/// cgroup, the report.
pub fn run(events: usize, gap_us: u64, pairs: usize) -> Result<()> {
    sluice_tests::require_root();
    let dir = TempDir::new("bench-masking");
    let pack = dir.path().join("pack");
    std::fs::create_dir_all(&pack)?;
    std::fs::write(pack.join("pack.yaml"), PACK)?;
    let upstream: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let vip = virtual_ip();
    let cg = TestCgroup::new("bench-masking");
    let targets: String = [("bench-masked", 8010), ("bench-plain", 8011)]
        .iter()
        .map(|(name, port)| {
            format!(
                "  - name: {name}\n    match: \"{vip}:{port}\"\n    upstream: \"{upstream}\"\n    protocol: http\n    server: openai\n"
            )
        })
        .collect();
    let _agent = Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "closed",
        targets,
        listen_v6: false,
        extra: format!("policies: [\"{}\"]\n", pack.display()),
    });
    let plan = Plan {
        masked: format!("{vip}:8010").parse()?,
        plain: format!("{vip}:8011").parse()?,
        upstream,
        events,
        gap_us,
        pairs,
    };
    let exe = std::env::current_exe()?;
    let out = cg
        .command(exe.to_str().context("exe path")?)
        .arg("masking-client")
        .arg(serde_json::to_string(&plan)?)
        .output()?;
    if !out.status.success() {
        bail!(
            "masking client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let r: Results = serde_json::from_slice(&out.stdout)?;
    report(&plan, &r);
    Ok(())
}

fn report(plan: &Plan, r: &Results) {
    let (m, p) = (&r.masked, &r.plain);
    println!("\n### Response masking through the agent\n");
    println!(
        "A streamed chat completion of {} OpenAI SSE events (4 characters of text each, a key and an email among them), one every {} µs, through a target with `detectors: {{all: redact}}` on the response vs one without, same agent and upstream, paired ({} streams each, one on each connection in turn, the order swapped every time). Per event: upstream write to client read, every event of every stream. First token: the first event whose delta has text.\n",
        plan.events, plan.gap_us, plan.pairs
    );
    println!("| metric | masking on | masking off | ratio | added |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, f: &dyn Fn(&Side) -> &Vec<f64>, q: f64| {
        report::ratio_row(
            &format!("{name}, p{}", (q * 1000.0).round() / 10.0),
            report::pct(f(m), q),
            report::pct(f(p), q),
        );
    };
    row("per event", &|s| &s.event_us, 0.5);
    row("per event", &|s| &s.event_us, 0.99);
    row("per event", &|s| &s.event_us, 0.999);
    row("time to first chunk", &|s| &s.first_chunk_us, 0.5);
    row("time to first token", &|s| &s.first_token_us, 0.5);
    row("time to first token", &|s| &s.first_token_us, 0.99);
    row("stream, complete", &|s| &s.total_us, 0.5);
    println!(
        "\nEvents before the first with text: masking on {:.0} (p50), off {:.0}. Masked text: {:?}",
        report::pct(&m.empty_before_text, 0.5),
        report::pct(&p.empty_before_text, 0.5),
        m.text
    );
}

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u128 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos()
}

/// The client process: serves the upstream, then measures.
pub fn child(plan: &Plan) -> Result<Results> {
    now_ns();
    let listener = TcpListener::bind(plan.upstream)?;
    let (events, gap) = (plan.events, Duration::from_micros(plan.gap_us));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn, events, gap));
        }
    });
    let mut masked = Conn::open(plan.masked)?;
    let mut plain = Conn::open(plan.plain)?;
    let mut r = Results {
        masked: Side::default(),
        plain: Side::default(),
    };
    for _ in 0..5 {
        masked.stream(&mut Side::default())?;
        plain.stream(&mut Side::default())?;
    }
    for i in 0..plan.pairs {
        if i % 2 == 0 {
            masked.stream(&mut r.masked)?;
            plain.stream(&mut r.plain)?;
        } else {
            plain.stream(&mut r.plain)?;
            masked.stream(&mut r.masked)?;
        }
    }
    Ok(r)
}

/// The upstream, one connection: every request gets the streamed answer.
fn serve(conn: TcpStream, events: usize, gap: Duration) -> Result<()> {
    conn.set_nodelay(true)?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    let chars: Vec<char> = ANSWER.chars().collect();
    loop {
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse()?;
            }
        }
        std::io::copy(&mut r.by_ref().take(len as u64), &mut std::io::sink())?;
        w.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")?;
        for k in 0..events {
            if k > 0 {
                std::thread::sleep(gap);
            }
            let at = (k * 4) % chars.len();
            let text: String = chars[at..(at + 4).min(chars.len())].iter().collect();
            let event = format!(
                "data: {}\n\n",
                serde_json::json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": now_ns() as u64, "model": "gpt-4o", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
            );
            w.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())?;
        }
        let done = "data: [DONE]\n\n";
        w.write_all(format!("{:x}\r\n{done}\r\n0\r\n\r\n", done.len()).as_bytes())?;
    }
}

/// A keep-alive connection to one target.
struct Conn {
    r: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Result<Conn> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(Conn {
            r: BufReader::new(s),
        })
    }

    /// One streamed completion, its events timed into `out`.
    fn stream(&mut self, out: &mut Side) -> Result<()> {
        let body = CHAT.replace("\"messages\"", "\"stream\":true,\"messages\"");
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let t0 = Instant::now();
        self.r.get_mut().write_all(request.as_bytes())?;
        let mut line = String::new();
        loop {
            line.clear();
            if self.r.read_line(&mut line)? == 0 {
                bail!("closed in headers");
            }
            if line.starts_with("HTTP/1.1 ") && !line.starts_with("HTTP/1.1 200") {
                bail!("status {}", line.trim());
            }
            if line == "\r\n" {
                break;
            }
        }
        let (mut first_chunk, mut first_token, mut empty) = (None, None, 0usize);
        let mut text = String::new();
        let mut pending = Vec::new();
        loop {
            line.clear();
            self.r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16)?;
            if n == 0 {
                line.clear();
                self.r.read_line(&mut line)?;
                break;
            }
            let mut buf = vec![0u8; n + 2];
            self.r.read_exact(&mut buf)?;
            let now = Instant::now();
            let at = now_ns();
            first_chunk.get_or_insert(now);
            pending.extend_from_slice(&buf[..n]);
            // Whole events only: a chunk may end inside one.
            while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = pending.drain(..end + 2).collect();
                let Some(json) = event.strip_prefix(b"data: ") else {
                    continue;
                };
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
                    continue;
                };
                if let Some(sent) = v["created"].as_u64() {
                    out.event_us
                        .push((at.saturating_sub(u128::from(sent))) as f64 / 1e3);
                }
                let delta = v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
                if delta.is_empty() && first_token.is_none() {
                    empty += 1;
                }
                if !delta.is_empty() {
                    first_token.get_or_insert(now);
                }
                text.push_str(delta);
            }
        }
        let end = Instant::now();
        let us = |t: Instant| (t - t0).as_secs_f64() * 1e6;
        out.first_chunk_us.push(us(first_chunk.unwrap_or(end)));
        out.first_token_us.push(us(first_token.unwrap_or(end)));
        out.total_us.push(us(end));
        out.empty_before_text.push(empty as f64);
        out.text = text;
        Ok(())
    }
}
