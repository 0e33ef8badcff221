//! The masking filter through the real response body and chain, with byte streams cut
//! where the network would cut them.
use std::sync::Arc;

use bytes::Bytes;
use http_body::Frame;
use serde_json::{Value, json};

use super::*;
use crate::{
    filter::{
        Chain,
        tests::{body, drain},
    },
    mask::{Action, Scanner},
    record::Outcome,
    respond::BodyError,
};

const EMAIL: &str = "jane.doe@example.com";
const KEY: &str = "sk-proj-Ab3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7dE9f";

fn plan_with(block: &[&str]) -> Plan {
    let sc = Arc::new(Scanner::builtin());
    let actions = sc
        .detectors()
        .iter()
        .map(|d| {
            Some(if block.contains(&d.name()) {
                Action::Block
            } else {
                Action::Redact
            })
        })
        .collect();
    Plan::new(sc, actions)
}

fn frames(parts: Vec<String>) -> Vec<Result<Frame<Bytes>, BodyError>> {
    parts
        .into_iter()
        .map(|p| Ok(Frame::data(Bytes::from(p))))
        .collect()
}

fn chain_of(m: ResponseMask) -> Chain {
    let mut c = Chain::default();
    c.push(m);
    c
}

fn openai_events(text: &str) -> Vec<String> {
    let mut ev: Vec<String> = text
        .chars()
        .collect::<Vec<_>>()
        .chunks(3)
        .map(|c| {
            let d: String = c.iter().collect();
            format!(
                "data: {}\n\n",
                json!({"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":d},"finish_reason":null}]})
            )
        })
        .collect();
    ev.push(format!(
        "data: {}\n\n",
        json!({"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})
    ));
    ev.push("data: [DONE]\n\n".into());
    ev
}

fn sse_json(b: &[u8]) -> Vec<Value> {
    let s = std::str::from_utf8(b).expect("utf-8");
    s.split("\n\n")
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            let d = e
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .expect("a data line");
            (d != "[DONE]").then(|| serde_json::from_str(d).expect("JSON data"))
        })
        .collect()
}

#[tokio::test]
async fn an_openai_stream_is_masked_event_by_event_and_the_verdict_counts() {
    let text = format!("Write to {EMAIL}, key {KEY}, thanks.");
    let events = openai_events(&text);
    let n = events.len();
    let m = ResponseMask::new(
        plan_with(&[]),
        Server::Openai,
        Some("text/event-stream; charset=utf-8"),
        None,
        None,
    )
    .expect("scannable");
    let handle = m.handle();
    assert_eq!(handle.verdict(), Verdict::Clean, "nothing found yet");
    let (b, mut rx) = body(frames(events), chain_of(m)).await;
    let (out, _, err) = drain(b).await;
    assert_eq!(err, None);
    // One frame in, one frame out: no event waits for a later one.
    assert_eq!(out.len(), n, "every event went out as its own frame");
    let all: Vec<u8> = out.concat();
    let got: String = sse_json(&all)
        .iter()
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(
        got,
        "Write to [REDACTED:email], key [REDACTED:openai_key], thanks."
    );
    assert!(all.ends_with(b"data: [DONE]\n\n"));
    assert_eq!(
        handle.verdict(),
        Verdict::Masked {
            counts: vec![("openai_key".into(), 1), ("email".into(), 1)]
        }
    );
    assert_eq!(rx.try_recv().expect("record").outcome, Outcome::Complete);
}

#[tokio::test]
async fn chunks_cut_anywhere_give_the_same_bytes() {
    let text = format!("mail {EMAIL} and 4111 1111 1111 1111 ok");
    let whole: String = openai_events(&text).concat();
    let run = |parts: Vec<String>| async move {
        let m = ResponseMask::new(
            plan_with(&[]),
            Server::Openai,
            Some("text/event-stream"),
            None,
            None,
        )
        .expect("scannable");
        let (b, _rx) = body(frames(parts), chain_of(m)).await;
        let (out, _, err) = drain(b).await;
        assert_eq!(err, None);
        out.concat()
    };
    let reference = run(vec![whole.clone()]).await;
    for step in [1, 2, 7, 64] {
        let parts: Vec<String> = whole
            .as_bytes()
            .chunks(step)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        // Chunks of ASCII only (the sample's SSE framing is ASCII-escaped JSON), so lossy
        // conversion keeps the bytes.
        assert_eq!(parts.concat(), whole);
        assert_eq!(run(parts).await, reference, "chunks of {step}");
    }
}

#[tokio::test]
async fn a_block_ends_an_anthropic_stream_with_its_own_error_event() {
    let mut events = vec![
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\"}}\n\n".to_string(),
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_string(),
    ];
    for d in [
        "Sure, it is jane.do",
        "e@exam",
        "ple.com and more text after it",
    ] {
        events.push(format!(
            "event: content_block_delta\ndata: {}\n\n",
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":d}})
        ));
    }
    events.push(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n".into(),
    );
    let m = ResponseMask::new(
        plan_with(&["email"]),
        Server::Anthropic,
        Some("text/event-stream"),
        None,
        None,
    )
    .expect("scannable");
    let handle = m.handle();
    let (b, mut rx) = body(frames(events), chain_of(m)).await;
    let (out, _, err) = drain(b).await;
    assert_eq!(err, None, "the error event is the stream's end");
    let all = String::from_utf8(out.concat()).expect("utf-8");
    assert!(
        !all.contains("jane") && !all.contains("example.com"),
        "{all}"
    );
    let last = all.trim_end().rsplit("\n\n").next().expect("last event");
    assert!(last.starts_with("event: error\ndata: "), "{last}");
    let v: Value = serde_json::from_str(last.split("data: ").nth(1).expect("data")).expect("json");
    assert_eq!(v["type"], "error");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("email")
    );
    assert_eq!(
        handle.verdict(),
        Verdict::Blocked {
            detector: "email".into()
        }
    );
    assert!(matches!(
        rx.try_recv().expect("record").outcome,
        Outcome::Ended(_)
    ));
}

#[tokio::test]
async fn a_json_body_is_masked_in_its_strings_and_stays_json() {
    let resp = json!({"choices":[{"message":{"role":"assistant","content":"mail jane.doe\u{40}example.com"}}],"usage":{"total_tokens":4111111111111111u64}});
    let text = resp.to_string().replace('@', "\\u0040");
    let (a, b2) = text.split_at(text.find("\\u00").expect("escape") + 3);
    let m = ResponseMask::new(
        plan_with(&[]),
        Server::Openai,
        Some("application/json"),
        None,
        None,
    )
    .expect("scannable");
    let handle = m.handle();
    let (b, _rx) = body(frames(vec![a.into(), b2.into()]), chain_of(m)).await;
    let (out, _, err) = drain(b).await;
    assert_eq!(err, None);
    let v: Value = serde_json::from_slice(&out.concat()).expect("JSON");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "mail [REDACTED:email]"
    );
    assert_eq!(
        v["usage"]["total_tokens"], 4111111111111111u64,
        "numbers are not strings"
    );
    assert_eq!(
        handle.verdict(),
        Verdict::Masked {
            counts: vec![("email".into(), 1)]
        }
    );
}

#[tokio::test]
async fn invalid_json_fails_closed() {
    let m = ResponseMask::new(
        plan_with(&[]),
        Server::Openai,
        Some("application/json"),
        None,
        None,
    )
    .expect("scannable");
    let handle = m.handle();
    let (b, _rx) = body(
        frames(vec![
            "{\"a\":\"jane.doe@exa".into(),
            "mple.com\" oops}".into(),
        ]),
        chain_of(m),
    )
    .await;
    let (out, _, err) = drain(b).await;
    assert!(err.is_some(), "the body fails, it does not end cleanly");
    assert!(!out.concat().windows(4).any(|w| w == b"jane"));
    assert_eq!(
        handle.verdict(),
        Verdict::Unscanned {
            reason: Unscannable::Error
        }
    );
}

#[tokio::test]
async fn ollama_ndjson_and_plain_text_with_restored_pseudonyms() {
    use zeroize::Zeroizing;
    let lookup: Lookup = Arc::new(|t: &str| {
        (t == "[email:0123456789ab]").then(|| Zeroizing::new(EMAIL.to_string()))
    });
    let lines: Vec<String> = [
        "Dear [email:01",
        "23456789ab], card 4111 1111 ",
        "1111 1111.",
    ]
    .iter()
    .map(|d| {
        format!(
            "{}\n",
            json!({"model":"llama3","message":{"role":"assistant","content":d},"done":false})
        )
    })
    .chain(std::iter::once(format!(
        "{}\n",
        json!({"model":"llama3","message":{"role":"assistant","content":""},"done":true})
    )))
    .collect();
    let n = lines.len();
    let m = ResponseMask::new(
        plan_with(&[]),
        Server::Ollama,
        Some("application/x-ndjson"),
        None,
        Some(lookup.clone()),
    )
    .expect("scannable");
    let handle = m.handle();
    let (b, _rx) = body(frames(lines), chain_of(m)).await;
    let (out, _, _) = drain(b).await;
    assert_eq!(out.len(), n);
    let got: String = out
        .iter()
        .map(|l| {
            serde_json::from_slice::<Value>(l).expect("json line")["message"]["content"]
                .as_str()
                .expect("content")
                .to_string()
        })
        .collect();
    assert_eq!(got, format!("Dear {EMAIL}, card [REDACTED:payment_card]."));
    assert_eq!(handle.restored(), 1);
    // Plain text.
    let m = ResponseMask::new(
        plan_with(&[]),
        Server::Openai,
        Some("text/plain"),
        None,
        Some(lookup),
    )
    .expect("scannable");
    let (b, _rx) = body(
        frames(vec![
            "to [email:0123456789ab] from jane.d".into(),
            "oe@example.com".into(),
        ]),
        chain_of(m),
    )
    .await;
    let (out, _, _) = drain(b).await;
    assert_eq!(
        String::from_utf8(out.concat()).expect("utf-8"),
        format!("to {EMAIL} from [REDACTED:email]")
    );
}

#[test]
fn the_layer_follows_the_content_type_and_unscannable_bodies_say_why() {
    let of = |s, ct, ce| Layer::of(s, ct, ce);
    assert_eq!(
        of(Server::Openai, Some("text/event-stream"), None),
        Ok(Layer::Sse)
    );
    assert_eq!(
        of(Server::Ollama, Some("application/x-ndjson"), None),
        Ok(Layer::Ndjson)
    );
    assert_eq!(of(Server::Ollama, None, None), Ok(Layer::Ndjson));
    assert_eq!(
        of(
            Server::Openai,
            Some("Application/JSON; charset=utf-8"),
            None
        ),
        Ok(Layer::Json)
    );
    assert_eq!(
        of(Server::Openai, Some("application/problem+json"), None),
        Ok(Layer::Json)
    );
    assert_eq!(
        of(Server::Openai, Some("text/plain"), Some("identity")),
        Ok(Layer::Text)
    );
    assert_eq!(of(Server::Openai, None, None), Ok(Layer::Text));
    assert_eq!(
        of(Server::Openai, Some("application/json"), Some("gzip")),
        Err(Unscannable::Compressed)
    );
    assert_eq!(
        of(Server::Openai, Some("application/json"), Some("br")),
        Err(Unscannable::Compressed)
    );
    assert_eq!(
        of(Server::Triton, Some("application/grpc+proto"), None),
        Err(Unscannable::Grpc)
    );
    assert_eq!(
        of(
            Server::Openai,
            Some("multipart/form-data; boundary=x"),
            None
        ),
        Err(Unscannable::Multipart)
    );
    assert_eq!(
        of(Server::Openai, Some("image/png"), None),
        Err(Unscannable::Binary)
    );
    assert_eq!(
        of(Server::Openai, Some("application/octet-stream"), None),
        Err(Unscannable::Binary)
    );
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().expect("hv"),
    );
    h.insert(http::header::CONTENT_ENCODING, "gzip".parse().expect("hv"));
    assert!(matches!(
        ResponseMask::from_headers(plan_with(&[]), Server::Openai, &h, None),
        Err(Unscannable::Compressed)
    ));
}

#[tokio::test]
async fn an_over_long_event_ends_the_stream_as_unscanned() {
    let m = ResponseMask::new(
        plan_with(&[]),
        Server::Openai,
        Some("text/event-stream"),
        None,
        None,
    )
    .expect("scannable");
    let handle = m.handle();
    let big = format!("data: {{\"x\":\"{}", "a".repeat(MAX_EVENT + 10));
    let (b, _rx) = body(frames(vec!["data: {\"x\":1}\n\n".into(), big]), chain_of(m)).await;
    let (out, _, err) = drain(b).await;
    assert_eq!(err, None);
    let all = String::from_utf8(out.concat()).expect("utf-8");
    assert!(all.starts_with("data: {\"x\":1}\n\n"));
    assert!(all.contains("sluice_response_unscannable"));
    assert_eq!(
        handle.verdict(),
        Verdict::Unscanned {
            reason: Unscannable::OverLimit
        }
    );
}

#[tokio::test]
async fn tool_arguments_that_are_not_json_end_the_stream_unscanned() {
    let events = vec![
        format!(
            "data: {}\n\n",
            json!({"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]})
        ),
        format!(
            "data: {}\n\n",
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{oops"}}]},"finish_reason":null}]})
        ),
        "data: [DONE]\n\n".to_string(),
    ];
    let m = ResponseMask::new(
        plan_with(&[]),
        Server::Openai,
        Some("text/event-stream"),
        None,
        None,
    )
    .expect("scannable");
    let handle = m.handle();
    let (b, _rx) = body(frames(events), chain_of(m)).await;
    let (out, _, err) = drain(b).await;
    assert_eq!(err, None);
    let all = String::from_utf8(out.concat()).expect("utf-8");
    assert!(!all.contains("oops") && !all.contains("[DONE]"), "{all}");
    assert!(all.trim_end().ends_with('}') && all.contains("sluice_response_unscannable"));
    assert_eq!(
        handle.verdict(),
        Verdict::Unscanned {
            reason: Unscannable::Error
        }
    );
}

#[test]
fn a_response_header_given_twice_is_unscannable() {
    let mut h = http::HeaderMap::new();
    h.append(
        http::header::CONTENT_TYPE,
        "application/json".parse().expect("v"),
    );
    h.append(
        http::header::CONTENT_ENCODING,
        "identity".parse().expect("v"),
    );
    h.append(http::header::CONTENT_ENCODING, "gzip".parse().expect("v"));
    let r = ResponseMask::from_headers(plan_with(&[]), Server::Openai, &h, None);
    assert!(matches!(r, Err(Unscannable::Compressed)), "{:?}", r.err());
    h.remove(http::header::CONTENT_ENCODING);
    h.append(
        http::header::CONTENT_TYPE,
        "application/octet-stream".parse().expect("v"),
    );
    let r = ResponseMask::from_headers(plan_with(&[]), Server::Openai, &h, None);
    assert!(matches!(r, Err(Unscannable::Binary)), "{:?}", r.err());
    h.remove(http::header::CONTENT_TYPE);
    h.insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().expect("v"),
    );
    assert!(ResponseMask::from_headers(plan_with(&[]), Server::Openai, &h, None).is_ok());
}
