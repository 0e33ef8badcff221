//! Finding the cgroup v2 hierarchy. Hosts differ (`/sys/fs/cgroup` on unified hosts,
//! `/sys/fs/cgroup/unified` on hybrid ones), so the mount is read from /proc/mounts.
use std::{
    fs,
    path::{Component, Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read /proc/mounts: {0}")]
    Mounts(std::io::Error),
    #[error(
        "no cgroup v2 (cgroup2) filesystem is mounted; Sluice attaches to cgroup v2 only (mount one with `mount -t cgroup2 none /sys/fs/cgroup`)"
    )]
    NoCgroup2,
    #[error("cgroup path {0:?} must not contain '..'")]
    Escapes(PathBuf),
    #[error("cgroup {path} does not exist under the cgroup v2 mount {mount}")]
    Missing { path: PathBuf, mount: PathBuf },
}

/// The first cgroup2 mount point in /proc/mounts.
pub fn cgroup2_mount() -> Result<PathBuf, Error> {
    let mounts = fs::read_to_string("/proc/mounts").map_err(Error::Mounts)?;
    find_mount(&mounts, "cgroup2").ok_or(Error::NoCgroup2)
}

/// Parses /proc/mounts text for the first mount of `fstype`.
pub fn find_mount(mounts: &str, fstype: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, ty) = (fields.next()?, fields.next()?, fields.next()?);
        (ty == fstype).then(|| PathBuf::from(unescape_mount(dir)))
    })
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Absolute directory of a cgroup given relative to the cgroup2 mount ("/" is the root).
pub fn resolve(rel: &Path) -> Result<PathBuf, Error> {
    let mount = cgroup2_mount()?;
    let mut dir = mount.clone();
    for c in rel.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => dir.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::Escapes(rel.to_path_buf()));
            }
        }
    }
    if !dir.is_dir() {
        return Err(Error::Missing {
            path: rel.to_path_buf(),
            mount,
        });
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            find_mount(hybrid, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            find_mount(unified, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(find_mount("proc /proc proc rw 0 0\n", "cgroup2"), None);
        assert_eq!(
            find_mount("cgroup2 /my\\040cg cgroup2 rw 0 0\n", "cgroup2"),
            Some(PathBuf::from("/my cg"))
        );
    }

    #[test]
    fn refuses_parent_components() {
        assert!(matches!(
            resolve(Path::new("/../etc")),
            Err(Error::Escapes(_)) | Err(Error::NoCgroup2)
        ));
    }
}
