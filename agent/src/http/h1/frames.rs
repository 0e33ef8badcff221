//! The server's framing of a byte stream without a socket: heads and bodies exactly as
//! `serve` reads them, the bytes arriving in the pieces given. For the fuzz targets
//! (agent/tests/fuzz), which check it never panics, that how the bytes arrive never
//! changes what is read, and that a request re-framed for the upstream reads back the same.
use bytes::BytesMut;
use http::{HeaderMap, request::Parts};

use super::head;
use crate::wire::body::{Decoder, Step};

/// One request as the server read it.
#[derive(Debug)]
pub struct Framed {
    pub parts: Parts,
    pub body: Vec<u8>,
    pub trailers: Option<HeaderMap>,
    pub keep_alive: bool,
}

/// How reading stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The bytes ended between messages (nothing left over), or a request said it was the
    /// last on its connection.
    Clean,
    /// The bytes ended inside a message.
    Cut,
    /// A refusal: the status the client gets, and why.
    Refused(u16, String),
}

/// Reads requests from `pieces` as they would arrive, one after another.
pub fn frame_all(pieces: &[&[u8]], max_header: usize) -> (Vec<Framed>, Stop) {
    let mut buf = BytesMut::new();
    let mut pieces = pieces.iter();
    let mut framed = Vec::new();
    let mut more = |buf: &mut BytesMut| match pieces.next() {
        Some(p) => {
            buf.extend_from_slice(p);
            true
        }
        None => false,
    };
    loop {
        let h = loop {
            if !buf.is_empty() {
                match head::parse(&mut buf, max_header) {
                    Ok(Some(h)) => break h,
                    Ok(None) => {}
                    Err(e) => return (framed, Stop::Refused(e.status().as_u16(), e.to_string())),
                }
            }
            if !more(&mut buf) {
                let stop = if buf.is_empty() {
                    Stop::Clean
                } else {
                    Stop::Cut
                };
                return (framed, stop);
            }
        };
        let mut decoder = Decoder::new(h.kind.delimited(), max_header);
        let (mut body, mut trailers) = (Vec::new(), None);
        loop {
            match decoder.step(&mut buf) {
                Ok(Step::Data(d)) => body.extend_from_slice(&d),
                Ok(Step::Trailers(t)) => trailers = Some(t),
                Ok(Step::End) => break,
                Ok(Step::More) => {
                    if !more(&mut buf) {
                        return (framed, Stop::Cut);
                    }
                }
                Err(why) => return (framed, Stop::Refused(400, why.to_string())),
            }
        }
        let keep_alive = h.keep_alive;
        framed.push(Framed {
            parts: h.parts,
            body,
            trailers,
            keep_alive,
        });
        if !keep_alive {
            return (framed, Stop::Clean);
        }
    }
}
