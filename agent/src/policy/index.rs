//! An index over the loaded rules, so a decision looks only at the rules that can match it.
//!
//! Each rule is filed under one of its matchers (its "anchor"): the one whose values the fewest
//! other rules share. A request gathers the rules filed under the values it has (one hash
//! lookup per exact matcher, one pass of a combined glob automaton per glob matcher) plus the
//! rules with no anchor, sorts them into load order, and only those are checked in full. A
//! rule can only match when its anchor does, so the candidates hold every matching rule and
//! evaluation over them decides exactly as a walk over all rules would.
use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Mutex, TryLockError},
};

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

use super::{
    Facts,
    pack::{Rule, fold_model, fold_pattern},
};
use crate::{
    adapter::{OpClass, Server},
    workload::Runtime,
};

/// Rule positions in load order.
type Ids = Vec<u32>;

#[derive(Debug, Default)]
pub(super) struct Index {
    /// Rules without an anchor (no matcher, or only ones that cannot be looked up such as
    /// `exceptModels`, `body` and `streaming`): every decision checks them.
    always: Ids,
    targets: GlobDim,
    routes: GlobDim,
    models: GlobDim,
    paths: GlobDim,
    comms: GlobDim,
    exes: GlobDim,
    cgroups: GlobDim,
    container_ids: GlobDim,
    pod_uids: GlobDim,
    subjects: GlobDim,
    servers: ExactDim<Server>,
    operations: ExactDim<OpClass>,
    methods: ExactDim<String>,
    uids: ExactDim<u32>,
    gids: ExactDim<u32>,
    container_runtimes: ExactDim<Runtime>,
    issuers: ExactDim<String>,
    groups: ExactDim<String>,
}

/// The matchers a rule can be filed under, in the order ties are broken.
#[derive(Clone, Copy)]
enum Dim {
    Subjects,
    Groups,
    Models,
    Routes,
    Uids,
    Gids,
    Comms,
    Exes,
    ContainerIds,
    PodUids,
    Cgroups,
    ContainerRuntimes,
    Targets,
    Paths,
    Methods,
    Operations,
    Servers,
    Issuers,
}

/// One glob matcher kind across the rules anchored on it: one automaton, and the rule of each
/// of its globs.
#[derive(Debug, Default)]
struct GlobDim {
    set: GlobSet,
    rule_of: Ids,
    /// The rules filed here, for when the automaton cannot be built or asked (every one of
    /// them is then a candidate).
    all: Ids,
    /// The automaton did not build (too large): `all` stands in for it.
    broken: bool,
    /// The automaton's recent answers, by value. Targets, routes, paths, models and
    /// workloads repeat from one request to the next, and one pass of a glob set (a
    /// candidate built, every strategy run) cost ~1,000 instructions per matcher, twice per
    /// request (rules and masking), against ~100 for a lookup here (docs/benchmarks.md, "The
    /// hot path", 16). Bounded by `MEMO`: cleared when full, so values that never repeat
    /// cost one insertion each and nothing more.
    memo: Mutex<HashMap<Box<str>, Box<[u32]>, foldhash::fast::RandomState>>,
}

/// Values remembered per glob matcher.
const MEMO: usize = 256;
/// Longer values are matched every time: a memo of long paths would hold their bytes.
const MEMO_VALUE: usize = 256;

/// Keys come from the rules, never from requests, so a fast hash is safe here.
#[derive(Debug)]
struct ExactDim<K> {
    map: HashMap<K, Ids, foldhash::fast::RandomState>,
}

impl<K> Default for ExactDim<K> {
    fn default() -> Self {
        ExactDim {
            map: HashMap::default(),
        }
    }
}

impl<K: Hash + Eq> ExactDim<K> {
    fn file(&mut self, keys: impl IntoIterator<Item = K>, rule: u32) {
        for k in keys {
            let ids = self.map.entry(k).or_default();
            // A rule naming one value twice is filed once.
            if ids.last() != Some(&rule) {
                ids.push(rule);
            }
        }
    }

    fn gather<Q>(&self, key: &Q, out: &mut Ids)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(ids) = self.map.get(key) {
            out.extend_from_slice(ids);
        }
    }
}

/// How a glob matcher is compiled: as the rule compiles it, except model patterns, which are
/// folded to lower case where that keeps their meaning (see `fold_model`).
#[derive(Default)]
struct GlobDimBuilder {
    globs: Vec<(String, bool, bool)>,
    rule_of: Ids,
    all: Ids,
}

impl GlobDimBuilder {
    fn file(&mut self, patterns: &[String], sep: bool, ci: bool, rule: u32) {
        for p in patterns {
            self.globs.push((p.clone(), sep, ci));
            self.rule_of.push(rule);
        }
        self.all.push(rule);
    }

    fn file_models(&mut self, patterns: &[String], rule: u32) {
        for p in patterns {
            // Case-insensitive globs compile to regexes; lower-cased literal, prefix and
            // suffix globs compile to hash and Aho-Corasick lookups, which is what makes one
            // automaton over thousands of model patterns cheap to build and to run.
            match fold_pattern(p) {
                Some(folded) => self.globs.push((folded, false, false)),
                None => self.globs.push((p.clone(), false, true)),
            }
            self.rule_of.push(rule);
        }
        self.all.push(rule);
    }

    fn build(self) -> GlobDim {
        let mut b = GlobSetBuilder::new();
        for (p, sep, ci) in &self.globs {
            match GlobBuilder::new(p)
                .literal_separator(*sep)
                .case_insensitive(*ci)
                .build()
            {
                Ok(g) => {
                    b.add(g);
                }
                // Every pattern compiled when its rule was loaded; should one not, every rule
                // here is checked instead.
                Err(_) => return GlobDim::fallback(self.all),
            }
        }
        match b.build() {
            Ok(set) => GlobDim {
                set,
                rule_of: self.rule_of,
                all: self.all,
                broken: false,
                memo: Mutex::default(),
            },
            Err(_) => GlobDim::fallback(self.all),
        }
    }
}

impl GlobDim {
    fn fallback(all: Ids) -> Self {
        GlobDim {
            all,
            broken: true,
            ..GlobDim::default()
        }
    }

    fn gather(&self, value: &str, scratch: &mut Vec<usize>, out: &mut Ids) {
        if self.all.is_empty() {
            return;
        }
        if self.broken {
            out.extend_from_slice(&self.all);
            return;
        }
        if value.len() > MEMO_VALUE {
            return self.run(value, scratch, out);
        }
        // Another thread holding the memo is not waited for: the automaton answers the same.
        let mut memo = match self.memo.try_lock() {
            Ok(m) => m,
            Err(TryLockError::WouldBlock | TryLockError::Poisoned(_)) => {
                return self.run(value, scratch, out);
            }
        };
        if let Some(ids) = memo.get(value) {
            out.extend_from_slice(ids);
            return;
        }
        let from = out.len();
        self.run(value, scratch, out);
        if memo.len() >= MEMO {
            memo.clear();
        }
        memo.insert(value.into(), out[from..].into());
    }

    /// One pass of the automaton.
    fn run(&self, value: &str, scratch: &mut Vec<usize>, out: &mut Ids) {
        scratch.clear();
        self.set
            .matches_candidate_into(&Candidate::new(value), scratch);
        out.extend(scratch.iter().map(|&g| self.rule_of[g]));
    }
}

/// Patterns that match every value select nothing; filing a rule under one would make it a
/// candidate for every request anyway.
fn matches_all(p: &str) -> bool {
    !p.is_empty() && p.chars().all(|c| c == '*')
}

impl Index {
    pub(super) fn build(rules: &[Rule]) -> Index {
        // How many rules share each value, per matcher: the cost of filing a rule there.
        let mut freq: HashMap<(u8, String), usize> = HashMap::new();
        let all_keys: Vec<Vec<(Dim, Vec<String>)>> = rules.iter().map(anchors).collect();
        for rk in &all_keys {
            for (dim, ks) in rk {
                for k in ks {
                    *freq.entry((*dim as u8, k.clone())).or_default() += 1;
                }
            }
        }
        let mut globs: [GlobDimBuilder; 10] = Default::default();
        let mut ix = Index::default();
        for (i, (rule, rk)) in rules.iter().zip(&all_keys).enumerate() {
            let id = i as u32;
            let best = rk
                .iter()
                .filter(|(_, ks)| !ks.is_empty())
                .map(|(dim, ks)| {
                    let cost: usize = ks
                        .iter()
                        .map(|k| freq.get(&(*dim as u8, k.clone())).copied().unwrap_or(0))
                        .sum();
                    (cost, *dim as u8, *dim)
                })
                .min_by_key(|(cost, order, _)| (*cost, *order));
            let Some((_, _, dim)) = best else {
                ix.always.push(id);
                continue;
            };
            let p = &rule.patterns;
            match dim {
                Dim::Models => globs[0].file_models(&p.models, id),
                Dim::Routes => globs[1].file(&p.routes, false, false, id),
                Dim::Targets => globs[2].file(&p.targets, false, false, id),
                Dim::Paths => globs[3].file(&p.paths, true, false, id),
                Dim::Comms => globs[4].file(&p.comms, false, false, id),
                Dim::Exes => globs[5].file(&p.exes, true, false, id),
                Dim::Cgroups => globs[6].file(&p.cgroups, true, false, id),
                Dim::ContainerIds => globs[7].file(&p.container_ids, false, false, id),
                Dim::PodUids => globs[8].file(&p.pod_uids, false, false, id),
                Dim::Subjects => globs[9].file(&p.subjects, false, false, id),
                Dim::Groups => ix.groups.file(rule.groups.iter().flatten().cloned(), id),
                Dim::Issuers => ix.issuers.file(rule.issuers.iter().flatten().cloned(), id),
                Dim::ContainerRuntimes => ix
                    .container_runtimes
                    .file(rule.container_runtimes.iter().copied(), id),
                Dim::Servers => ix.servers.file(rule.servers.iter().copied(), id),
                Dim::Operations => ix.operations.file(rule.operations.iter().copied(), id),
                Dim::Methods => ix.methods.file(rule.methods.iter().cloned(), id),
                Dim::Uids => ix.uids.file(rule.uids.iter().copied(), id),
                Dim::Gids => ix.gids.file(rule.gids.iter().copied(), id),
            }
        }
        let [
            models,
            routes,
            targets,
            paths,
            comms,
            exes,
            cgroups,
            container_ids,
            pod_uids,
            subjects,
        ] = globs.map(GlobDimBuilder::build);
        Index {
            models,
            routes,
            targets,
            paths,
            comms,
            exes,
            cgroups,
            container_ids,
            pod_uids,
            subjects,
            ..ix
        }
    }

    /// The rules that can match these facts, in load order: a superset of the rules that do.
    pub(super) fn candidates(&self, f: &Facts<'_>) -> Ids {
        let op = f.operation;
        let mut out = self.always.clone();
        let mut scratch = Vec::new();
        self.targets.gather(f.target, &mut scratch, &mut out);
        self.routes.gather(op.route, &mut scratch, &mut out);
        self.paths.gather(f.path, &mut scratch, &mut out);
        if let Some(model) = op.model.as_deref() {
            // Folding keeps the answers of the case-insensitive patterns too: it only maps
            // a character to another of its cases.
            self.models
                .gather(&fold_model(model), &mut scratch, &mut out);
        }
        self.servers.gather(&f.server, &mut out);
        self.operations.gather(&op.class, &mut out);
        self.methods.gather(f.method, &mut out);
        if let Some(w) = f.workload {
            self.uids.gather(&w.uid, &mut out);
            self.gids.gather(&w.gid, &mut out);
            self.comms.gather(&w.comm, &mut scratch, &mut out);
            if let Some(exe) = w.exe.as_deref() {
                self.exes.gather(exe, &mut scratch, &mut out);
            }
            if let Some(cgroup) = w.cgroup.as_deref() {
                self.cgroups.gather(cgroup, &mut scratch, &mut out);
            }
            if let Some(c) = &w.container {
                self.container_ids.gather(&c.id, &mut scratch, &mut out);
                if let Some(r) = &c.runtime {
                    self.container_runtimes.gather(r, &mut out);
                }
            }
            if let Some(uid) = w.pod_uid.as_deref() {
                self.pod_uids.gather(uid, &mut scratch, &mut out);
            }
        }
        if let Some(p) = f.identity {
            self.issuers.gather(&*p.issuer, &mut out);
            self.subjects.gather(&p.subject, &mut scratch, &mut out);
            for g in &p.groups {
                self.groups.gather(g.as_str(), &mut out);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// The matchers a rule could be filed under, each with the values that key it (empty: the
/// rule does not use that matcher, or it matches every value).
fn anchors(r: &Rule) -> Vec<(Dim, Vec<String>)> {
    let p = &r.patterns;
    let globs = |ps: &[String], fold: bool| -> Vec<String> {
        if ps.iter().any(|p| matches_all(p)) {
            return Vec::new();
        }
        ps.iter()
            .map(|p| {
                if fold {
                    fold_pattern(p).unwrap_or_else(|| p.clone())
                } else {
                    p.clone()
                }
            })
            .collect()
    };
    vec![
        (Dim::Subjects, globs(&p.subjects, false)),
        (Dim::Groups, r.groups.clone().unwrap_or_default()),
        (Dim::Models, globs(&p.models, true)),
        (Dim::Routes, globs(&p.routes, false)),
        (Dim::Uids, r.uids.iter().map(u32::to_string).collect()),
        (Dim::Gids, r.gids.iter().map(u32::to_string).collect()),
        (Dim::Comms, globs(&p.comms, false)),
        (Dim::Exes, globs(&p.exes, false)),
        (Dim::ContainerIds, globs(&p.container_ids, false)),
        (Dim::PodUids, globs(&p.pod_uids, false)),
        (Dim::Cgroups, globs(&p.cgroups, false)),
        (
            Dim::ContainerRuntimes,
            r.container_runtimes.iter().map(|r| r.to_string()).collect(),
        ),
        (Dim::Targets, globs(&p.targets, false)),
        (Dim::Paths, globs(&p.paths, false)),
        (Dim::Methods, r.methods.clone()),
        (
            Dim::Operations,
            r.operations.iter().map(|o| format!("{o:?}")).collect(),
        ),
        (
            Dim::Servers,
            r.servers.iter().map(|s| format!("{s:?}")).collect(),
        ),
        (Dim::Issuers, r.issuers.clone().unwrap_or_default()),
    ]
}

#[cfg(test)]
mod tests {
    use super::{MEMO, MEMO_VALUE};
    use std::path::Path;

    use proptest::{prelude::*, sample::subsequence};
    use serde_json::{Value, json};

    use crate::{
        adapter::{OpClass, Operation, Server},
        identity::Principal,
        policy::{Action, Facts, Switch, parse_pack},
        workload::Workload,
    };

    const TARGETS: &[&str] = &["t1", "t2", "t*", "T1"];
    const ROUTES: &[&str] = &[
        "openai.chat.completions",
        "ollama.pull",
        "openai.*",
        "*",
        "unknown",
    ];
    const MODELS: &[&str] = &[
        "llama*", "*:cloud", "GPT-4o", "[A-z]*", "k*", "mistral", "*", "Straße*", "ſ*", "m?stral",
    ];
    const METHODS: &[&str] = &["POST", "get", "GET"];
    const PATHS: &[&str] = &["/v1/*", "/api/**", "/v1/chat/completions", "*"];
    const COMMS: &[&str] = &["py*", "curl", "*"];
    const EXES: &[&str] = &["/usr/bin/*", "/opt/**", "*"];
    const SERVERS: &[&str] = &["openai", "ollama", "vllm"];
    const ID_A: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const ID_B: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    const CGROUPS: &[&str] = &["/system.slice/*", "/kubepods.slice/**", "/t/**", "*"];
    const CONTAINER_IDS: &[&str] = &["0123456789ab", ID_B, "0*", "*", "[ef]*"];
    const RUNTIMES: &[&str] = &["docker", "containerd", "cri-o", "podman"];
    const POD_UIDS: &[&str] = &[
        "6a7f5c1e-2b3d-4c5e-8f90-a1b2c3d4e5f6",
        "00000000-*",
        "2e5b0b3b2d6b4f8ba2cb6d8d1a3e4f5a",
        "*",
    ];
    const OPS: &[&str] = &["inference", "management", "unknown"];
    const ISSUERS: &[&str] = &["http://127.0.0.1:1", "http://127.0.0.1:2"];
    const SUBJECTS: &[&str] = &["alice", "svc-*", "*", "b?b", "Alice"];
    const GROUPS: &[&str] = &["ml-eng", "ops", "admins"];

    /// An identity list: absent, or present (possibly empty: then it matches nothing).
    fn listed(pool: &'static [&'static str]) -> impl Strategy<Value = Option<Vec<&'static str>>> {
        prop::option::weighted(0.3, subsequence(pool, 0..=2))
    }

    fn identity() -> impl Strategy<Value = Value> {
        (
            prop::option::weighted(0.3, any::<bool>()),
            listed(ISSUERS),
            listed(SUBJECTS),
            listed(GROUPS),
        )
            .prop_map(|(auth, issuers, subjects, groups)| {
                let mut m = json!({});
                let named = issuers.is_some() || subjects.is_some() || groups.is_some();
                if let Some(a) = auth.filter(|a| *a || !named) {
                    m["authenticated"] = json!(a);
                }
                for (k, v) in [
                    ("issuers", issuers),
                    ("subjects", subjects),
                    ("groups", groups),
                ] {
                    if let Some(v) = v {
                        m[k] = json!(v);
                    }
                }
                m
            })
    }

    fn principal() -> impl Strategy<Value = Option<Principal>> {
        prop::option::weighted(
            0.6,
            (
                prop::sample::select(ISSUERS.to_vec()),
                prop::sample::select(vec!["alice", "svc-batch", "bob", "Alice", ""]),
                subsequence(GROUPS, 0..=3),
            )
                .prop_map(|(issuer, subject, groups)| Principal {
                    issuer: issuer.into(),
                    subject: subject.into(),
                    groups: groups.into_iter().map(String::from).collect(),
                    claims: Default::default(),
                }),
        )
    }

    fn pick(pool: &'static [&'static str]) -> impl Strategy<Value = Vec<&'static str>> {
        // Mostly absent, so rules carry a few matchers each, as real ones do.
        prop_oneof![3 => Just(Vec::new()), 2 => subsequence(pool, 1..=2)]
    }

    fn rule() -> impl Strategy<Value = Value> {
        (
            (any::<bool>(), pick(TARGETS), pick(SERVERS), pick(OPS)),
            (pick(ROUTES), pick(MODELS), pick(MODELS), pick(METHODS)),
            (pick(PATHS), pick(COMMS), pick(EXES)),
            (
                pick(CGROUPS),
                pick(CONTAINER_IDS),
                pick(RUNTIMES),
                pick(POD_UIDS),
            ),
            (
                prop::option::weighted(0.2, any::<bool>()),
                prop::option::weighted(0.2, any::<bool>()),
                prop::option::weighted(0.3, 1u32..4),
                prop::option::weighted(0.2, 1u32..3),
            ),
            identity(),
        )
            .prop_map(
                |(
                    (allow, targets, servers, ops),
                    (routes, models, except, methods),
                    (paths, comms, exes),
                    (cgroups, container_ids, runtimes, pod_uids),
                    (streaming, body, uid, gid),
                    identity,
                )| {
                    let mut m = json!({
                        "targets": targets, "servers": servers, "operations": ops,
                        "routes": routes, "models": models, "exceptModels": except,
                        "methods": methods, "paths": paths,
                        "workload": {
                            "comms": comms, "exes": exes,
                            "uids": uid.into_iter().collect::<Vec<_>>(),
                            "gids": gid.into_iter().collect::<Vec<_>>(),
                            "cgroups": cgroups, "containerIds": container_ids,
                            "containerRuntimes": runtimes, "podUids": pod_uids,
                        },
                        "identity": identity,
                    });
                    if let Some(s) = streaming {
                        m["streaming"] = json!(s);
                    }
                    if let Some(b) = body {
                        m["body"] = json!({ "/keep_alive": b });
                    }
                    json!({ "action": if allow { "allow" } else { "deny" }, "match": m })
                },
            )
    }

    #[derive(Debug, Clone)]
    struct Req {
        target: &'static str,
        server: Server,
        method: &'static str,
        path: &'static str,
        class: OpClass,
        route: &'static str,
        model: Option<&'static str>,
        streaming: bool,
        body: Option<Value>,
        default: Action,
        workload: Option<Workload>,
        identity: Option<Principal>,
        switch: Option<Switch>,
    }

    fn req() -> impl Strategy<Value = Req> {
        let model = prop::option::weighted(
            0.8,
            prop::sample::select(vec![
                "llama3",
                "LLAMA3",
                "\u{212A}imi",
                "kimi",
                "gpt-4o",
                "GPT-4O",
                "x:cloud",
                "X:CLOUD",
                "mistral",
                "mistral/7b",
                "straße-1",
                "STRASSE-1",
                "sun",
                "[odd",
            ]),
        );
        let workload = prop::option::weighted(
            0.7,
            (
                1u32..4,
                1u32..3,
                prop::sample::select(vec!["python3", "curl", "Curl"]),
                prop::option::of(prop::sample::select(vec![
                    "/usr/bin/python3",
                    "/opt/x/bin/y",
                    "/usr/local/bin/z",
                ])),
                prop::option::of(prop::sample::select(vec![
                    format!("/system.slice/docker-{ID_A}.scope"),
                    format!("/t/system.slice/cri-containerd-{ID_B}.scope"),
                    format!("/kubepods/besteffort/pod6a7f5c1e-2b3d-4c5e-8f90-a1b2c3d4e5f6/{ID_A}"),
                    format!(
                        "/kubepods.slice/kubepods-pod00000000_0000_0000_0000_000000000000.slice/crio-{ID_B}.scope"
                    ),
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2e5b0b3b2d6b4f8ba2cb6d8d1a3e4f5a.slice".to_string(),
                    "/user.slice".to_string(),
                ])),
            )
                .prop_map(|(uid, gid, comm, exe, cgroup)| {
                    let user = [None, Some("alice"), Some("bob"), Some("carol")][uid as usize % 4];
                    let w = Workload::described(uid, gid, comm.into(), exe.map(String::from))
                        .named(user.map(String::from));
                    match cgroup {
                        Some(path) => w.in_cgroup(path),
                        None => w,
                    }
                }),
        );
        (
            (
                prop::sample::select(vec!["t1", "t2", "T1", "other"]),
                prop::sample::select(vec![Server::Openai, Server::Ollama, Server::Tgi]),
                prop::sample::select(METHODS.to_vec()),
                prop::sample::select(vec!["/v1/chat/completions", "/api/pull", "/v1/x/y", "/"]),
            ),
            (
                prop::sample::select(vec![
                    OpClass::Inference,
                    OpClass::Management,
                    OpClass::Unknown,
                    OpClass::Health,
                ]),
                prop::sample::select(ROUTES.to_vec()),
                model,
                any::<bool>(),
            ),
            (
                prop::option::of(any::<bool>().prop_map(|b| json!({ "keep_alive": b }))),
                prop::sample::select(vec![Action::Allow, Action::Deny]),
                workload,
                principal(),
                prop::option::weighted(
                    0.2,
                    prop::sample::select(vec![Switch::Websocket, Switch::H2c, Switch::Connect]),
                ),
            ),
        )
            .prop_map(
                |(
                    (target, server, method, path),
                    (class, route, model, streaming),
                    (body, default, workload, identity, switch),
                )| Req {
                    target,
                    server,
                    method,
                    path,
                    class,
                    route,
                    model,
                    streaming,
                    body,
                    default,
                    workload,
                    identity,
                    switch,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Lower-cased patterns against folded models answer as case-insensitive globs do.
        #[test]
        fn folding_keeps_case_insensitive_answers(
            pattern in "[aAkKsSzZ*?.:{},-]{0,6}",
            model in "[aAkKsSzZ.:\u{212A}\u{17F}\u{0130}\u{0131}éÉß-]{0,6}",
        ) {
            use globset::GlobBuilder;
            use super::super::pack::{fold_model, fold_pattern};
            let Ok(ci) = GlobBuilder::new(&pattern).case_insensitive(true).build() else {
                return Ok(());
            };
            let folded = fold_pattern(&pattern).expect("ASCII pattern without a class");
            let folded = GlobBuilder::new(&folded).build().expect("folded pattern compiles");
            prop_assert_eq!(
                ci.compile_matcher().is_match(&model),
                folded.compile_matcher().is_match(fold_model(&model).as_ref())
            );
        }

        /// The indexed evaluation decides every request as the walk over all rules does:
        /// same action, same rules named, in the same order.
        #[test]
        fn indexed_equals_linear(
            rules in prop::collection::vec(rule(), 0..40),
            reqs in prop::collection::vec(req(), 1..16),
        ) {
            let rules: Vec<Value> = rules
                .into_iter()
                .enumerate()
                .map(|(i, mut r)| {
                    r["id"] = json!(format!("r{i}"));
                    // Some rules are about protocol switches (one of them names none).
                    // And some on the user or the unit (looked up only in full, never indexed).
                    match i % 5 {
                        2 => r["match"]["workload"]["users"] = json!(["alice", "b*"]),
                        3 => r["match"]["workload"]["units"] = json!(["docker-*.scope"]),
                        _ => {}
                    }
                    match i % 7 {
                        1 => r["match"]["switches"] = json!(["websocket"]),
                        4 => r["match"]["switches"] = json!(["connect", "h2c"]),
                        6 if i % 2 == 0 => r["match"]["switches"] = json!([]),
                        _ => {}
                    }
                    r
                })
                .collect();
            let pack = json!({
                "apiVersion": "sluice.dev/v1alpha1",
                "kind": "PolicyPack",
                "metadata": { "name": "prop" },
                "spec": { "rules": rules },
            });
            let policy = parse_pack(&pack.to_string(), Path::new("prop.yaml"))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            for r in &reqs {
                let operation = Operation {
                    class: r.class,
                    route: r.route,
                    model: r.model.map(String::from),
                    streaming: r.streaming,
                };
                let f = Facts {
                    target: r.target,
                    server: r.server,
                    method: r.method,
                    path: r.path,
                    operation: &operation,
                    body: r.body.as_ref(),
                    default: r.default,
                    workload: r.workload.as_ref(),
                    identity: r.identity.as_ref(),
                    switch: r.switch,
                };
                prop_assert_eq!(policy.evaluate(&f), policy.evaluate_linear(&f), "{:?}", r);
            }
        }
    }

    /// An OpenAI chat completion's facts, with the operation, workload and default given.
    fn chat_facts<'a>(
        operation: &'a Operation,
        workload: Option<&'a Workload>,
        default: Action,
    ) -> Facts<'a> {
        Facts {
            target: "t",
            server: Server::Openai,
            method: "POST",
            path: "/v1/chat/completions",
            operation,
            body: None,
            default,
            workload,
            identity: None,
            switch: None,
        }
    }

    /// Thousands of rules on distinct models and uids: a request is checked against the few
    /// that can match, not all of them.
    #[test]
    fn candidates_are_few_among_many_rules() {
        let mut text = String::from(
            "apiVersion: sluice.dev/v1alpha1\nkind: PolicyPack\nmetadata:\n  name: s\nspec:\n  rules:\n",
        );
        for i in 0..2000 {
            text.push_str(&format!(
                "    - id: d{i}\n      action: deny\n      match:\n        models: [\"team{i}-*\"]\n        workload: {{ uids: [{i}] }}\n"
            ));
        }
        text.push_str("    - id: any\n      action: allow\n");
        let policy = parse_pack(&text, Path::new("s.yaml")).expect("pack parses");
        let operation = Operation {
            class: OpClass::Inference,
            route: "openai.chat.completions",
            model: Some("TEAM7-llama".into()),
            streaming: false,
        };
        let w = Workload::described(7, 0, "python3".into(), None);
        let f = chat_facts(&operation, Some(&w), Action::Deny);
        // d7 by its model (or its uid), and the unanchored allow.
        assert_eq!(policy.index.candidates(&f), vec![7, 2000]);
        assert_eq!(policy.evaluate(&f).rule_ids(), vec!["d7".to_string()]);
    }

    /// The glob matchers remember their answers: asked again, past the memo's bound (so it
    /// is cleared on the way) and with values too long to remember, they answer as the
    /// automaton does.
    #[test]
    fn remembered_answers_are_the_automatons() {
        let mut text = String::from(
            "apiVersion: sluice.dev/v1alpha1\nkind: PolicyPack\nmetadata:\n  name: s\nspec:\n  rules:\n",
        );
        for i in 0..400 {
            text.push_str(&format!(
                "    - id: d{i}\n      action: deny\n      match:\n        models: [\"team{i}-*\"]\n"
            ));
        }
        let policy = parse_pack(&text, Path::new("s.yaml")).expect("pack parses");
        let long = format!("team3-{}", "x".repeat(MEMO_VALUE));
        for round in 0..3 {
            for i in (0..400u32).chain([3]) {
                let model = if i == 3 && round == 2 {
                    long.clone()
                } else {
                    format!("team{i}-m")
                };
                let operation = Operation {
                    class: OpClass::Inference,
                    route: "openai.chat.completions",
                    model: Some(model),
                    streaming: false,
                };
                let f = chat_facts(&operation, None, Action::Allow);
                assert_eq!(policy.index.candidates(&f), vec![i], "round {round}");
            }
        }
        assert!(policy.index.models.memo.lock().expect("memo").len() <= MEMO);
    }

    /// A grant per container and per pod among thousands: a request is checked against its
    /// own container's and pod's rules, not all of them.
    #[test]
    fn container_and_pod_rules_are_looked_up() {
        let mut text = String::from(
            "apiVersion: sluice.dev/v1alpha1\nkind: PolicyPack\nmetadata:\n  name: s\nspec:\n  rules:\n",
        );
        for i in 0..1000 {
            text.push_str(&format!(
                "    - id: c{i}\n      action: allow\n      match:\n        workload: {{ containerIds: [\"{i:012x}\"] }}\n    - id: p{i}\n      action: allow\n      match:\n        workload: {{ podUids: [\"{i:08x}-0000-0000-0000-000000000000\"] }}\n"
            ));
        }
        let policy = parse_pack(&text, Path::new("s.yaml")).expect("pack loads");
        let operation = Operation {
            class: OpClass::Inference,
            route: "openai.chat.completions",
            model: None,
            streaming: false,
        };
        let w = Workload::described(0, 0, "python3".into(), None).in_cgroup(format!(
            "/kubepods.slice/kubepods-pod00000007_0000_0000_0000_000000000000.slice/cri-containerd-{:012x}{}.scope",
            7,
            "0".repeat(52)
        ));
        let f = chat_facts(&operation, Some(&w), Action::Deny);
        assert_eq!(policy.index.candidates(&f), vec![14, 15]);
        assert_eq!(
            policy.evaluate(&f).rule_ids(),
            vec!["c7".to_string(), "p7".to_string()]
        );
    }
}
