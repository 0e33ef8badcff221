//! `body:` matchers as they read a case-folding (Go) server's body. Such a body's object keys
//! are parsed in their folded form (`pipeline/decode`), because Ollama reads `Keep_Alive`
//! as `keep_alive`. A pointer or an expected object written with capitals is folded the same
//! way at load, so it matches what the server reads instead of never matching at all.
use serde_json::Value;

use crate::adapter::keys::go_fold;

/// `body` folded, or `None` when folding changes nothing (every pointer already lower case).
/// An expected value whose own object keys collide once folded is `None` in its pair: no
/// body the server accepts can hold both keys, so that matcher matches nothing.
pub(super) fn folded(body: &[(String, Value)]) -> Option<Vec<(String, Option<Value>)>> {
    let out: Vec<(String, Option<Value>)> = body
        .iter()
        .map(|(ptr, want)| (go_fold(ptr).into_owned(), fold_keys(want)))
        .collect();
    let same = out
        .iter()
        .zip(body)
        .all(|((p, w), (ptr, want))| p == ptr && w.as_ref() == Some(want));
    (!same).then_some(out)
}

/// `v` with every object key folded; `None` if two keys of one object fold together.
fn fold_keys(v: &Value) -> Option<Value> {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                if out.insert(go_fold(k).into_owned(), fold_keys(v)?).is_some() {
                    return None;
                }
            }
            Some(Value::Object(out))
        }
        Value::Array(a) => a
            .iter()
            .map(fold_keys)
            .collect::<Option<Vec<_>>>()
            .map(Value::Array),
        other => Some(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lower_case_pointers_need_no_folded_copy() {
        let body = vec![("/keep_alive".to_string(), json!("5m"))];
        assert_eq!(folded(&body), None);
    }

    #[test]
    fn capitals_fold_in_pointers_and_in_expected_objects_not_in_strings() {
        let body = vec![
            ("/Options/Num_Ctx".to_string(), json!(4096)),
            ("/format".to_string(), json!({"Type": "Object"})),
        ];
        let f = folded(&body).expect("folded");
        assert_eq!(f[0], ("/options/num_ctx".to_string(), Some(json!(4096))));
        assert_eq!(
            f[1],
            ("/format".to_string(), Some(json!({"type": "Object"})))
        );
    }

    #[test]
    fn an_expected_object_whose_keys_collide_once_folded_matches_nothing() {
        let body = vec![("/options".to_string(), json!({"a": 1, "A": 2}))];
        assert_eq!(folded(&body), Some(vec![("/options".to_string(), None)]));
    }
}
