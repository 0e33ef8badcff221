//! Real servers on loopback for the tests: a small HTTP/1.1 server (keep-alive, fixed and slow
//! responses, bulk bodies) and an echo server with half-close. Each records the peer address
//! of every connection it accepts, so tests can tell intercepted from direct connections.
use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::atomic::Ordering,
    thread,
    time::Duration,
};

use crate::Seen;

pub struct Server {
    pub addr: SocketAddr,
    pub seen: Seen,
}

impl Server {
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.seen
            .peers
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.seen.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve(bind: &str, handler: fn(TcpStream) -> io::Result<()>) -> Server {
    let listener = TcpListener::bind(bind).expect("bind test server");
    let addr = listener.local_addr().expect("local addr");
    let seen = Seen::default();
    let s2 = seen.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            if s2.stop.load(Ordering::SeqCst) {
                return;
            }
            let Ok(conn) = conn else { continue };
            if let (Ok(peer), Ok(mut peers)) = (conn.peer_addr(), s2.peers.lock()) {
                peers.push(peer);
            }
            thread::spawn(move || {
                let _ = handler(conn);
            });
        }
    });
    Server { addr, seen }
}

/// HTTP/1.1 server. Routes: `/slow` answers after 1.5 s, `/bytes/N` returns N bytes,
/// `POST /sink` reads the body and answers with its length, anything else a short greeting.
pub fn http(bind: &str) -> Server {
    serve(bind, handle_http)
}

/// Echoes every byte; when the client half-closes, finishes sending and closes too.
pub fn echo(bind: &str) -> Server {
    serve(bind, |mut s| {
        let _ = s.set_nodelay(true);
        let mut r = s.try_clone()?;
        io::copy(&mut r, &mut s)?;
        s.shutdown(Shutdown::Write)
    })
}

fn handle_http(stream: TcpStream) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path, version) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("/").to_string(),
            parts.next().unwrap_or("HTTP/1.0").to_string(),
        );
        let mut content_length = 0usize;
        let mut close = version == "HTTP/1.0";
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    content_length = v.parse().unwrap_or(0);
                } else if k == "connection" && v.eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        let mut received = 0u64;
        if content_length > 0 {
            received = io::copy(&mut (&mut r).take(content_length as u64), &mut io::sink())?;
        }
        let conn_hdr = if close { "close" } else { "keep-alive" };
        if let Some(n) = path.strip_prefix("/bytes/") {
            let n: usize = n.parse().unwrap_or(0);
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: {conn_hdr}\r\n\r\n"
            )?;
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk.len());
                w.write_all(&chunk[..k])?;
                left -= k;
            }
        } else {
            if path == "/slow" {
                thread::sleep(Duration::from_millis(1500));
            }
            let body = if method == "POST" {
                format!("received {received}\n")
            } else {
                "hello from upstream\n".to_string()
            };
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {conn_hdr}\r\n\r\n{body}",
                body.len()
            )?;
        }
        w.flush()?;
        if close {
            return Ok(());
        }
    }
}
