//! Evaluating the policy for one request.
use serde::Serialize;

use super::{Action, Policy, pack::Rule};
use crate::{
    adapter::{self, Operation, Server},
    identity::Principal,
    workload::Workload,
};

/// A request as the policy is asked about it, before its adapter has classified it.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub target: &'a str,
    pub server: Server,
    pub method: &'a str,
    pub path: &'a str,
    pub body: Option<&'a serde_json::Value>,
    /// The target's action when no rule matches.
    pub default: Action,
    /// The calling workload; rules with workload matchers never match without one.
    pub workload: Option<&'a Workload>,
    /// The verified token's principal; `None` is an unauthenticated request.
    pub identity: Option<&'a Principal>,
    /// The protocol the request asks to switch to, if any.
    pub switch: Option<Switch>,
}

/// What the policy sees of a request.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub target: &'a str,
    pub server: Server,
    pub method: &'a str,
    pub path: &'a str,
    pub operation: &'a Operation,
    pub body: Option<&'a serde_json::Value>,
    /// The target's action when no rule matches.
    pub default: Action,
    /// The calling workload; rules with workload matchers never match without one.
    pub workload: Option<&'a Workload>,
    /// The verified token's principal; `None` is an unauthenticated request.
    pub identity: Option<&'a Principal>,
    /// The protocol the request asks to switch to, if any.
    pub switch: Option<Switch>,
}

/// A protocol switch a request asks for (`Upgrade: websocket`, `Upgrade: h2c`, `CONNECT`).
/// After it the connection carries a stream Sluice cannot judge request by request, so only
/// an allow rule that names it in `match.switches` lets it through: neither an allow rule
/// without `switches` nor a target's `default: allow` does. Any other protocol is refused
/// before the policy is asked (`pipeline/switch.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    Websocket,
    H2c,
    Connect,
}

impl Switch {
    pub fn as_str(self) -> &'static str {
        match self {
            Switch::Websocket => "websocket",
            Switch::H2c => "h2c",
            Switch::Connect => "connect",
        }
    }
}

impl std::fmt::Display for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Proof that the policy allowed a request; the upstream stage only takes one of these.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Permit {
    /// Allow rules that matched (empty when the target default allowed it).
    pub rules: Vec<String>,
    pub by_default: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Denial {
    /// The deny rule that decided, or None when the target default denied.
    pub rule: Option<String>,
    pub reason: String,
}

/// A request the policy neither allows nor denies outright: it may go on only once a person
/// approves it (a `require-approval` rule matched). The approval stage owns what happens
/// next (`approval::hold`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Hold {
    pub rule: String,
    pub reason: String,
    /// Who may approve, how long the request may wait, the grant window.
    #[serde(skip)]
    pub approval: std::sync::Arc<super::approval::Approval>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub enum Decision {
    Permit(Permit),
    Deny(Denial),
    Hold(Hold),
}

impl Decision {
    /// The action as policy files spell it. A held request is not allowed without approval,
    /// so for the offline tools (policy test, explain) it reads as deny.
    pub fn action(&self) -> Action {
        match self {
            Decision::Permit(_) => Action::Allow,
            Decision::Deny(_) | Decision::Hold(_) => Action::Deny,
        }
    }

    /// "allow", "deny" or "hold", as logs and counters spell it.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Permit(_) => "allow",
            Decision::Deny(_) => "deny",
            Decision::Hold(_) => "hold",
        }
    }

    /// Rule ids that decided: the allow rules, the deny rule, or the hold rule (none when
    /// the target default decided).
    pub fn rules(&self) -> impl Iterator<Item = &str> {
        let (many, one): (&[String], Option<&String>) = match self {
            Decision::Permit(p) => (&p.rules, None),
            Decision::Deny(d) => (&[], d.rule.as_ref()),
            Decision::Hold(h) => (&[], Some(&h.rule)),
        };
        many.iter().chain(one).map(String::as_str)
    }

    /// `rules`, owned.
    pub fn rule_ids(&self) -> Vec<String> {
        match self {
            Decision::Permit(p) => p.rules.clone(),
            Decision::Deny(d) => d.rule.iter().cloned().collect(),
            Decision::Hold(h) => vec![h.rule.clone()],
        }
    }
}

impl Policy {
    /// Classifies the request with its server's adapter, then evaluates it.
    pub fn decide(&self, q: &Query<'_>) -> (Operation, Decision) {
        let operation = adapter::classify(q.server, q.method, q.path, q.body);
        let decision = self.evaluate(&Facts {
            target: q.target,
            server: q.server,
            method: q.method,
            path: q.path,
            operation: &operation,
            body: q.body,
            default: q.default,
            workload: q.workload,
            identity: q.identity,
            switch: q.switch,
        });
        (operation, decision)
    }

    /// Decides over the rules the index names as candidates: every rule that can match, in
    /// load order, so the outcome is the one a walk over all rules gives.
    pub fn evaluate(&self, f: &Facts<'_>) -> Decision {
        let candidates = self.index.candidates(f);
        decide_over(candidates.iter().map(|&i| &self.rules[i as usize]), f)
    }

    /// The walk over every rule that the index replaces, kept as the reference it is tested
    /// against.
    #[cfg(test)]
    pub(super) fn evaluate_linear(&self, f: &Facts<'_>) -> Decision {
        decide_over(self.rules.iter(), f)
    }
}

/// Precedence (docs/policy.md): the first matching deny in load order decides; otherwise the
/// first matching require-approval rule holds the request; otherwise every matching allow, in
/// load order; otherwise the target default. A protocol switch is granted only by allow (or
/// require-approval) rules that name it (`Switch`).
fn decide_over<'r>(rules: impl Iterator<Item = &'r Rule>, f: &Facts<'_>) -> Decision {
    let mut allows = Vec::new();
    let mut hold: Option<&Rule> = None;
    for rule in rules {
        if !rule.matches(f) {
            continue;
        }
        if rule.approval.is_some() {
            if f.switch.is_none() || rule.switches.is_some() {
                hold.get_or_insert(rule);
            }
            continue;
        }
        match rule.action {
            Action::Allow if f.switch.is_some() && rule.switches.is_none() => {}
            Action::Deny => {
                let reason = rule.description.clone().unwrap_or_else(|| {
                    format!("{} on this server is not allowed", f.operation.class)
                });
                return Decision::Deny(Denial {
                    rule: Some(rule.id.clone()),
                    reason: naming(f.identity, reason),
                });
            }
            Action::Allow => allows.push(rule.id.clone()),
        }
    }
    if let Some((rule, approval)) = hold.and_then(|r| Some((r, r.approval.as_ref()?))) {
        return Decision::Hold(Hold {
            rule: rule.id.clone(),
            reason: approval.reason.clone(),
            approval: approval.clone(),
        });
    }
    if !allows.is_empty() {
        return Decision::Permit(Permit {
            rules: allows,
            by_default: false,
        });
    }
    if let Some(switch) = f.switch {
        return Decision::Deny(Denial {
            rule: None,
            reason: naming(
                f.identity,
                format!(
                    "no policy rule allows switching to {switch} on target {}: after the switch Sluice could not judge the stream request by request, so only a rule naming it in match.switches allows it",
                    f.target
                ),
            ),
        });
    }
    match f.default {
        Action::Allow => Decision::Permit(Permit {
            rules: Vec::new(),
            by_default: true,
        }),
        Action::Deny => Decision::Deny(Denial {
            rule: None,
            reason: naming(
                f.identity,
                match &f.operation.model {
                    // What was missing, named: the model is what grants are usually about.
                    Some(m) => format!(
                        "no policy rule allows {} {} ({}, model {m:?}) on target {}",
                        f.method, f.path, f.operation.class, f.target
                    ),
                    None => format!(
                        "no policy rule allows {} {} ({}) on target {}",
                        f.method, f.path, f.operation.class, f.target
                    ),
                },
            ),
        }),
    }
}

/// A denial of a token's request names who was denied (never the token), so the caller
/// can tell which identity the agent saw.
fn naming(id: Option<&Principal>, reason: String) -> String {
    match id {
        None => reason,
        Some(p) => format!(
            "subject {}, groups [{}]: {reason}",
            p.subject,
            p.groups.join(", ")
        ),
    }
}

impl Rule {
    pub(super) fn matches(&self, f: &Facts<'_>) -> bool {
        let op = f.operation;
        self.targets.as_ref().is_none_or(|g| g.is_match(f.target))
            && (self.servers.is_empty() || self.servers.contains(&f.server))
            && (self.operations.is_empty() || self.operations.contains(&op.class))
            && self.routes.as_ref().is_none_or(|g| g.is_match(op.route))
            && self
                .models
                .as_ref()
                .is_none_or(|g| op.model.as_deref().is_some_and(|m| g.is_match(m)))
            && self
                .except_models
                .as_ref()
                .is_none_or(|g| !op.model.as_deref().is_some_and(|m| g.is_match(m)))
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == f.method))
            && self.paths.as_ref().is_none_or(|g| g.is_match(f.path))
            && self.streaming.is_none_or(|s| s == op.streaming)
            && self.matches_body(f)
            && self.matches_workload(f.workload)
            && self.matches_identity(f.identity)
            && self
                .switches
                .as_ref()
                .is_none_or(|s| f.switch.is_some_and(|w| s.contains(&w)))
    }

    /// Every `body:` pointer finds its value, read as the server reads the body: a
    /// case-folding server's keys are folded, and so are the pointers that look into them.
    fn matches_body(&self, f: &Facts<'_>) -> bool {
        let found =
            |ptr: &str, want: &serde_json::Value| f.body.and_then(|b| b.pointer(ptr)) == Some(want);
        match (&self.body_folded, crate::adapter::key_match(f.server)) {
            (Some(folded), crate::adapter::keys::KeyMatch::GoFold) => folded
                .iter()
                .all(|(ptr, want)| want.as_ref().is_some_and(|w| found(ptr, w))),
            _ => self.body.iter().all(|(ptr, want)| found(ptr, want)),
        }
    }

    /// Rules without identity matchers match any caller; with them, a request without a
    /// verified token matches only `authenticated: false`.
    pub(super) fn matches_identity(&self, id: Option<&Principal>) -> bool {
        if self.identity_never {
            return false;
        }
        match (self.authenticated, id) {
            (Some(true), None) | (Some(false), Some(_)) => return false,
            _ => {}
        }
        if self.issuers.is_none()
            && self.subjects.is_none()
            && self.groups.is_none()
            && self.claims.is_none()
        {
            return true;
        }
        let Some(p) = id else { return false };
        self.issuers
            .as_ref()
            .is_none_or(|v| v.iter().any(|i| **i == *p.issuer))
            && self
                .subjects
                .as_ref()
                .is_none_or(|g| g.is_match(&p.subject))
            && self
                .groups
                .as_ref()
                .is_none_or(|want| p.groups.iter().any(|g| want.contains(g)))
            && self
                .claims
                .as_ref()
                .is_none_or(|want| want.iter().all(|(ptr, v)| p.claims.pointer(ptr) == Some(v)))
    }

    fn matches_workload(&self, w: Option<&Workload>) -> bool {
        let constrained = !self.uids.is_empty()
            || !self.gids.is_empty()
            || self.comms.is_some()
            || self.exes.is_some()
            || self.cgroups.is_some()
            || self.container_ids.is_some()
            || !self.container_runtimes.is_empty()
            || self.pod_uids.is_some()
            || self.users.is_some()
            || self.units.is_some();
        if !constrained {
            return true;
        }
        let Some(w) = w else { return false };
        (self.uids.is_empty() || self.uids.contains(&w.uid))
            && (self.gids.is_empty() || self.gids.contains(&w.gid))
            && self.comms.as_ref().is_none_or(|g| g.is_match(&w.comm))
            && self
                .exes
                .as_ref()
                .is_none_or(|g| w.exe.as_deref().is_some_and(|e| g.is_match(e)))
            && self
                .users
                .as_ref()
                .is_none_or(|g| w.user.as_deref().is_some_and(|u| g.is_match(u)))
            && self
                .units
                .as_ref()
                .is_none_or(|g| w.unit.as_deref().is_some_and(|u| g.is_match(u)))
            && self.matches_container(w)
    }

    /// A workload whose cgroup, container or pod is not known matches none of these: the
    /// agent never guesses them (`workload::container`).
    fn matches_container(&self, w: &Workload) -> bool {
        let container = w.container.as_ref();
        self.cgroups
            .as_ref()
            .is_none_or(|g| w.cgroup.as_deref().is_some_and(|p| g.is_match(p)))
            && self
                .container_ids
                .as_ref()
                .is_none_or(|g| container.is_some_and(|c| g.is_match(&c.id)))
            && (self.container_runtimes.is_empty()
                || container
                    .and_then(|c| c.runtime)
                    .is_some_and(|r| self.container_runtimes.contains(&r)))
            && self
                .pod_uids
                .as_ref()
                .is_none_or(|g| w.pod_uid.as_deref().is_some_and(|u| g.is_match(u)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{adapter::OpClass, policy::parse_pack};

    /// A chat completion on target `t` (OpenAI, default deny, no caller): each test changes
    /// what it is about.
    fn facts(op: &Operation) -> Facts<'_> {
        Facts {
            target: "t",
            server: Server::Openai,
            method: "POST",
            path: "/v1/chat/completions",
            operation: op,
            body: None,
            default: Action::Deny,
            workload: None,
            identity: None,
            switch: None,
        }
    }

    /// The decision, checked against the walk over every rule.
    fn evaluated(policy: &Policy, f: &Facts<'_>) -> Decision {
        let d = policy.evaluate(f);
        assert_eq!(d, policy.evaluate_linear(f));
        d
    }

    const PACK: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: PolicyPack
metadata: { name: id }
spec:
  rules:
    - id: ml-eng-llama
      action: allow
      match: { models: ["llama*"], identity: { groups: [ml-eng] } }
    - id: svc-any
      action: allow
      match: { identity: { issuers: ["http://127.0.0.1:1"], subjects: ["svc-*"] } }
    - id: nobody
      action: allow
      match: { identity: { groups: [] } }
    - id: anonymous-health
      action: allow
      match: { operations: [health], identity: { authenticated: false } }
    - id: no-pull-for-tokens
      action: deny
      match: { routes: [ollama.pull], identity: { authenticated: true } }
"#;

    fn decide(
        model: &str,
        class: OpClass,
        route: &'static str,
        id: Option<&Principal>,
    ) -> Decision {
        let policy = parse_pack(PACK, Path::new("id.yaml")).expect("pack loads");
        let op = Operation {
            class,
            route,
            model: Some(model.into()),
            streaming: false,
        };
        let f = Facts {
            server: Server::Ollama,
            path: "/api/chat",
            identity: id,
            ..facts(&op)
        };
        evaluated(&policy, &f)
    }

    fn who(issuer: &str, subject: &str, groups: &[&str]) -> Principal {
        Principal {
            issuer: issuer.into(),
            subject: subject.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            claims: Default::default(),
        }
    }

    #[test]
    fn identity_matchers_grant_by_group_subject_and_issuer_and_an_empty_list_grants_nothing() {
        let inf = OpClass::Inference;
        let alice = who("http://127.0.0.1:2", "alice", &["ml-eng"]);
        assert_eq!(
            decide("llama3", inf, "ollama.chat", Some(&alice)).rule_ids(),
            ["ml-eng-llama"]
        );
        // No token, or a token without the group: nothing grants it, and the denial names
        // who was denied.
        assert_eq!(
            decide("llama3", inf, "ollama.chat", None).action(),
            Action::Deny
        );
        let bob = who("http://127.0.0.1:2", "bob", &["ops"]);
        let Decision::Deny(d) = decide("llama3", inf, "ollama.chat", Some(&bob)) else {
            panic!("bob has no grant");
        };
        assert!(
            d.reason
                .starts_with("subject bob, groups [ops]: no policy rule allows"),
            "{}",
            d.reason
        );
        // Subject globs need their issuer too.
        let svc = who("http://127.0.0.1:1", "svc-batch", &[]);
        assert_eq!(
            decide("mistral", inf, "ollama.chat", Some(&svc)).rule_ids(),
            ["svc-any"]
        );
        let other = who("http://127.0.0.1:2", "svc-batch", &[]);
        assert_eq!(
            decide("mistral", inf, "ollama.chat", Some(&other)).action(),
            Action::Deny
        );
        // authenticated: false matches only requests without a token, true only with one.
        assert_eq!(
            decide("x", OpClass::Health, "ollama.version", None).rule_ids(),
            ["anonymous-health"]
        );
        assert_eq!(
            decide("x", OpClass::Health, "ollama.version", Some(&alice)).action(),
            Action::Deny
        );
        let pull = decide("llama3", OpClass::Management, "ollama.pull", Some(&alice));
        assert_eq!(pull.rule_ids(), ["no-pull-for-tokens"]);
    }

    const SWITCHES: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: PolicyPack
metadata: { name: sw }
spec:
  rules:
    - id: no-evil
      action: deny
      match: { workload: { comms: [evil] } }
    - id: any-get
      action: allow
      match: { methods: [GET] }
    - id: ws-here
      action: allow
      match: { paths: ["/ws"], switches: [websocket] }
    - id: tunnels
      action: allow
      match: { switches: [connect] }
"#;

    fn switching(path: &str, switch: Option<Switch>, default: Action, comm: &str) -> Decision {
        let policy = parse_pack(SWITCHES, Path::new("sw.yaml")).expect("pack loads");
        let op = Operation {
            class: OpClass::Unknown,
            route: "unknown",
            model: None,
            streaming: false,
        };
        let w = Workload::described(1, 1, comm.into(), None);
        let f = Facts {
            method: if switch == Some(Switch::Connect) {
                "CONNECT"
            } else {
                "GET"
            },
            path,
            default,
            workload: Some(&w),
            switch,
            ..facts(&op)
        };
        evaluated(&policy, &f)
    }

    #[test]
    fn only_an_allow_rule_naming_the_switch_allows_it() {
        let (ws, deny, allow) = (Some(Switch::Websocket), Action::Deny, Action::Allow);
        // Named: allowed by that rule alone (`any-get` matches too, but grants no switch).
        assert_eq!(switching("/ws", ws, deny, "curl").rule_ids(), ["ws-here"]);
        assert_eq!(
            switching("127.0.0.1:443", Some(Switch::Connect), deny, "curl").rule_ids(),
            ["tunnels"]
        );
        // Not named here, another switch, or only a default allow: denied, by no rule.
        for (path, switch, default) in [
            ("/other", ws, deny),
            ("/other", ws, allow),
            ("/ws", Some(Switch::H2c), allow),
        ] {
            let Decision::Deny(d) = switching(path, switch, default, "curl") else {
                panic!("{path} {switch:?} must be denied");
            };
            assert_eq!(d.rule, None);
            assert!(d.reason.contains("match.switches"), "{}", d.reason);
        }
        // A deny rule without `switches` still applies to a switch.
        assert_eq!(switching("/ws", ws, allow, "evil").rule_ids(), ["no-evil"]);
        // A rule about switches does not match a request that asks for none.
        assert_eq!(switching("/ws", None, deny, "curl").rule_ids(), ["any-get"]);
    }

    #[test]
    fn switch_names_outside_the_vocabulary_are_refused_at_load_with_their_place() {
        let text = SWITCHES.replace("switches: [connect]", "switches: [tls]");
        let err = parse_pack(&text, Path::new("sw.yaml")).expect_err("unknown switch");
        let shown = err.to_string();
        assert!(shown.starts_with("sw.yaml:"), "{shown}");
        assert!(shown.contains("websocket"), "{shown}");
    }

    #[test]
    fn users_and_units_select_callers_and_an_unknown_one_matches_neither() {
        let text = r#"
apiVersion: sluice.dev/v1alpha1
kind: PolicyPack
metadata: { name: names }
spec:
  rules:
    - id: batch-user
      action: allow
      match: { workload: { users: ["batch-*"] } }
    - id: chat-unit
      action: allow
      match: { workload: { units: ["chat.service"] } }
"#;
        let policy = parse_pack(text, Path::new("n.yaml")).expect("pack loads");
        let op = Operation {
            class: OpClass::Inference,
            route: "openai.chat.completions",
            model: None,
            streaming: false,
        };
        let decide = |w: &Workload| {
            let f = Facts {
                workload: Some(w),
                ..facts(&op)
            };
            evaluated(&policy, &f).rule_ids()
        };
        let plain = Workload::described(1500, 1500, "python3".into(), None);
        assert_eq!(
            decide(&plain.clone().named(Some("batch-7".into()))),
            ["batch-user"]
        );
        assert!(decide(&plain.clone().named(Some("alice".into()))).is_empty());
        // A uid with no account has no user name: user rules never match it.
        assert!(decide(&plain).is_empty());
        let system_unit = plain.clone().in_cgroup("/system.slice/chat.service/worker");
        assert_eq!(decide(&system_unit), ["chat-unit"]);
        // A user can start a unit of that name under their own manager: not the system's.
        let user_unit = plain
            .clone()
            .in_cgroup("/user.slice/user-1000.slice/user@1000.service/app.slice/chat.service");
        assert!(decide(&user_unit).is_empty());
        assert!(decide(&plain.in_cgroup("/system.slice/other.service")).is_empty());
    }

    #[test]
    fn claim_values_grant_only_when_every_pointer_holds_its_value() {
        let text = r#"
apiVersion: sluice.dev/v1alpha1
kind: PolicyPack
metadata: { name: claims }
spec:
  rules:
    - id: acme-verified
      action: allow
      match: { identity: { claims: { /tenant: acme, /email_verified: true, /org/tier: 2 } } }
    - id: nothing
      action: allow
      match: { identity: { claims: {} } }
"#;
        let policy = parse_pack(text, Path::new("c.yaml")).expect("pack loads");
        let op = Operation {
            class: OpClass::Inference,
            route: "openai.chat.completions",
            model: None,
            streaming: false,
        };
        let decide = |claims: Option<serde_json::Value>| {
            let p = claims.map(|c| Principal {
                claims: std::sync::Arc::new(c),
                ..who("http://127.0.0.1:1", "alice", &[])
            });
            let f = Facts {
                identity: p.as_ref(),
                ..facts(&op)
            };
            evaluated(&policy, &f).rule_ids()
        };
        let acme =
            serde_json::json!({"tenant": "acme", "email_verified": true, "org": {"tier": 2}});
        assert_eq!(decide(Some(acme.clone())), ["acme-verified"]);
        for (ptr, other) in [
            ("tenant", serde_json::json!("evil")),
            ("email_verified", serde_json::json!("true")),
            ("org", serde_json::json!({"tier": 3})),
        ] {
            let mut c = acme.clone();
            c[ptr] = other;
            assert!(decide(Some(c.clone())).is_empty(), "{c}");
        }
        assert!(decide(Some(serde_json::json!({"tenant": "acme"}))).is_empty());
        // No token: claim matchers never match.
        assert!(decide(None).is_empty());
        let bad = text.replace("/tenant: acme", "tenant: acme");
        let err = parse_pack(&bad, Path::new("c.yaml")).expect_err("not a pointer");
        assert!(err.to_string().contains("JSON pointer"), "{err}");
    }

    #[test]
    fn contradictory_identity_matchers_are_refused_at_load() {
        let text = PACK.replace(
            "identity: { authenticated: false }",
            "identity: { authenticated: false, groups: [x] }",
        );
        let err = parse_pack(&text, Path::new("id.yaml")).expect_err("contradiction");
        assert!(err.to_string().contains("authenticated: false"), "{err}");
    }
}
