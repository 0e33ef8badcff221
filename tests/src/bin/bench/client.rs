//! The client side of the latency rows: plain blocking HTTP/1.1 on loopback, run inside the
//! test cgroup (so connections to the virtual address are redirected), one connection at a
//! time, every path measured in interleaved blocks so all see the same machine noise.
//!
//! A variant (a token, a filter, TLS) is compared with its own baseline request by request:
//! two open connections, one request on each in turn, the order swapped every time. Blocks
//! of 1000 put a variant at another place in the cycle than the row it was compared with,
//! and that position alone moved results by tens of µs on this VM.
use std::{
    io::{BufRead as _, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

/// What the client measures, passed to it as JSON on its command line.
#[derive(Serialize, Deserialize)]
pub struct Plan {
    /// Sluice L4 (`protocol: tcp`), compared with `direct` on connection setup, keep-alive
    /// requests and bulk transfer.
    pub l4: SocketAddr,
    pub direct: SocketAddr,
    /// Every path of the HTTP comparison, in report order (name, address).
    pub http_paths: Vec<(String, SocketAddr)>,
    /// Sluice HTTP-aware with a pass-through response filter.
    pub filtered: SocketAddr,
    /// Sluice HTTP-aware on the same agent, every request carrying this token (verified
    /// once, then a cache hit).
    pub tokened: Option<(SocketAddr, String)>,
    /// The same HTTPS server two ways: spoken to over TLS by the client itself (address,
    /// its CA file), and through a Sluice target that originates the TLS (the client speaks
    /// plain HTTP to it).
    pub tls: Option<TlsPaths>,
    pub setups: usize,
    pub requests: usize,
    pub bulk_mb: usize,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct TlsPaths {
    pub direct: SocketAddr,
    pub ca_file: std::path::PathBuf,
    pub via_sluice: SocketAddr,
}

#[derive(Serialize, Deserialize, Default)]
pub struct PathResult {
    pub connect_us: Vec<f64>,
    pub first_response_us: Vec<f64>,
    pub request_us: Vec<f64>,
    pub download_mb_s: f64,
    pub upload_mb_s: f64,
}

#[derive(Serialize, Deserialize, Default)]
pub struct HttpResult {
    /// Non-streamed chat completion on a keep-alive connection.
    pub chat_us: Vec<f64>,
    /// Streamed chat completion: time to the first SSE chunk, and to the end.
    pub ttfb_us: Vec<f64>,
    pub stream_total_us: Vec<f64>,
}

#[derive(Serialize, Deserialize)]
pub struct Results {
    pub l4: PathResult,
    pub direct: PathResult,
    /// One per `Plan::http_paths`, same order.
    pub http: Vec<HttpResult>,
    pub filtered: HttpResult,
    /// `filtered`'s baseline: Sluice HTTP-aware without the filter, paired with it.
    pub unfiltered: HttpResult,
    pub tokened: HttpResult,
    /// `tokened`'s baseline: the same target without a token, paired with it.
    pub untokened: HttpResult,
    pub tls_direct: HttpResult,
    pub tls_via_sluice: HttpResult,
}

pub fn run(plan: &Plan) -> Result<Results> {
    let mut r = Results {
        l4: PathResult::default(),
        direct: PathResult::default(),
        http: plan
            .http_paths
            .iter()
            .map(|_| HttpResult::default())
            .collect(),
        filtered: HttpResult::default(),
        unfiltered: HttpResult::default(),
        tokened: HttpResult::default(),
        untokened: HttpResult::default(),
        tls_direct: HttpResult::default(),
        tls_via_sluice: HttpResult::default(),
    };
    let tls = plan
        .tls
        .as_ref()
        .map(|t| tls_config(&t.ca_file))
        .transpose()?;
    const BLOCK: usize = 100;
    for round in 0..plan.setups.div_ceil(BLOCK) {
        let n = BLOCK.min(plan.setups - round * BLOCK);
        for _ in 0..n {
            one_setup(plan.l4, &mut r.l4)?;
        }
        for _ in 0..n {
            one_setup(plan.direct, &mut r.direct)?;
        }
    }
    const REQ_BLOCK: usize = 1000;
    for round in 0..plan.requests.div_ceil(REQ_BLOCK) {
        let n = REQ_BLOCK.min(plan.requests - round * REQ_BLOCK);
        requests(plan.l4, n, &mut r.l4)?;
        requests(plan.direct, n, &mut r.direct)?;
    }
    bulk(plan.l4, plan.bulk_mb, &mut r.l4)?;
    bulk(plan.direct, plan.bulk_mb, &mut r.direct)?;
    for round in 0..plan.requests.div_ceil(REQ_BLOCK) {
        let n = REQ_BLOCK.min(plan.requests - round * REQ_BLOCK);
        for ((name, addr), out) in plan.http_paths.iter().zip(r.http.iter_mut()) {
            chats(*addr, n, None, out).with_context(|| format!("{name} ({addr})"))?;
        }
        let plain = |addr: SocketAddr| -> Result<Side> { Side::tcp(addr, None) };
        let sluice = plan
            .http_paths
            .first()
            .map(|(_, a)| *a)
            .context("no HTTP path")?;
        paired(
            &mut plain(plan.filtered)?,
            &mut plain(sluice)?,
            (&mut r.filtered, &mut r.unfiltered),
            0,
            n / 4,
        )
        .context("filter, paired")?;
        if let Some((addr, token)) = &plan.tokened {
            paired(
                &mut Side::tcp(*addr, Some(token.clone()))?,
                &mut plain(*addr)?,
                (&mut r.tokened, &mut r.untokened),
                n,
                n / 4,
            )
            .context("token, paired")?;
        }
        if let (Some(paths), Some(cfg)) = (&plan.tls, &tls) {
            paired(
                &mut plain(paths.via_sluice)?,
                &mut Side::new(Box::new(tls_connect(paths.direct, cfg)?), None),
                (&mut r.tls_via_sluice, &mut r.tls_direct),
                n,
                n / 4,
            )
            .context("TLS, paired")?;
        }
    }
    Ok(r)
}

/// The client side of the TLS rows: the test CA only, the name the test server's certificate
/// carries.
fn tls_config(ca_file: &std::path::Path) -> Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_file)? {
        roots.add(c?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(cfg))
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_connect(addr: SocketAddr, cfg: &std::sync::Arc<rustls::ClientConfig>) -> Result<Tls> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let conn = rustls::ClientConnection::new(cfg.clone(), name)?;
    Ok(rustls::StreamOwned::new(conn, s))
}

/// Reads one HTTP/1.1 response (headers + Content-Length body); returns body length.
pub(crate) fn read_response<S: Read>(r: &mut BufReader<S>) -> Result<usize> {
    let mut len = None;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("connection closed mid-response");
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line
            .to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().to_string())
        {
            len = Some(v.parse::<usize>()?);
        }
    }
    let n = len.context("no content-length")?;
    let copied = std::io::copy(&mut r.by_ref().take(n as u64), &mut std::io::sink())?;
    if copied as usize != n {
        bail!("short body");
    }
    Ok(n)
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

fn one_setup(addr: SocketAddr, out: &mut PathResult) -> Result<()> {
    let t0 = Instant::now();
    let s = TcpStream::connect(addr)?;
    let t1 = Instant::now();
    s.set_nodelay(true)?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    w.write_all(GET)?;
    read_response(&mut r)?;
    let t2 = Instant::now();
    out.connect_us.push((t1 - t0).as_secs_f64() * 1e6);
    out.first_response_us.push((t2 - t0).as_secs_f64() * 1e6);
    Ok(())
}

fn requests(addr: SocketAddr, n: usize, out: &mut PathResult) -> Result<()> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    // Warm the connection (and the agent's upstream connection) before timing.
    for _ in 0..50 {
        w.write_all(GET)?;
        read_response(&mut r)?;
    }
    for _ in 0..n {
        let t0 = Instant::now();
        w.write_all(GET)?;
        read_response(&mut r)?;
        out.request_us.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    Ok(())
}

fn bulk(addr: SocketAddr, mb: usize, out: &mut PathResult) -> Result<()> {
    let bytes = mb * 1024 * 1024;
    // Download.
    let s = TcpStream::connect(addr)?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::with_capacity(1 << 20, s);
    let t0 = Instant::now();
    write!(w, "GET /bytes/{bytes} HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    read_response(&mut r)?;
    out.download_mb_s = bytes as f64 / 1e6 / t0.elapsed().as_secs_f64();
    // Upload.
    let s = TcpStream::connect(addr)?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let chunk = vec![b'y'; 1 << 20];
    let t0 = Instant::now();
    write!(
        w,
        "POST /sink HTTP/1.1\r\nHost: bench\r\nContent-Length: {bytes}\r\n\r\n"
    )?;
    for _ in 0..mb {
        w.write_all(&chunk)?;
    }
    read_response(&mut r)?;
    out.upload_mb_s = bytes as f64 / 1e6 / t0.elapsed().as_secs_f64();
    Ok(())
}

pub const CHAT: &str = r#"{"model":"test-model","messages":[{"role":"user","content":"hello"}]}"#;
pub(crate) const CHAT_STREAM: &str =
    r#"{"model":"test-model","stream":true,"messages":[{"role":"user","content":"hello"}]}"#;

/// `post`, with `Authorization: Bearer <token>` when given. The request is formatted first and
/// written with one `write`, as HTTP clients do: `write!` on the raw socket sends every
/// formatted piece as its own segment (`TCP_NODELAY`), and the token's piece alone was one more
/// segment, one more wakeup and read of the agent, and +17–27 µs p50 that a same-size header
/// that is no credential paid too.
pub(crate) fn post_as(w: &mut impl Write, body: &str, token: Option<&str>) -> Result<()> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    w.write_all(request.as_bytes())?;
    Ok(())
}

/// Reads a chunked response; returns (time of the first data chunk, time of the end).
pub(crate) fn read_chunked<S: Read>(r: &mut BufReader<S>) -> Result<(Instant, Instant)> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("closed in headers");
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut first = None;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let n = usize::from_str_radix(line.trim(), 16)?;
        if n == 0 {
            line.clear();
            r.read_line(&mut line)?;
            return Ok((first.unwrap_or_else(Instant::now), Instant::now()));
        }
        let mut buf = vec![0u8; n + 2];
        r.read_exact(&mut buf)?;
        first.get_or_insert_with(Instant::now);
    }
}

/// `n` chat completions, then `n / 4` streamed ones, on one keep-alive connection (each
/// carrying `token` when given).
fn chats(addr: SocketAddr, n: usize, token: Option<&str>, out: &mut HttpResult) -> Result<()> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    chats_on(s, n, token, out)
}

/// `chats` on a connected stream (TCP, or TLS over it). Requests are written through the
/// reader's buffer owner, so one stream object serves both ways.
fn chats_on<S: Read + Write>(
    s: S,
    n: usize,
    token: Option<&str>,
    out: &mut HttpResult,
) -> Result<()> {
    let mut r = BufReader::new(s);
    for _ in 0..50 {
        post_as(r.get_mut(), CHAT, token)?;
        read_response(&mut r)?;
    }
    for _ in 0..n {
        let t0 = Instant::now();
        post_as(r.get_mut(), CHAT, token)?;
        read_response(&mut r)?;
        out.chat_us.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    for _ in 0..n / 4 {
        let t0 = Instant::now();
        post_as(r.get_mut(), CHAT_STREAM, token)?;
        let (first, end) = read_chunked(&mut r)?;
        out.ttfb_us.push((first - t0).as_secs_f64() * 1e6);
        out.stream_total_us.push((end - t0).as_secs_f64() * 1e6);
    }
    Ok(())
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// One side of a paired comparison: an open keep-alive connection and the token its
/// requests carry.
pub(crate) struct Side {
    r: BufReader<Box<dyn Stream>>,
    token: Option<String>,
}

impl Side {
    fn new(s: Box<dyn Stream>, token: Option<String>) -> Side {
        Side {
            r: BufReader::new(s),
            token,
        }
    }

    pub(crate) fn tcp(addr: SocketAddr, token: Option<String>) -> Result<Side> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(Side::new(Box::new(s), token))
    }

    fn chat(&mut self, out: Option<&mut HttpResult>) -> Result<()> {
        let t0 = Instant::now();
        post_as(self.r.get_mut(), CHAT, self.token.as_deref())?;
        read_response(&mut self.r)?;
        if let Some(out) = out {
            out.chat_us.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        Ok(())
    }

    fn stream(&mut self, out: Option<&mut HttpResult>) -> Result<()> {
        let t0 = Instant::now();
        post_as(self.r.get_mut(), CHAT_STREAM, self.token.as_deref())?;
        let (first, end) = read_chunked(&mut self.r)?;
        if let Some(out) = out {
            out.ttfb_us.push((first - t0).as_secs_f64() * 1e6);
            out.stream_total_us.push((end - t0).as_secs_f64() * 1e6);
        }
        Ok(())
    }
}

/// `chats` chat completions and then `streams` streamed ones on `a` and `b` in turn, one
/// request each, `a` first on even requests and `b` first on odd ones, after 20 untimed
/// requests each.
pub(crate) fn paired(
    a: &mut Side,
    b: &mut Side,
    out: (&mut HttpResult, &mut HttpResult),
    chats: usize,
    streams: usize,
) -> Result<()> {
    for _ in 0..20 {
        a.chat(None)?;
        b.chat(None)?;
    }
    let (oa, ob) = out;
    for i in 0..chats + streams {
        let stream = i >= chats;
        let one = |side: &mut Side, out: &mut HttpResult| {
            if stream {
                side.stream(Some(out))
            } else {
                side.chat(Some(out))
            }
        };
        if i % 2 == 0 {
            one(a, oa)?;
            one(b, ob)?;
        } else {
            one(b, ob)?;
            one(a, oa)?;
        }
    }
    Ok(())
}
