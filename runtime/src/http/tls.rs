//! TLS on the data plane: certificates from files, chosen per SNI name, reloaded when their
//! files change, and the ALPN that offers HTTP/2.
//!
//! # Sources
//! - **One pair** (`--tls-cert FILE --tls-key FILE`): served for every name, and to clients
//!   that send no SNI.
//! - **A directory** (`--tls-dir DIR`): every `NAME.crt` with its `NAME.key` beside it. A
//!   certificate is served for the DNS names it holds (its subject alternative names,
//!   wildcards included), whatever its files are called, so the directory can be filled by
//!   any ACME client. A pair that does not load is logged and skipped (one expired
//!   certificate must not keep the others' renewals out); none loading is an error. A client whose SNI matches none (or that sends none) fails the
//!   handshake with `unrecognized_name`: there is no certificate that could be right for it.
//!
//! # Checked at load
//! PEM, the certificate first in its file with its chain after it; the key (PKCS#8, PKCS#1
//! or SEC1) must be the certificate's (rustls compares the public keys); the certificate must
//! be valid now (an expired or not-yet-valid one is refused: serving it would only move the
//! error to every client). Each refusal names the file and says why.
//!
//! # Reload
//! A task looks at the files every [`RELOAD_INTERVAL`] (their length and modification time,
//! and for a directory its listing): a change loads everything again, and the new set
//! replaces the old one for the next handshake, with no restart and no dropped connection.
//! A set that fails to load keeps the old one serving and is logged with the reason; a later
//! change is tried again. Polling rather than inotify: it sees a renamed-over file, a
//! Kubernetes secret's symlink swap and a network filesystem alike, and two `stat`s a second
//! cost nothing.
//!
//! # Sessions
//! rustls's defaults: TLS 1.3 and 1.2, the ring provider's suites, and stateful resumption
//! from a cache of 256 sessions in memory, per listener. Tickets are not issued (a ticket key
//! would have to be shared and rotated across a cluster's nodes to be worth it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often the certificate files are looked at for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Where the certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsSource {
    /// One certificate (with its chain) and its key.
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A directory of `NAME.crt` and `NAME.key` files.
    Dir(PathBuf),
}

/// A loaded set of certificates.
#[derive(Debug)]
struct Loaded {
    /// For [`TlsSource::Pair`]: the one certificate.
    only: Option<Arc<CertifiedKey>>,
    /// For [`TlsSource::Dir`]: by exact DNS name (lower case).
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// For [`TlsSource::Dir`]: `*.example.com` certificates, by `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

/// The certificates a listener serves, swapped whole on reload.
#[derive(Debug)]
pub struct Certificates {
    source: TlsSource,
    loaded: ArcSwap<Loaded>,
    /// What the files looked like when `loaded` was read.
    stamp: std::sync::Mutex<Vec<Stamp>>,
}

/// A file's identity for change detection.
type Stamp = (PathBuf, u64, Option<SystemTime>);

impl Certificates {
    /// Loads `source`; the error names the file and the reason.
    pub fn load(source: TlsSource) -> Result<Arc<Self>, String> {
        let stamp = stamp(&source);
        let loaded = load(&source)?;
        Ok(Arc::new(Self {
            source,
            loaded: ArcSwap::from_pointee(loaded),
            stamp: std::sync::Mutex::new(stamp),
        }))
    }

    /// Loads again if the files changed since the last load. `Ok(true)`: a new set serves;
    /// `Err`: the files changed but did not load, and the old set serves on.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = stamp(&self.source);
        let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if *last == now {
            return Ok(false);
        }
        // Remembered before loading: a set that fails is not retried until it changes again.
        *last = now;
        drop(last);
        let loaded = load(&self.source)?;
        self.loaded.store(Arc::new(loaded));
        Ok(true)
    }

    /// The server configuration of a listener: these certificates, ALPN `h2` then
    /// `http/1.1`.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Reloads every [`RELOAD_INTERVAL`] until `shutdown` fires, logging what happened.
    pub async fn watch(self: Arc<Self>, mut shutdown: super::server::Shutdown) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(RELOAD_INTERVAL) => {}
                () = shutdown.wait() => return,
            }
            let certificates = self.clone();
            let result = tokio::task::spawn_blocking(move || certificates.reload_if_changed())
                .await
                .unwrap_or_else(|e| Err(format!("the reload task failed: {e}")));
            match result {
                Ok(true) => tracing::info!("TLS certificates reloaded"),
                Ok(false) => {}
                Err(e) => tracing::error!(
                    "TLS certificates changed but did not load; serving the previous ones: {e}"
                ),
            }
        }
    }
}

#[derive(Debug)]
struct Resolver(Arc<Certificates>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let loaded = self.0.loaded.load();
        if let Some(only) = &loaded.only {
            return Some(only.clone());
        }
        // rustls hands over the SNI name validated and in lower case.
        let name = hello.server_name()?;
        loaded.exact.get(name).cloned().or_else(|| {
            let (_, parent) = name.split_once('.')?;
            loaded.wildcard.get(parent).cloned()
        })
    }
}

fn stamp(source: &TlsSource) -> Vec<Stamp> {
    let files: Vec<PathBuf> = match source {
        TlsSource::Pair { cert, key } => vec![cert.clone(), key.clone()],
        TlsSource::Dir(dir) => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map(|entries| entries.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            files.sort();
            files.push(dir.clone());
            files
        }
    };
    files
        .into_iter()
        .map(|path| {
            // `metadata` follows symlinks: a swapped link target is a change.
            let meta = std::fs::metadata(&path).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (path, len, modified)
        })
        .collect()
}

fn load(source: &TlsSource) -> Result<Loaded, String> {
    let mut loaded = Loaded {
        only: None,
        exact: HashMap::new(),
        wildcard: HashMap::new(),
    };
    match source {
        TlsSource::Pair { cert, key } => {
            loaded.only = Some(Arc::new(certified_key(cert, key)?.0));
        }
        TlsSource::Dir(dir) => {
            let entries =
                std::fs::read_dir(dir).map_err(|e| format!("--tls-dir {}: {e}", dir.display()))?;
            let mut certs: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "crt"))
                .collect();
            certs.sort();
            if certs.is_empty() {
                return Err(format!(
                    "--tls-dir {}: no NAME.crt files (each with its NAME.key)",
                    dir.display()
                ));
            }
            // A pair that does not load (expired, its key missing or another's) is logged and
            // skipped: one stale certificate must not stop the others' renewals from loading.
            let mut refused = Vec::new();
            for cert in certs {
                let key = cert.with_extension("key");
                let (certified, names) = match certified_key(&cert, &key) {
                    Ok(loaded) => loaded,
                    Err(why) => {
                        tracing::warn!("TLS: skipping a certificate of --tls-dir: {why}");
                        refused.push(why);
                        continue;
                    }
                };
                let certified = Arc::new(certified);
                for name in names {
                    match name.strip_prefix("*.") {
                        Some(parent) => {
                            loaded.wildcard.insert(parent.to_owned(), certified.clone())
                        }
                        None => loaded.exact.insert(name, certified.clone()),
                    };
                }
            }
            if loaded.exact.is_empty() && loaded.wildcard.is_empty() {
                return Err(format!(
                    "--tls-dir {}: no certificate loads ({})",
                    dir.display(),
                    refused.join("; ")
                ));
            }
        }
    }
    Ok(loaded)
}

/// The certificate of `cert` (chain after it) with the key of `key`, and the DNS names it is
/// for (lower case).
fn certified_key(cert: &Path, key: &Path) -> Result<(CertifiedKey, Vec<String>), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", cert.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{}: holds no certificate", cert.display()));
    };
    let names = check_leaf(leaf).map_err(|why| format!("{}: {why}", cert.display()))?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{}: not a PEM private key file: {e}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("{}: an unusable private key: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| {
        format!(
            "{} is not the key of {} (their public keys differ)",
            key.display(),
            cert.display()
        )
    })?;
    Ok((certified, names))
}

/// The leaf's DNS names, if it is valid now.
fn check_leaf(leaf: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("not a readable X.509 certificate: {e}"))?;
    let validity = parsed.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now > validity.not_after {
        return Err(format!("the certificate expired on {}", validity.not_after));
    }
    if now < validity.not_before {
        return Err(format!(
            "the certificate is not valid before {}",
            validity.not_before
        ));
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        cert: String,
        key: String,
    }

    fn pair(names: &[&str], not_after_days: i64) -> Pair {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(2);
        params.not_after = now + time::Duration::days(not_after_days);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    #[test]
    fn a_pair_loads_and_a_wrong_key_or_expired_certificate_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("a.crt"), dir.path().join("a.key"));
        let good = pair(&["a.test"], 30);
        std::fs::write(&cert, &good.cert).unwrap();
        std::fs::write(&key, &good.key).unwrap();
        let source = TlsSource::Pair {
            cert: cert.clone(),
            key: key.clone(),
        };
        let certificates = Certificates::load(source.clone()).unwrap();
        assert!(
            !certificates.reload_if_changed().unwrap(),
            "nothing changed"
        );

        std::fs::write(&key, pair(&["a.test"], 30).key).unwrap();
        let e = Certificates::load(source.clone()).unwrap_err();
        assert!(e.contains("is not the key of"), "{e}");
        // The running set keeps serving what it had.
        let e = certificates.reload_if_changed().unwrap_err();
        assert!(e.contains("is not the key of"), "{e}");
        assert!(certificates.loaded.load().only.is_some());

        let expired = pair(&["a.test"], -1);
        std::fs::write(&cert, &expired.cert).unwrap();
        std::fs::write(&key, &expired.key).unwrap();
        let e = Certificates::load(source).unwrap_err();
        assert!(e.contains("a.crt: the certificate expired"), "{e}");

        std::fs::write(&cert, "not pem").unwrap();
        let e = load(&TlsSource::Pair { cert, key }).unwrap_err();
        assert!(e.contains("a.crt: holds no certificate"), "{e}");
    }

    #[test]
    fn a_directory_serves_each_certificate_for_its_names() {
        let dir = tempfile::tempdir().unwrap();
        for (file, names) in [
            ("one", &["api.example.com"][..]),
            ("two", &["*.example.org", "example.org"][..]),
        ] {
            let p = pair(names, 30);
            std::fs::write(dir.path().join(format!("{file}.crt")), p.cert).unwrap();
            std::fs::write(dir.path().join(format!("{file}.key")), p.key).unwrap();
        }
        let loaded = load(&TlsSource::Dir(dir.path().to_owned())).unwrap();
        assert!(loaded.exact.contains_key("api.example.com"));
        assert!(loaded.exact.contains_key("example.org"));
        assert!(loaded.wildcard.contains_key("example.org"));
        // A pair that does not load is skipped; the others serve.
        std::fs::remove_file(dir.path().join("two.key")).unwrap();
        let loaded = load(&TlsSource::Dir(dir.path().to_owned())).unwrap();
        assert!(loaded.exact.contains_key("api.example.com"));
        assert!(!loaded.exact.contains_key("example.org"));
        // None that loads: an error naming why.
        std::fs::remove_file(dir.path().join("one.key")).unwrap();
        let e = load(&TlsSource::Dir(dir.path().to_owned())).unwrap_err();
        assert!(e.contains("two.key: not a PEM private key file"), "{e}");
    }
}
