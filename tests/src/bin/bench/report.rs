//! The report, as markdown tables ready to paste into docs/benchmarks.md.
use crate::{
    client::{HttpResult, PathResult},
    wrk::Load,
};

pub fn pct(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((s.len() as f64 - 1.0) * q).round() as usize;
    s[i]
}

fn us(v: f64) -> String {
    format!("{v:.1} µs")
}

fn added(v: f64, base: f64) -> String {
    format!("{:+.0} µs", v - base)
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "—".to_string(),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    )
}

/// One row of the HTTP comparison.
pub struct HttpRow<'a> {
    pub name: &'a str,
    pub latency: &'a HttpResult,
    pub load: Load,
    pub rss_idle: Option<u64>,
    pub rss_after: Option<u64>,
    /// Said under the table, e.g. that two rows are one process.
    pub rss_note: Option<String>,
}

pub fn l4(i: &PathResult, d: &PathResult) {
    println!("| metric | intercepted | direct | ratio | added |");
    println!("|---|---|---|---|---|");
    let row = ratio_row;
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        row(
            &format!("connect() {label}"),
            pct(&i.connect_us, q),
            pct(&d.connect_us, q),
        );
    }
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        row(
            &format!("new connection + first response {label}"),
            pct(&i.first_response_us, q),
            pct(&d.first_response_us, q),
        );
    }
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        row(
            &format!("request on keep-alive connection {label}"),
            pct(&i.request_us, q),
            pct(&d.request_us, q),
        );
    }
    for (name, a, b) in [
        ("download throughput", i.download_mb_s, d.download_mb_s),
        ("upload throughput", i.upload_mb_s, d.upload_mb_s),
    ] {
        println!("| {name} | {a:.0} MB/s | {b:.0} MB/s | {:.2}x | |", a / b);
    }
}

/// Latency at concurrency 1, then load at concurrency N and memory; `added` is against the
/// row named `direct`.
pub fn http(rows: &[HttpRow<'_>], direct: &HttpRow<'_>) {
    println!(
        "| path | chat p50 | added | chat p99 | added | first chunk p50 | added | first chunk p99 | added | stream complete p50 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let d = direct.latency;
    for r in rows {
        let l = r.latency;
        let mut cells = vec![r.name.to_string()];
        for (v, base) in [(&l.chat_us, &d.chat_us), (&l.ttfb_us, &d.ttfb_us)] {
            for q in [0.5, 0.99] {
                let (a, b) = (pct(v, q), pct(base, q));
                cells.push(us(a));
                cells.push(if std::ptr::eq(r.latency, d) {
                    String::new()
                } else {
                    added(a, b)
                });
            }
        }
        cells.push(us(pct(&l.stream_total_us, 0.5)));
        println!("| {} |", cells.join(" | "));
    }
}

pub fn load(rows: &[HttpRow<'_>], direct: &HttpRow<'_>, connections: usize) {
    println!(
        "| path | requests/s (c={connections}) | vs direct | latency p50 | latency p99 | errors | RSS idle | RSS after |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.2}x | {} | {} | {} | {} | {} |",
            r.name,
            r.load.rps(),
            r.load.rps() / direct.load.rps(),
            us(r.load.p50_us),
            us(r.load.p99_us),
            errors(&r.load),
            mib(r.rss_idle),
            mib(r.rss_after),
        );
    }
    for r in rows {
        if let Some(note) = &r.rss_note {
            println!("\n{}: {note}", r.name);
        }
    }
}

/// Total errors, with their kinds when there are any.
pub fn errors(l: &Load) -> String {
    if l.errors() == 0 {
        return "0".to_string();
    }
    format!(
        "{} (non-2xx {}, connect {}, read {}, write {}, timeout {})",
        l.errors(),
        l.non_2xx,
        l.connect_errors,
        l.read_errors,
        l.write_errors,
        l.timeouts
    )
}

/// Which percentile of which series a comparison row shows.
#[derive(Clone, Copy)]
pub enum Metric {
    Chat(f64),
    FirstChunk(f64),
    StreamTotal(f64),
}

impl Metric {
    fn name(self) -> String {
        let (what, p) = match self {
            Metric::Chat(p) => ("chat completion", p),
            Metric::FirstChunk(p) => ("stream, time to first chunk", p),
            Metric::StreamTotal(p) => ("stream, complete", p),
        };
        format!("{what}, p{}", (p * 100.0).round())
    }

    fn of(self, r: &HttpResult) -> f64 {
        match self {
            Metric::Chat(p) => pct(&r.chat_us, p),
            Metric::FirstChunk(p) => pct(&r.ttfb_us, p),
            Metric::StreamTotal(p) => pct(&r.stream_total_us, p),
        }
    }
}

/// Two variants of one path, side by side (`with` against `without`): both values, their
/// ratio and what `with` adds, per metric.
pub fn variant(labels: (&str, &str), with: &HttpResult, without: &HttpResult, metrics: &[Metric]) {
    println!("| metric | {} | {} | ratio | added |", labels.0, labels.1);
    println!("|---|---|---|---|---|");
    for m in metrics {
        ratio_row(&m.name(), m.of(with), m.of(without));
    }
}

/// One row of a two-column comparison: both values, their ratio and what `a` adds.
pub fn ratio_row(name: &str, a: f64, b: f64) {
    println!(
        "| {name} | {} | {} | {:.2}x | {} |",
        us(a),
        us(b),
        a / b,
        added(a, b)
    );
}
