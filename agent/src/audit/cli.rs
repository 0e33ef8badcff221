//! `sluice audit …`: reads the store's directory directly (root-only files); the agent need
//! not run.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::{Filter, Listed, Settings, entry::Kind, key};
use crate::config::Config;

#[derive(clap::Args)]
pub struct StoreArgs {
    /// The agent's configuration (its `audit:` section names the store); default: the
    /// built-in configuration.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The store's directory (instead of the configuration's `audit.dir`).
    #[arg(long)]
    dir: Option<PathBuf>,
}

// Parsed once per command run: the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
/// The filters of `list` and `export`; every one given must match.
#[derive(clap::Args)]
pub struct FilterArgs {
    /// RFC 3339 time (2026-01-02T03:04:05Z) or a duration ago (15m, 2h, 7d).
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    until: Option<String>,
    /// The token's subject.
    #[arg(long)]
    subject: Option<String>,
    /// One of the token's groups.
    #[arg(long)]
    group: Option<String>,
    /// The process name, executable path or container id.
    #[arg(long)]
    workload: Option<String>,
    /// The systemd unit.
    #[arg(long)]
    unit: Option<String>,
    /// The user name.
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    target: Option<String>,
    #[arg(long)]
    model: Option<String>,
    /// allow, deny, hold, refuse or cancelled.
    #[arg(long)]
    decision: Option<String>,
    /// A policy rule id among those that decided.
    #[arg(long)]
    rule: Option<String>,
}

impl FilterArgs {
    /// The store's filter; an error names a time it cannot read.
    fn filter(self) -> Result<Filter, String> {
        let time = |t: Option<String>| t.map(|t| when(&t)).transpose();
        Ok(Filter {
            since_ms: time(self.since)?,
            until_ms: time(self.until)?,
            id: None,
            subject: self.subject,
            group: self.group,
            workload: self.workload,
            unit: self.unit,
            user: self.user,
            target: self.target,
            model: self.model,
            decision: self.decision,
            rule: self.rule,
        })
    }
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Requests recorded, oldest first; every filter given must match.
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// Only the newest N.
        #[arg(long)]
        limit: Option<usize>,
        /// One JSON object per line (the stored records).
        #[arg(long)]
        json: bool,
    },
    /// Every record of one request (its opening and final records), as JSON.
    Show {
        id: u64,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// One request's exchange as recorded: its request, then its response, streamed output
    /// re-emitted at its recorded pace; or (`--to`) its request sent again to a server.
    Replay {
        id: u64,
        #[command(flatten)]
        store: StoreArgs,
        /// Pace: 2 replays twice as fast as recorded; 0 does not wait at all.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Send the recorded request (method, path, headers without credentials, the
        /// recorded body, after masking) to this http://host:port[/prefix] and print its
        /// response instead.
        #[arg(long)]
        to: Option<String>,
    },
    /// Every request record and body entry, oldest first, one JSON object per line (for a
    /// log shipper); the filters are `list`'s.
    Export {
        #[command(flatten)]
        store: StoreArgs,
        /// Only jsonl.
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// Keep running and print records as they are written (like tail -f), across
        /// segment rotation and retention.
        #[arg(long)]
        follow: bool,
        /// How often --follow looks for new records, in milliseconds.
        #[arg(long, default_value_t = 200)]
        poll_ms: u64,
        /// Only records after this sequence number (each line's record.seq): resumes an
        /// export where an earlier one stopped.
        #[arg(long, default_value_t = 0)]
        after_seq: u64,
        /// Leave body entries (`level: full`) out.
        #[arg(long)]
        no_bodies: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Checks the whole store; exit 1 with where, when anything was edited, deleted,
    /// reordered, truncated, swapped or signed by an untrusted key.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// The trusted public key (as `sluice audit pubkey` printed it, kept off this host).
        /// Without it the store's own key is trusted, which proves less.
        #[arg(long)]
        pubkey: Option<PathBuf>,
    },
    /// Prints the public key that verifies the store's checkpoints.
    Pubkey {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Makes a new signing key; the agent switches to it at its next checkpoint or start,
    /// with a checkpoint that links the two keys.
    RotateKey {
        #[command(flatten)]
        store: StoreArgs,
    },
}

fn settings(
    a: &StoreArgs,
    load: &dyn Fn(Option<PathBuf>) -> Result<Config, ExitCode>,
) -> Result<Settings, ExitCode> {
    let mut s = if a.config.is_some() || a.dir.is_none() {
        load(a.config.clone())?.audit
    } else {
        Settings::default()
    };
    if let Some(d) = &a.dir {
        s.dir.clone_from(d);
    }
    Ok(s)
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("sluice: {e}");
    ExitCode::from(1)
}

/// A time as RFC 3339 or as a duration before now, in ms since the epoch.
fn when(s: &str) -> Result<u64, String> {
    let t = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let ago = humantime::parse_duration(s)
                .map_err(|_| format!("{s:?}: neither an RFC 3339 time nor a duration"))?;
            SystemTime::now()
                .checked_sub(ago)
                .ok_or_else(|| format!("{s:?}: too long ago"))?
        }
    };
    Ok(t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64))
}

pub fn run(cmd: Command, load: &dyn Fn(Option<PathBuf>) -> Result<Config, ExitCode>) -> ExitCode {
    match cmd {
        Command::List {
            store,
            filter,
            limit,
            json,
        } => {
            let s = match settings(&store, load) {
                Ok(s) => s,
                Err(c) => return c,
            };
            let f = match filter.filter() {
                Ok(f) => f,
                Err(e) => return fail(e),
            };
            match super::list(&s.dir, &f, limit) {
                Ok(found) => {
                    print_list(&found, json);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Show { id, store } => {
            let s = match settings(&store, load) {
                Ok(s) => s,
                Err(c) => return c,
            };
            match super::show(&s.dir, id) {
                Ok(found) if found.is_empty() => {
                    fail(format!("no request {id} in {}", s.dir.display()))
                }
                Ok(found) => {
                    for l in found {
                        println!("{}", shown(&l, true));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Replay {
            id,
            store,
            speed,
            to,
        } => {
            let s = match settings(&store, load) {
                Ok(s) => s,
                Err(c) => return c,
            };
            replay(&s, id, speed, to.as_deref())
        }
        Command::Export {
            store,
            format,
            follow,
            poll_ms,
            after_seq,
            no_bodies,
            filter,
        } => {
            if format != "jsonl" {
                return fail(format!("--format {format}: only jsonl"));
            }
            let s = match settings(&store, load) {
                Ok(s) => s,
                Err(c) => return c,
            };
            let f = match filter.filter() {
                Ok(f) => f,
                Err(e) => return fail(e),
            };
            let ex = super::export::Exporter::new(&s.dir, f, !no_bodies, after_seq);
            export(ex, follow, Duration::from_millis(poll_ms.max(10)))
        }
        Command::Verify { store, pubkey } => {
            let s = match settings(&store, load) {
                Ok(s) => s,
                Err(c) => return c,
            };
            verify(&s, pubkey.as_deref())
        }
        Command::Pubkey { store } => {
            let s = match settings(&store, load) {
                Ok(s) => s,
                Err(c) => return c,
            };
            match key::read(&s.key_path()) {
                Ok(k) => {
                    let public = k.verifying_key();
                    println!("{} {}", key::public_line(&public), key::id(&public));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::RotateKey { store } => {
            let s = match settings(&store, load) {
                Ok(s) => s,
                Err(c) => return c,
            };
            let next = key::next_path(&s.key_path());
            match key::generate(&next) {
                Ok(k) => {
                    let public = k.verifying_key();
                    println!(
                        "new key {} written to {}; the agent switches to it at its next checkpoint or start\n{}",
                        key::id(&public),
                        next.display(),
                        key::public_line(&public)
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
    }
}

fn replay(s: &Settings, id: u64, speed: f64, to: Option<&str>) -> ExitCode {
    let x = match super::exchange(&s.dir, id) {
        Ok(Some(x)) => x,
        Ok(None) => return fail(format!("no request {id} in {}", s.dir.display())),
        Err(e) => return fail(e),
    };
    let mut out = std::io::stdout().lock();
    let done = match to {
        None => super::replay::print(&x, speed, &mut out),
        Some(url) => match url.parse::<http::Uri>() {
            Ok(uri) => super::replay::resend(&x, &uri, &mut out),
            Err(e) => return fail(format!("--to {url}: {e}")),
        },
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that went away (`| head`) is not a failure.
        Err(super::replay::ReplayError::Output(_)) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn export(mut ex: super::export::Exporter, follow: bool, poll: Duration) -> ExitCode {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    loop {
        match ex.step(&mut out) {
            Ok(_) => {}
            Err(super::export::ExportError::Output(_)) => return ExitCode::SUCCESS,
            Err(e) => return fail(e),
        }
        if !follow {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(poll);
    }
}

fn verify(s: &Settings, pubkey: Option<&Path>) -> ExitCode {
    let anchor = match pubkey {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => match key::parse_public(&text) {
                Some(k) => Some(k),
                None => {
                    return fail(format!(
                        "{}: not a public key (ed25519:<64 hex digits>)",
                        p.display()
                    ));
                }
            },
            Err(e) => return fail(format!("{}: {e}", p.display())),
        },
        None => match key::read(&s.key_path()) {
            Ok(k) => {
                println!(
                    "note: no --pubkey: trusting the store's own key {} (whoever can edit the store can replace it; keep the key from `sluice audit pubkey` elsewhere and pass it)",
                    key::id(&k.verifying_key())
                );
                Some(k.verifying_key())
            }
            Err(_) => None,
        },
    };
    match super::verify(&s.dir, anchor) {
        Ok(r) => {
            for n in &r.notes {
                println!("note: {n}");
            }
            for p in &r.problems {
                println!("FAIL: {p}");
            }
            if r.ok() {
                println!(
                    "ok: {} segment(s), records seq {} to {} ({} records), {} signed checkpoint(s) by key(s) {}",
                    r.segments,
                    r.first_seq,
                    r.last_seq,
                    r.records,
                    r.checkpoints,
                    r.keys.join(", ")
                );
                ExitCode::SUCCESS
            } else {
                println!(
                    "the audit store in {} does NOT verify: {} problem(s)",
                    s.dir.display(),
                    r.problems.len()
                );
                ExitCode::from(1)
            }
        }
        Err(e) => fail(e),
    }
}

/// A listed request as one JSON object, with where it is stored.
fn shown(l: &Listed, pretty: bool) -> String {
    let mut v = serde_json::to_value(&l.entry).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "record".into(),
            serde_json::json!({
                "kind": l.kind,
                "seq": l.seq,
                "segment": l.segment,
                "unfinished": l.kind == Kind::Open,
            }),
        );
    }
    if pretty {
        serde_json::to_string_pretty(&v).unwrap_or_default()
    } else {
        v.to_string()
    }
}

fn print_list(found: &[Listed], json: bool) {
    if json {
        for l in found {
            println!("{}", shown(l, false));
        }
        return;
    }
    println!(
        "{:<8} {:<20} {:<16} {:<12} {:<14} {:<16} {:<32} {:<9} {:<20} {:>6}  OUTCOME",
        "ID",
        "TIME",
        "WHO",
        "WORKLOAD",
        "TARGET",
        "MODEL",
        "REQUEST",
        "DECISION",
        "RULES",
        "STATUS"
    );
    for l in found {
        let e = &l.entry;
        let t = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(e.unix_ms));
        let request = format!("{} {}", e.method, e.path);
        println!(
            "{:<8} {:<20} {:<16} {:<12} {:<14} {:<16} {:<32} {:<9} {:<20} {:>6}  {}",
            e.id,
            t.to_string(),
            cut(&e.who(), 16),
            cut(&e.workload.comm, 12),
            cut(&e.target, 14),
            cut(e.model.as_deref().unwrap_or("-"), 16),
            cut(&request, 32),
            e.decision,
            cut(&e.rules.join(","), 20),
            e.status.map_or("-".to_string(), |s| s.to_string()),
            e.outcome
                .as_deref()
                .unwrap_or("unfinished: no final record (the agent stopped)")
        );
    }
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut c: String = s.chars().take(n - 1).collect();
        c.push('…');
        c
    }
}
