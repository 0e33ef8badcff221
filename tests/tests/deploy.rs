//! The three ways to deploy the agent, checked for real: the Kubernetes manifests against the
//! Kubernetes schemas (kubernetes-validate) and against the agent they configure; a
//! ConfigMap update, laid out as kubelet lays it out, reaching a running agent; the Debian
//! package built, installed (nothing may start), its unit verified by systemd-analyze, and
//! purged; and the container image built from scratch and run by podman with exactly the
//! documented privileges, intercepting and judging a real client in a test cgroup.
//!
//! Each needs root or tools that `cargo xtask setup` installs: `#[ignore]`d, run by `cargo
//! xtask test` as root, which reports one as skipped (not passed) when this host cannot
//! run it (docs in tests/README.md).
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value as Json;
use serde_norway::Value as Yaml;
use sluice_tests::{
    Agent, AgentSpec, TempDir, TestCgroup, curl, free_port, log_events, require_root, servers,
    servers::Server, sluice_bin, unique, virtual_ip, wait_log_events,
};

/// The capabilities the agent needs, as the DaemonSet and podman spell them. The unit, the
/// manifest and the container run below must each list exactly these.
const CAPS: [&str; 6] = [
    "BPF",
    "PERFMON",
    "NET_ADMIN",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
    "SYS_ADMIN",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn read_yaml(path: &Path) -> Yaml {
    let text = fs::read_to_string(path).expect("read manifest");
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {}", text(&out));
    text(&out)
}

/// Writes `files` into `dir` as kubelet's AtomicWriter does for a ConfigMap volume: the
/// files in a fresh timestamped directory, `..data` swapped to it by renaming a new symlink
/// over the old one, one symlink per top-level name through `..data`, and the previous
/// timestamped directory removed.
fn kubelet_write(dir: &Path, files: &[(String, String)], generation: u32) {
    let stamp = format!("..2026_01_01_00_00_{generation:02}.{}", std::process::id());
    let fresh = dir.join(&stamp);
    for (path, content) in files {
        let file = fresh.join(path);
        fs::create_dir_all(file.parent().expect("parent")).expect("create dir");
        fs::write(&file, content).expect("write file");
    }
    let old = fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    symlink(&stamp, &tmp).expect("symlink ..data_tmp");
    fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    for (path, _) in files {
        let top = path.split('/').next().expect("top-level name");
        let link = dir.join(top);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(top), &link).expect("top-level symlink");
        }
    }
    if let Some(old) = old {
        fs::remove_dir_all(dir.join(old)).expect("remove the old generation");
    }
}

/// The ConfigMap's files as the DaemonSet's `items` lay them out under /etc/sluice.
fn configmap_files() -> Vec<(String, String)> {
    let dir = repo().join("deploy/kubernetes");
    let cm = read_yaml(&dir.join("configmap.yaml"));
    let ds = read_yaml(&dir.join("daemonset.yaml"));
    let volume = ds["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["configMap"]["name"] == cm["metadata"]["name"])
        .expect("a volume of the ConfigMap")
        .clone();
    volume["configMap"]["items"]
        .as_sequence()
        .expect("items")
        .iter()
        .map(|item| {
            let key = item["key"].as_str().expect("key");
            let content = cm["data"][key]
                .as_str()
                .unwrap_or_else(|| panic!("the ConfigMap has no key {key}"));
            (
                item["path"].as_str().expect("path").to_string(),
                content.to_string(),
            )
        })
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
#[ignore = "needs kubernetes-validate (cargo xtask setup installs it; cargo xtask test runs this)"]
fn kubernetes_manifests_validate_and_configure_the_agent() {
    let dir = repo().join("deploy/kubernetes");
    let manifests = ["namespace.yaml", "configmap.yaml", "daemonset.yaml"].map(|f| dir.join(f));
    let out = run_ok(
        Command::new("kubernetes-validate")
            .arg("--strict")
            .args(&manifests),
    );
    assert_eq!(out.matches(" passed for resource ").count(), 3, "{out}");

    // The ConfigMap, laid out as the pod sees it, is a configuration the agent accepts, and
    // its pack is the shipped one.
    let files = configmap_files();
    let tmp = TempDir::new("configmap");
    kubelet_write(tmp.path(), &files, 1);
    let (_, config) = files
        .iter()
        .find(|(p, _)| p == "sluice.yaml")
        .expect("sluice.yaml in the ConfigMap");
    assert!(
        config.contains("policies: [/etc/sluice/policies]"),
        "{config}"
    );
    let local = tmp.path().join("check.yaml");
    fs::write(
        &local,
        config.replace("/etc/sluice/", &format!("{}/", tmp.path().display())),
    )
    .expect("write");
    let checked = run_ok(Command::new(sluice_bin()).arg("check-config").arg(&local));
    assert!(checked.contains("ollama"), "{checked}");
    let (_, pack) = files
        .iter()
        .find(|(p, _)| p == "policies/ollama-safe/pack.yaml")
        .expect("the ollama-safe pack in the ConfigMap");
    assert_eq!(
        pack,
        &fs::read_to_string(repo().join("policies/ollama-safe/pack.yaml")).expect("read"),
        "the ConfigMap's ollama-safe pack differs from policies/ollama-safe/pack.yaml"
    );

    // The pod: host namespaces, exactly the capabilities, the probe, the mounts.
    let ds = read_yaml(&dir.join("daemonset.yaml"));
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], Yaml::Bool(true));
    assert_eq!(pod["hostNetwork"], Yaml::Bool(true));
    assert_eq!(pod["automountServiceAccountToken"], Yaml::Bool(false));
    let c = &pod["containers"][0];
    let caps: Vec<String> = c["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .expect("capabilities.add")
        .iter()
        .map(|v| v.as_str().expect("cap").to_string())
        .collect();
    assert_eq!(sorted(caps), sorted(CAPS.map(String::from).to_vec()));
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"][0].as_str(),
        Some("ALL")
    );
    assert_eq!(c["securityContext"]["privileged"], Yaml::Bool(false));
    let probe: Vec<&str> = c["readinessProbe"]["exec"]["command"]
        .as_sequence()
        .expect("probe command")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(&probe[1..3], ["doctor", "--ready"]);
    // The drain must end before the kubelet's SIGKILL (the agent needs a few seconds more).
    let drain: u64 = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("drain_timeout_secs:"))
        .and_then(|v| v.split('#').next())
        .and_then(|v| v.trim().parse().ok())
        .expect("drain_timeout_secs in the ConfigMap");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(grace >= drain + 10, "grace {grace} s, drain {drain} s");
    let host_paths: Vec<&str> = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(
        sorted(host_paths.iter().map(|s| s.to_string()).collect()),
        ["/run/sluice", "/sys/fs/bpf", "/sys/fs/cgroup"]
    );

    // The systemd unit bounds the same capabilities.
    let unit = fs::read_to_string(repo().join("packaging/systemd/sluice.service")).expect("unit");
    let bounding: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    assert_eq!(sorted(bounding), sorted(CAPS.map(String::from).to_vec()));
}

/// An Ollama target on `vip:8000` forwarding to `server`.
fn ollama_target(vip: &str, server: &Server) -> String {
    format!(
        "  - name: ollama\n    match: \"{vip}:8000\"\n    upstream: \"{}\"\n    protocol: http\n    server: ollama\n",
        server.addr
    )
}

/// `POST /api/pull` from inside the cgroup: the HTTP status.
fn pull_status(cg: &TestCgroup, vip: &str) -> String {
    let out = curl(
        cg,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-d",
            r#"{"model":"llama3.2"}"#,
            &format!("http://{vip}:8000/api/pull"),
        ],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for_pull(cg: &TestCgroup, vip: &str, status: &str, agent: &Agent) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while pull_status(cg, vip) != status {
        assert!(
            Instant::now() < deadline,
            "pull never answered {status}:\n{}",
            agent.log_text()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "end-to-end: needs root and cgroup v2 (cargo xtask test runs it as root)"]
fn a_configmap_update_reaches_the_running_agent() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("configmap");
    let volume = TempDir::new("configmap-volume");
    let mut files = configmap_files();
    files.retain(|(p, _)| p.starts_with("policies/"));
    kubelet_write(volume.path(), &files, 1);
    let agent = Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "open",
        targets: ollama_target(&vip, &server),
        listen_v6: false,
        extra: format!("policies: [\"{}/policies\"]\n", volume.path().display()),
    });
    assert_eq!(pull_status(&cg, &vip), "403");

    // kubelet swaps in a pack that allows management: the agent follows without a restart.
    let allow_all = "apiVersion: sluice.dev/v1alpha1\nkind: PolicyPack\nmetadata: {name: ollama-safe}\nspec:\n  rules:\n    - id: allow-everything\n      action: allow\n      match:\n        servers: [ollama]\n";
    let edited = vec![(
        "policies/ollama-safe/pack.yaml".to_string(),
        allow_all.to_string(),
    )];
    kubelet_write(volume.path(), &edited, 2);
    wait_for_pull(&cg, &vip, "200", &agent);
    assert!(
        server
            .seen
            .requests
            .lock()
            .is_ok_and(|r| r.iter().any(|x| x == "POST /api/pull"))
    );
    // And back: every swap is seen, though the paths under /etc/sluice never change.
    kubelet_write(volume.path(), &files, 3);
    wait_for_pull(&cg, &vip, "403", &agent);
    let reloads = log_events(&agent, "policy reloaded");
    assert!(
        reloads.len() >= 2 && reloads.iter().all(|e| e["why"] == "file change"),
        "{reloads:?}"
    );
    assert!(log_events(&agent, "policy reload failed; keeping the running policy").is_empty());
}

/// dpkg, retried while another dpkg or apt holds the lock.
fn dpkg(args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = run(Command::new("dpkg").args(args));
        let locked = !out.status.success() && text(&out).contains("lock");
        if !locked || Instant::now() > deadline {
            return out;
        }
        thread::sleep(Duration::from_secs(1));
    }
}

fn package_installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "sluice"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Purges the package on drop if this test installed it, even when the test panics.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if package_installed() {
            let out = dpkg(&["--purge", "sluice"]);
            if !out.status.success() {
                eprintln!("warning: dpkg --purge sluice failed: {}", text(&out));
            }
        }
    }
}

/// Processes running `exe`, read from /proc.
fn processes_of(exe: &Path) -> Vec<u32> {
    fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe))
        .collect()
}

#[test]
#[ignore = "end-to-end: needs root, cargo-deb, dpkg and systemd-analyze (cargo xtask test runs it as root)"]
fn the_debian_package_installs_without_starting_and_purges_clean() {
    require_root();
    // Never touch an operator's installation or a running default agent (`cargo xtask test`
    // reports this test as skipped in both cases instead).
    assert!(!package_installed(), "the sluice package is installed here");
    let default_pins = Path::new("/sys/fs/bpf/sluice");
    assert!(!default_pins.exists(), "an agent uses {default_pins:?}");

    // cargo-deb packs an already built binary (`--no-build`) from target/release: the debug
    // build under test is staged there, so that no release build is needed.
    let tmp = TempDir::new("deb");
    let staged = tmp.path().join("target/release");
    fs::create_dir_all(&staged).expect("stage dir");
    fs::copy(sluice_bin(), staged.join("sluice")).expect("stage binary");
    let out_dir = tmp.path().join("out");
    run_ok(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["deb", "-p", "sluice", "--no-build", "--fast", "--output"])
            .arg(&out_dir)
            .env("CARGO_TARGET_DIR", tmp.path().join("target"))
            .current_dir(repo()),
    );
    let deb = fs::read_dir(&out_dir)
        .expect("cargo deb output")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb");
    let deb = deb.to_str().expect("utf-8 path");

    // Contents: the binary, the unit, the configuration (a conffile), every shipped pack.
    let listing = run_ok(Command::new("dpkg-deb").args(["--contents", deb]));
    let mut expected = vec![
        "./usr/bin/sluice".to_string(),
        "./lib/systemd/system/sluice.service".to_string(),
        "./etc/sluice/sluice.yaml".to_string(),
        "./usr/share/doc/sluice/operations.md".to_string(),
    ];
    for pack in fs::read_dir(repo().join("policies"))
        .expect("policies")
        .flatten()
    {
        let name = pack.file_name().to_string_lossy().into_owned();
        expected.push(format!("./usr/share/sluice/policies/{name}/pack.yaml"));
    }
    for path in &expected {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!(" {path}"))),
            "{path} missing from the package:\n{listing}"
        );
    }
    let conffiles = run_ok(Command::new("dpkg-deb").args(["--info", deb, "conffiles"]));
    assert_eq!(conffiles.trim(), "/etc/sluice/sluice.yaml");
    let unit = run_ok(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --fsys-tarfile '{deb}' | tar -xO ./lib/systemd/system/sluice.service"
    )));
    assert_eq!(
        unit,
        fs::read_to_string(repo().join("packaging/systemd/sluice.service")).expect("unit")
    );

    // Install: nothing starts, nothing is enabled, nothing is attached.
    let guard = Installed;
    let out = dpkg(&["--install", deb]);
    assert!(out.status.success(), "dpkg --install: {}", text(&out));
    let bin = Path::new("/usr/bin/sluice");
    assert!(bin.exists());
    let verify =
        run(Command::new("systemd-analyze").args(["verify", "/lib/systemd/system/sluice.service"]));
    let said = text(&verify);
    assert!(
        verify.status.success() && !said.contains("sluice.service"),
        "systemd-analyze verify: {said}"
    );
    assert_eq!(
        processes_of(bin),
        Vec::<u32>::new(),
        "the install started the agent"
    );
    assert!(!default_pins.exists(), "the install attached programs");
    let enabled: Vec<PathBuf> = fs::read_dir("/etc/systemd/system")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("sluice.service"))
        .filter(|p| fs::symlink_metadata(p).is_ok())
        .collect();
    assert_eq!(
        enabled,
        Vec::<PathBuf>::new(),
        "the install enabled the unit"
    );
    // The installed configuration and packs are good as shipped.
    run_ok(Command::new(bin).args(["check-config", "/etc/sluice/sluice.yaml"]));
    let cases = run_ok(Command::new(bin).args(["policy", "test", "/usr/share/sluice/policies"]));
    assert!(cases.contains(" 0 failed"), "{cases}");

    // Purge: every file, the configuration too, and the package's record.
    let out = dpkg(&["--purge", "sluice"]);
    assert!(out.status.success(), "dpkg --purge: {}", text(&out));
    drop(guard);
    assert!(!package_installed());
    for gone in [
        "/usr/bin/sluice",
        "/lib/systemd/system/sluice.service",
        "/etc/sluice",
        "/usr/share/sluice",
        "/usr/share/doc/sluice",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} left after purge");
    }
}

/// The cgroup2 mount point of this host (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// hybrid hosts).
fn cgroup2_mount() -> String {
    sluice_tests::cgroup2_mount().display().to_string()
}

/// An image built for this test, and its container, removed on drop.
struct Container {
    image: String,
    name: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "0", &self.name])
            .output();
        let _ = Command::new("podman").args(["rmi", &self.image]).output();
    }
}

fn podman(args: &[String]) -> Output {
    run(Command::new("podman").args(args))
}

/// `podman run` arguments for the agent's container: exactly what docs/operations.md lists
/// (with `caps` as the capabilities), plus what this test host needs and a production host
/// does not (see `test_host_args`).
fn container_args(name: &str, caps: &[&str], etc: &Path, run_dir: &Path) -> Vec<String> {
    let cgroup = cgroup2_mount();
    let mut a: Vec<String> = [
        "--network=host",
        "--pid=host",
        "--cgroupns=host",
        "--cap-drop=all",
    ]
    .map(String::from)
    .to_vec();
    if !caps.is_empty() {
        a.push(format!("--cap-add={}", caps.join(",")));
    }
    a.extend(
        [
            "--security-opt=no-new-privileges",
            "--security-opt=seccomp=unconfined",
            "--read-only",
            "--volume=/sys/fs/bpf:/sys/fs/bpf",
        ]
        .map(String::from),
    );
    a.push(format!("--volume={cgroup}:{cgroup}:ro"));
    a.push(format!("--volume={}:/run/sluice", run_dir.display()));
    a.push(format!("--volume={}:/etc/sluice:ro", etc.display()));
    a.push(format!("--name={name}"));
    a.extend(test_host_args());
    a
}

/// Debian 12's crun refuses hosts with controllers on both cgroup versions (hybrid, like
/// this test machine); runc runs there and everywhere else. Podman raises a root container's
/// RLIMIT_NOFILE and RLIMIT_NPROC above the host's, which needs CAP_SYS_RESOURCE: a sandbox
/// without it gets the limits it already has (root is exempt from RLIMIT_NPROC anyway).
fn test_host_args() -> Vec<String> {
    let mut a = vec!["--runtime=runc".to_string()];
    let status = fs::read_to_string("/proc/self/status").expect("status");
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_RESOURCE: u32 = 24;
    if eff & (1 << CAP_SYS_RESOURCE) == 0 {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        a.push(format!("--ulimit=nofile={0}:{0}", lim.rlim_max));
        a.push("--ulimit=nproc=1024:1024".to_string());
    }
    a
}

fn wait_ready(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = podman(&[
            "exec".into(),
            name.into(),
            "/usr/bin/sluice".into(),
            "doctor".into(),
            "--ready".into(),
            "--config".into(),
            "/etc/sluice/sluice.yaml".into(),
        ]);
        if probe.status.success() {
            assert!(text(&probe).contains("ready"));
            return;
        }
        let state = podman(&[
            "inspect".into(),
            "--format={{.State.Running}}".into(),
            name.into(),
        ]);
        let logs = || text(&podman(&["logs".into(), name.into()]));
        assert!(
            String::from_utf8_lossy(&state.stdout).trim() == "true",
            "the container stopped: {}",
            logs()
        );
        assert!(
            Instant::now() < deadline,
            "never ready: {}\n{}",
            text(&probe),
            logs()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// `curl` as nobody inside the cgroup: the agent needs CAP_SYS_PTRACE to read its exe.
fn curl_as_nobody(cg: &TestCgroup, args: &[&str]) -> Output {
    run(cg
        .command("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-sS",
            "-g",
            "-m",
            "10",
        ])
        .args(args))
}

fn records(name: &str) -> Vec<Json> {
    let logs = podman(&["logs".into(), name.into()]);
    text(&logs)
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter(|v| v["message"] == "request")
        .collect()
}

#[test]
#[ignore = "end-to-end: needs root, podman and buildah (cargo xtask test runs it as root)"]
fn the_container_image_intercepts_and_judges_a_host_client() {
    require_root();
    let tag = unique("image").replace("sluice-test-", "");
    let c = Container {
        image: format!("localhost/sluice-test:{tag}"),
        name: unique("container"),
    };
    run_ok(
        Command::new(repo().join("packaging/container/build.sh"))
            .arg(sluice_bin())
            .arg(&c.image),
    );

    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let cg = TestCgroup::new("container");
    let tmp = TempDir::new("container");
    let (etc, run_dir) = (tmp.path().join("etc"), tmp.path().join("run"));
    fs::create_dir_all(&etc).expect("etc");
    fs::create_dir_all(&run_dir).expect("run");
    let pin_dir = Path::new("/sys/fs/bpf").join(unique("pins"));
    // The image's own policy packs; the agent's admin socket on the host through the mount.
    let config = format!(
        "listen: 127.0.0.1:{}\nlisten_v6: null\ncgroup: /{}\nfail_mode: closed\npin_dir: {}\nadmin_socket: /run/sluice/admin.sock\ndrain_timeout_secs: 2\npolicies: [/usr/share/sluice/policies/ollama-safe]\ntargets:\n{}",
        free_port(),
        cg.rel,
        pin_dir.display(),
        ollama_target(&vip, &server)
    );
    fs::write(etc.join("sluice.yaml"), &config).expect("config");
    let on_host = tmp.path().join("host.yaml");
    fs::write(
        &on_host,
        config.replace(
            "/run/sluice/admin.sock",
            &run_dir.join("admin.sock").display().to_string(),
        ),
    )
    .expect("host config");
    // Whatever happens, the pinned links go (fail_mode closed leaves them by design).
    struct Detach(PathBuf);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new(sluice_bin())
                .args(["detach", "--config"])
                .arg(&self.0)
                .output();
        }
    }
    let _detach = Detach(on_host.clone());
    // The readiness probe says no while no agent serves this configuration.
    let probe = run(Command::new(sluice_bin())
        .args(["doctor", "--ready", "--config"])
        .arg(&on_host));
    assert_eq!(probe.status.code(), Some(3), "{}", text(&probe));
    assert!(text(&probe).contains("not ready"), "{}", text(&probe));
    let image_cmd = [
        c.image.clone(),
        "--log-format".into(),
        "json".into(),
        "run".into(),
        "--config".into(),
        "/etc/sluice/sluice.yaml".into(),
    ];

    // Each required capability is required: without it the agent stops before attaching.
    for missing in ["BPF", "PERFMON", "NET_ADMIN"] {
        // SYS_ADMIN stands in for BPF and PERFMON: leave it out too.
        let caps: Vec<&str> = CAPS
            .iter()
            .copied()
            .filter(|c| *c != missing && *c != "SYS_ADMIN")
            .collect();
        let name = unique("nocap");
        let mut args = vec!["run".to_string(), "--rm".into()];
        args.extend(container_args(&name, &caps, &etc, &run_dir));
        args.extend(image_cmd.iter().cloned());
        let out = podman(&args);
        assert_eq!(
            out.status.code(),
            Some(3),
            "without {missing}: {}",
            text(&out)
        );
        assert!(
            text(&out).contains(&format!("CAP_{missing}")),
            "without {missing}: {}",
            text(&out)
        );
    }
    assert!(!pin_dir.exists());

    // With exactly the documented privileges it intercepts, attributes and judges.
    let mut args = vec!["run".to_string(), "--detach".into()];
    args.extend(container_args(&c.name, &CAPS, &etc, &run_dir));
    args.extend(image_cmd.iter().cloned());
    let out = podman(&args);
    assert!(out.status.success(), "podman run: {}", text(&out));
    wait_ready(&c.name);

    let pull = curl_as_nobody(
        &cg,
        &[
            "-w",
            "\n%{http_code}",
            "-d",
            r#"{"model":"llama3.2"}"#,
            &format!("http://{vip}:8000/api/pull"),
        ],
    );
    let said = String::from_utf8_lossy(&pull.stdout).into_owned();
    let (body, code) = said.rsplit_once('\n').expect("status line");
    assert_eq!(code, "403", "{said}");
    let err: Json = serde_json::from_str(body).expect("Ollama's error shape");
    assert!(
        err["error"]
            .as_str()
            .is_some_and(|e| e.contains("ollama-deny-management")),
        "{err}"
    );
    let chat_body = r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}"#;
    let chat_url = format!("http://{vip}:8000/api/chat");
    let chat = curl_as_nobody(&cg, &["-d", chat_body, &chat_url]);
    assert!(chat.status.success(), "{}", text(&chat));
    assert!(String::from_utf8_lossy(&chat.stdout).contains("\"done\":true"));
    let seen = || {
        server
            .seen
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    };
    assert_eq!(seen(), ["POST /api/chat"]);
    // Both requests were attributed to curl run by nobody, read from the host's /proc.
    let recs = records(&c.name);
    assert_eq!(recs.len(), 2, "{recs:?}");
    for r in &recs {
        assert_eq!(r["uid"], 65534, "{r}");
        assert_eq!(r["exe"], "/usr/bin/curl", "{r}");
    }
    assert_eq!(recs[0]["decision"], "deny");
    assert_eq!(recs[1]["decision"], "allow");
    // The admin socket answers on the host.
    let st = run_ok(
        Command::new(sluice_bin())
            .args(["connections", "--json", "--config"])
            .arg(&on_host),
    );
    let st: Json = serde_json::from_str(&st).expect("status json");
    assert_eq!(
        (st["http_allowed"].as_u64(), st["http_denied"].as_u64()),
        (Some(1), Some(1)),
        "{st}"
    );

    // An upgrade in miniature: the container stops (drain, programs stay pinned), target
    // connections are refused rather than let through, and the next agent takes over.
    let out = podman(&["stop".into(), "--time=20".into(), c.name.clone()]);
    assert!(out.status.success(), "podman stop: {}", text(&out));
    let code = podman(&[
        "inspect".into(),
        "--format={{.State.ExitCode}}".into(),
        c.name.clone(),
    ]);
    assert_eq!(String::from_utf8_lossy(&code.stdout).trim(), "0");
    assert!(pin_dir.exists(), "fail_mode closed keeps the links pinned");
    let refused = curl_as_nobody(&cg, &["-d", chat_body, &chat_url]);
    assert_eq!(refused.status.code(), Some(7), "{}", text(&refused));
    assert_eq!(seen().len(), 1, "a request got past the stopped agent");
    let out = podman(&["start".into(), c.name.clone()]);
    assert!(out.status.success(), "podman start: {}", text(&out));
    wait_ready(&c.name);
    let chat = curl_as_nobody(&cg, &["-d", chat_body, &chat_url]);
    assert!(chat.status.success(), "{}", text(&chat));
    assert_eq!(seen().len(), 2);
    let logs = text(&podman(&["logs".into(), c.name.clone()]));
    assert!(
        logs.contains("replaced links pinned by a previous agent"),
        "{logs}"
    );
}

/// The client side of #13 with a real container runtime: an unmodified client (busybox
/// `wget`) runs in a podman container with a network namespace of its own (`--network=none`:
/// nothing but its loopback) and a cgroup below the test's (`--cgroup-parent`, the
/// `libpod-<id>` shape). It dials the target's address as it would dial Ollama. The agent
/// (on the host) serves that namespace, judges each request with `ollama-safe`, and dials
/// the upstream from inside the container, where a sidecar (busybox `httpd`) answers on the
/// container's own loopback: no route exists from there to anything else. The records name
/// the container by the id podman gave it.
#[test]
#[ignore = "end-to-end: needs root, podman, buildah and busybox-static (cargo xtask test runs it as root)"]
fn a_client_in_a_podman_container_is_intercepted_and_judged() {
    require_root();
    let cg = TestCgroup::new("podman-client");
    let vip = virtual_ip();
    let sidecar = free_port();
    let agent = Agent::start(&AgentSpec {
        cgroup: cg.rel.clone(),
        fail_mode: "closed",
        targets: format!(
            "  - name: ollama\n    match: \"{vip}:11434\"\n    upstream: \"127.0.0.1:{sidecar}\"\n    protocol: http\n    server: ollama\n"
        ),
        listen_v6: false,
        extra: "policies: [\"builtin:ollama-safe\"]\n".into(),
    });

    // The image: busybox alone, and the sidecar's one file.
    let tmp = TempDir::new("podman-client");
    let root = tmp.path().join("rootfs");
    fs::create_dir_all(root.join("bin")).expect("bin");
    fs::create_dir_all(root.join("www/api")).expect("www");
    fs::create_dir_all(root.join("tmp")).expect("tmp");
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox");
    symlink("busybox", root.join("bin/sh")).expect("sh");
    fs::write(root.join("www/api/tags"), "{\"models\":[]}").expect("tags");
    fs::write(
        tmp.path().join("Containerfile"),
        "FROM scratch\nCOPY rootfs/ /\n",
    )
    .expect("Containerfile");
    let tag = unique("client").replace("sluice-test-", "");
    let c = Container {
        image: format!("localhost/sluice-test-client:{tag}"),
        name: unique("client"),
    };
    run_ok(
        Command::new("buildah")
            .args(["bud", "--quiet", "--layers=false", "-t", &c.image, "-f"])
            .arg(tmp.path().join("Containerfile"))
            .arg(tmp.path()),
    );

    // The first connection from a namespace the agent has not prepared is refused (EPERM,
    // fail closed), so the client retries, as a client of a starting server would.
    let script = format!(
        r#"busybox httpd -p 127.0.0.1:{sidecar} -h /www
i=0
until busybox timeout 10 busybox wget -q -O /tmp/tags http://{vip}:11434/api/tags 2>/tmp/first; do
  i=$((i+1)); [ $i -ge 50 ] && {{ echo "never served: $(busybox cat /tmp/first)"; exit 9; }}
  busybox sleep 0.1
done
echo "tags: $(busybox cat /tmp/tags) after $i refused"
if busybox timeout 10 busybox wget -q -O - --header 'Content-Type: application/json' --post-data '{{"model":"llama3"}}' http://{vip}:11434/api/pull 2>/tmp/err; then
  echo "pull: allowed"
else
  echo "pull: refused: $(busybox cat /tmp/err)"
fi"#
    );
    let cidfile = tmp.path().join("cid");
    let mut args: Vec<String> = vec![
        "run".into(),
        "--rm".into(),
        format!("--name={}", c.name),
        format!("--cidfile={}", cidfile.display()),
        "--network=none".into(),
        "--cgroup-manager=cgroupfs".into(),
        format!("--cgroup-parent=/{}", cg.rel),
    ];
    args.extend(test_host_args());
    args.extend([c.image.clone(), "/bin/sh".into(), "-c".into(), script]);
    let out = podman(&args);
    let said = text(&out);
    assert!(out.status.success(), "{said}\n{}", agent.log_text());
    let id = fs::read_to_string(&cidfile)
        .expect("cid")
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "{id}");

    // Served from the sidecar inside the container, through the agent.
    assert!(said.contains("tags: {\"models\":[]}"), "{said}");
    // Refused by ollama-safe in Ollama's shape (busybox prints the status line).
    assert!(
        said.contains("pull: refused") && said.contains("403"),
        "{said}"
    );
    let recs = wait_log_events(&agent, "request", 2);
    let find = |path: &str| {
        recs.iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("no record for {path}: {recs:?}"))
            .clone()
    };
    let (tags, pull) = (find("/api/tags"), find("/api/pull"));
    assert_eq!(tags["decision"], "allow", "{tags}");
    assert_eq!(pull["decision"], "deny", "{pull}");
    for r in [&tags, &pull] {
        assert_eq!(r["container_id"], id.as_str(), "{r}");
        assert_eq!(r["container_runtime"], "podman", "{r}");
        assert_eq!(r["exe"], "/bin/busybox", "{r}");
    }
}
