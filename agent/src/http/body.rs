//! A request body as the client sends it: read by Sluice's own HTTP/1.1 server (`h1`) or
//! by hyper's HTTP/2 server (gRPC). The pipeline reads either the same way.
use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

pub enum ClientBody {
    /// No body (no length, or a length of 0).
    Empty,
    H1(super::h1::Body),
    H2(hyper::body::Incoming),
}

/// Why a request body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("{0}")]
    H1(#[from] super::h1::BodyError),
    #[error("{0}")]
    H2(#[from] hyper::Error),
}

impl ClientBodyError {
    /// The client went away (closed or reset mid-body), rather than sending something
    /// malformed.
    pub fn client_gone(&self) -> bool {
        use std::error::Error as _;
        let e = match self {
            ClientBodyError::H1(e) => return e.client_gone(),
            ClientBodyError::H2(e) => e,
        };
        if e.is_incomplete_message() || e.is_canceled() {
            return true;
        }
        let mut src = e.source();
        while let Some(s) = src {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                return gone(io.kind());
            }
            src = s.source();
        }
        false
    }
}

/// The I/O errors of a peer that went away.
pub fn gone(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind;
    matches!(
        kind,
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
    )
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::H1(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(ClientBodyError::from))),
            ClientBody::H2(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(ClientBodyError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::H1(b) => b.is_end_stream(),
            ClientBody::H2(b) => http_body::Body::is_end_stream(b),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::H1(b) => b.size_hint(),
            ClientBody::H2(b) => http_body::Body::size_hint(b),
        }
    }
}
