//! The `sluice` command. Exit codes: 0 ok, 1 runtime failure, 2 bad configuration,
//! 3 host not ready (privileges, kernel, cgroup v2), 4 agent not running (for clients).
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use sluice::{admin, app, config::Config, doctor, intercept};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Transparent, policy-enforcing proxy for AI model servers"
)]
struct Cli {
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (needs root). Without --config, runs the built-in defaults.
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show live intercepted connections of a running agent.
    #[command(alias = "status")]
    Connections {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the raw JSON status.
        #[arg(long)]
        json: bool,
    },
    /// Check that this host can run the agent, and explain what is missing.
    Doctor {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Detach programs left pinned by an agent stopped with fail_mode closed.
    Detach {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print what it intercepts.
    CheckConfig { config: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Run { config } => {
            let cfg = match load(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("sluice: cannot start runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(app::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.downcast_ref::<app::PreflightFailed>().is_some() => {
                    eprintln!("sluice: {e}");
                    ExitCode::from(3)
                }
                Err(e) => {
                    eprintln!("sluice: {}", chain(&e));
                    ExitCode::from(1)
                }
            }
        }
        Command::Connections { config, json } => {
            let cfg = match load(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            connections(&cfg, json)
        }
        Command::Doctor { config } => {
            let cfg = match load(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let checks = doctor::full(&cfg, true);
            for c in &checks {
                println!("{c}");
            }
            if doctor::failures(&checks).is_empty() {
                println!("this host can run sluice");
                ExitCode::SUCCESS
            } else {
                println!("this host cannot run sluice until the FAIL lines above are fixed");
                ExitCode::from(3)
            }
        }
        Command::Detach { config } => {
            let cfg = match load(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match intercept::detach_pinned(&cfg.pin_dir) {
                Ok(n) => {
                    println!("detached {n} pinned link(s) from {}", cfg.pin_dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluice: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::CheckConfig { config } => match load(Some(config)) {
            Ok(cfg) => {
                for t in &cfg.targets {
                    let up: Vec<String> = t.upstream.iter().map(ToString::to_string).collect();
                    let up = if up.is_empty() {
                        "(dialled address)".to_string()
                    } else {
                        up.join(", ")
                    };
                    println!("{:<24} {:<28} -> {up}", t.name, t.matches.to_string());
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
    }
}

fn load(path: Option<PathBuf>) -> Result<Config, ExitCode> {
    let r = match &path {
        Some(p) => Config::load(p),
        None => Config::builtin(),
    };
    r.map_err(|e| {
        eprintln!("sluice: {e}");
        ExitCode::from(2)
    })
}

fn connections(cfg: &Config, json: bool) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(1);
        }
    };
    let status = match rt.block_on(admin::query(&cfg.admin_socket)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(4);
        }
    };
    if json {
        match serde_json::to_string_pretty(&status) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("sluice: {e}");
                return ExitCode::from(1);
            }
        }
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<6} {:<18} {:<8} {:<6} {:<16} {:<24} {:<24} EXE",
        "ID", "TARGET", "PID", "UID", "COMM", "ORIGINAL DST", "UPSTREAM"
    );
    for c in &status.connections {
        println!(
            "{:<6} {:<18} {:<8} {:<6} {:<16} {:<24} {:<24} {}",
            c.id,
            c.target,
            c.workload.tgid,
            c.workload.uid,
            c.workload.comm,
            c.original_dst.to_string(),
            c.upstream.map_or("-".to_string(), |u| u.to_string()),
            c.workload.exe.as_deref().unwrap_or("?")
        );
    }
    let k = |i: usize| status.kernel.get(i).copied().unwrap_or(0);
    println!(
        "\n{} live, {} accepted, {} refused (not redirected), {} upstream failures; kernel: {} redirected, {} metadata failures",
        status.connections.len(),
        status.accepted_total,
        status.refused_unattributed,
        status.upstream_failures,
        k(0),
        k(1) + k(2)
    );
    ExitCode::SUCCESS
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// An error and its causes on one line, skipping causes that repeat their parent's text
/// (aya's errors already embed their source).
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut prev = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if !prev.is_empty() && prev.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
        prev = msg;
    }
    out
}
