use std::sync::Arc;

use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::mask::{Action, PseudonymKey, Scanner};

fn plan(action: Action) -> Plan {
    Plan::uniform(Arc::new(Scanner::builtin()), action)
}

fn redact() -> Plan {
    plan(Action::Redact)
}

/// Masks `text` cut at `cuts`, checking the hold-back bound after every push.
fn streamed(plan: &Plan, text: &[u8], cuts: &[usize]) -> Result<Vec<u8>, JsonError> {
    let mut m = JsonMasker::new(plan.clone(), None);
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts {
        let c = c.clamp(at, text.len());
        m.push(&text[at..c], false, &mut out)?;
        assert!(m.held() <= plan.scanner().max_hold(), "held {}", m.held());
        at = c;
    }
    m.push(&text[at..], true, &mut out)?;
    Ok(out)
}

/// The reference: every string value (not key) of `v` masked whole by the plan.
fn masked_values(plan: &Plan, v: &Value) -> Value {
    match v {
        Value::String(s) => {
            let m = plan.mask(s.as_bytes(), &mut plan.counts());
            Value::String(String::from_utf8(m).expect("utf-8"))
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| masked_values(plan, x)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), masked_values(plan, x)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Serialises `v` escaping characters in many ways (`\uXXXX`, surrogate pairs, short
/// escapes, `\/`), chosen by `seed`, so escapes land inside secrets.
fn to_json(v: &Value, seed: &mut u64, out: &mut String) {
    fn roll(seed: &mut u64, n: u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) % n
    }
    match v {
        Value::String(s) => {
            out.push('"');
            for c in s.chars() {
                let force = c == '"' || c == '\\' || (c as u32) < 0x20;
                match roll(seed, if force { 2 } else { 5 }) {
                    0 => {
                        let mut b = [0u16; 2];
                        for u in c.encode_utf16(&mut b) {
                            out.push_str(&format!("\\u{u:04X}"));
                        }
                    }
                    _ if force => {
                        let q = serde_json::to_string(&c.to_string()).expect("char");
                        out.push_str(&q[1..q.len() - 1]);
                    }
                    1 if c == '/' => out.push_str("\\/"),
                    _ => out.push(c),
                }
            }
            out.push('"');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(if roll(seed, 2) == 0 { "," } else { " ,\n " });
                }
                to_json(x, seed, out);
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push_str("{ ");
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).expect("key"));
                out.push_str(" : ");
                to_json(x, seed, out);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn check(plan: &Plan, v: &Value, seed: u64, cuts: &[usize]) {
    let mut text = String::new();
    let mut s = seed;
    to_json(v, &mut s, &mut text);
    let input: Value = serde_json::from_str(&text).expect("test input is valid JSON");
    assert_eq!(&input, v, "the serialiser round-trips");
    let whole = streamed(plan, text.as_bytes(), &[]).expect("valid JSON masks");
    let out: Value = serde_json::from_slice(&whole).unwrap_or_else(|e| {
        panic!(
            "output is not JSON ({e}): {}",
            String::from_utf8_lossy(&whole)
        )
    });
    assert_eq!(out, masked_values(plan, v));
    let cut = streamed(plan, text.as_bytes(), cuts).expect("valid JSON masks");
    assert_eq!(
        String::from_utf8_lossy(&cut),
        String::from_utf8_lossy(&whole)
    );
}

fn sample() -> Value {
    serde_json::json!({
        "id": "chatcmpl-1",
        "choices": [{"index": 0, "message": {"role": "assistant",
            "content": "Mail jane.doe@example.com or call +44 20 7946 0958; key sk-proj-Ab3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7dE9f.\nQuote \"x\" \\ tab\t日本語 😀 ünï"}}],
        "jane@example.com": ["AKIAQ3EGRSZ7XN5TB2LP", 4111111111111111u64, null, true, false, -1.5e-3, {}, []],
        "nested": {"a": {"b": "card 4111 1111 1111 1111 end"}},
        "empty": ""
    })
}

#[test]
fn escapes_are_decoded_for_scanning_and_the_output_stays_json() {
    let p = redact();
    let text = br#"{"a":"jane\u0040example.com","b":"x\ud83d\ude00 AKIAQ3EGRSZ7XN5TB2LP\n","jane@example.com":1}"#;
    let out = streamed(&p, text, &[]).expect("valid");
    assert_eq!(
        String::from_utf8(out).expect("utf-8"),
        "{\"a\":\"[REDACTED:email]\",\"b\":\"x😀 [REDACTED:aws_access_key]\\n\",\"jane@example.com\":1}",
        "values masked and re-encoded; keys, numbers and structure untouched"
    );
    // A secret never joins across two string values.
    let out = streamed(&p, br#"["jane.doe@exa","mple.com"]"#, &[]).expect("valid");
    assert_eq!(out, br#"["jane.doe@exa","mple.com"]"#.to_vec());
}

#[test]
fn any_split_of_a_sample_matches_the_whole() {
    let p = plan(Action::Pseudonym(PseudonymKey::new([3; 32])));
    for seed in 0..4u64 {
        let mut text = String::new();
        let mut s = seed;
        to_json(&sample(), &mut s, &mut text);
        let whole = streamed(&p, text.as_bytes(), &[]).expect("valid");
        let cuts: Vec<usize> = (1..text.len()).collect();
        assert_eq!(
            streamed(&p, text.as_bytes(), &cuts).expect("valid"),
            whole,
            "one byte at a time (inside escapes and multibyte characters)"
        );
        for a in (0..text.len()).step_by(3) {
            check(&p, &sample(), seed, &[a, a + 2, a + 7]);
        }
    }
}

#[test]
fn invalid_json_is_an_error_and_stays_one() {
    let p = redact();
    for bad in [
        &br#"{"a":1,}"#[..],
        br#"{"a" 1}"#,
        br#"["a"]]"#,
        br#"[01]"#,
        br#"[1.]"#,
        br#"[-]"#,
        br#"{"a":tru}"#,
        br#"["\x"]"#,
        br#"["\ud800"]"#,
        br#"["\udc00"]"#,
        br#"["\ud800\u0041"]"#,
        b"[\"\x01\"]",
        b"[\"\xff\"]",
        b"[\"\xe6\x97\"]",
        br#"{"a":"b"#,
        br#"{"a":1} 2"#,
        br#"[1 2]"#,
    ] {
        assert!(
            streamed(&p, bad, &[]).is_err(),
            "accepted {}",
            String::from_utf8_lossy(bad)
        );
    }
    let mut m = JsonMasker::new(p, None);
    let mut out = Vec::new();
    assert!(m.push(b"[1,,", false, &mut out).is_err());
    assert!(m.push(b"2]", true, &mut out).is_err(), "sticky");
    // Whitespace only (an empty body) is nothing to mask, not an error.
    assert_eq!(
        streamed(&redact(), b" \n", &[]).expect("empty"),
        b" \n".to_vec()
    );
    assert_eq!(
        streamed(&redact(), b"12", &[1]).expect("number"),
        b"12".to_vec()
    );
}

#[test]
fn deep_nesting_is_refused() {
    let deep = "[".repeat(MAX_DEPTH + 1);
    assert_eq!(
        streamed(&redact(), deep.as_bytes(), &[]),
        Err(JsonError::TooDeep)
    );
}

#[test]
fn pseudonyms_in_values_are_restored() {
    use zeroize::Zeroizing;
    let lookup: Lookup = Arc::new(|t: &str| {
        (t == "[email:0123456789ab]").then(|| Zeroizing::new("jane\"@example.com".to_string()))
    });
    let mut m = JsonMasker::new(plan(Action::Redact), Some(lookup));
    let mut out = Vec::new();
    let text = br#"{"a":"hi [email:0123456789ab]","[email:0123456789ab]":"[email:0123"#;
    m.push(text, false, &mut out).expect("valid");
    m.push(br#"456789ab]"}"#, true, &mut out).expect("valid");
    // The restored value is not masked again (restoring comes after masking) and its quote is
    // escaped; keys are never touched.
    let v: Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"a": "hi jane\"@example.com", "[email:0123456789ab]": "jane\"@example.com"})
    );
    assert_eq!(m.restored(), 2);
}

fn leaf_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("jane.doe@example.com".to_string()),
            Just("sk-proj-Ab3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7dE9f".to_string()),
            Just("4111 1111 1111 1111".to_string()),
            Just("password=hunter2".to_string()),
            Just("\"\\/\n\t\u{1}".to_string()),
            Just("日本😀é".to_string()),
            "[a-zA-Z0-9 .:@_-]{0,10}",
        ],
        0..5,
    )
    .prop_map(|v| v.concat())
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        leaf_text().prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-1e6f64..1e6).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map(leaf_text(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Any split gives the whole's output; the output is JSON whose string values are the
    /// plan's masking of the input's decoded values.
    #[test]
    fn any_split_matches_whole_and_values_match_the_plan(
        v in json_value(),
        seed in any::<u64>(),
        mut cuts in proptest::collection::vec(0usize..2000, 0..24),
    ) {
        cuts.sort_unstable();
        check(&redact(), &v, seed, &cuts);
    }
}
