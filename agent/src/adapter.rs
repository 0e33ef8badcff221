//! Protocol adapters: turn an HTTP request to a model server into an operation the policy can
//! name (class, model, streaming). Adapters describe; they never decide. A route an adapter
//! does not know is `unknown`, which the shipped packs and the default target action deny:
//! servers' own key checks leave gaps (see docs/policy.md, "known bypasses").
use std::fmt;

use serde::{Deserialize, Serialize};

mod anthropic;
mod llamacpp;
mod ollama;
mod openai;
mod route;
mod tgi;
mod triton;
mod vllm;

pub use route::Route;

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
    let found = tables
        .iter()
        .flat_map(|t| t.iter())
        .find_map(|r| r.matches(method, path).map(|segs| (r, segs)));
    let Some((route, segments)) = found else {
        return Operation {
            class: OpClass::Unknown,
            route: "unknown",
            model: None,
            streaming: false,
        };
    };
    let mut op = route.operation(&segments, body);
    if server == Server::Ollama {
        ollama::refine(&mut op, body);
    }
    op
}

/// The kebab-case name serde uses, so logs, CLI and policy files spell values alike.
fn serde_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl fmt::Display for OpClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_name(self))
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_name(self))
    }
}

#[cfg(test)]
mod tests;
