//! The deployment artefacts: the container image task, and which deployment tests this host
//! cannot run (each is then skipped, and said so, rather than failed or passed).
use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::setup;

/// `cargo xtask image`: packaging/container/build.sh on the release binary.
pub fn image(root: &Path) -> Result<()> {
    for tool in ["buildah", "objcopy"] {
        if !found(tool, "--version") {
            bail!(
                "{tool} is not installed: run `cargo xtask setup` as root (it installs buildah, podman, runc and binutils)"
            );
        }
    }
    let bin = root.join("target/release/sluice");
    let version = env!("CARGO_PKG_VERSION");
    let tag = format!("localhost/sluice:{version}");
    let status = Command::new(root.join("packaging/container/build.sh"))
        .arg(&bin)
        .arg(&tag)
        .status()
        .context("running packaging/container/build.sh")?;
    if !status.success() {
        bail!("building the image failed: {status}");
    }
    println!("image {tag} (`podman image save {tag}` to move it to a node or a registry)");
    Ok(())
}

fn found(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .env("PATH", setup::build_path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Deployment tests (tests/tests/deploy.rs) this host cannot run, with the reason. Setup
/// installs every tool on Debian; what remains is a host without them, or one where the
/// package test would touch an operator's installation.
pub fn unrunnable() -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if !found("kubernetes-validate", "--version") {
        out.push((
            "kubernetes_manifests_validate_and_configure_the_agent",
            "kubernetes-validate is not installed".to_string(),
        ));
    }
    let missing: Vec<&str> = [
        ("podman", "--version"),
        ("buildah", "--version"),
        ("runc", "--version"),
        ("objcopy", "--version"),
    ]
    .into_iter()
    .filter(|(t, a)| !found(t, a))
    .map(|(t, _)| t)
    .collect();
    if !missing.is_empty() {
        out.push((
            "the_container_image_intercepts_and_judges_a_host_client",
            format!("{} not installed", missing.join(", ")),
        ));
    }
    let mut missing: Vec<&str> = [
        ("podman", "--version"),
        ("buildah", "--version"),
        ("runc", "--version"),
    ]
    .into_iter()
    .filter(|(t, a)| !found(t, a))
    .map(|(t, _)| t)
    .collect();
    if !Path::new("/bin/busybox").exists() {
        missing.push("busybox-static");
    }
    if !missing.is_empty() {
        out.push((
            "a_client_in_a_podman_container_is_intercepted_and_judged",
            format!("{} not installed", missing.join(", ")),
        ));
    }
    let deb = "the_debian_package_installs_without_starting_and_purges_clean";
    let missing: Vec<&str> = [("dpkg-deb", "--version"), ("systemd-analyze", "--version")]
        .into_iter()
        .filter(|(t, a)| !found(t, a))
        .map(|(t, _)| t)
        .collect();
    if !missing.is_empty() || !setup::have_cargo_deb() {
        let mut what = missing;
        if !setup::have_cargo_deb() {
            what.push("cargo-deb");
        }
        out.push((deb, format!("{} not installed", what.join(", "))));
    } else if Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "sluice"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
    {
        out.push((
            deb,
            "a sluice package is installed on this host; the test installs and purges its own"
                .to_string(),
        ));
    } else if Path::new("/sys/fs/bpf/sluice").exists() {
        out.push((
            deb,
            "an agent with the default pin_dir (/sys/fs/bpf/sluice) runs here; purging the test package would detach it".to_string(),
        ));
    }
    out
}
