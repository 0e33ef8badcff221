//! What a cgroup v2 path says about containers and pods: the names container runtimes and
//! the kubelet give the cgroups they create, read one path component at a time.
//!
//! Recognised (under any prefix, so nested trees and test cgroups read the same):
//!
//! | component | container runtime |
//! |---|---|
//! | `docker-<id>.scope` | docker (systemd cgroup driver; also rootless, under `user@<uid>.service`) |
//! | `libpod-<id>.scope`, `libpod-<id>` | podman (systemd, cgroupfs) |
//! | `cri-containerd-<id>.scope` | containerd (CRI, systemd driver) |
//! | `crio-<id>.scope`, `crio-<id>` | CRI-O (systemd, cgroupfs) |
//! | `<id>` right below `docker` | docker (cgroupfs driver: `/docker/<id>`) |
//! | `<id>` right below a pod | not known (kubelet's cgroupfs driver: `/kubepods/<qos>/pod<uid>/<id>`) |
//!
//! `<id>` is exactly 64 lower-case hex digits; conmon's scopes (`libpod-conmon-<id>.scope`,
//! `crio-conmon-<id>.scope`) hold the runtime's monitor, not the container, and do not match.
//! Pods: `kubepods[-<qos>]-pod<uid>.slice` (systemd driver, the uid's dashes written as `_`,
//! any `-`-separated prefix such as kind's `kubelet-kubepods-...`) and `pod<uid>` below a
//! `kubepods` component (cgroupfs driver). A uid is reported with dashes, as the API server
//! shows it; static pods' uids are 32 hex digits without dashes and are reported as such.
//!
//! The outermost match counts, and nothing below the container is read: a process that can
//! create cgroups under its own container (one with a cgroup namespace and write access, or
//! systemd inside) cannot claim another container or pod by naming a child cgroup after it.
//! A path with an empty, `.` or `..` component (the kernel shows `/..` for cgroups outside the
//! reader's cgroup namespace) says nothing: no guess is made from it.
use serde::{Deserialize, Serialize};

/// The container runtime a cgroup name belongs to, spelled as Kubernetes' `containerID`
/// scheme spells it (`containerd://`, `cri-o://`, `docker://`) and podman as itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Podman,
    Containerd,
    #[serde(rename = "cri-o", alias = "crio")]
    CriO,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// 64 lower-case hex digits.
    pub id: String,
    /// `None` where the path does not say (the kubelet's cgroupfs driver names a container
    /// by its id alone, whatever the runtime).
    pub runtime: Option<Runtime>,
}

impl Container {
    /// The 12-digit form `docker ps`, `podman ps` and `crictl ps` show.
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }
}

/// What one cgroup path says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub container: Option<Container>,
    /// Lower-case, with dashes.
    pub pod_uid: Option<String>,
}

/// Reads a cgroup v2 path as `/proc/<pid>/cgroup` shows it (starting with `/`).
pub fn parse(path: &str) -> Identity {
    let mut found = Identity::default();
    let Some(rest) = path.strip_prefix('/') else {
        return found;
    };
    if rest.is_empty()
        || rest
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return found;
    }
    let mut parent: Option<&str> = None;
    let mut parent_is_pod = false;
    let mut under_kubepods = false;
    for c in rest.split('/') {
        let mut is_pod = false;
        if found.pod_uid.is_none()
            && let Some(uid) = pod_slice(c).or_else(|| pod_dir(c, under_kubepods))
        {
            found.pod_uid = Some(uid);
            is_pod = true;
        }
        if let Some(container) = container(c, parent, parent_is_pod) {
            found.container = Some(container);
            // Below the container, its own processes may name cgroups as they like.
            break;
        }
        under_kubepods |= c == "kubepods";
        parent = Some(c);
        parent_is_pod = is_pod;
    }
    found
}

/// A container's own cgroup.
fn container(c: &str, parent: Option<&str>, parent_is_pod: bool) -> Option<Container> {
    let with = |id: &str, runtime| {
        is_id(id).then(|| Container {
            id: id.to_string(),
            runtime,
        })
    };
    if let Some(unit) = c.strip_suffix(".scope") {
        let (runtime, id) = [
            ("docker-", Runtime::Docker),
            ("libpod-", Runtime::Podman),
            ("cri-containerd-", Runtime::Containerd),
            ("crio-", Runtime::CriO),
        ]
        .into_iter()
        .find_map(|(prefix, r)| unit.strip_prefix(prefix).map(|id| (r, id)))?;
        return with(id, Some(runtime));
    }
    if let Some(id) = c.strip_prefix("libpod-") {
        return with(id, Some(Runtime::Podman));
    }
    if let Some(id) = c.strip_prefix("crio-") {
        return with(id, Some(Runtime::CriO));
    }
    match parent {
        Some("docker") => with(c, Some(Runtime::Docker)),
        Some(_) if parent_is_pod => with(c, None),
        _ => None,
    }
}

/// `kubepods[-<qos>]-pod<uid_with_underscores>.slice`, as the kubelet's systemd driver names
/// a pod (also under a prefix, e.g. `kubelet-kubepods-besteffort-pod<uid>.slice`).
fn pod_slice(c: &str) -> Option<String> {
    let name = c.strip_suffix(".slice")?;
    let (head, last) = name.rsplit_once('-')?;
    let uid = last.strip_prefix("pod")?;
    if !head.split('-').any(|s| s == "kubepods") {
        return None;
    }
    if is_uid_with(uid, b'_') {
        return Some(uid.replace('_', "-"));
    }
    is_hex(uid, 32).then(|| uid.to_string())
}

/// `pod<uid>` below `kubepods`, as the kubelet's cgroupfs driver names a pod.
fn pod_dir(c: &str, under_kubepods: bool) -> Option<String> {
    if !under_kubepods {
        return None;
    }
    let uid = c.strip_prefix("pod")?;
    is_pod_uid(uid).then(|| uid.to_string())
}

/// A pod uid as the API server shows it: a lower-case UUID with dashes, or a static pod's 32
/// hex digits.
pub fn is_pod_uid(s: &str) -> bool {
    is_uid_with(s, b'-') || is_hex(s, 32)
}

/// A full container id: 64 lower-case hex digits.
pub fn is_id(s: &str) -> bool {
    is_hex(s, 64)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(is_lower_hex)
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// 8-4-4-4-12 lower-case hex digits joined by `sep`.
fn is_uid_with(s: &str, sep: u8) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == sep,
            _ => is_lower_hex(c),
        })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "6a7f5c1e-2b3d-4c5e-8f90-a1b2c3d4e5f6";
    const UID_: &str = "6a7f5c1e_2b3d_4c5e_8f90_a1b2c3d4e5f6";

    fn container(path: &str) -> Option<(String, Option<Runtime>)> {
        parse(path).container.map(|c| (c.id, c.runtime))
    }

    fn ct(runtime: Option<Runtime>) -> Option<(String, Option<Runtime>)> {
        Some((ID.to_string(), runtime))
    }

    #[test]
    fn systemd_scopes_of_each_runtime() {
        let cases = [
            (
                format!("/system.slice/docker-{ID}.scope"),
                Some(Runtime::Docker),
            ),
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                Some(Runtime::Podman),
            ),
            (
                format!("/system.slice/cri-containerd-{ID}.scope"),
                Some(Runtime::Containerd),
            ),
            (
                format!("/system.slice/crio-{ID}.scope"),
                Some(Runtime::CriO),
            ),
            // Rootless podman and docker, in the user's delegated tree.
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
                ),
                Some(Runtime::Podman),
            ),
            // A container running systemd, or podman's split layout: a cgroup below the scope.
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                Some(Runtime::Podman),
            ),
        ];
        for (path, runtime) in cases {
            assert_eq!(container(&path), ct(runtime), "{path}");
            assert_eq!(parse(&path).pod_uid, None, "{path}");
        }
    }

    #[test]
    fn cgroupfs_shapes() {
        assert_eq!(
            container(&format!("/docker/{ID}")),
            ct(Some(Runtime::Docker))
        );
        assert_eq!(
            container(&format!("/libpod_parent/libpod-{ID}")),
            ct(Some(Runtime::Podman))
        );
        let k = parse(&format!("/kubepods/besteffort/pod{UID}/{ID}"));
        assert_eq!(k.pod_uid.as_deref(), Some(UID));
        assert_eq!(k.container.map(|c| (c.id, c.runtime)), ct(None));
        // Guaranteed pods sit right under kubepods.
        let g = parse(&format!("/kubepods/pod{UID}/{ID}"));
        assert_eq!(g.pod_uid.as_deref(), Some(UID));
        assert_eq!(g.container.map(|c| c.id), Some(ID.to_string()));
        let crio = parse(&format!("/kubepods/burstable/pod{UID}/crio-{ID}"));
        assert_eq!(crio.pod_uid.as_deref(), Some(UID));
        assert_eq!(
            crio.container.map(|c| (c.id, c.runtime)),
            ct(Some(Runtime::CriO))
        );
        // The pod's own cgroup: a pod, no container.
        let pod = parse(&format!("/kubepods/burstable/pod{UID}"));
        assert_eq!((pod.pod_uid.as_deref(), pod.container), (Some(UID), None));
    }

    #[test]
    fn kubelet_systemd_driver() {
        for qos in ["kubepods-besteffort", "kubepods-burstable"] {
            let p = format!(
                "/kubepods.slice/{qos}.slice/{qos}-pod{UID_}.slice/cri-containerd-{ID}.scope"
            );
            let id = parse(&p);
            assert_eq!(id.pod_uid.as_deref(), Some(UID), "{p}");
            assert_eq!(
                id.container.map(|c| (c.id, c.runtime)),
                ct(Some(Runtime::Containerd))
            );
        }
        // Guaranteed QoS: no QoS slice.
        let p = format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope");
        let id = parse(&p);
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
        assert_eq!(id.container.map(|c| c.runtime), Some(Some(Runtime::CriO)));
        // kind's kubelet runs with --cgroup-root=/kubelet.
        let p = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(parse(&p).pod_uid.as_deref(), Some(UID));
        // A static pod's uid is a 32-digit hash.
        let hash = "2e5b0b3b2d6b4f8ba2cb6d8d1a3e4f5a";
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice/docker-{ID}.scope"
        );
        let id = parse(&p);
        assert_eq!(id.pod_uid.as_deref(), Some(hash));
        assert_eq!(id.container.map(|c| c.runtime), Some(Some(Runtime::Docker)));
    }

    #[test]
    fn nested_under_any_prefix() {
        let p = format!(
            "/sluice-test-1-2-ident/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
        );
        let id = parse(&p);
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
        assert_eq!(id.container.map(|c| c.id), Some(ID.to_string()));
        assert_eq!(
            container(&format!("/a/b/c/system.slice/docker-{ID}.scope")),
            ct(Some(Runtime::Docker))
        );
    }

    #[test]
    fn conmon_is_not_the_container() {
        for p in [
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope"),
            format!("/libpod_parent/libpod-conmon-{ID}"),
        ] {
            assert_eq!(container(&p), None, "{p}");
        }
    }

    #[test]
    fn the_outermost_identity_counts_and_nothing_below_the_container() {
        let other = "f".repeat(64);
        let other_uid = "00000000-0000-0000-0000-000000000000";
        // A container that names a child cgroup after another container.
        let p = format!("/system.slice/docker-{ID}.scope/docker-{other}.scope");
        assert_eq!(container(&p), ct(Some(Runtime::Docker)));
        // ... or after a pod.
        let p = format!("/system.slice/docker-{ID}.scope/kubepods/pod{other_uid}/{other}");
        let id = parse(&p);
        assert_eq!(
            (id.pod_uid, id.container.map(|c| c.id)),
            (None, Some(ID.into()))
        );
        // A pod slice below a pod slice: the kubelet's counts.
        let p = format!(
            "/kubepods.slice/kubepods-pod{UID_}.slice/kubepods-pod{}.slice",
            other_uid.replace('-', "_")
        );
        assert_eq!(parse(&p).pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn not_containers() {
        let short = &ID[..63];
        let upper = ID.to_ascii_uppercase();
        let non_hex = format!("{}g", &ID[..63]);
        for p in [
            String::new(),
            "/".into(),
            "/init.scope".into(),
            "/system.slice/docker.service".into(),
            "/system.slice/containerd.service".into(),
            format!("/system.slice/docker-{short}.scope"),
            format!("/system.slice/docker-{ID}0.scope"),
            format!("/system.slice/docker-{upper}.scope"),
            format!("/system.slice/docker-{non_hex}.scope"),
            format!("/system.slice/docker-{ID}.service"),
            format!("/system.slice/docker-{ID}"),
            format!("/system.slice/cri-containerd-{ID}"),
            format!("/system.slice/{ID}"),
            format!("/{ID}"),
            format!("/dockers/{ID}"),
            format!("/docker/{ID}.scope"),
            format!("system.slice/docker-{ID}.scope"),
            format!("/system.slice/docker-{ID}.scope\n"),
            format!("/system.slice/docker-{ID}.scope "),
            format!("/system.slice/podman-{ID}.scope"),
            format!("/system.slice/docker-\u{0660}{}.scope", &ID[1..]),
        ] {
            assert_eq!(parse(&p), Identity::default(), "{p:?}");
        }
    }

    #[test]
    fn not_pods() {
        for p in [
            format!("/pod{UID}/{ID}"),
            format!("/notkubepods/pod{UID}/{ID}"),
            format!("/kubepods/besteffort/pod{UID_}/{ID}"),
            format!("/kubepods/besteffort/pod{}/{ID}", UID.to_ascii_uppercase()),
            format!("/kubepods/besteffort/pod{}/{ID}", &UID[..35]),
            format!("/kubepods.slice/kubepods-besteffort-pod{UID}.slice"),
            format!("/kubepods.slice/kubepods-besteffort-pod{UID_}.scope"),
            format!("/kubepods.slice/other-besteffort-pod{UID_}.slice"),
            format!("/kubepods.slice/kubepodsx-pod{UID_}.slice"),
            format!("/kubepods.slice/kubepods-pod{}.slice", &UID_[1..]),
            "/kubepods.slice/kubepods-pod.slice".into(),
            "/kubepods.slice/kubepods-besteffort.slice".into(),
        ] {
            assert_eq!(parse(&p).pod_uid, None, "{p:?}");
        }
    }

    #[test]
    fn dot_segments_and_empty_components_say_nothing() {
        for p in [
            format!("/../../kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope"),
            format!("/system.slice/../docker-{ID}.scope"),
            format!("/system.slice/./docker-{ID}.scope"),
            format!("/system.slice//docker-{ID}.scope"),
            format!("/system.slice/docker-{ID}.scope/"),
            format!("//docker/{ID}"),
        ] {
            assert_eq!(parse(&p), Identity::default(), "{p:?}");
        }
    }

    #[test]
    fn ten_thousand_components() {
        let deep = "/a".repeat(10_000);
        assert_eq!(parse(&deep), Identity::default());
        let p = format!("{deep}/system.slice/docker-{ID}.scope");
        assert_eq!(container(&p), ct(Some(Runtime::Docker)));
        let p = format!("/system.slice/docker-{ID}.scope{deep}");
        assert_eq!(container(&p), ct(Some(Runtime::Docker)));
        let slashes = "/".repeat(10_000);
        assert_eq!(parse(&slashes), Identity::default());
    }

    #[test]
    fn short_id_is_twelve_digits() {
        let c = Container {
            id: ID.into(),
            runtime: None,
        };
        assert_eq!(c.short_id(), "0123456789ab");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Any text at all: no panic, and whatever is found is well formed.
        #[test]
        fn never_panics_and_finds_only_well_formed_ids(path in "\\PC{0,300}") {
            let id = parse(&path);
            if let Some(c) = id.container {
                prop_assert!(is_id(&c.id));
            }
            if let Some(uid) = id.pod_uid {
                prop_assert!(is_pod_uid(&uid));
            }
        }

        /// Paths built from the pieces the shapes are made of, shuffled: the same, and a
        /// found container's id is always one of the path's own components' tails.
        #[test]
        fn pieces_in_any_order(parts in prop::collection::vec(prop::sample::select(vec![
            "docker", "kubepods", "kubepods.slice", "besteffort", "system.slice", "..", "",
            "docker-", "libpod-conmon-", "crio-", "pod", "kubepods-besteffort-pod", ".scope",
            ".slice", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "6a7f5c1e-2b3d-4c5e-8f90-a1b2c3d4e5f6", "6a7f5c1e_2b3d_4c5e_8f90_a1b2c3d4e5f6",
            "/", "é", "\u{202e}",
        ]), 0..24)) {
            let path = parts.concat();
            let id = parse(&path);
            if let Some(c) = &id.container {
                prop_assert!(path.contains(&c.id));
            }
            if let Some(uid) = &id.pod_uid {
                prop_assert!(path.contains(uid.as_str()) || path.contains(&uid.replace('-', "_")));
            }
        }
    }
}
