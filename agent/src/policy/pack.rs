//! The policy file format (`apiVersion: sluice.dev/v1alpha1`, `kind: PolicyPack`) and its
//! loading. Unknown fields are rejected with file:line:column.
use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use super::{
    Error, Switch,
    approval::{Approval, ApprovalSpec},
    container::{ContainerIdPattern, PodUidPattern},
    index::Index,
};
use crate::{
    adapter::{OpClass, Server},
    workload::Runtime,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    #[default]
    Deny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackFile {
    #[serde(rename = "apiVersion")]
    _api_version: ApiVersion,
    #[serde(rename = "kind")]
    _kind: Kind,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Deserialize)]
enum ApiVersion {
    #[serde(rename = "sluice.dev/v1alpha1")]
    V1Alpha1,
}

#[derive(Deserialize)]
enum Kind {
    PolicyPack,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    rules: Vec<RuleSpec>,
    /// Masking detectors and rules (`masking.rs`).
    #[serde(default)]
    masking: Option<super::masking::MaskingSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    id: String,
    #[serde(default)]
    description: Option<String>,
    action: RuleAction,
    /// The settings of `action: require-approval` (and only of it).
    #[serde(default)]
    approval: Option<ApprovalSpec>,
    #[serde(rename = "match", default)]
    when: MatchSpec,
}

/// What a rule does when it matches. `require-approval` holds the request for a person; such
/// a rule's `Rule::action` is `Deny`, so whatever does not know approvals fails closed.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
enum RuleAction {
    #[serde(rename = "allow")]
    Allow,
    #[serde(rename = "deny")]
    Deny,
    #[serde(rename = "require-approval")]
    RequireApproval,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct MatchSpec {
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    servers: Vec<Server>,
    #[serde(default)]
    operations: Vec<OpClass>,
    #[serde(default)]
    routes: Vec<String>,
    #[serde(default)]
    models: Vec<String>,
    /// The rule matches only when the model matches none of these (a request without a model
    /// counts as matching none): how an allowlist of models is written as a deny rule.
    #[serde(default, rename = "exceptModels")]
    except_models: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    /// JSON pointer (e.g. `/keep_alive`) → value the body must hold there.
    #[serde(default)]
    body: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    streaming: Option<bool>,
    /// Who is calling, as the kernel saw it at connect() time.
    #[serde(default)]
    workload: WorkloadSpec,
    /// Who is calling, as a verified token names them.
    #[serde(default)]
    identity: IdentitySpec,
    /// Protocol switches this rule is about. An allow rule must name a switch for it to be
    /// allowed; a rule with this list matches only requests that ask for one of them.
    #[serde(default)]
    switches: Option<Vec<Switch>>,
}

/// Token identity matchers. A list that is present but empty matches nothing (so an allow
/// rule with `groups: []` grants nothing, never everything).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IdentitySpec {
    /// `true`: only requests with a verified token; `false`: only requests without one.
    #[serde(default)]
    authenticated: Option<bool>,
    /// Issuers, exactly as configured in `identity.issuers[].issuer`.
    #[serde(default)]
    issuers: Option<Vec<String>>,
    /// Subjects, globs (`*` matches any characters).
    #[serde(default)]
    subjects: Option<Vec<String>>,
    /// Groups: the token must carry at least one of them (exact).
    #[serde(default)]
    groups: Option<Vec<String>>,
    /// JSON pointer into the token's payload (e.g. `/tenant`) → the value it must hold
    /// there. An empty map matches nothing.
    #[serde(default)]
    claims: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WorkloadSpec {
    #[serde(default)]
    uids: Vec<u32>,
    #[serde(default)]
    gids: Vec<u32>,
    /// Process names (the kernel's 15-character comm), globs.
    #[serde(default)]
    comms: Vec<String>,
    /// Executable paths, globs (`*` stops at `/`).
    #[serde(default)]
    exes: Vec<String>,
    /// cgroup v2 paths as `/proc/<pid>/cgroup` shows them, globs (`*` stops at `/`).
    #[serde(default)]
    cgroups: Vec<String>,
    /// Container ids: a short or full id selects the ids starting with it; globs.
    #[serde(default, rename = "containerIds")]
    container_ids: Vec<ContainerIdPattern>,
    #[serde(default, rename = "containerRuntimes")]
    container_runtimes: Vec<Runtime>,
    /// Kubernetes pod uids (with dashes), globs.
    #[serde(default, rename = "podUids")]
    pod_uids: Vec<PodUidPattern>,
    /// User names of the uid on the host, globs.
    #[serde(default)]
    users: Vec<String>,
    /// The systemd unit of the cgroup, as the system's manager knows it (`workload::names`):
    /// `ollama-client.service`, `docker-*.scope`, `user@1000.service/*`; globs.
    #[serde(default)]
    units: Vec<String>,
}

/// One compiled rule. Empty matchers match anything.
#[derive(Debug)]
pub struct Rule {
    pub id: String,
    pub pack: String,
    pub description: Option<String>,
    pub action: Action,
    /// Set on `require-approval` rules: a match holds the request for these approvers.
    pub approval: Option<std::sync::Arc<Approval>>,
    pub(super) targets: Option<Globs>,
    pub(super) servers: Vec<Server>,
    pub(super) operations: Vec<OpClass>,
    pub(super) routes: Option<Globs>,
    pub(super) models: Option<ModelGlobs>,
    pub(super) except_models: Option<ModelGlobs>,
    pub(super) methods: Vec<String>,
    pub(super) paths: Option<Globs>,
    pub(super) body: Vec<(String, serde_json::Value)>,
    /// `body` as a case-folding server's parsed body holds it (`fold.rs`); `None` when the
    /// same.
    pub(super) body_folded: Option<Vec<(String, Option<serde_json::Value>)>>,
    pub(super) streaming: Option<bool>,
    pub(super) uids: Vec<u32>,
    pub(super) gids: Vec<u32>,
    pub(super) comms: Option<Globs>,
    pub(super) exes: Option<Globs>,
    pub(super) cgroups: Option<Globs>,
    pub(super) container_ids: Option<Globs>,
    pub(super) container_runtimes: Vec<Runtime>,
    pub(super) pod_uids: Option<Globs>,
    pub(super) users: Option<Globs>,
    pub(super) units: Option<Globs>,
    pub(super) authenticated: Option<bool>,
    pub(super) issuers: Option<Vec<String>>,
    pub(super) subjects: Option<Globs>,
    pub(super) groups: Option<Vec<String>>,
    pub(super) claims: Option<Vec<(String, serde_json::Value)>>,
    /// An identity list was written empty: the rule matches nothing.
    pub(super) identity_never: bool,
    pub(super) switches: Option<Vec<Switch>>,
    /// The glob patterns as written, for the index to compile into its combined automata.
    pub(super) patterns: Patterns,
}

#[derive(Debug, Default)]
pub(super) struct Patterns {
    pub(super) targets: Vec<String>,
    pub(super) routes: Vec<String>,
    pub(super) models: Vec<String>,
    pub(super) paths: Vec<String>,
    pub(super) comms: Vec<String>,
    pub(super) exes: Vec<String>,
    pub(super) cgroups: Vec<String>,
    /// As compiled: a short id is the prefix glob `<id>*`.
    pub(super) container_ids: Vec<String>,
    pub(super) pod_uids: Vec<String>,
    pub(super) subjects: Vec<String>,
    /// Not indexed; kept for `grants` to show.
    pub(super) except_models: Vec<String>,
    pub(super) users: Vec<String>,
    pub(super) units: Vec<String>,
}

/// Every loaded rule, in file order.
#[derive(Debug, Default)]
pub struct Policy {
    pub rules: Vec<Rule>,
    pub packs: Vec<String>,
    /// Built once all packs are loaded; evaluation looks rules up here.
    pub(super) index: Index,
    /// Detectors and masking rules of every pack, compiled once all are loaded.
    pub masking: super::masking::Masking,
    /// The top-level body fields the rules' and masking rules' `body:` pointers read into:
    /// a request body's other fields are not built (`pipeline::decode::Roots`). Every field
    /// until the packs are loaded.
    pub body_roots: crate::pipeline::decode::Roots,
}

impl Policy {
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

/// The shipped packs, compiled in so the built-in configuration can use them wherever the
/// binary runs: name them as `builtin:<pack>` in `policies:`.
const BUILTIN: &[(&str, &str)] = &[
    (
        "ollama-safe",
        include_str!("../../../policies/ollama-safe/pack.yaml"),
    ),
    (
        "openai-safe",
        include_str!("../../../policies/openai-safe/pack.yaml"),
    ),
    (
        "vllm-safe",
        include_str!("../../../policies/vllm-safe/pack.yaml"),
    ),
    (
        "llamacpp-safe",
        include_str!("../../../policies/llamacpp-safe/pack.yaml"),
    ),
    (
        "tgi-safe",
        include_str!("../../../policies/tgi-safe/pack.yaml"),
    ),
    (
        "triton-safe",
        include_str!("../../../policies/triton-safe/pack.yaml"),
    ),
];

pub const BUILTIN_PREFIX: &str = "builtin:";

/// Loads every pack under `paths`: a pack file, a pack directory (with `pack.yaml`), a
/// directory of pack directories, or `builtin:<pack>`.
pub fn load_paths(paths: &[PathBuf]) -> Result<Policy, Error> {
    let mut policy = Policy::default();
    let mut ids = HashSet::new();
    for p in paths {
        if let Some(name) = p.to_str().and_then(|s| s.strip_prefix(BUILTIN_PREFIX)) {
            let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name) else {
                let known: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
                return Err(Error::UnknownBuiltin {
                    name: name.to_string(),
                    known: known.join(", "),
                });
            };
            parse(text, p, &mut policy, &mut ids)?;
            continue;
        }
        for file in pack_files(p)? {
            load_file(&file, &mut policy, &mut ids)?;
        }
    }
    policy.index = Index::build(&policy.rules);
    policy.masking.finish()?;
    policy.body_roots = body_roots(&policy);
    Ok(policy)
}

/// The top-level fields every `body:` pointer of `p`'s rules and masking rules starts with.
fn body_roots(p: &Policy) -> crate::pipeline::decode::Roots {
    let rules = p.rules.iter().chain(p.masking.selectors());
    // A folded pointer reads a case-folding server's folded keys (`fold.rs`).
    crate::pipeline::decode::Roots::of(rules.flat_map(|r| {
        let folded = r.body_folded.iter().flatten().map(|(ptr, _)| ptr.as_str());
        r.body.iter().map(|(ptr, _)| ptr.as_str()).chain(folded)
    }))
}

/// Files to load for one configured path, in a stable order.
pub fn pack_files(p: &Path) -> Result<Vec<PathBuf>, Error> {
    if p.is_file() {
        return Ok(vec![p.to_path_buf()]);
    }
    let direct = p.join("pack.yaml");
    if direct.is_file() {
        return Ok(vec![direct]);
    }
    let entries = std::fs::read_dir(p).map_err(|source| Error::Read {
        path: p.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path().join("pack.yaml"))
        .filter(|f| f.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Empty {
            path: p.to_path_buf(),
        });
    }
    Ok(files)
}

fn load_file(path: &Path, policy: &mut Policy, ids: &mut HashSet<String>) -> Result<(), Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path, policy, ids)
}

/// Parses one pack from text, alone, as loading a file of it would; `origin` names it in
/// errors. The entry point for tools and the fuzz targets, which have text and no file.
pub fn parse_pack(text: &str, origin: &Path) -> Result<Policy, Error> {
    let mut policy = Policy::default();
    parse(text, origin, &mut policy, &mut HashSet::new())?;
    policy.index = Index::build(&policy.rules);
    policy.masking.finish()?;
    policy.body_roots = body_roots(&policy);
    Ok(policy)
}

/// Parses one pack; `path` names it in errors.
fn parse(
    text: &str,
    path: &Path,
    policy: &mut Policy,
    ids: &mut HashSet<String>,
) -> Result<(), Error> {
    let file: PackFile = serde_norway::from_str(text).map_err(|e| syntax_error(path, text, &e))?;
    let pack = file.metadata.name;
    for spec in file.spec.rules {
        let invalid = |message: String| Error::Invalid {
            path: path.to_path_buf(),
            rule: spec.id.clone(),
            message,
        };
        if spec.id.is_empty() {
            return Err(invalid("id must not be empty".into()));
        }
        if !ids.insert(spec.id.clone()) {
            return Err(invalid(
                "duplicate rule id (ids are global across packs)".into(),
            ));
        }
        let approval = match (spec.action, spec.approval) {
            (RuleAction::RequireApproval, Some(a)) => Some(std::sync::Arc::new(
                a.compile(spec.description.as_deref()).map_err(&invalid)?,
            )),
            (RuleAction::RequireApproval, None) => {
                return Err(invalid(
                    "action require-approval needs `approval:` naming its approvers".into(),
                ));
            }
            (_, Some(_)) => {
                return Err(invalid(
                    "`approval:` belongs to action require-approval only".into(),
                ));
            }
            (_, None) => None,
        };
        let action = match spec.action {
            RuleAction::Allow => Action::Allow,
            RuleAction::Deny | RuleAction::RequireApproval => Action::Deny,
        };
        let mut rule = compile(
            spec.id.clone(),
            &pack,
            spec.description,
            action,
            spec.when,
            &invalid,
        )?;
        rule.approval = approval;
        policy.rules.push(rule);
    }
    if let Some(masking) = file.spec.masking {
        policy.masking.add_pack(masking, path, &pack, ids)?;
    }
    policy.packs.push(pack);
    Ok(())
}

/// Compiles one rule's matchers (a policy rule's, or a masking rule's selector); `invalid`
/// names the rule in errors.
pub(super) fn compile(
    rule_id: String,
    pack: &str,
    description: Option<String>,
    action: Action,
    w: MatchSpec,
    invalid: &dyn Fn(String) -> Error,
) -> Result<Rule, Error> {
    for ptr in w.body.keys() {
        if !ptr.starts_with('/') {
            return Err(invalid(format!(
                "match.body key {ptr:?} must be a JSON pointer such as \"/keep_alive\""
            )));
        }
    }
    let id = w.identity;
    let named =
        id.issuers.is_some() || id.subjects.is_some() || id.groups.is_some() || id.claims.is_some();
    if id.authenticated == Some(false) && named {
        return Err(invalid(
                "match.identity: authenticated: false cannot be combined with issuers, subjects, groups or claims (a request without a token has none)".into(),
            ));
    }
    for ptr in id.claims.iter().flat_map(BTreeMap::keys) {
        if !ptr.starts_with('/') {
            return Err(invalid(format!(
                "match.identity.claims key {ptr:?} must be a JSON pointer such as \"/tenant\""
            )));
        }
    }
    let identity_never = [&id.issuers, &id.subjects, &id.groups]
        .iter()
        .any(|l| l.as_ref().is_some_and(Vec::is_empty))
        || id.claims.as_ref().is_some_and(BTreeMap::is_empty);
    let subjects = id.subjects.unwrap_or_default();
    let body: Vec<(String, serde_json::Value)> = w.body.into_iter().collect();
    let container_ids: Vec<String> = w.workload.container_ids.into_iter().map(|p| p.0).collect();
    let pod_uids: Vec<String> = w.workload.pod_uids.into_iter().map(|p| p.0).collect();
    let rule = Rule {
        id: rule_id,
        pack: pack.to_string(),
        description,
        approval: None,
        action,
        targets: globs(&w.targets, false).map_err(invalid)?,
        servers: w.servers,
        operations: w.operations,
        routes: globs(&w.routes, false).map_err(invalid)?,
        // Model names compare case-insensitively: servers such as Ollama normalise case,
        // so "Forbidden:CLOUD" must not slip past a rule written for "*:cloud".
        models: ModelGlobs::new(&w.models).map_err(invalid)?,
        except_models: ModelGlobs::new(&w.except_models).map_err(invalid)?,
        methods: w.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
        paths: globs(&w.paths, true).map_err(invalid)?,
        body_folded: super::fold::folded(&body),
        body,
        streaming: w.streaming,
        uids: w.workload.uids,
        gids: w.workload.gids,
        comms: globs(&w.workload.comms, false).map_err(invalid)?,
        exes: globs(&w.workload.exes, true).map_err(invalid)?,
        cgroups: globs(&w.workload.cgroups, true).map_err(invalid)?,
        container_ids: globs(&container_ids, false).map_err(invalid)?,
        container_runtimes: w.workload.container_runtimes,
        pod_uids: globs(&pod_uids, false).map_err(invalid)?,
        users: globs(&w.workload.users, false).map_err(invalid)?,
        units: globs(&w.workload.units, false).map_err(invalid)?,
        authenticated: id.authenticated,
        issuers: id.issuers,
        subjects: globs(&subjects, false).map_err(invalid)?,
        groups: id.groups,
        claims: id.claims.map(|c| c.into_iter().collect()),
        identity_never,
        switches: w.switches,
        patterns: Patterns {
            targets: w.targets,
            routes: w.routes,
            models: w.models,
            paths: w.paths,
            comms: w.workload.comms,
            exes: w.workload.exes,
            cgroups: w.workload.cgroups,
            container_ids,
            pod_uids,
            subjects,
            except_models: w.except_models,
            users: w.workload.users,
            units: w.workload.units,
        },
    };
    Ok(rule)
}

/// A YAML error of a policy or case file, with the location first as `file:line:column`.
pub(super) fn syntax_error(path: &Path, text: &str, e: &serde_norway::Error) -> Error {
    let (line, column) = crate::yaml::location(text, e);
    Error::Syntax {
        path: path.to_path_buf(),
        line,
        column,
        message: crate::yaml::message(e),
    }
}

/// `literal_separator`: whether `*` stops at `/` (paths) or not (model names, ids).
fn globs(patterns: &[String], literal_separator: bool) -> Result<Option<Globs>, String> {
    build_globs(patterns, literal_separator, false)
}

/// Model patterns, which match case-insensitively.
#[derive(Debug)]
pub(super) enum ModelGlobs {
    /// Every pattern is ASCII without a character class: compiled lower-cased and
    /// case-sensitive, and matched against the folded model (`fold_model`). Same answers as
    /// the case-insensitive glob, but literal, prefix and suffix patterns then compile to
    /// hash and Aho-Corasick lookups instead of a regex each, which is most of what loading
    /// thousands of rules cost.
    Folded(Globs),
    /// Matched as written, case-insensitively.
    Exact(Globs),
}

impl ModelGlobs {
    fn new(patterns: &[String]) -> Result<Option<ModelGlobs>, String> {
        let folded: Option<Vec<String>> = patterns.iter().map(|p| fold_pattern(p)).collect();
        Ok(match folded {
            Some(folded) => build_globs(&folded, false, false)?.map(ModelGlobs::Folded),
            None => build_globs(patterns, false, true)?.map(ModelGlobs::Exact),
        })
    }

    pub(super) fn is_match(&self, model: &str) -> bool {
        match self {
            ModelGlobs::Folded(g) => g.is_match(fold_model(model).as_ref()),
            ModelGlobs::Exact(g) => g.is_match(model),
        }
    }
}

/// A model pattern's lower-case form, when matching it case-sensitively against the folded
/// model answers as the case-insensitive pattern does against the model: ASCII patterns
/// without character classes (`[A-z]` changes meaning when lower-cased).
pub(super) fn fold_pattern(p: &str) -> Option<String> {
    (p.is_ascii() && !p.contains('[')).then(|| p.to_ascii_lowercase())
}

/// A model name folded for the lower-cased patterns: ASCII lower case, every other character
/// left alone. globset's case-insensitive matching folds ASCII letters only (the Kelvin sign
/// does not match `k`), so this keeps every answer; the property test
/// `folding_keeps_case_insensitive_answers` checks it against the case-insensitive globs.
pub(super) fn fold_model(model: &str) -> std::borrow::Cow<'_, str> {
    if model.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(model.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(model)
    }
}

/// One matcher's patterns. globset compiles even one literal or prefix pattern into an
/// Aho-Corasick automaton, tens of microseconds each, which for thousands of rules was most
/// of the load time; the shapes most rules use (a literal, `prefix*`, `*suffix` where `*` may
/// cross `/`) are answered here with a string comparison instead, and only the others go to
/// globset. The property test `simple_patterns_answer_as_globset_does` holds the two equal.
#[derive(Debug)]
pub(super) struct Globs {
    simple: Vec<Simple>,
    set: Option<GlobSet>,
}

#[derive(Debug, PartialEq)]
enum Simple {
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Simple {
    fn parse(p: &str, literal_separator: bool, case_insensitive: bool) -> Option<Simple> {
        let plain = |s: &str| !s.contains(['*', '?', '[', ']', '{', '}', '\\']);
        if case_insensitive {
            return None;
        }
        if plain(p) {
            return Some(Simple::Exact(p.to_string()));
        }
        if literal_separator {
            return None;
        }
        if let Some(lit) = p.strip_suffix('*').filter(|l| plain(l)) {
            return Some(Simple::Prefix(lit.to_string()));
        }
        p.strip_prefix('*')
            .filter(|l| plain(l))
            .map(|l| Simple::Suffix(l.to_string()))
    }

    fn is_match(&self, v: &str) -> bool {
        match self {
            Simple::Exact(l) => v == l,
            Simple::Prefix(l) => v.starts_with(l.as_str()),
            Simple::Suffix(l) => v.ends_with(l.as_str()),
        }
    }
}

impl Globs {
    pub(super) fn is_match(&self, v: &str) -> bool {
        self.simple.iter().any(|s| s.is_match(v))
            || self.set.as_ref().is_some_and(|g| g.is_match(v))
    }
}

pub(super) fn build_globs(
    patterns: &[String],
    literal_separator: bool,
    case_insensitive: bool,
) -> Result<Option<Globs>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut simple = Vec::new();
    let mut b = GlobSetBuilder::new();
    let mut complex = false;
    for p in patterns {
        let g: Glob = GlobBuilder::new(p)
            .literal_separator(literal_separator)
            .case_insensitive(case_insensitive)
            .build()
            .map_err(|e| format!("bad pattern {p:?}: {e}"))?;
        match Simple::parse(p, literal_separator, case_insensitive) {
            Some(s) => simple.push(s),
            None => {
                b.add(g);
                complex = true;
            }
        }
    }
    let set = if complex {
        Some(b.build().map_err(|e| e.to_string())?)
    } else {
        None
    };
    Ok(Some(Globs { simple, set }))
}

#[cfg(test)]
mod tests {
    use globset::GlobBuilder;
    use proptest::prelude::*;

    use super::build_globs;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn simple_patterns_answer_as_globset_does(
            pattern in "[ab/.*?]{0,5}",
            value in "[ab/.]{0,6}",
            sep in any::<bool>(),
        ) {
            // globset reads values as file paths: a value whose last component is `..` has
            // no file name to it, so its `*.ext` shortcut never matches one (`*.` misses
            // `..`). Sluice's values are model names and paths already refused for dot
            // segments, and `*` means any characters, so that quirk is not the oracle.
            prop_assume!(value.rsplit('/').next() != Some(".."));
            let Ok(g) = GlobBuilder::new(&pattern).literal_separator(sep).build() else {
                return Ok(());
            };
            let ours = build_globs(std::slice::from_ref(&pattern), sep, false)
                .expect("compiles")
                .expect("one pattern");
            // The oracle is what every matcher was before: a GlobSet.
            let mut set = globset::GlobSetBuilder::new();
            set.add(g);
            let set = set.build().expect("one glob builds");
            prop_assert_eq!(ours.is_match(&value), set.is_match(&value));
        }
    }

    #[test]
    fn a_star_means_any_characters_even_where_globset_sees_a_path() {
        let g = build_globs(&["*.".to_string()], false, false)
            .expect("compiles")
            .expect("one pattern");
        assert!(g.is_match(".."));
        assert!(g.is_match("model."));
        assert!(!g.is_match("model"));
    }
}
