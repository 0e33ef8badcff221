//! What a `require-approval` rule carries: who may approve, whether the requester must say
//! why, how long the request may wait, and whether an approval opens a window for the next
//! ones. Checked while the pack is read, so a bad value is reported with its file:line:column.
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// The longest a held request may wait for a person: a client (and its connection, and its
/// buffered body) is not kept longer than this.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// When the rule names no timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest grant window an approval may open (and `approve --for` may ask for).
pub const MAX_GRANT: Duration = Duration::from_secs(24 * 3600);
/// The header a client sets its justification in, unless the rule names another.
pub const DEFAULT_JUSTIFICATION_HEADER: &str = "x-sluice-justification";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApprovalSpec {
    /// Shown to approvers (and to the client when refused); defaults to the rule's description.
    #[serde(default)]
    reason: Option<String>,
    approvers: ApproversSpec,
    #[serde(default)]
    justification: Option<JustificationSpec>,
    #[serde(default, deserialize_with = "timeout")]
    timeout: Option<Duration>,
    #[serde(default)]
    grant: Option<GrantSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproversSpec {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    require: Require,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JustificationSpec {
    #[serde(default)]
    required: bool,
    #[serde(default, deserialize_with = "header_name")]
    header: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantSpec {
    #[serde(rename = "for", deserialize_with = "grant_window")]
    window: Duration,
    #[serde(default)]
    scope: GrantScope,
}

/// Whether one approver is enough (`any`) or every named user and group must have
/// approved (`all`: each user in person, each group through at least one member).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Require {
    #[default]
    Any,
    All,
}

/// Whom an approval's grant window covers: the same subject (a token's issuer and subject,
/// or without a token the same uid), or the same workload (uid and cgroup).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantScope {
    #[default]
    Subject,
    Workload,
}

/// A `require-approval` rule's settings, compiled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approval {
    pub reason: String,
    pub users: Vec<String>,
    pub groups: Vec<String>,
    pub require: Require,
    /// `Some`: the header the justification is read from; `required` says whether a
    /// request without it is refused.
    pub justification_header: Option<String>,
    pub justification_required: bool,
    pub timeout: Duration,
    pub grant: Option<(Duration, GrantScope)>,
}

impl ApprovalSpec {
    /// `description` is the rule's, the reason when the approval names none.
    pub(super) fn compile(self, description: Option<&str>) -> Result<Approval, String> {
        let a = self.approvers;
        if a.users.is_empty() && a.groups.is_empty() {
            return Err(
                "approval.approvers names no user and no group: nobody could approve".into(),
            );
        }
        if let Some(empty) = a
            .users
            .iter()
            .chain(&a.groups)
            .find(|n| n.trim().is_empty())
        {
            return Err(format!("approval.approvers: empty name {empty:?}"));
        }
        let (header, required) = match self.justification {
            None => (None, false),
            Some(j) => (
                Some(
                    j.header
                        .unwrap_or_else(|| DEFAULT_JUSTIFICATION_HEADER.to_string()),
                ),
                j.required,
            ),
        };
        Ok(Approval {
            reason: self
                .reason
                .or_else(|| description.map(str::to_string))
                .unwrap_or_else(|| "this request needs a person's approval".into()),
            users: a.users,
            groups: a.groups,
            require: a.require,
            justification_header: header,
            justification_required: required,
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            grant: self.grant.map(|g| (g.window, g.scope)),
        })
    }
}

impl Approval {
    /// "users [a, b], groups [c]" with any/all, as explain and approvers read it.
    pub fn approvers(&self) -> String {
        let mut parts = Vec::new();
        if !self.users.is_empty() {
            parts.push(format!("users [{}]", self.users.join(", ")));
        }
        if !self.groups.is_empty() {
            parts.push(format!("groups [{}]", self.groups.join(", ")));
        }
        let how = match self.require {
            Require::Any => "any one of",
            Require::All => "all of",
        };
        format!("{how} {}", parts.join(", "))
    }
}

/// A duration as people write it (`90s`, `5m`, `1h`), within `(0, max]`.
fn bounded(text: &str, max: Duration, what: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{what} {text:?}: {e} (write e.g. 90s, 5m, 1h)"))?;
    if d.is_zero() || d > max {
        return Err(format!(
            "{what} {text:?} must be more than 0 and at most {}",
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    bounded(&text, MAX_TIMEOUT, "timeout")
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn grant_window<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    bounded(&text, MAX_GRANT, "grant.for").map_err(serde::de::Error::custom)
}

fn header_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    let name = http::HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a header name")))?;
    Ok(Some(name.as_str().to_string()))
}

/// Parses a grant window as the CLI's `--for` writes it.
pub fn parse_window(text: &str) -> Result<Duration, String> {
    bounded(text, MAX_GRANT, "--for")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{
        adapter::{OpClass, Operation, Server},
        policy::{Action, Decision, Facts, parse_pack},
    };

    const PACK: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: PolicyPack
metadata: { name: jit }
spec:
  rules:
    - id: pull-needs-approval
      description: pulling a model changes what runs on this node
      action: require-approval
      approval:
        approvers: { users: [alice], groups: [sre], require: all }
        justification: { required: true }
        timeout: 2m
        grant: { for: 30m, scope: workload }
      match: { routes: [ollama.pull] }
    - id: no-evil-pull
      action: deny
      match: { routes: [ollama.pull], models: ["evil*"] }
    - id: any
      action: allow
"#;

    fn decide(model: &str) -> Decision {
        let p = parse_pack(PACK, Path::new("jit.yaml")).expect("pack loads");
        let op = Operation {
            class: OpClass::Management,
            route: "ollama.pull",
            model: Some(model.into()),
            streaming: false,
        };
        p.evaluate(&Facts {
            target: "t",
            server: Server::Ollama,
            method: "POST",
            path: "/api/pull",
            operation: &op,
            body: None,
            default: Action::Deny,
            workload: None,
            identity: None,
            switch: None,
        })
    }

    #[test]
    fn a_require_approval_rule_holds_over_allows_and_a_deny_still_wins() {
        let Decision::Hold(h) = decide("llama3") else {
            panic!("held");
        };
        assert_eq!(h.rule, "pull-needs-approval");
        assert_eq!(h.reason, "pulling a model changes what runs on this node");
        let a = &h.approval;
        assert_eq!(a.approvers(), "all of users [alice], groups [sre]");
        assert_eq!(a.timeout, std::time::Duration::from_secs(120));
        assert_eq!(
            a.justification_header.as_deref(),
            Some("x-sluice-justification")
        );
        assert!(a.justification_required);
        assert_eq!(
            a.grant,
            Some((
                std::time::Duration::from_secs(1800),
                super::GrantScope::Workload
            ))
        );
        assert_eq!(decide("evil-model").rule_ids(), ["no-evil-pull"]);
    }

    #[test]
    fn bad_approval_settings_are_refused_at_load_with_their_place() {
        for (from, to, want) in [
            ("timeout: 2m", "timeout: 2h", "jit.yaml:11:"),
            ("timeout: 2m", "timeout: soon", "jit.yaml:11:"),
            ("require: all", "require: most", "jit.yaml:11:"),
            ("scope: workload", "scope: team", "jit.yaml:14:"),
            (
                "justification: { required: true }",
                "justification: { header: \"bad header\" }",
                "jit.yaml:12:",
            ),
            ("timeout: 2m", "timeout: 2m\n        extra: 1", "jit.yaml:"),
        ] {
            let text = PACK.replace(from, to);
            let e = parse_pack(&text, Path::new("jit.yaml")).expect_err(to);
            assert!(e.to_string().starts_with(want), "{to}: {e}");
        }
        let nobody = PACK.replace("users: [alice], groups: [sre], ", "");
        let e = parse_pack(&nobody, Path::new("jit.yaml")).expect_err("no approvers");
        assert!(e.to_string().contains("nobody could approve"), "{e}");
        let bare = PACK.replace(
            "      approval:\n        approvers: { users: [alice], groups: [sre], require: all }\n        justification: { required: true }\n        timeout: 2m\n        grant: { for: 30m, scope: workload }\n",
            "",
        );
        let e = parse_pack(&bare, Path::new("jit.yaml")).expect_err("no approval block");
        assert!(e.to_string().contains("needs `approval:`"), "{e}");
        let stray = PACK.replace(
            "    - id: any\n      action: allow\n",
            "    - id: any\n      action: allow\n      approval: { approvers: { users: [a] } }\n",
        );
        let e = parse_pack(&stray, Path::new("jit.yaml")).expect_err("approval on allow");
        assert!(e.to_string().contains("require-approval only"), "{e}");
    }

    #[test]
    fn case_files_expect_a_hold_as_require_approval() {
        let dir = std::env::temp_dir().join(format!("sluice-jit-cases-{}", std::process::id()));
        let cases = dir.join("cases");
        std::fs::create_dir_all(&cases).expect("dirs");
        std::fs::write(dir.join("pack.yaml"), PACK).expect("pack");
        let case = |name: &str, model: &str, expect: &str| {
            std::fs::write(
                cases.join(name),
                format!(
                    "description: {name}\nserver: ollama\nrequest: {{method: POST, path: /api/pull, body: {{model: {model}}}}}\nexpect: {expect}\n"
                ),
            )
            .expect("case");
        };
        case(
            "held.yaml",
            "llama3",
            "{decision: require-approval, rules: [pull-needs-approval]}",
        );
        case(
            "alias.yaml",
            "llama3",
            "{decision: hold, rules: [pull-needs-approval]}",
        );
        case("wrong.yaml", "llama3", "{decision: allow, rules: [any]}");
        let out = crate::policy::cases::run_all(std::slice::from_ref(&dir)).expect("runs");
        let _ = std::fs::remove_dir_all(&dir);
        let failed: Vec<String> = out
            .iter()
            .filter_map(|o| o.failure.clone().map(|f| format!("{}: {f}", o.description)))
            .collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(
            failed[0].starts_with(
                "wrong.yaml: expected allow by [\"any\"], got hold by [\"pull-needs-approval\"]"
            ),
            "{failed:?}"
        );
    }
}
