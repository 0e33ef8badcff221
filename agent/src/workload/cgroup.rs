//! The path of the cgroup a connection came from, looked up by the id the connect hook
//! recorded (`bpf_get_current_cgroup_id`). A cgroup v2 id is its directory's inode number,
//! which is also its file handle on the cgroup2 filesystem, so `open_by_handle_at` on the
//! mount opens exactly that directory and `/proc/self/fd` names it.
//!
//! Why by id and not `/proc/<pid>/cgroup`: the id is what the kernel saw at connect(); by
//! accept time the process may have exited (its pid even reused) or moved, and the path read
//! by pid would then be someone else's, or need a second look to rule that out. By id the
//! answer is the connect-time cgroup or nothing (the cgroup is gone: `ESTALE`). It is also
//! cheaper on this host: 8–10 µs for open, readlink and close against 10–12 µs for reading
//! `/proc/<pid>/cgroup` (which walks every hierarchy under a global lock) plus 3–5 µs for the
//! check (measured in C, 20,000 rounds each). It needs `CAP_DAC_READ_SEARCH`.
use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

/// `FILEID_KERNFS`: the handle type kernfs (cgroup2) gives its files; the handle is the
/// 64-bit id.
const FILEID_KERNFS: i32 = 0xfe;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening the cgroup v2 mount {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The cgroup2 mount, held open for lookups.
#[derive(Debug)]
pub struct CgroupRoot {
    dir: OwnedFd,
    /// As `/proc/self/fd` shows paths under it.
    prefix: PathBuf,
    /// Lookups are refused for want of privilege: said once, not per connection.
    warned: AtomicBool,
}

/// `struct file_handle` with room for the kernfs id.
#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: [u8; 8],
}

impl CgroupRoot {
    pub fn open(mount: &Path) -> Result<Self, Error> {
        let err = |source| Error::Open {
            path: mount.to_path_buf(),
            source,
        };
        let dir = std::fs::File::open(mount).map_err(err)?;
        // The form the kernel prints the mount in (no symlinks, no trailing slash).
        let prefix =
            std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).map_err(err)?;
        Ok(CgroupRoot {
            dir: dir.into(),
            prefix,
            warned: AtomicBool::new(false),
        })
    }

    /// The path of cgroup `id` from the mount's root (`/` for the root), as
    /// `/proc/<pid>/cgroup` would show it; `None` when the cgroup is gone, is not under this
    /// mount, or its name is not UTF-8. Blocking: a few syscalls.
    pub fn path_of(&self, id: u64) -> Option<String> {
        let mut handle = KernfsHandle {
            handle_bytes: 8,
            handle_type: FILEID_KERNFS,
            id: id.to_ne_bytes(),
        };
        // SAFETY: `handle` has the layout of `struct file_handle` followed by the
        // `handle_bytes` (8) bytes the kernel reads; the mount fd is open for our lifetime.
        let fd = unsafe {
            libc::open_by_handle_at(
                self.dir.as_raw_fd(),
                (&raw mut handle).cast::<libc::file_handle>(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) && !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "cannot look up callers' cgroups (needs CAP_DAC_READ_SEARCH): connections carry no cgroup path, container or pod, and rules selecting on them do not match");
            }
            return None;
        }
        // SAFETY: a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        relative(&self.prefix, &target)
    }
}

/// `target` (a path `/proc/self/fd` printed) from the mount `prefix`, as `/a/b`.
fn relative(prefix: &Path, target: &Path) -> Option<String> {
    let rest = target.strip_prefix(prefix).ok()?.to_str()?;
    // The kernel marks a directory removed after it was opened.
    if rest.ends_with(" (deleted)") {
        return None;
    }
    Some(format!("/{rest}"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn paths_are_taken_from_the_mount() {
        let m = Path::new("/sys/fs/cgroup");
        assert_eq!(
            relative(m, Path::new("/sys/fs/cgroup/a/b.scope")),
            Some("/a/b.scope".into())
        );
        assert_eq!(relative(m, Path::new("/sys/fs/cgroup")), Some("/".into()));
        assert_eq!(relative(m, Path::new("/sys/fs/cgroupx/a")), None);
        assert_eq!(relative(m, Path::new("/other/a")), None);
        assert_eq!(relative(m, Path::new("/sys/fs/cgroup/a (deleted)")), None);
    }

    /// This test process's own cgroup, found by its id; an id that names nothing, nothing.
    /// Needs root (CAP_DAC_READ_SEARCH) like the agent; without it the lookup answers
    /// nothing, which is what is checked then.
    #[test]
    fn finds_a_cgroup_by_its_id() {
        let mount = crate::intercept::cgroup::cgroup2_mount().expect("a cgroup2 mount");
        let root = CgroupRoot::open(&mount).expect("open the mount");
        let text = std::fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
        let own = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a 0:: line");
        let ino = std::fs::metadata(mount.join(own.trim_start_matches('/')))
            .expect("own cgroup directory")
            .ino();
        // SAFETY: geteuid has no preconditions.
        let root_user = unsafe { libc::geteuid() } == 0;
        let want = root_user.then(|| own.to_string());
        assert_eq!(root.path_of(ino), want);
        assert_eq!(root.path_of(u64::MAX - 7), None);
    }
}
