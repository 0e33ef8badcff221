//! A request's bodies on their way to the store (`level: full`): the request body as the
//! upstream got it, each response chunk as the client got it, with its time offset. Nothing
//! is buffered here: each piece is handed to the store's writer as it passes (sharing the
//! chunk's buffer), bounded by `max_body_bytes` per direction and by the writer's backlog.
use std::time::Instant;

use bytes::Bytes;

use super::{BodyNote, Handle, Piece, Unavailable, entry::Direction};

/// Largest piece in one body entry: a frame's body holds at most `frame::MAX_BODY` bytes,
/// and JSON escaping can make text up to six times longer.
pub const PIECE: usize = 1 << 20;

pub struct Tap {
    handle: Handle,
    id: u64,
    started: Instant,
    max: u64,
    note: BodyNote,
    /// Bytes seen and pieces made per direction (recorded or not).
    request: (u64, u64),
    response: (u64, u64),
}

impl Tap {
    /// `started`: the request's first byte, the zero of every time offset.
    pub fn new(handle: Handle, id: u64, started: Instant) -> Tap {
        Tap {
            max: handle.max_body_bytes(),
            handle,
            id,
            started,
            note: BodyNote::default(),
            request: (0, 0),
            response: (0, 0),
        }
    }

    /// The request body as it goes upstream. An error only with `required`: the request
    /// must then be refused.
    pub fn request(&mut self, body: &Bytes) -> Result<(), Unavailable> {
        self.send(Direction::Request, body)
    }

    /// The request body streamed through unread (gRPC): nothing to record.
    pub fn request_unread(&mut self) {
        self.note.request_unread = true;
    }

    /// A response chunk as the client gets it. An error only with `required`: the chunk
    /// must not reach the client, and the response ends.
    pub fn response(&mut self, data: &Bytes) -> Result<(), Unavailable> {
        self.send(Direction::Response, data)
    }

    pub fn note(&self) -> BodyNote {
        self.note.clone()
    }

    fn send(&mut self, dir: Direction, data: &Bytes) -> Result<(), Unavailable> {
        if data.is_empty() {
            return Ok(());
        }
        let t_us = self.started.elapsed().as_micros() as u64;
        let (seen, n) = match dir {
            Direction::Request => &mut self.request,
            Direction::Response => &mut self.response,
        };
        let room = self.max.saturating_sub(*seen);
        let take = (data.len() as u64).min(room) as usize;
        if take < data.len() {
            match dir {
                Direction::Request => self.note.request_truncated = true,
                Direction::Response => self.note.response_truncated = true,
            }
        }
        let mut off = 0;
        while off < take {
            let end = (off + PIECE).min(take);
            let piece = Piece {
                id: self.id,
                dir,
                n: *n,
                at: *seen,
                t_us,
                data: data.slice(off..end),
            };
            let len = (end - off) as u64;
            *n += 1;
            *seen += len;
            off = end;
            match self.handle.body(piece) {
                Ok(()) => match dir {
                    Direction::Request => self.note.request_bytes += len,
                    Direction::Response => {
                        self.note.response_bytes += len;
                        self.note.response_chunks += 1;
                    }
                },
                Err(why) if self.handle.required() => return Err(why),
                Err(_) => self.note.dropped += 1,
            }
        }
        *seen += (data.len() - take) as u64;
        Ok(())
    }
}
