//! Project tasks: `cargo xtask setup | build | run | test | bench [--stress] | fuzz |
//! package | image`.
//!
//! `setup` installs what building the eBPF programs needs, idempotently: either a nightly with
//! rust-src and bpf-linker already exist, or it installs Debian's rustc-web (rustc with its
//! library source), LLVM 22, bpf-linker built against it, and links that compiler as the
//! rustup toolchain `sluice-bpf` (which agent/build.rs picks up). xtask never compiles BPF
//! itself: cargo does, through agent/build.rs.
use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod deploy;
mod fuzz;
mod setup;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain and test tools (idempotent).
    Setup,
    /// Build the agent (release) with its eBPF programs.
    Build,
    /// Set up, build and run the agent as root. Arguments after `--` go to `sluice run`
    /// (default: the built-in config).
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, then run formatting and lint checks, unit tests and the root end-to-end tests.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
    },
    /// Set up, build release binaries and run the benchmarks (Sluice vs HAProxy, nginx and
    /// direct). Arguments after `--` go to the bench (docs/benchmarks.md).
    Bench {
        /// Instead: wrk at 256 connections for 60 s through HTTP-aware interception; fails if
        /// any request fails. `-- --seconds S --connections N` change both.
        #[arg(long)]
        stress: bool,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build the Debian package (release) with cargo-deb: target/debian/sluice_*.deb.
    Package,
    /// Build the container image (release) from scratch with buildah: localhost/sluice:VERSION.
    Image,
    /// Run the fuzz targets (agent/tests/fuzz) long, then print executions and crashes per
    /// target. `cargo xtask test` runs the same targets briefly. Default: 60 s per target.
    Fuzz {
        /// Inputs per target.
        #[arg(long, conflicts_with = "seconds")]
        cases: Option<u64>,
        /// Seconds per target.
        #[arg(long)]
        seconds: Option<u64>,
        /// Only the targets whose name contains this (e.g. `classify`).
        target: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root()?;
    env::set_current_dir(&root)?;
    match cli.task {
        Task::Setup => setup::run(true),
        Task::Build => {
            setup::run(false)?;
            cargo(&["build", "--release", "-p", "sluice"])
        }
        Task::Run { args } => {
            setup::run(false)?;
            cargo(&["build", "--release", "-p", "sluice"])?;
            let bin = root.join("target/release/sluice");
            let mut cmd = as_root(&bin);
            cmd.arg("run").args(&args);
            run_status(cmd)
        }
        Task::Test { no_lint } => {
            setup::run(true)?;
            if !no_lint {
                cargo(&["fmt", "--all", "--", "--check"])?;
                cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
            }
            cargo(&["build", "-p", "sluice"])?;
            let bin = root.join("target/debug/sluice");
            let mut cmd = cargo_cmd();
            cmd.args(["test", "--all-targets", "--no-fail-fast"])
                .env("SLUICE_BIN", &bin);
            // End-to-end tests are #[ignore]d so that a run that cannot do them reports
            // them as skipped; as root they are included, less those this host cannot run.
            let mut skipped = 0;
            if setup::is_root() {
                cmd.args(["--", "--include-ignored"]);
                for (test, why) in deploy::unrunnable() {
                    eprintln!("xtask: skipped {test}: {why}");
                    cmd.args(["--skip", test]);
                    skipped += 1;
                }
            } else {
                eprintln!(
                    "xtask: not root: end-to-end tests are reported as skipped (ignored), not run"
                );
            }
            run_tests(cmd, skipped)
        }
        Task::Package => {
            setup::run(false)?;
            setup::cargo_deb()?;
            // cargo-deb runs the release build itself (through agent/build.rs, as ever).
            cargo(&["deb", "-p", "sluice", "--output", "target/debian/"])
        }
        Task::Image => {
            setup::run(false)?;
            cargo(&["build", "--release", "-p", "sluice"])?;
            deploy::image(&root)
        }
        Task::Fuzz {
            cases,
            seconds,
            target,
        } => {
            let budget = match (cases, seconds) {
                (Some(n), _) => fuzz::Budget::Cases(n),
                (None, Some(s)) => fuzz::Budget::Seconds(s),
                (None, None) => fuzz::Budget::Seconds(60),
            };
            fuzz::run(cargo_cmd(), budget, target.as_deref())
        }
        Task::Bench { stress, args } => {
            setup::run(true)?;
            cargo(&["build", "--release", "-p", "sluice", "-p", "sluice-tests"])?;
            let mut cmd = as_root(&root.join("target/release/sluice-bench"));
            cmd.env("SLUICE_BIN", root.join("target/release/sluice"));
            if stress {
                cmd.arg("--stress");
            }
            cmd.args(&args);
            run_status(cmd)
        }
    }
}

fn workspace_root() -> Result<PathBuf> {
    let dir = env::var("CARGO_MANIFEST_DIR").context("run through `cargo xtask`")?;
    Path::new(&dir)
        .parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}

pub(crate) fn cargo_cmd() -> Command {
    let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.env("PATH", setup::build_path());
    c
}

fn cargo(args: &[&str]) -> Result<()> {
    let mut c = cargo_cmd();
    c.args(args);
    run_status(c)
}

fn run_status(mut cmd: Command) -> Result<()> {
    let status: ExitStatus = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{:?} failed: {status}", cmd.get_program());
    }
    Ok(())
}

/// Runs `cargo test`, passing its output through, and closes with one summary line over all
/// test binaries ("tests: N passed, M failed, K skipped") so the total is visible at the end;
/// `skipped` counts the tests left out with `--skip` (cargo test does not count them).
fn run_tests(mut cmd: Command, skipped: u64) -> Result<()> {
    use std::io::{BufRead as _, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, skipped);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                for part in rest.split(';') {
                    let mut words = part.split_whitespace().rev();
                    let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                        continue;
                    };
                    let n: u64 = n.parse().unwrap_or(0);
                    match kind {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        "ignored" => ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    if passed == 0 {
        bail!("cargo test ran no test");
    }
    Ok(())
}

/// The agent needs root; re-run under sudo when we are not root.
fn as_root(bin: &Path) -> Command {
    if setup::is_root() {
        Command::new(bin)
    } else {
        let mut c = Command::new("sudo");
        c.arg("--preserve-env=SLUICE_LOG,SLUICE_BIN").arg(bin);
        c
    }
}
