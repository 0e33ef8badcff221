//! `credential:` on a `protocol: http` target: which header carries the upstream key, with
//! which scheme, and where the key comes from. Checked while the YAML is read, so a mistake
//! is reported at its `file:line:column` like every other setting.
use std::{fmt, path::PathBuf, time::Duration};

use http::HeaderName;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Raw")]
pub struct Settings {
    /// The header the upstream reads its key from.
    pub header: HeaderName,
    /// Put before the key with one space (`Bearer`); `None`: the key alone (`x-api-key`).
    pub scheme: Option<String>,
    pub source: Source,
    /// How often a `command` is run again (`refresh_secs`), for keys a secrets manager
    /// rotates; `None`: once, at start. Files are watched instead; a variable cannot change.
    pub refresh: Option<Duration>,
    /// The callers this key is for (`credentials:` entries); `None`: every caller.
    pub when: Option<When>,
}

/// Which callers a key of `credentials:` is for. Every matcher given must hold; a request
/// without a token matches no `groups` or `subjects`, a uid without an account no `users`.
/// Patterns are exact or end in `*` (a prefix): a target has a handful of keys, not the
/// thousands of rules the policy's glob index is built for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// The verified token's issuer, exactly as configured in `identity.issuers[].issuer`.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// The verified token carries at least one of these groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The verified token's subject.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// The caller's user name on the host.
    #[serde(default)]
    pub users: Vec<String>,
    /// The caller's systemd unit.
    #[serde(default)]
    pub units: Vec<String>,
}

impl When {
    /// Whether it names callers by what a token says (groups, subjects) without saying
    /// whose tokens: with several issuers, another issuer's token could say the same.
    pub fn trusts_any_issuer(&self) -> bool {
        self.issuers.is_empty() && !(self.groups.is_empty() && self.subjects.is_empty())
    }

    fn is_empty(&self) -> bool {
        self.issuers.is_empty()
            && self.groups.is_empty()
            && self.subjects.is_empty()
            && self.users.is_empty()
            && self.units.is_empty()
    }

    pub fn matches(
        &self,
        who: Option<&crate::identity::Principal>,
        w: &crate::workload::Workload,
    ) -> bool {
        let one_of = |patterns: &[String], value: Option<&str>| {
            patterns.is_empty()
                || value.is_some_and(|v| {
                    patterns.iter().any(|p| match p.strip_suffix('*') {
                        Some(prefix) => v.starts_with(prefix),
                        None => p == v,
                    })
                })
        };
        (self.issuers.is_empty()
            || who.is_some_and(|p| self.issuers.iter().any(|i| **i == *p.issuer)))
            && (self.groups.is_empty()
                || who.is_some_and(|p| p.groups.iter().any(|g| self.groups.contains(g))))
            && one_of(&self.subjects, who.map(|p| p.subject.as_str()))
            && one_of(&self.users, w.user.as_deref())
            && one_of(&self.units, w.unit.as_deref())
    }
}

/// Where the key is read from. A file is watched for rotation and a command is run again
/// every `refresh_secs` when set; an environment variable cannot change under a running
/// process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Env(String),
    Command(Vec<String>),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(n) => write!(f, "environment variable {n}"),
            Source::Command(argv) => write!(f, "command {}", argv.first().map_or("", |s| s)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    env: Option<String>,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    refresh_secs: Option<u64>,
    #[serde(default)]
    when: Option<When>,
}

/// A command runs on a blocking thread for up to its 10 s timeout: more often than this
/// would keep a thread busy and hammer the secrets manager.
const MIN_REFRESH_SECS: u64 = 30;

/// Headers that describe the message or the connection, not the caller: a key there would
/// break framing or routing.
const RESERVED: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
];

impl TryFrom<Raw> for Settings {
    type Error = String;

    fn try_from(raw: Raw) -> Result<Self, String> {
        let header = raw.header.as_deref().unwrap_or("authorization");
        let header = HeaderName::from_bytes(header.trim().as_bytes())
            .map_err(|_| format!("credential.header: {header:?} is not a header name"))?;
        if RESERVED.contains(&header.as_str()) {
            return Err(format!(
                "credential.header: {header} frames or routes the message; name the header the upstream reads its key from (authorization, x-api-key, api-key)"
            ));
        }
        let scheme = match raw.scheme {
            Some(s) if s.trim().is_empty() => None,
            Some(s) => {
                let s = s.trim().to_string();
                if !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
                {
                    return Err(format!(
                        "credential.scheme: {s:?} is not an authentication scheme (e.g. Bearer; \"\" for none)"
                    ));
                }
                Some(s)
            }
            None if header == http::header::AUTHORIZATION => Some("Bearer".to_string()),
            None => None,
        };
        let source = match (raw.file, raw.env, raw.command) {
            (Some(p), None, None) if !p.as_os_str().is_empty() => Source::File(p),
            (None, Some(n), None) if !n.is_empty() && !n.contains('=') && !n.contains('\0') => {
                Source::Env(n)
            }
            (None, None, Some(argv)) if argv.first().is_some_and(|p| !p.is_empty()) => {
                Source::Command(argv)
            }
            (None, None, None) => {
                return Err(
                    "credential: needs where the key comes from: file, env or command".into(),
                );
            }
            (Some(_), None, None) => return Err("credential.file: must not be empty".into()),
            (None, Some(_), None) => {
                return Err("credential.env: must be a variable name".into());
            }
            (None, None, Some(_)) => {
                return Err(
                    "credential.command: must be a non-empty list, program first (e.g. [vault, read, -field=key, secret/openai])"
                        .into(),
                );
            }
            _ => {
                return Err(
                    "credential: give exactly one of file, env or command (which key would be meant?)"
                        .into(),
                );
            }
        };
        let refresh = match (raw.refresh_secs, &source) {
            (None, _) => None,
            (Some(_), Source::File(_)) => {
                return Err(
                    "credential.refresh_secs: a key file is watched and re-read when it changes; refresh_secs is for command"
                        .into(),
                );
            }
            (Some(_), Source::Env(_)) => {
                return Err(
                    "credential.refresh_secs: an environment variable cannot change under a running agent; use file or command to rotate"
                        .into(),
                );
            }
            (Some(n), Source::Command(_)) if n < MIN_REFRESH_SECS => {
                return Err(format!(
                    "credential.refresh_secs: {n} is below the minimum of {MIN_REFRESH_SECS}"
                ));
            }
            (Some(n), Source::Command(_)) => Some(Duration::from_secs(n)),
        };
        if raw.when.as_ref().is_some_and(When::is_empty) {
            return Err(
                "credential.when: name at least one of issuers, groups, subjects, users or units (an empty `when` would be for everyone)"
                    .into(),
            );
        }
        Ok(Settings {
            header,
            scheme,
            source,
            refresh,
            when: raw.when,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> Result<Settings, String> {
        serde_norway::from_str::<Settings>(y).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_to_authorization_bearer_and_x_api_key_has_no_scheme() {
        let s = parse("file: /run/keys/openai").expect("file");
        assert_eq!(s.header, http::header::AUTHORIZATION);
        assert_eq!(s.scheme.as_deref(), Some("Bearer"));
        assert_eq!(s.source, Source::File("/run/keys/openai".into()));
        let s = parse("header: X-Api-Key\nenv: ANTHROPIC_KEY").expect("env");
        assert_eq!(s.header.as_str(), "x-api-key");
        assert_eq!(s.scheme, None);
        assert_eq!(s.source, Source::Env("ANTHROPIC_KEY".into()));
        let s = parse("scheme: \"\"\ncommand: [cat, /k]").expect("command");
        assert_eq!(s.scheme, None);
        assert_eq!(s.source, Source::Command(vec!["cat".into(), "/k".into()]));
        let s = parse("header: api-key\nscheme: Token\nfile: k").expect("scheme");
        assert_eq!(s.scheme.as_deref(), Some("Token"));
        assert_eq!(s.refresh, None);
        let s = parse("command: [vault, read, k]\nrefresh_secs: 300").expect("refresh");
        assert_eq!(s.refresh, Some(Duration::from_secs(300)));
        for (y, want) in [
            ("file: k\nrefresh_secs: 60", "is watched"),
            ("env: K\nrefresh_secs: 60", "cannot change"),
            ("command: [k]\nrefresh_secs: 5", "below the minimum of 30"),
        ] {
            let e = parse(y).expect_err(y);
            assert!(e.contains(want), "{y}: {e}");
        }
    }

    #[test]
    fn when_selects_callers_by_token_and_workload_names() {
        let s = parse("file: /k\nwhen: {groups: [team-a], users: [\"batch-*\"]}").expect("when");
        let when = s.when.expect("set");
        let alice = crate::identity::Principal {
            subject: "alice".into(),
            groups: vec!["team-a".into()],
            ..Default::default()
        };
        let w = |user: Option<&str>| {
            crate::workload::Workload::described(1, 1, "c".into(), None)
                .named(user.map(String::from))
        };
        assert!(when.matches(Some(&alice), &w(Some("batch-7"))));
        assert!(!when.matches(Some(&alice), &w(Some("web"))));
        assert!(!when.matches(Some(&alice), &w(None)));
        assert!(
            !when.matches(None, &w(Some("batch-7"))),
            "no token, no groups"
        );
        let units = parse("file: /k\nwhen: {units: [jobs.service]}")
            .expect("units")
            .when
            .expect("set");
        let job = w(None).in_cgroup("/system.slice/jobs.service");
        assert!(units.matches(None, &job));
        assert!(!units.matches(None, &w(None).in_cgroup("/system.slice/web.service")));
        let by_issuer =
            parse("file: /k\nwhen: {issuers: [\"http://127.0.0.1:1\"], groups: [team-a]}")
                .expect("issuers")
                .when
                .expect("set");
        assert!(!by_issuer.trusts_any_issuer() && when.trusts_any_issuer());
        let other = crate::identity::Principal {
            issuer: "http://127.0.0.1:2".into(),
            ..alice.clone()
        };
        let from_1 = crate::identity::Principal {
            issuer: "http://127.0.0.1:1".into(),
            ..alice.clone()
        };
        assert!(by_issuer.matches(Some(&from_1), &w(None)));
        assert!(
            !by_issuer.matches(Some(&other), &w(None)),
            "another issuer's token"
        );
        let e = parse("file: /k\nwhen: {}").expect_err("empty when");
        assert!(e.contains("at least one"), "{e}");
    }

    #[test]
    fn mistakes_are_named() {
        for (y, want) in [
            ("header: authorization", "needs where the key comes from"),
            ("file: /a\nenv: B", "exactly one of"),
            ("command: []", "non-empty list"),
            ("env: \"\"", "variable name"),
            ("header: \"bad header\"\nfile: /a", "not a header name"),
            ("header: host\nfile: /a", "frames or routes"),
            (
                "scheme: \"Bearer x\"\nfile: /a",
                "not an authentication scheme",
            ),
            ("file: /a\npath: /b", "unknown field"),
        ] {
            let e = parse(y).expect_err(y);
            assert!(e.contains(want), "{y}: {e}");
        }
    }
}
