//! Bodies in the recording store (`audit.level: full`, unless the target's `audit_level`
//! lowers it): turned on once the opening record is written, so only a request the store
//! holds gets body entries; the request body is recorded as it goes upstream (after
//! masking), the response's chunks by the response body as they reach the client.
use super::{Request, context::RequestBody};
use crate::{audit::Level, respond::Refusal};

/// Turns body recording on for this request when its target's level is `full`.
pub fn bodies(audit: &crate::audit::Handle, rq: &mut Request) {
    let level = rq.conn.target.audit_level.unwrap_or(Level::Full);
    if audit.level() == Level::Full && level == Level::Full {
        rq.record().record_bodies();
    }
}

/// The request body, masked, about to go upstream.
pub fn request_body(rq: &mut Request) -> Result<(), Refusal> {
    let body = match &rq.body {
        RequestBody::Buffered { bytes, .. } => Some(bytes.clone()),
        RequestBody::Streaming(_) => None,
        RequestBody::Unread(_) | RequestBody::Taken => return Ok(()),
    };
    rq.record()
        .request_body(body.as_ref())
        .map_err(|why| Refusal::unrecorded(&why))
}
