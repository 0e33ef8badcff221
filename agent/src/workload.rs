//! Who made a connection: the identity the connect hook captured, plus, at accept time, the
//! executable (from /proc) and the cgroup path with the container and pod it names (from the
//! cgroup id the hook recorded).
use agent_common::ConnMeta;
use serde::{Deserialize, Serialize};

#[allow(unsafe_code)]
pub mod cgroup;
pub mod container;
pub mod names;

pub use cgroup::CgroupRoot;
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
    /// The cgroup v2 path of `cgroup_id` (the cgroup the kernel saw at connect()), from the
    /// root of the cgroup2 mount as `/proc/<pid>/cgroup` shows it; `None` when it cannot be
    /// looked up (the cgroup is gone, or the agent lacks the privilege). Container and pod
    /// come from it alone.
    #[serde(default)]
    pub cgroup: Option<String>,
    #[serde(default)]
    pub container: Option<Container>,
    /// Kubernetes pod uid, lower case with dashes.
    #[serde(default)]
    pub pod_uid: Option<String>,
    /// The user name of `uid` on the host (`names::user`); `None` for a uid with no account.
    #[serde(default)]
    pub user: Option<String>,
    /// The systemd unit the cgroup is in (`names::unit`).
    #[serde(default)]
    pub unit: Option<String>,
}

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
            user: None,
            unit: None,
        }
    }

    /// Names a described workload's user (policy test cases, `sluice policy explain`).
    pub fn named(mut self, user: Option<String>) -> Self {
        self.user = user;
        self
    }

    /// Places a described workload in `path`: container and pod as the agent would read
    /// them from that path.
    pub fn in_cgroup(mut self, path: impl Into<String>) -> Self {
        let path = path.into();
        let id = container::parse(&path);
        self.unit = names::unit(&path);
        self.cgroup = Some(path);
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

    /// Blocking: reads /proc and looks the cgroup up. Called from
    /// `intercept::orig_dst::attribute` on the blocking pool.
    pub fn from_meta(meta: &ConnMeta, cgroups: &CgroupRoot) -> Self {
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
        if let Some(path) = cgroups.path_of(meta.cgroup_id) {
            w = w.in_cgroup(path);
        }
        // A container's uid belongs to its image's accounts, not the host's: the host's
        // name for it would be someone else's.
        if w.container.is_none() {
            w.user = names::user(meta.uid);
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_described_cgroup_is_read_as_the_agent_reads_it() {
        let id = "ab".repeat(32);
        let w = Workload::described(0, 0, "c".into(), None)
            .in_cgroup(format!("/system.slice/docker-{id}.scope"));
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
