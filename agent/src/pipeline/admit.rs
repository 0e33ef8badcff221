//! Admit: refuse, before reading anything more, what Sluice could not judge the way the
//! server will act on it: paths not in normal form, protocol switches it cannot name
//! (`switch.rs`), compressed bodies, gRPC to a server that does not speak it, bodies declared
//! larger than Sluice reads.
use http::{StatusCode, header};

use super::Request;
use crate::{connection::Ctx, respond::Refusal};

pub fn admit(rq: &mut Request, ctx: &Ctx) -> Result<(), Refusal> {
    // First: a switch Sluice cannot name is the refusal to explain.
    rq.switch = super::switch::requested(&rq.parts)?;
    if rq.switch.is_some() {
        // The client's half of the switch, for the tunnel if the policy allows it; it must
        // not travel upstream with the rest of the request's extensions.
        rq.client_upgrade = rq.parts.extensions.remove::<crate::http::Upgrade>();
    }
    let server = rq.conn.target.server;
    let decoded = super::decode::request_target(server, rq.parts.method.as_str(), &rq.parts.uri)?;
    rq.record().set_path(&decoded);
    rq.path = decoded;
    let h = &rq.parts.headers;
    // Every value: a second `Content-Encoding` is one the server may apply.
    if h.get_all(header::CONTENT_ENCODING).iter().any(|enc| {
        !enc.as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"identity")
    }) {
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
