use std::path::Path;

use super::*;
use crate::{
    adapter::{OpClass, Operation, Server},
    identity::Principal,
    policy::parse_pack,
};

const PACK: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: PolicyPack
metadata: { name: m }
spec:
  rules:
    - id: allow-all
      action: allow
  masking:
    detectors:
      - name: employee_id
        regex: 'EMP-[0-9]{6}'
        class: pii
      - name: ticket
        regex: '[A-Z]{3}-[0-9]{4}'
        keywords: [ticket]
    rules:
      - id: prompts
        direction: request
        match: { targets: [openai] }
        detectors: { pii: redact, email: pseudonym, employee_id: partial }
      - id: keys-everywhere
        detectors: { secrets: block }
      - id: ml-eng-output
        direction: response
        match: { identity: { groups: [ml-eng] }, models: ["gpt-*"] }
        detectors: { all: partial, email: redact }
"#;

fn op(model: &str) -> Operation {
    Operation {
        class: OpClass::Inference,
        route: "openai.chat.completions",
        model: Some(model.into()),
        streaming: false,
    }
}

fn facts<'a>(target: &'a str, op: &'a Operation, who: Option<&'a Principal>) -> Facts<'a> {
    Facts {
        target,
        server: Server::Openai,
        method: "POST",
        path: "/v1/chat/completions",
        operation: op,
        body: None,
        default: Action::Deny,
        workload: None,
        identity: who,
        switch: None,
    }
}

fn action(p: &crate::policy::Policy, dir: &[Option<MaskAction>], name: &str) -> Option<MaskAction> {
    let sc = p.masking.scanner().expect("scanner");
    let i = sc
        .detectors()
        .iter()
        .position(|d| d.name() == name)
        .expect("detector");
    dir[i]
}

fn applied(p: &crate::policy::Policy, f: &Facts<'_>) -> Applied {
    let a = p.masking.evaluate(f);
    assert_eq!(a, p.masking.evaluate_linear(f));
    a
}

#[test]
fn rules_select_per_direction_and_the_strictest_action_wins() {
    let p = parse_pack(PACK, Path::new("m.yaml")).expect("pack loads");
    let o = op("gpt-4o");
    // openai, no token: `prompts` (request) and `keys-everywhere` (both).
    let a = applied(&p, &facts("openai", &o, None));
    assert_eq!(a.rules, ["prompts", "keys-everywhere"]);
    let req = a.request.as_deref().expect("request plan");
    assert_eq!(action(&p, req, "email"), Some(MaskAction::Pseudonym));
    assert_eq!(action(&p, req, "phone"), Some(MaskAction::Redact));
    // The rule's own name for a detector beats its class.
    assert_eq!(action(&p, req, "employee_id"), Some(MaskAction::Partial));
    assert_eq!(action(&p, req, "aws_access_key"), Some(MaskAction::Block));
    // A custom detector's class defaults to secret.
    assert_eq!(action(&p, req, "ticket"), Some(MaskAction::Block));
    let resp = a.response.as_deref().expect("response plan");
    assert_eq!(action(&p, resp, "email"), None);
    assert_eq!(action(&p, resp, "openai_key"), Some(MaskAction::Block));

    // Another target: only the rule without a selector.
    let a = applied(&p, &facts("ollama", &o, None));
    assert_eq!(a.rules, ["keys-everywhere"]);

    // ml-eng on gpt-*: `all: partial` meets `secrets: block` (block wins) and
    // `email: redact` beats `all: partial` within its rule.
    let alice = Principal {
        issuer: "http://127.0.0.1:1".into(),
        subject: "alice".into(),
        groups: vec!["ml-eng".into()],
        claims: Default::default(),
    };
    let a = applied(&p, &facts("ollama", &o, Some(&alice)));
    assert_eq!(a.rules, ["keys-everywhere", "ml-eng-output"]);
    let resp = a.response.as_deref().expect("response plan");
    assert_eq!(action(&p, resp, "email"), Some(MaskAction::Redact));
    assert_eq!(action(&p, resp, "phone"), Some(MaskAction::Partial));
    assert_eq!(action(&p, resp, "github_token"), Some(MaskAction::Block));
    let req = a.request.as_deref().expect("request plan");
    assert_eq!(action(&p, req, "phone"), None);
    // Another model: not ml-eng-output.
    let llama = op("llama3");
    let a = applied(&p, &facts("ollama", &llama, Some(&alice)));
    assert_eq!(a.rules, ["keys-everywhere"]);
}

#[test]
fn strictness_orders_block_redact_pseudonym_partial() {
    use MaskAction::*;
    let mut v = vec![Partial, Block, Pseudonym, Redact];
    v.sort();
    assert_eq!(v, [Partial, Pseudonym, Redact, Block]);
    let mut into = None;
    merge(&mut into, &[Some(Redact), None, Some(Partial)]);
    merge(&mut into, &[Some(Pseudonym), Some(Partial), Some(Block)]);
    assert_eq!(into, Some(vec![Some(Redact), Some(Partial), Some(Block)]));
}

#[test]
fn plans_mask_with_the_policy_scanner_and_custom_detectors() {
    let p = parse_pack(PACK, Path::new("m.yaml")).expect("pack loads");
    let o = op("gpt-4o");
    let a = applied(&p, &facts("openai", &o, None));
    let sc = p.masking.scanner().expect("scanner");
    let (req, resp) = a.plans(sc, &PseudonymKey::new([7; 32]));
    let (req, resp) = (req.expect("request"), resp.expect("response"));
    let mut c = req.counts();
    let out = req.mask(b"badge EMP-123456, call +1 415 555 0100", &mut c);
    let out = String::from_utf8(out).expect("utf-8");
    assert_eq!(
        out, "badge [REDACTED:employee_id:…3456], call [REDACTED:phone]",
        "{out}"
    );
    assert!(!c.blocked);
    let mut c = resp.counts();
    // The response plan of this request masks secrets only (and blocks them).
    let out = resp.mask(b"ticket ABC-1234 from jane@example.com", &mut c);
    assert_eq!(out, b"ticket ABC-1234 from jane@example.com");
    assert!(c.blocked, "ticket is a secret here: blocked");
}

#[test]
fn a_pack_without_masking_builds_no_scanner_and_applies_nothing() {
    let text = "apiVersion: sluice.dev/v1alpha1\nkind: PolicyPack\nmetadata: {name: p}\nspec:\n  rules:\n    - id: a\n      action: allow\n";
    let p = parse_pack(text, Path::new("p.yaml")).expect("loads");
    assert!(p.masking.scanner().is_none());
    let o = op("m");
    assert!(!p.masking.evaluate(&facts("t", &o, None)).any());
}

#[test]
fn errors_name_the_file_and_place() {
    let bad = |from: &str, to: &str| {
        let text = PACK.replace(from, to);
        assert_ne!(text, PACK, "{from}");
        parse_pack(&text, Path::new("m.yaml"))
            .expect_err(from)
            .to_string()
    };
    // A regex that does not compile: file:line:column, and which detector.
    let e = bad("'EMP-[0-9]{6}'", "'EMP-[0-9'");
    assert!(e.starts_with("m.yaml:11:7:"), "{e}");
    assert!(
        e.contains("detector employee_id: regex does not compile"),
        "{e}"
    );
    // One that cannot be anchored on a literal or keyword.
    let e = bad(
        "'[A-Z]{3}-[0-9]{4}'\n        keywords: [ticket]",
        "'[A-Z]{3}-[0-9]{4}'",
    );
    assert!(e.starts_with("m.yaml:"), "{e}");
    assert!(e.contains("keywords to anchor it"), "{e}");
    // An unknown field, an unknown action, an unknown direction.
    let e = bad("class: pii", "klass: pii");
    assert!(e.starts_with("m.yaml:13:9:"), "{e}");
    let e = bad("pii: redact", "pii: scramble");
    assert!(
        e.starts_with("m.yaml:21:27:") && e.contains("unknown variant `scramble`"),
        "{e}"
    );
    let e = bad("direction: response", "direction: sideways");
    assert!(e.starts_with("m.yaml:25:"), "{e}");
    // Names no detector has, a clash with a built-in, a duplicate id.
    let e = bad("email: pseudonym", "e-mail: pseudonym");
    assert!(
        e.contains("rule prompts: unknown detector \"e-mail\""),
        "{e}"
    );
    let e = bad("name: ticket", "name: email");
    assert!(e.contains("detector email: the name is taken"), "{e}");
    let e = bad("id: keys-everywhere", "id: allow-all");
    assert!(e.contains("duplicate rule id"), "{e}");
    let e = bad("detectors: { secrets: block }", "detectors: {}");
    assert!(e.contains("names no detectors"), "{e}");
}
