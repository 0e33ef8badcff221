//! Admit: refuse, before reading anything more, what Sluice could not judge the way the
//! server will act on it: paths not in normal form, protocol switches, compressed bodies,
//! gRPC to a server that does not speak it, bodies declared larger than Sluice reads.
use http::{HeaderMap, Method, StatusCode, header};

use super::Request;
use crate::{connection::Ctx, respond::Refusal};

pub fn admit(rq: &mut Request, ctx: &Ctx) -> Result<(), Refusal> {
    // First: a CONNECT has no path to decode, and the switch is the refusal to explain.
    protocol_switch(&rq.parts.method, &rq.parts.headers)?;
    let server = rq.conn.target.server;
    let decoded = super::decode::request_target(server, rq.parts.method.as_str(), &rq.parts.uri)?;
    rq.record().set_path(&decoded);
    rq.path = decoded;
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
    if !crate::adapter::speaks_grpc(server) && super::decode::is_grpc_content_type(h) {
        // Its body would stream past classification unread.
        return Err(Refusal::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "sluice_grpc_unsupported",
            format!("this target's server ({server}) does not speak gRPC"),
        ));
    }
    if super::declared_length(h).is_some_and(|n| n > ctx.max_request_body as u64) {
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
}
