//! Effective permissions: for one identity (a verified token's principal, or none), every rule
//! whose identity matchers accept it, with what the rule is about: `sluice policy grants`.
//! The rules' other matchers (targets, models, operations, workload…) are what a grant
//! covers, so they are shown, not evaluated; deny rules that apply are listed too, since
//! they win over any allow.
use serde::Serialize;

use super::{Action, Policy, pack::Rule};
use crate::identity::Principal;

/// One rule that applies to the identity asked about, as `grants` shows it. An empty list
/// means the rule does not constrain that matcher ("any").
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Grant {
    pub rule: String,
    pub pack: String,
    pub action: Action,
    pub description: Option<String>,
    pub targets: Vec<String>,
    pub servers: Vec<String>,
    pub operations: Vec<String>,
    pub routes: Vec<String>,
    pub models: Vec<String>,
    pub except_models: Vec<String>,
    pub methods: Vec<String>,
    pub paths: Vec<String>,
    /// JSON pointers the body must hold a given value at.
    pub body: Vec<String>,
    pub streaming: Option<bool>,
    /// The workload matchers, as `name [values]` (the grant holds only for those callers).
    pub workload: Vec<String>,
    pub switches: Vec<String>,
    /// For a `require-approval` rule (whose `action` reads deny): who may approve.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvers: Option<String>,
}

impl Policy {
    /// Rules whose identity matchers accept `who` (`None`: a request without a token), in
    /// load order. A principal with an empty issuer stands for a token of any issuer: rules
    /// limited to issuers are then shown too (each as if the token came from its first).
    pub fn grants(&self, who: Option<&Principal>) -> Vec<Grant> {
        self.rules
            .iter()
            .filter(|r| match (who, r.issuers.as_deref()) {
                (Some(p), Some([first, ..])) if p.issuer.is_empty() => {
                    let from = Principal {
                        issuer: first.as_str().into(),
                        ..p.clone()
                    };
                    r.matches_identity(Some(&from))
                }
                _ => r.matches_identity(who),
            })
            .map(Grant::of)
            .collect()
    }
}

impl Grant {
    fn of(r: &Rule) -> Grant {
        let p = &r.patterns;
        let strings = |v: &[String]| v.to_vec();
        let mut workload = Vec::new();
        let mut add = |name: &str, values: Vec<String>| {
            if !values.is_empty() {
                workload.push(format!("{name} [{}]", values.join(", ")));
            }
        };
        add("uids", r.uids.iter().map(u32::to_string).collect());
        add("gids", r.gids.iter().map(u32::to_string).collect());
        add("users", strings(&p.users));
        add("comms", strings(&p.comms));
        add("exes", strings(&p.exes));
        add("units", strings(&p.units));
        add("cgroups", strings(&p.cgroups));
        add("containerIds", strings(&p.container_ids));
        add(
            "containerRuntimes",
            r.container_runtimes
                .iter()
                .map(|c| c.name().to_string())
                .collect(),
        );
        add("podUids", strings(&p.pod_uids));
        Grant {
            rule: r.id.clone(),
            pack: r.pack.clone(),
            action: r.action,
            description: r.description.clone(),
            targets: strings(&p.targets),
            servers: r.servers.iter().map(ToString::to_string).collect(),
            operations: r
                .operations
                .iter()
                .map(|o| o.as_str().to_string())
                .collect(),
            routes: strings(&p.routes),
            models: strings(&p.models),
            except_models: strings(&p.except_models),
            methods: r.methods.clone(),
            paths: strings(&p.paths),
            body: r
                .body
                .iter()
                .map(|(ptr, v)| format!("{ptr} = {v}"))
                .collect(),
            streaming: r.streaming,
            workload,
            switches: r
                .switches
                .iter()
                .flatten()
                .map(|s| s.as_str().to_string())
                .collect(),
            approvers: r.approval.as_ref().map(|a| a.approvers()),
        }
    }

    /// `name: values` for each matcher the rule sets, e.g. `models: llama3*, mistral`.
    pub fn conditions(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut add = |name: &str, v: &[String]| {
            if !v.is_empty() {
                out.push(format!("{name}: {}", v.join(", ")));
            }
        };
        add("targets", &self.targets);
        add("servers", &self.servers);
        add("operations", &self.operations);
        add("routes", &self.routes);
        add("models", &self.models);
        add("except models", &self.except_models);
        add("methods", &self.methods);
        add("paths", &self.paths);
        add("body", &self.body);
        add("workload", &self.workload);
        add("switches", &self.switches);
        if let Some(s) = self.streaming {
            out.push(format!("streaming: {s}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Arc};

    use super::*;
    use crate::policy::parse_pack;

    const PACK: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: PolicyPack
metadata: { name: grants }
spec:
  rules:
    - id: ml-eng-llama
      action: allow
      match: { targets: [ollama], models: ["llama3*"], operations: [inference, embedding], identity: { groups: [ml-eng] } }
    - id: batch-from-jobs
      action: allow
      match: { models: [mistral], workload: { users: ["batch-*"], units: [jobs.service] }, identity: { subjects: ["svc-*"] } }
    - id: no-pull-for-tokens
      action: deny
      match: { routes: [ollama.pull], identity: { authenticated: true } }
    - id: anonymous-health
      action: allow
      match: { operations: [health], identity: { authenticated: false } }
    - id: acme-only
      action: allow
      match: { identity: { claims: { /tenant: acme } } }
    - id: from-issuer-two
      action: allow
      match: { identity: { issuers: ["http://127.0.0.1:2"], groups: [ml-eng] } }
"#;

    fn who(subject: &str, groups: &[&str], claims: serde_json::Value) -> Principal {
        Principal {
            issuer: "http://127.0.0.1:1".into(),
            subject: subject.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            claims: Arc::new(claims),
        }
    }

    fn ids(g: &[Grant]) -> Vec<&str> {
        g.iter().map(|g| g.rule.as_str()).collect()
    }

    #[test]
    fn an_identity_sees_the_rules_that_apply_to_it_and_what_they_cover() {
        let policy = parse_pack(PACK, Path::new("g.yaml")).expect("pack loads");
        let alice = who("alice", &["ml-eng"], serde_json::json!({}));
        let g = policy.grants(Some(&alice));
        assert_eq!(ids(&g), ["ml-eng-llama", "no-pull-for-tokens"]);
        // No issuer given: a token of any issuer, so the rule limited to one shows too.
        let anywhere = Principal {
            issuer: "".into(),
            ..alice.clone()
        };
        assert_eq!(
            ids(&policy.grants(Some(&anywhere))),
            ["ml-eng-llama", "no-pull-for-tokens", "from-issuer-two"]
        );
        assert_eq!(
            g[0].conditions(),
            [
                "targets: ollama",
                "operations: inference, embedding",
                "models: llama3*"
            ]
        );
        assert_eq!(g[1].action, Action::Deny);
        let svc = who("svc-batch", &[], serde_json::json!({"tenant": "acme"}));
        let g = policy.grants(Some(&svc));
        assert_eq!(
            ids(&g),
            ["batch-from-jobs", "no-pull-for-tokens", "acme-only"]
        );
        assert_eq!(g[0].workload, ["users [batch-*]", "units [jobs.service]"]);
        // Without a token: only the rules for unauthenticated callers (and those without
        // identity matchers, of which this pack has none).
        assert_eq!(ids(&policy.grants(None)), ["anonymous-health"]);
    }
}
