//! Builds the eBPF programs (agent-ebpf) for bpfel-unknown-none and leaves the object in
//! OUT_DIR for `include_bytes_aligned!`. The toolchain is picked by `cargo xtask setup`:
//! a rustup toolchain linked to Debian's rustc-web ("sluice-bpf", with its library source and
//! RUSTC_BOOTSTRAP) or a nightly with rust-src. SLUICE_BPF_TOOLCHAIN overrides the choice.
use std::{env, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

const LINKED_TOOLCHAIN: &str = "sluice-bpf";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=SLUICE_BPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        // Lets clippy and docs run where the BPF toolchain is absent; the agent then refuses
        // to start with a clear error instead of loading nothing.
        std::fs::write(out.join("sluice-ebpf"), b"").context("write placeholder object")?;
        return Ok(());
    }
    let toolchain = match env::var("SLUICE_BPF_TOOLCHAIN") {
        Ok(t) if !t.is_empty() => t,
        _ if rustup_has(LINKED_TOOLCHAIN) => LINKED_TOOLCHAIN.to_string(),
        _ if rustup_has("nightly") && has_rust_src("nightly") => "nightly".to_string(),
        _ => {
            return Err(anyhow!(
                "no toolchain for the eBPF programs: run `cargo xtask setup` (installs the \
                 `{LINKED_TOOLCHAIN}` toolchain and bpf-linker), or set SLUICE_BPF_TOOLCHAIN"
            ));
        }
    };
    if toolchain == LINKED_TOOLCHAIN {
        // Debian's rustc is a stable compiler; build-std needs unstable flags. aya-build reads
        // this variable to add `-Z build-std=core`.
        // SAFETY: build scripts are single-threaded here.
        unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    }
    // bpf-linker must use the LLVM it was built for; put Debian's LLVM 22 first when present.
    let llvm = "/usr/lib/llvm-22/bin";
    if std::path::Path::new(llvm).exists() {
        let path = env::var("PATH").unwrap_or_default();
        if !path.starts_with(llvm) {
            // SAFETY: as above.
            unsafe { env::set_var("PATH", format!("{llvm}:{path}")) };
        }
    }
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?)
        .join("../agent-ebpf");
    let root = root.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [Package {
            name: "agent-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}

fn rustup_has(name: &str) -> bool {
    Command::new("rustup")
        .args(["run", name, "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn has_rust_src(name: &str) -> bool {
    Command::new("rustup")
        .args(["run", name, "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .is_some_and(|sysroot| {
            std::path::Path::new(sysroot.trim())
                .join("lib/rustlib/src/rust/library/core")
                .exists()
        })
}
