//! Policy test cases: YAML files beside a pack (`<pack>/cases/*.yaml`), each a request in and
//! the decision and rule ids expected out. `sluice policy test` runs them, so teams can gate
//! policy changes in their own CI. `sluice policy check` validates them as it validates packs:
//! YAML syntax, unknown fields, enum values and rule ids the pack does not define are errors
//! with file:line:column.
use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Deserializer};

use super::{
    Action, Error, Policy, Query,
    container::{FullContainerId, PodUid},
    load_paths,
    pack::pack_files,
    pack::syntax_error,
};
use crate::{
    adapter::Server,
    workload::{Container, Runtime, Workload},
};

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
    /// The verified token's identity, if the case is about one (none: unauthenticated).
    #[serde(default)]
    pub identity: Option<CaseIdentity>,
    pub expect: Expect,
    /// What masking must do for this request (`masking:` in docs/policy.md, "Masking").
    #[serde(default)]
    pub masking: Option<CaseMasking>,
}

/// A case's masking expectations: which masking rules apply, and what a sample text becomes
/// under them. Pseudonyms in `output` are made with the all-zero key (a live agent's key is
/// random per start), so they are stable across runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseMasking {
    /// Every masking rule that applies, in load order.
    #[serde(default)]
    pub rules: Option<Vec<RuleId>>,
    /// The direction `input` is masked in.
    #[serde(default = "request_direction")]
    pub direction: super::masking::Direction,
    /// A text masked with the plan of `direction` (JSON bodies are masked string by string
    /// the same way).
    #[serde(default)]
    pub input: Option<String>,
    /// What `input` must become.
    #[serde(default)]
    pub output: Option<String>,
    /// Findings per detector `input` must give (detectors not named: none).
    #[serde(default)]
    pub counts: Option<std::collections::BTreeMap<String, u64>>,
    /// The `block` detector `input` must be refused for.
    #[serde(default)]
    pub blocked: Option<String>,
}

fn request_direction() -> super::masking::Direction {
    super::masking::Direction::Request
}

/// What a verified token would name: the case stands for a request whose token passed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseIdentity {
    #[serde(default)]
    pub issuer: String,
    pub subject: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Other claims of the token's payload, for `match.identity.claims`.
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl CaseIdentity {
    pub fn principal(&self) -> crate::identity::Principal {
        crate::identity::Principal {
            issuer: self.issuer.as_str().into(),
            subject: self.subject.clone(),
            groups: self.groups.clone(),
            claims: std::sync::Arc::new(serde_json::Value::Object(self.claims.clone())),
        }
    }
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
    /// The uid's user name on the host.
    #[serde(default)]
    pub user: Option<String>,
    /// The cgroup v2 path; the unit, container and pod are read from it as the agent reads
    /// them.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// Given here, it replaces the one the cgroup path names.
    #[serde(default)]
    pub container: Option<CaseContainer>,
    /// Given here, it replaces the one the cgroup path names.
    #[serde(default, rename = "podUid")]
    pub pod_uid: Option<PodUid>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseContainer {
    pub id: FullContainerId,
    #[serde(default)]
    pub runtime: Option<Runtime>,
}

impl CaseWorkload {
    /// The workload the case describes.
    pub fn workload(&self) -> Workload {
        let container = self.container.as_ref().map(|c| Container {
            id: c.id.0.clone(),
            runtime: c.runtime,
        });
        Workload::described(self.uid, self.gid, self.comm.clone(), self.exe.clone())
            .named(self.user.clone())
            .placed(
                self.cgroup.as_deref(),
                container,
                self.pod_uid.as_ref().map(|u| u.0.clone()),
            )
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// The protocol switch the request asks for (`websocket`, `h2c`, `connect`).
    #[serde(default)]
    pub switch: Option<super::Switch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub decision: Expected,
    #[serde(default)]
    pub rules: Vec<RuleId>,
}

/// The decision a case expects: as policy files spell actions, a held request as
/// `require-approval` (or `hold`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Expected {
    #[serde(rename = "allow")]
    Allow,
    #[serde(rename = "deny")]
    Deny,
    #[serde(rename = "require-approval", alias = "hold")]
    Hold,
}

impl Expected {
    /// As `Decision::label` spells it.
    pub fn label(self) -> &'static str {
        match self {
            Expected::Allow => "allow",
            Expected::Deny => "deny",
            Expected::Hold => "hold",
        }
    }
}

/// A rule id a case expects; while `parse_case` runs it must be one its pack defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleId(pub String);

thread_local! {
    /// The rule ids of the pack whose case is being parsed. Checked inside deserialization,
    /// not after it, because only there does the YAML parser know where the value stands and
    /// attach line:column to the error; serde offers no other way to hand a value's
    /// deserializer this context through the derived structs above it.
    static KNOWN_RULES: RefCell<Option<HashSet<String>>> = const { RefCell::new(None) };
}

impl<'de> Deserialize<'de> for RuleId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RuleId;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a rule id")
            }
            fn visit_str<E: serde::de::Error>(self, id: &str) -> Result<RuleId, E> {
                KNOWN_RULES.with_borrow(|known| match known {
                    Some(known) if !known.contains(id) => {
                        let mut ids: Vec<&str> = known.iter().map(String::as_str).collect();
                        ids.sort_unstable();
                        Err(E::custom(format!(
                            "unknown rule id {id:?}; the pack defines: {}",
                            ids.join(", ")
                        )))
                    }
                    _ => Ok(RuleId(id.to_string())),
                })
            }
        }
        d.deserialize_str(Visitor)
    }
}

fn default_target() -> String {
    "default".into()
}

#[derive(Debug)]
pub struct Outcome {
    pub file: PathBuf,
    pub description: String,
    pub failure: Option<String>,
    /// Detectors the case's `masking.input` found (so a pack's custom detectors can be
    /// required to be tested by its cases).
    pub found: Vec<String>,
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

/// Parses one case file; `path` names it in errors. With `known_rules`, the rule ids it
/// expects must be among them.
pub fn parse_case(
    text: &str,
    path: &Path,
    known_rules: Option<&HashSet<String>>,
) -> Result<Case, Error> {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            KNOWN_RULES.set(None);
        }
    }
    KNOWN_RULES.set(known_rules.cloned());
    let _reset = Reset;
    serde_norway::from_str(text).map_err(|e| syntax_error(path, text, &e))
}

fn rule_ids(policy: &Policy) -> HashSet<String> {
    policy
        .rules
        .iter()
        .map(|r| r.id.clone())
        .chain(policy.masking.rules.iter().map(|r| r.id.clone()))
        .collect()
}

/// Runs one case file against `policy`.
pub fn run_case(policy: &Policy, file: &Path) -> Outcome {
    let fail = |description: String, msg: String| Outcome {
        file: file.to_path_buf(),
        description,
        failure: Some(msg),
        found: Vec::new(),
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return fail(String::new(), format!("cannot read: {e}")),
    };
    let case = match parse_case(&text, file, Some(&rule_ids(policy))) {
        Ok(c) => c,
        Err(e) => return fail(String::new(), e.to_string()),
    };
    let method = case.request.method.to_ascii_uppercase();
    let workload = case.workload.as_ref().map(CaseWorkload::workload);
    let principal = case.identity.as_ref().map(CaseIdentity::principal);
    // Read as a live request is read: the decoded path, the body as the server parses it.
    let body = case
        .request
        .body
        .as_ref()
        .map(|b| serde_json::to_vec(b).unwrap_or_default());
    let (path, body) = match crate::pipeline::decode::sample(
        case.server,
        &method,
        &case.request.path,
        body.as_deref(),
        &policy.body_roots,
    ) {
        Ok(read) => read,
        // Refused before policy: what the client gets is a refusal, which a case states
        // as deny by no rule.
        Err(_) if case.expect.decision == Expected::Deny && case.expect.rules.is_empty() => {
            return Outcome {
                file: file.to_path_buf(),
                description: case.description,
                failure: None,
                found: Vec::new(),
            };
        }
        Err(r) => {
            return fail(
                case.description,
                format!(
                    "expected {:?} by {:?}, but a live request would be refused before policy ({} {}: {})",
                    case.expect.decision,
                    case.expect
                        .rules
                        .iter()
                        .map(|r| r.0.as_str())
                        .collect::<Vec<_>>(),
                    r.status.as_u16(),
                    r.code,
                    r.message
                ),
            );
        }
    };
    let (op, decision) = policy.decide(&Query {
        target: &case.target,
        server: case.server,
        method: &method,
        path: &path,
        body: body.as_ref(),
        default: case.default,
        workload: workload.as_ref(),
        identity: principal.as_ref(),
        switch: case.request.switch,
    });
    let got_rules = decision.rule_ids();
    let want_rules: Vec<&str> = case.expect.rules.iter().map(|r| r.0.as_str()).collect();
    if decision.label() != case.expect.decision.label() || got_rules != want_rules {
        return fail(
            case.description,
            format!(
                "expected {} by {:?}, got {} by {:?} (operation {} {}, route {})",
                case.expect.decision.label(),
                want_rules,
                decision.label(),
                got_rules,
                op.class,
                op.model.as_deref().unwrap_or("-"),
                op.route
            ),
        );
    }
    if let Some(m) = &case.masking {
        let q = Query {
            target: &case.target,
            server: case.server,
            method: &method,
            path: &path,
            body: body.as_ref(),
            default: case.default,
            workload: workload.as_ref(),
            identity: principal.as_ref(),
            switch: case.request.switch,
        };
        match check_masking(policy, m, &policy.masking.for_query(&q, &op)) {
            Ok(found) => {
                return Outcome {
                    file: file.to_path_buf(),
                    description: case.description,
                    failure: None,
                    found,
                };
            }
            Err(msg) => return fail(case.description, msg),
        }
    }
    Outcome {
        file: file.to_path_buf(),
        description: case.description,
        failure: None,
        found: Vec::new(),
    }
}

/// Checks a case's masking expectations against what applies.
fn check_masking(
    policy: &Policy,
    want: &CaseMasking,
    got: &super::masking::Applied,
) -> Result<Vec<String>, String> {
    use super::masking::Direction;
    use crate::mask::{PseudonymKey, Verdict, body};
    if let Some(rules) = &want.rules {
        let rules: Vec<&str> = rules.iter().map(|r| r.0.as_str()).collect();
        if rules != got.rules {
            return Err(format!(
                "expected masking rules {rules:?}, got {:?}",
                got.rules
            ));
        }
    }
    let Some(input) = &want.input else {
        return Ok(Vec::new());
    };
    let (Some(sc), true) = (policy.masking.scanner(), want.direction != Direction::Both) else {
        return Err(
            "masking.input needs a pack with masking and a direction (request or response)".into(),
        );
    };
    let (req, resp) = got.plans(sc, &PseudonymKey::new([0; 32]));
    let dir = if want.direction == Direction::Request {
        "request"
    } else {
        "response"
    };
    let Some(plan) = (if want.direction == Direction::Request {
        req
    } else {
        resp
    }) else {
        return Err(format!("no masking rule covers this request's {dir}"));
    };
    let m = body::mask_body(&plan, body::Layout::Text, input.as_bytes(), None)
        .map_err(|r| format!("masking.input could not be scanned ({})", r.as_str()))?;
    let verdict = m.verdict(&plan);
    let out = m.body.as_deref().unwrap_or(input.as_bytes());
    let out = String::from_utf8_lossy(out);
    if let Some(detector) = &want.blocked {
        if verdict
            != (Verdict::Blocked {
                detector: detector.clone(),
            })
        {
            return Err(format!(
                "expected the {dir} to be blocked by {detector}, got {verdict:?}"
            ));
        }
    } else if let Verdict::Blocked { detector } = &verdict {
        return Err(format!("the {dir} would be blocked by {detector}"));
    }
    if let Some(output) = &want.output
        && *output != out
    {
        return Err(format!("expected masked {dir} {output:?}, got {out:?}"));
    }
    let found: std::collections::BTreeMap<String, u64> = m
        .counts
        .per_detector
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (plan.scanner().name(i).to_string(), *n))
        .collect();
    if let Some(counts) = &want.counts
        && *counts != found
    {
        return Err(format!("expected counts {counts:?}, got {found:?}"));
    }
    Ok(found.into_keys().collect())
}

/// Every case file under `paths`, each with its own pack (`<pack>/cases/<case>.yaml`): a
/// pack's cases hold whatever else is loaded beside it.
fn cases_with_packs(paths: &[PathBuf]) -> Result<Vec<(PathBuf, std::rc::Rc<Policy>)>, Error> {
    let mut packs: HashMap<PathBuf, std::rc::Rc<Policy>> = HashMap::new();
    let mut out = Vec::new();
    for file in paths.iter().flat_map(|p| case_files(p)) {
        let dir = file
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let pack = match packs.get(&dir) {
            Some(p) => p.clone(),
            None => {
                let p = std::rc::Rc::new(load_paths(std::slice::from_ref(&dir))?);
                packs.insert(dir, p.clone());
                p
            }
        };
        out.push((file, pack));
    }
    Ok(out)
}

/// Validates every pack under `paths`, then runs each case file against its own pack.
pub fn run_all(paths: &[PathBuf]) -> Result<Vec<Outcome>, Error> {
    load_paths(paths)?;
    let cases = cases_with_packs(paths)?;
    let mut outcomes: Vec<Outcome> = cases
        .iter()
        .map(|(file, pack)| run_case(pack, file))
        .collect();
    let untested = untested_detectors(paths, &outcomes)?;
    outcomes.extend(untested);
    Ok(outcomes)
}

/// A failure for every custom detector that no case of its own pack finds: a detector is
/// tested by its pack's cases, or the pack's tests fail.
fn untested_detectors(paths: &[PathBuf], outcomes: &[Outcome]) -> Result<Vec<Outcome>, Error> {
    let mut out = Vec::new();
    for pack in paths.iter().flat_map(|p| pack_files(p).unwrap_or_default()) {
        let Some(dir) = pack.parent() else { continue };
        let policy = load_paths(&[dir.to_path_buf()])?;
        let found: HashSet<&str> = outcomes
            .iter()
            .filter(|o| o.file.parent().and_then(Path::parent) == Some(dir))
            .flat_map(|o| o.found.iter().map(String::as_str))
            .collect();
        for name in policy.masking.custom_names() {
            if !found.contains(name) {
                out.push(Outcome {
                    file: pack.clone(),
                    description: format!("custom detector {name} is tested"),
                    failure: Some(format!(
                        "no case of this pack finds {name}: add a case whose masking.input holds a value it must find"
                    )),
                    found: Vec::new(),
                });
            }
        }
    }
    Ok(out)
}

/// What `policy check` found in the case files.
#[derive(Debug, Default)]
pub struct Checked {
    pub files: usize,
    /// One error per broken file, each with file:line:column where the YAML parser knows it.
    pub errors: Vec<Error>,
}

/// Validates every case file beside the packs under `paths` without running it: syntax,
/// fields, enum values, and rule ids against its own pack. The packs must load.
pub fn check_all(paths: &[PathBuf]) -> Result<Checked, Error> {
    let mut checked = Checked::default();
    for (file, pack) in cases_with_packs(paths)? {
        checked.files += 1;
        let result = std::fs::read_to_string(&file)
            .map_err(|source| Error::Read {
                path: file.clone(),
                source,
            })
            .and_then(|text| parse_case(&text, &file, Some(&rule_ids(&pack))));
        if let Err(e) = result {
            checked.errors.push(e);
        }
    }
    Ok(checked)
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
    fn cases_state_a_tokens_identity() {
        let case = |groups: &str, decision: &str, rules: &str| {
            format!(
                "description: x\nrequest: {{method: POST, path: /v1/chat/completions, body: {{model: m}}}}\nidentity: {{issuer: \"http://127.0.0.1:1\", subject: alice, groups: {groups}}}\nexpect: {{decision: {decision}, rules: {rules}}}\n"
            )
        };
        let cases = [
            case("[ml-eng]", "allow", "[ml-eng]"),
            case("[ops]", "deny", "[]"),
            "description: no token\nrequest: {method: POST, path: /v1/chat/completions}\nexpect: {decision: deny}\n".into(),
        ];
        let rules =
            "    - id: ml-eng\n      action: allow\n      match: {identity: {groups: [ml-eng]}}\n";
        assert_eq!(failures("id", rules, &cases), (3, vec![]));
    }

    /// An Ollama body's keys are read folded (Go matches them case-insensitively), and so
    /// is a pointer written with capitals: before, `/Options/Num_Ctx` never matched there.
    /// An exact-key server's body is not folded, so there the pointer still means what it
    /// says.
    #[test]
    fn pointers_with_capitals_match_a_case_folding_servers_body() {
        let case = |server: &str, path: &str, options: &str, decision: &str, rule: &str| {
            format!(
                "description: x\nserver: {server}\nrequest: {{method: POST, path: {path}, body: {{model: m, {options}}}}}\nexpect: {{decision: {decision}, rules: [{rule}]}}\n"
            )
        };
        let chat = "/api/chat";
        let cases = [
            case(
                "ollama",
                chat,
                "options: {num_ctx: 4096}",
                "deny",
                "big-ctx",
            ),
            case(
                "ollama",
                chat,
                "OPTIONS: {num_ctx: 4096}",
                "deny",
                "big-ctx",
            ),
            case("ollama", chat, "options: {num_ctx: 2048}", "allow", "all"),
            case(
                "openai",
                "/v1/chat/completions",
                "options: {num_ctx: 4096}",
                "allow",
                "all",
            ),
            case(
                "openai",
                "/v1/chat/completions",
                "Options: {Num_Ctx: 4096}",
                "deny",
                "big-ctx",
            ),
        ];
        let rules = "    - id: all\n      action: allow\n      match: {}\n    - id: big-ctx\n      action: deny\n      match: {body: {/Options/Num_Ctx: 4096}}\n";
        assert_eq!(failures("fold", rules, &cases), (cases.len(), vec![]));
    }

    /// Runs `cases` against a temporary pack of `rules`: how many ran, and their failures.
    fn failures(tag: &str, rules: &str, cases: &[String]) -> (usize, Vec<String>) {
        let named: Vec<(String, &str)> = cases
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("{i}.yaml"), c.as_str()))
            .collect();
        let named: Vec<(&str, &str)> = named.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        let dir = pack_dir(tag, rules, &named);
        let outcomes = run_all(std::slice::from_ref(&dir)).expect("pack loads");
        let _ = std::fs::remove_dir_all(&dir);
        let failed = outcomes.iter().filter_map(|o| o.failure.clone()).collect();
        (outcomes.len(), failed)
    }

    /// A temporary pack directory with one rule `only-rule` and the given case files.
    fn pack_with_cases(tag: &str, cases: &[(&str, &str)]) -> PathBuf {
        let only = "    - id: only-rule\n      action: allow\n      match: {servers: [ollama]}\n";
        pack_dir(tag, only, cases)
    }

    /// A temporary pack directory: pack `p` with `rules` (items of its rule list) and the
    /// given case files.
    fn pack_dir(tag: &str, rules: &str, cases: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-cases-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cases")).expect("dir");
        std::fs::write(
            dir.join("pack.yaml"),
            format!("apiVersion: sluice.dev/v1alpha1\nkind: PolicyPack\nmetadata: {{name: p}}\nspec:\n  rules:\n{rules}"),
        )
        .expect("write pack");
        for (name, text) in cases {
            std::fs::write(dir.join("cases").join(name), text).expect("write case");
        }
        dir
    }

    const GOOD_CASE: &str = "description: ok\nserver: ollama\nrequest:\n  method: GET\n  path: /api/tags\nexpect:\n  decision: allow\n  rules: [only-rule]\n";

    #[test]
    fn check_accepts_the_shipped_cases_and_a_good_one() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let checked = check_all(&[root]).expect("shipped packs load");
        assert!(checked.files >= 15, "only {} case files", checked.files);
        assert!(checked.errors.is_empty(), "{:#?}", checked.errors);
        let dir = pack_with_cases("good", &[("a.yaml", GOOD_CASE)]);
        let checked = check_all(std::slice::from_ref(&dir)).expect("pack loads");
        assert_eq!(
            (checked.files, checked.errors.len()),
            (1, 0),
            "{:?}",
            checked.errors
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn check_reports_each_broken_case_with_file_line_column() {
        let broken = [
            // YAML syntax: an unclosed flow sequence.
            (
                "1-syntax.yaml",
                "description: x\nrequest: {method: GET, path: /\nexpect: {decision: allow}\n",
                ":3:",
                "did not find expected",
            ),
            // An unknown field, e.g. a typo of `expect`.
            (
                "2-field.yaml",
                "description: x\nrequest: {method: GET, path: /}\nexpct: {decision: allow}\n",
                ":3:1:",
                "unknown field `expct`",
            ),
            // An enum value no server has.
            (
                "3-server.yaml",
                "description: x\nserver: olama\nrequest: {method: GET, path: /}\nexpect: {decision: allow}\n",
                ":2:9:",
                "unknown variant `olama`",
            ),
            (
                "4-decision.yaml",
                "description: x\nrequest: {method: GET, path: /}\nexpect:\n  decision: permit\n",
                ":4:13:",
                "unknown variant `permit`",
            ),
            // A rule id the pack does not define, pointed at exactly.
            (
                "5-rule.yaml",
                "description: x\nrequest: {method: GET, path: /}\nexpect:\n  decision: allow\n  rules: [only-rule, no-such-rule]\n",
                ":5:22:",
                "unknown rule id \"no-such-rule\"; the pack defines: only-rule",
            ),
            // A workload's container is named by its full id, its pod uid with dashes.
            (
                "7-container.yaml",
                "description: x\nrequest: {method: GET, path: /}\nworkload:\n  container: {id: 0123456789ab}\nexpect: {decision: allow}\n",
                ":4:19:",
                "the full 64 lower-case hex digits",
            ),
            (
                "8-pod.yaml",
                "description: x\nrequest: {method: GET, path: /}\nworkload:\n  podUid: 6a7f5c1e_2b3d_4c5e_8f90_a1b2c3d4e5f6\nexpect: {decision: allow}\n",
                ":4:11:",
                "with dashes",
            ),
            (
                "9-runtime.yaml",
                "description: x\nrequest: {method: GET, path: /}\nworkload:\n  container: {id: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef, runtime: lxc}\nexpect: {decision: allow}\n",
                ":4:",
                "unknown variant `lxc`",
            ),
        ];
        let files: Vec<(&str, &str)> = broken.iter().map(|(n, t, _, _)| (*n, *t)).collect();
        let mut all = files.clone();
        all.push(("6-good.yaml", GOOD_CASE));
        let dir = pack_with_cases("broken", &all);
        let checked = check_all(std::slice::from_ref(&dir)).expect("pack loads");
        assert_eq!(checked.files, broken.len() + 1);
        let msgs: Vec<String> = checked.errors.iter().map(ToString::to_string).collect();
        assert_eq!(msgs.len(), broken.len(), "{msgs:#?}");
        for ((name, _, at, what), msg) in broken.iter().zip(&msgs) {
            assert!(
                msg.contains(&format!("{name}{at}")),
                "{name}: want {at} in {msg}"
            );
            assert!(msg.contains(what), "{name}: want {what:?} in {msg}");
        }
        // `policy test` reports the same errors as failures instead of running the case.
        let outcomes = run_all(std::slice::from_ref(&dir)).expect("pack loads");
        let failed: Vec<&str> = outcomes
            .iter()
            .filter_map(|o| o.failure.as_deref())
            .collect();
        assert_eq!(failed.len(), broken.len(), "{failed:#?}");
        assert!(failed[4].contains("unknown rule id"), "{}", failed[4]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cases_assert_masking_rules_outputs_and_counts_and_custom_detectors_are_tested() {
        let dir = std::env::temp_dir().join(format!("sluice-cases-mask-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cases")).expect("dir");
        std::fs::write(
            dir.join("pack.yaml"),
            "apiVersion: sluice.dev/v1alpha1\nkind: PolicyPack\nmetadata: {name: p}\nspec:\n  rules:\n    - id: all\n      action: allow\n  masking:\n    detectors:\n      - {name: badge, regex: 'BDG-[0-9]{5}', class: pii}\n    rules:\n      - id: pii-out\n        match: {targets: [t]}\n        detectors: {pii: redact, badge: partial}\n",
        )
        .expect("write pack");
        let case = |masking: &str| {
            format!(
                "description: x\ntarget: t\nrequest: {{method: POST, path: /v1/chat/completions, body: {{model: m}}}}\nexpect: {{decision: allow, rules: [all]}}\nmasking: {masking}\n"
            )
        };
        let files = [
            // Passing: rules, output and counts.
            case(
                "{rules: [pii-out], input: 'badge BDG-12345 of a@b.io', output: 'badge [REDACTED:badge:…2345] of [REDACTED:email]', counts: {badge: 1, email: 1}}",
            ),
            // Passing: the response direction too.
            case("{direction: response, input: 'x@y.org', counts: {email: 1}}"),
            // Failing: another output.
            case("{input: 'BDG-12345', output: 'BDG-12345'}"),
            // Failing: another rule list.
            case("{rules: []}"),
        ];
        for (i, f) in files.iter().enumerate() {
            std::fs::write(dir.join(format!("cases/{i}.yaml")), f).expect("case");
        }
        // A rule id neither a policy nor a masking rule: a located error.
        std::fs::write(dir.join("cases/9.yaml"), case("{rules: [nope]}")).expect("case");
        let outcomes = run_all(std::slice::from_ref(&dir)).expect("pack loads");
        let failures: Vec<Option<&str>> = outcomes.iter().map(|o| o.failure.as_deref()).collect();
        assert_eq!(failures.len(), 5, "{failures:?}");
        assert_eq!(&failures[..2], &[None, None], "{failures:?}");
        assert!(
            failures[2].is_some_and(|f| f.contains("expected masked request \"BDG-12345\"")),
            "{failures:?}"
        );
        assert!(
            failures[3].is_some_and(|f| f.contains("expected masking rules []")),
            "{failures:?}"
        );
        assert!(
            failures[4].is_some_and(|f| f.contains("9.yaml:5:") && f.contains("unknown rule id")),
            "{failures:?}"
        );
        // A custom detector no case finds fails the pack's tests.
        std::fs::remove_file(dir.join("cases/0.yaml")).expect("remove");
        let outcomes = run_all(std::slice::from_ref(&dir)).expect("pack loads");
        let last = outcomes.last().expect("outcomes");
        assert_eq!(last.description, "custom detector badge is tested");
        assert!(
            last.failure
                .as_deref()
                .is_some_and(|f| f.contains("no case of this pack finds badge")),
            "{:?}",
            last.failure
        );
        let _ = std::fs::remove_dir_all(&dir);
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
