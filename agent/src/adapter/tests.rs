use serde_json::json;

use super::*;

fn op(server: Server, method: &str, path: &str, body: serde_json::Value) -> Operation {
    classify(server, method, path, Some(&body))
}

#[test]
fn openai_chat_names_model_and_stream() {
    let o = op(
        Server::Openai,
        "POST",
        "/v1/chat/completions",
        json!({"model": "gpt-x", "stream": true}),
    );
    assert_eq!(
        (o.class, o.route, o.model.as_deref(), o.streaming),
        (
            OpClass::Inference,
            "openai.chat.completions",
            Some("gpt-x"),
            true
        )
    );
}

#[test]
fn ollama_management_export_and_unload() {
    assert_eq!(
        op(
            Server::Ollama,
            "POST",
            "/api/pull",
            json!({"model": "llama3"})
        )
        .class,
        OpClass::Management
    );
    let push = op(
        Server::Ollama,
        "POST",
        "/api/push",
        json!({"model": "me/llama3"}),
    );
    assert_eq!((push.class, push.streaming), (OpClass::ModelExport, true));
    assert_eq!(
        op(
            Server::Ollama,
            "DELETE",
            "/api/delete",
            json!({"model": "x"})
        )
        .class,
        OpClass::Management
    );
    // Empty prompt (load/unload) is management, a real prompt is inference.
    assert_eq!(
        op(
            Server::Ollama,
            "POST",
            "/api/generate",
            json!({"model": "x", "keep_alive": 0})
        )
        .class,
        OpClass::Management
    );
    assert_eq!(
        op(
            Server::Ollama,
            "POST",
            "/api/generate",
            json!({"model": "x", "prompt": "hi"})
        )
        .class,
        OpClass::Inference
    );
    assert_eq!(
        op(
            Server::Ollama,
            "POST",
            "/v1/chat/completions",
            json!({"model": "x"})
        )
        .route,
        "openai.chat.completions"
    );
}

#[test]
fn vllm_bypass_routes_are_classified_by_function() {
    let inv = op(
        Server::Vllm,
        "POST",
        "/invocations",
        json!({"model": "m", "messages": []}),
    );
    assert_eq!(
        (inv.class, inv.model.as_deref()),
        (OpClass::Inference, Some("m"))
    );
    assert_eq!(
        op(Server::Vllm, "POST", "/collective_rpc", json!({})).class,
        OpClass::ConfigChange
    );
    assert_eq!(
        op(
            Server::Vllm,
            "POST",
            "/v1/load_lora_adapter",
            json!({"lora_name": "a"})
        )
        .class,
        OpClass::Management
    );
}

#[test]
fn triton_model_from_path_and_repository_load() {
    let o = op(
        Server::Triton,
        "POST",
        "/v2/models/resnet/versions/3/infer",
        json!({}),
    );
    assert_eq!(
        (o.class, o.model.as_deref()),
        (OpClass::Inference, Some("resnet"))
    );
    assert_eq!(
        op(
            Server::Triton,
            "POST",
            "/v2/repository/models/x/load",
            json!({})
        )
        .class,
        OpClass::Management
    );
}

#[test]
fn unknown_routes_and_methods_are_unknown() {
    assert_eq!(
        op(Server::Openai, "POST", "/v1/secret", json!({})).class,
        OpClass::Unknown
    );
    assert_eq!(
        op(Server::Openai, "DELETE", "/v1/chat/completions", json!({})).class,
        OpClass::Unknown
    );
    assert_eq!(
        op(Server::Ollama, "GET", "/api/pull", json!({})).class,
        OpClass::Unknown
    );
    assert!(op(Server::Tgi, "POST", "/generate_stream", json!({})).streaming);
}

#[test]
fn ollama_model_is_the_one_ollama_runs() {
    let model = |path: &str, body: serde_json::Value| op(Server::Ollama, "POST", path, body).model;
    let chat = |m: &str| json!({"model": m, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        model("/api/chat", chat("x:cloud ")).as_deref(),
        Some("x:latest:cloud")
    );
    assert_eq!(
        model("/api/chat", chat("llama3")).as_deref(),
        Some("llama3:latest")
    );
    assert_eq!(
        model("/v1/chat/completions", chat("gpt-oss:120b-cloud")).as_deref(),
        Some("gpt-oss:120b:cloud")
    );
    // Go matches keys case-insensitively, so "Model" is the model.
    assert_eq!(
        model("/api/chat", json!({"Model": "x:cloud", "messages": [1]})).as_deref(),
        Some("x:latest:cloud")
    );
    // The deprecated `name` counts where the server still reads it, only when `model` is empty.
    assert_eq!(
        model("/api/show", json!({"name": "x:cloud"})).as_deref(),
        Some("x:latest:cloud")
    );
    assert_eq!(
        model("/api/pull", json!({"model": "", "name": "x:cloud"})).as_deref(),
        Some("x:latest:cloud")
    );
    assert_eq!(
        model("/api/show", json!({"model": "llama3", "name": "x:cloud"})).as_deref(),
        Some("llama3:latest")
    );
    assert_eq!(
        model("/api/chat", json!({"name": "x:cloud", "messages": [1]})),
        None
    );
    // A model taken from a (decoded) path segment is canonical too.
    let get = classify(Server::Ollama, "GET", "/v1/models/x:cloud", None);
    assert_eq!(get.model.as_deref(), Some("x:latest:cloud"));
    // Other servers compare model names exactly as sent.
    let v = op(
        Server::Vllm,
        "POST",
        "/v1/chat/completions",
        chat("x:cloud "),
    );
    assert_eq!(v.model.as_deref(), Some("x:cloud "));
}

#[test]
fn ollama_load_and_unload_are_management() {
    let class = |path: &str, body: serde_json::Value| op(Server::Ollama, "POST", path, body).class;
    let msgs = json!([{"role": "user", "content": "hi"}]);
    for (path, body) in [
        ("/api/generate", json!({"model": "x"})),
        ("/api/generate", json!({"model": "x", "prompt": ""})),
        (
            "/api/generate",
            json!({"model": "x", "prompt": "hi", "keep_alive": 0}),
        ),
        (
            "/api/generate",
            json!({"model": "x", "prompt": "hi", "keep_alive": "0s"}),
        ),
        (
            "/api/generate",
            json!({"model": "x", "prompt": "hi", "KEEP_ALIVE": "0"}),
        ),
        ("/api/chat", json!({"model": "x"})),
        ("/api/chat", json!({"model": "x", "messages": []})),
        (
            "/api/chat",
            json!({"model": "x", "messages": msgs, "keep_alive": 0}),
        ),
        ("/api/embed", json!({"model": "x"})),
        ("/api/embed", json!({"model": "x", "input": []})),
        ("/api/embed", json!({"model": "x", "input": ""})),
        (
            "/api/embed",
            json!({"model": "x", "input": "a", "keep_alive": "0ms"}),
        ),
        ("/api/embeddings", json!({"model": "x"})),
        (
            "/api/embeddings",
            json!({"model": "x", "prompt": "a", "keep_alive": 0.0}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "x", "messages": []}),
        ),
        ("/v1/completions", json!({"model": "x"})),
    ] {
        assert_eq!(
            class(path, body.clone()),
            OpClass::Management,
            "{path} {body}"
        );
    }
    for (path, body, want) in [
        (
            "/api/generate",
            json!({"model": "x", "prompt": "hi"}),
            OpClass::Inference,
        ),
        (
            "/api/generate",
            json!({"model": "x", "prompt": "hi", "keep_alive": "5m"}),
            OpClass::Inference,
        ),
        (
            "/api/generate",
            json!({"model": "x", "prompt": "hi", "keep_alive": -1}),
            OpClass::Inference,
        ),
        (
            "/api/chat",
            json!({"model": "x", "messages": msgs}),
            OpClass::Inference,
        ),
        (
            "/api/embed",
            json!({"model": "x", "input": ["a"]}),
            OpClass::Embedding,
        ),
        (
            "/api/embeddings",
            json!({"model": "x", "prompt": "a"}),
            OpClass::Embedding,
        ),
        (
            "/v1/chat/completions",
            json!({"model": "x", "messages": msgs}),
            OpClass::Inference,
        ),
    ] {
        assert_eq!(class(path, body.clone()), want, "{path} {body}");
    }
    // Only Ollama loads on an empty request.
    assert_eq!(
        op(
            Server::Vllm,
            "POST",
            "/v1/chat/completions",
            json!({"model": "x", "messages": []})
        )
        .class,
        OpClass::Inference
    );
}

#[test]
fn grpc_body_kinds_and_key_matching_per_server() {
    assert!(speaks_grpc(Server::Triton));
    for s in Server::ALL.into_iter().filter(|s| *s != Server::Triton) {
        assert!(!speaks_grpc(s), "{s}");
        let go = key_match(s) == keys::KeyMatch::GoFold;
        assert_eq!(go, s == Server::Ollama, "{s}");
    }
    let kind = |s, m, p| route(s, m, p).map(|r| r.body);
    assert_eq!(
        kind(Server::Ollama, "POST", "/api/chat"),
        Some(BodyKind::Json)
    );
    assert_eq!(
        kind(Server::Ollama, "POST", "/api/blobs/sha256:1"),
        Some(BodyKind::Raw)
    );
    assert_eq!(
        kind(Server::Openai, "POST", "/v1/audio/transcriptions"),
        Some(BodyKind::Raw)
    );
    assert_eq!(
        kind(Server::Openai, "POST", "/v1/audio/speech"),
        Some(BodyKind::Json)
    );
    assert_eq!(
        kind(Server::Openai, "POST", "/v1/images/generations"),
        Some(BodyKind::Json)
    );
    assert_eq!(kind(Server::Openai, "POST", "/v1/nope"), None);
}

#[test]
fn server_names_are_the_config_spelling() {
    for s in Server::ALL {
        assert_eq!(s.name(), super::serde_name(&s));
    }
}

#[test]
fn operation_class_names_are_the_policy_spelling() {
    use super::OpClass::*;
    let all = [
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
    ];
    for c in all {
        // A variant added without a name here fails to compile in `as_str`; this pins the
        // spelling.
        assert_eq!(c.as_str(), super::serde_name(&c));
    }
}

/// `Route::matches` settles literal routes by comparing strings and prunes wildcard ones by
/// their literal prefix: it answers exactly as a walk over the segments does, for every
/// route of every adapter against every route's own path, its variants and near misses.
#[test]
fn route_matching_answers_as_the_segment_walk() {
    fn walk<'p>(r: &Route, method: &str, path: &'p str) -> Option<Vec<&'p str>> {
        if !r.methods.contains(&method) {
            return None;
        }
        let mut caps = Vec::new();
        let mut want = r.path.trim_start_matches('/').split('/');
        let mut have = path.trim_start_matches('/').split('/');
        loop {
            match (want.next(), have.next()) {
                (Some("**"), _) => return Some(caps),
                (Some("*"), Some(seg)) if !seg.is_empty() => caps.push(seg),
                (Some(w), Some(h)) if w == h => {}
                (None, None) => return Some(caps),
                _ => return None,
            }
        }
    }
    let tables = [
        openai::ROUTES,
        anthropic::ROUTES,
        ollama::ROUTES,
        vllm::ROUTES,
        tgi::ROUTES,
        triton::ROUTES,
        llamacpp::ROUTES,
    ];
    let mut paths: Vec<String> = Vec::new();
    for r in tables.iter().flat_map(|t| t.iter()) {
        let filled = r.path.replace("**", "a/b").replace('*', "m-1");
        for p in [r.path.to_string(), filled] {
            paths.push(p.clone());
            paths.push(format!("{p}/"));
            paths.push(format!("/{p}"));
            paths.push(p.replace('/', "//"));
            paths.push(p[..p.len() / 2].to_string());
            paths.push(format!("{p}x"));
        }
    }
    paths.extend(["", "/", "//", "v1", "/v1/", "/v1/models/"].map(String::from));
    for r in tables.iter().flat_map(|t| t.iter()) {
        for m in ["GET", "POST", "DELETE"] {
            for p in &paths {
                assert_eq!(r.matches(m, p), walk(r, m, p), "{} {m} {p:?}", r.path);
            }
        }
    }
}
