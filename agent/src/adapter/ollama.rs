//! Ollama native API (no authentication of its own) and its OpenAI/Anthropic-compatible /v1.
use super::{
    OpClass::{self, *},
    Operation,
    route::{DELETE, GET, ModelFrom as M, POST, Route, StreamFrom as S, r},
};

const MODEL: M = M::Body("model");

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
    r("ollama.show", POST, "/api/show", Listing, MODEL, S::Never),
    r(
        "ollama.pull",
        POST,
        "/api/pull",
        Management,
        MODEL,
        S::Body("stream", true),
    ),
    r(
        "ollama.push",
        POST,
        "/api/push",
        ModelExport,
        MODEL,
        S::Body("stream", true),
    ),
    r(
        "ollama.create",
        POST,
        "/api/create",
        Management,
        MODEL,
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
        MODEL,
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
    ),
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

/// Inference routes with side effects: an empty prompt loads a model, and with
/// `keep_alive: 0` unloads it (server/routes.go). Those are management, not inference.
pub fn refine(op: &mut Operation, body: Option<&serde_json::Value>) {
    let Some(body) = body else { return };
    let empty = match op.route {
        "ollama.generate" => body
            .get("prompt")
            .and_then(|p| p.as_str())
            .is_none_or(str::is_empty),
        "ollama.chat" => body
            .get("messages")
            .and_then(|m| m.as_array())
            .is_none_or(Vec::is_empty),
        _ => return,
    };
    if empty {
        op.class = OpClass::Management;
    }
}
