//! Driving one connection on the kernel relay. The verdict program moves the payload; this
//! task owns the lifecycle, from the sockets' state (TCP_INFO, queue lengths, POLLRDHUP,
//! POLLERR), never from their data:
//! - A FIN from one side becomes a write shutdown of the other once every byte redirected
//!   before it has reached the other socket's send queue (the redirect goes through a
//!   per-socket kernel queue first, and a FIN sent before it drained would cut the stream).
//!   The other direction keeps flowing.
//! - An error on either side ends both (the caller resets them).
//! - The kernel's redirect queue has no limit and no back-pressure: a reader that stops
//!   reading does not slow the writer. A direction whose queue passes its limit
//!   (`l4_kernel_max_queue_bytes`) ends the connection rather than let kernel memory grow
//!   without bound (`l4_relay: auto` splices for that reason; see docs/architecture.md).
use std::{
    io,
    os::fd::{AsFd as _, BorrowedFd},
    time::Duration,
};

use tokio::{io::Interest, net::TcpStream};

use super::sock::{self, Snapshot};
use crate::forward::{Moved, Transferred};

/// How often a direction that is draining is looked at (doubling while nothing changes).
const MIN_TICK: Duration = Duration::from_millis(1);
const MAX_TICK: Duration = Duration::from_millis(64);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{side}: {source}")]
    Socket {
        side: &'static str,
        source: io::Error,
    },
    #[error(
        "the {side} reads too slowly for the kernel relay: {backlog} bytes queued in the kernel for it, over l4_kernel_max_queue_bytes ({limit}); l4_relay: splice applies back-pressure instead"
    )]
    Overflow {
        side: &'static str,
        backlog: u64,
        limit: u64,
    },
    #[error(
        "the {side} was handed {written} bytes, more than the {consumed} sent to it: the kernel duplicated redirected bytes (docs/architecture.md, \"Duplicated bytes\")"
    )]
    Miscount {
        side: &'static str,
        written: u64,
        consumed: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Open,
    /// The source sent its FIN; waiting for its last bytes to reach the destination.
    Draining,
    Done,
}

/// What to do next for one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Wait,
    /// Every byte is in the destination's send queue and the source has ended: send the FIN.
    Shutdown,
    /// The kernel queue passed its limit.
    Overflow(u64),
    /// The source has ended and the destination was handed more bytes than it sent
    /// (written, consumed): the kernel sent some twice. A reset, not a FIN, so the corrupted
    /// stream never looks complete.
    Miscount(u64, u64),
}

/// One direction (source socket → destination socket), in counts relative to the moment
/// the sockets were paired.
#[derive(Debug, Clone, Copy)]
pub struct Direction {
    flow: Flow,
    /// Most bytes redirected and not yet in the destination's send queue.
    limit: u64,
    /// The most seen queued, for the log.
    pub peak: u64,
    base_consumed: u64,
    base_written: u64,
    /// We sent the destination's FIN (it counts one in its written bytes).
    shut: bool,
}

impl Direction {
    pub fn new(src: &Snapshot, dst: &Snapshot, limit: u64) -> Self {
        Direction {
            flow: Flow::Open,
            limit,
            peak: 0,
            base_consumed: src.consumed(),
            base_written: dst.written(),
            shut: false,
        }
    }

    /// Bytes the verdict program took from the source.
    pub fn consumed(&self, src: &Snapshot) -> u64 {
        src.consumed().saturating_sub(self.base_consumed)
    }

    /// Bytes that reached the destination's send queue.
    pub fn written(&self, dst: &Snapshot) -> u64 {
        dst.written()
            .saturating_sub(self.base_written)
            .saturating_sub(u64::from(self.shut))
    }

    pub fn done(&self) -> bool {
        self.flow == Flow::Done
    }

    fn draining(&self) -> bool {
        self.flow == Flow::Draining
    }

    /// Decides from a look at both sockets (source first, then destination: see
    /// `Snapshot::take`).
    ///
    /// Why the FIN cannot go early: once the source's FIN is known (read before its
    /// counter) and nothing waits in its queue, `consumed` is every data byte it will ever
    /// send, exactly; `written` (acked + SIOCOUTQ, acked read first) never exceeds what
    /// really is in the destination's send queue, since the agent itself never writes to
    /// it and SIOCOUTQ can only shrink between the two reads. So "written ≥ consumed" then
    /// means every byte is there. Mid-stream `written` may pass `consumed` (bytes moved
    /// between the two looks); after the FIN it cannot unless the kernel handed the
    /// destination some bytes twice, which this kernel does (`Miscount`, a reset). Why it cannot wait forever: the redirect queue drains into the destination
    /// as fast as its reader reads (bounded by `limit` meanwhile), and a destination that
    /// fails reports POLLERR, which ends the connection.
    pub fn step(&mut self, src: &Snapshot, dst: &Snapshot) -> Action {
        if self.flow == Flow::Done {
            return Action::Wait;
        }
        let (consumed, written) = (self.consumed(src), self.written(dst));
        let backlog = consumed.saturating_sub(written);
        self.peak = self.peak.max(backlog);
        if backlog > self.limit {
            return Action::Overflow(backlog);
        }
        if src.read_closed {
            self.flow = Flow::Draining;
        }
        if self.flow == Flow::Draining && src.inq == 0 {
            if written > consumed {
                return Action::Miscount(written, consumed);
            }
            if backlog == 0 {
                return Action::Shutdown;
            }
        }
        Action::Wait
    }

    fn shut_down(&mut self) {
        self.shut = true;
        self.flow = Flow::Done;
    }
}

/// Both sockets as they were before pairing: the counts every later look is measured from.
/// Taken before the sockets enter the maps because SIOCINQ then reports the socket's own
/// receive queue; once a socket is in a sockmap it reports the sockmap's queue instead
/// (`tcp_bpf_ioctl`), which would hide bytes that arrived before pairing.
pub struct Start {
    client: Snapshot,
    upstream: Snapshot,
}

impl Start {
    pub fn take(client: &TcpStream, upstream: &TcpStream) -> Result<Self, Error> {
        let (a, b) = (client.as_fd(), upstream.as_fd());
        let start = Start {
            client: look(a, "client")?,
            upstream: look(b, "upstream")?,
        };
        failed(&start.client, a, "client")?;
        failed(&start.upstream, b, "upstream")?;
        Ok(start)
    }
}

/// Runs a paired connection to its end. The sockets must already be in the relay maps.
pub async fn run(
    client: &TcpStream,
    upstream: &TcpStream,
    start: Start,
    limit: u64,
    wake: &tokio::sync::Notify,
    moved: &Moved,
) -> Result<(), Error> {
    let (a, b) = (client.as_fd(), upstream.as_fd());
    let mut up = Direction::new(&start.client, &start.upstream, limit);
    let mut down = Direction::new(&start.upstream, &start.client, limit);
    // Bytes that arrived before pairing are only looked at on the next packet otherwise.
    sock::kick(a).map_err(|source| Error::Socket {
        side: "client",
        source,
    })?;
    sock::kick(b).map_err(|source| Error::Socket {
        side: "upstream",
        source,
    })?;
    let mut tick = MIN_TICK;
    let mut last = (0, 0, 0, 0);
    loop {
        // Readiness is cleared before looking, so an event after the look wakes us again.
        clear(client);
        clear(upstream);
        let sa = look(a, "client")?;
        let sb = look(b, "upstream")?;
        // Taken from the sources so far, before anything can fail: a socket's counters
        // survive its error, and an error ending reports these.
        moved.set(Transferred {
            up: up.consumed(&sa),
            down: down.consumed(&sb),
        });
        failed(&sa, a, "client")?;
        failed(&sb, b, "upstream")?;
        apply(&mut up, &sa, &sb, b, "upstream")?;
        apply(&mut down, &sb, &sa, a, "client")?;
        if up.done() && down.done() {
            // Counted where the bytes came from (tcpi_bytes_received less the FIN): final
            // once both FINs are in, and every one of them reached the other send queue
            // before that side's FIN was sent.
            tracing::debug!(
                queue_peak_up = up.peak,
                queue_peak_down = down.peak,
                "kernel relay finished"
            );
            moved.set(Transferred {
                up: up.consumed(&sa),
                down: down.consumed(&sb),
            });
            return Ok(());
        }
        let now = (
            up.consumed(&sa),
            up.written(&sb),
            down.consumed(&sb),
            down.written(&sa),
        );
        tick = if now == last {
            (tick * 2).min(MAX_TICK)
        } else {
            MIN_TICK
        };
        last = now;
        let ticking = up.draining() || down.draining();
        if tick == MAX_TICK {
            // Draining and nothing moved for a while: bytes left in a source's own receive
            // queue (counted as taken, see `Snapshot::inq`) would wait for a packet that will
            // never come after its FIN; the nudge is harmless when there are none.
            if up.draining() {
                let _ = sock::kick(a);
            }
            if down.draining() {
                let _ = sock::kick(b);
            }
        }
        tokio::select! {
            r = client.ready(Interest::READABLE), if !sa.read_closed => {
                r.map_err(|source| Error::Socket { side: "client", source })?;
            }
            r = upstream.ready(Interest::READABLE), if !sb.read_closed => {
                r.map_err(|source| Error::Socket { side: "upstream", source })?;
            }
            // The kernel moved another `wake_every` bytes (see `wake.rs`): look at the queues.
            () = wake.notified() => {}
            () = tokio::time::sleep(tick), if ticking => {}
            else => {
                // Both sources ended and neither is draining means both directions are
                // done, which returns above; never spin if that ever stops holding.
                return Err(Error::Socket {
                    side: "relay",
                    source: io::Error::other("both sides ended but the relay did not finish"),
                });
            }
        }
    }
}

fn look(fd: BorrowedFd<'_>, side: &'static str) -> Result<Snapshot, Error> {
    Snapshot::take(fd).map_err(|source| Error::Socket { side, source })
}

/// The socket's pending error, if the look saw one.
fn failed(s: &Snapshot, fd: BorrowedFd<'_>, side: &'static str) -> Result<(), Error> {
    if s.failed {
        return Err(Error::Socket {
            side,
            source: sock::error(fd),
        });
    }
    Ok(())
}

fn apply(
    dir: &mut Direction,
    src: &Snapshot,
    dst: &Snapshot,
    dst_fd: BorrowedFd<'_>,
    dst_side: &'static str,
) -> Result<(), Error> {
    match dir.step(src, dst) {
        Action::Wait => Ok(()),
        Action::Overflow(backlog) => Err(Error::Overflow {
            side: dst_side,
            backlog,
            limit: dir.limit,
        }),
        Action::Miscount(written, consumed) => Err(Error::Miscount {
            side: dst_side,
            written,
            consumed,
        }),
        Action::Shutdown => {
            match socket2::SockRef::from(&dst_fd).shutdown(std::net::Shutdown::Write) {
                Err(e) if e.kind() != io::ErrorKind::NotConnected => {
                    return Err(Error::Socket {
                        side: dst_side,
                        source: e,
                    });
                }
                _ => {}
            }
            dir.shut_down();
            Ok(())
        }
    }
}

/// Drops the stream's cached readiness; nothing is ever read or written through it here.
fn clear(s: &TcpStream) {
    let _ = s.try_io(Interest::READABLE, || {
        Err::<(), _>(io::ErrorKind::WouldBlock.into())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(received: u64, inq: u64, acked: u64, outq: u64, fin: bool) -> Snapshot {
        Snapshot {
            received,
            inq,
            acked,
            outq,
            read_closed: fin,
            failed: false,
        }
    }

    #[test]
    fn the_fin_waits_until_every_redirected_byte_is_in_the_send_queue() {
        let mut d = Direction::new(&snap(1, 0, 1, 0, false), &snap(1, 0, 1, 0, false), 1 << 20);
        // 1000 bytes taken from the source, 600 of them written to the destination.
        let src = snap(1001, 0, 1, 0, false);
        assert_eq!(d.step(&src, &snap(1, 0, 1, 600, false)), Action::Wait);
        // The source ends: still 400 bytes in the kernel's queue.
        let src = snap(1002, 0, 1, 0, true);
        assert_eq!(d.step(&src, &snap(1, 0, 301, 300, false)), Action::Wait);
        // Bytes still in the source's receive queue are not yet redirected.
        let waiting = snap(1002, 10, 1, 0, true);
        assert_eq!(d.step(&waiting, &snap(1, 0, 1, 1000, false)), Action::Wait);
        // All 1000 in the send queue (acked or not): shut down.
        assert_eq!(d.step(&src, &snap(1, 0, 501, 500, false)), Action::Shutdown);
        d.shut_down();
        assert!(d.done());
        // Our FIN counts one in the destination's counters but is not payload.
        assert_eq!(d.written(&snap(1, 0, 1002, 0, false)), 1000);
        assert_eq!(d.step(&src, &snap(1, 0, 1002, 0, false)), Action::Wait);
    }

    #[test]
    fn an_open_direction_never_shuts_down() {
        let mut d = Direction::new(&snap(1, 0, 1, 0, false), &snap(1, 0, 1, 0, false), 1 << 20);
        assert_eq!(
            d.step(&snap(101, 0, 1, 0, false), &snap(1, 0, 101, 0, false)),
            Action::Wait
        );
        assert!(!d.done());
    }

    #[test]
    fn counters_that_claim_more_than_was_sent_end_the_connection() {
        let mut d = Direction::new(&snap(1, 0, 1, 0, false), &snap(1, 0, 1, 0, false), 1 << 20);
        // Mid-stream the destination may be ahead of an older look at the source.
        assert_eq!(
            d.step(&snap(101, 0, 1, 0, false), &snap(1, 0, 151, 0, false)),
            Action::Wait
        );
        // After the source's FIN every count is final: more written than sent is a miscount.
        assert_eq!(
            d.step(&snap(202, 0, 1, 0, true), &snap(1, 0, 251, 0, false)),
            Action::Miscount(250, 200)
        );
    }

    #[test]
    fn a_backlog_past_the_limit_ends_the_connection() {
        const LIMIT: u64 = 1 << 20;
        let mut d = Direction::new(&snap(0, 0, 0, 0, false), &snap(0, 0, 0, 0, false), LIMIT);
        assert_eq!(
            d.step(&snap(LIMIT, 0, 0, 0, false), &snap(0, 0, 0, 0, false)),
            Action::Wait
        );
        let src = snap(LIMIT + 2, 0, 0, 0, false);
        assert_eq!(
            d.step(&src, &snap(0, 0, 0, 1, false)),
            Action::Overflow(LIMIT + 1)
        );
        assert_eq!(d.peak, LIMIT + 1);
    }
}
