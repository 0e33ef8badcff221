//! Idempotent installation of the build and test prerequisites.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// rustup name under which Debian's rustc-web is linked; agent/build.rs looks for it.
pub const LINKED_TOOLCHAIN: &str = "sluice-bpf";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
/// Debian packages for the linked toolchain and bpf-linker's LLVM.
const TOOLCHAIN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
];
/// Tools the end-to-end tests drive: real clients, bpftool to inspect attachments.
const TEST_PACKAGES: &[&str] = &["curl", "bpftool", "iproute2", "util-linux", "python3"];
/// The benchmark's peers (real proxies in front of the same server) and its load generator.
/// haproxy and nginx ship system services; they are installed without starting them.
const BENCH_PACKAGES: &[&str] = &["haproxy", "nginx", "wrk"];
/// Services of BENCH_PACKAGES, disabled right after they are installed.
const BENCH_SERVICES: &[&str] = &["haproxy", "nginx"];
/// What the deployment tests build and check with: podman and buildah (the container image;
/// runc, since Debian 12's crun refuses hybrid cgroup hosts), dpkg-dev and binutils (the
/// Debian package: dpkg-shlibdeps, objcopy), systemd (systemd-analyze), busybox-static (the
/// client and sidecar inside the test container: one static binary). Installed without
/// starting any service they ship.
const DEPLOY_PACKAGES: &[&str] = &[
    "podman",
    "buildah",
    "runc",
    "dpkg-dev",
    "binutils",
    "systemd",
    "busybox-static",
];
/// cargo-deb, pinned: `cargo xtask package` and the package test depend on its behaviour.
pub const CARGO_DEB_VERSION: &str = "3.8.0";
/// Debian's hook that invoke-rc.d asks before it starts a service; exit 101 means "no".
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// PATH for cargo builds: LLVM 22 first (bpf-linker is linked against it), then cargo's bin.
pub fn build_path() -> String {
    let mut parts = vec![
        LLVM_BIN.to_string(),
        cargo_home().join("bin").display().to_string(),
    ];
    parts.push(env::var("PATH").unwrap_or_default());
    parts.join(":")
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

fn have_bpf_linker() -> bool {
    succeeds(
        Command::new("bpf-linker")
            .arg("--version")
            .env("PATH", build_path()),
    )
}

fn toolchain_has_src(name: &str) -> bool {
    let out = Command::new("rustup")
        .args(["run", name, "rustc", "--print", "sysroot"])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let sysroot = String::from_utf8_lossy(&o.stdout).trim().to_string();
            Path::new(&sysroot)
                .join("lib/rustlib/src/rust/library/core")
                .exists()
        }
        _ => false,
    }
}

fn missing_packages(pkgs: &[&str]) -> Vec<String> {
    pkgs.iter()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .map(|p| p.to_string())
        .collect()
}

fn apt_install(pkgs: &[String]) -> Result<()> {
    if pkgs.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `cargo xtask setup` as root, or `sudo apt-get install {}`",
            pkgs.join(" "),
            pkgs.join(" ")
        );
    }
    eprintln!("xtask setup: installing {}", pkgs.join(" "));
    let status = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .context("apt-get update")?;
    if !status.success() {
        bail!("apt-get update failed: {status}");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("apt-get install")?;
    if !status.success() {
        bail!("apt-get install {} failed: {status}", pkgs.join(" "));
    }
    Ok(())
}

/// Installs packages that ship a service (nginx, haproxy) so that no service starts and none
/// listens on port 80: a temporary policy-rc.d refuses the start during installation (unless
/// one already exists, as in most containers), and the services are disabled afterwards so
/// that a reboot does not start them either. Packages already installed are left alone.
fn install_without_services(pkgs: &[String]) -> Result<()> {
    if pkgs.is_empty() {
        return Ok(());
    }
    let guard = PolicyGuard::install()?;
    let installed = apt_install(pkgs);
    drop(guard);
    installed?;
    let systemd = Path::new("/run/systemd/system").exists();
    for svc in BENCH_SERVICES
        .iter()
        .filter(|s| pkgs.iter().any(|p| p == *s))
    {
        if systemd {
            // Also stops it, should a unit have been started outside invoke-rc.d.
            let _ = Command::new("systemctl")
                .args(["disable", "--now", "--quiet", svc])
                .status();
            continue;
        }
        if Path::new("/usr/sbin/update-rc.d").exists() {
            let _ = Command::new("update-rc.d")
                .args([svc, "disable"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        // Only if the service did start anyway (its pid file exists): stop it by its script.
        if Path::new(&format!("/run/{svc}.pid")).exists()
            && Path::new(&format!("/etc/init.d/{svc}")).exists()
        {
            let _ = Command::new(format!("/etc/init.d/{svc}"))
                .arg("stop")
                .status();
        }
    }
    Ok(())
}

/// A policy-rc.d that refuses every service start, removed on drop; none if one exists.
struct PolicyGuard(Option<PathBuf>);

impl PolicyGuard {
    fn install() -> Result<Self> {
        let path = Path::new(POLICY_RC_D);
        if path.exists() || !is_root() {
            return Ok(PolicyGuard(None));
        }
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(
            path,
            "#!/bin/sh\n# cargo xtask setup: no service starts while installing\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {POLICY_RC_D}"))?;
        Ok(PolicyGuard(Some(path.to_path_buf())))
    }
}

impl Drop for PolicyGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take()
            && let Err(e) = std::fs::remove_file(&p)
        {
            eprintln!("xtask setup: could not remove {}: {e}", p.display());
        }
    }
}

/// `with_test_tools` also installs what the end-to-end tests and benchmarks use.
pub fn run(with_test_tools: bool) -> Result<()> {
    let on_debian = Path::new("/usr/bin/dpkg-query").exists();
    if with_test_tools && on_debian {
        apt_install(&missing_packages(TEST_PACKAGES))?;
        install_without_services(&missing_packages(BENCH_PACKAGES))?;
        install_without_services(&missing_packages(DEPLOY_PACKAGES))?;
    }
    if with_test_tools {
        python_packages()?;
        cargo_deb()?;
        oidc_provider(on_debian)?;
    }
    let nightly_ready = toolchain_has_src("nightly") && have_bpf_linker();
    let linked_ready = toolchain_has_src(LINKED_TOOLCHAIN) && have_bpf_linker();
    if linked_ready || nightly_ready {
        return Ok(());
    }
    if !on_debian {
        bail!(
            "no eBPF toolchain: install a nightly with rust-src (`rustup toolchain install nightly --component rust-src`) and `cargo install bpf-linker`"
        );
    }
    apt_install(&missing_packages(TOOLCHAIN_PACKAGES))?;
    if !have_bpf_linker() {
        eprintln!("xtask setup: building bpf-linker against LLVM 22 (a few minutes, once)");
        let status = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", build_path())
            .status()
            .context("cargo install bpf-linker")?;
        if !status.success() {
            bail!("cargo install bpf-linker failed: {status}");
        }
    }
    if !toolchain_has_src(LINKED_TOOLCHAIN) {
        let status = Command::new("rustup")
            .args(["toolchain", "link", LINKED_TOOLCHAIN, "/usr"])
            .status()
            .context("rustup toolchain link")?;
        if !status.success() {
            bail!("rustup toolchain link {LINKED_TOOLCHAIN} /usr failed: {status}");
        }
    }
    if !toolchain_has_src(LINKED_TOOLCHAIN) {
        bail!(
            "toolchain {LINKED_TOOLCHAIN} has no library source under /usr/lib/rustlib/src (is rust-web-src installed?)"
        );
    }
    eprintln!("xtask setup: eBPF toolchain ready ({LINKED_TOOLCHAIN} + bpf-linker)");
    Ok(())
}

/// Python packages the end-to-end tests drive as real clients, and the Kubernetes schema
/// validator the manifest test runs.
const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("openai", "openai"),
    ("anthropic", "anthropic"),
    ("grpc", "grpcio"),
    ("kubernetes_validate", "kubernetes-validate"),
];

/// Whether `cargo deb` is the pinned cargo-deb.
pub fn have_cargo_deb() -> bool {
    Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["deb", "--version"])
        .env("PATH", build_path())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_DEB_VERSION))
}

/// Installs the pinned cargo-deb from crates.io (a minute or two, once).
pub fn cargo_deb() -> Result<()> {
    if have_cargo_deb() {
        return Ok(());
    }
    eprintln!("xtask setup: installing cargo-deb {CARGO_DEB_VERSION}");
    let status = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ])
        .env("PATH", build_path())
        .status()
        .context("cargo install cargo-deb")?;
    if !status.success() {
        bail!("cargo install cargo-deb failed: {status}");
    }
    Ok(())
}

fn python_packages() -> Result<()> {
    for (module, package) in PYTHON_PACKAGES {
        if succeeds(Command::new("python3").args(["-c", &format!("import {module}")])) {
            continue;
        }
        eprintln!("xtask setup: installing the Python package {package}");
        let plain =
            succeeds(Command::new("python3").args(["-m", "pip", "install", "--quiet", package]));
        // Debian's own python3 refuses user installs without this flag (PEP 668).
        if !plain
            && !succeeds(Command::new("python3").args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--break-system-packages",
                package,
            ]))
        {
            bail!(
                "could not install the Python package {package} (python3 -m pip install {package})"
            );
        }
    }
    Ok(())
}

/// The OpenID provider the identity tests run (tests/oidc: npm's oidc-provider under node),
/// installed from the lock file beside it.
fn oidc_provider(on_debian: bool) -> Result<()> {
    let dir = workspace_dir().join("tests/oidc");
    let have = |tool: &str| succeeds(Command::new(tool).arg("--version"));
    if on_debian {
        let mut pkgs = Vec::new();
        if !have("node") {
            pkgs.push("nodejs".to_string());
        }
        if !have("npm") {
            pkgs.push("npm".to_string());
        }
        apt_install(&pkgs)?;
    }
    if dir.join("node_modules/oidc-provider/package.json").exists() {
        return Ok(());
    }
    if !have("npm") {
        bail!(
            "npm is missing: install Node.js and npm, then run `cargo xtask setup` again (the identity tests run an OpenID provider under node)"
        );
    }
    eprintln!("xtask setup: installing the test OpenID provider (npm ci in tests/oidc)");
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .context("npm ci in tests/oidc")?;
    if !status.success() {
        bail!("npm ci in {} failed: {status}", dir.display());
    }
    Ok(())
}

/// The workspace root (xtask's parent directory).
fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}
