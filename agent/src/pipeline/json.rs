//! JSON request bodies, parsed once. (Moving to `decode` with #11 item 4.)

/// Parses a JSON body in one pass, also returning the first top-level key given twice.
pub fn parse(bytes: &[u8]) -> Result<(serde_json::Value, Option<String>), serde_json::Error> {
    use serde::de::{Deserializer as _, MapAccess, Visitor};

    struct Object;
    impl<'de> Visitor<'de> for Object {
        type Value = (serde_json::Map<String, serde_json::Value>, Option<String>);
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = serde_json::Map::new();
            let mut dup = None;
            while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                if let Some(_earlier) = out.insert(k.clone(), v)
                    && dup.is_none()
                {
                    dup = Some(k);
                }
            }
            Ok((out, dup))
        }
    }
    let is_object = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    if !is_object {
        return serde_json::from_slice(bytes).map(|v| (v, None));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let (map, dup) = de.deserialize_map(Object)?;
    de.end()?;
    Ok((serde_json::Value::Object(map), dup))
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn duplicate_top_level_key(bytes: &[u8]) -> Option<String> {
        parse(bytes).ok().and_then(|(_, dup)| dup)
    }

    #[test]
    fn parses_objects_and_other_values_and_rejects_trailing_data() {
        let (v, dup) = parse(br#" {"model":"a","n":[1,2]} "#).expect("valid");
        assert_eq!((v["model"].as_str(), dup), (Some("a"), None));
        assert_eq!(parse(b"[1,2]").expect("array").0[1], 2);
        assert!(parse(br#"{"model":"a"} x"#).is_err());
        assert!(parse(br#"{"model":"a""#).is_err());
    }

    #[test]
    fn finds_duplicate_top_level_keys_only() {
        assert_eq!(
            duplicate_top_level_key(br#"{"model":"a","x":1,"model":"b"}"#),
            Some("model".into())
        );
        assert_eq!(
            duplicate_top_level_key(br#"{"model":"a","m":{"k":1,"k":2}}"#),
            None
        );
        assert_eq!(duplicate_top_level_key(br#"[{"a":1,"a":2}]"#), None);
        assert_eq!(duplicate_top_level_key(br#"{"model":"a"}"#), None);
        assert_eq!(
            duplicate_top_level_key(br#"{"model":"test-model","model":"gpt-4o","messages":[]}"#),
            Some("model".into())
        );
        assert_eq!(duplicate_top_level_key(b"not json"), None);
    }
}
