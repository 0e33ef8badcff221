//! Who made a connection: the identity the connect hook captured, plus the executable and the
//! cgroup path (with the container and pod it names) read from /proc at accept time.
use std::{io::Read as _, os::unix::fs::MetadataExt as _, path::Path};

use agent_common::ConnMeta;
use serde::{Deserialize, Serialize};

pub mod container;

pub use container::{Container, Runtime};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Workload {
    /// Kernel thread id that called connect().
    pub pid: u32,
    /// Process id (thread group id).
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub comm: String,
    /// `/proc/<tgid>/exe` read at accept time; `None` if the process already exited. A pid
    /// reused in the microseconds between connect and accept would name the wrong binary:
    /// pid, uid and cgroup come from the kernel at connect time and are authoritative.
    pub exe: Option<String>,
    /// The cgroup v2 path (from the root of the cgroup2 mount, as `/proc/<pid>/cgroup` shows
    /// it), read at accept time and kept only if it is still the cgroup the kernel saw at
    /// connect() (`cgroup_id`); `None` when that cannot be told (process gone, moved, or a
    /// path outside the agent's cgroup namespace). Container and pod come from it alone.
    #[serde(default)]
    pub cgroup: Option<String>,
    #[serde(default)]
    pub container: Option<Container>,
    /// Kubernetes pod uid, lower case with dashes.
    #[serde(default)]
    pub pod_uid: Option<String>,
}

/// `/proc/<pid>/cgroup` holds one line per hierarchy, each path at most PATH_MAX: a file
/// larger than this is not one the kernel wrote.
const MAX_PROC_CGROUP: u64 = 64 * 1024;

impl Workload {
    /// A workload described by hand (policy test cases, `sluice policy explain`): the
    /// fields policy can match on, the kernel ids left at 0.
    pub fn described(uid: u32, gid: u32, comm: String, exe: Option<String>) -> Self {
        Workload {
            pid: 0,
            tgid: 0,
            uid,
            gid,
            cgroup_id: 0,
            comm,
            exe,
            cgroup: None,
            container: None,
            pod_uid: None,
        }
    }

    /// Places a described workload in `path`: container and pod as the agent would read
    /// them from that path.
    pub fn in_cgroup(mut self, path: &str) -> Self {
        let id = container::parse(path);
        self.cgroup = Some(path.to_string());
        self.container = id.container;
        self.pod_uid = id.pod_uid;
        self
    }

    /// Places a described workload: container and pod read from `cgroup` as the agent reads
    /// them, each replaced by the one given.
    pub fn placed(
        self,
        cgroup: Option<&str>,
        container: Option<Container>,
        pod_uid: Option<String>,
    ) -> Self {
        let mut w = match cgroup {
            Some(path) => self.in_cgroup(path),
            None => self,
        };
        if container.is_some() {
            w.container = container;
        }
        if pod_uid.is_some() {
            w.pod_uid = pod_uid;
        }
        w
    }

    /// Blocking: reads /proc and stats the cgroup. Called from
    /// `intercept::orig_dst::attribute` on the blocking pool. `cgroup_root` is the cgroup2
    /// mount.
    pub fn from_meta(meta: &ConnMeta, cgroup_root: &Path) -> Self {
        let comm_len = meta
            .comm
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(meta.comm.len());
        let mut w = Workload::described(
            meta.uid,
            meta.gid,
            String::from_utf8_lossy(&meta.comm[..comm_len]).into_owned(),
            std::fs::read_link(format!("/proc/{}/exe", meta.tgid))
                .ok()
                .map(|p| p.display().to_string()),
        );
        w.pid = meta.pid;
        w.tgid = meta.tgid;
        w.cgroup_id = meta.cgroup_id;
        if let Some(path) = read_cgroup(meta.tgid, meta.cgroup_id, cgroup_root) {
            w = w.in_cgroup(&path);
        }
        w
    }
}

/// The process's cgroup v2 path, if it is still the cgroup `cgroup_id` names. The pid may
/// have exited (and been reused) or the process moved since connect(); the cgroup id the
/// kernel recorded then is the cgroup directory's inode number, so comparing the two is what
/// makes the path the connecting process's, not a guess.
fn read_cgroup(tgid: u32, cgroup_id: u64, cgroup_root: &Path) -> Option<String> {
    let mut text = Vec::new();
    std::fs::File::open(format!("/proc/{tgid}/cgroup"))
        .ok()?
        .take(MAX_PROC_CGROUP + 1)
        .read_to_end(&mut text)
        .ok()?;
    if text.len() as u64 > MAX_PROC_CGROUP {
        return None;
    }
    let path = v2_path(std::str::from_utf8(&text).ok()?)?;
    let rel = path.strip_prefix('/')?;
    // `/..` marks a cgroup outside the agent's cgroup namespace: no directory under the
    // mount is it.
    if rel.split('/').any(|c| c == ".." || c == ".") {
        return None;
    }
    let ino = std::fs::metadata(cgroup_root.join(rel)).ok()?.ino();
    (ino == cgroup_id).then(|| path.to_string())
}

/// The unified hierarchy's path: the `0::` line (hybrid hosts list v1 hierarchies too). A
/// cgroup name holding a newline can fake a line; the inode check then refuses it.
fn v2_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unified_line_is_taken() {
        let hybrid =
            "12:pids:/user.slice\n1:name=systemd:/user.slice/x.scope\n0::/user.slice/x.scope\n";
        assert_eq!(v2_path(hybrid), Some("/user.slice/x.scope"));
        assert_eq!(v2_path("0::/\n"), Some("/"));
        assert_eq!(v2_path("1:cpu:/a\n"), None);
        assert_eq!(v2_path(""), None);
    }

    /// This test process: its own cgroup is read and checked against its own directory.
    #[test]
    fn reads_its_own_cgroup_when_the_id_matches() {
        let root = crate::intercept::cgroup::cgroup2_mount().expect("a cgroup2 mount");
        let tgid = std::process::id();
        let text = std::fs::read_to_string(format!("/proc/{tgid}/cgroup")).expect("own cgroup");
        let path = v2_path(&text).expect("a 0:: line").to_string();
        let ino = std::fs::metadata(root.join(path.trim_start_matches('/')))
            .expect("own cgroup directory")
            .ino();
        assert_eq!(read_cgroup(tgid, ino, &root), Some(path));
        assert_eq!(read_cgroup(tgid, ino ^ 1, &root), None, "wrong id");
        assert_eq!(read_cgroup(u32::MAX, ino, &root), None, "no process");
    }

    #[test]
    fn a_described_cgroup_is_read_as_the_agent_reads_it() {
        let id = "ab".repeat(32);
        let w = Workload::described(0, 0, "c".into(), None)
            .in_cgroup(&format!("/system.slice/docker-{id}.scope"));
        assert_eq!(
            w.container,
            Some(Container {
                id,
                runtime: Some(Runtime::Docker)
            })
        );
        assert_eq!(w.pod_uid, None);
    }
}
