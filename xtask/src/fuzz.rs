//! `cargo xtask fuzz`: the fuzz targets of agent/tests/fuzz run long, with a table of
//! executions and crashes per target at the end.
//!
//! The targets are proptest properties (stable Rust, no libFuzzer), so a long run is the same
//! test binary with a bigger budget. It is built in its own target directory at opt-level 2
//! (with debug assertions and overflow checks still on, as in tests), so that it neither
//! rebuilds nor invalidates the regular debug build, and without the eBPF object, which no
//! fuzz target loads.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

pub enum Budget {
    Cases(u64),
    Seconds(u64),
}

#[derive(Default)]
struct Report {
    finished: bool,
    executions: u64,
    crashes: u64,
    seconds: String,
}

pub fn run(mut cmd: Command, budget: Budget, filter: Option<&str>) -> Result<()> {
    cmd.args(["test", "-p", "sluice", "--test", "fuzz", "--"])
        .args(["--nocapture", "--test-threads=1"])
        .args(filter)
        .env("CARGO_TARGET_DIR", "target/fuzz")
        .env("CARGO_PROFILE_TEST_OPT_LEVEL", "2")
        .env("AYA_BUILD_SKIP", "1")
        .stdout(Stdio::piped());
    match budget {
        Budget::Cases(n) => cmd.env("SLUICE_FUZZ_CASES", n.to_string()),
        Budget::Seconds(s) => cmd.env("SLUICE_FUZZ_SECONDS", s.to_string()),
    };
    let mut child = cmd.spawn().with_context(|| format!("running {cmd:?}"))?;
    let mut reports: BTreeMap<String, Report> = BTreeMap::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("reading the fuzz output")?;
            println!("{line}");
            // "fuzz: <target>: start" and "fuzz: <target>: <n> executions, <m> crashes, <t>s"
            let Some(rest) = line.strip_prefix("fuzz: ") else {
                continue;
            };
            let Some((name, what)) = rest.split_once(": ") else {
                continue;
            };
            let report = reports.entry(name.to_string()).or_default();
            if what == "start" {
                continue;
            }
            let mut parts = what.split(", ");
            let number = |p: Option<&str>| {
                p.and_then(|p| p.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
            };
            if let (Some(e), Some(c)) = (number(parts.next()), number(parts.next())) {
                report.executions = e;
                report.crashes = c;
                report.seconds = parts.next().unwrap_or("").to_string();
                report.finished = true;
            }
        }
    }
    let status = child.wait().context("waiting for the fuzz run")?;
    println!(
        "\n{:<16} {:>12} {:>8} {:>9}",
        "TARGET", "EXECUTIONS", "CRASHES", "TIME"
    );
    let (mut executions, mut crashes) = (0, 0);
    for (name, r) in &reports {
        if r.finished {
            println!(
                "{name:<16} {:>12} {:>8} {:>9}",
                r.executions, r.crashes, r.seconds
            );
            crashes += r.crashes;
        } else {
            // Started and never reported: the process died under it (e.g. a stack overflow).
            println!("{name:<16} {:>12} {:>8} {:>9}", "?", "died", "-");
            crashes += 1;
        }
        executions += r.executions;
    }
    println!(
        "fuzz: {} target(s), {executions} executions, {crashes} crash(es)",
        reports.len()
    );
    if reports.is_empty() {
        bail!("no fuzz target ran (filter {filter:?})");
    }
    if crashes > 0 || !status.success() {
        bail!("fuzzing found {crashes} crash(es) ({status}); minimal inputs are printed above");
    }
    Ok(())
}
