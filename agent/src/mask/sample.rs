//! A realistic mixed body for measuring the engine (the bench and the throughput test
//! share it, so their numbers are comparable).

/// A realistic mixed body: chat-completion SSE events, prose, code, logs with numbers and
/// JSON, with a secret or PII value about every 2 KiB.
pub fn mixed(target: usize) -> Vec<u8> {
    let pieces: &[&str] = &[
        "data: {\"id\":\"chatcmpl-9x8Yz\",\"object\":\"chat.completion.chunk\",\"created\":1731000000,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" the\"},\"finish_reason\":null}]}\n\n",
        "The service retries failed requests with exponential backoff, up to five attempts, and records each attempt in the audit log so an operator can see why a request took longer than expected. ",
        "fn main() -> Result<(), Box<dyn Error>> { let cfg = Config::load(\"/etc/app.yaml\")?; for (i, item) in cfg.items.iter().enumerate() { println!(\"{i}: {item:?}\"); } Ok(()) }\n",
        "2026-11-26T06:09:01.123Z INFO request_id=3f2a9c1e status=200 latency_ms=41 bytes=5123 upstream=10.0.3.17:8080 route=/v1/chat/completions\n",
        "{\"model\":\"llama3.1:8b\",\"created_at\":\"2026-11-26T06:09:01Z\",\"message\":{\"role\":\"assistant\",\"content\":\"Sure, here is the summary.\"},\"done\":false}\n",
        "Kubernetes v1.29.3 on EKS, 8 vCPU, 32 GiB; p99 120ms; order #58213 shipped on 2026-11-20 to the Berlin warehouse, commit 9fceb02d0ae598e95dc970b74767f19372d61af8.\n",
        "Les modèles génèrent du texte — ünïcødé ✓ 日本語のテキストも含まれます。 ",
    ];
    let secrets: &[&str] = &[
        "contact jane.doe@example.com ",
        "key sk-proj-Ab3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7dE9f ",
        "card 4111 1111 1111 1111 ",
        "AKIAQ3EGRSZ7XN5TB2LP ",
        "call +44 20 7946 0958 ",
        "password=hunter2 ",
        "ghp_R8b2Xk9mQ4vN7wE1tY6uI3oP0aS5dF2gH8jK ",
    ];
    let mut out = Vec::with_capacity(target + 4096);
    let mut i = 0usize;
    while out.len() < target {
        out.extend_from_slice(pieces[i % pieces.len()].as_bytes());
        if i % 12 == 11 {
            out.extend_from_slice(secrets[(i / 12) % secrets.len()].as_bytes());
        }
        i += 1;
    }
    out
}
