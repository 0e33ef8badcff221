//! End-to-end: container and pod identity through real interception. Clients run in child
//! cgroups named the way container runtimes and the kubelet name them, under the test's
//! cgroup (a Docker scope; containerd containers in Kubernetes pod slices; a plain session).
//! Policy selects on container id and pod uid; records, `sluice connections` and the
//! connection log carry them, and the metrics do not. The clients stay in the host's network
//! namespace (interception across namespaces is not built yet). Needs root.
use std::{
    os::unix::fs::MetadataExt as _,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sluice_tests::{
    Agent, AgentSpec, NestedCgroup, TempDir, TestCgroup, client_script, free_port, require_root,
    servers, virtual_ip, wait_log_events,
};

const DOCKER_ID: &str = "d0c4e7f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d";
const POD_ID: &str = "c0ffee00112233445566778899aabbccddeeff00112233445566778899aabbcc";
const OTHER_ID: &str = "0ddba11000000000000000000000000000000000000000000000000000000001";
const POD_UID: &str = "6a7f5c1e-2b3d-4c5e-8f90-a1b2c3d4e5f6";
const OTHER_UID: &str = "00000000-1111-2222-3333-444444444444";

fn pod_path(uid: &str, id: &str) -> String {
    format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
        uid.replace('-', "_")
    )
}

/// Allows the Docker container by the short id `docker ps` shows and the pod by its uid;
/// refuses the other pod's container by its full id; anything else meets the default deny.
fn pack(dir: &TempDir) -> std::path::PathBuf {
    write_pack(
        dir,
        "containers",
        &format!(
            r#"    - id: allow-docker-container
      action: allow
      match:
        workload: {{containerIds: ["{short}"], containerRuntimes: [docker]}}
    - id: allow-pod
      action: allow
      match:
        workload: {{podUids: ["{POD_UID}"]}}
    - id: deny-other-container
      description: this container may not call models
      action: deny
      match:
        workload: {{containerIds: ["{OTHER_ID}"]}}
"#,
            short = &DOCKER_ID[..12]
        ),
    )
}

/// The agent for these tests: one OpenAI target on `vip:8000` in front of `server`, the
/// packs at `pack`, and `extra` configuration.
fn agent(
    root: &TestCgroup,
    vip: &str,
    server: &servers::Server,
    pack: &std::path::Path,
    extra: &str,
) -> Agent {
    Agent::start(&AgentSpec {
        cgroup: root.rel.clone(),
        fail_mode: "open",
        targets: format!(
            "  - name: models\n    match: \"{vip}:8000\"\n    upstream: \"{}\"\n    protocol: http\n    server: openai\n",
            server.addr
        ),
        listen_v6: false,
        extra: format!("policies: [\"{}\"]\n{extra}", pack.display()),
    })
}

/// Writes a pack named `name` with `rules` (the YAML under `rules:`) under `dir`.
fn write_pack(dir: &TempDir, name: &str, rules: &str) -> std::path::PathBuf {
    let pack = dir.path().join(name);
    std::fs::create_dir_all(&pack).expect("pack dir");
    std::fs::write(
        pack.join("pack.yaml"),
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: PolicyPack\nmetadata: {{name: {name}}}\nspec:\n  rules:\n{rules}"
        ),
    )
    .expect("write pack");
    pack
}

fn chat() -> String {
    json!({"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

/// POSTs a chat request with curl from inside `cg`; returns (status, body).
fn post_from(cg: &NestedCgroup, vip: &str) -> (u16, String) {
    let out = cg
        .command("curl")
        .args(["-sS", "-m", "10", "-w", "\n%{http_code}"])
        .args(["-H", "content-type: application/json", "--data", &chat()])
        .arg(format!("http://{vip}:8000/v1/chat/completions"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A client in `cg` that sends one request and then holds its connection open for a few
/// seconds, so `sluice connections` has it live.
fn held_client(cg: &NestedCgroup, vip: &str) -> Child {
    let body = chat();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: models\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    cg.command("python3")
        .arg(client_script("raw.py"))
        .args([
            vip,
            "8000",
            &json!([["send", req], ["read", 1], ["sleep", 8], ["close"]]).to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn python3")
}

fn record_for<'a>(recs: &'a [Value], container_id: &str) -> &'a Value {
    recs.iter()
        .find(|r| r["container_id"] == container_id)
        .unwrap_or_else(|| panic!("no record for container {container_id}: {recs:#?}"))
}

#[test]
#[ignore = "end-to-end: needs root, cgroup v2 and the eBPF build"]
fn policy_records_and_connections_know_the_container_and_the_pod() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let policies = TempDir::new("ident-policies");
    let metrics_port = free_port();
    let root = TestCgroup::new("ident");
    let agent = agent(
        &root,
        &vip,
        &server,
        &pack(&policies),
        &format!("metrics_listen: \"127.0.0.1:{metrics_port}\"\n"),
    );
    // Dropped (processes killed, directories removed) before `root`, deepest first.
    let docker = root.nested(&format!("system.slice/docker-{DOCKER_ID}.scope"));
    let pod = root.nested(&pod_path(POD_UID, POD_ID));
    let other = root.nested(&pod_path(OTHER_UID, OTHER_ID));
    let session = root.nested("user.slice/user-1000.slice/session-1.scope");

    let (status, body) = post_from(&docker, &vip);
    assert_eq!(status, 200, "docker container by short id: {body}");
    let (status, body) = post_from(&pod, &vip);
    assert_eq!(status, 200, "container of the allowed pod: {body}");
    let (status, body) = post_from(&other, &vip);
    assert_eq!(status, 403, "other pod's container: {body}");
    assert!(body.contains("deny-other-container"), "{body}");
    let (status, body) = post_from(&session, &vip);
    assert_eq!(status, 403, "not in a container: {body}");
    assert!(body.contains("no policy rule allows"), "{body}");

    // Every record carries the cgroup, container and pod the caller ran in.
    let recs = wait_log_events(&agent, "request", 4);
    assert_eq!(recs.len(), 4, "{}", agent.log_text());
    let r = record_for(&recs, DOCKER_ID);
    assert_eq!(r["decision"], "allow", "{r}");
    assert_eq!(r["rules"], "allow-docker-container", "{r}");
    assert_eq!(r["container_runtime"], "docker", "{r}");
    assert_eq!(r["pod_uid"], "-", "{r}");
    assert_eq!(r["cgroup"], docker.rel.as_str(), "{r}");
    let ino = std::fs::metadata(&docker.dir).expect("cgroup dir").ino();
    assert_eq!(
        r["cgroup_id"], ino,
        "the kernel's id is the cgroup's inode: {r}"
    );
    let r = record_for(&recs, POD_ID);
    assert_eq!(r["decision"], "allow", "{r}");
    assert_eq!(r["rules"], "allow-pod", "{r}");
    assert_eq!(r["container_runtime"], "containerd", "{r}");
    assert_eq!(r["pod_uid"], POD_UID, "{r}");
    assert_eq!(r["cgroup"], pod.rel.as_str(), "{r}");
    let r = record_for(&recs, OTHER_ID);
    assert_eq!(r["decision"], "deny", "{r}");
    assert_eq!(r["rules"], "deny-other-container", "{r}");
    assert_eq!(r["pod_uid"], OTHER_UID, "{r}");
    let r = record_for(&recs, "-");
    assert_eq!(r["decision"], "deny", "{r}");
    assert_eq!(r["rules"], "(target default)", "{r}");
    assert_eq!(r["pod_uid"], "-", "{r}");
    assert_eq!(r["cgroup"], session.rel.as_str(), "{r}");

    // Live connections show the container (short id) and the pod.
    let mut clients = [held_client(&docker, &vip), held_client(&pod, &vip)];
    let deadline = Instant::now() + Duration::from_secs(10);
    let live = loop {
        let st = agent.status().expect("status");
        let conns = st["connections"].as_array().cloned().unwrap_or_default();
        if conns.len() >= 2 || Instant::now() > deadline {
            break conns;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(live.len(), 2, "{live:#?}");
    let of = |id: &str| {
        live.iter()
            .find(|c| c["workload"]["container"]["id"] == id)
            .unwrap_or_else(|| panic!("no live connection of {id}: {live:#?}"))
            .clone()
    };
    assert_eq!(of(DOCKER_ID)["workload"]["container"]["runtime"], "docker");
    assert_eq!(of(POD_ID)["workload"]["pod_uid"], POD_UID);
    assert_eq!(of(POD_ID)["workload"]["cgroup"], pod.rel.as_str());
    let out = agent.sluice(&["connections"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.contains("CONTAINER") && header.contains("POD"),
        "{table}"
    );
    let docker_line = table
        .lines()
        .find(|l| l.contains(&DOCKER_ID[..12]))
        .unwrap_or_else(|| panic!("no row with the docker short id: {table}"));
    assert!(!docker_line.contains(DOCKER_ID), "short id only: {table}");
    let pod_line = table
        .lines()
        .find(|l| l.contains(&POD_ID[..12]))
        .unwrap_or_else(|| panic!("no row with the pod's container: {table}"));
    assert!(pod_line.contains(POD_UID), "{table}");
    for c in &mut clients {
        let _ = c.wait();
    }

    // Metrics count requests by target, operation, decision and rule: never by container or
    // pod (one series per container would grow without bound).
    let metrics = sluice_tests::scrape_metrics(metrics_port);
    assert!(
        metrics.contains("sluice_requests_total{"),
        "metrics served: {metrics}"
    );
    for id in [
        DOCKER_ID,
        &DOCKER_ID[..12],
        POD_ID,
        POD_UID,
        OTHER_ID,
        OTHER_UID,
    ] {
        assert!(!metrics.contains(id), "{id} in the metrics");
    }
    for label in [
        "container",
        "container_id",
        "runtime",
        "pod",
        "pod_uid",
        "cgroup",
    ] {
        assert!(
            !metrics.contains(&format!("{label}=\"")),
            "a {label} label: {metrics}"
        );
    }
}

/// Without a readable identity nothing is guessed: a client whose container component is
/// malformed (63 hex digits, upper case, conmon's scope) is not a container, and rules that
/// select on containers do not match it.
#[test]
#[ignore = "end-to-end: needs root, cgroup v2 and the eBPF build"]
fn look_alike_cgroups_are_not_containers() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let policies = TempDir::new("ident-lookalike");
    let root = TestCgroup::new("lookalike");
    let pack = write_pack(
        &policies,
        "any",
        "    - id: any-container\n      action: allow\n      match:\n        workload: {containerIds: [\"*\"]}\n",
    );
    let agent = agent(&root, &vip, &server, &pack, "");
    let shapes = [
        format!("system.slice/docker-{}.scope", &DOCKER_ID[..63]),
        format!(
            "system.slice/docker-{}.scope",
            DOCKER_ID.to_ascii_uppercase()
        ),
        format!("machine.slice/libpod-conmon-{DOCKER_ID}.scope"),
    ];
    for shape in &shapes {
        let cg = root.nested(shape);
        let (status, body) = post_from(&cg, &vip);
        assert_eq!(status, 403, "{shape}: {body}");
        drop(cg);
    }
    let recs = wait_log_events(&agent, "request", shapes.len());
    assert_eq!(recs.len(), shapes.len(), "{}", agent.log_text());
    for r in &recs {
        assert_eq!(r["container_id"], "-", "{r}");
        assert_eq!(r["decision"], "deny", "{r}");
        assert!(
            r["cgroup"].as_str().is_some_and(|c| c.starts_with('/')),
            "the path itself is known: {r}"
        );
    }
}

/// Callers without a token named by their user and their systemd unit: a unit-shaped child
/// cgroup is allowed by `units`, a process running as `nobody` by `users`, and neither a
/// root process nor another unit is; records carry both names.
#[test]
#[ignore = "end-to-end: needs root, cgroup v2 and the eBPF build"]
fn users_and_systemd_units_select_callers_without_a_token() {
    require_root();
    let server = servers::http("127.0.0.1:0");
    let vip = virtual_ip();
    let policies = TempDir::new("names-policies");
    let pack = write_pack(
        &policies,
        "names",
        r#"    - id: chat-unit
      action: allow
      match: {workload: {units: ["chat.service"]}}
    - id: nobody-user
      action: allow
      match: {workload: {users: [nobody]}}
"#,
    );
    let root = TestCgroup::new("names");
    let agent = agent(&root, &vip, &server, &pack, "");
    let chat_unit = root.nested("system.slice/chat.service");
    let other_unit = root.nested("system.slice/other.service");

    let (status, body) = post_from(&chat_unit, &vip);
    assert_eq!(status, 200, "the allowed unit: {body}");
    let (status, body) = post_from(&other_unit, &vip);
    assert_eq!(status, 403, "another unit, as root: {body}");
    // The same unit, but the process runs as `nobody` (uid 65534 on Debian).
    let out = other_unit
        .command("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args([
            "curl",
            "-sS",
            "-m",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["-H", "content-type: application/json", "--data", &chat()])
        .arg(format!("http://{vip}:8000/v1/chat/completions"))
        .output()
        .expect("setpriv curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "nobody, by user name: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let recs = wait_log_events(&agent, "request", 3);
    assert_eq!(recs.len(), 3, "{}", agent.log_text());
    let by_rule = |rule: &str| {
        recs.iter()
            .find(|r| r["rules"] == rule)
            .unwrap_or_else(|| panic!("no record decided by {rule}: {recs:#?}"))
    };
    let r = by_rule("chat-unit");
    assert_eq!(
        (&r["unit"], &r["user"]),
        (&json!("chat.service"), &json!("root")),
        "{r}"
    );
    let r = by_rule("nobody-user");
    assert_eq!(
        (&r["unit"], &r["user"]),
        (&json!("other.service"), &json!("nobody")),
        "{r}"
    );
    assert_eq!(r["uid"], 65534, "{r}");
    let r = by_rule("(target default)");
    assert_eq!(
        (&r["unit"], &r["decision"]),
        (&json!("other.service"), &json!("deny")),
        "{r}"
    );
    // The later one first: the first made the `system.slice` both are in.
    drop((other_unit, chat_unit));
}
