//! Hugging Face Text Generation Inference. Its key layer skips `/v2/...` (KServe) routes.
use super::{
    OpClass::*,
    route::{GET, ModelFrom as M, POST, Route, StreamFrom as S, r},
};

pub const ROUTES: &[Route] = &[
    r(
        "tgi.generate",
        POST,
        "/generate",
        Inference,
        M::None,
        S::Never,
    ),
    r(
        "tgi.generate_stream",
        POST,
        "/generate_stream",
        Inference,
        M::None,
        S::Always,
    ),
    r(
        "tgi.root",
        POST,
        "/",
        Inference,
        M::None,
        S::Body("stream", false),
    ),
    r(
        "tgi.invocations",
        POST,
        "/invocations",
        Inference,
        M::None,
        S::Body("stream", false),
    ),
    r(
        "tgi.tokenize",
        POST,
        "/tokenize",
        Tokenize,
        M::None,
        S::Never,
    ),
    r(
        "tgi.chat_tokenize",
        POST,
        "/chat_tokenize",
        Tokenize,
        M::Body("model"),
        S::Never,
    ),
    r("tgi.info", GET, "/info", Listing, M::None, S::Never),
    r("tgi.health", GET, "/health", Health, M::None, S::Never),
    r("tgi.metrics", GET, "/metrics", Health, M::None, S::Never),
];
