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
