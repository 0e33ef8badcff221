//! The recording store in process, no root and no agent (`--audit-only`): records per
//! second made durable with group commit at the metadata level, what waiting for an opening
//! record costs a request, fsync per record for comparison, and `list` with filters over
//! 100k recorded requests. The store is written under the system's temp directory (or
//! `SLUICE_BENCH_AUDIT_DIR`), whose filesystem the report names: fsync costs are the disk's.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use sluice::{
    adapter::{OpClass, Operation, Server},
    audit::{self, Durability, Filter, Level, Settings},
    identity::Principal,
    policy::{Decision, Permit},
    record::{Outcome, Record},
    workload::Workload,
};

fn record(id: u64) -> Record {
    Record {
        id,
        unix_ms: 1_700_000_000_000 + id,
        target: "models".into(),
        server: Server::Openai,
        workload: Arc::new(
            Workload::described(
                1000,
                1000,
                "python3".into(),
                Some("/usr/bin/python3".into()),
            )
            .named(Some("svc".into())),
        ),
        principal: Some(Arc::new(Principal {
            issuer: "https://idp.example".into(),
            subject: format!("user-{}", id % 1000),
            groups: vec!["team-a".into(), format!("g-{}", id % 7)],
            claims: Arc::new(serde_json::Value::Null),
        })),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        operation: Some(Operation {
            class: OpClass::Inference,
            route: "openai.chat.completions",
            model: Some(format!("model-{}", id % 50)),
            streaming: true,
        }),
        decision: Some(Decision::Permit(Permit {
            rules: vec!["allow-chat".into()],
            by_default: false,
        })),
        status: Some(http::StatusCode::OK),
        request_bytes: 312,
        response_bytes: 4096,
        outcome: Outcome::Complete,
        headers_ms: Some(120),
        duration_ms: 2400,
        response_headers: vec![
            ("content-type".into(), "text/event-stream".into()),
            ("x-request-id".into(), "req-0123456789".into()),
        ],
        mask_request: sluice::mask::Verdict::Off,
        mask_response: sluice::mask::Verdict::Off,
        approval: None,
        body: None,
        unaudited: false,
    }
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(tag: &str) -> Dir {
    let base =
        std::env::var_os("SLUICE_BENCH_AUDIT_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let d = base.join(format!("sluice-bench-audit-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    Dir(d)
}

fn settings(d: &Path, durability: Durability) -> Settings {
    Settings {
        dir: d.to_path_buf(),
        level: Level::Metadata,
        durability,
        ..Settings::default()
    }
}

/// The filesystem type of `p` (fsync costs are the disk's; the report names it).
pub fn fs_type(p: &Path) -> String {
    std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(p)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// User + system CPU time of `who` (`RUSAGE_SELF`, `RUSAGE_THREAD`), in seconds.
fn rusage_secs(who: libc::c_int) -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; both `who` used here are valid.
    let u = unsafe {
        libc::getrusage(who, u.as_mut_ptr());
        u.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// CPU time this process has used, in seconds: with the machine shared, the records per
/// CPU-second say what the store costs apart from the wait for a core.
fn cpu_secs() -> f64 {
    rusage_secs(libc::RUSAGE_SELF)
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu_secs() -> f64 {
    rusage_secs(libc::RUSAGE_THREAD)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

pub fn audit_cost() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Final records as the writer task hands them over (batches of 256), then one flush:
    // everything written and fdatasync'd.
    let d = dir("group");
    let (h, thread, _, _) = audit::start(&settings(&d.0, Durability::Group)).context("store")?;
    let n = 500_000u64;
    let t = Instant::now();
    let cpu = cpu_secs();
    let made = thread_cpu_secs();
    rt.block_on(async {
        let mut id = 1;
        while id <= n {
            let batch: Vec<Record> = (id..(id + 256).min(n + 1)).map(record).collect();
            id += batch.len() as u64;
            h.finals(batch).await;
        }
        h.flush().await
    })?;
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu;
    // The records are made on this thread (block_on runs here); the rest is the store's.
    let made = thread_cpu_secs() - made;
    let bytes: u64 = std::fs::read_dir(&d.0)?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "audit store ({}): {n} final records durable with group commit (metadata) in {secs:.2} s: {:.0} records/s, {:.0} bytes/record on disk; {cpu:.2} CPU-s, of which {made:.2} making the records: {:.0} records per CPU-second of the store",
        fs_type(&d.0),
        n as f64 / secs,
        bytes as f64 / n as f64,
        n as f64 / (cpu - made)
    );
    // Opening records from 64 concurrent requests, each waiting until its record is durable.
    let per = 1_000u64;
    let waits = rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..64u64 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                let mut w = Vec::with_capacity(per as usize);
                for i in 0..per {
                    let t = Instant::now();
                    let ok = h.open(record(n + 1 + c * per + i), Vec::new()).await;
                    w.push(t.elapsed());
                    if ok.is_err() {
                        break;
                    }
                }
                w
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all
    });
    let total: Duration = waits.iter().sum();
    let mut sorted = waits.clone();
    sorted.sort_unstable();
    println!(
        "audit store: opening records, 64 requests at once each waiting for durability: p50 {:?}, p99 {:?} per request ({:.0} records/s)",
        pct(&sorted, 0.5),
        pct(&sorted, 0.99),
        waits.len() as f64 / (total.as_secs_f64() / 64.0)
    );
    drop(h);
    let _ = thread.join();

    // fsync per record, for comparison.
    let d2 = dir("record");
    let (h, thread, _, _) = audit::start(&settings(&d2.0, Durability::Record)).context("store")?;
    let m = 2_000u64;
    let t = Instant::now();
    rt.block_on(async {
        for i in 1..=m {
            let _ = h.open(record(i), Vec::new()).await;
        }
    });
    println!(
        "audit store: durability record (fdatasync per record), one request at a time: {:.0} records/s",
        m as f64 / t.elapsed().as_secs_f64()
    );
    drop(h);
    let _ = thread.join();

    // `list` over the first store's 500k records plus 64k opening ones, with filters.
    for (name, f) in [
        (
            "--subject user-7",
            Filter {
                subject: Some("user-7".into()),
                ..Filter::default()
            },
        ),
        (
            "--model model-3 --group g-3",
            Filter {
                model: Some("model-3".into()),
                group: Some("g-3".into()),
                ..Filter::default()
            },
        ),
    ] {
        let t = Instant::now();
        let rows = audit::list(&d.0, &f, None)?;
        println!(
            "audit list {name} over {} records: {} rows in {:?}",
            n + 64 * per,
            rows.len(),
            t.elapsed()
        );
    }
    list_100k()?;
    full_bodies(&rt)?;
    Ok(())
}

/// `level: full`: requests whose response is `chunks` chunks of `size` bytes (SSE-like text)
/// after a 4 KiB request body, queued as the request path queues them (`Handle::body`,
/// waiting when the writer's byte bound is reached), then flushed: body bytes made durable
/// with group commit per second.
fn full_bodies(rt: &tokio::runtime::Runtime) -> Result<()> {
    for (chunks, size, requests) in [(64usize, 1024usize, 4_000u64), (16, 16 * 1024, 2_000)] {
        let d = dir(&format!("full-{size}"));
        let s = Settings {
            level: Level::Full,
            ..settings(&d.0, Durability::Group)
        };
        let (h, thread, _, _) = audit::start(&s).context("store")?;
        let mut sse = b"data: {\"choices\":[{\"delta\":{\"content\":\"".to_vec();
        sse.resize(size - 8, b'x');
        sse.extend_from_slice(b"\"}}]}\n\n");
        let chunk = bytes::Bytes::from(sse);
        let body = bytes::Bytes::from(vec![b'q'; 4096]);
        let t = Instant::now();
        let total = rt.block_on(async {
            let mut total = 0u64;
            for id in 1..=requests {
                let mut at = 0;
                let pieces = std::iter::once((audit::Direction::Request, &body))
                    .chain((0..chunks).map(|_| (audit::Direction::Response, &chunk)));
                for (n, (dir, data)) in (0u64..).zip(pieces) {
                    let p = audit::Piece {
                        id,
                        dir,
                        n,
                        at,
                        t_us: n * 1000,
                        data: data.clone(),
                    };
                    // The bench waits where a request would have dropped the piece.
                    while h.body(p.clone()).is_err() {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    at += data.len() as u64;
                    total += data.len() as u64;
                }
                h.finals(vec![record(id)]).await;
            }
            h.flush().await.map(|()| total)
        })?;
        let secs = t.elapsed().as_secs_f64();
        let on_disk: u64 = std::fs::read_dir(&d.0)?
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        println!(
            "audit store, level full ({}): {requests} requests of a 4 KiB body and {chunks} chunks of {size} B, durable with group commit in {secs:.2} s: {:.1} MB/s of bodies, {:.0} body entries/s, {:.2} bytes on disk per body byte",
            fs_type(&d.0),
            total as f64 / secs / 1e6,
            (requests * (chunks as u64 + 1)) as f64 / secs,
            on_disk as f64 / total as f64
        );
        drop(h);
        let _ = thread.join();
    }
    Ok(())
}

/// The measure: `list` with filters over a store of exactly 100k requests.
fn list_100k() -> Result<()> {
    let d = dir("100k");
    let (mut st, _) = audit::Store::open(&settings(&d.0, Durability::Group))?;
    for i in 1..=100_000 {
        let r = record(i);
        st.append(audit::Kind::Final, &r, &r.response_headers);
        if i % 1000 == 0 {
            st.flush()?;
            st.maintain(false)?;
        }
    }
    st.close()?;
    for (name, f) in [
        (
            "--subject user-7",
            Filter {
                subject: Some("user-7".into()),
                ..Filter::default()
            },
        ),
        (
            "--model model-3 --decision allow --rule allow-chat",
            Filter {
                model: Some("model-3".into()),
                decision: Some("allow".into()),
                rule: Some("allow-chat".into()),
                ..Filter::default()
            },
        ),
        (
            "--group g-3 --since (last 10%)",
            Filter {
                group: Some("g-3".into()),
                since_ms: Some(1_700_000_090_000),
                ..Filter::default()
            },
        ),
    ] {
        let t = Instant::now();
        let rows = audit::list(&d.0, &f, None)?;
        println!(
            "audit list {name} over 100000 requests: {} rows in {:?}",
            rows.len(),
            t.elapsed()
        );
    }
    Ok(())
}
