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
