//! The fuzz loop: proptest's runner driven for a number of cases or a time budget, counting
//! executions and collecting crashes (panics and failed properties, each shrunk to a minimal
//! input) instead of stopping at the first one.
//!
//! proptest rather than cargo-fuzz/libFuzzer: it runs on stable Rust inside `cargo test`,
//! which is all a fresh machine or CI has. The loop is written here because proptest's own
//! runner stops at the first failure and reports neither counts nor a time budget.
//!
//! Settings (environment):
//! - `SLUICE_FUZZ_CASES`: cases per target (default 256: the short run in `cargo test`).
//! - `SLUICE_FUZZ_SECONDS`: run each target this long instead (`cargo xtask fuzz --seconds`).
//! - `SLUICE_FUZZ_SLOW_MS`: one execution slower than this counts as a crash (default 5000),
//!   so an input that makes a parser hang is found, not waited on forever.
//!
//! Each target prints one line, `fuzz: <target>: <n> executions, <m> crashes`, which
//! `cargo xtask fuzz` collects.
use std::{
    cell::Cell,
    fmt::Debug,
    time::{Duration, Instant},
};

use proptest::{
    strategy::Strategy,
    test_runner::{Config, TestCaseError, TestError, TestRunner},
};

const DEFAULT_CASES: u32 = 256;
/// Cases per runner when running for a time budget: the deadline is checked between batches.
const BATCH: u32 = 2_000;
/// Crashes kept per target; past this the target stops, its report is long enough.
const MAX_CRASHES: usize = 8;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs `property` on inputs from `strategy` and panics, listing every minimal crashing input,
/// if any execution panicked, failed or was too slow.
pub fn fuzz<S>(name: &str, strategy: S, property: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let cases =
        env_u64("SLUICE_FUZZ_CASES").map_or(DEFAULT_CASES, |n| n.min(u32::MAX.into()) as u32);
    let seconds = env_u64("SLUICE_FUZZ_SECONDS");
    let slow = Duration::from_millis(env_u64("SLUICE_FUZZ_SLOW_MS").unwrap_or(5_000));
    println!("fuzz: {name}: start");
    let started = Instant::now();
    let deadline = seconds.map(|s| started + Duration::from_secs(s));
    let executions = Cell::new(0u64);
    let mut crashes: Vec<String> = Vec::new();
    let mut remaining = cases;
    loop {
        let batch = if deadline.is_some() { BATCH } else { remaining };
        if batch == 0 {
            break;
        }
        let before = executions.get();
        let mut runner = TestRunner::new(Config {
            cases: batch,
            // Crashes are printed with their minimal input and become regression tests by
            // hand; no files are written into the source tree.
            failure_persistence: None,
            max_shrink_iters: 4_096,
            ..Config::default()
        });
        let result = runner.run(&strategy, |input| {
            executions.set(executions.get() + 1);
            let t = Instant::now();
            property(input)?;
            let took = t.elapsed();
            if took > slow {
                return Err(TestCaseError::fail(format!(
                    "slow input: one execution took {took:?} (limit {slow:?})"
                )));
            }
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(TestError::Fail(why, input)) => {
                crashes.push(format!("{why}\n  minimal input: {input:?}"))
            }
            Err(TestError::Abort(why)) => crashes.push(format!("aborted: {why}")),
        }
        let ran = executions.get() - before;
        remaining = remaining.saturating_sub(ran.min(u32::MAX.into()) as u32);
        let out_of_time = deadline.is_some_and(|d| Instant::now() >= d);
        if crashes.len() >= MAX_CRASHES || out_of_time || (deadline.is_none() && remaining == 0) {
            break;
        }
    }
    println!(
        "fuzz: {name}: {} executions, {} crashes, {:.1}s",
        executions.get(),
        crashes.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        crashes.is_empty(),
        "fuzz target {name}: {} crash(es):\n{}",
        crashes.len(),
        crashes.join("\n")
    );
}
