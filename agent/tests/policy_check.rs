//! `sluice policy check` as a user runs it: the real binary (cargo builds it for this test),
//! no root needed. Broken case files beside a pack fail the check like a broken pack does.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

struct TempPack(PathBuf);

impl TempPack {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-check-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cases")).expect("temp pack dir");
        std::fs::write(
            dir.join("pack.yaml"),
            "apiVersion: sluice.dev/v1alpha1\nkind: PolicyPack\nmetadata: {name: checked}\nspec:\n  rules:\n    - id: allow-tags\n      action: allow\n      match: {servers: [ollama], routes: [ollama.tags]}\n",
        )
        .expect("write pack");
        TempPack(dir)
    }

    fn case(&self, name: &str, text: &str) {
        std::fs::write(self.0.join("cases").join(name), text).expect("write case");
    }
}

impl Drop for TempPack {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn check(path: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["policy", "check"])
        .arg(path)
        .output()
        .expect("run sluice");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = "description: listing is allowed\nserver: ollama\nrequest: {method: GET, path: /api/tags}\nexpect:\n  decision: allow\n  rules: [allow-tags]\n";

#[test]
fn policy_check_validates_the_case_files_beside_the_packs() {
    let pack = TempPack::new("cases");
    pack.case("good.yaml", GOOD);
    let (code, out, err) = check(&pack.0);
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("1 rule(s)") && out.contains("1 case file(s)"),
        "{out}"
    );

    pack.case(
        "typo.yaml",
        "description: x\nrequest: {method: GET, path: /api/tags}\nexpect:\n  decision: allow\n  rules: [allow-tag]\n",
    );
    pack.case(
        "syntax.yaml",
        "description: x\nrequest: {method: GET, path: /api/tags\nexpect: {decision: allow}\n",
    );
    let (code, out, err) = check(&pack.0);
    assert_eq!(code, Some(2), "stdout: {out}\nstderr: {err}");
    let typo = pack.0.join("cases/typo.yaml");
    assert!(
        err.contains(&format!(
            "{}:5:11: expect.rules[0]: unknown rule id \"allow-tag\"",
            typo.display()
        )),
        "{err}"
    );
    let syntax = pack.0.join("cases/syntax.yaml");
    assert!(err.contains(&format!("{}:3:", syntax.display())), "{err}");
    assert!(err.contains("2 of 3 case file(s) broken"), "{err}");
    assert!(!out.contains("ok:"), "{out}");
}

#[test]
fn policy_check_passes_the_shipped_packs_and_their_cases() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let (code, out, err) = check(&root);
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.starts_with("ok: "), "{out}");
}

/// `sluice policy explain` describes a workload by its cgroup path, or by container id and
/// pod uid given directly, and decides on the examples pack's container and pod rules.
#[test]
fn policy_explain_describes_containers_and_pods() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/examples");
    let explain = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["policy", "explain"])
            .arg(&examples)
            .args([
                "--target",
                "example-cluster",
                "--path",
                "/v1/chat/completions",
                "--body",
                r#"{"model":"llama3","messages":[]}"#,
            ])
            .args(args)
            .output()
            .expect("run sluice");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let uid = "6a7f5c1e-2b3d-4c5e-8f90-a1b2c3d4e5f6";
    let other = "f".repeat(64);
    let cgroup = format!(
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{other}.scope",
        uid.replace('-', "_")
    );
    let (code, out, err) = explain(&["--cgroup", &cgroup]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!("container {other} (containerd), pod {uid}")),
        "{out}"
    );
    assert!(
        out.contains("allow by example-allow-pod-inference"),
        "{out}"
    );
    // The short id the pack names selects the full id given here, inside the same pod.
    let (code, out, err) = explain(&[
        "--cgroup",
        &cgroup,
        "--container-id",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "--container-runtime",
        "docker",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("deny by example-deny-one-container"), "{out}");
    // Without a known container or pod, no container rule applies: the default decides.
    let (code, out, _) = explain(&["--uid", "1000"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("container -, pod -"), "{out}");
    assert!(out.contains("deny by target default"), "{out}");
    // A value that could never match what the agent reads is refused.
    let (code, _, err) = explain(&["--pod-uid", &uid.replace('-', "_")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("with dashes"), "{err}");
}

/// `sluice policy test` and `explain` read a sample request the way the live pipeline reads
/// it: keys folded as the server folds them (Ollama reads `Model` as `model`, so a body rule
/// on `/model` sees it), and what the pipeline refuses before policy (colliding keys, a `..`
/// path) is a refusal there too, not a decision on a body no server would see.
#[test]
fn policy_test_and_explain_read_samples_as_the_pipeline_does() {
    let dir = std::env::temp_dir().join(format!("sluice-sample-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("cases")).expect("dir");
    std::fs::write(
        dir.join("pack.yaml"),
        "apiVersion: sluice.dev/v1alpha1\nkind: PolicyPack\nmetadata: {name: sample}\nspec:\n  rules:\n    - id: no-cloud\n      action: deny\n      description: cloud models are not allowed\n      match: {servers: [ollama], body: {/model: \"x:cloud\"}}\n    - id: chat\n      action: allow\n      match: {servers: [ollama], routes: [ollama.chat]}\n",
    )
    .expect("pack");
    let case = |name: &str, text: &str| {
        std::fs::write(dir.join("cases").join(name), text).expect("case");
    };
    // Folded key: the live pipeline hands policy {"model": "x:cloud"}.
    case(
        "folded.yaml",
        "description: Model is model to ollama\nserver: ollama\nrequest: {method: POST, path: /api/chat, body: {Model: \"x:cloud\", messages: []}}\nexpect: {decision: deny, rules: [no-cloud]}\n",
    );
    // Refused before policy: deny by no rule.
    case(
        "dotdot.yaml",
        "description: dot segments are refused\nserver: ollama\nrequest: {method: POST, path: /api/../api/chat, body: {model: llama3}}\nexpect: {decision: deny}\n",
    );
    // A case that expects an allow for a request the pipeline refuses fails, saying why.
    case(
        "wrong.yaml",
        "description: escaped slash\nserver: ollama\nrequest: {method: POST, path: /api%2Fchat, body: {model: llama3}}\nexpect: {decision: allow, rules: [chat]}\n",
    );
    let bin = env!("CARGO_BIN_EXE_sluice");
    let out = Command::new(bin)
        .args(["policy", "test"])
        .arg(&dir)
        .output()
        .expect("run");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("2 passed, 1 failed"), "{text}");
    assert!(
        text.contains("refused before policy (400 sluice_bad_path"),
        "{text}"
    );

    let explain = |body: &str| {
        let out = Command::new(bin)
            .args(["policy", "explain"])
            .arg(&dir)
            .args(["--server", "ollama", "--path", "/api/chat", "--body", body])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = explain(r#"{"Model":"x:cloud","messages":[]}"#);
    assert!(out.contains("deny by no-cloud"), "{out}");
    let out = explain(r#"{"model":"llama3","Model":"x:cloud"}"#);
    assert!(
        out.contains("refused before policy") && out.contains("sluice_ambiguous_json"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn policy_grants_lists_what_an_identity_may_and_may_not_do() {
    let pack = TempPack::new("grants");
    std::fs::write(
        pack.0.join("pack.yaml"),
        r#"apiVersion: sluice.dev/v1alpha1
kind: PolicyPack
metadata: {name: grants}
spec:
  rules:
    - id: ml-eng-llama
      action: allow
      match: {targets: [ollama], models: ["llama3*"], identity: {groups: [ml-eng]}}
    - id: acme-tenant
      action: allow
      match: {identity: {claims: {/tenant: acme}}}
    - id: no-pull-for-tokens
      action: deny
      match: {routes: [ollama.pull], identity: {authenticated: true}}
"#,
    )
    .expect("write pack");
    let grants = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["policy", "grants"])
            .arg(&pack.0)
            .args(args)
            .output()
            .expect("run sluice");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let alice = grants(&["--subject", "alice", "--groups", "ml-eng,ops"]);
    assert!(
        alice.contains("allow     ml-eng-llama (grants): targets: ollama; models: llama3*"),
        "{alice}"
    );
    assert!(alice.contains("deny      no-pull-for-tokens"), "{alice}");
    assert!(!alice.contains("acme-tenant"), "{alice}");
    let acme = grants(&[
        "--subject",
        "svc",
        "--claims",
        r#"{"tenant":"acme"}"#,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&acme).expect("json");
    let ids: Vec<&str> = v["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["rule"].as_str())
        .collect();
    assert_eq!(ids, ["acme-tenant", "no-pull-for-tokens"], "{acme}");
    let nobody = grants(&[]);
    assert!(nobody.contains("rules:     none apply"), "{nobody}");
}
