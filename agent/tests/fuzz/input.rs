//! Input generators: structured hostile inputs rather than random bytes alone. Each grammar
//! (URL paths, JSON bodies, YAML files) starts from valid or nearly valid seeds and is then
//! edited with tokens that parsers of that grammar trip over: escapes, dots and slashes,
//! huge numbers, deep nesting, control and bidi characters, mixed-case keys.
//!
//! Edits carry their positions as plain numbers, taken modulo the text's length, so any edit
//! applies to any text and proptest can shrink a crash down to a few edits of a short seed.
use proptest::{collection::vec, prelude::*, sample::select};
use serde_json::Value;
use sluice::adapter::Server;

/// Texts are capped so that a `Repeat` edit cannot eat the machine.
const MAX_TEXT: usize = 256 * 1024;

pub const SERVERS: &[Server] = &Server::ALL;

/// Methods the route tables use, and ones they must not accept.
pub const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "PRI", "get",
    "Post", "pOST", "POST ", " GET", "G\u{0}ET", "PROPFIND", "",
];

/// Characters that break logs, terminals, case folding and naive escaping.
pub const HOSTILE_CHARS: &[&str] = &[
    "\0",
    "\n",
    "\r",
    "\r\n",
    "\t",
    "\x0b",
    "\x0c",
    "\x1b",
    "\x1b[2J",
    "\x7f",
    "\u{80}",
    "\u{85}",
    "\u{9b}",
    "\u{a0}",
    "\u{200b}",
    "\u{200e}",
    "\u{202a}",
    "\u{202e}",
    "\u{2066}",
    "\u{2069}",
    "\u{2028}",
    "\u{feff}",
    "\u{fffd}",
    "\u{ff0f}",
    "\u{10ffff}",
    "é",
    "İ",
    "ß",
    "\u{212a}",
    "ſ",
    "😀",
];

pub const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "255",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "99999999999999999999999999999999999999999999",
    "1e308",
    "1e309",
    "-1e400",
    "5e-324",
    "1e-99999",
    "0x10",
    "0o7",
    "0b1",
    "1_000",
    ".5",
    "5.",
    "+1",
    "NaN",
    ".nan",
    ".inf",
    "-.inf",
    "Infinity",
];

/// Every route template of the adapters' tables (`*` one segment, `**` the rest), so
/// generated paths land on real routes and their near misses.
pub const ROUTE_TEMPLATES: &[&str] = &[
    "/",
    "/abort_requests",
    "/api/blobs/*",
    "/api/chat",
    "/api/copy",
    "/api/create",
    "/api/delete",
    "/api/embed",
    "/api/embeddings",
    "/api/experimental/**",
    "/api/generate",
    "/api/me",
    "/api/ps",
    "/api/pull",
    "/api/push",
    "/api/show",
    "/api/signout",
    "/api/tags",
    "/api/user/keys/*",
    "/api/version",
    "/apply-template",
    "/chat/completions",
    "/chat_tokenize",
    "/classify",
    "/collective_rpc",
    "/completion",
    "/completions",
    "/cors-proxy",
    "/detokenize",
    "/embedding",
    "/embeddings",
    "/generate",
    "/generate_stream",
    "/health",
    "/inference.GRPCInferenceService/ModelInfer",
    "/inference.GRPCInferenceService/ModelStreamInfer",
    "/inference.GRPCInferenceService/RepositoryModelLoad",
    "/inference.GRPCInferenceService/RepositoryModelUnload",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference/v1/generate",
    "/infill",
    "/info",
    "/invocations",
    "/load",
    "/lora-adapters",
    "/metrics",
    "/models",
    "/pause",
    "/ping",
    "/pooling",
    "/predict",
    "/props",
    "/rerank",
    "/reset_prefix_cache",
    "/score",
    "/sleep",
    "/slots",
    "/slots/*",
    "/tokenize",
    "/update_weights",
    "/v1/audio/**",
    "/v1/batches/**",
    "/v1/chat/completions",
    "/v1/complete",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/files/**",
    "/v1/fine_tuning/**",
    "/v1/load_lora_adapter",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/models",
    "/v1/models/*",
    "/v1/responses/*/cancel",
    "/v2",
    "/v2/health/**",
    "/v2/models/*",
    "/v2/models/*/infer",
    "/v2/models/*/versions/*/generate_stream",
    "/v2/repository/index",
    "/v2/repository/models/*/load",
    "/v2/repository/models/*/unload",
    "/v2/systemsharedmemory/**",
    "/version",
    "/wake_up",
];

/// What a route table's first literal segment can be (after leading slashes): a path whose
/// first segment is none of these is in no table. Keep in step with the adapters' tables.
pub const FIRST_SEGMENTS: &[&str] = &[
    "",
    "abort_requests",
    "api",
    "apply-template",
    "chat",
    "chat_tokenize",
    "classify",
    "collective_rpc",
    "completion",
    "completions",
    "cors-proxy",
    "detokenize",
    "embedding",
    "embeddings",
    "generate",
    "generate_stream",
    "health",
    "inference",
    "inference.GRPCInferenceService",
    "infill",
    "info",
    "init_weight_transfer_engine",
    "invocations",
    "load",
    "lora-adapters",
    "metrics",
    "models",
    "pause",
    "ping",
    "pooling",
    "predict",
    "props",
    "rerank",
    "reset_encoder_cache",
    "reset_mm_cache",
    "reset_prefix_cache",
    "resume",
    "scale_elastic_ep",
    "score",
    "server_info",
    "sleep",
    "slots",
    "start_profile",
    "stop_profile",
    "tokenize",
    "tools",
    "update_weights",
    "v1",
    "v2",
    "version",
    "wake_up",
];

const PATH_TOKENS: &[&str] = &[
    "/",
    "//",
    ".",
    "..",
    "/./",
    "/../",
    "%",
    "%2",
    "%2e",
    "%2E",
    "%2e%2e",
    "%2f",
    "%2F",
    "%5c",
    "%00",
    "%0a",
    "%0d%0a",
    "%25",
    "%252e",
    "%zz",
    "%e2%80%ae",
    "%c0%ae",
    "%ff",
    "%3A",
    "\\",
    ";",
    ";x=1",
    "?",
    "?a=b",
    "#",
    "*",
    "**",
    "~",
    ":",
    ":cloud",
    "@",
    "+",
    " ",
    "%20",
    "API",
    "V1",
];

const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    "\\udc00\\ud800",
    "\\u202e",
    "\\n",
    "null",
    "true",
    "false",
    " ",
    "\n",
    "/*",
    "//",
    "\"model\":",
    "\"Model\":\"x:cloud\",",
    ",\"model\":\"y\"",
    "\"name\":\"x:cloud\",",
    "\"keep_alive\":0,",
    "\"stream\":\"true\",",
];

const YAML_TOKENS: &[&str] = &[
    ":",
    ": ",
    "- ",
    "\n",
    "\n  ",
    "\n    - ",
    "  ",
    "\t",
    "#",
    "{",
    "}",
    "[",
    "]",
    ",",
    "\"",
    "'",
    "&a ",
    "*a",
    "<<: *a\n",
    "!!str ",
    "!!binary ",
    "!!map ",
    "!tag ",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "? ",
    "|\n",
    ">-\n",
    "~",
    "null",
    "true",
    "yes",
    "on",
    "Match",
    "RULES",
    "Action",
    "apiVersion",
    "frobnicate: 1\n",
    "id: dup\n",
    "action: allow\n",
    "default: allow\n",
    "server: OLLAMA\n",
    "models: [\"*\"]\n",
    "models: [\"[\"]\n",
    "models: [\"{a,{b}\"]\n",
    "paths: [\"/**/**\"]\n",
    "body: {keep_alive: 0}\n",
    "body: {\"\": 1}\n",
];

/// Seed body texts: realistic requests of each API family.
const JSON_SEEDS: &[&str] = &[
    r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
    r#"{"model":"llama3","prompt":"hi","keep_alive":0}"#,
    r#"{"model":"x:cloud","name":"llama3","stream":false}"#,
    r#"{"model":"nomic-embed-text","input":["a","b"]}"#,
    r#"{"model":"gpt-4o","messages":[],"n":1,"max_tokens":99999999999999999999}"#,
    r#"{"inputs":"hi","parameters":{"max_new_tokens":20}}"#,
    r#"{"id":"1","inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[1]}]}"#,
    r#"{"model":"claude","max_tokens":1,"messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]}"#,
    r#"[{"model":"a"}]"#,
    r#""model""#,
    "",
];

/// Shipped policy packs: the grammar as the project writes it.
pub const PACK_SEEDS: &[&str] = &[
    include_str!("../../../policies/ollama-safe/pack.yaml"),
    include_str!("../../../policies/openai-safe/pack.yaml"),
    include_str!("../../../policies/vllm-safe/pack.yaml"),
    include_str!("../../../policies/triton-safe/pack.yaml"),
    include_str!("../../../policies/examples/pack.yaml"),
    // Every matcher at once, with anchors.
    "apiVersion: sluice.dev/v1alpha1\nkind: PolicyPack\nmetadata:\n  name: all\n  description: every field\nspec:\n  rules:\n    - id: all-fields\n      description: x\n      action: deny\n      match: &m\n        targets: [\"a*\"]\n        servers: [ollama, openai]\n        operations: [inference, management]\n        routes: [\"ollama.*\"]\n        models: [\"*:cloud\"]\n        exceptModels: [\"llama*\"]\n        methods: [post]\n        paths: [\"/api/**\"]\n        body: {\"/keep_alive\": 0, \"/options/num_ctx\": 99999999999999999999}\n        streaming: true\n        workload: {uids: [0, 4294967295], gids: [0], comms: [\"py*\"], exes: [\"/usr/bin/*\"]}\n    - id: second\n      action: allow\n      match: *m\n",
    // Alias expansion bomb: the loader must refuse it quickly, not build it.
    "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n",
];

pub const CONFIG_SEEDS: &[&str] = &[
    sluice::config::DEFAULT_YAML,
    "listen: 127.0.0.1:15001\nlisten_v6: null\ncgroup: /x\nfail_mode: open\npin_dir: /sys/fs/bpf/x\nadmin_socket: /run/x.sock\nbypass_mark: 4294967295\ndns_refresh_secs: 18446744073709551615\nconnect_timeout_ms: 0\ndead_backend_secs: 1\ndrain_timeout_secs: 1\npolicies: [\"builtin:ollama-safe\", ./p]\nmax_request_body_bytes: 18446744073709551615\nmax_header_bytes: 0\nworker_threads: 1\ntargets:\n  - name: a\n    match: \"[::ffff:0.0.0.0/96]:1-64\"\n    upstream: [\"[::1]:1\", \"host.example:65535\"]\n    protocol: http\n    server: llama-cpp\n    default: allow\n  - name: b\n    match: ollama.internal:11434\n    upstream: 127.0.0.1:11434\n",
];

pub const CASE_SEEDS: &[&str] = &[
    "description: chatting with a local model is allowed\nserver: ollama\nrequest:\n  method: POST\n  path: /api/chat\n  body: {\"model\": \"llama3.2\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\nexpect:\n  decision: allow\n  rules: [ollama-allow-use]\n",
    "description: every field\ntarget: t\nserver: triton\ndefault: allow\nrequest:\n  method: get\n  path: /v2/models/x/ready\nworkload:\n  uid: 4294967295\n  gid: 0\n  comm: \"a\\nb\"\n  exe: /usr/bin/python3\nexpect:\n  decision: deny\n  rules: []\n",
];

/// One edit of a text.
#[derive(Debug, Clone)]
pub enum Edit {
    Insert(usize, String),
    Delete(usize, usize),
    /// The slice at `.0` of length `.1`, repeated `.2` more times: deep nesting, long runs.
    Repeat(usize, usize, usize),
    FlipCase(usize, usize),
    Truncate(usize),
}

fn boundary(s: &str, at: usize) -> usize {
    s.floor_char_boundary(at % (s.len() + 1))
}

fn range(s: &str, at: usize, len: usize) -> (usize, usize) {
    let start = boundary(s, at);
    let end = s.floor_char_boundary(start.saturating_add(len).min(s.len()));
    (start, end)
}

pub fn apply(seed: &str, edits: &[Edit]) -> String {
    let mut s = seed.to_string();
    for e in edits {
        match e {
            Edit::Insert(at, tok) => {
                let at = boundary(&s, *at);
                if s.len() + tok.len() <= MAX_TEXT {
                    s.insert_str(at, tok);
                }
            }
            Edit::Delete(at, len) => {
                let (a, b) = range(&s, *at, *len);
                s.replace_range(a..b, "");
            }
            Edit::Repeat(at, len, times) => {
                let (a, b) = range(&s, *at, *len);
                let piece = s[a..b].to_string();
                let times = (*times).min((MAX_TEXT - s.len().min(MAX_TEXT)) / piece.len().max(1));
                s.insert_str(b, &piece.repeat(times));
            }
            Edit::FlipCase(at, len) => {
                let (a, b) = range(&s, *at, *len);
                let flipped: String = s[a..b]
                    .chars()
                    .map(|c| {
                        if c.is_ascii_lowercase() {
                            c.to_ascii_uppercase()
                        } else {
                            c.to_ascii_lowercase()
                        }
                    })
                    .collect();
                s.replace_range(a..b, &flipped);
            }
            Edit::Truncate(at) => {
                let at = boundary(&s, *at);
                s.truncate(at);
            }
        }
    }
    s
}

/// Up to `max` edits with tokens from `dict` (plus hostile characters, numbers, any string).
pub fn edits(dict: &'static [&'static str], max: usize) -> impl Strategy<Value = Vec<Edit>> {
    let token = prop_oneof![
        4 => select(dict).prop_map(String::from),
        2 => select(HOSTILE_CHARS).prop_map(String::from),
        1 => select(NUMBERS).prop_map(String::from),
        1 => any::<String>(),
    ];
    let edit = prop_oneof![
        6 => (any::<usize>(), token).prop_map(|(a, t)| Edit::Insert(a, t)),
        2 => (any::<usize>(), 0usize..16).prop_map(|(a, l)| Edit::Delete(a, l)),
        1 => (any::<usize>(), 1usize..8, 0usize..3000).prop_map(|(a, l, n)| Edit::Repeat(a, l, n)),
        2 => (any::<usize>(), 0usize..12).prop_map(|(a, l)| Edit::FlipCase(a, l)),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ];
    vec(edit, 0..=max)
}

/// A seed from `seeds`, edited.
pub fn edited(
    seeds: &'static [&'static str],
    dict: &'static [&'static str],
    max_edits: usize,
) -> impl Strategy<Value = String> {
    (select(seeds), edits(dict, max_edits)).prop_map(|(s, e)| apply(s, &e))
}

pub fn server() -> impl Strategy<Value = Server> {
    select(SERVERS)
}

pub fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(&["GET", "POST", "DELETE", "HEAD"][..]).prop_map(String::from),
        3 => select(METHODS).prop_map(String::from),
        1 => "[A-Za-z]{0,8}",
    ]
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(FIRST_SEGMENTS).prop_map(String::from),
        3 => "[A-Za-z0-9._~:-]{0,16}",
        2 => "(%[0-9A-Fa-f]{2}){1,3}",
        2 => select(PATH_TOKENS).prop_map(String::from),
        1 => select(HOSTILE_CHARS).prop_map(String::from),
        1 => (1usize..5000).prop_map(|n| "a".repeat(n)),
    ]
}

/// A route template with its wildcards filled in.
fn fill(template: &str, segs: &[String]) -> String {
    let mut i = 0;
    template
        .split('/')
        .map(|part| match part {
            "*" | "**" => {
                i += 1;
                segs.get((i - 1) % segs.len().max(1))
                    .cloned()
                    .unwrap_or_default()
            }
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// URL paths: real routes with hostile wildcards, near misses, free-form segments.
pub fn path() -> impl Strategy<Value = String> {
    let templated =
        (select(ROUTE_TEMPLATES), vec(segment(), 1..4)).prop_map(|(t, segs)| fill(t, &segs));
    let free = vec(segment(), 0..8).prop_map(|s| format!("/{}", s.join("/")));
    let base = prop_oneof![3 => templated, 2 => free, 1 => any::<String>()];
    prop_oneof![
        // Half the paths are left as generated, so real routes are hit with hostile
        // wildcards and bodies; the other half are edited into near misses.
        1 => base.clone(),
        1 => (base, edits(PATH_TOKENS, 4)).prop_map(|(b, e)| apply(&b, &e)),
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(&[
            "model", "Model", "MODEL", "mOdEl", "name", "Name", "stream", "Stream", "STREAM",
            "prompt", "messages", "keep_alive", "Keep_Alive", "input", "options", "inputs",
            "max_tokens", "", "model\u{0}", "\u{ff4d}odel", "model ", " model", "\u{212a}eep_alive",
            "\u{17f}tream",
        ][..]).prop_map(String::from),
        1 => any::<String>(),
    ]
}

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(&[
            "llama3", "llama3:latest", "x:cloud", "x:cloud ", "X:CLOUD", " x:cloud", "x:CLOUD\t",
            "gpt-4o", "", "a/b", "../x", "x%3Acloud", "x\u{0}", "\u{202e}x", "*", "[", "{a,b}",
        ][..]).prop_map(String::from),
        1 => any::<String>(),
        1 => (1usize..100_000).prop_map(|n| "m".repeat(n)),
    ]
}

/// JSON values, including numbers outside every integer type.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        json_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..8).prop_map(Value::Array),
            vec((json_key(), inner), 0..8).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// An object written by hand, so keys may repeat and collide by case.
fn json_object_text() -> impl Strategy<Value = String> {
    vec((json_key(), json_value()), 0..8).prop_map(|kv| {
        let fields: Vec<String> = kv
            .iter()
            .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
            .collect();
        format!("{{{}}}", fields.join(","))
    })
}

/// Nesting far past any parser's recursion limit.
fn nested_text() -> impl Strategy<Value = String> {
    (
        select(&["[", "{\"a\":", "{\"model\":", "[{\"messages\":"][..]),
        0usize..5000,
    )
        .prop_map(|(open, depth)| {
            let close: String = open
                .chars()
                .rev()
                .filter_map(|c| match c {
                    '[' => Some(']'),
                    '{' => Some('}'),
                    _ => None,
                })
                .collect();
            format!("{}1{}", open.repeat(depth), close.repeat(depth))
        })
}

/// Request body texts: valid, nearly valid, ambiguous and deep.
pub fn json_text() -> impl Strategy<Value = String> {
    let base = prop_oneof![
        3 => json_object_text(),
        2 => select(JSON_SEEDS).prop_map(String::from),
        1 => json_value().prop_map(|v| v.to_string()),
        1 => nested_text(),
    ];
    (base, edits(JSON_TOKENS, 4)).prop_map(|(b, e)| apply(&b, &e))
}

/// A YAML double-quoted scalar (JSON's string syntax is a subset of it).
fn quoted(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

fn quoted_list(items: &[&str]) -> String {
    let q: Vec<String> = items.iter().map(|s| quoted(s)).collect();
    format!("[{}]", q.join(", "))
}

/// Patterns and names that glob compilers, JSON pointers and enum parsers reject or misread.
const GLOBS: &[&str] = &[
    "*",
    "**",
    "*:cloud",
    "[",
    "]",
    "{a,b}",
    "{a,{b,c}}",
    "{",
    "\\",
    "a\\",
    "[!]",
    "[z-a]",
    "**/",
    "/**/**",
    "?",
    "x\u{0}",
    "\u{202e}*",
    "ſ*",
    "*\u{212a}*",
    "",
    " ",
    "a/../b",
];
const POINTERS: &[&str] = &[
    "/keep_alive",
    "keep_alive",
    "",
    "/",
    "/a~0b~1c",
    "/~2",
    "/options/num_ctx",
    "/messages/0",
    "/messages/-",
    "/\u{0}",
];
const ENUM_WORDS: &[&str] = &[
    "ollama",
    "OLLAMA",
    "openai",
    "llama-cpp",
    "llama_cpp",
    "triton",
    "inference",
    "management",
    "model-export",
    "unknown",
    "Unknown",
    "",
    "allow",
    "deny",
    "Deny",
    "permit",
];
const NAMES: &[&str] = &[
    "a",
    "a",
    "b",
    "",
    " ",
    "a\nb",
    "\u{202e}",
    "ollama-deny-pull",
];

const SERVER_NAMES: &[&str] = &[
    "openai",
    "anthropic",
    "ollama",
    "vllm",
    "tgi",
    "triton",
    "llama-cpp",
];
const OPERATIONS: &[&str] = &[
    "inference",
    "embedding",
    "tokenize",
    "listing",
    "health",
    "management",
    "model-export",
    "config-change",
    "files",
    "unknown",
];

/// Lists of valid enum values, now and then with a wrong one: every wrong value fails the
/// whole file, so they must be rare for the rest of the file to be reached.
fn mostly(valid: &'static [&'static str]) -> impl Strategy<Value = Vec<&'static str>> {
    prop_oneof![
        6 => vec(select(valid), 0..3),
        1 => vec(select(ENUM_WORDS), 0..3),
    ]
}

/// Packs built field by field, so that most parse and the semantic checks (patterns,
/// pointers, duplicate ids, enum values) get fuzzed too; then lightly edited.
fn structured_pack() -> impl Strategy<Value = String> {
    let list = |dict: &'static [&'static str]| vec(select(dict), 0..3);
    let rule = (
        select(NAMES),
        prop_oneof![6 => select(&["allow", "deny"][..]), 1 => select(ENUM_WORDS)],
        (list(GLOBS), list(GLOBS), list(GLOBS), list(GLOBS)),
        (mostly(SERVER_NAMES), mostly(OPERATIONS)),
        (list(POINTERS), select(NUMBERS)),
        (
            prop_oneof![3 => select(&["0", "1000", "4294967295"][..]), 1 => select(NUMBERS)],
            list(GLOBS),
        ),
    )
        .prop_map(
            |(id, action, (models, paths, routes, comms), (servers, ops), (ptrs, n), (uid, exes))| {
                let body: Vec<String> =
                    ptrs.iter().map(|p| format!("{}: {n}", quoted(p))).collect();
                format!(
                    "    - id: {}\n      action: {action}\n      match:\n        models: {}\n        exceptModels: {}\n        paths: {}\n        routes: {}\n        servers: [{}]\n        operations: [{}]\n        body: {{{}}}\n        workload: {{uids: [{uid}], comms: {}, exes: {}}}\n",
                    quoted(id),
                    quoted_list(&models),
                    quoted_list(&comms),
                    quoted_list(&paths),
                    quoted_list(&routes),
                    servers.join(", "),
                    ops.join(", "),
                    body.join(", "),
                    quoted_list(&comms),
                    quoted_list(&exes),
                )
            },
        );
    (vec(rule, 0..5), edits(YAML_TOKENS, 1)).prop_map(|(rules, e)| {
        let text = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: PolicyPack\nmetadata: {{name: fuzz}}\nspec:\n  rules:\n{}",
            rules.concat()
        );
        apply(&text, &e)
    })
}

pub fn pack_text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => edited(PACK_SEEDS, YAML_TOKENS, 6),
        1 => structured_pack(),
    ]
}

/// Addresses that the target and upstream grammar must refuse or read exactly.
const ADDRESSES: &[&str] = &[
    "127.0.0.1:11434",
    "127.0.0.0/8:8000-8002",
    "[::1]:11434",
    "[::]:0",
    "0.0.0.0/0:1-65535",
    "0.0.0.0:80",
    "[::ffff:127.0.0.1]:80",
    "[::ffff:0.0.0.0/96]:80",
    "1.2.3.4/33:80",
    "127.0.0.1:1-100000",
    "127.0.0.1:9-1",
    "127.0.0.1:0",
    "127.0.0.1:65536",
    "127.0.0.1:",
    ":80",
    "::1:80",
    "[::1]",
    "[::1]:80-",
    "host:80",
    "host..name:80",
    "-host:80",
    "h\u{0}:80",
    "xn--fiq228c.example:443",
    "a.b.c.d.e.f:1",
    "localhost:15001",
    "127.0.0.1:15001",
    "127.0.0.1:1-64",
    "127.0.0.1:1-65",
];

/// Configs built field by field with hostile addresses and numbers, then lightly edited.
fn structured_config() -> impl Strategy<Value = String> {
    let target = (
        select(NAMES),
        select(ADDRESSES),
        vec(select(ADDRESSES), 0..3),
        select(&["tcp", "http", "HTTP", "grpc", ""][..]),
        select(ENUM_WORDS),
        select(ENUM_WORDS),
    )
        .prop_map(|(name, m, up, proto, server, default)| {
            format!(
                "  - name: {}\n    match: {}\n    upstream: {}\n    protocol: {proto}\n    server: {server}\n    default: {default}\n",
                quoted(name),
                quoted(m),
                quoted_list(&up),
            )
        });
    (
        (select(ADDRESSES), select(ADDRESSES)),
        (select(NUMBERS), select(NUMBERS), select(NUMBERS)),
        vec(target, 0..5),
        edits(YAML_TOKENS, 2),
    )
        .prop_map(|((listen, v6), (mark, secs, bytes), targets, e)| {
            let text = format!(
                "listen: {}\nlisten_v6: {}\nbypass_mark: {mark}\ndrain_timeout_secs: {secs}\nmax_request_body_bytes: {bytes}\ntargets:\n{}",
                quoted(listen),
                quoted(v6),
                targets.concat()
            );
            apply(&text, &e)
        })
}

pub fn config_text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => edited(CONFIG_SEEDS, YAML_TOKENS, 6),
        1 => structured_config(),
    ]
}

pub fn case_text() -> impl Strategy<Value = String> {
    edited(CASE_SEEDS, YAML_TOKENS, 6)
}

/// Header fields an HTTP/1.1 request's framing depends on, with the values request
/// smuggling plays with, and some ordinary ones.
const H1_FIELDS: &[(&str, &[&str])] = &[
    (
        "Content-Length",
        &[
            "0",
            "4",
            "20",
            "+4",
            "4, 4",
            "4, 5",
            " 4 ",
            "0x4",
            "",
            "99999999999999999999",
        ],
    ),
    (
        "Transfer-Encoding",
        &[
            "chunked",
            "Chunked",
            "chunked, identity",
            "identity",
            "gzip, chunked",
            " chunked",
            "chunked, chunked",
        ],
    ),
    (
        "Connection",
        &[
            "close",
            "keep-alive",
            "Upgrade",
            "close, Content-Length",
            "keep-alive, close",
        ],
    ),
    ("Host", &["models", "127.0.0.1:8000", ""]),
    ("Expect", &["100-continue", "100-Continue", "200-ok"]),
    ("Upgrade", &["websocket", "h2c"]),
    ("Content-Type", &["application/json"]),
    ("X-A", &["1", "a\tb", "\u{7f}"]),
    ("Content-Length ", &["4"]),
    ("Transfer-Encoding\t", &["chunked"]),
];

/// A request body as sent: raw, or chunked (sizes right or wrong, extensions, trailers).
fn h1_body() -> impl Strategy<Value = Vec<u8>> {
    let chunk = (
        prop::collection::vec(any::<u8>(), 0..12),
        prop::sample::select(&["", ";ext=1", ";x=\"a b\"", " ", "\t;e"][..]),
        -1i8..=1,
    )
        .prop_map(|(data, ext, skew)| {
            let size = (data.len() as i64 + i64::from(skew)).max(0);
            let mut c = format!("{size:x}{ext}\r\n").into_bytes();
            c.extend_from_slice(&data);
            c.extend_from_slice(b"\r\n");
            c
        });
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..24),
        (
            prop::collection::vec(chunk, 0..4),
            prop::sample::select(
                &[
                    "",
                    "X-Model: a\r\n",
                    "Content-Type: text/plain\r\n",
                    "bad trailer\r\n"
                ][..]
            ),
        )
            .prop_map(|(chunks, trailer)| {
                let mut b: Vec<u8> = chunks.concat();
                b.extend_from_slice(format!("0\r\n{trailer}\r\n").as_bytes());
                b
            }),
    ]
}

/// One HTTP/1.x request (or something near one) as bytes.
fn h1_request() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(
            &[
                "GET",
                "POST",
                "post",
                "HEAD",
                "CONNECT",
                "OPTIONS",
                "P\u{f6}ST",
                "",
            ][..],
        ),
        prop_oneof![
            path(),
            Just("*".to_string()),
            Just("http://other.example/api/pull".to_string()),
            Just("127.0.0.1:8000".to_string()),
        ],
        prop::sample::select(&["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 ", "http/1.1"][..]),
        prop::collection::vec(
            (
                prop::sample::select(H1_FIELDS),
                any::<prop::sample::Index>(),
            ),
            0..6,
        ),
        prop::sample::select(&["\r\n", "\n"][..]),
        h1_body(),
    )
        .prop_map(|(method, target, version, fields, eol, body)| {
            let mut r = format!("{method} {target} {version}{eol}");
            for ((name, values), i) in fields {
                r.push_str(&format!("{name}: {}{eol}", i.get(values)));
            }
            r.push_str(eol);
            let mut bytes = r.into_bytes();
            bytes.extend_from_slice(&body);
            bytes
        })
}

/// Requests pipelined on one connection, some bytes flipped, cut into the pieces in which
/// they arrive.
pub fn h1_stream() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    (
        prop::collection::vec(h1_request(), 1..4),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    )
        .prop_map(|(requests, flips, cuts)| {
            let mut bytes = requests.concat();
            if !bytes.is_empty() {
                for (at, b) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] = b;
                }
            }
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            cuts.sort_unstable();
            (bytes, cuts)
        })
}
