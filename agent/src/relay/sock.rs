//! What the kernel relay reads from and does to its sockets, one syscall each: the socket
//! cookie, TCP_INFO byte counters, queue lengths, end-of-stream and error state, and the
//! nudge that makes the verdict program look at data that arrived before it was attached.
use std::{
    io, mem,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// The prefix of `struct tcp_info` (linux/tcp.h) up to `tcpi_bytes_received`; the kernel
/// copies at most the length it is given.
#[repr(C)]
#[derive(Default)]
struct TcpInfoPrefix {
    head: [u8; 8],
    u32s: [u32; 24],
    pacing_rate: u64,
    max_pacing_rate: u64,
    bytes_acked: u64,
    bytes_received: u64,
}

/// One look at a socket. Counters are cumulative over the connection's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `tcpi_bytes_received`: in-order bytes received, plus one for a received FIN.
    pub received: u64,
    /// `tcpi_bytes_acked`.
    pub acked: u64,
    /// SIOCINQ: received bytes not yet read. For a socket in a sockmap the kernel reports
    /// the sockmap's own queue (`tcp_bpf_ioctl`), not bytes waiting for the verdict program,
    /// so `consumed` then counts those as taken: an overestimate, on the safe side.
    pub inq: u64,
    /// SIOCOUTQ: bytes written and not yet acknowledged (a sent FIN counts one).
    pub outq: u64,
    /// The peer's FIN has arrived (POLLRDHUP).
    pub read_closed: bool,
    /// A pending socket error (POLLERR).
    pub failed: bool,
}

impl Snapshot {
    /// Reads the state in the order that keeps every derived count at or below the truth:
    /// end-of-stream before the received counter (so a counted FIN is known), acked before
    /// the send queue, received before the receive queue.
    pub fn take(fd: BorrowedFd<'_>) -> io::Result<Self> {
        let revents = poll_now(fd)?;
        let info = tcp_info(fd)?;
        let inq = ioctl_len(fd, libc::FIONREAD)?;
        let outq = ioctl_len(fd, libc::TIOCOUTQ)?;
        Ok(Snapshot {
            received: info.bytes_received,
            acked: info.bytes_acked,
            inq,
            outq,
            read_closed: revents & libc::POLLRDHUP != 0,
            failed: revents & libc::POLLERR != 0,
        })
    }

    /// Data bytes taken out of the receive queue (the FIN is not data).
    pub fn consumed(&self) -> u64 {
        self.received
            .saturating_sub(self.inq)
            .saturating_sub(u64::from(self.read_closed))
    }

    /// Bytes handed to this socket for sending (a FIN we sent included).
    pub fn written(&self) -> u64 {
        self.acked.saturating_add(self.outq)
    }
}

fn poll_now(fd: BorrowedFd<'_>) -> io::Result<libc::c_short> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(p.revents)
}

fn tcp_info(fd: BorrowedFd<'_>) -> io::Result<TcpInfoPrefix> {
    let mut info = TcpInfoPrefix::default();
    let mut len = mem::size_of::<TcpInfoPrefix>() as libc::socklen_t;
    // SAFETY: the buffer is `len` bytes of plain integers.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < mem::size_of::<TcpInfoPrefix>() {
        return Err(io::Error::other(
            "TCP_INFO too short: the kernel lacks tcpi_bytes_received",
        ));
    }
    Ok(info)
}

fn ioctl_len(fd: BorrowedFd<'_>, req: libc::Ioctl) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: both requests write one int.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut n) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The TCP state (`tcpi_state`, e.g. 1 established, 8 close-wait), for logs.
pub fn state(fd: BorrowedFd<'_>) -> Option<u8> {
    tcp_info(fd).ok().map(|i| i.head[0])
}

/// The socket cookie, the key of the relay maps.
pub fn cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut c: u64 = 0;
    let mut len = mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: SO_COOKIE writes one u64.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut c).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(c)
}

/// Makes the kernel run the socket's data-ready callback now: setting SO_RCVLOWAT calls it
/// when data is queued (`tcp_set_rcvlowat` → `tcp_data_ready`). Adding a socket to the
/// verdict map does not look at data already queued, which would otherwise wait for the
/// next packet, possibly forever.
pub fn kick(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: an int option.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const one).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The socket's pending error, or a generic reset when it has none to report.
pub fn error(fd: BorrowedFd<'_>) -> io::Error {
    match socket2::SockRef::from(&fd).take_error() {
        Ok(Some(e)) => e,
        Ok(None) => io::Error::from(io::ErrorKind::ConnectionReset),
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_info_prefix_matches_the_kernel_layout() {
        // tcpi_bytes_acked is at offset 120 and tcpi_bytes_received at 128 (linux/tcp.h).
        assert_eq!(mem::offset_of!(TcpInfoPrefix, bytes_acked), 120);
        assert_eq!(mem::offset_of!(TcpInfoPrefix, bytes_received), 128);
    }

    #[test]
    fn a_fin_is_not_counted_as_data() {
        let s = Snapshot {
            received: 101,
            inq: 0,
            read_closed: true,
            ..Default::default()
        };
        assert_eq!(s.consumed(), 100);
        let s = Snapshot {
            received: 100,
            inq: 40,
            ..Default::default()
        };
        assert_eq!(s.consumed(), 60);
    }

    #[test]
    fn counters_of_a_real_loopback_pair() {
        use std::io::{Read as _, Write as _};
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut c = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (mut s, _) = l.accept().expect("accept");
        let fd = |t: &std::net::TcpStream| unsafe { BorrowedFd::borrow_raw(t.as_raw_fd()) };
        let (c0, s0) = (
            Snapshot::take(fd(&c)).expect("c0"),
            Snapshot::take(fd(&s)).expect("s0"),
        );
        c.write_all(&[7u8; 1000]).expect("write");
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read");
        assert_eq!(got.len(), 1000);
        let s1 = Snapshot::take(fd(&s)).expect("s1");
        assert!(s1.read_closed);
        assert_eq!(s1.consumed() - s0.consumed(), 1000);
        // Written counts the data and our FIN.
        let c1 = Snapshot::take(fd(&c)).expect("c1");
        assert_eq!(c1.written() - c0.written(), 1001);
        assert_ne!(
            cookie(fd(&c)).expect("cookie"),
            cookie(fd(&s)).expect("cookie")
        );
    }
}
