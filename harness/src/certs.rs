//! Certificates for tests: a throw-away CA and the server certificates it signs (rcgen, the
//! rustls project's generator), so that clients verify thaw's and Postgres's TLS for real
//! instead of turning verification off.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

/// A certificate authority of one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate (PEM), for a client's trust store.
    pub pem: String,
}

/// A certificate and its key, in PEM.
pub struct Issued {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

impl TestCa {
    /// A new CA.
    pub fn new() -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "thaw test CA");
        let key = KeyPair::generate().expect("CA key");
        let pem = ca.self_signed(&key).expect("CA certificate").pem();
        Self {
            issuer: Issuer::new(ca, key),
            pem,
        }
    }

    /// A server certificate for `names` (DNS names, `*.` wildcards, or IP addresses), valid
    /// from a day ago for `days` more days (negative: expired).
    pub fn issue(&self, names: &[&str], days: i64) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        for name in names {
            params.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into().expect("a DNS name")),
            });
        }
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("thaw test"),
        );
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(days);
        let key = KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("server certificate");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
