use std::{collections::VecDeque, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{
    admin::Table,
    record::{Phase, Record, Recorder},
    workload::Workload,
};

/// A body that yields the given frames, then ends.
struct Frames(VecDeque<Result<Frame<Bytes>, BodyError>>);

impl HttpBody for Frames {
    type Data = Bytes;
    type Error = BodyError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Poll::Ready(self.0.pop_front())
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

pub(super) fn data(s: &'static str) -> Result<Frame<Bytes>, BodyError> {
    Ok(Frame::data(Bytes::from_static(s.as_bytes())))
}

pub(super) async fn body(
    frames: Vec<Result<Frame<Bytes>, BodyError>>,
    chain: Chain,
) -> (ResponseBody, mpsc::Receiver<Record>) {
    let (rec, rx) = Recorder::new(Arc::new(Table::default()), CancellationToken::new());
    let mut g = rec
        .start(
            "t",
            crate::adapter::Server::Openai,
            &Arc::new(Workload::described(0, 0, "c".into(), None)),
            "POST",
            "/v1/chat/completions",
        )
        .await;
    g.set_status(StatusCode::OK);
    let inner = Frames(frames.into()).boxed();
    (
        ResponseBody::new(
            inner,
            chain,
            RequestEnd {
                record: g,
                in_flight: None,
                json: None,
            },
        ),
        rx,
    )
}

/// Polls the body to its end: the data frames, trailers seen, and the error if it failed.
pub(super) async fn drain(mut b: ResponseBody) -> (Vec<Bytes>, bool, Option<String>) {
    let (mut out, mut trailers) = (Vec::new(), false);
    while let Some(f) = b.frame().await {
        match f {
            Ok(f) if f.is_data() => out.extend(f.into_data().ok()),
            Ok(_) => trailers = true,
            Err(e) => return (out, trailers, Some(e.to_string())),
        }
    }
    (out, trailers, None)
}

fn sse_chain(max: u64) -> Chain {
    Settings {
        max_response_bytes: Some(max),
    }
    .chain(Server::Openai, Framing::Sse)
}

#[tokio::test]
async fn without_filters_frames_pass_unchanged_and_the_record_is_complete() {
    let (b, mut rx) = body(vec![data("a"), data("bc")], Chain::default()).await;
    let (out, _, err) = drain(b).await;
    assert_eq!((out.concat(), err), (b"abc".to_vec(), None));
    let r = rx.try_recv().expect("record");
    assert_eq!((r.outcome, r.response_bytes), (Outcome::Complete, 3));
}

#[tokio::test]
async fn an_over_long_stream_ends_with_an_error_event() {
    let (b, mut rx) = body(
        vec![
            data("data: {\"n\":1}\n\n"),
            data("data: {\"n\":2}\n\n"),
            data("data: [DONE]\n\n"),
        ],
        sse_chain(20),
    )
    .await;
    let (out, _, err) = drain(b).await;
    assert_eq!(
        out.len(),
        2,
        "the first event, then the error event: {out:?}"
    );
    assert_eq!(out[0], Bytes::from_static(b"data: {\"n\":1}\n\n"));
    assert!(String::from_utf8_lossy(&out[1]).contains("sluice_response_too_large"));
    assert_eq!(err, None, "the error event is the stream's end");
    let r = rx.try_recv().expect("record");
    assert!(matches!(r.outcome, Outcome::Ended(_)), "{:?}", r.outcome);
    assert_eq!(
        r.response_bytes,
        out.iter().map(|b| b.len() as u64).sum::<u64>()
    );
}

#[tokio::test]
async fn a_plain_body_over_the_limit_fails_instead_of_ending_cleanly() {
    let chain = Settings {
        max_response_bytes: Some(3),
    }
    .chain(Server::Openai, Framing::Json);
    let (b, mut rx) = body(vec![data("ab"), data("cdef")], chain).await;
    let (out, _, err) = drain(b).await;
    assert_eq!(out, vec![Bytes::from_static(b"ab")]);
    assert!(err.is_some_and(|e| e.contains("max_response_bytes")));
    assert!(matches!(
        rx.try_recv().expect("record").outcome,
        Outcome::Ended(_)
    ));
}

#[tokio::test]
async fn an_upstream_error_is_passed_on_and_recorded() {
    let (b, mut rx) = body(
        vec![data("x"), Err(BodyError::Sluice("boom".into()))],
        Chain::default(),
    )
    .await;
    let (_, _, err) = drain(b).await;
    assert!(err.is_some());
    assert_eq!(
        rx.try_recv().expect("record").outcome,
        Outcome::UpstreamError
    );
}

#[tokio::test]
async fn a_body_dropped_mid_stream_is_recorded_as_cut() {
    let (mut b, mut rx) = body(vec![data("a"), data("b")], sse_chain(100)).await;
    let first = b.frame().await;
    assert!(first.is_some());
    drop(b);
    let r = rx.try_recv().expect("record");
    assert_eq!(r.outcome, Outcome::ClientGone(Phase::Response));
    assert_eq!(r.outcome.to_string(), "cut");
}

/// Holds everything until the end, then releases it: held bytes must come out before the
/// trailers.
struct HoldAll(Vec<u8>);
impl Filter for HoldAll {
    fn on_data(&mut self, data: Bytes, end: bool) -> Result<Bytes, Stop> {
        self.0.extend_from_slice(&data);
        Ok(if end {
            Bytes::from(std::mem::take(&mut self.0))
        } else {
            Bytes::new()
        })
    }
}

#[tokio::test]
async fn held_bytes_are_flushed_before_trailers() {
    let mut chain = Chain::default();
    chain.push(HoldAll(Vec::new()));
    let (b, mut rx) = body(
        vec![
            data("ab"),
            data("cd"),
            Ok(Frame::trailers(HeaderMap::new())),
        ],
        chain,
    )
    .await;
    let (out, trailers, err) = drain(b).await;
    assert_eq!(
        (out, trailers, err),
        (vec![Bytes::from_static(b"abcd")], true, None)
    );
    assert_eq!(rx.try_recv().expect("record").outcome, Outcome::Complete);
}

#[tokio::test]
async fn an_empty_body_that_is_never_polled_is_complete() {
    let (b, mut rx) = body(Vec::new(), Chain::default()).await;
    assert!(b.is_end_stream());
    drop(b);
    assert_eq!(rx.try_recv().expect("record").outcome, Outcome::Complete);
}
