//! Masking a whole request body before it goes upstream: JSON string by string, form fields
//! one by one, plain text whole; anything else is [`Unscannable`] with its reason.
//!
//! JSON is masked in its own bytes, not re-serialised from the parsed tree: each string
//! literal (object keys included: a map keyed by e-mail address carries the addresses there)
//! is decoded, so `\u0040` and surrogate pairs are read as the characters they are, masked,
//! and only a literal that changed is written back, escaped by serde_json. Numbers,
//! whitespace, key order and every unchanged string keep their bytes, so the upstream reads
//! exactly what policy read except the masked values, and the JSON stays valid.
use std::borrow::Cow;

use super::{
    Action, Counts, Plan, Unscannable, Vault, Verdict,
    scan::{Finding, Tracker},
};

/// What masking a body did.
#[derive(Debug)]
pub struct Masked {
    /// The new body, when anything changed.
    pub body: Option<Vec<u8>>,
    pub counts: Counts,
}

impl Masked {
    /// The verdict for the record: blocked (naming the first blocking detector that found
    /// something), masked with counts, or clean.
    pub fn verdict(&self, plan: &Plan) -> Verdict {
        if self.counts.blocked
            && let Some(i) = self
                .counts
                .per_detector
                .iter()
                .enumerate()
                .position(|(i, n)| *n > 0 && matches!(plan.action(i), Some(Action::Block)))
        {
            return Verdict::Blocked {
                detector: plan.scanner().name(i).to_string(),
            };
        }
        Verdict::from_counts(&self.counts, |i| plan.scanner().name(i))
    }
}

/// How a body is laid out, as far as masking is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Valid JSON (the read stage parsed it).
    Json,
    /// `application/x-www-form-urlencoded` (the read stage checked its spelling).
    Form,
    /// `text/*`.
    Text,
}

/// Masks `body` laid out as `layout`; pseudonyms are remembered in `vault`.
pub fn mask_body(
    plan: &Plan,
    layout: Layout,
    body: &[u8],
    vault: Option<&mut Vault>,
) -> Result<Masked, Unscannable> {
    let mut m = Masker::new(plan, vault);
    let out = match layout {
        Layout::Json => mask_json(&mut m, body)?,
        Layout::Form => mask_form(&mut m, body)?,
        Layout::Text => {
            if std::str::from_utf8(body).is_err() {
                return Err(Unscannable::Binary);
            }
            let out = m.text(body);
            (out != body).then_some(out)
        }
    };
    Ok(Masked {
        body: out,
        counts: m.counts,
    })
}

/// One body's masking pass over many texts: one tracker (the regexes' caches are made
/// once per body, not per string), counts across all of them.
struct Masker<'a> {
    plan: &'a Plan,
    tracker: Tracker,
    found: Vec<Finding>,
    counts: Counts,
    vault: Option<&'a mut Vault>,
}

impl<'a> Masker<'a> {
    fn new(plan: &'a Plan, vault: Option<&'a mut Vault>) -> Self {
        Masker {
            plan,
            tracker: Tracker::new(plan.scanner()),
            found: Vec::new(),
            counts: plan.counts(),
            vault,
        }
    }

    /// [`Plan::mask`] of one text, remembering each pseudonym it makes.
    fn text(&mut self, text: &[u8]) -> Vec<u8> {
        self.found.clear();
        self.plan
            .scanner()
            .find_with(&mut self.tracker, text, &mut self.found);
        if self.found.is_empty() {
            return text.to_vec();
        }
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        for f in &self.found {
            out.extend_from_slice(&text[at..f.range.start]);
            let value = &text[f.range.clone()];
            let from = out.len();
            self.plan
                .apply(f.detector, value, &mut out, &mut self.counts);
            if let (Some(v), Some(Action::Pseudonym(_))) =
                (self.vault.as_deref_mut(), self.plan.action(f.detector))
            {
                v.record(&out[from..], value);
            }
            at = f.range.end;
        }
        out.extend_from_slice(&text[at..]);
        out
    }
}

/// Every string literal of a valid JSON text, masked; `None` when none changed.
fn mask_json(m: &mut Masker<'_>, json: &[u8]) -> Result<Option<Vec<u8>>, Unscannable> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut from = 0;
    // Outside string literals a valid JSON text has no `"` but the ones that open them.
    while let Some(k) = memchr::memchr(b'"', &json[from..]) {
        let open = from + k;
        let close = literal_end(json, open).ok_or(Unscannable::Error)?;
        let inner = &json[open + 1..close];
        let text: Cow<'_, str> = if memchr::memchr(b'\\', inner).is_none() {
            Cow::Borrowed(std::str::from_utf8(inner).map_err(|_| Unscannable::Binary)?)
        } else {
            Cow::Owned(
                serde_json::from_slice::<String>(&json[open..=close])
                    .map_err(|_| Unscannable::Error)?,
            )
        };
        let masked = m.text(text.as_bytes());
        if masked != text.as_bytes() {
            let o = out.get_or_insert_with(|| Vec::with_capacity(json.len() + 64));
            o.extend_from_slice(&json[copied..open]);
            // A finding's range may in principle end inside a character: kept valid.
            let s = String::from_utf8_lossy(&masked);
            serde_json::to_writer(&mut *o, &*s).map_err(|_| Unscannable::Error)?;
            copied = close + 1;
        }
        from = close + 1;
    }
    Ok(out.map(|mut o| {
        o.extend_from_slice(&json[copied..]);
        o
    }))
}

/// The index of the `"` closing the literal opened at `open`.
fn literal_end(json: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    loop {
        let k = memchr::memchr2(b'"', b'\\', json.get(i..)?)?;
        match json[i + k] {
            b'\\' => i += k + 2,
            _ => return Some(i + k),
        }
    }
}

/// Every field name and value of an urlencoded form, masked and encoded again; `None` when
/// none changed.
fn mask_form(m: &mut Masker<'_>, form: &[u8]) -> Result<Option<Vec<u8>>, Unscannable> {
    let text = std::str::from_utf8(form).map_err(|_| Unscannable::Binary)?;
    let mut out = String::with_capacity(form.len());
    let mut changed = false;
    for (i, pair) in text.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        for (j, part) in pair.splitn(2, '=').enumerate() {
            if j > 0 {
                out.push('=');
            }
            let decoded = percent_encoding::percent_decode_str(&part.replace('+', " "))
                .decode_utf8()
                .map_err(|_| Unscannable::Binary)?
                .into_owned();
            let masked = m.text(decoded.as_bytes());
            if masked == decoded.as_bytes() {
                out.push_str(part);
            } else {
                changed = true;
                let s = String::from_utf8_lossy(&masked);
                out.extend(percent_encoding::utf8_percent_encode(&s, FORM));
            }
        }
    }
    Ok(changed.then(|| out.into_bytes()))
}

/// What a form value must escape: everything but the unreserved characters.
const FORM: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mask::{PseudonymKey, Scanner};

    fn plan(action: Action) -> Plan {
        // Compiling the built-ins is most of a small test's time: once for all of them.
        static SCANNER: std::sync::OnceLock<Arc<Scanner>> = std::sync::OnceLock::new();
        Plan::uniform(
            SCANNER.get_or_init(|| Arc::new(Scanner::builtin())).clone(),
            action,
        )
    }

    fn json(p: &Plan, body: &str) -> (String, Masked) {
        let m = mask_body(p, Layout::Json, body.as_bytes(), None).expect("scannable");
        let out = m
            .body
            .clone()
            .map_or(body.to_string(), |b| String::from_utf8(b).expect("utf-8"));
        serde_json::from_str::<serde_json::Value>(&out).expect("still JSON");
        (out, m)
    }

    #[test]
    fn json_strings_are_masked_in_place_escapes_decoded_and_the_rest_kept() {
        let p = plan(Action::Redact);
        let body = r#"{"model":"gpt-4o", "n": 1.50e3,
  "messages":[{"role":"user","content":"card 4111 1111 1111 1111, mail jane\u0040example.com \"quoted\" \ud83d\ude00"}]}"#;
        let (out, m) = json(&p, body);
        assert_eq!(
            out,
            r#"{"model":"gpt-4o", "n": 1.50e3,
  "messages":[{"role":"user","content":"card [REDACTED:payment_card], mail [REDACTED:email] \"quoted\" 😀"}]}"#
        );
        assert_eq!(m.counts.total(), 2);
        assert_eq!(
            m.verdict(&p),
            Verdict::Masked {
                counts: vec![("email".into(), 1), ("payment_card".into(), 1)]
            }
        );
        // Keys are masked too; nothing found: the body is left as it was.
        let (out, _) = json(&p, r#"{"jane@example.com":{"x":"y"}}"#);
        assert_eq!(out, r#"{"[REDACTED:email]":{"x":"y"}}"#);
        let (_, m) = json(&p, r#"{"model":"m","messages":[]}"#);
        assert!(m.body.is_none());
        assert_eq!(m.verdict(&p), Verdict::Clean);
    }

    #[test]
    fn a_value_split_by_an_escape_is_still_found_and_the_escape_is_written_back() {
        let p = plan(Action::Redact);
        // `\n` before the value and a `/` escaped as `\/` inside a key-like text.
        let (out, m) = json(
            &p,
            r#"["line1\npassword=hunter2xyz\tend", "AKIA\u0051\u00333EGRSZ7XN5TB2LP"]"#,
        );
        assert_eq!(m.counts.total(), 2, "{out}");
        assert!(out.contains(r"line1\npassword=[REDACTED"), "{out}");
        assert!(
            !out.contains("hunter2xyz") && !out.contains("EGRSZ7"),
            "{out}"
        );
    }

    #[test]
    fn block_names_the_detector_and_pseudonyms_are_recorded_for_restore() {
        let p = plan(Action::Block);
        let (_, m) = json(&p, r#"{"k":"AKIAQ3EGRSZ7XN5TB2LP"}"#);
        assert_eq!(
            m.verdict(&p),
            Verdict::Blocked {
                detector: "aws_access_key".into()
            }
        );
        let p = plan(Action::Pseudonym(PseudonymKey::new([3; 32])));
        let mut vault = Vault::default();
        let body = br#"{"content":"write to jane@example.com"}"#;
        let m = mask_body(&p, Layout::Json, body, Some(&mut vault)).expect("scannable");
        let out = m.body.expect("changed");
        assert_eq!(vault.len(), 1);
        let (back, n) = vault.restore(&out);
        assert_eq!((back.as_slice(), n), (&body[..], 1));
    }

    /// `s` as a JSON string literal with every character `\u`-escaped where `escape` says
    /// (surrogate pairs for those outside the BMP).
    fn escaped(s: &str, escape: &[bool]) -> String {
        let mut out = String::from("\"");
        for (i, c) in s.chars().enumerate() {
            if escape.get(i).copied().unwrap_or(false) || c == '"' || c == '\\' || c < ' ' {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            } else {
                out.push(c);
            }
        }
        out.push('"');
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// However a string is escaped, its masked value is the plain text's masked value,
        /// and the body stays valid JSON.
        #[test]
        fn any_escaping_masks_as_the_decoded_text_does(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::prelude::Just("jane@example.com".to_string()),
                    proptest::prelude::Just("4111 1111 1111 1111".to_string()),
                    proptest::prelude::Just("AKIAQ3EGRSZ7XN5TB2LP".to_string()),
                    proptest::prelude::Just("password=hunter2xyz".to_string()),
                    "[a-z \"\\\\@.:=\n\t0-9é😀]{0,12}",
                ],
                1..6,
            ),
            escape in proptest::collection::vec(proptest::prelude::any::<bool>(), 0..64),
            key_too in proptest::prelude::any::<bool>(),
        ) {
            let p = plan(Action::Redact);
            let text: String = parts.concat();
            let lit = escaped(&text, &escape);
            let body = if key_too {
                format!("{{{lit}: [{lit}, 1.0e2]}}")
            } else {
                format!("[{lit}, {lit}]")
            };
            let m = mask_body(&p, Layout::Json, body.as_bytes(), None).expect("scannable");
            let out = m.body.unwrap_or_else(|| body.clone().into_bytes());
            let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
            let want = String::from_utf8(p.mask(text.as_bytes(), &mut p.counts())).expect("utf-8");
            let got: Vec<String> = if key_too {
                let (k, v) = v.as_object().and_then(|o| o.iter().next()).expect("one key");
                vec![k.clone(), v[0].as_str().expect("string").to_string()]
            } else {
                v.as_array().expect("array").iter().map(|s| s.as_str().expect("string").to_string()).collect()
            };
            proptest::prop_assert_eq!(got, vec![want.clone(), want]);
        }
    }

    #[test]
    fn forms_and_text_are_masked_and_binary_is_unscannable() {
        let p = plan(Action::Redact);
        let m = mask_body(
            &p,
            Layout::Form,
            b"model=m&prompt=mail+jane%40example.com+now&x=1",
            None,
        )
        .expect("form");
        assert_eq!(
            m.body.as_deref(),
            Some(&b"model=m&prompt=mail%20%5BREDACTED%3Aemail%5D%20now&x=1"[..])
        );
        let m = mask_body(&p, Layout::Text, b"ssn 078-05-1120.", None).expect("text");
        assert_eq!(m.body.as_deref(), Some(&b"ssn [REDACTED:us_ssn]."[..]));
        assert_eq!(
            mask_body(&p, Layout::Text, b"\xff\xfe\x00", None).expect_err("binary"),
            Unscannable::Binary
        );
    }
}
