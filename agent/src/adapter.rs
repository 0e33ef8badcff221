//! Protocol adapters: turn an HTTP request to a model server into an operation the policy can
//! name (class, model, streaming). Adapters describe; they never decide. A route an adapter
//! does not know is `unknown`, which the shipped packs and the default target action deny:
//! servers' own key checks leave gaps (see docs/policy.md, "known bypasses").
use std::fmt;

use serde::{Deserialize, Serialize};

mod anthropic;
pub mod keys;
mod llamacpp;
mod ollama;
mod openai;
mod route;
mod tgi;
mod triton;
mod vllm;

pub use route::{BodyKind, Route, StreamFrom};

/// Which API family a target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Server {
    #[default]
    Openai,
    Anthropic,
    Ollama,
    Vllm,
    Tgi,
    Triton,
    LlamaCpp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpClass {
    Inference,
    Embedding,
    Tokenize,
    Listing,
    Health,
    Management,
    ModelExport,
    ConfigChange,
    Files,
    Unknown,
}

/// What a request does, as far as policy is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Operation {
    pub class: OpClass,
    /// Stable route id, e.g. `ollama.pull`, `openai.chat.completions`; `unknown` if none.
    pub route: &'static str,
    pub model: Option<String>,
    pub streaming: bool,
}

pub fn classify(
    server: Server,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Operation {
    let Some((route, segments)) = find(server, method, path) else {
        return Operation {
            class: OpClass::Unknown,
            route: "unknown",
            model: None,
            streaming: false,
        };
    };
    let mut op = route.operation(server, &segments, body);
    if server == Server::Ollama {
        ollama::refine(&mut op, body);
    }
    op
}

/// The route a request takes on `server`, if an adapter knows it.
pub fn route(server: Server, method: &str, path: &str) -> Option<&'static Route> {
    find(server, method, path).map(|(r, _)| r)
}

fn find<'p>(server: Server, method: &str, path: &'p str) -> Option<(&'static Route, Vec<&'p str>)> {
    let tables: &[&[Route]] = match server {
        Server::Openai => &[openai::ROUTES],
        Server::Anthropic => &[anthropic::ROUTES],
        // Ollama and TGI also serve the OpenAI (and, for Ollama, Anthropic) API under /v1.
        Server::Ollama => &[ollama::ROUTES, openai::ROUTES, anthropic::ROUTES],
        Server::Vllm => &[vllm::ROUTES, openai::ROUTES],
        Server::Tgi => &[tgi::ROUTES, openai::ROUTES],
        Server::Triton => &[triton::ROUTES],
        Server::LlamaCpp => &[llamacpp::ROUTES, openai::ROUTES],
    };
    tables
        .iter()
        .flat_map(|t| t.iter())
        .find_map(|r| r.matches(method, path).map(|segs| (r, segs)))
}

/// Whether the server answers gRPC on an HTTP target. Only Triton does; any other server
/// would get a gRPC body Sluice cannot read, so the pipeline refuses it instead.
pub fn speaks_grpc(server: Server) -> bool {
    server == Server::Triton
}

/// Whether the server routes on the percent-decoded path. Triton matches its route regexes on
/// the raw path and TGI's router (axum) matches raw segments, so an escape there names
/// something other than what Sluice's decoded path shows: such paths are refused.
pub fn decodes_path(server: Server) -> bool {
    !matches!(server, Server::Triton | Server::Tgi)
}

/// How the server matches JSON object keys to the fields it reads.
pub fn key_match(server: Server) -> keys::KeyMatch {
    match server {
        // Go `encoding/json`: an exact match first, else a case-insensitive one; with keys
        // that collide, the last one wins.
        Server::Ollama => keys::KeyMatch::GoFold,
        // Python (json / pydantic), Rust serde, C++ JSON libraries: exact keys; which copy of
        // a duplicate wins differs between them.
        _ => keys::KeyMatch::Exact,
    }
}

/// A top-level field of a JSON object body, found the way `server` finds it.
pub fn field<'v>(
    server: Server,
    body: &'v serde_json::Value,
    name: &str,
) -> Option<&'v serde_json::Value> {
    let obj = body.as_object()?;
    if let Some(v) = obj.get(name) {
        return Some(v);
    }
    match key_match(server) {
        keys::KeyMatch::Exact => None,
        keys::KeyMatch::GoFold => {
            let want = keys::go_fold(name);
            obj.iter()
                .find(|(k, _)| keys::go_fold(k) == want)
                .map(|(_, v)| v)
        }
    }
}

/// Fields of a JSON body that Sluice and the server could read differently, e.g. Ollama's
/// `model` and deprecated `name` naming two different models. `Err` says what disagrees.
pub fn check_body(server: Server, route: &Route, body: &serde_json::Value) -> Result<(), String> {
    if server == Server::Ollama {
        return ollama::check(route, body);
    }
    Ok(())
}

/// The kebab-case name serde uses: the hand-written names must spell values as policy files
/// do.
#[cfg(test)]
fn serde_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl OpClass {
    /// The name policy files and logs use (the serde name), without a serde round trip:
    /// every request record writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            OpClass::Inference => "inference",
            OpClass::Embedding => "embedding",
            OpClass::Tokenize => "tokenize",
            OpClass::Listing => "listing",
            OpClass::Health => "health",
            OpClass::Management => "management",
            OpClass::ModelExport => "model-export",
            OpClass::ConfigChange => "config-change",
            OpClass::Files => "files",
            OpClass::Unknown => "unknown",
        }
    }
}

impl fmt::Display for OpClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Server {
    /// Every server family, in declaration order.
    pub const ALL: [Server; 7] = [
        Server::Openai,
        Server::Anthropic,
        Server::Ollama,
        Server::Vllm,
        Server::Tgi,
        Server::Triton,
        Server::LlamaCpp,
    ];

    /// The name config files use (`llama-cpp`), without allocating: metrics label with it.
    pub fn name(self) -> &'static str {
        match self {
            Server::Openai => "openai",
            Server::Anthropic => "anthropic",
            Server::Ollama => "ollama",
            Server::Vllm => "vllm",
            Server::Tgi => "tgi",
            Server::Triton => "triton",
            Server::LlamaCpp => "llama-cpp",
        }
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests;
