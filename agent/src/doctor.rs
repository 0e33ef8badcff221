//! `sluice doctor` and the preflight of `sluice run`: what the host must offer, checked one
//! by one, each failure explained with what to do about it.
use std::{fmt, path::Path};

use crate::{
    config::{Config, HostSpec, static_entry_count},
    intercept,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        write!(f, "[{tag}] {:<16} {}", self.name, self.detail)
    }
}

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Kernel with bpf_link for cgroup programs (needed for pinning links).
const MIN_KERNEL: (u32, u32) = (5, 7);

fn check(name: &'static str, level: Level, detail: impl Into<String>) -> Check {
    Check {
        name,
        level,
        detail: detail.into(),
    }
}

/// Checks that decide whether `sluice run` can work at all.
pub fn preflight(cfg: &Config) -> Vec<Check> {
    vec![privileges(), kernel(), cgroup(cfg), pid_namespace()]
}

/// Everything `sluice doctor` reports; `probe_load` also loads the programs (no attach).
pub fn full(cfg: &Config, probe_load: bool) -> Vec<Check> {
    let mut v = preflight(cfg);
    v.push(btf());
    v.push(bpffs());
    if probe_load {
        v.push(programs_load(v[0].level == Level::Ok));
    }
    v.push(pins(cfg));
    v.push(target_map(cfg));
    if let Some(c) = running_target_map(cfg) {
        v.push(c);
    }
    v
}

pub fn failures(checks: &[Check]) -> Vec<&Check> {
    checks.iter().filter(|c| c.level == Level::Fail).collect()
}

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

fn privileges() -> Check {
    let Some(caps) = effective_caps() else {
        return check(
            "privileges",
            Level::Fail,
            "cannot read CapEff from /proc/self/status",
        );
    };
    let has = |c: u32| caps & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    // Without it the verifier treats the programs as unprivileged and refuses their stack
    // pointer arithmetic ("pointer arithmetic ... prohibited for !root"): measured.
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if !missing.is_empty() {
        return check(
            "privileges",
            Level::Fail,
            format!(
                "missing {}: run as root (sudo) or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (CAP_SYS_ADMIN on kernels before 5.8); loading and attaching cgroup eBPF programs and marking upstream sockets need them",
                missing.join(", ")
            ),
        );
    }
    let who = if nix::unistd::geteuid().is_root() {
        "root"
    } else {
        "capabilities"
    };
    // Interception of the host namespace works without these; what they give is identity
    // and containers.
    let mut lacking = Vec::new();
    if !has(CAP_SYS_PTRACE) {
        lacking.push(
            "no CAP_SYS_PTRACE: the executable of a caller of another user, or with capabilities this agent lacks, is unknown (`?`), and policy `exes` matchers never match it",
        );
    }
    if !has(CAP_SYS_ADMIN) {
        lacking.push(
            "no CAP_SYS_ADMIN: clients in their own network namespace (containers, pods) are not served (setns into their namespace needs it): refused under fail_mode closed, direct under open",
        );
    }
    if !has(CAP_DAC_READ_SEARCH) {
        lacking.push(
            "no CAP_DAC_READ_SEARCH: connections carry no cgroup path, container or pod (the agent looks cgroups up by id with open_by_handle_at), and policy rules selecting on them never match",
        );
    }
    if lacking.is_empty() {
        check(
            "privileges",
            Level::Ok,
            format!(
                "{who}: CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH and CAP_SYS_ADMIN present"
            ),
        )
    } else {
        check(
            "privileges",
            Level::Warn,
            format!("{who}: {}", lacking.join("; ")),
        )
    }
}

fn kernel() -> Check {
    let uts = nix::sys::utsname::uname();
    let release = match uts {
        Ok(u) => u.release().to_string_lossy().into_owned(),
        Err(e) => return check("kernel", Level::Fail, format!("uname failed: {e}")),
    };
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let major: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    if (major, minor) >= MIN_KERNEL {
        check("kernel", Level::Ok, release)
    } else {
        check(
            "kernel",
            Level::Fail,
            format!(
                "{release} is older than {}.{}: cgroup bpf_link (needed to pin and replace programs safely) is missing",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
        )
    }
}

/// The hooks let only the agent's own process bypass them, by its pid in the host's pid
/// namespace: the agent must be able to learn it.
fn pid_namespace() -> Check {
    match intercept::identity::agent_tgid() {
        Ok(tgid) => check(
            "pid namespace",
            Level::Ok,
            format!("host pid {tgid}: the hooks can tell this agent's sockets from others"),
        ),
        Err(e) => check("pid namespace", Level::Fail, e.to_string()),
    }
}

fn btf() -> Check {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        check("btf", Level::Ok, "/sys/kernel/btf/vmlinux present")
    } else {
        check(
            "btf",
            Level::Warn,
            "no /sys/kernel/btf/vmlinux: Sluice's programs do not need it today, but kernels without BTF are untested",
        )
    }
}

fn cgroup(cfg: &Config) -> Check {
    match intercept::cgroup::resolve(&cfg.cgroup) {
        Ok(dir) => check(
            "cgroup v2",
            Level::Ok,
            format!("attach point {}", dir.display()),
        ),
        Err(e) => check("cgroup v2", Level::Fail, e.to_string()),
    }
}

fn bpffs() -> Check {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    match intercept::cgroup::find_mount(&mounts, "bpf") {
        Some(p) => check("bpffs", Level::Ok, format!("mounted at {}", p.display())),
        None => check(
            "bpffs",
            Level::Warn,
            "not mounted; `sluice run` mounts it at /sys/fs/bpf (needs CAP_SYS_ADMIN)",
        ),
    }
}

fn programs_load(privileged: bool) -> Check {
    if !privileged {
        return check(
            "programs",
            Level::Warn,
            "not tried: needs the privileges above",
        );
    }
    match intercept::probe_load() {
        Ok(()) => check(
            "programs",
            Level::Ok,
            "connect4, connect6 and sock_ops load and pass the verifier",
        ),
        Err(e) => check("programs", Level::Fail, e.to_string()),
    }
}

fn pins(cfg: &Config) -> Check {
    let pinned = intercept::pinned_links(&cfg.pin_dir);
    if pinned.is_empty() {
        check(
            "pinned links",
            Level::Ok,
            format!("none in {}", cfg.pin_dir.display()),
        )
    } else {
        check(
            "pinned links",
            Level::Ok,
            format!(
                "{} in {} (an agent is running, or stopped with fail_mode closed; `sluice detach` removes them)",
                pinned.len(),
                cfg.pin_dir.display()
            ),
        )
    }
}

/// Whether the config's targets fit the kernel's target map: its own networks, plus one entry
/// per port of each `local` target for every interface address this host has now.
fn target_map(cfg: &Config) -> Check {
    let capacity = agent_common::MAX_TARGETS as usize;
    let fixed = static_entry_count(cfg.targets.iter().map(|t| &t.matches));
    let local_ports: usize = cfg
        .targets
        .iter()
        .filter(|t| t.matches.host == HostSpec::Local)
        .map(|t| t.matches.ports.len())
        .sum();
    let (local, local_note) = if local_ports == 0 {
        (0, String::new())
    } else {
        match intercept::local::interface_addresses() {
            Ok(a) => (
                a.len() * local_ports,
                format!(
                    " + {} interface address(es) x {local_ports} local port(s)",
                    a.len()
                ),
            ),
            Err(e) => {
                return check(
                    "target map",
                    Level::Fail,
                    format!("cannot read this host's addresses for local targets: {e}"),
                );
            }
        }
    };
    let named = cfg
        .targets
        .iter()
        .filter(|t| matches!(t.matches.host, HostSpec::Name(_)))
        .count();
    let named_note = if named > 0 {
        format!(
            "; {named} hostname target(s) add one entry per port for each address they resolve to"
        )
    } else {
        String::new()
    };
    let total = fixed + local;
    let detail =
        format!("{total} of {capacity} entries ({fixed} from the config{local_note}){named_note}");
    let level = if total > capacity {
        Level::Fail
    } else if total * 10 > capacity * 9 {
        Level::Warn
    } else {
        Level::Ok
    };
    check("target map", level, detail)
}

/// What a readiness probe asks (`sluice doctor --ready`): does an agent with this config
/// answer on its admin socket, and are its programs still attached? Cheap enough to run every
/// few seconds: one admin query and a look at the pin directory, no program load.
pub fn ready(cfg: &Config) -> Vec<Check> {
    let agent = match query_status(cfg) {
        Ok(status) => running_agent(&status),
        Err(why) => check("running agent", Level::Fail, why),
    };
    let pinned = intercept::pinned_links(&cfg.pin_dir).len();
    // The admin socket is served only once the programs are attached, so an answering agent
    // with no pinned link was detached behind its back (`sluice detach`, a cleared bpffs).
    let links = if pinned == 0 {
        check(
            "pinned links",
            Level::Fail,
            format!(
                "none in {}: nothing is intercepted; restart the agent",
                cfg.pin_dir.display()
            ),
        )
    } else {
        check(
            "pinned links",
            Level::Ok,
            format!("{pinned} in {}", cfg.pin_dir.display()),
        )
    };
    vec![agent, links]
}

/// The status of the agent answering on the config's admin socket, within 2 s.
fn query_status(cfg: &Config) -> Result<crate::admin::Status, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime to ask the agent: {e}"))?;
    rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            crate::admin::query(&cfg.admin_socket),
        )
        .await
    })
    .map_err(|_| {
        format!(
            "admin socket {}: no answer within 2 s",
            cfg.admin_socket.display()
        )
    })?
    .map_err(|e| e.to_string())
}

/// The running agent's view of its target map, when one answers on the admin socket: a
/// refused update means interception is narrower than configured.
fn running_target_map(cfg: &Config) -> Option<Check> {
    query_status(cfg).ok().map(|s| running_agent(&s))
}

fn running_agent(status: &crate::admin::Status) -> Check {
    let m = &status.target_map;
    if m.refused_updates > 0 {
        check(
            "running agent",
            Level::Warn,
            format!(
                "target map {} of {}; {} update(s) REFUSED, the last: {}",
                m.entries,
                m.capacity,
                m.refused_updates,
                m.last_refused.as_deref().unwrap_or("?")
            ),
        )
    } else {
        check(
            "running agent",
            Level::Ok,
            format!(
                "version {}, fail_mode {}, target map {} of {} entries",
                status.version, status.fail_mode, m.entries, m.capacity
            ),
        )
    }
}
