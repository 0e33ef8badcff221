//! Masking in policy packs: custom detectors and masking rules (`spec.masking`), compiled
//! once per load into one [`Scanner`] over the built-in and every pack's custom detectors,
//! and evaluated per request into an action per detector and direction (docs/policy.md,
//! "Masking").
//!
//! A masking rule selects requests with the same `match:` a policy rule has (and is found
//! through the same kind of [`Index`], so evaluation looks only at the rules that can
//! match), names detectors (a detector's name, a class, or `all`) with an action each, and
//! says which direction it covers. Several rules may apply: per detector, the strictest
//! action wins ([`MaskAction`]'s order).
use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Deserializer, Serialize};

use super::{
    Action, Error, Facts,
    index::Index,
    pack::{MatchSpec, Rule, compile},
};
use crate::mask::{self, Class, CustomSpec, Detector, Plan, PseudonymKey, Scanner};

/// What a finding becomes, ordered from the least to the most strict: where rules disagree
/// about a detector, the greatest wins. The order is how much of the value crosses the
/// boundary: `partial` lets its last 4 characters through; `pseudonym` none of it, but the
/// same value gives the same token within the session (the other side can link mentions);
/// `redact` nothing at all; `block` not even the rest of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskAction {
    Partial,
    Pseudonym,
    Redact,
    Block,
}

impl MaskAction {
    pub fn as_str(self) -> &'static str {
        match self {
            MaskAction::Partial => "partial",
            MaskAction::Pseudonym => "pseudonym",
            MaskAction::Redact => "redact",
            MaskAction::Block => "block",
        }
    }

    fn action(self, key: &PseudonymKey) -> mask::Action {
        match self {
            MaskAction::Partial => mask::Action::Partial,
            MaskAction::Pseudonym => mask::Action::Pseudonym(key.clone()),
            MaskAction::Redact => mask::Action::Redact,
            MaskAction::Block => mask::Action::Block,
        }
    }
}

/// Which way a masking rule applies: to what the caller sends upstream, to what comes back,
/// or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Request,
    Response,
    #[default]
    Both,
}

impl Direction {
    fn request(self) -> bool {
        matches!(self, Direction::Request | Direction::Both)
    }

    fn response(self) -> bool {
        matches!(self, Direction::Response | Direction::Both)
    }
}

/// What a target does with a body masking cannot scan (compressed, binary, multipart, gRPC,
/// a protocol switch) when a masking rule applies to it: refuse it (the default), or let it
/// through recorded as unscanned. Without a masking rule nothing is scanned and this does
/// not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnscannable {
    #[default]
    Refuse,
    Pass,
}

/// `spec.masking` of one pack.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MaskingSpec {
    #[serde(default)]
    detectors: Vec<DetectorSpec>,
    #[serde(default)]
    rules: Vec<MaskRuleSpec>,
}

/// A custom detector, compiled while the YAML is read so that a regex that does not compile
/// (or cannot be anchored) is reported with its file:line:column.
struct DetectorSpec(Detector);

impl<'de> Deserialize<'de> for DetectorSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spec = CustomSpec::deserialize(d)?;
        if spec.name.is_empty() {
            return Err(serde::de::Error::custom("a detector needs a name"));
        }
        // The regex's own error first: an unparsable pattern has no prefix either, and
        // "cannot be anchored" would hide what is wrong with it.
        if let Err(e) = regex_syntax::ParserBuilder::new()
            .utf8(false)
            .build()
            .parse(&spec.regex)
        {
            return Err(serde::de::Error::custom(format!(
                "detector {}: regex does not compile: {e}",
                spec.name
            )));
        }
        Detector::custom(&spec)
            .map(DetectorSpec)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaskRuleSpec {
    id: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    direction: Direction,
    #[serde(rename = "match", default)]
    when: MatchSpec,
    /// Detector name, class (`secrets`, `pii`) or `all` → action.
    detectors: BTreeMap<String, MaskAction>,
}

/// One compiled masking rule.
#[derive(Debug)]
pub struct MaskRule {
    pub id: String,
    pub pack: String,
    pub description: Option<String>,
    pub direction: Direction,
    /// As written: selector → action.
    pub detectors: Vec<(String, MaskAction)>,
    /// The file it came from, for errors found once every pack is loaded.
    path: PathBuf,
    /// Per detector index of the scanner, once resolved.
    actions: Vec<Option<MaskAction>>,
}

/// The masking of every loaded pack.
#[derive(Debug, Default)]
pub struct Masking {
    /// Built-in then custom detectors, in load order; `None` until `finish` (or when no pack
    /// has masking rules: nothing is ever scanned then).
    scanner: Option<Arc<Scanner>>,
    custom: Vec<(Detector, PathBuf)>,
    pub rules: Vec<MaskRule>,
    /// The rules' `match:`, compiled as policy rules are, parallel to `rules`.
    selectors: Vec<Rule>,
    index: Index,
}

/// Names a rule can give besides a detector's own.
const ALL: &str = "all";
const SECRETS: &str = "secrets";
const PII: &str = "pii";

impl Masking {
    /// Adds one pack's detectors and rules; rule ids share the namespace of policy rules.
    pub(super) fn add_pack(
        &mut self,
        spec: MaskingSpec,
        path: &Path,
        pack: &str,
        ids: &mut HashSet<String>,
    ) -> Result<(), Error> {
        let builtin: Vec<String> = Detector::builtin()
            .iter()
            .map(|d| d.name().to_string())
            .collect();
        for DetectorSpec(d) in spec.detectors {
            let clash = builtin.iter().any(|b| b == d.name())
                || [ALL, SECRETS, PII].contains(&d.name())
                || self.custom.iter().any(|(c, _)| c.name() == d.name());
            if clash {
                return Err(Error::Masking {
                    path: path.to_path_buf(),
                    what: format!("detector {}", d.name()),
                    message: "the name is taken (by a built-in detector, a class, `all`, or another pack's detector)".into(),
                });
            }
            self.custom.push((d, path.to_path_buf()));
        }
        for r in spec.rules {
            let invalid = |message: String| Error::Masking {
                path: path.to_path_buf(),
                what: format!("rule {}", r.id),
                message,
            };
            if r.id.is_empty() {
                return Err(invalid("id must not be empty".into()));
            }
            if !ids.insert(r.id.clone()) {
                return Err(invalid(
                    "duplicate rule id (ids are global across packs and shared with policy rules)"
                        .into(),
                ));
            }
            if r.detectors.is_empty() {
                return Err(invalid(
                    "names no detectors (give `detectors: {all: redact}` to mask everything)"
                        .into(),
                ));
            }
            let selector = compile(
                r.id.clone(),
                pack,
                r.description.clone(),
                Action::Allow,
                r.when,
                &invalid,
            )?;
            self.selectors.push(selector);
            self.rules.push(MaskRule {
                id: r.id,
                pack: pack.to_string(),
                description: r.description,
                direction: r.direction,
                detectors: r.detectors.into_iter().collect(),
                path: path.to_path_buf(),
                actions: Vec::new(),
            });
        }
        Ok(())
    }

    /// Once every pack is loaded: one scanner over the built-in and custom detectors, each
    /// rule's detector names resolved against it, and the index over the selectors.
    pub(super) fn finish(&mut self) -> Result<(), Error> {
        if self.rules.is_empty() && self.custom.is_empty() {
            return Ok(());
        }
        let mut all = Detector::builtin();
        all.extend(self.custom.iter().map(|(d, _)| d.clone()));
        let scanner = Scanner::new(&all).map_err(|e| Error::Masking {
            path: self
                .custom
                .first()
                .map(|(_, p)| p.clone())
                .unwrap_or_default(),
            what: "detectors".into(),
            message: e.to_string(),
        })?;
        for r in &mut self.rules {
            r.actions = resolve(&scanner, &r.detectors).map_err(|message| Error::Masking {
                path: r.path.clone(),
                what: format!("rule {}", r.id),
                message,
            })?;
        }
        self.index = Index::build(&self.selectors);
        self.scanner = Some(Arc::new(scanner));
        Ok(())
    }

    /// Custom detectors loaded, over every pack.
    pub fn custom_count(&self) -> usize {
        self.custom.len()
    }

    /// The rules' `match:`, compiled as policy rules are.
    pub(super) fn selectors(&self) -> impl Iterator<Item = &super::pack::Rule> {
        self.selectors.iter()
    }

    /// The custom detectors' names, in load order.
    pub fn custom_names(&self) -> impl Iterator<Item = &str> {
        self.custom.iter().map(|(d, _)| d.name())
    }

    /// The masking that applies to the request `q` classified as `op` (the offline tools'
    /// way in: the pipeline evaluates the facts it already has).
    pub fn for_query(&self, q: &super::Query<'_>, op: &crate::adapter::Operation) -> Applied {
        self.evaluate(&Facts {
            target: q.target,
            server: q.server,
            method: q.method,
            path: q.path,
            operation: op,
            body: q.body,
            default: q.default,
            workload: q.workload,
            identity: q.identity,
            switch: q.switch,
        })
    }

    /// The scanner every plan shares; `None` when no pack masks anything.
    pub fn scanner(&self) -> Option<&Arc<Scanner>> {
        self.scanner.as_ref()
    }

    /// The masking rules that apply to a request and the action per detector for each
    /// direction (strictest wins).
    pub fn evaluate(&self, f: &Facts<'_>) -> Applied {
        let mut out = Applied::default();
        if self.rules.is_empty() {
            return out;
        }
        for i in self.index.candidates(f) {
            let i = i as usize;
            if !self.selectors[i].matches(f) {
                continue;
            }
            let r = &self.rules[i];
            out.rules.push(r.id.clone());
            if r.direction.request() {
                merge(&mut out.request, &r.actions);
            }
            if r.direction.response() {
                merge(&mut out.response, &r.actions);
            }
        }
        out
    }

    /// The evaluation over every rule that the index replaces (tests hold the two equal).
    #[cfg(test)]
    fn evaluate_linear(&self, f: &Facts<'_>) -> Applied {
        let mut out = Applied::default();
        for (r, s) in self.rules.iter().zip(&self.selectors) {
            if s.matches(f) {
                out.rules.push(r.id.clone());
                if r.direction.request() {
                    merge(&mut out.request, &r.actions);
                }
                if r.direction.response() {
                    merge(&mut out.response, &r.actions);
                }
            }
        }
        out
    }
}

/// A rule's selectors → an action per detector: a detector's own name beats its class,
/// which beats `all`, within one rule.
fn resolve(sc: &Scanner, keys: &[(String, MaskAction)]) -> Result<Vec<Option<MaskAction>>, String> {
    let n = sc.detectors().len();
    let mut best: Vec<Option<(u8, MaskAction)>> = vec![None; n];
    for (key, action) in keys {
        let (rank, picks): (u8, Vec<usize>) = match key.as_str() {
            ALL => (0, (0..n).collect()),
            SECRETS | "secret" => (1, by_class(sc, Class::Secret)),
            PII => (1, by_class(sc, Class::Pii)),
            name => match sc.detectors().iter().position(|d| d.name() == name) {
                Some(i) => (2, vec![i]),
                None => {
                    let mut names: Vec<&str> = sc.detectors().iter().map(Detector::name).collect();
                    names.sort_unstable();
                    return Err(format!(
                        "unknown detector {name:?}; detectors are {}, the classes `secrets` and `pii`, and `all`",
                        names.join(", ")
                    ));
                }
            },
        };
        for i in picks {
            if best[i].is_none_or(|(r, _)| rank > r) {
                best[i] = Some((rank, *action));
            }
        }
    }
    Ok(best.into_iter().map(|b| b.map(|(_, a)| a)).collect())
}

fn by_class(sc: &Scanner, class: Class) -> Vec<usize> {
    sc.detectors()
        .iter()
        .enumerate()
        .filter(|(_, d)| d.class() == class)
        .map(|(i, _)| i)
        .collect()
}

fn merge(into: &mut Option<Vec<Option<MaskAction>>>, actions: &[Option<MaskAction>]) {
    let v = into.get_or_insert_with(|| vec![None; actions.len()]);
    for (slot, a) in v.iter_mut().zip(actions) {
        if let Some(a) = a
            && slot.is_none_or(|s| *a > s)
        {
            *slot = Some(*a);
        }
    }
}

/// What masking applies to one request: the rules that matched, and per direction an action
/// per detector (`None` for a direction no rule covers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub rules: Vec<String>,
    pub request: Option<Vec<Option<MaskAction>>>,
    pub response: Option<Vec<Option<MaskAction>>>,
}

impl Applied {
    /// Whether any masking rule applies (and `on_unscannable` therefore matters).
    pub fn any(&self) -> bool {
        self.request.is_some() || self.response.is_some()
    }

    /// The two plans, with `key` for pseudonyms.
    pub fn plans(&self, sc: &Arc<Scanner>, key: &PseudonymKey) -> (Option<Plan>, Option<Plan>) {
        let plan = |v: &Vec<Option<MaskAction>>| {
            Plan::new(
                sc.clone(),
                v.iter().map(|a| a.map(|a| a.action(key))).collect(),
            )
        };
        (
            self.request.as_ref().map(plan),
            self.response.as_ref().map(plan),
        )
    }

    /// `name: action` for every detector on in `dir`, for `policy explain`.
    pub fn describe(actions: &[Option<MaskAction>], sc: &Scanner) -> String {
        let on: Vec<String> = actions
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.map(|a| format!("{}: {}", sc.name(i), a.as_str())))
            .collect();
        if on.is_empty() {
            "no detector".into()
        } else {
            on.join(", ")
        }
    }
}

#[cfg(test)]
mod tests;
