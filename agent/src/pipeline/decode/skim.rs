//! The top-level fields of a JSON body that nothing reads into: checked as the full parse
//! checks them (syntax, colliding keys at every level, the meter), built as little as
//! possible. The adapters read top-level scalars and whether a top-level list is empty;
//! policy `body:` pointers read into the fields they start with (`Roots`). A chat body's
//! `messages` is most of its parse, and with no pointer into it nothing is built from it.
use std::{borrow::Cow, cell::RefCell, collections::HashMap, fmt};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{Seed, Stop};

/// Which top-level fields of a JSON object body are built in full: those a policy `body:`
/// pointer starts with (in the server's canonical key form, as the tree's keys are), or all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Roots {
    #[default]
    All,
    Only(Vec<String>),
}

impl Roots {
    /// The roots `pointers` (JSON pointers, RFC 6901) read into.
    pub fn of<'p>(pointers: impl IntoIterator<Item = &'p str>) -> Roots {
        let mut keys: Vec<String> = Vec::new();
        for p in pointers {
            // "" is the whole document.
            let Some(rest) = p.strip_prefix('/') else {
                return Roots::All;
            };
            let first = rest.split('/').next().unwrap_or_default();
            let first = first.replace("~1", "/").replace("~0", "~");
            if !keys.contains(&first) {
                keys.push(first);
            }
        }
        Roots::Only(keys)
    }

    pub(super) fn builds(&self, key: &str) -> bool {
        match self {
            Roots::All => true,
            Roots::Only(keys) => keys.iter().any(|k| k == key),
        }
    }
}

/// An object's keys past which a linear search for a collision gives way to a map (a
/// hostile object of many keys must not cost their square).
const LINEAR: usize = 32;

/// (canonical, as written) for each key of the objects being skimmed, innermost last.
pub(super) type Scratch<'de> = RefCell<Vec<(Cow<'de, str>, Cow<'de, str>)>>;

/// A top-level field's value, or (`top: false`) anything within one. At the top a scalar is
/// built as the full parse builds it; a list stands as as many nulls (its length is what
/// the adapters read), an object as an empty one. Within, nothing is built.
#[derive(Clone, Copy)]
pub(super) struct Skim<'a, 'de> {
    pub seed: Seed<'a>,
    pub scratch: &'a Scratch<'de>,
    pub top: bool,
}

impl<'de> DeserializeSeed<'de> for Skim<'_, 'de> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.seed.count(1)?;
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skim<'_, 'de> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(if self.top {
            Value::Bool(v)
        } else {
            Value::Null
        })
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(if self.top {
            Value::from(v)
        } else {
            Value::Null
        })
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(if self.top {
            Value::from(v)
        } else {
            Value::Null
        })
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        if !self.top {
            return Ok(Value::Null);
        }
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(if self.top {
            Value::String(v.to_string())
        } else {
            Value::Null
        })
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(if self.top {
            Value::String(v)
        } else {
            Value::Null
        })
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let within = Skim { top: false, ..self };
        let mut n = 0usize;
        while seq.next_element_seed(within)?.is_some() {
            n += 1;
        }
        Ok(if self.top {
            Value::Array(vec![Value::Null; n])
        } else {
            Value::Null
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let within = Skim { top: false, ..self };
        let start = self.scratch.borrow().len();
        // std's SipHash, not a fast hash: the keys are the client's to choose.
        let mut many: Option<HashMap<Cow<'de, str>, usize>> = None;
        while let Some(key) = map.next_key_seed(Key)? {
            self.seed.count(2)?;
            let written = key.clone();
            let canonical = match key {
                Cow::Borrowed(k) => self.seed.keys.canonical(k),
                Cow::Owned(k) => Cow::Owned(self.seed.keys.canonical(&k).into_owned()),
            };
            let first = {
                let keys = self.scratch.borrow();
                let ours = keys.get(start..).unwrap_or_default();
                if ours.len() == LINEAR && many.is_none() {
                    many = Some(
                        ours.iter()
                            .enumerate()
                            .map(|(i, (c, _))| (c.clone(), start + i))
                            .collect(),
                    );
                }
                let at = match &many {
                    Some(m) => m.get(&canonical).copied(),
                    None => ours
                        .iter()
                        .position(|(c, _)| *c == canonical)
                        .map(|i| start + i),
                };
                at.and_then(|i| keys.get(i)).map(|(_, w)| w.to_string())
            };
            if let Some(first) = first {
                *self.seed.stop.borrow_mut() = Some(Stop::Collision(first, written.into_owned()));
                return Err(de::Error::custom("colliding keys"));
            }
            if let Some(m) = many.as_mut() {
                m.insert(canonical.clone(), self.scratch.borrow().len());
            }
            self.scratch.borrow_mut().push((canonical, written));
            map.next_value_seed(within)?;
        }
        // This object's keys are done with. (A parse that stops drops the whole scratch.)
        self.scratch.borrow_mut().truncate(start);
        Ok(if self.top {
            Value::Object(serde_json::Map::new())
        } else {
            Value::Null
        })
    }
}

/// An object key, borrowed from the body when it holds no escape.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::Roots;
    use crate::adapter::keys::KeyMatch;
    use crate::pipeline::decode::{JsonError, METER_STEP, parse_json_metered, parse_json_pruned};

    /// What the pruned parse must give where the full one gave `full`: the same scalars at
    /// the top; a list as as many nulls, an object as an empty one, outside `roots`.
    fn expected(full: &Value, roots: &Roots) -> Value {
        let Value::Object(m) = full else {
            return full.clone();
        };
        let out = m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    _ if roots.builds(k) => v.clone(),
                    Value::Array(a) => Value::Array(vec![Value::Null; a.len()]),
                    Value::Object(_) => json!({}),
                    scalar => scalar.clone(),
                };
                (k.clone(), v)
            })
            .collect();
        Value::Object(out)
    }

    /// Both parses of `text` agree: the same error (a collision naming the same keys, or the
    /// same syntax error), or the tree the pruned one must give.
    fn agree(text: &str, keys: KeyMatch, roots: &Roots) -> Result<(), String> {
        let full = parse_json_metered(text.as_bytes(), keys, &|_| Ok(()));
        let pruned = parse_json_pruned(text.as_bytes(), keys, roots, &|_| Ok(()));
        match (&full, &pruned) {
            (Ok(f), Ok(p)) if expected(f, roots) == *p => Ok(()),
            (
                Err(JsonError::Collision {
                    first: a,
                    second: b,
                }),
                Err(JsonError::Collision {
                    first: c,
                    second: d,
                }),
            ) if (a, b) == (c, d) => Ok(()),
            (Err(JsonError::Syntax(a)), Err(JsonError::Syntax(b)))
                if a.to_string() == b.to_string() =>
            {
                Ok(())
            }
            _ => Err(format!("{text}: full {full:?}, pruned {pruned:?}")),
        }
    }

    #[test]
    fn roots_are_the_fields_pointers_start_with() {
        assert_eq!(
            Roots::of([
                "/keep_alive",
                "/messages/0/role",
                "/a~1b/c",
                "/t~0",
                "/messages"
            ]),
            Roots::Only(vec![
                "keep_alive".into(),
                "messages".into(),
                "a/b".into(),
                "t~".into()
            ])
        );
        // The whole document, or a pointer that is not one: everything is built.
        assert_eq!(Roots::of([""]), Roots::All);
        assert_eq!(Roots::of(["model"]), Roots::All);
        assert_eq!(Roots::of([]), Roots::Only(vec![]));
    }

    #[test]
    fn a_chat_body_builds_its_scalars_and_the_length_of_its_lists() {
        let body = r#"{"model":"m","stream":true,"n":2,"messages":[{"role":"user","content":"hi"},{"role":"system","content":"x"}],"options":{"a":1},"prompt":""}"#;
        let none = Roots::Only(vec![]);
        let v = parse_json_pruned(body.as_bytes(), KeyMatch::Exact, &none, &|_| Ok(()))
            .expect("parses");
        assert_eq!(
            v,
            json!({"model":"m","stream":true,"n":2,"messages":[null,null],"options":{},"prompt":""})
        );
        // A pointer into `messages` builds it whole.
        let roots = Roots::of(["/messages/1/role"]);
        let v = parse_json_pruned(body.as_bytes(), KeyMatch::Exact, &roots, &|_| Ok(()))
            .expect("parses");
        assert_eq!(v.pointer("/messages/1/role"), Some(&json!("system")));
        assert_eq!(v["options"], json!({}));
    }

    #[test]
    fn skimmed_fields_are_checked_as_built_ones_are() {
        let none = Roots::Only(vec![]);
        for (text, keys) in [
            (r#"{"messages":[{"a":1,"a":2}]}"#, KeyMatch::Exact),
            (
                r#"{"messages":[{"role":"x","Role":"y"}]}"#,
                KeyMatch::GoFold,
            ),
            (
                r#"{"messages":[{"r\u006fle":"x","role":"y"}]}"#,
                KeyMatch::Exact,
            ),
            (r#"{"o":{"a":{"b":{"c":1,"c":1}}}}"#, KeyMatch::Exact),
            (r#"{"o":{"K":1,"\u212a":2}}"#, KeyMatch::GoFold),
            (r#"{"o":{"a":1},"o2":[1,2,}"#, KeyMatch::Exact),
            (r#"{"o":[1,2]"#, KeyMatch::Exact),
            (r#"{"o":[1,2]} x"#, KeyMatch::Exact),
            (r#"{"o":"\ud800"}"#, KeyMatch::Exact),
            (r#"{"o":{"a":1},"o":2}"#, KeyMatch::Exact),
            (r#"[{"a":1,"a":1}]"#, KeyMatch::Exact),
            (
                r#"{"o":[{"a":1},{"a":1}],"p":{"a":{"a":1}}}"#,
                KeyMatch::GoFold,
            ),
        ] {
            agree(text, keys, &none).unwrap_or_else(|e| panic!("{e}"));
        }
        // Past the linear search: a collision in a large skimmed object is still found,
        // naming both keys as written.
        let mut many: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
        many.push("\"K7\":0".into());
        let text = format!("{{\"o\":{{{}}}}}", many.join(","));
        agree(&text, KeyMatch::GoFold, &none).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            parse_json_pruned(text.as_bytes(), KeyMatch::GoFold, &none, &|_| Ok(())),
            Err(JsonError::Collision { first, second }) if first == "k7" && second == "K7"
        ));
        // Nesting deeper than serde_json allows is refused in a skimmed field too.
        let deep = format!("{{\"o\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        agree(&deep, KeyMatch::Exact, &none).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn the_meter_sees_skimmed_fields() {
        let none = Roots::Only(vec![]);
        let many = format!("{{\"messages\":[{}0]}}", "0,".repeat(3 * METER_STEP));
        let stopped = parse_json_pruned(many.as_bytes(), KeyMatch::Exact, &none, &|_| {
            Err(crate::respond::Refusal::client(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                "x",
                "too dense",
            ))
        });
        assert!(matches!(stopped, Err(JsonError::Stopped(r)) if r.message == "too dense"));
    }

    /// JSON text with keys drawn from a few that collide (exactly, or under Go's folding),
    /// nested a few levels, and now and then broken.
    fn text() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "a",
            "A",
            "b",
            "model",
            "Model",
            "messages",
            "r\\u006fle",
            "role",
            "\u{212a}",
            "k",
        ]);
        let leaf = prop_oneof![
            Just("1".to_string()),
            Just("-2.5e3".to_string()),
            Just("true".to_string()),
            Just("null".to_string()),
            Just("\"s\\n\"".to_string()),
            Just("\"\"".to_string()),
        ];
        let tree = leaf.prop_recursive(4, 40, 5, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((key.clone(), inner), 0..5).prop_map(|v| {
                    let fields: Vec<String> =
                        v.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", fields.join(","))
                }),
            ]
        });
        (
            tree,
            0usize..40,
            prop::sample::select(vec!["", "]", ",", "}", "x"]),
        )
            .prop_map(|(t, at, junk)| {
                if junk.is_empty() {
                    t
                } else {
                    let at = at.min(t.len());
                    let at = (0..=at).rev().find(|i| t.is_char_boundary(*i)).unwrap_or(0);
                    format!("{}{junk}{}", &t[..at], &t[at..])
                }
            })
    }

    proptest! {
        #[test]
        fn pruned_and_full_parses_agree(
            t in text(),
            gofold in any::<bool>(),
            roots in prop::sample::select(vec![
                Roots::Only(vec![]),
                Roots::Only(vec!["messages".into()]),
                Roots::Only(vec!["a".into(), "model".into()]),
                Roots::All,
            ]),
        ) {
            let keys = if gofold { KeyMatch::GoFold } else { KeyMatch::Exact };
            if let Err(e) = agree(&t, keys, &roots) {
                prop_assert!(false, "{}", e);
            }
        }
    }
}
