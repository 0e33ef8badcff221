//! Admit: refuse, before reading anything more, what Sluice could not judge the way the
//! server will act on it: paths not in normal form, protocol switches, compressed bodies,
//! gRPC to a server that does not speak it, bodies declared larger than Sluice reads.
use http::{HeaderMap, Method, StatusCode, header};

use super::Request;
use crate::{connection::Ctx, respond::Refusal};

pub fn admit(rq: &mut Request, ctx: &Ctx) -> Result<(), Refusal> {
    let decoded = path(rq.parts.uri.path())?;
    rq.record().set_path(&decoded);
    rq.path = decoded;
    protocol_switch(&rq.parts.method, &rq.parts.headers)?;
    let h = &rq.parts.headers;
    if let Some(enc) = h.get(header::CONTENT_ENCODING)
        && !enc.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(Refusal::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "sluice_encoded_body",
            "compressed request bodies are not accepted: Sluice must read the request to apply policy",
        ));
    }
    if rq.grpc && !speaks_grpc(rq.conn.target.server) {
        // Its body would stream past classification unread.
        return Err(Refusal::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "sluice_unexpected_grpc",
            format!(
                "this target's server ({}) does not speak gRPC",
                rq.conn.target.server
            ),
        ));
    }
    let declared = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > ctx.max_request_body as u64) {
        return Err(super::read::too_large(ctx.max_request_body));
    }
    Ok(())
}

/// `Upgrade` (h2c, WebSocket) and `CONNECT` would turn the connection into a stream Sluice
/// cannot judge request by request: refused on model-server targets.
fn protocol_switch(method: &Method, headers: &HeaderMap) -> Result<(), Refusal> {
    let what = if method == Method::CONNECT {
        Some("CONNECT".to_string())
    } else {
        headers
            .get(header::UPGRADE)
            .map(|v| format!("Upgrade: {}", String::from_utf8_lossy(v.as_bytes())))
    };
    match what {
        Some(what) => Err(Refusal::policy(
            None,
            &format!(
                "{what:?} would switch protocols; Sluice judges model-server traffic request by request and does not pass switched streams"
            ),
        )),
        None => Ok(()),
    }
}

/// The path as policy sees it. Decoding rules live in `decode` (#11: read each request as
/// its server will).
fn path(raw: &str) -> Result<String, Refusal> {
    let lower = raw.to_ascii_lowercase();
    // Encoded slashes and dots, dot segments and empty segments are spellings a server may
    // normalise differently from Sluice (e.g. FastAPI's slash redirects): refuse them.
    if lower.contains("%2f")
        || lower.contains("%2e")
        || lower.contains("%5c")
        || raw.contains("//")
        || raw.split('/').any(|s| s == ".." || s == ".")
    {
        return Err(Refusal::client(
            StatusCode::BAD_REQUEST,
            "sluice_bad_path",
            format!("request path {raw:?} is not in normal form"),
        ));
    }
    Ok(raw.to_string())
}

/// Of the servers Sluice knows, only Triton serves gRPC.
fn speaks_grpc(server: crate::adapter::Server) -> bool {
    server == crate::adapter::Server::Triton
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrades_and_connect_are_refused_and_plain_requests_pass() {
        let mut h = HeaderMap::new();
        assert!(protocol_switch(&Method::POST, &h).is_ok());
        assert!(protocol_switch(&Method::CONNECT, &h).is_err());
        h.insert(
            header::UPGRADE,
            "websocket\nX"
                .parse()
                .unwrap_or(http::HeaderValue::from_static("websocket")),
        );
        let r = protocol_switch(&Method::GET, &h).expect_err("upgrade");
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(r.message.contains("switch protocols"));
    }

    #[test]
    fn only_triton_takes_grpc() {
        use crate::adapter::Server::*;
        for s in [Openai, Anthropic, Ollama, Vllm, Tgi, LlamaCpp] {
            assert!(!speaks_grpc(s), "{s}");
        }
        assert!(speaks_grpc(Triton));
    }
}
