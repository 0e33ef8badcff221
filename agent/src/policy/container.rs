//! The container ids and pod uids that policy and case files name. They are checked while
//! the YAML is read, so a mistake is reported at its file:line:column: a value that could
//! never match anything the agent reads (a 10-digit id, a uid written with the cgroup's
//! underscores, upper case) is an error, not a rule that silently never applies.
use serde::{Deserialize, Deserializer, de};

use crate::workload::container::{is_id, is_pod_uid};

/// Fewer hex digits than `docker ps` shows are refused as a plain value: too likely to
/// select containers nobody meant. `0123*` says so on purpose.
const MIN_ID_PREFIX: usize = 12;

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

fn lower_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Deserializes a string checked by `check`. The check runs inside the visitor, where the
/// YAML parser still knows the value's position and puts its line:column on the error.
fn checked<'de, D, T>(d: D, check: impl FnOnce(&str) -> Result<T, String>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct Check<F>(F);
    impl<T, F: FnOnce(&str) -> Result<T, String>> de::Visitor<'_> for Check<F> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(Check(check))
}

/// A `containerIds` entry, as the glob over the full 64-digit id it means: 12 to 64
/// lower-case hex digits select ids starting with them (the short id `docker ps`, `podman ps`
/// and `crictl ps` show, or the full id); an entry with glob characters is a glob as written.
#[derive(Debug, Clone)]
pub(super) struct ContainerIdPattern(pub(super) String);

impl<'de> Deserialize<'de> for ContainerIdPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |s| {
            if is_glob(s) {
                return Ok(ContainerIdPattern(s.to_string()));
            }
            if lower_hex(s) && (MIN_ID_PREFIX..=64).contains(&s.len()) {
                return Ok(ContainerIdPattern(if s.len() == 64 {
                    s.to_string()
                } else {
                    format!("{s}*")
                }));
            }
            Err(format!(
                "container id {s:?}: write {MIN_ID_PREFIX} to 64 lower-case hex digits (the short id `docker ps` shows, or the full id), or a glob such as \"0123*\""
            ))
        })
    }
}

/// A `podUids` entry: a uid as the API server shows it, or a glob.
#[derive(Debug, Clone)]
pub(super) struct PodUidPattern(pub(super) String);

impl<'de> Deserialize<'de> for PodUidPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |s| {
            if is_glob(s) {
                return Ok(PodUidPattern(s.to_string()));
            }
            pod_uid(s).map(PodUidPattern)
        })
    }
}

fn pod_uid(s: &str) -> Result<String, String> {
    if is_pod_uid(s) {
        return Ok(s.to_string());
    }
    let hint = if is_pod_uid(&s.replace('_', "-")) {
        "; write it with dashes, as `kubectl get pod -o jsonpath='{.metadata.uid}'` shows it, not with the cgroup name's underscores"
    } else {
        ""
    };
    Err(format!(
        "pod uid {s:?}: expected a lower-case uid such as 6a7f5c1e-2b3d-4c5e-8f90-a1b2c3d4e5f6 (or a static pod's 32 hex digits){hint}"
    ))
}

/// A described workload's container id (case files): the full id, as the agent reads it.
#[derive(Debug, Clone)]
pub struct FullContainerId(pub String);

impl<'de> Deserialize<'de> for FullContainerId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |s| {
            if is_id(s) {
                return Ok(FullContainerId(s.to_string()));
            }
            Err(format!(
                "container id {s:?}: a workload's container id is the full 64 lower-case hex digits (`docker inspect --format '{{{{.Id}}}}'`)"
            ))
        })
    }
}

/// A described workload's pod uid (case files).
#[derive(Debug, Clone)]
pub struct PodUid(pub String);

impl<'de> Deserialize<'de> for PodUid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |s| pod_uid(s).map(PodUid))
    }
}

/// The same checks for values given on the command line (`policy explain`).
pub fn parse_full_container_id(s: &str) -> Result<String, String> {
    serde_json::from_value::<FullContainerId>(serde_json::Value::String(s.to_string()))
        .map(|c| c.0)
        .map_err(|e| e.to_string())
}

pub fn parse_pod_uid(s: &str) -> Result<String, String> {
    serde_json::from_value::<PodUid>(serde_json::Value::String(s.to_string()))
        .map(|p| p.0)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Result<String, String> {
        serde_json::from_value::<ContainerIdPattern>(serde_json::Value::String(s.into()))
            .map(|p| p.0)
            .map_err(|e| e.to_string())
    }

    fn uid(s: &str) -> Result<String, String> {
        serde_json::from_value::<PodUidPattern>(serde_json::Value::String(s.into()))
            .map(|p| p.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn container_ids_are_prefixes_full_ids_or_globs() {
        let full = "0123456789abcdef".repeat(4);
        assert_eq!(id("0123456789ab"), Ok("0123456789ab*".into()));
        assert_eq!(id(&full), Ok(full.clone()));
        assert_eq!(id("0123*"), Ok("0123*".into()));
        for bad in [
            "0123456789a",
            "0123456789AB",
            &format!("{full}0"),
            "docker-0123456789ab",
            "",
            "0123456789ab ",
            "０１２３４５６７８９ab",
        ] {
            let e = id(bad).expect_err(bad);
            assert!(e.contains("12 to 64 lower-case hex digits"), "{e}");
        }
    }

    #[test]
    fn pod_uids_are_written_with_dashes() {
        let u = "6a7f5c1e-2b3d-4c5e-8f90-a1b2c3d4e5f6";
        assert_eq!(uid(u), Ok(u.into()));
        assert_eq!(uid("6a7f5c1e-*"), Ok("6a7f5c1e-*".into()));
        assert_eq!(
            uid("2e5b0b3b2d6b4f8ba2cb6d8d1a3e4f5a"),
            Ok("2e5b0b3b2d6b4f8ba2cb6d8d1a3e4f5a".into())
        );
        let e = uid(&u.replace('-', "_")).expect_err("underscores");
        assert!(e.contains("with dashes"), "{e}");
        assert!(uid(&u.to_ascii_uppercase()).is_err());
        assert!(uid("pod6a7f5c1e-2b3d-4c5e-8f90-a1b2c3d4e5f6").is_err());
    }

    /// The selectors through loading and deciding, as the agent runs them.
    mod selecting {
        use std::path::Path;

        use crate::{
            adapter::Server,
            policy::{Action, Query, parse_pack},
            workload::Workload,
        };

        const A: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        const B: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
        const UID: &str = "6a7f5c1e-2b3d-4c5e-8f90-a1b2c3d4e5f6";

        fn pack() -> crate::policy::Policy {
            let text = format!(
                r#"apiVersion: sluice.dev/v1alpha1
kind: PolicyPack
metadata: {{name: c}}
spec:
  rules:
    - id: deny-short
      action: deny
      match: {{workload: {{containerIds: ["0123456789ab"]}}}}
    - id: allow-full
      action: allow
      match: {{workload: {{containerIds: ["{B}"]}}}}
    - id: allow-pod
      action: allow
      match: {{workload: {{podUids: ["{UID}"]}}}}
    - id: allow-crio
      action: allow
      match: {{workload: {{containerRuntimes: [cri-o]}}}}
    - id: allow-services
      action: allow
      match: {{workload: {{cgroups: ["/system.slice/*.service"]}}}}
"#
            );
            parse_pack(&text, Path::new("c.yaml")).expect("pack loads")
        }

        fn rules(policy: &crate::policy::Policy, w: Option<&Workload>) -> (Action, Vec<String>) {
            let (_, d) = policy.decide(&Query {
                target: "t",
                server: Server::Openai,
                method: "GET",
                path: "/v1/models",
                body: None,
                default: Action::Deny,
                workload: w,
                identity: None,
                switch: None,
            });
            (d.action(), d.rule_ids())
        }

        fn at(path: &str) -> Workload {
            Workload::described(0, 0, "c".into(), None).in_cgroup(path)
        }

        #[test]
        fn each_selector_selects_only_its_own() {
            let p = pack();
            let allow = |ids: &[&str]| {
                (
                    Action::Allow,
                    ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
                )
            };
            // The short id `docker ps` shows selects the container.
            assert_eq!(
                rules(&p, Some(&at(&format!("/system.slice/docker-{A}.scope")))),
                (Action::Deny, vec!["deny-short".to_string()])
            );
            assert_eq!(
                rules(&p, Some(&at(&format!("/system.slice/docker-{B}.scope")))),
                allow(&["allow-full"])
            );
            let pod = format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-{B}.scope",
                UID.replace('-', "_")
            );
            assert_eq!(
                rules(&p, Some(&at(&pod))),
                allow(&["allow-full", "allow-pod", "allow-crio"])
            );
            assert_eq!(
                rules(&p, Some(&at("/system.slice/ssh.service"))),
                allow(&["allow-services"])
            );
            // `*` stops at `/`.
            assert_eq!(
                rules(&p, Some(&at("/system.slice/x.service/child"))),
                (Action::Deny, vec![])
            );
        }

        #[test]
        fn an_unknown_cgroup_matches_no_selector() {
            let p = pack();
            let nowhere = Workload::described(0, 0, "c".into(), None);
            assert_eq!(rules(&p, Some(&nowhere)), (Action::Deny, vec![]));
            assert_eq!(rules(&p, None), (Action::Deny, vec![]));
            // A container the path names without its runtime matches no runtime rule.
            let bare = at(&format!("/kubepods/besteffort/pod{UID}/{B}"));
            assert_eq!(
                rules(&p, Some(&bare)),
                (
                    Action::Allow,
                    vec!["allow-full".to_string(), "allow-pod".to_string()]
                )
            );
        }

        #[test]
        fn mistakes_are_reported_where_they_are_written() {
            let cases = [
                (
                    "containerIds: [\"0123\"]",
                    ":7:41:",
                    "12 to 64 lower-case hex digits",
                ),
                (
                    "podUids: [\"6a7f5c1e_2b3d_4c5e_8f90_a1b2c3d4e5f6\"]",
                    ":7:36:",
                    "with dashes",
                ),
                (
                    "containerRuntimes: [rkt]",
                    ":7:46:",
                    "unknown variant `rkt`",
                ),
                ("cgroups: \"/x\"", ":7:35:", "expected a sequence"),
            ];
            for (selector, at, what) in cases {
                let text = format!(
                    "apiVersion: sluice.dev/v1alpha1\nkind: PolicyPack\nmetadata: {{name: c}}\nspec:\n  rules:\n    - id: r\n      match: {{workload: {{{selector}}}}}\n      action: deny\n"
                );
                let e = parse_pack(&text, Path::new("c.yaml"))
                    .expect_err(selector)
                    .to_string();
                assert!(
                    e.contains(&format!("c.yaml{at}")),
                    "{selector}: want {at} in {e}"
                );
                assert!(e.contains(what), "{selector}: want {what:?} in {e}");
            }
        }
    }

    #[test]
    fn a_workload_names_its_full_container_id() {
        let full = "ab".repeat(32);
        assert_eq!(parse_full_container_id(&full), Ok(full));
        assert!(parse_full_container_id("abababababab").is_err());
    }
}
