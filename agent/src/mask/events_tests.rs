use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::{
    filter::framing::{Framing, Units},
    mask::{Action, Scanner},
};

const EMAIL: &str = "jane.doe@example.com";
const KEY: &str = "sk-proj-Ab3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7dE9f";

fn plan() -> Plan {
    Plan::uniform(Arc::new(Scanner::builtin()), Action::Redact)
}

fn reference(plan: &Plan, text: &str) -> String {
    String::from_utf8(plan.mask(text.as_bytes(), &mut plan.counts())).expect("utf-8")
}

/// Runs `stream` cut at `cuts` through the framing and the masker; returns the output
/// events (each one unit) and the masker.
fn run(wire: Wire, plan: &Plan, stream: &[u8], cuts: &[usize]) -> (Vec<Bytes>, EventMasker) {
    let framing = match wire {
        Wire::Sse => Framing::Sse,
        Wire::Ndjson => Framing::Ndjson,
    };
    let mut units = Units::new(framing, 1 << 20);
    let mut m = EventMasker::new(wire, plan.clone(), None);
    let mut out = BytesMut::new();
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
        let c = c.clamp(at, stream.len());
        let end = c == stream.len();
        for u in units.push(&stream[at..c], end).expect("bounded") {
            m.event(&u, &mut out).expect("masks");
            assert!(m.held() <= m.max_hold() * 4, "held {}", m.held());
        }
        at = c;
        if end {
            break;
        }
    }
    m.finish(&mut out).expect("finish");
    assert_eq!(m.held(), 0);
    let mut again = Units::new(framing, 1 << 20);
    let events = again.push(&out, true).expect("bounded");
    (events, m)
}

/// The JSON data of an SSE event (`None` for `[DONE]` or no data); asserts the framing.
fn sse_data(ev: &[u8]) -> Option<Value> {
    let s = std::str::from_utf8(ev).expect("utf-8 event");
    assert!(
        s.ends_with("\n\n"),
        "an event ends with a blank line: {s:?}"
    );
    let data: Vec<&str> = s.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert!(data.len() <= 1);
    let d = data.first()?;
    if *d == "[DONE]" {
        return None;
    }
    Some(serde_json::from_str(d).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {d}")))
}

/// Cuts `text` into deltas at `points` (moved to character boundaries).
fn deltas(text: &str, points: &[usize]) -> Vec<String> {
    let mut cuts: Vec<usize> = points
        .iter()
        .map(|&p| {
            let mut p = p.min(text.len());
            while !text.is_char_boundary(p) {
                p += 1;
            }
            p
        })
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut at = 0;
    for c in cuts.into_iter().chain(std::iter::once(text.len())) {
        out.push(text[at..c].to_string());
        at = c;
    }
    out
}

fn openai_stream(parts: &[String]) -> Vec<u8> {
    let mut s = String::new();
    let head =
        json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o"});
    let ev = |choice: Value| {
        let mut v = head.clone();
        v["choices"] = json!([choice]);
        format!("data: {v}\n\n")
    };
    s += &ev(json!({"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}));
    for p in parts {
        s += &ev(json!({"index":0,"delta":{"content":p},"finish_reason":null}));
    }
    s += &ev(json!({"index":0,"delta":{},"finish_reason":"stop"}));
    s += ": keep-alive\n\n";
    s += "data: [DONE]\n\n";
    s.into_bytes()
}

fn openai_text(events: &[Bytes]) -> String {
    events
        .iter()
        .filter_map(|e| sse_data(e))
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

fn sample_text() -> String {
    format!("Write to {EMAIL} — the key is {KEY}; card 4111 1111 1111 1111. ünï 日本 😀 done.")
}

#[test]
fn a_secret_split_across_openai_deltas_is_caught_and_events_are_kept() {
    let p = plan();
    let text = sample_text();
    // One character per delta: every secret is split across many events.
    let parts: Vec<String> = text.chars().map(String::from).collect();
    let stream = openai_stream(&parts);
    let n_in = Units::new(Framing::Sse, 1 << 20)
        .push(&stream, true)
        .expect("bounded")
        .len();
    let (events, m) = run(Wire::Sse, &p, &stream, &[]);
    assert_eq!(events.len(), n_in, "event count preserved");
    let got = openai_text(&events);
    assert_eq!(got, reference(&p, &text));
    assert!(!got.contains(EMAIL) && !got.contains("4111"));
    assert_eq!(m.counts().total(), 3);
    // Events without text pass byte for byte.
    assert_eq!(&events[events.len() - 2][..], b": keep-alive\n\n");
    assert_eq!(&events[events.len() - 1][..], b"data: [DONE]\n\n");
    // Chunked one byte at a time: the same bytes.
    let cuts: Vec<usize> = (1..stream.len()).collect();
    let (again, _) = run(Wire::Sse, &p, &stream, &cuts);
    assert_eq!(again, events);
}

#[test]
fn other_event_shapes_and_untouched_events() {
    let p = plan();
    // Legacy completions (`text`), a second choice, CRLF framing, a non-JSON event.
    let stream = concat!(
        "data: {\"choices\":[{\"index\":1,\"text\":\"mail jane.doe@exa\",\"finish_reason\":null}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"text\":\"plain\",\"finish_reason\":null}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":1,\"text\":\"mple.com ok\",\"finish_reason\":\"stop\"}]}\r\n\r\n",
        "event: note\ndata: hello jane.doe@example.com\n\n",
        "data: {\"id\":\"x\",\"usage\":{\"total_tokens\":5}}\n\n",
    );
    let (events, _) = run(Wire::Sse, &p, stream.as_bytes(), &[]);
    let texts: Vec<String> = events[..3]
        .iter()
        .map(|e| {
            assert!(e.ends_with(b"\r\n\r\n"));
            let v: Value = serde_json::from_str(
                std::str::from_utf8(e)
                    .expect("utf8")
                    .trim()
                    .strip_prefix("data: ")
                    .expect("data"),
            )
            .expect("json");
            v["choices"][0]["text"].as_str().expect("text").to_string()
        })
        .collect();
    assert_eq!(texts[0].clone() + &texts[2], "mail [REDACTED:email] ok");
    assert_eq!(
        &events[4][..],
        &stream.as_bytes()[stream.find("data: {\"id\"").expect("usage")..]
    );
    assert_eq!(
        &events[3][..],
        b"event: note\ndata: hello [REDACTED:email]\n\n"
    );
}

fn anthropic_stream(parts: &[String], json_parts: &[String]) -> Vec<u8> {
    let mut s = String::new();
    let mut ev = |name: &str, v: Value| s += &format!("event: {name}\ndata: {v}\n\n");
    ev(
        "message_start",
        json!({"type":"message_start","message":{"id":"msg_1","content":[],"model":"claude"}}),
    );
    ev(
        "content_block_start",
        json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
    );
    ev("ping", json!({"type":"ping"}));
    for p in parts {
        ev(
            "content_block_delta",
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":p}}),
        );
    }
    ev(
        "content_block_stop",
        json!({"type":"content_block_stop","index":0}),
    );
    ev(
        "content_block_start",
        json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t1","name":"send","input":{}}}),
    );
    for p in json_parts {
        ev(
            "content_block_delta",
            json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":p}}),
        );
    }
    ev(
        "content_block_stop",
        json!({"type":"content_block_stop","index":1}),
    );
    ev(
        "message_delta",
        json!({"type":"message_delta","delta":{"stop_reason":"end_turn"}}),
    );
    ev("message_stop", json!({"type":"message_stop"}));
    s.into_bytes()
}

#[test]
fn anthropic_text_and_tool_input_blocks() {
    let p = plan();
    let text = sample_text();
    let parts = deltas(&text, &[3, 15, 16, 30, 45, 60, 61]);
    let input =
        format!("{{\"to\": \"jane.doe\\u0040example.com\", \"n\": [1, 2], \"note\": \"{KEY}\"}}");
    let json_parts = deltas(&input, &[5, 14, 20, 21, 40, 70]);
    let stream = anthropic_stream(&parts, &json_parts);
    let cuts: Vec<usize> = (0..stream.len()).step_by(7).collect();
    let (events, _) = run(Wire::Sse, &p, &stream, &cuts);
    let (mut got, mut got_json, mut added) = (String::new(), String::new(), 0);
    for (i, e) in events.iter().enumerate() {
        let v = sse_data(e).expect("json data");
        let name = std::str::from_utf8(e)
            .expect("utf8")
            .lines()
            .next()
            .expect("line");
        assert_eq!(
            name,
            format!("event: {}", v["type"].as_str().expect("type"))
        );
        if v["type"] == "content_block_delta" {
            match v["index"].as_i64() {
                Some(0) => got += v["delta"]["text"].as_str().expect("text"),
                _ => got_json += v["delta"]["partial_json"].as_str().expect("json"),
            }
            if events
                .get(i + 1)
                .and_then(|n| sse_data(n))
                .is_some_and(|n| n["type"] == "content_block_stop")
            {
                added += 1;
            }
        }
    }
    assert_eq!(got, reference(&p, &text));
    let tool: Value = serde_json::from_str(&got_json).expect("the tool input is still JSON");
    assert_eq!(
        tool,
        json!({"to":"[REDACTED:email]","n":[1,2],"note":"[REDACTED:openai_key]"})
    );
    // At most one delta event added per block (its held-back rest, before its stop).
    let n_in = Units::new(Framing::Sse, 1 << 20)
        .push(&stream, true)
        .expect("b")
        .len();
    assert!(
        events.len() <= n_in + 2 && added <= 2,
        "{} events for {n_in}",
        events.len()
    );
}

#[test]
fn ollama_ndjson_lines() {
    let p = plan();
    let text = sample_text();
    let mut s = String::new();
    for d in deltas(&text, &[10, 11, 12, 25, 26, 50]) {
        s += &format!(
            "{}\n",
            json!({"model":"llama3","created_at":"t","message":{"role":"assistant","content":d},"done":false})
        );
    }
    s += &format!(
        "{}\n",
        json!({"model":"llama3","created_at":"t","message":{"role":"assistant","content":""},"done":true,"eval_count":9})
    );
    let cuts: Vec<usize> = (0..s.len()).step_by(5).collect();
    let (lines, _) = run(Wire::Ndjson, &p, s.as_bytes(), &cuts);
    assert_eq!(lines.len(), s.lines().count(), "line count preserved");
    let got: String = lines
        .iter()
        .map(|l| {
            assert!(l.ends_with(b"\n"));
            let v: Value = serde_json::from_slice(l).expect("json line");
            v["message"]["content"]
                .as_str()
                .expect("content")
                .to_string()
        })
        .collect();
    assert_eq!(got, reference(&p, &text));
    // /api/generate's `response`.
    let g = format!(
        "{}\n{}\n",
        json!({"response":"mail jane.doe@","done":false}),
        json!({"response":"example.com","done":true})
    );
    let (lines, _) = run(Wire::Ndjson, &p, g.as_bytes(), &[]);
    let got: String = lines
        .iter()
        .map(|l| {
            serde_json::from_slice::<Value>(l).expect("json")["response"]
                .as_str()
                .expect("r")
                .to_string()
        })
        .collect();
    assert_eq!(got, "mail [REDACTED:email]");
}

#[test]
fn openai_tool_call_arguments_are_masked_as_json() {
    let p = plan();
    let args = format!("{{\"email\":\"{EMAIL}\",\"k\":\"{KEY}\"}}");
    let mut s = String::new();
    for (i, d) in deltas(&args, &[3, 12, 13, 20, 40]).into_iter().enumerate() {
        let call = if i == 0 {
            json!({"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":d}})
        } else {
            json!({"index":0,"function":{"arguments":d}})
        };
        s += &format!(
            "data: {}\n\n",
            json!({"choices":[{"index":0,"delta":{"tool_calls":[call]},"finish_reason":null}]})
        );
    }
    s += &format!(
        "data: {}\n\n",
        json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]})
    );
    let (events, _) = run(Wire::Sse, &p, s.as_bytes(), &[]);
    assert_eq!(events.len(), s.matches("\n\n").count());
    let got: String = events
        .iter()
        .filter_map(|e| sse_data(e))
        .filter_map(|v| {
            v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .map(String::from)
        })
        .collect();
    let v: Value = serde_json::from_str(&got).expect("arguments stay JSON");
    assert_eq!(
        v,
        json!({"email":"[REDACTED:email]","k":"[REDACTED:openai_key]"})
    );
}

#[test]
fn a_block_finding_is_reported_before_its_event_goes_out() {
    let sc = Arc::new(Scanner::builtin());
    let email = sc
        .detectors()
        .iter()
        .position(|d| d.name() == "email")
        .expect("email");
    let mut actions = vec![None; sc.detectors().len()];
    actions[email] = Some(Action::Block);
    let p = Plan::new(sc, actions);
    let parts: Vec<String> = sample_text().chars().map(String::from).collect();
    let stream = openai_stream(&parts);
    let mut units = Units::new(Framing::Sse, 1 << 20);
    let mut m = EventMasker::new(Wire::Sse, p, None);
    let mut sent = BytesMut::new();
    let mut blocked = false;
    for u in units.push(&stream, true).expect("b") {
        let mut out = BytesMut::new();
        m.event(&u, &mut out).expect("masks");
        if m.blocked() {
            blocked = true;
            break;
        }
        sent.extend_from_slice(&out);
    }
    assert!(blocked);
    let (events, _) = (
        Units::new(Framing::Sse, 1 << 20)
            .push(&sent, true)
            .expect("b"),
        (),
    );
    let text = openai_text(&events);
    assert!(
        !text.contains('@'),
        "nothing of the email went out: {text:?}"
    );
}

#[test]
fn pseudonyms_are_restored_across_deltas() {
    use zeroize::Zeroizing;
    let lookup: Lookup = Arc::new(|t: &str| {
        (t == "[email:0123456789ab]").then(|| Zeroizing::new(EMAIL.to_string()))
    });
    let text = "Hello [email:0123456789ab], and [email:ffffffffffff].";
    let stream = openai_stream(&deltas(text, &[7, 8, 14, 30, 35]));
    let mut units = Units::new(Framing::Sse, 1 << 20);
    // Nothing on in the plan: only restoring.
    let p = Plan::new(Arc::new(Scanner::builtin()), Vec::new());
    let mut m = EventMasker::new(Wire::Sse, p, Some(lookup));
    let mut out = BytesMut::new();
    for u in units.push(&stream, true).expect("b") {
        m.event(&u, &mut out).expect("masks");
    }
    m.finish(&mut out).expect("finish");
    let events = Units::new(Framing::Sse, 1 << 20)
        .push(&out, true)
        .expect("b");
    assert_eq!(
        openai_text(&events),
        format!("Hello {EMAIL}, and [email:ffffffffffff].")
    );
    assert_eq!(m.restored(), 1);
}

#[test]
fn a_stream_cut_before_its_finish_flushes_into_an_added_event() {
    let p = plan();
    let mut s = String::new();
    for d in ["mail jane.doe@", "example.com now"] {
        s += &format!(
            "data: {}\n\n",
            json!({"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":d},"finish_reason":null}]})
        );
    }
    let (events, _) = run(Wire::Sse, &p, s.as_bytes(), &[]);
    assert_eq!(events.len(), 3, "one added event carries the rest");
    let last = sse_data(&events[2]).expect("json");
    assert_eq!(last["id"], "c1");
    assert_eq!(openai_text(&events), "mail [REDACTED:email] now");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any split of the text into deltas and any chunking of the byte stream give the same
    /// client-visible text as the whole text masked, in the same number of valid events.
    #[test]
    fn any_deltas_and_chunking_match_the_whole(
        pieces in proptest::collection::vec(prop_oneof![
            Just(EMAIL.to_string()), Just(KEY.to_string()), Just("4111 1111 1111 1111".to_string()),
            Just("password=hunter2".to_string()), Just("日本😀é".to_string()), Just("\"\\\n".to_string()),
            "[a-zA-Z0-9 .:@_-]{0,12}",
        ], 1..12),
        points in proptest::collection::vec(0usize..400, 0..30),
        mut cuts in proptest::collection::vec(0usize..6000, 0..30),
    ) {
        let p = plan();
        let text = pieces.concat();
        let stream = openai_stream(&deltas(&text, &points));
        cuts.sort_unstable();
        let (events, _) = run(Wire::Sse, &p, &stream, &cuts);
        let n_in = Units::new(Framing::Sse, 1 << 20).push(&stream, true).expect("b").len();
        prop_assert_eq!(events.len(), n_in);
        prop_assert_eq!(openai_text(&events), reference(&p, &text));
        let (whole, _) = run(Wire::Sse, &p, &stream, &[]);
        prop_assert_eq!(events, whole);
    }
}

#[test]
fn a_pretty_printed_event_keeps_its_data_lines() {
    let p = plan();
    let stream = "id: 7\ndata: {\"choices\": [{\"index\": 0,\ndata:   \"delta\": {\"content\": \"mail jane.doe@example.com\"},\ndata:   \"finish_reason\": \"stop\"}]}\n\n";
    let (events, _) = run(Wire::Sse, &p, stream.as_bytes(), &[]);
    assert_eq!(events.len(), 1);
    let s = std::str::from_utf8(&events[0]).expect("utf-8");
    assert!(s.starts_with("id: 7\n") && s.ends_with("\n\n"), "{s:?}");
    let data: Vec<&str> = s.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.len(), 3, "{s:?}");
    let v: Value = serde_json::from_str(&data.join("\n")).expect("json");
    assert_eq!(v["choices"][0]["delta"]["content"], "mail [REDACTED:email]");
}

#[test]
fn repeated_strings_are_counted_every_time_and_a_block_is_never_remembered_as_clean() {
    let ev = Bytes::from(format!(
        "data: {}\n\n",
        json!({"model": "jane.doe@example.com", "choices": []})
    ));
    let mut m = EventMasker::new(Wire::Sse, plan(), None);
    let mut out = BytesMut::new();
    m.event(&ev, &mut out).expect("masks");
    m.event(&ev, &mut out).expect("masks");
    assert_eq!(m.counts().total(), 2);
    let sc = Arc::new(Scanner::builtin());
    let email = sc
        .detectors()
        .iter()
        .position(|d| d.name() == "email")
        .expect("email");
    let mut actions = vec![None; sc.detectors().len()];
    actions[email] = Some(Action::Block);
    let mut m = EventMasker::new(Wire::Sse, Plan::new(sc.clone(), actions), None);
    for _ in 0..2 {
        m.event(&ev, &mut BytesMut::new()).expect("masks");
        assert!(m.blocked());
        // What the filter does after reading the verdict.
        let mut total = Plan::new(sc.clone(), Vec::new()).counts();
        m.move_counts_to(&mut total);
        assert!(!m.blocked());
    }
}

#[test]
fn tgi_tokens_and_invalid_tool_json() {
    let p = plan();
    let mut s = String::new();
    for t in ["mail ", "jane.doe", "@example", ".com", " bye"] {
        s += &format!(
            "data: {}\n\n",
            json!({"token":{"id":1,"text":t,"logprob":-0.1,"special":false},"generated_text":null,"details":null})
        );
    }
    s += &format!(
        "data: {}\n\n",
        json!({"token":{"id":2,"text":"","logprob":0.0,"special":true},"generated_text":"mail jane.doe@example.com bye","details":null})
    );
    let (events, _) = run(Wire::Sse, &p, s.as_bytes(), &[]);
    assert_eq!(events.len(), 6);
    let got: String = events
        .iter()
        .filter_map(|e| sse_data(e))
        .map(|v| v["token"]["text"].as_str().expect("text").to_string())
        .collect();
    assert_eq!(got, "mail [REDACTED:email] bye");
    let last = sse_data(&events[5]).expect("json");
    assert_eq!(last["generated_text"], "mail [REDACTED:email] bye");
    // Tool arguments that are not JSON: an error, for the filter to fail closed on.
    let bad = format!(
        "data: {}\n\n",
        json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\" 1}"}}]},"finish_reason":null}]})
    );
    let mut m = EventMasker::new(Wire::Sse, p, None);
    let r = m.event(&Bytes::from(bad), &mut BytesMut::new());
    assert!(matches!(r, Err(EventError::Json(_))), "{r:?}");
}

#[test]
fn an_unterminated_last_event_is_masked_too() {
    let p = plan();
    for stream in [
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"mail jane.doe@example.com\"},\"finish_reason\":\"stop\"}]}",
        "event: x\r\ndata: {\"note\":\"mail jane.doe@example.com\"}",
        "data: mail jane.doe@example.com",
    ] {
        let (events, _) = run(Wire::Sse, &p, stream.as_bytes(), &[]);
        let all: Vec<u8> = events.concat();
        let s = String::from_utf8(all).expect("utf-8");
        assert!(!s.contains("jane"), "{s:?}");
        assert!(s.contains("[REDACTED:email]"), "{s:?}");
        assert!(
            !s.ends_with('\n'),
            "not terminated by the masker either: {s:?}"
        );
    }
    // NDJSON: an unterminated last line.
    let (lines, _) = run(
        Wire::Ndjson,
        &p,
        br#"{"response":"jane.doe@example.com","done":true}"#,
        &[],
    );
    assert_eq!(
        &lines.concat()[..],
        br#"{"response":"[REDACTED:email]","done":true}"#
    );
}

#[test]
fn other_sse_fields_are_masked_as_text() {
    let p = plan();
    let stream =
        "id: jane.doe@example.com\r\n: note jane.doe@example.com\r\ndata: {\"x\":1}\r\n\r\n";
    let (events, _) = run(Wire::Sse, &p, stream.as_bytes(), &[]);
    assert_eq!(
        String::from_utf8(events.concat()).expect("utf-8"),
        "id: [REDACTED:email]\r\n: note [REDACTED:email]\r\ndata: {\"x\":1}\r\n\r\n"
    );
}

#[test]
fn openai_responses_api_deltas() {
    let p = plan();
    let text = sample_text();
    let mut s = String::new();
    let mut ev = |v: Value| {
        s += &format!(
            "event: {}\ndata: {v}\n\n",
            v["type"].as_str().expect("type")
        );
    };
    ev(
        json!({"type":"response.created","sequence_number":0,"response":{"id":"resp_1","output":[]}}),
    );
    for (i, d) in deltas(&text, &[4, 9, 10, 22, 23, 40, 70])
        .into_iter()
        .enumerate()
    {
        ev(
            json!({"type":"response.output_text.delta","item_id":"msg_1","output_index":0,"content_index":0,"delta":d,"sequence_number":i + 1}),
        );
    }
    ev(
        json!({"type":"response.output_text.done","item_id":"msg_1","output_index":0,"content_index":0,"text":text,"sequence_number":99}),
    );
    let args = format!("{{\"to\":\"{EMAIL}\"}}");
    for d in deltas(&args, &[3, 10, 11]) {
        ev(
            json!({"type":"response.function_call_arguments.delta","item_id":"fc_1","output_index":1,"delta":d}),
        );
    }
    ev(
        json!({"type":"response.function_call_arguments.done","item_id":"fc_1","output_index":1,"arguments":args}),
    );
    ev(
        json!({"type":"response.completed","response":{"id":"resp_1","output":[{"content":[{"text":text}]}]}}),
    );
    let (events, _) = run(Wire::Sse, &p, s.as_bytes(), &[5, 77, 300]);
    let (mut got, mut got_args, mut done_text) = (String::new(), String::new(), String::new());
    for e in &events {
        let v = sse_data(e).expect("json");
        let first = std::str::from_utf8(e)
            .expect("utf-8")
            .lines()
            .next()
            .expect("line")
            .to_string();
        assert_eq!(
            first,
            format!("event: {}", v["type"].as_str().expect("type"))
        );
        match v["type"].as_str().expect("type") {
            "response.output_text.delta" => {
                assert_eq!(v["item_id"], "msg_1");
                got += v["delta"].as_str().expect("delta");
            }
            "response.function_call_arguments.delta" => got_args += v["delta"].as_str().expect("d"),
            "response.output_text.done" => done_text = v["text"].as_str().expect("text").into(),
            _ => {}
        }
    }
    assert_eq!(got, reference(&p, &text));
    assert_eq!(
        done_text, got,
        "the done event's whole text is masked the same way"
    );
    let a: Value = serde_json::from_str(&got_args).expect("arguments stay JSON");
    assert_eq!(a, json!({"to":"[REDACTED:email]"}));
}

#[test]
fn a_string_that_does_not_decode_is_an_error_not_a_pass() {
    let ev = Bytes::from_static(b"data: {\"note\":\"\\ud800 jane.doe@example.com\"}\n\n");
    let mut m = EventMasker::new(Wire::Sse, plan(), None);
    let mut out = BytesMut::new();
    let r = m.event(&ev, &mut out);
    assert!(matches!(r, Err(EventError::Json(_))), "{r:?}");
    assert!(!out.windows(4).any(|w| w == b"jane"));
}
