//! TLS that the agent originates: towards a target's model servers (`tls:` on a target) and
//! towards token issuers (https discovery and key sets). One stack for both: rustls with the
//! ring provider (builds with a C compiler alone; aws-lc-rs would need cmake). The
//! workload's own TLS is never terminated: this is only the agent's side of its own
//! connections, so a workload can speak plain HTTP to a virtual address and the key and the
//! encryption are added here.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

/// `tls:` of a target. Paths only: key material is read once at start and never printed.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// PEM file of the CA certificates the server's chain must lead to; without it, the
    /// system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name the certificate must carry and SNI sends; without it, the upstream's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM certificate chain presented to a server that asks for one (mTLS).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

impl Settings {
    /// Checks that need no file: `Err` is the message after `tls.`.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => return Err("client_cert needs client_key".into()),
            (None, Some(_)) => return Err("client_key needs client_cert".into()),
            _ => {}
        }
        if let Some(n) = &self.server_name {
            ServerName::try_from(n.as_str())
                .map_err(|_| format!("server_name {n:?} is not a DNS name or IP address"))?;
        }
        Ok(())
    }

    /// Relative paths are taken from the configuration file's directory.
    pub fn resolve(&mut self, base: &Path) {
        for p in [
            &mut self.ca_file,
            &mut self.client_cert,
            &mut self.client_key,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: cannot read: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} {path}: {why}")]
    Bad {
        what: &'static str,
        path: String,
        why: String,
    },
    #[error("ca_file not set and no system root certificates could be loaded ({0})")]
    NoRoots(String),
    #[error("{0}")]
    Invalid(String),
}

/// The roots of the system's trust store (rustls-native-certs: /etc/ssl/certs and
/// `SSL_CERT_FILE`/`SSL_CERT_DIR`), read once. The operating system's store rather than a
/// bundle compiled in (webpki-roots): an operator's own CA, installed the usual way, is then
/// trusted, and the bundle follows the distribution's updates instead of the agent's.
fn system_roots() -> Result<Arc<RootCertStore>, Error> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_string(), ToString::to_string);
                return Err(why);
            }
            Ok(Arc::new(roots))
        })
        .clone()
        .map_err(Error::NoRoots)
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// A private key file others can read or replace is refused, as key files are
/// (`custody::source::exposure`).
fn private(what: &'static str, path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).map_err(|source| Error::Read {
        what,
        path: path.display().to_string(),
        source,
    })?;
    match crate::custody::source::exposure(meta.mode(), meta.uid(), nix::unistd::geteuid().as_raw())
    {
        None => Ok(()),
        Some(problem) => Err(bad(
            what,
            path,
            format!("is {problem}: fix with `chmod 600` and `chown`"),
        )),
    }
}

fn bad(what: &'static str, path: &Path, why: impl ToString) -> Error {
    Error::Bad {
        what,
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(what, path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad(what, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// A rustls client configuration: roots from `ca_file` or the system's, a client
/// certificate when both halves are given, and the ALPN protocols to offer.
pub fn client_config(
    ca_file: Option<&Path>,
    client: Option<(&Path, &Path)>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, Error> {
    let roots = match ca_file {
        None => system_roots()?,
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for c in certificates("ca_file", path)? {
                roots
                    .add(c)
                    .map_err(|e| bad("ca_file", path, format!("unusable CA certificate: {e}")))?;
            }
            Arc::new(roots)
        }
    };
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Invalid(e.to_string()))?
            .with_root_certificates(roots);
    let mut cfg = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certificates("client_cert", cert)?;
            private("client_key", key)?;
            let pem = zeroize::Zeroizing::new(read("client_key", key)?);
            // The key's bytes are never part of a message: only what kind of problem it is.
            let der = PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|_| bad("client_key", key, "holds no PEM private key"))?;
            builder
                .with_client_auth_cert(chain, der)
                .map_err(|e| bad("client_key", key, format!("unusable with client_cert: {e}")))?
        }
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// A rustls server configuration for the agent's own endpoints (the approvals endpoint):
/// the certificate chain and its private key, which must be private like every key file.
pub fn server_config(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, Error> {
    let chain = certificates("cert_file", cert)?;
    private("key_file", key)?;
    let pem = zeroize::Zeroizing::new(read("key_file", key)?);
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| bad("key_file", key, "holds no PEM private key"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Invalid(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, der)
    .map_err(|e| bad("key_file", key, format!("unusable with cert_file: {e}")))?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// How a handshake failed: which target, which name, why. Shown to the client in a 502 and
/// logged.
#[derive(Debug, Clone, thiserror::Error)]
#[error("(target {target}, name {name}): TLS: {why}")]
pub struct Failure {
    pub target: Arc<str>,
    pub name: String,
    pub why: String,
}

/// TLS to one target's servers.
pub struct Origin {
    /// Part of the HTTP pool's key (never 0, which is cleartext): connections of a target
    /// with TLS are never handed to another target or to cleartext requests.
    pub id: u32,
    target: Arc<str>,
    server_name: Option<ServerName<'static>>,
    /// `Host` for requests to this target's servers: the configured name.
    host: Option<http::HeaderValue>,
    h1: TlsConnector,
    h2: TlsConnector,
}

impl Origin {
    /// Reads the files the settings name; `Err` says which file and why.
    pub fn new(target_id: u32, target: &str, s: &Settings) -> Result<Self, Error> {
        s.validate().map_err(Error::Invalid)?;
        let client = s.client_cert.as_deref().zip(s.client_key.as_deref());
        let h1 = client_config(s.ca_file.as_deref(), client, &[b"http/1.1"])?;
        let h2 = client_config(s.ca_file.as_deref(), client, &[b"h2"])?;
        let server_name = match &s.server_name {
            None => None,
            Some(n) => Some(
                ServerName::try_from(n.clone())
                    .map_err(|_| Error::Invalid(format!("server_name {n:?} is not a name")))?,
            ),
        };
        let host = s
            .server_name
            .as_deref()
            .and_then(|n| http::HeaderValue::from_str(n).ok());
        Ok(Origin {
            id: target_id.saturating_add(1),
            target: target.into(),
            server_name,
            host,
            h1: TlsConnector::from(Arc::new(h1)),
            h2: TlsConnector::from(Arc::new(h2)),
        })
    }

    /// The `Host` a request to `authority` carries: the configured server name, else the
    /// authority dialled. Never the client's: behind a front that routes by `Host`, the
    /// client would choose which application receives the request (and any key Sluice put
    /// in it).
    pub fn host_header(&self, authority: &str) -> Option<http::HeaderValue> {
        self.host
            .clone()
            .or_else(|| http::HeaderValue::from_str(authority).ok())
    }

    /// The configured name, else the upstream's host (a name, or an IP address the
    /// certificate must then list).
    pub fn name_for(&self, host: &str) -> Result<ServerName<'static>, Failure> {
        match &self.server_name {
            Some(n) => Ok(n.clone()),
            None => ServerName::try_from(host.to_string()).map_err(|_| Failure {
                target: self.target.clone(),
                name: host.to_string(),
                why: "the upstream's host is not a valid server name; set tls.server_name".into(),
            }),
        }
    }

    /// The TLS handshake on a dialled connection, offering `h2` or `http/1.1` by ALPN.
    pub async fn connect(
        &self,
        stream: TcpStream,
        host: &str,
        h2: bool,
    ) -> Result<TlsStream<TcpStream>, Failure> {
        let name = self.name_for(host)?;
        let connector = if h2 { &self.h2 } else { &self.h1 };
        connector
            .connect(name.clone(), stream)
            .await
            .map_err(|e| Failure {
                target: self.target.clone(),
                name: name.to_str().into_owned(),
                why: describe(&e),
            })
    }
}

/// rustls' own reason when there is one ("invalid peer certificate: UnknownIssuer"), else
/// the I/O error (the server closed, reset, timed out).
pub fn describe(e: &std::io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(r) => r.to_string(),
        None => e.to_string(),
    }
}

/// A TLS acceptor for the unit tests' loopback servers: a certificate for `name` (a DNS name
/// or an IP address) issued by `ca`.
#[cfg(test)]
pub(crate) fn test_acceptor(
    name: &str,
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
) -> tokio_rustls::TlsAcceptor {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .expect("params")
        .signed_by(&key, ca)
        .expect("cert");
    let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("der");
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], der)
    .expect("server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_cert_and_key_go_together_and_names_are_checked() {
        let half = Settings {
            client_cert: Some("c.pem".into()),
            ..Settings::default()
        };
        assert_eq!(half.validate(), Err("client_cert needs client_key".into()));
        let half = Settings {
            client_key: Some("k.pem".into()),
            ..Settings::default()
        };
        assert_eq!(half.validate(), Err("client_key needs client_cert".into()));
        let name = Settings {
            server_name: Some("not a name!".into()),
            ..Settings::default()
        };
        assert!(name.validate().is_err_and(|e| e.contains("server_name")));
        assert_eq!(Settings::default().validate(), Ok(()));
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let mut s = Settings {
            ca_file: Some("ca.pem".into()),
            client_cert: Some("/abs/c.pem".into()),
            client_key: Some("k.pem".into()),
            server_name: None,
        };
        s.resolve(Path::new("/etc/sluice"));
        assert_eq!(s.ca_file.as_deref(), Some(Path::new("/etc/sluice/ca.pem")));
        assert_eq!(s.client_cert.as_deref(), Some(Path::new("/abs/c.pem")));
        assert_eq!(
            s.client_key.as_deref(),
            Some(Path::new("/etc/sluice/k.pem"))
        );
    }

    fn origin(s: &Settings) -> Origin {
        Origin::new(3, "openai", s).expect("origin")
    }

    fn ca_settings(dir: &Path) -> Settings {
        // A syntactically valid self-signed certificate: roots are parsed, not verified.
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, TEST_CA).expect("write");
        Settings {
            ca_file: Some(ca),
            ..Settings::default()
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn the_server_name_is_the_configured_one_else_the_upstream_host() {
        let dir = tempdir("name");
        let mut s = ca_settings(&dir);
        let o = origin(&s);
        assert_eq!(o.id, 4, "never 0, the cleartext key");
        let n = o.name_for("api.example.test").expect("dns");
        assert_eq!(n.to_str(), "api.example.test");
        let ip = o.name_for("127.0.0.1").expect("ip");
        assert!(matches!(ip, ServerName::IpAddress(_)));
        assert!(
            o.name_for("bad name!")
                .is_err_and(|f| f.to_string().contains("target openai"))
        );
        s.server_name = Some("models.internal".into());
        let o = origin(&s);
        assert_eq!(
            o.name_for("127.0.0.1").expect("set").to_str(),
            "models.internal"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bad_files_name_the_file_and_why() {
        let dir = tempdir("bad");
        let missing = Settings {
            ca_file: Some(dir.join("nope.pem")),
            ..Settings::default()
        };
        let e = Origin::new(0, "t", &missing)
            .err()
            .expect("missing")
            .to_string();
        assert!(
            e.starts_with("ca_file ") && e.contains("nope.pem: cannot read"),
            "{e}"
        );
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        let e = Origin::new(
            0,
            "t",
            &Settings {
                ca_file: Some(junk.clone()),
                ..Settings::default()
            },
        )
        .err()
        .expect("junk")
        .to_string();
        assert!(e.contains("junk.pem: holds no PEM certificate"), "{e}");
        let mut s = ca_settings(&dir);
        s.client_cert = Some(dir.join("ca.pem"));
        s.client_key = Some(junk.clone());
        let e = Origin::new(0, "t", &s).err().expect("exposed").to_string();
        assert!(
            e.starts_with("client_key ") && e.contains("readable by everyone (mode 0644)"),
            "{e}"
        );
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let e = Origin::new(0, "t", &s).err().expect("key").to_string();
        assert!(
            e.starts_with("client_key ") && e.contains("holds no PEM private key"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn empty_settings_use_the_system_roots_or_say_there_are_none() {
        match Origin::new(0, "t", &Settings::default()) {
            Ok(o) => assert!(o.server_name.is_none()),
            Err(e) => assert!(
                e.to_string()
                    .starts_with("ca_file not set and no system root certificates"),
                "{e}"
            ),
        }
    }

    /// A throwaway self-signed CA certificate (no key kept anywhere).
    const TEST_CA: &str = include_str!("tls/testdata/ca.pem");
}
