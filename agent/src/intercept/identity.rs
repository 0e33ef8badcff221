//! The agent's own process id as the hooks see it, so that only the agent's sockets may
//! carry the bypass mark past interception.
//!
//! The hooks compare `bpf_get_current_pid_tgid() >> 32`, which is the process id in the
//! *initial* pid namespace, whatever namespace the caller runs in. An agent in the host's pid
//! namespace knows that number from getpid(). An agent in a child pid namespace (a container
//! without `hostPID`/`--pid=host`) does not, unless it sees a procfs of the host's pid
//! namespace, where /proc/self/status lists its host pid first in `NSpid`. Any other case is
//! refused at start: guessing would either let nobody bypass (the agent would intercept its own
//! upstream connections) or the wrong process.
use std::fs;

/// Inode of the initial pid namespace (`PROC_PID_INIT_INO` in the kernel; fixed since 3.8).
const INIT_PID_NS: &str = "pid:[4026531836]";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: &'static str,
        source: std::io::Error,
    },
    #[error(
        "the agent runs in a child pid namespace ({ns}) and this procfs does not show its host pid; run it in the host's pid namespace (docker --pid=host, Kubernetes hostPID: true) so the hooks can tell its own sockets from others"
    )]
    ChildNamespace { ns: String },
}

/// The agent's tgid in the initial pid namespace.
pub fn agent_tgid() -> Result<u32, Error> {
    let own_ns = ns_link("/proc/self/ns/pid")?;
    let status = fs::read_to_string("/proc/self/status").map_err(|source| Error::Read {
        path: "/proc/self/status",
        source,
    })?;
    let procfs_is_host = ns_link("/proc/1/ns/pid").is_ok_and(|ns| ns == INIT_PID_NS);
    decide(
        &own_ns,
        procfs_is_host,
        std::process::id(),
        nspid_first(&status),
    )
    .ok_or(Error::ChildNamespace { ns: own_ns })
}

fn ns_link(path: &'static str) -> Result<String, Error> {
    fs::read_link(path)
        .map(|p| p.display().to_string())
        .map_err(|source| Error::Read { path, source })
}

/// The first (outermost visible) pid of `NSpid:` in /proc/self/status.
fn nspid_first(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
}

/// getpid() in the initial namespace; otherwise NSpid's first entry, valid only when this
/// procfs belongs to the initial namespace (its pid 1 is the host's init).
fn decide(own_ns: &str, procfs_is_host: bool, getpid: u32, nspid: Option<u32>) -> Option<u32> {
    if own_ns == INIT_PID_NS {
        Some(getpid)
    } else if procfs_is_host {
        nspid
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_namespace_uses_getpid_and_containers_need_the_host_procfs() {
        assert_eq!(decide(INIT_PID_NS, true, 42, Some(42)), Some(42));
        assert_eq!(
            decide("pid:[4026532001]", true, 7, Some(31337)),
            Some(31337)
        );
        assert_eq!(decide("pid:[4026532001]", false, 7, Some(7)), None);
        assert_eq!(
            nspid_first("Name:\tx\nNSpid:\t31337\t7\nNSsid:\t1\n"),
            Some(31337)
        );
        assert_eq!(nspid_first("Name:\tx\n"), None);
    }

    #[test]
    fn in_the_host_namespace_the_tgid_is_getpid() {
        let ns = ns_link("/proc/self/ns/pid").expect("own pid namespace");
        match agent_tgid() {
            Ok(tgid) if ns == INIT_PID_NS => assert_eq!(tgid, std::process::id()),
            Ok(tgid) => assert_ne!(tgid, 0),
            Err(e) => assert!(matches!(e, Error::ChildNamespace { .. }), "{e}"),
        }
    }
}
