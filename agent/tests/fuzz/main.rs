//! Fuzz targets: what hostile input reaches first. Each `#[test]` is one target; `cargo test`
//! runs each for a short while (256 cases), `cargo xtask fuzz` for much longer
//! (see harness.rs for the settings). Properties beyond "never panics" are stated per target.
//!
//! Adding a target is a few lines: pick or write a generator in input.rs and call
//! `fuzz("name", generator, |input| { ...; Ok(()) })`.
use std::{collections::HashSet, path::Path, sync::LazyLock};

use proptest::{option, prelude::*};
use serde_json::Value;
use sluice::{
    adapter::{self, OpClass},
    config::{self, Config},
    policy::{self, Action, Facts, Policy},
};

mod harness;
mod input;

use harness::fuzz;

/// The shipped packs, loaded once: the policy hostile bodies and paths are decided by.
static SHIPPED: LazyLock<Policy> = LazyLock::new(|| {
    let packs: Vec<_> = [
        "ollama-safe",
        "openai-safe",
        "vllm-safe",
        "llamacpp-safe",
        "tgi-safe",
        "triton-safe",
    ]
    .iter()
    .map(|p| format!("{}{p}", "builtin:").into())
    .collect();
    policy::load_paths(&packs).expect("shipped packs load")
});

fn decide(
    policy: &Policy,
    server: adapter::Server,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> policy::Decision {
    let op = adapter::classify(server, method, path, body);
    policy.evaluate(&Facts {
        target: "fuzz",
        server,
        method,
        path,
        operation: &op,
        body,
        default: Action::Deny,
        workload: None,
        identity: None,
        switch: None,
    })
}

#[test]
fn classify() {
    let methods: HashSet<&str> = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"].into();
    let first: HashSet<&str> = input::FIRST_SEGMENTS.iter().copied().collect();
    fuzz(
        "classify",
        (
            input::server(),
            input::method(),
            input::path(),
            option::of(input::json_value()),
        ),
        |(server, method, path, body)| {
            let body = body.as_ref();
            let first_segment = path.trim_start_matches('/').split('/').next().unwrap_or("");
            // Every server family and the common methods on each input: a path hits a real
            // route far more often than a random (server, method) pair would let it.
            for server in std::iter::once(server).chain(input::SERVERS.iter().copied()) {
                for method in [method.as_str(), "GET", "POST", "DELETE"] {
                    let op = adapter::classify(server, method, &path, body);
                    let again = adapter::classify(server, method, &path, body);
                    prop_assert_eq!(&op, &again, "classify is not deterministic");
                    if op.route == "unknown" {
                        prop_assert!(
                            op.class == OpClass::Unknown && op.model.is_none() && !op.streaming
                        );
                    } else {
                        prop_assert!(!op.route.is_empty());
                    }
                    if !methods.contains(method) || !first.contains(first_segment) {
                        prop_assert_eq!(op.route, "unknown", "a path in no table was classified");
                    }
                    let d = decide(&SHIPPED, server, method, &path, body);
                    prop_assert_eq!(&d, &decide(&SHIPPED, server, method, &path, body));
                    if op.route == "unknown" {
                        prop_assert_eq!(d.action(), Action::Deny, "an unknown route was allowed");
                    }
                }
            }
            Ok(())
        },
    );
}

/// Request bodies as the agent reads them (serde_json), then classified and decided.
#[test]
fn json_body() {
    fuzz(
        "json_body",
        (
            input::server(),
            prop::sample::select(input::ROUTE_TEMPLATES),
            input::json_text(),
        ),
        |(server, path, text)| {
            let Ok(body) = serde_json::from_slice::<Value>(text.as_bytes()) else {
                return Ok(());
            };
            let op = adapter::classify(server, "POST", path, Some(&body));
            // Classification depends on the value only: the same value written again, as a
            // client or a re-encoding proxy might, classifies the same.
            let reparsed: Value = serde_json::from_str(&body.to_string())
                .map_err(|e| TestCaseError::fail(format!("re-encoded body does not parse: {e}")))?;
            prop_assert_eq!(
                &op,
                &adapter::classify(server, "POST", path, Some(&reparsed))
            );
            let d = decide(&SHIPPED, server, "POST", path, Some(&body));
            prop_assert_eq!(&d, &decide(&SHIPPED, server, "POST", path, Some(&reparsed)));
            Ok(())
        },
    );
}

/// A YAML loader's error: where it promises a location, one inside the text.
fn check_location(
    text: &str,
    origin: &str,
    err: &dyn std::fmt::Display,
    loc: Option<(usize, usize)>,
) -> Result<(), TestCaseError> {
    let msg = err.to_string();
    if let Some((line, column)) = loc {
        // Lines as YAML counts them: a lone CR, NEL, LS and PS break lines too.
        let lines = text
            .replace("\r\n", "\n")
            .split(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'])
            .count();
        prop_assert!(
            line >= 1 && column >= 1 && line <= lines + 1,
            "syntax error without a usable location ({line}:{column}, text has {lines} lines): {msg}"
        );
        let prefix = format!("{origin}:{line}:{column}: ");
        prop_assert!(
            msg.starts_with(&prefix),
            "error does not start with {prefix:?}: {msg}"
        );
    }
    prop_assert!(!msg.is_empty());
    Ok(())
}

#[test]
fn policy_pack() {
    let origin = Path::new("fuzz/pack.yaml");
    fuzz("policy_pack", input::pack_text(), |text| {
        let result = policy::parse_pack(&text, origin);
        let again = policy::parse_pack(&text, origin);
        match (&result, &again) {
            (Ok(p), Ok(q)) => prop_assert_eq!(p.rule_count(), q.rule_count()),
            (Err(e), Err(f)) => prop_assert_eq!(e.to_string(), f.to_string()),
            _ => prop_assert!(false, "policy loading is not deterministic"),
        }
        match result {
            Err(e) => {
                let loc = match &e {
                    policy::Error::Syntax { line, column, .. } => Some((*line, *column)),
                    _ => None,
                };
                check_location(&text, "fuzz/pack.yaml", &e, loc)?;
            }
            // Whatever patterns and body matchers a pack compiled, deciding never panics.
            Ok(p) => {
                let body: Value =
                    serde_json::json!({"model": "x:cloud", "keep_alive": 0, "messages": []});
                for server in input::SERVERS {
                    decide(&p, *server, "POST", "/api/chat", Some(&body));
                    decide(&p, *server, "GET", "/v1/models/x%3Acloud", None);
                }
            }
        }
        Ok(())
    });
}

#[test]
fn config() {
    fuzz("config", input::config_text(), |text| {
        let result = Config::parse(&text, "fuzz.yaml");
        let again = Config::parse(&text, "fuzz.yaml");
        prop_assert_eq!(
            result
                .as_ref()
                .map(|c| c.targets.len())
                .map_err(ToString::to_string),
            again
                .as_ref()
                .map(|c| c.targets.len())
                .map_err(ToString::to_string),
            "config loading is not deterministic"
        );
        if let Err(e) = &result {
            let loc = match e {
                config::Error::Syntax { line, column, .. } => Some((*line, *column)),
                _ => None,
            };
            check_location(&text, "fuzz.yaml", e, loc)?;
        }
        Ok(())
    });
}

#[test]
fn policy_case() {
    let origin = Path::new("fuzz/cases/case.yaml");
    let known: HashSet<String> = SHIPPED.rules.iter().map(|r| r.id.clone()).collect();
    fuzz("policy_case", input::case_text(), |text| {
        if let Err(e) = policy::cases::parse_case(&text, origin, Some(&known)) {
            let loc = match &e {
                policy::Error::Syntax { line, column, .. } => Some((*line, *column)),
                _ => None,
            };
            check_location(&text, "fuzz/cases/case.yaml", &e, loc)?;
        }
        Ok(())
    });
}

/// Path admission (`decode::path`): whatever it accepts is in the one normal form the
/// classifier, globs and servers all read alike; decoding is idempotent on what it returns.
#[test]
fn decode_path() {
    fuzz("decode_path", input::path(), |raw| {
        let Ok(decoded) = sluice::pipeline::decode::path(&raw) else {
            return Ok(());
        };
        prop_assert!(decoded.starts_with('/'), "{decoded:?}");
        prop_assert!(
            !decoded.contains('%'),
            "a second decode would change {decoded:?}"
        );
        prop_assert!(!decoded.contains('\\'), "{decoded:?}");
        prop_assert!(!decoded.chars().any(char::is_control), "{decoded:?}");
        for seg in decoded.split('/').skip(1) {
            prop_assert!(seg != "." && seg != "..", "dot segment in {decoded:?}");
        }
        let again = sluice::pipeline::decode::path(&decoded).ok();
        prop_assert_eq!(
            again.as_deref(),
            Some(decoded.as_str()),
            "the decoded path is not a fixed point"
        );
        Ok(())
    });
}

/// Request bodies as the pipeline reads them (`decode::body`), for every server and route:
/// never panics, deterministic, and what it accepts decides the same as itself re-encoded;
/// read with the shipped packs' `body:` roots (unread fields skimmed, as live traffic is
/// read), it is refused with the same message or decides the same.
#[test]
fn decode_body() {
    let headers = http::HeaderMap::new();
    fuzz(
        "decode_body",
        (
            input::server(),
            prop::sample::select(input::ROUTE_TEMPLATES),
            input::json_text(),
        ),
        |(server, path, text)| {
            let read = |bytes: &[u8]| {
                sluice::pipeline::decode::body(server, "POST", path, &headers, bytes)
                    .map_err(|r| r.message)
            };
            let first = read(text.as_bytes());
            prop_assert_eq!(&first, &read(text.as_bytes()), "not deterministic");
            let pruned = sluice::pipeline::decode::body_metered(
                server,
                "POST",
                path,
                &headers,
                text.as_bytes(),
                &SHIPPED.body_roots,
                &|_| Ok(()),
            )
            .map_err(|r| r.message);
            match (&first, &pruned) {
                (Ok(full), Ok(pruned)) => prop_assert_eq!(
                    decide(&SHIPPED, server, "POST", path, full.as_ref()),
                    decide(&SHIPPED, server, "POST", path, pruned.as_ref()),
                    "the skimmed read decides otherwise"
                ),
                (Err(a), Err(b)) => prop_assert_eq!(a, b, "refused otherwise when skimmed"),
                _ => prop_assert!(false, "only one read refused: {:?} {:?}", first, pruned),
            }
            if let Ok(Some(v)) = first {
                let d = decide(&SHIPPED, server, "POST", path, Some(&v));
                let again = read(v.to_string().as_bytes());
                if let Ok(Some(v2)) = again {
                    prop_assert_eq!(d, decide(&SHIPPED, server, "POST", path, Some(&v2)));
                }
            }
            Ok(())
        },
    );
}

/// The client-facing HTTP/1.1 server's framing (`sluice::http::h1`): never panics; how the
/// bytes arrive (one piece, or cut anywhere) never changes what is read; and every request
/// it reads, re-framed the way the upstream client writes it, reads back the same: what
/// Sluice judged is what the server gets, and nothing after it rides along.
#[test]
fn h1_requests() {
    use sluice::http::h1::{Stop, frame_all};
    const MAX: usize = 8192;
    fuzz("h1_requests", input::h1_stream(), |(bytes, cuts)| {
        let (whole, stop) = frame_all(&[&bytes], MAX);
        let mut pieces = Vec::new();
        let mut at = 0;
        for c in cuts.iter().copied().chain(std::iter::once(bytes.len())) {
            pieces.push(&bytes[at..c]);
            at = c;
        }
        let (cut, cut_stop) = frame_all(&pieces, MAX);
        prop_assert_eq!(
            format!("{whole:?}"),
            format!("{cut:?}"),
            "pieces changed what was read"
        );
        // A refusal may name another fault: a head past the limit is refused as too large
        // while it arrives, and for a bad byte when whole (hyper did the same).
        match (&stop, &cut_stop) {
            (Stop::Refused(..), Stop::Refused(..)) => {}
            _ => prop_assert_eq!(&stop, &cut_stop),
        }
        for r in whole {
            let mut parts = r.parts;
            let mut out = sluice::upstream::encode_request(&mut parts, Some(r.body.len() as u64));
            out.extend_from_slice(&r.body);
            let (again, again_stop) = frame_all(&[&out], usize::MAX);
            prop_assert_eq!(again.len(), 1, "re-framed request read as {:?}", again_stop);
            let a = &again[0];
            prop_assert_eq!(&a.parts.method, &parts.method);
            prop_assert_eq!(&a.parts.uri, &parts.uri);
            prop_assert_eq!(&a.parts.headers, &parts.headers);
            prop_assert_eq!(&a.body, &r.body);
            prop_assert!(a.trailers.is_none());
        }
        Ok(())
    });
}
