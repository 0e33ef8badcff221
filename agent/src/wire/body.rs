//! Where a message body ends, over a buffer and without I/O: a length, the chunked coding, or
//! the connection's close. The client-facing server reads request bodies with it, the
//! upstream client response bodies, and the fuzz target drives it with arbitrary bytes. Data
//! is split off the buffer, never copied; what follows the body stays in the buffer.
use bytes::{Buf as _, Bytes, BytesMut};
use http_body::SizeHint;

use super::chunked;

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delimited {
    /// `Content-Length` (0: no body).
    Length(u64),
    Chunked,
    /// Until the peer closes (a response only).
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    Close,
    /// Chunked: the next chunk-size line.
    Size,
    /// Chunked: bytes left in the current chunk.
    Data(u64),
    /// Chunked: the CRLF after a chunk's data.
    DataEnd,
    /// Chunked: the trailer section after the last chunk.
    Trailers,
    Done,
}

/// What the next bytes of a body are.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// The chunked body's trailer section; the body ended with it.
    Trailers(http::HeaderMap),
    /// The body ended (with its data, or its empty trailer section).
    End,
    /// Nothing complete is buffered: read more.
    More,
}

#[derive(Debug)]
pub struct Decoder {
    state: State,
    max_trailers: usize,
}

impl Decoder {
    pub fn new(delimited: Delimited, max_trailers: usize) -> Self {
        let state = match delimited {
            Delimited::Length(0) => State::Done,
            Delimited::Length(n) => State::Length(n),
            Delimited::Chunked => State::Size,
            Delimited::Close => State::Close,
        };
        Decoder {
            state,
            max_trailers,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Ends the body where it is (its connection failed): nothing more is read.
    pub fn stop(&mut self) {
        self.state = State::Done;
    }

    /// The body ends when the peer closes: its EOF is the clean end.
    pub fn ends_at_close(&self) -> bool {
        self.state == State::Close
    }

    /// Bytes still owed by a body of declared length.
    pub fn missing(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            _ => None,
        }
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    /// The next step from the start of `buf`. After an error the decoder is done and the
    /// connection is not usable.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        let r = self.next(buf);
        if r.is_err() {
            self.state = State::Done;
        }
        r
    }

    fn next(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        loop {
            match self.state {
                State::Done => return Ok(Step::End),
                State::Close if buf.is_empty() => return Ok(Step::More),
                State::Close => return Ok(Step::Data(buf.split().freeze())),
                State::Length(left) | State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let k = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(k).freeze();
                    let left = left - k as u64;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), l) => State::Length(l),
                        (_, 0) => State::DataEnd,
                        (_, l) => State::Data(l),
                    };
                    return Ok(Step::Data(data));
                }
                State::Size => match chunked::size_line(buf)? {
                    Some(0) => self.state = State::Trailers,
                    Some(n) => self.state = State::Data(n),
                    None => return Ok(Step::More),
                },
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("no CRLF after a chunk");
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    return match chunked::trailers(buf, self.max_trailers)? {
                        Some(t) => {
                            self.state = State::Done;
                            Ok(t.map_or(Step::End, Step::Trailers))
                        }
                        None => Ok(Step::More),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything one decoder reads from `bytes`, fed one byte at a time.
    fn read(delimited: Delimited, bytes: &[u8]) -> (Vec<u8>, Result<Step, &'static str>) {
        let mut d = Decoder::new(delimited, 1024);
        let (mut buf, mut body) = (BytesMut::new(), Vec::new());
        let mut rest = bytes.iter();
        loop {
            match d.step(&mut buf) {
                Ok(Step::Data(b)) => body.extend_from_slice(&b),
                Ok(Step::More) => match rest.next() {
                    Some(b) => buf.extend_from_slice(&[*b]),
                    None => return (body, Ok(Step::More)),
                },
                other => return (body, other),
            }
        }
    }

    #[test]
    fn each_delimiting_reads_its_body_and_no_more() {
        let (body, end) = read(Delimited::Length(5), b"hello");
        assert_eq!((&body[..], end), (&b"hello"[..], Ok(Step::End)));
        let (body, end) = read(Delimited::Chunked, b"5\r\nhello\r\n0\r\n\r\n");
        assert_eq!((&body[..], end), (&b"hello"[..], Ok(Step::End)));
        // A close-delimited body never ends by itself: its end is the peer's EOF.
        let (body, end) = read(Delimited::Close, b"until close");
        assert_eq!((&body[..], end), (&b"until close"[..], Ok(Step::More)));
        let mut d = Decoder::new(Delimited::Length(3), 0);
        let mut buf = BytesMut::from("abcGET /next");
        assert_eq!(d.step(&mut buf), Ok(Step::Data(Bytes::from_static(b"abc"))));
        assert!(d.is_done());
        assert_eq!(&buf[..], b"GET /next");
        let (_, end) = read(Delimited::Chunked, b"5\r\nhelloXY");
        assert_eq!(end, Err("no CRLF after a chunk"));
    }
}
