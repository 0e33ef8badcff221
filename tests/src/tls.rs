//! HTTPS for the tests: a certificate authority made in the test (rcgen), and a TLS front
//! that terminates TLS on 127.0.0.1 and passes the bytes to one of `servers`' cleartext
//! servers, so any of them (the keyed one too) can be reached over HTTPS. It records the
//! name (SNI) and ALPN protocol each handshake carried, and why a handshake failed.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};

/// A CA whose certificate and issued certificates are written as PEM files under `dir`.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    tag: String,
}

/// A certificate and key issued by a `TestCa`, as files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path, tag: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("sluice test CA {tag}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        std::fs::write(dir.join(format!("{tag}-ca.pem")), issuer.pem()).expect("write CA");
        TestCa {
            issuer,
            dir: dir.to_path_buf(),
            tag: tag.to_string(),
        }
    }

    /// The CA certificate's PEM file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.tag))
    }

    /// A leaf certificate for `names` (DNS names or IP addresses), written as `<name>.pem`
    /// and `<name>.key`.
    pub fn issue(&self, name: &str, names: &[&str]) -> Issued {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<String>>())
                .expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        let issued = Issued {
            cert: self.dir.join(format!("{}-{name}.pem", self.tag)),
            key: self.dir.join(format!("{}-{name}.key", self.tag)),
        };
        std::fs::write(&issued.cert, cert.pem()).expect("write cert");
        crate::write_secret(&issued.key, key.serialize_pem());
        issued
    }
}

/// What the front saw of each handshake.
#[derive(Default)]
pub struct Handshakes {
    /// (SNI, ALPN) of each completed handshake.
    pub ok: Mutex<Vec<(Option<String>, Option<String>)>>,
    /// Why each failed handshake failed.
    pub failed: Mutex<Vec<String>>,
}

/// A TLS front on 127.0.0.1; dropped, it stops accepting.
pub struct TlsFront {
    pub addr: SocketAddr,
    pub handshakes: Arc<Handshakes>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Terminates TLS with `server` (issued by some CA) and relays to `inner`; with
/// `client_ca`, a client certificate issued by that CA is required (mTLS).
pub fn front(inner: SocketAddr, server: &Issued, client_ca: Option<&Path>) -> TlsFront {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&server.cert)
        .expect("cert file")
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(&server.key).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).expect("client CA") {
                roots
                    .add(c.expect("client CA cert"))
                    .expect("add client CA");
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_single_cert(chain, key).expect("server config");
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind TLS front");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let handshakes = Arc::new(Handshakes::default());
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let seen = handshakes.clone();
    thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let (tcp, _) = tokio::select! {
                    _ = &mut stopped => return,
                    a = listener.accept() => match a {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(t) => t,
                        Err(e) => {
                            if let Ok(mut f) = seen.failed.lock() {
                                f.push(e.to_string());
                            }
                            return;
                        }
                    };
                    let (_, conn) = tls.get_ref();
                    let sni = conn.server_name().map(str::to_string);
                    let alpn = conn
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned());
                    if let Ok(mut ok) = seen.ok.lock() {
                        ok.push((sni, alpn));
                    }
                    let Ok(mut plain) = tokio::net::TcpStream::connect(inner).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
    });
    TlsFront {
        addr,
        handshakes,
        stop: Some(stop),
    }
}
