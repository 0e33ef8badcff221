//! What Sluice costs and what it did, as Prometheus metrics: requests by target, server,
//! operation, decision and rule; refusals by reason; live connections by relay path; bytes;
//! latency per pipeline stage; policy reloads and DNS refreshes.
//!
//! Off by default. When `metrics_listen` is set, one process-wide [`Metrics`] is installed
//! and served on that (loopback-only) address by [`server`]; the hot path asks [`get`] and
//! does nothing when it answers `None`, so an agent without metrics pays one branch.
//!
//! Labels are names an operator wrote (targets, rules) or fixed vocabularies (servers, route
//! ids, decisions, reasons, stages, paths). Never a model name, a path, a header or a body:
//! those come from the client, would leak what was asked, and would let a client create
//! series without bound.
use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

pub mod server;

use crate::relay::Path;

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

/// The agent's metrics, if they are on.
pub fn get() -> Option<&'static Metrics> {
    GLOBAL.get()
}

/// Turns metrics on for this process (once; later calls return the first).
pub fn install() -> &'static Metrics {
    GLOBAL.get_or_init(Metrics::new)
}

/// The steps whose latency is measured. `Overhead` is the request's whole time in the agent
/// (from its head to its response head, minus the upstream's own time): what the
/// `x-sluice-overhead-us` header reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Admit,
    Read,
    Classify,
    Identify,
    Decide,
    /// Masking the request body (the response's masking is in `Filters`).
    Mask,
    Approve,
    Prepare,
    /// From sending the request upstream to its response head (the upstream's time, plus
    /// connecting when no pooled connection was free).
    UpstreamWait,
    Respond,
    /// The response filter chain, per data frame.
    Filters,
    Overhead,
}

impl Stage {
    pub const ALL: [Stage; 12] = [
        Stage::Admit,
        Stage::Read,
        Stage::Classify,
        Stage::Identify,
        Stage::Decide,
        Stage::Mask,
        Stage::Approve,
        Stage::Prepare,
        Stage::UpstreamWait,
        Stage::Respond,
        Stage::Filters,
        Stage::Overhead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Admit => "admit",
            Stage::Read => "read",
            Stage::Classify => "classify",
            Stage::Identify => "identify",
            Stage::Decide => "decide",
            Stage::Mask => "mask",
            Stage::Approve => "approve",
            Stage::Prepare => "prepare",
            Stage::UpstreamWait => "upstream_wait",
            Stage::Respond => "respond",
            Stage::Filters => "filters",
            Stage::Overhead => "overhead",
        }
    }
}

/// The `path` label of a connection: the relay's path, with the layer said for L4.
fn path_label(path: Path) -> &'static str {
    match path {
        Path::Http => "http",
        Path::Splice => "l4_splice",
        Path::Kernel => "l4_kernel",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    target: String,
    server: &'static str,
    operation: &'static str,
    decision: &'static str,
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    target: String,
    path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    target: String,
    /// `up`: client to server; `down`: server to client.
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DnsLabels {
    target: String,
    result: &'static str,
}

/// One request as the metrics count it (taken from its finished record, off the hot path).
pub struct RequestSample<'a> {
    pub target: &'a str,
    pub server: &'static str,
    pub operation: &'static str,
    pub decision: &'static str,
    pub rule: &'a str,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    refusals: Family<ReasonLabels, Counter>,
    connections: Family<ConnLabels, Gauge>,
    bytes: Family<BytesLabels, Counter>,
    /// One histogram per stage, taken out of their family once so the hot path never
    /// hashes a label set.
    stages: Vec<Histogram>,
    reloads: Family<ResultLabels, Counter>,
    dns: Family<DnsLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests by target, server, operation (route id), decision and deciding rule",
            requests.clone(),
        );
        let refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "refusals",
            "Requests and connections Sluice refused, by reason",
            refusals.clone(),
        );
        let connections = Family::<ConnLabels, Gauge>::default();
        registry.register(
            "active_connections",
            "Intercepted connections open now, by target and relay path",
            connections.clone(),
        );
        let bytes = Family::<BytesLabels, Counter>::default();
        registry.register_with_unit(
            "transferred",
            "Payload bytes relayed, by target and direction (up: to the server)",
            Unit::Bytes,
            bytes.clone(),
        );
        // 1 µs to ~16 s: stages take microseconds, an upstream's answer may take seconds.
        let stage_family =
            Family::<StageLabels, Histogram>::new_with_constructor(stage_histogram as fn() -> _);
        registry.register_with_unit(
            "stage_duration",
            "Time spent in each pipeline stage per request (filters: per data frame; \
             overhead: the request's time in the agent, without the upstream's)",
            Unit::Seconds,
            stage_family.clone(),
        );
        let stages = Stage::ALL
            .iter()
            .map(|s| stage_family.get_or_create_owned(&StageLabels { stage: s.name() }))
            .collect();
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy reloads by result (ok: applied; error: the running policy was kept)",
            reloads.clone(),
        );
        let dns = Family::<DnsLabels, Counter>::default();
        registry.register(
            "dns_refreshes",
            "Hostname target resolutions by target and result",
            dns.clone(),
        );
        Metrics {
            registry,
            requests,
            refusals,
            connections,
            bytes,
            stages,
            reloads,
            dns,
        }
    }

    /// The OpenMetrics text of every series.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn request(&self, r: &RequestSample<'_>) {
        self.requests
            .get_or_create(&RequestLabels {
                target: r.target.to_string(),
                server: r.server,
                operation: r.operation,
                decision: r.decision,
                rule: r.rule.to_string(),
            })
            .inc();
        self.add_bytes(r.target, r.bytes_up, r.bytes_down);
    }

    pub fn add_bytes(&self, target: &str, up: u64, down: u64) {
        for (direction, n) in [("up", up), ("down", down)] {
            if n > 0 {
                self.bytes
                    .get_or_create(&BytesLabels {
                        target: target.to_string(),
                        direction,
                    })
                    .inc_by(n);
            }
        }
    }

    /// `reason` is a fixed code: a refusal's `sluice_*` code, or a connection-level reason.
    pub fn refusal(&self, reason: &'static str) {
        self.refusals.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn observe(&self, stage: Stage, d: Duration) {
        if let Some(h) = self.stages.get(stage as usize) {
            h.observe(d.as_secs_f64());
        }
    }

    /// Counts the connection as open on `path` until the returned guard is dropped.
    pub fn connection(&self, target: &str, path: Path) -> ConnGauge {
        let gauge = self.connections.get_or_create_owned(&ConnLabels {
            target: target.to_string(),
            path: path_label(path),
        });
        gauge.inc();
        ConnGauge { gauge }
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// `result`: `changed`, `unchanged`, `failed`, `refused` (the kernel map took no update).
    pub fn dns(&self, target: &str, result: &'static str) {
        self.dns
            .get_or_create(&DnsLabels {
                target: target.to_string(),
                result,
            })
            .inc();
    }
}

fn stage_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-6, 2.0, 25))
}

/// A connection counted in `sluice_active_connections` until dropped.
pub struct ConnGauge {
    gauge: Gauge,
}

impl Drop for ConnGauge {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Counts a connection on `path` when metrics are on.
pub fn connection(target: &str, path: Path) -> Option<ConnGauge> {
    get().map(|m| m.connection(target, path))
}

/// Counts a refusal when metrics are on.
pub fn refused(reason: &'static str) {
    if let Some(m) = get() {
        m.refusal(reason);
    }
}

/// Times a request's stages: each `lap` closes the stage that just ran. Inert (no clock
/// reads) unless metrics or the overhead header are on.
#[derive(Debug)]
pub struct Clock {
    on: Option<ClockState>,
}

#[derive(Debug)]
struct ClockState {
    started: Instant,
    last: Instant,
    /// Time that was the upstream's, not the agent's.
    waited: Duration,
}

impl Clock {
    pub fn new(on: bool) -> Self {
        let now = on.then(Instant::now);
        Clock {
            on: now.map(|now| ClockState {
                started: now,
                last: now,
                waited: Duration::ZERO,
            }),
        }
    }

    pub fn is_on(&self) -> bool {
        self.on.is_some()
    }

    pub fn lap(&mut self, stage: Stage) {
        let Some(s) = self.on.as_mut() else {
            return;
        };
        let now = Instant::now();
        let d = now - s.last;
        s.last = now;
        if stage == Stage::UpstreamWait {
            s.waited += d;
        }
        if let Some(m) = get() {
            m.observe(stage, d);
        }
    }

    /// Time spent waiting on something that is not the agent (a person deciding a held
    /// request): left out of the stage being timed and of the overhead.
    pub fn exclude(&mut self, d: Duration) {
        if let Some(s) = self.on.as_mut() {
            s.last += d;
            s.waited += d;
        }
    }

    /// The agent's own time so far (everything but the upstream's), observed as `overhead`.
    pub fn overhead(&mut self) -> Option<Duration> {
        let s = self.on.as_mut()?;
        let d = s.started.elapsed().saturating_sub(s.waited);
        if let Some(m) = get() {
            m.observe(Stage::Overhead, d);
        }
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn series_carry_the_labels_they_were_counted_with() {
        let m = Metrics::new();
        m.request(&RequestSample {
            target: "ollama",
            server: "ollama",
            operation: "ollama.pull",
            decision: "deny",
            rule: "no-pull",
            bytes_up: 10,
            bytes_down: 0,
        });
        m.refusal("sluice_policy_denied");
        m.reload(false);
        m.dns("api", "changed");
        m.observe(Stage::Decide, Duration::from_micros(3));
        let text = m.encode();
        assert_eq!(
            value_of(
                &text,
                r#"sluice_requests_total{target="ollama",server="ollama",operation="ollama.pull",decision="deny",rule="no-pull"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value_of(
                &text,
                r#"sluice_transferred_bytes_total{target="ollama",direction="up"}"#
            ),
            Some(10.0)
        );
        assert!(
            !text.contains(r#"direction="down""#),
            "no zero-byte series: {text}"
        );
        assert_eq!(
            value_of(
                &text,
                r#"sluice_refusals_total{reason="sluice_policy_denied"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value_of(&text, r#"sluice_policy_reloads_total{result="error"}"#),
            Some(1.0)
        );
        assert_eq!(
            value_of(
                &text,
                r#"sluice_stage_duration_seconds_count{stage="decide"}"#
            ),
            Some(1.0)
        );
        // Every stage has its series from the start, so dashboards see zeros, not gaps.
        for s in Stage::ALL {
            assert!(
                text.contains(&format!(
                    r#"sluice_stage_duration_seconds_count{{stage="{}"}}"#,
                    s.name()
                )),
                "{}",
                s.name()
            );
        }
    }

    #[test]
    fn a_connection_is_counted_while_its_guard_lives() {
        let m = Metrics::new();
        let series = r#"sluice_active_connections{target="t",path="http"}"#;
        let a = m.connection("t", Path::Http);
        let b = m.connection("t", Path::Http);
        assert_eq!(value_of(&m.encode(), series), Some(2.0));
        drop(a);
        assert_eq!(value_of(&m.encode(), series), Some(1.0));
        drop(b);
        assert_eq!(value_of(&m.encode(), series), Some(0.0));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.dns("a\"b\nc", "failed");
        let text = m.encode();
        assert!(text.contains(r#"target="a\"b\nc""#), "{text}");
    }

    #[test]
    fn an_inert_clock_reads_no_time_and_reports_none() {
        let mut c = Clock::new(false);
        c.lap(Stage::Admit);
        assert!(!c.is_on());
        assert_eq!(c.overhead(), None);
    }

    #[test]
    fn overhead_leaves_out_the_upstreams_time() {
        let mut c = Clock::new(true);
        std::thread::sleep(Duration::from_millis(30));
        c.lap(Stage::UpstreamWait);
        let o = c.overhead().expect("on");
        assert!(o < Duration::from_millis(30), "{o:?}");
    }
}
