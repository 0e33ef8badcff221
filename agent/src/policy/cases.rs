//! Policy test cases: YAML files beside a pack (`<pack>/cases/*.yaml`), each a request in and
//! the decision and rule ids expected out. `sluice policy test` runs them, so teams can gate
//! policy changes in their own CI.
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Action, Error, Policy, Query, load_paths, pack::pack_files};
use crate::{adapter::Server, workload::Workload};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub description: String,
    #[serde(default = "default_target")]
    pub target: String,
    #[serde(default)]
    pub server: Server,
    /// The target's default action in this case.
    #[serde(default)]
    pub default: Action,
    pub request: CaseRequest,
    /// The calling workload, if the case is about one.
    #[serde(default)]
    pub workload: Option<CaseWorkload>,
    pub expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseWorkload {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub comm: String,
    #[serde(default)]
    pub exe: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub body: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub decision: Action,
    #[serde(default)]
    pub rules: Vec<String>,
}

fn default_target() -> String {
    "default".into()
}

#[derive(Debug)]
pub struct Outcome {
    pub file: PathBuf,
    pub description: String,
    pub failure: Option<String>,
}

/// Case files for the packs under `path`: `cases/*.yaml` beside each pack that loading
/// would find there.
pub fn case_files(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = pack_files(path)
        .unwrap_or_default()
        .iter()
        .filter_map(|pack| std::fs::read_dir(pack.parent()?.join("cases")).ok())
        .flat_map(|rd| rd.flatten().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// Runs one case file against `policy`.
pub fn run_case(policy: &Policy, file: &Path) -> Outcome {
    let fail = |description: String, msg: String| Outcome {
        file: file.to_path_buf(),
        description,
        failure: Some(msg),
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return fail(String::new(), format!("cannot read: {e}")),
    };
    let case: Case = match serde_norway::from_str(&text) {
        Ok(c) => c,
        Err(e) => {
            let loc = e
                .location()
                .map_or(String::new(), |l| format!(":{}:{}", l.line(), l.column()));
            return fail(String::new(), format!("{}{loc}: {e}", file.display()));
        }
    };
    let method = case.request.method.to_ascii_uppercase();
    let workload = case
        .workload
        .as_ref()
        .map(|w| Workload::described(w.uid, w.gid, w.comm.clone(), w.exe.clone()));
    let (op, decision) = policy.decide(&Query {
        target: &case.target,
        server: case.server,
        method: &method,
        path: &case.request.path,
        body: case.request.body.as_ref(),
        default: case.default,
        workload: workload.as_ref(),
    });
    let got_rules = decision.rule_ids();
    if decision.action() != case.expect.decision || got_rules != case.expect.rules {
        return fail(
            case.description,
            format!(
                "expected {:?} by {:?}, got {:?} by {:?} (operation {} {}, route {})",
                case.expect.decision,
                case.expect.rules,
                decision.action(),
                got_rules,
                op.class,
                op.model.as_deref().unwrap_or("-"),
                op.route
            ),
        );
    }
    Outcome {
        file: file.to_path_buf(),
        description: case.description,
        failure: None,
    }
}

/// Validates every pack under `paths`, then runs each case file against its own pack
/// (`<pack>/cases/<case>.yaml`), so a pack's cases hold whatever else is loaded beside it.
pub fn run_all(paths: &[PathBuf]) -> Result<Vec<Outcome>, Error> {
    load_paths(paths)?;
    let mut packs: std::collections::HashMap<PathBuf, Policy> = Default::default();
    let mut out = Vec::new();
    for file in paths.iter().flat_map(|p| case_files(p)) {
        let dir = file
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        if !packs.contains_key(&dir) {
            let p = load_paths(std::slice::from_ref(&dir))?;
            packs.insert(dir.clone(), p);
        }
        if let Some(p) = packs.get(&dir) {
            out.push(run_case(p, &file));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shipped pack's cases, as `sluice policy test policies` runs them.
    #[test]
    fn shipped_policy_cases_pass() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let outcomes = run_all(&[root]).expect("shipped packs load");
        assert!(outcomes.len() >= 15, "only {} cases found", outcomes.len());
        let failures: Vec<String> = outcomes
            .iter()
            .filter_map(|o| {
                o.failure
                    .as_ref()
                    .map(|f| format!("{}: {f}", o.file.display()))
            })
            .collect();
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn broken_pack_reports_file_line_column() {
        let dir = std::env::temp_dir().join(format!("sluice-pack-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("pack.yaml");
        std::fs::write(
            &f,
            "apiVersion: sluice.dev/v1alpha1\nkind: PolicyPack\nmetadata: {name: x}\nspec:\n  rules:\n    - id: a\n      action: deny\n      match:\n        operations: [exfiltrate]\n",
        )
        .expect("write");
        let err = load_paths(std::slice::from_ref(&dir)).expect_err("bad operation");
        let msg = err.to_string();
        assert!(msg.contains("pack.yaml:9:"), "{msg}");
        assert!(
            msg.contains("unknown variant `exfiltrate`, expected one of"),
            "{msg}"
        );
        std::fs::write(&f, "apiVersion: sluice.dev/v2\nkind: PolicyPack\n").expect("write");
        let msg = load_paths(std::slice::from_ref(&dir))
            .expect_err("bad version")
            .to_string();
        assert!(msg.contains("pack.yaml:1:"), "{msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
