//! In-process costs, no root and no agent: the response body wrapper per chunk, one policy
//! decision against the shipped packs, and policy decisions at 10 to 10,000 rules.
use std::time::Instant;

use anyhow::{Result, bail};

use crate::client::CHAT;

/// In-process cost per chunk of the response body Sluice wraps every response in, without
/// filters and with one pass-through filter (max_response_bytes, never reached).
pub fn filter_cost(n: usize) {
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
                &std::sync::Arc::new(sluice::workload::Workload::described(
                    0,
                    0,
                    "bench".into(),
                    None,
                )),
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
                json: None,
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

/// Masking engine (issue 15): scanning throughput on one core with every built-in detector
/// on, over a realistic mixed body, whole and streamed; the cost per SSE event of a stream
/// masker fed one event at a time; then the response layers: per OpenAI SSE event through
/// the masking filter (on) against the same events passed untouched (off), and the JSON
/// layer's MB/s.
pub fn mask_cost() {
    use sluice::mask::{Action, Plan, Scanner, StreamMasker, sample};
    let sc = Scanner::builtin();
    let plan = Plan::uniform(std::sync::Arc::new(sc.clone()), Action::Redact);
    let text = sample::mixed(32 << 20);
    let mb = text.len() as f64 / 1e6;
    let (mut find, mut stream) = (0f64, 0f64);
    // The output buffer is made once: a fresh 34 MB buffer per round timed the kernel's
    // page faults (a stream's output is a chunk at a time, in a buffer that is reused).
    let mut out = Vec::with_capacity(text.len());
    for _ in 0..3 {
        let t = Instant::now();
        std::hint::black_box(sc.find(&text).count());
        find = find.max(mb / t.elapsed().as_secs_f64());
        out.clear();
        let t = Instant::now();
        let mut m = StreamMasker::new(plan.clone());
        for c in text.chunks(4096) {
            m.push(c, false, &mut out);
        }
        m.push(&[], true, &mut out);
        stream = stream.max(mb / t.elapsed().as_secs_f64());
    }
    let event: &[u8] = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" the\"}}]}\n\n";
    let n = 200_000;
    let mut m = StreamMasker::new(plan.clone());
    let mut out = Vec::with_capacity(event.len() * 2);
    let mut lat: Vec<u64> = Vec::with_capacity(n);
    for _ in 0..n {
        out.clear();
        let t = Instant::now();
        m.push(event, false, &mut out);
        lat.push(t.elapsed().as_nanos() as u64);
    }
    lat.sort_unstable();
    println!(
        "masking engine (in process, {} built-in detectors, {mb:.0} MB mixed body): {find:.0} MB/s/core whole, {stream:.0} MB/s/core streamed in 4 KiB chunks (target 500); per SSE event fed alone: p50 {} ns, p99 {} ns, hold-back {}..{} bytes",
        sc.detectors().len(),
        lat[n / 2],
        lat[n * 99 / 100],
        sc.min_hold(),
        sc.max_hold()
    );
    mask_layers(&plan);
}

/// The response masking filter on an OpenAI SSE stream, one event per call (as a streamed
/// completion arrives), and the JSON layer on a large body.
fn mask_layers(plan: &sluice::mask::Plan) {
    use sluice::{
        adapter::Server,
        filter::{Filter, ResponseMask},
        mask::JsonMasker,
    };
    // Four-character tokens of prose with a secret or an email every ~600 bytes.
    let mut text = String::new();
    let mut i = 0;
    while text.len() < 400_000 {
        text.push_str("The service retries failed requests with exponential backoff and records each attempt. ");
        if i % 7 == 6 {
            text.push_str(
                [
                    "write to jane.doe@example.com ",
                    "key sk-proj-Ab3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7dE9f ",
                    "card 4111 1111 1111 1111 ",
                ][i / 7 % 3],
            );
        }
        i += 1;
    }
    let chars: Vec<char> = text.chars().collect();
    let events: Vec<bytes::Bytes> = chars
        .chunks(4)
        .map(|c| {
            let d: String = c.iter().collect();
            let v = serde_json::json!({"id":"chatcmpl-9x8Yz","object":"chat.completion.chunk","created":1731000000,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":d},"finish_reason":null}]});
            bytes::Bytes::from(format!("data: {v}\n\n"))
        })
        .collect();
    let n = events.len();
    let lat = |on: bool| {
        let mut f = ResponseMask::new(
            plan.clone(),
            Server::Openai,
            Some("text/event-stream"),
            None,
            None,
        )
        .expect("scannable");
        let mut l: Vec<u64> = Vec::with_capacity(n);
        for e in &events {
            let t = Instant::now();
            let out = if on {
                f.on_data(e.clone(), false).expect("masks")
            } else {
                e.clone()
            };
            l.push(t.elapsed().as_nanos() as u64);
            std::hint::black_box(out);
        }
        l.sort_unstable();
        (l[n / 2], l[n * 99 / 100], l[n * 999 / 1000])
    };
    let _warm = lat(true);
    let off = lat(false);
    let on = lat(true);
    println!(
        "response masking per OpenAI SSE event ({n} events of 4 characters, one per call, in process): masking off p50 {} ns p99 {} ns; on p50 {} ns, p99 {} ns, p99.9 {} ns (target: p99 added under 20 us)",
        off.0, off.1, on.0, on.1, on.2
    );
    // The JSON layer: one large chat completion body, fed in 4 KiB chunks.
    let body = serde_json::json!({
        "id": "chatcmpl-1",
        "choices": (0..64).map(|k| serde_json::json!({"index": k, "message": {"role": "assistant", "content": text.clone()}, "finish_reason": "stop"})).collect::<Vec<_>>(),
        "usage": {"prompt_tokens": 12, "completion_tokens": 34}
    })
    .to_string();
    let mb = body.len() as f64 / 1e6;
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let mut m = JsonMasker::new(plan.clone(), None);
        let mut out = Vec::with_capacity(body.len());
        for c in body.as_bytes().chunks(4096) {
            m.push(c, false, &mut out).expect("valid JSON");
        }
        m.push(&[], true, &mut out).expect("valid JSON");
        best = best.max(mb / t.elapsed().as_secs_f64());
    }
    println!(
        "JSON layer (in process, {mb:.0} MB chat completion body in 4 KiB chunks): {best:.0} MB/s/core"
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
pub fn policy_cost(n: usize) -> Result<()> {
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
            identity: None,
            switch: None,
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
    body_read_cost(&policy, n / 10)
}

/// The request body read as the pipeline reads it (`decode::body_metered`: colliding keys
/// refused at every level), for the bench's chat and for a 20-message conversation: every
/// field built, and with the loaded packs' `body:` roots (`decode::Roots`), which build the
/// top-level scalars and the lengths of the lists.
fn body_read_cost(policy: &sluice::policy::Policy, n: usize) -> Result<()> {
    use sluice::{adapter::Server, pipeline::decode};
    let messages: Vec<String> = (0..20)
        .map(|i| {
            format!(
                r#"{{"role":"{}","content":"{}"}}"#,
                if i % 2 == 0 { "user" } else { "assistant" },
                "Tell me more about the weather in a city, with some detail. ".repeat(3)
            )
        })
        .collect();
    let long = format!(
        r#"{{"model":"test-model","temperature":0.2,"messages":[{}]}}"#,
        messages.join(",")
    );
    let headers = http::HeaderMap::new();
    let mut out = Vec::new();
    for (name, body) in [("chat", CHAT.to_string()), ("20-message chat", long)] {
        for (how, roots) in [
            ("all fields built", &decode::Roots::All),
            ("the packs' roots", &policy.body_roots),
        ] {
            let t0 = Instant::now();
            for _ in 0..n {
                let v = decode::body_metered(
                    Server::Openai,
                    "POST",
                    "/v1/chat/completions",
                    &headers,
                    body.as_bytes(),
                    roots,
                    &|_| Ok(()),
                )
                .map_err(|r| anyhow::anyhow!(r.message))?;
                std::hint::black_box(v);
            }
            let ns = t0.elapsed().as_secs_f64() * 1e9 / n as f64;
            out.push(format!("{name} ({} bytes), {how}: {ns:.0} ns", body.len()));
        }
    }
    println!("request body read: {}", out.join("; "));
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
pub fn policy_scaling() -> Result<()> {
    use sluice::{
        adapter::Server,
        policy::{Action, Query, parse_pack},
        workload::Workload,
    };
    let body: serde_json::Value = serde_json::from_str(CHAT)?;
    let denied: serde_json::Value =
        serde_json::from_str(r#"{"model":"team7-llama","messages":[]}"#)?;
    let workload = Workload::described(10_007, 100, "python3".into(), None);
    println!("\n### Policy at scale (in process)\n");
    println!("Deny rules with a model glob and a uid each, plus one allow.\n");
    println!("| rules | load | decide (allow) | decide (deny) |");
    println!("|---|---|---|---|");
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
                identity: None,
                switch: None,
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
            "| {} | {:.1} ms | {:.2} µs | {:.2} µs |",
            policy.rule_count(),
            load,
            allow,
            deny
        );
    }
    // The shipped packs, as the full bench measures them.
    println!();
    policy_cost(100_000)
}

/// What attributing one connection costs on the blocking pool, in process, for this bench
/// process itself: the executable link alone (before container identity), then everything
/// `Workload::from_meta` does (the executable, the cgroup looked up by id, its path parsed).
/// Once per connection. Needs root, as the agent does.
pub fn identity_cost(n: usize) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let mount = sluice::intercept::cgroup::cgroup2_mount()?;
    let root = sluice::workload::CgroupRoot::open(&mount)?;
    let tgid = std::process::id();
    let text = std::fs::read_to_string(format!("/proc/{tgid}/cgroup"))?;
    let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
        bail!("no cgroup v2 line in /proc/{tgid}/cgroup");
    };
    let cgroup_id = std::fs::metadata(mount.join(path.trim_start_matches('/')))?.ino();
    let mut comm = [0u8; 16];
    comm[..5].copy_from_slice(b"bench");
    let meta = agent_common::ConnMeta {
        orig_addr: [0; 16],
        orig_port: 0,
        hook_family: 4,
        target_id: 0,
        pid: tgid,
        tgid,
        uid: 0,
        gid: 0,
        cgroup_id,
        socket_cookie: 0,
        netns_cookie: 0,
        comm,
    };
    if sluice::workload::Workload::from_meta(&meta, &root)
        .cgroup
        .is_none()
    {
        bail!("the bench's own cgroup was not found by its id (root?)");
    }
    let t0 = Instant::now();
    for _ in 0..n {
        std::hint::black_box(std::fs::read_link(format!("/proc/{tgid}/exe")).ok());
    }
    let exe = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t0 = Instant::now();
    for _ in 0..n {
        std::hint::black_box(sluice::workload::Workload::from_meta(
            std::hint::black_box(&meta),
            &root,
        ));
    }
    let all = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!(
        "attribution per connection (blocking pool, {n} rounds, in process): {all:.1} µs with cgroup, container and pod; the executable link alone {exe:.1} µs"
    );
    Ok(())
}
