//! Reading a request the way its server will: the path decoded once, the body parsed as the
//! server parses it. What the two could read differently is refused, never guessed
//! (docs/policy.md, "Reading requests as the server does").
use std::{
    borrow::Cow,
    cell::{Cell, RefCell},
    fmt,
};

use http::{HeaderMap, StatusCode, header};
use percent_encoding::percent_decode_str;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::{
    adapter::{self, BodyKind, Server, keys::KeyMatch},
    respond::Refusal,
};

mod skim;
pub use skim::Roots;

/// Decodes the request path's percent-escapes exactly once and returns the path that
/// classification and policy use (the request itself is forwarded with its original bytes).
///
/// Refused, because servers and the proxies in front of them disagree about such spellings:
/// escapes that do not decode to UTF-8; an encoded `/` or `\`; a `%` left after decoding
/// (double encoding, or a `%` that starts no escape); `.` and `..` segments and empty
/// segments (`//`, a trailing `/`) before or after decoding; control characters.
pub fn path(raw: &str) -> Result<String, Refusal> {
    let bad = |why: &str| {
        Refusal::client(
            StatusCode::BAD_REQUEST,
            "sluice_bad_path",
            format!("request path {raw:?} {why}"),
        )
    };
    // Most paths hold no escape: nothing to fold to lower case or decode, no copy made.
    let decoded = if raw.contains('%') {
        let lower = raw.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") {
            return Err(bad("encodes a '/' or '\\' (%2F, %5C)"));
        }
        let decoded = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| bad("does not decode to UTF-8"))?;
        if decoded.contains('%') {
            return Err(bad(
                "still holds a '%' after decoding once (double encoding or a stray '%')",
            ));
        }
        decoded
    } else {
        std::borrow::Cow::Borrowed(raw)
    };
    if decoded.contains('\\') {
        return Err(bad("holds a '\\'"));
    }
    if decoded.chars().any(char::is_control) {
        return Err(bad("holds control characters"));
    }
    let Some(rest) = decoded.strip_prefix('/') else {
        return Err(bad("does not start with '/'"));
    };
    if !rest.is_empty()
        && rest
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(bad("has empty, '.' or '..' segments"));
    }
    Ok(decoded.into_owned())
}

/// The request target as `server` reads it: [`path`], plus what depends on the server and
/// route ([`raw_path_escapes`], [`query`]). Returns the decoded path.
pub fn request_target(server: Server, method: &str, uri: &http::Uri) -> Result<String, Refusal> {
    // CONNECT names an authority, not a path: policy sees it as written (`host:port`).
    if method == "CONNECT" {
        return match uri.authority() {
            Some(a) if uri.scheme().is_none() && uri.path_and_query().is_none() => {
                Ok(a.as_str().to_string())
            }
            _ => Err(Refusal::client(
                StatusCode::BAD_REQUEST,
                "sluice_bad_path",
                "a CONNECT request must name host:port and nothing else",
            )),
        };
    }
    let decoded = path(uri.path())?;
    raw_path_escapes(server, uri.path())?;
    query(server, method, &decoded, uri.query())?;
    Ok(decoded)
}

/// A sample request read the way the pipeline reads a live one (path and query, then the
/// body as `server` parses it), for the offline tools (`sluice policy test` and `explain`):
/// a case must see what a live request would, folded keys and refusals included. The body is
/// JSON text; `Err` is the refusal a live request would get before policy. `roots` are the
/// loaded packs' (`Policy::body_roots`), so a case reads the body as live traffic does.
pub fn sample(
    server: Server,
    method: &str,
    target: &str,
    body: Option<&[u8]>,
    roots: &Roots,
) -> Result<(String, Option<Value>), Refusal> {
    let uri: http::Uri = target.parse().map_err(|e| {
        Refusal::client(
            StatusCode::BAD_REQUEST,
            "sluice_bad_path",
            format!("request target {target:?} is not a valid origin-form target: {e}"),
        )
    })?;
    let path = request_target(server, method, &uri)?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let json = match body {
        Some(bytes) => body_metered(server, method, &path, &headers, bytes, roots, &|_| Ok(()))?,
        None => None,
    };
    Ok((path, json))
}

/// Refuses any percent-escape in the path of a server that routes on the raw path
/// (`adapter::decodes_path`): decoding it for policy would judge another path than the one
/// the server serves.
pub fn raw_path_escapes(server: Server, raw: &str) -> Result<(), Refusal> {
    if adapter::decodes_path(server) || !raw.contains('%') {
        return Ok(());
    }
    Err(Refusal::client(
        StatusCode::BAD_REQUEST,
        "sluice_bad_path",
        format!("request path {raw:?} has percent-escapes, which {server} does not decode"),
    ))
}

/// Refuses a query string that names a form field on a route whose model is read from a
/// multipart form: Go's `FormValue` (Ollama's transcription) falls back to the query, so
/// `?model=x:cloud` would pick a model that the body does not show.
pub fn query(server: Server, method: &str, path: &str, query: Option<&str>) -> Result<(), Refusal> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(());
    };
    let form_route = adapter::route(server, method, path)
        .is_some_and(|r| r.body == BodyKind::Raw && r.model_in_body());
    if !form_route {
        return Ok(());
    }
    let names_model = query.split('&').any(|pair| {
        let key = pair.split('=').next().unwrap_or("").replace('+', " ");
        percent_decode_str(&key).decode_utf8_lossy() == "model"
    });
    if names_model {
        return Err(Refusal::client(
            StatusCode::BAD_REQUEST,
            "sluice_ambiguous_request",
            "the model of a form upload must be in its body, not its query string",
        ));
    }
    Ok(())
}

/// Parses the body as `server` will read it: JSON on JSON routes whatever the
/// `Content-Type`, nothing on routes whose body is not JSON (multipart uploads, blobs).
/// Keys that collide under the server's key matching are refused at every level, and the
/// object keys of a case-folding (Go) server come back in their folded, lower-case form,
/// so policy `body` pointers match however the client spelled them.
pub fn body(
    server: Server,
    method: &str,
    path: &str,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<Option<Value>, Refusal> {
    body_metered(server, method, path, headers, bytes, &Roots::All, &|_| {
        Ok(())
    })
}

/// `body`, with the memory its parsed JSON takes charged as it grows: `grow` gets the
/// estimated size of the tree so far every `METER_STEP` values and may stop the parse with
/// its refusal (a body of tiny values, `[0,0,0,…]`, is some 20 times larger parsed than
/// raw, and the body budget must hold what is really in memory). Top-level fields outside
/// `roots` are checked whole but not built (`skim.rs`).
pub fn body_metered(
    server: Server,
    method: &str,
    path: &str,
    headers: &HeaderMap,
    bytes: &[u8],
    roots: &Roots,
    grow: &dyn Fn(usize) -> Result<(), Refusal>,
) -> Result<Option<Value>, Refusal> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let route = adapter::route(server, method, path);
    let json = match route.map(|r| (r.body, r.model_in_body())) {
        // Multipart uploads that name their model in a form field (audio transcription on
        // Ollama runs `x:cloud` in the cloud just as a JSON chat does).
        Some((BodyKind::Raw, true)) => return form(headers, bytes),
        Some((BodyKind::Raw, false)) => return Ok(None),
        Some((BodyKind::Json, _)) => json_part(server, headers, bytes)?,
        // A route no adapter knows is `unknown` to policy; only a body that says it is not
        // JSON is left unparsed there.
        None if declares_non_json(headers) => return Ok(None),
        None => bytes,
    };
    let keys = adapter::key_match(server);
    let value = parse_json_pruned(json, keys, roots, grow).map_err(|e| match e {
        JsonError::Stopped(refusal) => refusal,
        JsonError::Syntax(e) => Refusal::client(
            StatusCode::BAD_REQUEST,
            "sluice_bad_json",
            format!("request body is not valid JSON: {e}"),
        ),
        JsonError::Collision { first, second } => Refusal::client(
            StatusCode::BAD_REQUEST,
            "sluice_ambiguous_json",
            if first == second {
                format!("request body gives the key {first:?} more than once")
            } else {
                format!(
                    "request body gives the keys {first:?} and {second:?}, which {server} reads as the same field"
                )
            },
        ),
    })?;
    if let Some(route) = route {
        adapter::check_body(server, route, &value).map_err(|why| {
            Refusal::client(
                StatusCode::BAD_REQUEST,
                "sluice_ambiguous_request",
                format!("request body is ambiguous: {why}"),
            )
        })?;
    }
    Ok(Some(value))
}

/// The text fields of a form body as a JSON object (file parts left out), so the adapter
/// finds the model where the server does (Go's `FormValue("model")`, Starlette's
/// `request.form()`): `multipart/form-data` or `application/x-www-form-urlencoded`. A field
/// given twice is refused (Go takes the first, Python frameworks the last), as is a body the
/// parser rejects. Other bodies are not forms to the server either: `None`.
fn form(headers: &HeaderMap, bytes: &[u8]) -> Result<Option<Value>, Refusal> {
    use futures_util::FutureExt as _;

    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ctype.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return urlencoded(bytes).map(Some);
    }
    let Some(boundary) = Some(ctype)
        .filter(|ct| media.eq_ignore_ascii_case("multipart/form-data") && !ct.is_empty())
        .and_then(|ct| multer::parse_boundary(ct).ok())
    else {
        return Ok(None);
    };
    let bad = |why: String| {
        Refusal::client(
            StatusCode::BAD_REQUEST,
            "sluice_bad_form",
            format!("multipart request body: {why}"),
        )
    };
    let data = bytes::Bytes::copy_from_slice(bytes);
    let stream = futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(data) });
    let mut parts = multer::Multipart::new(stream, boundary);
    let fields = async move {
        let mut out = serde_json::Map::new();
        let mut n = 0;
        while let Some(field) = parts.next_field().await? {
            n += 1;
            if n > MAX_FORM_FIELDS {
                return Ok(Err(format!("more than {MAX_FORM_FIELDS} parts")));
            }
            // Go decodes quoted-printable parts and RFC 2231 `name*=` parameters; Sluice would
            // read those differently, so it refuses them rather than miss a field.
            let encoding = field
                .headers()
                .get("content-transfer-encoding")
                .map(|v| v.as_bytes().trim_ascii().to_ascii_lowercase());
            if encoding.is_some_and(|e| !matches!(&e[..], b"7bit" | b"8bit" | b"binary")) {
                return Ok(Err(
                    "parts with a Content-Transfer-Encoding are not read".into()
                ));
            }
            let Some(name) = field.name().map(str::to_string) else {
                return Ok(Err("a part has no name Sluice can read".into()));
            };
            let is_file = field.file_name().is_some_and(|f| !f.is_empty());
            let value = field.bytes().await?;
            if is_file {
                continue;
            }
            let Ok(text) = String::from_utf8(value.to_vec()) else {
                return Ok(Err(format!("form field {name:?} is not UTF-8")));
            };
            if out.contains_key(&name) {
                return Ok(Err(format!("form field {name:?} is given more than once")));
            }
            out.insert(name, Value::String(text));
        }
        Ok::<_, multer::Error>(Ok(Value::Object(out)))
    };
    // The whole body is already in memory, so the parse never waits: no executor needed.
    match fields.now_or_never() {
        Some(Ok(Ok(v))) => Ok(Some(v)),
        Some(Ok(Err(why))) => Err(bad(why)),
        Some(Err(e)) => Err(bad(e.to_string())),
        None => Err(bad("incomplete".into())),
    }
}

/// Fields (or parts) of a form body Sluice reads, so a body of empty fields cannot grow a
/// map of millions of entries. Go's `multipartmaxparts` and Starlette's multipart
/// `max_fields` default to the same; for urlencoded bodies the servers may accept more, and
/// Sluice refuses more than this.
const MAX_FORM_FIELDS: usize = 1000;

/// An `application/x-www-form-urlencoded` body's fields. Only spellings every server reads
/// alike are accepted: Go refuses `;` separators and drops pairs with a bad escape where
/// Python keeps them, so both are refused here, as are repeated fields and fields that do
/// not decode to UTF-8. `+` is a space and `%XX` one byte, in names and values alike.
fn urlencoded(bytes: &[u8]) -> Result<Value, Refusal> {
    let bad = |why: String| {
        Refusal::client(
            StatusCode::BAD_REQUEST,
            "sluice_bad_form",
            format!("urlencoded request body: {why}"),
        )
    };
    // Raw non-ASCII bytes: Starlette reads them as Latin-1, Go and Sluice as UTF-8.
    // Percent-escaped UTF-8 is read alike by all three.
    if !bytes.is_ascii() {
        return Err(bad(
            "raw non-ASCII bytes (percent-escape them) are read differently by different servers"
                .into(),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
    if text.contains(';') {
        return Err(bad(
            "';' separates fields for some servers and not others".into()
        ));
    }
    let decode = |raw: &str| -> Result<String, Refusal> {
        let b = raw.as_bytes();
        let well_formed = b.iter().enumerate().all(|(i, c)| {
            *c != b'%'
                || (b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        });
        if !well_formed {
            return Err(bad(format!("{raw:?} has a malformed percent-escape")));
        }
        percent_decode_str(&raw.replace('+', " "))
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| bad(format!("{raw:?} does not decode to UTF-8")))
    };
    let mut out = serde_json::Map::new();
    for (i, pair) in text.split('&').filter(|p| !p.is_empty()).enumerate() {
        if i == MAX_FORM_FIELDS {
            return Err(bad(format!("more than {MAX_FORM_FIELDS} fields")));
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (name, value) = (decode(name)?, decode(value)?);
        if out.contains_key(&name) {
            return Err(bad(format!("form field {name:?} is given more than once")));
        }
        out.insert(name, Value::String(value));
    }
    Ok(Value::Object(out))
}

/// Whether the `Content-Type` is gRPC (any case, any `+proto`/`-web` variant).
pub fn is_grpc_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes().trim_ascii_start())
        .is_some_and(|v| v.len() >= 16 && v[..16].eq_ignore_ascii_case(b"application/grpc"))
}

fn declares_non_json(headers: &HeaderMap) -> bool {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim_start()
        .to_ascii_lowercase();
    ctype.starts_with("multipart/") || ctype.starts_with("application/octet-stream")
}

/// Triton's binary tensor extension: a JSON header of `Inference-Header-Content-Length`
/// bytes, then raw tensor data. Triton reads only that prefix as JSON.
fn json_part<'b>(
    server: Server,
    headers: &HeaderMap,
    bytes: &'b [u8],
) -> Result<&'b [u8], Refusal> {
    if server != Server::Triton {
        return Ok(bytes);
    }
    let Some(v) = headers.get("inference-header-content-length") else {
        return Ok(bytes);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .and_then(|n| bytes.get(..n))
        .ok_or_else(|| {
            Refusal::client(
                StatusCode::BAD_REQUEST,
                "sluice_bad_body",
                "Inference-Header-Content-Length is not a length within the body",
            )
        })
}

#[derive(Debug)]
pub enum JsonError {
    Syntax(serde_json::Error),
    /// The meter stopped the parse (`body_metered`).
    Stopped(Refusal),
    /// Two keys of one object that the server reads as the same field.
    Collision {
        first: String,
        second: String,
    },
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::Syntax(e) => e.fmt(f),
            JsonError::Stopped(r) => f.write_str(&r.message),
            JsonError::Collision { first, second } => {
                write!(f, "keys {first:?} and {second:?} collide")
            }
        }
    }
}

/// Parses JSON in one pass, refusing keys that collide under `keys` in any object. Object keys
/// come back in `keys`' canonical form. serde_json's own limits apply (nesting depth 128,
/// strict UTF-8, no trailing data). Hand-written as a serde visitor because serde_json keeps
/// only the last of duplicate keys and says nothing.
pub fn parse_json(bytes: &[u8], keys: KeyMatch) -> Result<Value, JsonError> {
    parse_json_metered(bytes, keys, &|_| Ok(()))
}

/// Values parsed between two calls of the meter.
pub const METER_STEP: usize = 4096;

/// What one unit of the parsed tree is taken to cost in memory: a `Value` (32 bytes) and its
/// share of vector growth; an object entry counts three (`Seed::count`). Strings' own bytes
/// are within the raw body's.
pub const VALUE_COST: usize = 48;

/// `parse_json`, calling `grow` with the tree's estimated size every `METER_STEP` values.
pub fn parse_json_metered(
    bytes: &[u8],
    keys: KeyMatch,
    grow: &dyn Fn(usize) -> Result<(), Refusal>,
) -> Result<Value, JsonError> {
    parse_json_pruned(bytes, keys, &Roots::All, grow)
}

/// `parse_json_metered`, building only the top-level fields in `roots` in full: the others
/// are checked as thoroughly and stand as what the adapters read of them (`skim.rs`).
pub fn parse_json_pruned(
    bytes: &[u8],
    keys: KeyMatch,
    roots: &Roots,
    grow: &dyn Fn(usize) -> Result<(), Refusal>,
) -> Result<Value, JsonError> {
    let stop = RefCell::new(None);
    let meter = Meter {
        values: Cell::new(0),
        grow,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Seed {
        keys,
        stop: &stop,
        meter: &meter,
        roots: Some(roots),
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    match (parsed, stop.into_inner()) {
        (_, Some(Stop::Collision(first, second))) => Err(JsonError::Collision { first, second }),
        (_, Some(Stop::Meter(r))) => Err(JsonError::Stopped(r)),
        (Ok(v), None) => Ok(v),
        (Err(e), None) => Err(JsonError::Syntax(e)),
    }
}

/// Why the visitor stopped a parse that serde_json itself would have finished.
enum Stop {
    Collision(String, String),
    Meter(Refusal),
}

struct Meter<'a> {
    values: Cell<usize>,
    grow: &'a dyn Fn(usize) -> Result<(), Refusal>,
}

#[derive(Clone, Copy)]
struct Seed<'a> {
    keys: KeyMatch,
    stop: &'a RefCell<Option<Stop>>,
    meter: &'a Meter<'a>,
    /// At the root only: which of an object's fields are built in full.
    roots: Option<&'a Roots>,
}

impl Seed<'_> {
    /// Counts `units` more of the tree (a value is one; an object entry, with its key, three:
    /// the key's `String` and the map's node cost more than the value itself). Counted before
    /// they are built: a step's worth at most is ever uncharged.
    fn count<E: de::Error>(self, units: usize) -> Result<(), E> {
        let before = self.meter.values.get();
        let n = before + units;
        self.meter.values.set(n);
        if n / METER_STEP != before / METER_STEP
            && let Err(r) = (self.meter.grow)(n * VALUE_COST)
        {
            *self.stop.borrow_mut() = Some(Stop::Meter(r));
            return Err(E::custom("over the parse budget"));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.count(1)?;
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let within = Seed {
            roots: None,
            ..self
        };
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(within)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        // (canonical, as written) for the keys the client wrote in another form, to name
        // both keys in a refusal. Looked at only when a collision is found; a key already in
        // canonical form (every key of a well-behaved client) costs nothing here.
        let mut spelled: Vec<(String, String)> = Vec::new();
        let within = Seed {
            roots: None,
            ..self
        };
        let scratch: skim::Scratch<'de> = RefCell::new(Vec::new());
        while let Some(key) = map.next_key::<String>()? {
            self.count(2)?;
            let folded = match self.keys.canonical(&key) {
                Cow::Owned(c) => Some(c),
                Cow::Borrowed(_) => None,
            };
            let (canonical, written) = match folded {
                Some(c) => (c, Some(key)),
                None => (key, None),
            };
            if out.contains_key(&canonical) {
                let first = spelled
                    .iter()
                    .find(|(c, _)| *c == canonical)
                    .map_or_else(|| canonical.clone(), |(_, w)| w.clone());
                *self.stop.borrow_mut() =
                    Some(Stop::Collision(first, written.unwrap_or(canonical)));
                return Err(de::Error::custom("colliding keys"));
            }
            let value = match self.roots {
                Some(roots) if !roots.builds(&canonical) => map.next_value_seed(skim::Skim {
                    seed: within,
                    scratch: &scratch,
                    top: true,
                })?,
                _ => map.next_value_seed(within)?,
            };
            if let Some(w) = written {
                spelled.push((canonical.clone(), w));
            }
            out.insert(canonical, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use serde_json::json;

    use super::*;

    fn collision(bytes: &[u8], keys: KeyMatch) -> Option<(String, String)> {
        match parse_json(bytes, keys) {
            Err(JsonError::Collision { first, second }) => Some((first, second)),
            _ => None,
        }
    }

    #[test]
    fn parses_objects_and_other_values_and_rejects_trailing_data() {
        let v = parse_json(br#" {"model":"a","n":[1,2.5,null,true]} "#, KeyMatch::Exact)
            .expect("valid");
        assert_eq!(v, json!({"model": "a", "n": [1, 2.5, null, true]}));
        assert_eq!(parse_json(b"[1,2]", KeyMatch::Exact).expect("array")[1], 2);
        for bad in [
            &br#"{"model":"a"} x"#[..],
            br#"{"model":"a""#,
            b"",
            b"\xef\xbb\xbf{}",
            br#"{"a":"\ud800"}"#,
            b"{\"a\":\"\xff\"}",
            b"NaN",
        ] {
            assert!(
                matches!(parse_json(bad, KeyMatch::Exact), Err(JsonError::Syntax(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(parse_json(deep.as_bytes(), KeyMatch::Exact).is_err());
    }

    #[test]
    fn exact_duplicates_are_refused_at_every_level() {
        let exact = KeyMatch::Exact;
        assert_eq!(
            collision(br#"{"model":"a","x":1,"model":"b"}"#, exact),
            Some(("model".into(), "model".into()))
        );
        assert!(collision(br#"{"model":"a","m":{"k":1,"k":2}}"#, exact).is_some());
        assert!(collision(br#"[{"a":1,"a":2}]"#, exact).is_some());
        assert!(collision(br#"{"m":[{"role":"user","role":"system"}]}"#, exact).is_some());
        // Different case is a different key for exact-matching servers.
        assert_eq!(collision(br#"{"model":"a","Model":"b"}"#, exact), None);
        assert_eq!(collision(br#"{"model":"a"}"#, exact), None);
    }

    #[test]
    fn go_servers_refuse_case_insensitive_collisions_and_see_folded_keys() {
        let go = KeyMatch::GoFold;
        assert_eq!(
            collision(br#"{"model":"llama3","Model":"x:cloud"}"#, go),
            Some(("model".into(), "Model".into()))
        );
        assert!(collision(br#"{"a":{"keep_alive":1,"KEEP_ALIVE":0}}"#, go).is_some());
        assert!(collision("{\"stream\":true,\"\u{17F}tream\":false}".as_bytes(), go).is_some());
        assert!(collision("{\"keep_alive\":5,\"\u{212A}eep_alive\":0}".as_bytes(), go).is_some());
        let v = parse_json(br#"{"Model":"x","Options":{"Num_Ctx":1}}"#, go).expect("valid");
        assert_eq!(v, json!({"model": "x", "options": {"num_ctx": 1}}));
    }

    #[test]
    fn paths_are_decoded_once_and_odd_spellings_refused() {
        let ok = |p: &str| path(p).expect(p);
        assert_eq!(ok("/"), "/");
        assert_eq!(ok("/api/chat"), "/api/chat");
        assert_eq!(ok("/v1/models/x%3Acloud"), "/v1/models/x:cloud");
        assert_eq!(ok("/v1/models/x%3acloud"), "/v1/models/x:cloud");
        assert_eq!(ok("/api/%63hat"), "/api/chat");
        assert_eq!(ok("/v1/models/llama3%2e2"), "/v1/models/llama3.2");
        assert_eq!(ok("/v1/models/caf%C3%A9"), "/v1/models/café");
        for bad in [
            "/api%2Fchat",
            "/api%2fchat",
            "/api%5Cchat",
            "/v1/models/x%252Fcloud",
            "/v1/models/x%253Acloud",
            "/v1/models/%",
            "/v1/models/%zz",
            "/v1/models/%ff",
            "/v1/models/%C3",
            "/api//chat",
            "/api/chat/",
            "/api/./chat",
            "/api/../api/chat",
            "/api/%2e%2e/chat",
            "/api/%2E/chat",
            "/api/chat%0a",
            "/api/chat%00",
            "/api/chat%7f",
            "/api/chat%C2%85",
            "*",
            "",
        ] {
            let r = path(bad).expect_err(bad);
            assert_eq!(
                (r.status, r.code),
                (StatusCode::BAD_REQUEST, "sluice_bad_path"),
                "{bad}"
            );
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn json_routes_are_parsed_whatever_the_content_type() {
        let h = headers(&[("content-type", "application/octet-stream")]);
        let v = body(
            Server::Ollama,
            "POST",
            "/api/chat",
            &h,
            br#"{"model":"x:cloud","messages":[]}"#,
        )
        .expect("parsed");
        assert_eq!(v.expect("json")["model"], "x:cloud");
        let r =
            body(Server::Ollama, "POST", "/api/chat", &h, b"\x00\x01binary").expect_err("not json");
        assert_eq!(r.code, "sluice_bad_json");
        let mp = headers(&[("content-type", "multipart/form-data; boundary=x")]);
        let r = body(
            Server::Openai,
            "POST",
            "/v1/chat/completions",
            &mp,
            b"--x\r\n",
        )
        .expect_err("json route");
        assert_eq!(r.code, "sluice_bad_json");
    }

    #[test]
    fn non_json_routes_and_unknown_non_json_bodies_are_left_alone() {
        let none = HeaderMap::new();
        for (server, path) in [
            (Server::Ollama, "/api/blobs/sha256:abc"),
            (Server::Openai, "/v1/audio/transcriptions"),
            (Server::Vllm, "/v1/audio/translations"),
            (Server::Openai, "/v1/files"),
            (Server::Anthropic, "/v1/files"),
            (Server::Openai, "/v1/images/edits"),
        ] {
            assert_eq!(
                body(server, "POST", path, &none, b"GGUF\x00").expect(path),
                None
            );
        }
        let oct = headers(&[("content-type", "Application/Octet-Stream")]);
        assert_eq!(
            body(Server::Ollama, "POST", "/api/new-thing", &oct, b"\x00").expect("raw"),
            None
        );
        assert!(body(Server::Ollama, "POST", "/api/new-thing", &none, b"\x00").is_err());
        assert_eq!(
            body(Server::Ollama, "POST", "/api/chat", &none, b"").expect("empty"),
            None
        );
    }

    #[test]
    fn ollama_bodies_are_refused_when_fields_collide_or_disagree() {
        let h = HeaderMap::new();
        let r = body(
            Server::Ollama,
            "POST",
            "/api/chat",
            &h,
            br#"{"model":"llama3","Model":"x:cloud"}"#,
        )
        .expect_err("collision");
        assert_eq!(
            (r.status, r.code),
            (StatusCode::BAD_REQUEST, "sluice_ambiguous_json")
        );
        // The same body is fine for an exact-matching server.
        assert!(
            body(
                Server::Vllm,
                "POST",
                "/v1/chat/completions",
                &h,
                br#"{"model":"llama3","Model":"x"}"#
            )
            .is_ok()
        );
        let r = body(
            Server::Ollama,
            "POST",
            "/api/show",
            &h,
            br#"{"model":"llama3","name":"x:cloud"}"#,
        )
        .expect_err("disagree");
        assert_eq!(r.code, "sluice_ambiguous_request");
        let r = body(
            Server::Ollama,
            "POST",
            "/api/chat",
            &h,
            br#"{"model":["x:cloud"]}"#,
        )
        .expect_err("type");
        assert_eq!(r.code, "sluice_ambiguous_request");
        let v = body(Server::Ollama, "POST", "/api/chat", &h, br#"{"MODEL":"x"}"#).expect("ok");
        assert_eq!(v, Some(json!({"model": "x"})));
    }

    #[test]
    fn multipart_uploads_show_their_model_form_field() {
        let h = headers(&[("content-type", "multipart/form-data; boundary=XyZ")]);
        let part = |name: &str, extra: &str, value: &str| {
            format!(
                "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"{extra}\r\n\r\n{value}\r\n"
            )
        };
        let body_of = |parts: &[String]| format!("{}--XyZ--\r\n", parts.concat());
        let ok = body_of(&[
            part("model", "", "x:cloud "),
            part("file", "; filename=\"a.wav\"", "RIFF\u{1}"),
        ]);
        let v = body(
            Server::Ollama,
            "POST",
            "/v1/audio/transcriptions",
            &h,
            ok.as_bytes(),
        )
        .expect("parsed");
        assert_eq!(v, Some(json!({"model": "x:cloud "})));
        let op = adapter::classify(
            Server::Ollama,
            "POST",
            "/v1/audio/transcriptions",
            v.as_ref(),
        );
        assert_eq!(op.model.as_deref(), Some("x:latest:cloud"));
        let twice = body_of(&[part("model", "", "a"), part("model", "", "x:cloud")]);
        let r = body(
            Server::Ollama,
            "POST",
            "/v1/audio/transcriptions",
            &h,
            twice.as_bytes(),
        )
        .expect_err("twice");
        assert_eq!(r.code, "sluice_bad_form");
        for odd in [
            "--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nx=3Acloud\r\n--XyZ--\r\n",
            "--XyZ\r\nContent-Disposition: form-data; name*=UTF-8''model\r\n\r\nx:cloud\r\n--XyZ--\r\n",
        ] {
            let r = body(
                Server::Ollama,
                "POST",
                "/v1/audio/transcriptions",
                &h,
                odd.as_bytes(),
            )
            .expect_err(odd);
            assert_eq!(r.code, "sluice_bad_form", "{odd}");
        }
        let r = body(
            Server::Openai,
            "POST",
            "/v1/audio/transcriptions",
            &h,
            b"--XyZ\r\nnonsense",
        )
        .expect_err("broken");
        assert_eq!(r.code, "sluice_bad_form");
        // Not a form: the server cannot read a model from it either.
        assert_eq!(
            body(
                Server::Openai,
                "POST",
                "/v1/audio/transcriptions",
                &HeaderMap::new(),
                b"x"
            )
            .expect("raw"),
            None
        );
    }

    #[test]
    fn request_target_applies_every_path_and_query_rule() {
        let uri = |s: &str| s.parse::<http::Uri>().expect(s);
        let t = |server, m, u: &str| request_target(server, m, &uri(u));
        assert_eq!(
            t(Server::Ollama, "GET", "/v1/models/x%3Acloud?a=1").expect("ok"),
            "/v1/models/x:cloud"
        );
        assert!(t(Server::Ollama, "GET", "/v1/models/x%252F").is_err());
        assert!(t(Server::Triton, "POST", "/v2/models/m%31/infer").is_err());
        assert!(t(Server::Ollama, "POST", "/v1/audio/transcriptions?model=x").is_err());
    }

    #[test]
    fn servers_that_route_on_the_raw_path_get_no_escapes() {
        let p = "/v2/models/re%73net/infer";
        assert!(raw_path_escapes(Server::Triton, p).is_err());
        assert!(raw_path_escapes(Server::Tgi, "/gen%65rate").is_err());
        assert!(raw_path_escapes(Server::Triton, "/v2/models/resnet/infer").is_ok());
        assert!(raw_path_escapes(Server::Ollama, "/v1/models/x%3Acloud").is_ok());
    }

    #[test]
    fn the_meter_sees_the_tree_grow_and_can_stop_the_parse() {
        let many = format!("[{}0]", "0,".repeat(3 * METER_STEP));
        let seen = std::cell::RefCell::new(Vec::new());
        let v = parse_json_metered(many.as_bytes(), KeyMatch::Exact, &|n| {
            seen.borrow_mut().push(n);
            Ok(())
        })
        .expect("parses");
        assert_eq!(v.as_array().map(Vec::len), Some(3 * METER_STEP + 1));
        assert_eq!(
            *seen.borrow(),
            (1..=3)
                .map(|k| k * METER_STEP * VALUE_COST)
                .collect::<Vec<_>>()
        );
        let stopped = parse_json_metered(many.as_bytes(), KeyMatch::Exact, &|_| {
            Err(Refusal::client(
                StatusCode::PAYLOAD_TOO_LARGE,
                "x",
                "too dense",
            ))
        });
        assert!(matches!(stopped, Err(JsonError::Stopped(r)) if r.message == "too dense"));
        // An object entry counts three: a key, its map node and the value.
        let object = format!(
            "{{{}}}",
            (0..METER_STEP)
                .map(|i| format!("\"k{i}\":0"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let calls = std::cell::Cell::new(0);
        parse_json_metered(object.as_bytes(), KeyMatch::Exact, &|_| {
            calls.set(calls.get() + 1);
            Ok(())
        })
        .expect("parses");
        assert_eq!(calls.get(), 3);
        // A small body never calls the meter.
        parse_json_metered(br#"{"model":"m","n":[1,2,3]}"#, KeyMatch::Exact, &|_| {
            panic!("metered a small body")
        })
        .expect("parses");
    }

    #[test]
    fn urlencoded_forms_show_their_fields_and_ambiguous_spellings_are_refused() {
        let t = "/v1/audio/transcriptions";
        let read = |ct: &'static str, b: &str| {
            body(
                Server::Ollama,
                "POST",
                t,
                &headers(&[("content-type", ct)]),
                b.as_bytes(),
            )
        };
        let form = "application/x-www-form-urlencoded";
        assert_eq!(
            read(form, "model=x%3Acloud&language=en")
                .expect("read")
                .map(|v| v["model"].clone()),
            Some(json!("x:cloud"))
        );
        assert_eq!(
            read(
                "Application/X-WWW-Form-Urlencoded; charset=utf-8",
                "%6Dodel=a+b"
            )
            .expect("read")
            .map(|v| v["model"].clone()),
            Some(json!("a b"))
        );
        let many = "a=&".repeat(MAX_FORM_FIELDS + 1);
        for body in [
            "model=a&model=b",
            "model=a;model=b",
            "model=%zz",
            "model=%C3",
            "model=x&%6dodel=y",
            "model=caf\u{e9}",
            many.as_str(),
        ] {
            let e = read(form, body).expect_err(body);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
        }
    }

    #[test]
    fn form_routes_refuse_a_model_in_the_query() {
        let t = "/v1/audio/transcriptions";
        assert!(query(Server::Ollama, "POST", t, Some("model=x:cloud")).is_err());
        assert!(query(Server::Ollama, "POST", t, Some("a=1&%6Dodel=x")).is_err());
        assert!(query(Server::Ollama, "POST", t, Some("language=en")).is_ok());
        assert!(query(Server::Ollama, "POST", t, None).is_ok());
        // JSON routes read the model from the body only.
        assert!(query(Server::Ollama, "POST", "/api/chat", Some("model=x")).is_ok());
    }

    #[test]
    fn triton_binary_tensors_parse_only_the_json_header() {
        let h = headers(&[("inference-header-content-length", "13")]);
        let v = body(
            Server::Triton,
            "POST",
            "/v2/models/m/infer",
            &h,
            b"{\"inputs\":[]}\x00\x01\x02",
        )
        .expect("parsed");
        assert_eq!(v, Some(json!({"inputs": []})));
        let h = headers(&[("inference-header-content-length", "99")]);
        assert!(body(Server::Triton, "POST", "/v2/models/m/infer", &h, b"{}").is_err());
    }

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc_content_type(&headers(&[(
            "content-type",
            "application/grpc"
        )])));
        assert!(is_grpc_content_type(&headers(&[(
            "content-type",
            "Application/GRPC+proto"
        )])));
        assert!(is_grpc_content_type(&headers(&[(
            "content-type",
            "application/grpc-web"
        )])));
        assert!(!is_grpc_content_type(&headers(&[(
            "content-type",
            "application/json"
        )])));
        assert!(!is_grpc_content_type(&HeaderMap::new()));
    }
}
