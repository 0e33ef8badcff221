//! The `sluice` command. Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or policy,
//! 3 host not ready (privileges, kernel, cgroup v2), 4 agent not running (for clients).
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use sluice::{admin, app, config::Config, doctor, intercept, logging::Format as LogFormat};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Transparent, policy-enforcing proxy for AI model servers"
)]
struct Cli {
    /// text: one line per event, field values escaped; json: one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
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
        /// Instead: is the agent of this config serving, with its programs attached? Exit 0
        /// when ready, 3 when not (a readiness probe; no program is loaded).
        #[arg(long)]
        ready: bool,
    },
    /// Detach programs left pinned by an agent stopped with fail_mode closed.
    Detach {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print what it intercepts.
    CheckConfig { config: PathBuf },
    /// Work with policy packs: check, test, explain.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Read and verify the recording store: list, show, verify, pubkey, rotate-key.
    Audit {
        #[command(subcommand)]
        command: sluice::audit::cli::Command,
    },
    /// Requests held for a person's approval: list them, approve or deny one. You are the
    /// socket's peer uid, named through the host's name service.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
}

/// Where `sluice approvals` connects: --socket, else the approvers' socket of the config
/// when not root, else the admin socket.
#[derive(clap::Args)]
struct ApprovalsTarget {
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[arg(long)]
    socket: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// Pending approvals, recent decisions (with the webhook's delivery) and open grant
    /// windows.
    List {
        #[command(flatten)]
        at: ApprovalsTarget,
        #[arg(long)]
        json: bool,
    },
    /// Let a held request go upstream unchanged. --for (e.g. 30m) also opens a grant window
    /// for the same subject or workload (as the rule says), up to the rule's grant.for.
    Approve {
        id: String,
        #[arg(long = "for", value_parser = sluice::policy::approval::parse_window)]
        window: Option<std::time::Duration>,
        #[command(flatten)]
        at: ApprovalsTarget,
    },
    /// Refuse a held request; the client is told the reason.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        at: ApprovalsTarget,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate policy files and the case files beside them (exit 0 when valid, 2 when not;
    /// errors carry file:line:column).
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run the test cases beside the packs (`<pack>/cases/*.yaml`).
    Test {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Every rule that applies to an identity (a token's subject, groups and claims, or
    /// none: callers without a token) and what it covers: the effective permissions.
    Grants {
        /// Policy packs; not needed with --config.
        #[arg(required_unless_present = "config")]
        paths: Vec<PathBuf>,
        /// Take the policies from an agent config, and show its targets' defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        identity: Box<IdentityArgs>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the decision for one sample request.
    Explain {
        /// Policy packs; not needed with --config.
        #[arg(required_unless_present = "config")]
        paths: Vec<PathBuf>,
        /// Take the policies, and --target's server and default, from an agent config.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "POST")]
        method: String,
        #[arg(long)]
        path: String,
        /// JSON request body.
        #[arg(long)]
        body: Option<String>,
        /// openai, anthropic, ollama, vllm, tgi, triton or llama-cpp.
        #[arg(long, default_value = "openai", value_parser = serde_arg::<sluice::adapter::Server>)]
        server: sluice::adapter::Server,
        #[arg(long, default_value = "default")]
        target: String,
        /// The target's default action: allow or deny.
        #[arg(long, default_value = "deny", value_parser = serde_arg::<sluice::policy::Action>)]
        default: sluice::policy::Action,
        /// The protocol switch the request asks for: websocket, h2c or connect.
        #[arg(long, value_parser = serde_arg::<sluice::policy::Switch>)]
        switch: Option<sluice::policy::Switch>,
        #[command(flatten)]
        workload: Box<WorkloadArgs>,
        #[command(flatten)]
        identity: Box<IdentityArgs>,
    },
}

/// The verified token `policy explain` asks about; with --subject given, the request is
/// taken as authenticated (as if its token had passed), otherwise as carrying none.
#[derive(clap::Args)]
struct IdentityArgs {
    /// The token's subject (as the issuer's subject_claim names it).
    #[arg(long)]
    subject: Option<String>,
    /// The token's groups, comma-separated.
    #[arg(long, requires = "subject", value_delimiter = ',')]
    groups: Vec<String>,
    /// The token's issuer, as configured in identity.issuers[].issuer.
    #[arg(long, requires = "subject")]
    issuer: Option<String>,
    /// Other claims of the token's payload, as a JSON object (for `identity.claims`).
    #[arg(long, requires = "subject", value_parser = claims_arg)]
    claims: Option<serde_json::Map<String, serde_json::Value>>,
}

fn claims_arg(s: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    serde_json::from_str(s).map_err(|e| format!("--claims must be a JSON object: {e}"))
}

impl IdentityArgs {
    fn principal(self) -> Option<sluice::identity::Principal> {
        Some(sluice::identity::Principal {
            issuer: self.issuer.unwrap_or_default().into(),
            subject: self.subject?,
            groups: self.groups,
            claims: std::sync::Arc::new(serde_json::Value::Object(self.claims.unwrap_or_default())),
        })
    }
}

/// The calling workload `policy explain` asks about; with any of these given, workload
/// matchers apply.
#[derive(clap::Args)]
struct WorkloadArgs {
    #[arg(long)]
    uid: Option<u32>,
    #[arg(long)]
    comm: Option<String>,
    #[arg(long)]
    exe: Option<String>,
    /// The uid's user name on the host.
    #[arg(long)]
    user: Option<String>,
    /// The workload's cgroup v2 path; its systemd unit, container and pod are read from it
    /// as the agent reads them.
    #[arg(long)]
    cgroup: Option<String>,
    /// The full 64-digit container id (replaces the one --cgroup names).
    #[arg(long, value_parser = sluice::policy::container::parse_full_container_id)]
    container_id: Option<String>,
    /// docker, podman, containerd or cri-o.
    #[arg(long, requires = "container_id", value_parser = serde_arg::<sluice::workload::Runtime>)]
    container_runtime: Option<sluice::workload::Runtime>,
    /// The Kubernetes pod uid, with dashes (replaces the one --cgroup names).
    #[arg(long, value_parser = sluice::policy::container::parse_pod_uid)]
    pod_uid: Option<String>,
}

impl WorkloadArgs {
    fn workload(self) -> Option<sluice::workload::Workload> {
        let described = self.uid.is_some()
            || self.comm.is_some()
            || self.exe.is_some()
            || self.user.is_some()
            || self.cgroup.is_some()
            || self.container_id.is_some()
            || self.pod_uid.is_some();
        if !described {
            return None;
        }
        let container = self.container_id.map(|id| sluice::workload::Container {
            id,
            runtime: self.container_runtime,
        });
        Some(
            sluice::workload::Workload::described(
                self.uid.unwrap_or(0),
                0,
                self.comm.unwrap_or_default(),
                self.exe,
            )
            .named(self.user)
            .placed(self.cgroup.as_deref(), container, self.pod_uid),
        )
    }
}

/// Parses a CLI value with the type's serde names, so the CLI spells values as policy
/// files do.
fn serde_arg<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sluice::logging::init(cli.log_format);
    match cli.command {
        Command::Run { config } => {
            let cfg = match load(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            // Per-core: connections get threads of their own (app::run); this runtime only
            // runs the control plane (admin, reloads, DNS, metrics, the record writer).
            let mut builder =
                if cfg.worker_threads == 1 || cfg.runtime == sluice::config::Runtime::PerCore {
                    tokio::runtime::Builder::new_current_thread()
                } else {
                    let mut b = tokio::runtime::Builder::new_multi_thread();
                    if cfg.worker_threads > 1 {
                        b.worker_threads(cfg.worker_threads);
                    }
                    b
                };
            let rt = match builder.enable_all().build() {
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
                Err(e) if e.downcast_ref::<sluice::policy::Error>().is_some() => {
                    eprintln!("sluice: {}", chain(&e));
                    ExitCode::from(2)
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
        Command::Doctor { config, ready } => {
            let cfg = match load(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if ready {
                let checks = doctor::ready(&cfg);
                for c in &checks {
                    println!("{c}");
                }
                return if doctor::failures(&checks).is_empty() {
                    println!("ready");
                    ExitCode::SUCCESS
                } else {
                    println!("not ready");
                    ExitCode::from(3)
                };
            }
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
                    intercept::remove_pin_dir(&cfg.pin_dir);
                    println!("detached {n} pinned link(s) from {}", cfg.pin_dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluice: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Policy { command } => policy_command(command),
        Command::Audit { command } => sluice::audit::cli::run(command, &load),
        Command::Approvals { command } => approvals_command(command),
        Command::CheckConfig { config } => match load(Some(config)) {
            Ok(cfg) => {
                if let Err(e) = sluice::policy::load_paths(&cfg.policies) {
                    eprintln!("sluice: {e}");
                    return ExitCode::from(2);
                }
                // TLS files are read as `run` reads them: a bad one fails here too.
                if let Err(e) = sluice::upstream::Upstreams::new(&cfg) {
                    eprintln!("sluice: {e}");
                    return ExitCode::from(2);
                }
                for t in &cfg.targets {
                    let up: Vec<String> = t.upstream.iter().map(ToString::to_string).collect();
                    let up = if up.is_empty() {
                        "(dialled address)".to_string()
                    } else {
                        up.join(", ")
                    };
                    let proto = match t.protocol {
                        sluice::config::Protocol::Tcp => "tcp".to_string(),
                        sluice::config::Protocol::Http => format!("http/{}", t.server),
                    };
                    let proto = if t.tls.is_some() {
                        format!("{proto}+tls")
                    } else {
                        proto
                    };
                    println!(
                        "{:<24} {:<28} {:<16} -> {up}",
                        t.name,
                        t.matches.to_string(),
                        proto
                    );
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
    }
}

fn policy_command(cmd: PolicyCommand) -> ExitCode {
    use sluice::policy::{self, Query};
    let load = |paths: &[PathBuf]| {
        policy::load_paths(paths).map_err(|e| {
            eprintln!("sluice: {e}");
            ExitCode::from(2)
        })
    };
    match cmd {
        PolicyCommand::Grants {
            paths,
            config,
            identity,
            json,
        } => {
            let (paths, defaults) = match &config {
                None => (paths, Vec::new()),
                Some(file) => match Config::load(file) {
                    Ok(cfg) => {
                        let defaults: Vec<(String, sluice::policy::Action)> = cfg
                            .targets
                            .iter()
                            .filter(|t| t.protocol == sluice::config::Protocol::Http)
                            .map(|t| (t.name.clone(), t.default))
                            .collect();
                        (cfg.policies.clone(), defaults)
                    }
                    Err(e) => {
                        eprintln!("sluice: {e}");
                        return ExitCode::from(2);
                    }
                },
            };
            let p = match load(&paths) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let principal = identity.principal();
            grants(&p, principal.as_ref(), &defaults, json);
            ExitCode::SUCCESS
        }
        PolicyCommand::Check { paths } => {
            let p = match load(&paths) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let cases = match policy::cases::check_all(&paths) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sluice: {e}");
                    return ExitCode::from(2);
                }
            };
            for e in &cases.errors {
                eprintln!("sluice: {e}");
            }
            if !cases.errors.is_empty() {
                eprintln!(
                    "sluice: {} of {} case file(s) broken",
                    cases.errors.len(),
                    cases.files
                );
                return ExitCode::from(2);
            }
            println!(
                "ok: {} rule(s), {} masking rule(s), {} custom detector(s) in pack(s) {}; {} case file(s)",
                p.rule_count(),
                p.masking.rules.len(),
                p.masking.custom_count(),
                p.packs.join(", "),
                cases.files
            );
            ExitCode::SUCCESS
        }
        PolicyCommand::Test { paths } => {
            let outcomes = match policy::cases::run_all(&paths) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("sluice: {e}");
                    return ExitCode::from(2);
                }
            };
            if outcomes.is_empty() {
                eprintln!("sluice: no test cases found (expected <pack>/cases/*.yaml)");
                return ExitCode::from(1);
            }
            let mut failed = 0;
            for o in &outcomes {
                match &o.failure {
                    None => println!("ok    {} — {}", o.file.display(), o.description),
                    Some(msg) => {
                        failed += 1;
                        println!(
                            "FAIL  {} — {}\n      {msg}",
                            o.file.display(),
                            o.description
                        );
                    }
                }
            }
            println!(
                "policy cases: {} passed, {failed} failed",
                outcomes.len() - failed
            );
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        PolicyCommand::Explain {
            paths,
            config,
            method,
            path,
            body,
            server,
            target,
            default,
            switch,
            workload,
            identity,
        } => {
            let (paths, server, default) = match &config {
                None => (paths, server, default),
                Some(file) => {
                    let cfg = match Config::load(file) {
                        Ok(c) => c,
                        Err(e) => {
                            eprintln!("sluice: {e}");
                            return ExitCode::from(2);
                        }
                    };
                    let Some(t) = cfg.targets.iter().find(|t| t.name == target) else {
                        let names: Vec<&str> =
                            cfg.targets.iter().map(|t| t.name.as_str()).collect();
                        eprintln!(
                            "sluice: {} has no target {target:?}; targets: {}",
                            file.display(),
                            names.join(", ")
                        );
                        return ExitCode::from(2);
                    };
                    (cfg.policies.clone(), t.server, t.default)
                }
            };
            let p = match load(&paths) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let workload = workload.workload();
            let principal = identity.principal();
            let method = method.to_ascii_uppercase();
            // Read as a live request is read (decoded path, body parsed as the server
            // parses it): what the pipeline would refuse before policy is said so.
            let (decoded, body) = match sluice::pipeline::decode::sample(
                server,
                &method,
                &path,
                body.as_deref().map(str::as_bytes),
                &p.body_roots,
            ) {
                Ok(read) => read,
                Err(r) => {
                    println!("request:   {method} {path} on {target} ({server})");
                    println!(
                        "decision:  refused before policy — {} {}: {}",
                        r.status.as_u16(),
                        r.code,
                        r.message
                    );
                    return ExitCode::SUCCESS;
                }
            };
            let q = Query {
                target: &target,
                server,
                method: &method,
                path: &decoded,
                body: body.as_ref(),
                default,
                workload: workload.as_ref(),
                identity: principal.as_ref(),
                switch,
            };
            let (op, d) = p.decide(&q);
            let masking = p.masking.for_query(&q, &op);
            println!("request:   {method} {path} on {target} ({server})");
            match &principal {
                Some(p) => println!(
                    "identity:  subject {}, groups [{}], issuer {}",
                    p.subject,
                    p.groups.join(", "),
                    if p.issuer.is_empty() { "-" } else { &p.issuer }
                ),
                None => println!("identity:  no token (unauthenticated)"),
            }
            if let Some(w) = &workload {
                println!(
                    "workload:  cgroup {}, container {}, pod {}",
                    w.cgroup.as_deref().unwrap_or("-"),
                    w.container
                        .as_ref()
                        .map_or("-".to_string(), |c| match c.runtime {
                            Some(r) => format!("{} ({r})", c.id),
                            None => c.id.clone(),
                        }),
                    w.pod_uid.as_deref().unwrap_or("-")
                );
            }
            println!(
                "operation: {} (route {}, model {}, streaming {})",
                op.class,
                op.route,
                op.model.as_deref().unwrap_or("-"),
                op.streaming
            );
            match d {
                policy::Decision::Permit(p) if p.by_default => {
                    println!("decision:  allow (target default; no rule matched)")
                }
                policy::Decision::Permit(p) => {
                    println!("decision:  allow by {}", p.rules.join(", "))
                }
                policy::Decision::Deny(d) => println!(
                    "decision:  deny by {} — {}",
                    d.rule.as_deref().unwrap_or("target default"),
                    d.reason
                ),
                policy::Decision::Hold(h) => {
                    let a = &h.approval;
                    println!(
                        "decision:  held for approval by {} (rule {}, timeout {}) — {}",
                        a.approvers(),
                        h.rule,
                        humantime::format_duration(a.timeout),
                        h.reason
                    );
                    if let Some(header) = &a.justification_header {
                        println!(
                            "           justification {} in header {header}",
                            if a.justification_required {
                                "required"
                            } else {
                                "optional"
                            }
                        );
                    }
                    if let Some((window, scope)) = a.grant {
                        println!(
                            "           an approval may open a grant window of up to {} for the same {}",
                            humantime::format_duration(window),
                            match scope {
                                policy::approval::GrantScope::Subject => "subject",
                                policy::approval::GrantScope::Workload => "workload",
                            }
                        );
                    }
                }
            }
            explain_masking(&p, &masking);
            ExitCode::SUCCESS
        }
    }
}

/// Prints which masking rules apply and the action per detector in each direction.
fn explain_masking(p: &sluice::policy::Policy, m: &sluice::policy::masking::Applied) {
    use sluice::policy::masking::Applied;
    let Some(sc) = p.masking.scanner() else {
        return;
    };
    if m.rules.is_empty() {
        println!("masking:   no masking rule applies");
        return;
    }
    println!("masking:   by {}", m.rules.join(", "));
    for (dir, actions) in [("request", &m.request), ("response", &m.response)] {
        match actions {
            Some(a) => println!("  {dir}: {}", Applied::describe(a, sc)),
            None => println!("  {dir}: not masked"),
        }
    }
}

/// Prints `policy grants`: who was asked about, each rule that applies, and the targets
/// whose default lets through what no rule covers.
fn grants(
    policy: &sluice::policy::Policy,
    who: Option<&sluice::identity::Principal>,
    defaults: &[(String, sluice::policy::Action)],
    json: bool,
) {
    use sluice::policy::Action;
    let rules = policy.grants(who);
    let open: Vec<&str> = defaults
        .iter()
        .filter(|(_, a)| *a == Action::Allow)
        .map(|(n, _)| n.as_str())
        .collect();
    if json {
        let out = serde_json::json!({
            "identity": who.map(|p| serde_json::json!({
                "issuer": &*p.issuer, "subject": p.subject, "groups": p.groups,
            })),
            "rules": rules,
            "targets_allowing_by_default": open,
        });
        println!("{out}");
        return;
    }
    match who {
        Some(p) => println!(
            "identity:  subject {}, groups [{}], issuer {}",
            p.subject,
            p.groups.join(", "),
            if p.issuer.is_empty() {
                "(any)"
            } else {
                &p.issuer
            }
        ),
        None => println!("identity:  none (requests without a token)"),
    }
    if rules.is_empty() {
        println!("rules:     none apply");
    }
    for g in &rules {
        let action = match (g.action, &g.approvers) {
            (_, Some(_)) => "hold ",
            (Action::Allow, None) => "allow",
            (Action::Deny, None) => "deny ",
        };
        let mut conditions = g.conditions();
        if let Some(a) = &g.approvers {
            conditions.push(format!("approval by {a}"));
        }
        println!(
            "{action}     {} ({}): {}",
            g.rule,
            g.pack,
            if conditions.is_empty() {
                "every request".to_string()
            } else {
                conditions.join("; ")
            }
        );
    }
    println!(
        "           a deny that matches wins over every allow; what no allow covers meets its target's default"
    );
    if !open.is_empty() {
        println!(
            "defaults:  allow on {} (anything no deny rule refuses)",
            open.join(", ")
        );
    }
}

fn approvals_command(cmd: ApprovalsCommand) -> ExitCode {
    use sluice::approval::socket::{Command as Cmd, request};
    let (at, cmd, json) = match cmd {
        ApprovalsCommand::List { at, json } => (at, Cmd::List, json),
        ApprovalsCommand::Approve { id, window, at } => (
            at,
            Cmd::Approve {
                id,
                for_secs: window.map(|w| w.as_secs().max(1)),
            },
            false,
        ),
        ApprovalsCommand::Deny { id, reason, at } => (at, Cmd::Deny { id, reason }, false),
    };
    let socket = match at.socket {
        Some(s) => s,
        None => {
            let cfg = match load(at.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match cfg.approvals.socket {
                Some(s) if !nix::unistd::geteuid().is_root() => s,
                _ => cfg.admin_socket,
            }
        }
    };
    let rt = match cli_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let answer = match rt.block_on(request(&socket, &cmd)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(4);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
    }
    if let Some(e) = &answer.error {
        eprintln!("sluice: {e}");
        return ExitCode::from(1);
    }
    if json {
        return ExitCode::SUCCESS;
    }
    if let Some(l) = &answer.listing {
        print_approvals(l);
    }
    if let Some(d) = &answer.decided {
        use sluice::approval::store::Decided;
        let id = answer.approval.as_ref().map_or("", |a| a.id.as_str());
        let by = answer.approver.as_deref().unwrap_or("?");
        match d {
            Decided::Approved { grant_secs: None } => println!("approved {id} as {by}"),
            Decided::Approved {
                grant_secs: Some(s),
            } => println!("approved {id} as {by}; grant window open for {s}s"),
            Decided::Partial { missing } => println!(
                "approval {id} recorded as {by}; still needs {}",
                missing.join(", ")
            ),
            Decided::Denied => println!("denied {id} as {by}"),
        }
    }
    ExitCode::SUCCESS
}

fn print_approvals(l: &sluice::approval::Listing) {
    let now = sluice::approval::store::unix_ms();
    if l.pending.is_empty() {
        println!("no requests are waiting for approval");
    }
    for (title, list) in [("pending", &l.pending), ("recent", &l.recent)] {
        if list.is_empty() {
            continue;
        }
        println!("{title}:");
        for i in list {
            let r = &i.requester;
            let age = now.saturating_sub(i.created_unix_ms) / 1000;
            println!(
                "{}  {}  rule {}  {}s ago, timeout {}s",
                i.id,
                i.state.as_str(),
                i.rule,
                age,
                i.timeout_secs
            );
            println!(
                "  requester: {} (uid {}, {}){}",
                r.user.as_deref().unwrap_or("-"),
                r.uid,
                r.comm,
                r.subject
                    .as_ref()
                    .map_or(String::new(), |s| format!(", subject {s}"))
            );
            println!(
                "  request:   {} {} {} ({}, model {})",
                i.target,
                i.method,
                i.path,
                i.operation,
                i.model.as_deref().unwrap_or("-")
            );
            println!("  reason:    {}", i.reason);
            println!("  justified: {}", i.justification.as_deref().unwrap_or("-"));
            println!("  approvers: {}", i.approvers);
            println!("  excerpt:   {}", i.excerpt);
            if !i.decided_by.is_empty() {
                println!("  decided:   {}", i.decided_by.join(", "));
            }
            if let Some(why) = &i.deny_reason {
                println!("  denied:    {why}");
            }
            let w = &i.webhook;
            match &w.last_error {
                Some(e) => println!(
                    "  webhook:   {} after {} attempt(s): {e}",
                    w.state, w.attempts
                ),
                None => println!("  webhook:   {} ({} attempt(s))", w.state, w.attempts),
            }
            if i.state == sluice::approval::State::Pending {
                println!(
                    "  decide:    sluice approvals approve {id} | sluice approvals deny {id} --reason \"...\"",
                    id = i.id
                );
            }
        }
    }
    for g in &l.grants {
        println!(
            "grant window: rule {} for {}, {}s left",
            g.rule, g.scope, g.secs_left
        );
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

/// The one-thread runtime a CLI command talks to the agent's sockets on.
fn cli_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("sluice: {e}");
            ExitCode::from(1)
        })
}

fn connections(cfg: &Config, json: bool) -> ExitCode {
    let rt = match cli_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
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
    // The container by the short id `docker ps` shows; the full id, its runtime and the
    // cgroup path are in --json.
    println!(
        "{:<6} {:<18} {:<7} {:<8} {:<6} {:<16} {:<24} {:<24} {:<12} {:<36} EXE",
        "ID",
        "TARGET",
        "PATH",
        "PID",
        "UID",
        "COMM",
        "ORIGINAL DST",
        "UPSTREAM",
        "CONTAINER",
        "POD"
    );
    for c in &status.connections {
        let w = &c.workload;
        println!(
            "{:<6} {:<18} {:<7} {:<8} {:<6} {:<16} {:<24} {:<24} {:<12} {:<36} {}",
            c.id,
            c.target,
            c.path.map_or("-".to_string(), |p| p.to_string()),
            w.tgid,
            w.uid,
            w.comm,
            c.original_dst.to_string(),
            c.upstream.map_or("-".to_string(), |u| u.to_string()),
            w.container.as_ref().map_or("-", |k| k.short_id()),
            w.pod_uid.as_deref().unwrap_or("-"),
            w.exe.as_deref().unwrap_or("?")
        );
    }
    let k = |i: usize| status.kernel.get(i).copied().unwrap_or(0);
    if status.http_allowed + status.http_denied + status.http_refused + status.http_cancelled > 0 {
        println!(
            "\nHTTP requests: {} allowed, {} denied by policy, {} refused before policy, {} cancelled by the client",
            status.http_allowed, status.http_denied, status.http_refused, status.http_cancelled
        );
    }
    if status.records_dropped + status.connections_over_limit > 0 {
        println!(
            "{} request records dropped (writer behind), {} connections refused over a connection cap",
            status.records_dropped, status.connections_over_limit
        );
    }
    println!(
        "\n{} live, {} accepted, {} refused (not redirected), {} upstream failures; kernel: {} redirected, {} metadata failures",
        status.connections.len(),
        status.accepted_total,
        status.refused_unattributed,
        status.upstream_failures,
        k(0),
        k(1) + k(2)
    );
    println!("{}", status.target_map_line());
    if let Some(r) = &status.kernel_relay {
        println!(
            "kernel L4 relay: {} of {} connections; {} spliced because they did not fit",
            r.in_use, r.capacity, r.fallbacks
        );
    }
    let n = &status.netns;
    println!(
        "network namespaces: {} served of {} allowed, {} not served because of the limit; kernel: {} refused, {} let through while their namespace was being prepared",
        n.served,
        n.max_namespaces,
        n.refused_over_max,
        k(7),
        k(8)
    );
    ExitCode::SUCCESS
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
