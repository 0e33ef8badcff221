//! Load from wrk: chat completions (keep-alive, POST) at a fixed number of connections, run
//! inside the test cgroup so that connections to the virtual address are redirected. A Lua
//! `done` hook prints wrk's own counters and percentiles in one line we parse.
use std::{fs, net::SocketAddr};

use anyhow::{Context as _, Result, bail};
use sluice_tests::{TempDir, TestCgroup};

use crate::client::CHAT;

/// Prefix of the line the Lua hook prints.
const TAG: &str = "SLUICE_WRK";

#[derive(Clone, Copy, Default)]
pub struct Load {
    pub requests: u64,
    pub duration_us: u64,
    /// Responses with a status of 400 or more (wrk's `status` errors).
    pub non_2xx: u64,
    pub connect_errors: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    /// Requests without a response within wrk's `--timeout`.
    pub timeouts: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Load {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }

    pub fn errors(&self) -> u64 {
        self.non_2xx + self.socket_errors()
    }

    pub fn socket_errors(&self) -> u64 {
        self.connect_errors + self.read_errors + self.write_errors + self.timeouts
    }
}

pub struct Wrk {
    script: TempDir,
    pub threads: usize,
    pub timeout_secs: u64,
}

impl Wrk {
    pub fn new(threads: usize) -> Result<Self> {
        let script = TempDir::new("wrk");
        let body = CHAT.replace('\\', "\\\\").replace('"', "\\\"");
        let lua = format!(
            "wrk.method = \"POST\"\n\
             wrk.body = \"{body}\"\n\
             wrk.headers[\"Content-Type\"] = \"application/json\"\n\
             done = function(summary, latency, requests)\n\
             \x20 local e = summary.errors\n\
             \x20 io.write(string.format(\"{TAG} %d %d %d %d %d %d %d %.0f %.0f %.0f %.0f %.0f\\n\",\n\
             \x20   summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,\n\
             \x20   latency:percentile(50), latency:percentile(90), latency:percentile(99),\n\
             \x20   latency:percentile(99.9), latency.max))\n\
             end\n"
        );
        fs::write(script.path().join("chat.lua"), lua).context("writing the wrk script")?;
        Ok(Wrk {
            script,
            threads,
            timeout_secs: 2,
        })
    }

    /// `connections` keep-alive connections for `seconds` to `addr`, from inside `cg`.
    pub fn run(
        &self,
        cg: &TestCgroup,
        addr: SocketAddr,
        connections: usize,
        seconds: u64,
    ) -> Result<Load> {
        let out = cg
            .command("wrk")
            .arg(format!("-t{}", self.threads.min(connections).max(1)))
            .arg(format!("-c{connections}"))
            .arg(format!("-d{seconds}s"))
            .arg(format!("--timeout={}s", self.timeout_secs))
            .arg("-s")
            .arg(self.script.path().join("chat.lua"))
            .arg(format!("http://{addr}/v1/chat/completions"))
            .output()
            .context("running wrk (installed by `cargo xtask setup`)")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "wrk failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(TAG))
            .with_context(|| format!("no {TAG} line in wrk's output: {stdout}"))?;
        let f: Vec<f64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("wrk summary {line:?}"))?;
        let [
            req,
            dur,
            status,
            conn,
            read,
            write,
            timeout,
            p50,
            p90,
            p99,
            p999,
            max,
        ] = f[..]
        else {
            bail!("wrk summary {line:?}: expected 12 numbers");
        };
        Ok(Load {
            requests: req as u64,
            duration_us: dur as u64,
            non_2xx: status as u64,
            connect_errors: conn as u64,
            read_errors: read as u64,
            write_errors: write as u64,
            timeouts: timeout as u64,
            p50_us: p50,
            p90_us: p90,
            p99_us: p99,
            p999_us: p999,
            max_us: max,
        })
    }
}

/// Rounds of one path merged: counts summed (so requests per second is over the whole
/// time), percentiles the median over the rounds (wrk gives no histogram to merge).
pub fn merge(rounds: &[Load]) -> Load {
    let mut m = Load::default();
    for r in rounds {
        m.requests += r.requests;
        m.duration_us += r.duration_us;
        m.non_2xx += r.non_2xx;
        m.connect_errors += r.connect_errors;
        m.read_errors += r.read_errors;
        m.write_errors += r.write_errors;
        m.timeouts += r.timeouts;
        m.max_us = m.max_us.max(r.max_us);
    }
    let median = |f: fn(&Load) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    m.p50_us = median(|l| l.p50_us);
    m.p90_us = median(|l| l.p90_us);
    m.p99_us = median(|l| l.p99_us);
    m.p999_us = median(|l| l.p999_us);
    m
}
