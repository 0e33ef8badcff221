//! Ollama native API (no authentication of its own) and its OpenAI/Anthropic-compatible /v1.
//!
//! Read as Ollama reads it (server/routes.go, internal/modelref, types/model/name.go at
//! v0.33): model names are trimmed, a `:cloud` / `:local` / `-cloud` source suffix is taken
//! off, and the rest is parsed like `model.ParseName` (default host, namespace and tag), so
//! every spelling of one model gets one name before policy globs see it (`canonical_model`).
//! Management, pull, push, create, delete and show still honour the deprecated `name` field.
use std::borrow::Cow;

use serde_json::Value;

use super::{
    OpClass::{self, *},
    Operation, Server, field,
    route::{DELETE, GET, ModelFrom as M, POST, Route, StreamFrom as S, r},
};

const MODEL: M = M::Body("model");
/// Routes whose request type still has the deprecated `name` (used when `model` is empty).
const MODEL_OR_NAME: M = M::BodyOr("model", "name");

pub const ROUTES: &[Route] = &[
    r("ollama.root", GET, "/", Health, M::None, S::Never),
    r(
        "ollama.version",
        GET,
        "/api/version",
        Health,
        M::None,
        S::Never,
    ),
    r(
        "ollama.chat",
        POST,
        "/api/chat",
        Inference,
        MODEL,
        S::Body("stream", true),
    ),
    r(
        "ollama.generate",
        POST,
        "/api/generate",
        Inference,
        MODEL,
        S::Body("stream", true),
    ),
    r(
        "ollama.embed",
        POST,
        "/api/embed",
        Embedding,
        MODEL,
        S::Never,
    ),
    r(
        "ollama.embeddings",
        POST,
        "/api/embeddings",
        Embedding,
        MODEL,
        S::Never,
    ),
    r("ollama.tags", GET, "/api/tags", Listing, M::None, S::Never),
    r("ollama.ps", GET, "/api/ps", Listing, M::None, S::Never),
    r(
        "ollama.show",
        POST,
        "/api/show",
        Listing,
        MODEL_OR_NAME,
        S::Never,
    ),
    r(
        "ollama.pull",
        POST,
        "/api/pull",
        Management,
        MODEL_OR_NAME,
        S::Body("stream", true),
    ),
    r(
        "ollama.push",
        POST,
        "/api/push",
        ModelExport,
        MODEL_OR_NAME,
        S::Body("stream", true),
    ),
    r(
        "ollama.create",
        POST,
        "/api/create",
        Management,
        MODEL_OR_NAME,
        S::Body("stream", true),
    ),
    r(
        "ollama.copy",
        POST,
        "/api/copy",
        Management,
        M::Body("source"),
        S::Never,
    ),
    r(
        "ollama.delete",
        DELETE,
        "/api/delete",
        Management,
        MODEL_OR_NAME,
        S::Never,
    ),
    r(
        "ollama.blobs.exists",
        &["HEAD"],
        "/api/blobs/*",
        Listing,
        M::None,
        S::Never,
    ),
    r(
        "ollama.blobs.upload",
        POST,
        "/api/blobs/*",
        Management,
        M::None,
        S::Never,
    )
    .raw_body(),
    r(
        "ollama.me",
        POST,
        "/api/me",
        ConfigChange,
        M::None,
        S::Never,
    ),
    r(
        "ollama.signout",
        POST,
        "/api/signout",
        ConfigChange,
        M::None,
        S::Never,
    ),
    r(
        "ollama.user_keys",
        DELETE,
        "/api/user/keys/*",
        ConfigChange,
        M::None,
        S::Never,
    ),
    r(
        "ollama.web_tools",
        POST,
        "/api/experimental/**",
        ConfigChange,
        M::None,
        S::Never,
    ),
];

/// Canonicalises the model and reclassifies inference routes with side effects: with no
/// prompt (generate, embeddings), no messages (chat) or no input (embed) Ollama only loads
/// the model, and a `keep_alive` that expires it at once unloads it (server/routes.go). Both
/// are management, not inference.
pub fn refine(op: &mut Operation, body: Option<&Value>) {
    op.model = op.model.as_deref().and_then(canonical_model);
    let Some(body) = body else { return };
    let get = |name: &str| field(Server::Ollama, body, name);
    let no_text = |name: &str| get(name).and_then(Value::as_str).is_none_or(str::is_empty);
    let no_list = |name: &str| {
        get(name)
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
    };
    let (loads, reads_keep_alive) = match op.route {
        "ollama.generate" | "ollama.embeddings" => (no_text("prompt"), true),
        "ollama.chat" => (no_list("messages"), true),
        "ollama.embed" => (no_input(get("input")), true),
        // The /v1 compatibility layer turns these into the native requests above (without
        // keep_alive), so an empty one loads the model too.
        "openai.chat.completions" | "anthropic.messages" => (no_list("messages"), false),
        "openai.completions" => (no_text("prompt"), false),
        _ => return,
    };
    let unloads = reads_keep_alive && get("keep_alive").is_some_and(expires_at_once);
    if loads || unloads {
        op.class = OpClass::Management;
    }
}

/// Embed input as `EmbedHandler` reads it: absent, null, "" or [] embeds nothing.
fn no_input(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    }
}

/// Whether a `keep_alive` unloads the model as soon as the request is done, as Ollama's
/// `api.Duration` reads it: a number `t` becomes `time.Duration(int(t) * int(time.Second))`
/// (truncated, and the product wraps), a string goes through `time.ParseDuration`, a negative
/// input keeps the model forever. The scheduler unloads at once a duration of zero or below,
/// and anything under one second is the same unload a moment later. A number too large for
/// Go's `int` has no defined conversion (amd64 gives MinInt64, which wraps to 0; arm64
/// saturates, which wraps below 0): both unload, and so does anything Ollama cannot read,
/// since Sluice cannot judge it.
fn expires_at_once(v: &Value) -> bool {
    const SECOND: i64 = 1_000_000_000;
    // 2^63: the first float Go's int conversion cannot represent.
    const INT_LIMIT: f64 = 9_223_372_036_854_775_808.0;
    let nanos = match v {
        Value::Null => return false,
        Value::Number(n) => match n.as_f64() {
            Some(t) if t < 0.0 => return false,
            Some(t) if t >= INT_LIMIT => return true,
            // In range: `as` truncates toward zero, as Go's conversion does.
            Some(t) => (t as i64).wrapping_mul(SECOND),
            None => return true,
        },
        Value::String(s) => match go_duration_nanos(s) {
            Some(d) if d < 0 => return false,
            Some(d) => d,
            None => return true,
        },
        _ => return true,
    };
    nanos < SECOND
}

/// Go's `time.ParseDuration`, in nanoseconds; `None` where Go returns an error. Hand-written
/// because the value must be read exactly as Go reads it (each component truncated on its
/// own, `"0"` without a unit, `µs`/`μs`), which general duration crates do not promise.
fn go_duration_nanos(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let unit: u64 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let whole: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let mut v = whole.checked_mul(unit)?;
        if !frac.is_empty() {
            // As Go: the fraction's digits up to overflow, scaled in floating point.
            let mut f: u64 = 0;
            let mut scale = 1f64;
            for d in frac.bytes() {
                match f
                    .checked_mul(10)
                    .and_then(|x| x.checked_add(u64::from(d - b'0')))
                {
                    Some(x) if x <= i64::MAX as u64 => {
                        f = x;
                        scale *= 10.0;
                    }
                    _ => break,
                }
            }
            v = v.checked_add((f as f64 * (unit as f64 / scale)) as u64)?;
        }
        total = total.checked_add(v)?;
        if total > i64::MAX as u64 {
            return None;
        }
        rest = after;
    }
    let total = i64::try_from(total).ok()?;
    Some(if neg { -total } else { total })
}

/// A model name as Ollama resolves it (`parseAndValidateModelRef`): trimmed, its source
/// suffix taken off, then parsed like `model.ParseName` and shown like `DisplayShortest`:
/// `llama3`, `LLAMA3:latest ` and `registry.ollama.ai/library/llama3` are all `llama3:latest`
/// (case kept; policy globs on models compare case-insensitively, as Ollama does). A cloud
/// model (`x:cloud`, `x: cloud`, `x:8b-cloud`) ends in `:cloud` whatever its spelling, so a
/// `*:cloud` glob catches them all. A name Ollama would refuse as invalid is left trimmed but
/// otherwise as written (the server runs nothing for it). An empty name is no model.
pub fn canonical_model(raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return None;
    }
    let (base, source) = source_suffix(trimmed);
    if source.is_some() && source_suffix(&base).1.is_some() {
        // "x:cloud:local": Ollama refuses the conflict.
        return Some(trimmed.to_string());
    }
    let Some(name) = Name::parse(&base) else {
        return Some(trimmed.to_string());
    };
    let mut shown = name.display_shortest();
    if source == Some(Source::Cloud) {
        shown.push_str(":cloud");
    }
    Some(shown)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Cloud,
    Local,
}

/// `modelref.parseSourceSuffix`: the text after the last ':' is `cloud` or `local` (trimmed,
/// any case), or ends in `-cloud` (then the tag is kept without it).
fn source_suffix(raw: &str) -> (Cow<'_, str>, Option<Source>) {
    let Some(idx) = raw.rfind(':') else {
        return (Cow::Borrowed(raw), None);
    };
    let suffix_raw = raw[idx + 1..].trim();
    let suffix = suffix_raw.to_lowercase();
    match suffix.as_str() {
        "cloud" => return (Cow::Borrowed(&raw[..idx]), Some(Source::Cloud)),
        "local" => return (Cow::Borrowed(&raw[..idx]), Some(Source::Local)),
        _ => {}
    }
    if !suffix_raw.contains('/') && suffix.ends_with("-cloud") {
        // "-cloud" lowercases from ASCII only, so it is the last 6 bytes of suffix_raw.
        if let Some(tag) = suffix_raw.get(..suffix_raw.len() - "-cloud".len()) {
            return (
                Cow::Owned(format!("{}{tag}", &raw[..=idx])),
                Some(Source::Cloud),
            );
        }
    }
    (Cow::Borrowed(raw), None)
}

/// `model.Name` after `ParseName` (defaults merged).
#[derive(Debug)]
struct Name {
    host: String,
    namespace: String,
    model: String,
    tag: String,
}

const DEFAULT_HOST: &str = "registry.ollama.ai";
const DEFAULT_NAMESPACE: &str = "library";
const DEFAULT_TAG: &str = "latest";
/// `model.MissingPart`: a part promised by its separator but empty; never valid.
const MISSING: &str = "!MISSING!";

impl Name {
    /// `ParseNameBare` merged with `DefaultName`, or `None` where `IsValid` is false.
    fn parse(s: &str) -> Option<Name> {
        let or_missing = |p: &str| {
            if p.is_empty() {
                MISSING.to_string()
            } else {
                p.to_string()
            }
        };
        // Go's strings.LastIndex: -1 when absent.
        let last = |c: char| s.rfind(c).map_or(-1, |i| i as isize);
        let (mut rest, mut tag) = (s.to_string(), String::new());
        if last(':') > last('/')
            && let Some((before, after)) = s.rsplit_once(':')
        {
            rest = or_missing(before);
            tag = or_missing(after);
        }
        let (mut host, mut namespace) = (String::new(), String::new());
        let model;
        match rest.rsplit_once('/') {
            None => model = rest.clone(),
            Some((before, after)) => {
                model = or_missing(after);
                let before = or_missing(before);
                match before.rsplit_once('/') {
                    None => namespace = before,
                    Some((b, a)) => {
                        namespace = or_missing(a);
                        let b = or_missing(b);
                        host = match b.split_once("://") {
                            Some((_scheme, h)) => h.to_string(),
                            None => b,
                        };
                    }
                }
            }
        }
        let or_default = |p: String, d: &str| if p.is_empty() { d.to_string() } else { p };
        let name = Name {
            host: or_default(host, DEFAULT_HOST),
            namespace: or_default(namespace, DEFAULT_NAMESPACE),
            model,
            tag: or_default(tag, DEFAULT_TAG),
        };
        let valid = valid_part(Part::Host, &name.host)
            && valid_part(Part::Namespace, &name.namespace)
            && valid_part(Part::Model, &name.model)
            && valid_part(Part::Tag, &name.tag);
        valid.then_some(name)
    }

    /// `Name.DisplayShortest`: default host and namespace left out, the tag always shown.
    fn display_shortest(&self) -> String {
        let mut out = String::new();
        if !self.host.eq_ignore_ascii_case(DEFAULT_HOST) {
            out.push_str(&self.host);
            out.push('/');
            out.push_str(&self.namespace);
            out.push('/');
        } else if !self.namespace.eq_ignore_ascii_case(DEFAULT_NAMESPACE) {
            out.push_str(&self.namespace);
            out.push('/');
        }
        out.push_str(&self.model);
        out.push(':');
        out.push_str(&self.tag);
        out
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Host,
    Namespace,
    Model,
    Tag,
}

/// `isValidPart`: a letter, digit or '_' first, then also '-' and '.' (not in namespaces) and
/// ':' (hosts only); 1-80 bytes (hosts 1-350).
fn valid_part(kind: Part, s: &str) -> bool {
    let max = if kind == Part::Host { 350 } else { 80 };
    if s.is_empty() || s.len() > max {
        return false;
    }
    let first_ok = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    s.bytes().enumerate().all(|(i, b)| match b {
        _ if i == 0 => first_ok(b),
        b'_' | b'-' => true,
        b'.' => kind != Part::Namespace,
        b':' => kind == Part::Host,
        _ => first_ok(b),
    })
}

/// Ollama reads `model`, and on some routes the deprecated `name` when `model` is empty.
/// Anything else it would read differently from Sluice is refused: a model that is not a
/// string, or `model` and `name` naming two different models (which one runs depends on the
/// Ollama version and on every proxy on the way).
pub fn check(route: &Route, body: &Value) -> Result<(), String> {
    let fields: &[&str] = match route.model {
        M::Body(f) => &[f][..],
        M::BodyOr(a, b) => &[a, b][..],
        M::None | M::Segment(_) => &[],
    };
    let mut named = Vec::new();
    for f in fields {
        match field(Server::Ollama, body, f) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => named.push((*f, s.as_str())),
            Some(other) => {
                return Err(format!(
                    "the {f:?} field must be a string, not {}",
                    kind(other)
                ));
            }
        }
    }
    if let [(fa, a), (fb, b)] = named[..]
        && !a.is_empty()
        && !b.is_empty()
        && canonical_model(a) != canonical_model(b)
    {
        return Err(format!(
            "the {fa:?} field ({a:?}) and the {fb:?} field ({b:?}) name different models"
        ));
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn model_names_are_canonical_as_ollama_resolves_them() {
        let c = |s: &str| canonical_model(s);
        assert_eq!(c("llama3").as_deref(), Some("llama3:latest"));
        assert_eq!(c(" llama3:latest\t").as_deref(), Some("llama3:latest"));
        assert_eq!(c("library/llama3").as_deref(), Some("llama3:latest"));
        assert_eq!(
            c("registry.ollama.ai/library/llama3:8b").as_deref(),
            Some("llama3:8b")
        );
        assert_eq!(
            c("https://REGISTRY.ollama.ai/Library/llama3").as_deref(),
            Some("llama3:latest")
        );
        assert_eq!(c("me/llama3").as_deref(), Some("me/llama3:latest"));
        assert_eq!(
            c("example.com:5000/me/m:v1").as_deref(),
            Some("example.com:5000/me/m:v1")
        );
        assert_eq!(c("llama3:8b:local").as_deref(), Some("llama3:8b"));
        // Every spelling of a cloud model ends in ":cloud".
        assert_eq!(c("x:cloud ").as_deref(), Some("x:latest:cloud"));
        assert_eq!(c("x: cloud").as_deref(), Some("x:latest:cloud"));
        assert_eq!(c("x:CLOUD").as_deref(), Some("x:latest:cloud"));
        assert_eq!(
            c("gpt-oss:120b-cloud").as_deref(),
            Some("gpt-oss:120b:cloud")
        );
        assert_eq!(
            c("gpt-oss: 120b-CLOUD ").as_deref(),
            Some("gpt-oss:120b:cloud")
        );
        assert_eq!(c("gpt-oss:20b:cloud").as_deref(), Some("gpt-oss:20b:cloud"));
        // What Ollama refuses stays as written (trimmed); blank is no model.
        assert_eq!(c("x:cloud:local").as_deref(), Some("x:cloud:local"));
        assert_eq!(c("bad name").as_deref(), Some("bad name"));
        assert_eq!(c("a//b").as_deref(), Some("a//b"));
        assert_eq!(c("  "), None);
    }

    #[test]
    fn go_durations_read_as_go_reads_them() {
        let d = go_duration_nanos;
        assert_eq!(d("0"), Some(0));
        assert_eq!(d("-0"), Some(0));
        assert_eq!(d("0s"), Some(0));
        assert_eq!(d("1.5s"), Some(1_500_000_000));
        assert_eq!(d("1h2m"), Some(3_720_000_000_000));
        assert_eq!(d("300ms"), Some(300_000_000));
        assert_eq!(d("2\u{b5}s"), Some(2_000));
        assert_eq!(d("-5m"), Some(-300_000_000_000));
        assert_eq!(d(".5s"), Some(500_000_000));
        assert_eq!(d("0.1ns"), Some(0));
        assert_eq!(d("5"), None);
        assert_eq!(d(""), None);
        assert_eq!(d("s"), None);
        assert_eq!(d("1x"), None);
        assert_eq!(d("9999999999h"), None);
    }

    #[test]
    fn keep_alive_that_expires_at_once_is_an_unload() {
        for v in [
            json!(0),
            json!(0.0),
            json!("0"),
            json!("0s"),
            json!("-0.1ns"),
            json!(0.5),
            json!("500ms"),
            json!("junk"),
            json!(true),
            // int(t) * 1e9 wraps to zero or below in Go: unloads too.
            json!(1e19),
            json!(1e300),
            json!(9_223_372_036_854_775_808u64),
            json!(1e10),
            json!(9_223_372_037i64),
        ] {
            assert!(expires_at_once(&v), "{v}");
        }
        // Parsed from text as the request is: rounded correctly (as Go's ParseFloat does),
        // this is just under one second, an unload.
        for text in [
            "0.99999999999999994",
            "0.9999999999999999444888487687421729788184165954589843749",
        ] {
            let v: Value = serde_json::from_str(text).expect("number");
            assert!(expires_at_once(&v), "{v}");
        }
        for v in [
            json!(null),
            json!(-1),
            json!("-1s"),
            json!(1),
            json!(300),
            json!("5m"),
            json!("1s"),
            json!(1.9),
            // The largest number of seconds whose nanoseconds still fit.
            json!(9_223_372_036i64),
            json!(-1e300),
        ] {
            assert!(!expires_at_once(&v), "{v}");
        }
    }

    #[test]
    fn model_and_name_must_agree_and_be_strings() {
        let show = ROUTES
            .iter()
            .find(|r| r.id == "ollama.show")
            .expect("show route");
        assert!(check(show, &json!({"name": "x:cloud"})).is_ok());
        assert!(check(show, &json!({"model": "llama3", "name": "llama3:latest"})).is_ok());
        assert!(check(show, &json!({"model": "llama3", "name": ""})).is_ok());
        assert!(check(show, &json!({"model": "llama3", "name": "x:cloud"})).is_err());
        assert!(check(show, &json!({"Model": "llama3", "NAME": "x:cloud"})).is_err());
        assert!(check(show, &json!({"model": 5})).is_err());
        assert!(check(show, &json!({"model": null, "name": "x"})).is_ok());
    }
}
