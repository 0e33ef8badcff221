//! The silence allowed in the middle of a response body (`upstream_idle_timeout_ms`): a
//! server that stops sending ends its body with an error, as one that dies mid-stream does
//! (the client sees a cut, never a clean end), instead of holding the request for good.
//! Sluice's own HTTP/1.1 body decoder keeps a `Watch`; hyper's bodies (gRPC, a refused
//! protocol switch) are wrapped in `Idle`.
use std::{
    future::Future as _,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::respond::BodyError;

/// A response body went silent for longer than allowed. The connection is closed.
#[derive(Debug, thiserror::Error)]
#[error(
    "upstream {authority} sent nothing for {} ms in the middle of its response body (upstream_idle_timeout_ms)",
    .after.as_millis()
)]
pub struct Silent {
    pub authority: Arc<str>,
    pub after: Duration,
}

/// One body's deadline. It is set again only at the first read that waits after one that
/// got something, so a body whose bytes are already there never touches the timer, and a
/// stream pays one timer update per pause, not per chunk.
pub struct Watch {
    after: Duration,
    /// Made at the first wait: most bodies that fit the first reads never need one.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Watch {
    pub fn new(after: Duration) -> Self {
        Watch {
            after,
            sleep: None,
            armed: false,
        }
    }

    pub fn after(&self) -> Duration {
        self.after
    }

    /// A read got something (data, the end, or an error).
    pub fn progressed(&mut self) {
        self.armed = false;
    }

    /// A read is waiting: ready once nothing has come for `after` since the first wait.
    pub fn waiting(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.armed {
            self.armed = true;
            let at = Instant::now() + self.after;
            match &mut self.sleep {
                Some(s) => s.as_mut().reset(at),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        match &mut self.sleep {
            Some(s) => s.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

/// Frames of a streamed request body passed on so far (`Counted` counts them). While the
/// client still sends, a silent response is a call waiting on the client's messages (a
/// client-streaming or bidirectional gRPC call), not a silent upstream.
#[derive(Clone, Default)]
pub struct Sent(Arc<AtomicU64>);

/// A request body that counts its frames into `Sent`.
pub struct Counted<B> {
    inner: B,
    sent: Sent,
}

impl<B> Counted<B> {
    pub fn new(inner: B, sent: Sent) -> Self {
        Counted { inner, sent }
    }
}

impl<B: Body + Unpin> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &frame {
            this.sent.0.fetch_add(1, Ordering::Relaxed);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A hyper body that ends with `Silent` once it has said nothing for the watch's time (and
/// the client, when its request streams, has sent nothing either).
pub struct Idle<B> {
    inner: B,
    watch: Watch,
    authority: Arc<str>,
    /// Ended by the watch: nothing more is read.
    cut: bool,
    /// The request's frames, and how many the watch last saw.
    sent: Option<(Sent, u64)>,
}

impl<B> Idle<B> {
    pub fn new(inner: B, after: Duration, authority: &str, sent: Option<Sent>) -> Self {
        Idle {
            inner,
            watch: Watch::new(after),
            authority: authority.into(),
            cut: false,
            sent: sent.map(|s| (s, 0)),
        }
    }

    /// The client sent something since the last look.
    fn client_sent(&mut self) -> bool {
        let Some((sent, seen)) = &mut self.sent else {
            return false;
        };
        let now = sent.0.load(Ordering::Relaxed);
        std::mem::replace(seen, now) != now
    }
}

impl<B> Body for Idle<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.cut {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.watch.progressed();
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                std::task::ready!(this.watch.waiting(cx));
                // The client's messages count as the call's progress: the time starts over.
                while this.client_sent() {
                    this.watch.progressed();
                    std::task::ready!(this.watch.waiting(cx));
                }
                this.cut = true;
                Poll::Ready(Some(Err(BodyError::UpstreamSilent(Silent {
                    authority: this.authority.clone(),
                    after: this.watch.after(),
                }))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.cut || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.cut {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    /// A body fed by a channel: frames come when the test sends them.
    fn fed() -> (
        tokio::sync::mpsc::Sender<Bytes>,
        impl Body<Data = Bytes, Error = BodyError> + Unpin,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let b = rx.recv().await?;
            Some((Ok::<_, BodyError>(Frame::data(b)), rx))
        });
        (tx, http_body_util::StreamBody::new(Box::pin(frames)))
    }

    #[tokio::test]
    async fn a_body_silent_past_its_time_is_cut_and_one_with_shorter_pauses_is_not() {
        let (tx, inner) = fed();
        let mut body = Idle::new(inner, Duration::from_millis(300), "127.0.0.1:9", None);
        // Pauses shorter than the time, for longer than it in all.
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
            }
            // Then silence, the channel kept open.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(tx);
        });
        for _ in 0..5 {
            let f = body.frame().await.expect("a frame").expect("data");
            assert_eq!(f.into_data().ok().as_deref(), Some(&b"x"[..]));
        }
        let started = std::time::Instant::now();
        let e = body
            .frame()
            .await
            .expect("an error, not the end")
            .expect_err("cut");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(matches!(e, BodyError::UpstreamSilent(_)), "{e}");
        assert!(e.to_string().contains("127.0.0.1:9"), "{e}");
        assert!(body.frame().await.is_none());
        feeder.abort();
    }
}
