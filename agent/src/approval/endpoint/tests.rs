//! The endpoint on a real loopback socket: plain and over TLS (a CA made here), its bounds,
//! and a key file others can read.
use std::{os::unix::fs::PermissionsExt as _, path::Path};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::approval::{
    Settings,
    api::tests::{SecretFile, approver, identity_settings},
};

struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(tag: &str) -> Dir {
    let d = std::env::temp_dir().join(format!(
        "sluice-endpoint-{tag}-{}-{}",
        std::process::id(),
        crate::approval::id::new().expect("random")
    ));
    std::fs::create_dir_all(&d).expect("mkdir");
    Dir(d)
}

/// A CA, and a certificate for `localhost` it issued, written to `d` (key mode `key_mode`).
fn certificate(d: &Path, key_mode: u32) -> std::path::PathBuf {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "approvals endpoint test CA");
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("cert");
    std::fs::write(d.join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(d.join("cert.pem"), cert.pem()).expect("write");
    let k = d.join("key.pem");
    std::fs::write(&k, key.serialize_pem()).expect("write");
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(key_mode)).expect("chmod");
    d.join("ca.pem")
}

fn http(yaml: &str) -> Http {
    serde_norway::from_str(yaml).expect("approvals.http")
}

/// Starts the endpoint; answers its address and the stop token.
async fn start(h: &Http, secret: &SecretFile) -> (SocketAddr, CancellationToken) {
    let e = open(h, &identity_settings(secret), 0, Duration::from_secs(1))
        .await
        .expect("open");
    let addr = e.local_addr().expect("addr");
    let (approvals, _) = Approvals::new(&Settings::default());
    let stop = CancellationToken::new();
    tokio::spawn(e.serve(approvals, stop.clone()));
    (addr, stop)
}

/// One request over `s`; the whole answer as text.
async fn exchange_text<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &str) -> String {
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn get(token: Option<&str>) -> String {
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    format!("GET /v1/approvals HTTP/1.1\r\nhost: localhost\r\n{auth}\r\n")
}

#[tokio::test]
async fn plain_on_loopback_answers_json_and_bounds_the_body() {
    let secret = SecretFile::new();
    let (addr, stop) = start(
        &http("listen: 127.0.0.1:0\naudience: sluice-approvals\n"),
        &secret,
    )
    .await;
    let connect = || tokio::net::TcpStream::connect(addr);
    let a = exchange_text(connect().await.expect("connect"), &get(None)).await;
    assert!(a.starts_with("HTTP/1.1 401"), "{a}");
    assert!(a.contains("\"missing_token\""), "{a}");
    let t = approver("carol", &["sre"]);
    let a = exchange_text(connect().await.expect("connect"), &get(Some(&t))).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    assert!(a.contains("\"pending\":[]"), "{a}");
    assert!(!a.contains(&t), "the answer never repeats the token");
    let big = "x".repeat(MAX_BODY + 1);
    let req = format!(
        "POST /v1/approvals/{}/deny HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {t}\r\ncontent-length: {}\r\n\r\n{big}",
        "a".repeat(26),
        big.len()
    );
    let a = exchange_text(connect().await.expect("connect"), &req).await;
    assert!(a.starts_with("HTTP/1.1 413"), "{a}");
    stop.cancel();
}

#[tokio::test]
async fn over_tls_with_the_configured_certificate() {
    let secret = SecretFile::new();
    let d = dir("tls");
    let ca = certificate(&d.0, 0o600);
    let h = http(&format!(
        "listen: 127.0.0.1:0\naudience: sluice-approvals\ntls: {{cert_file: {}, key_file: {}}}\n",
        d.0.join("cert.pem").display(),
        d.0.join("key.pem").display()
    ));
    let (addr, stop) = start(&h, &secret).await;
    let client = crate::tls::client_config(Some(&ca), None, &[b"http/1.1"]).expect("client");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("handshake");
    let t = approver("carol", &["sre"]);
    let a = exchange_text(tls, &get(Some(&t))).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    // Clear text to a TLS endpoint gets no answer.
    let plain = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let a = exchange_text(plain, &get(Some(&t))).await;
    assert!(!a.contains("pending"), "{a}");
    stop.cancel();
}

#[tokio::test]
async fn a_key_file_others_can_read_stops_the_start() {
    let secret = SecretFile::new();
    let d = dir("key-mode");
    certificate(&d.0, 0o644);
    let h = http(&format!(
        "listen: 127.0.0.1:0\naudience: sluice-approvals\ntls: {{cert_file: {}, key_file: {}}}\n",
        d.0.join("cert.pem").display(),
        d.0.join("key.pem").display()
    ));
    let e = open(&h, &identity_settings(&secret), 0, Duration::from_secs(1))
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("key_file"), "{e}");
}
