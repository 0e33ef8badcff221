//! Who made a connection: the identity the connect hook captured, plus the executable read
//! from /proc at accept time.
use agent_common::ConnMeta;
use serde::{Deserialize, Serialize};

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
        }
    }

    /// Blocking: reads /proc. Called from `intercept::orig_dst::attribute` on the blocking
    /// pool.
    pub fn from_meta(meta: &ConnMeta) -> Self {
        let comm_len = meta
            .comm
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(meta.comm.len());
        Workload {
            pid: meta.pid,
            tgid: meta.tgid,
            uid: meta.uid,
            gid: meta.gid,
            cgroup_id: meta.cgroup_id,
            comm: String::from_utf8_lossy(&meta.comm[..comm_len]).into_owned(),
            exe: std::fs::read_link(format!("/proc/{}/exe", meta.tgid))
                .ok()
                .map(|p| p.display().to_string()),
        }
    }
}
