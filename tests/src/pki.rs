//! A certificate authority made for one test: a CA certificate to trust (through
//! `SSL_CERT_FILE`) and certificates it issues for test servers, as PEM files.

use std::net::IpAddr;
use std::path::PathBuf;

/// A CA and the directory its PEM files are written to.
pub struct TestCa {
    dir: tempfile::TempDir,
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

/// A certificate issued by a [`TestCa`]: the PEM files.
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl TestCa {
    /// A fresh CA, `CN=egress test CA <pid>.<n>`: distinct names, so a certificate
    /// from one CA is never mistaken for another's (which would read as a bad
    /// signature rather than an unknown issuer).
    pub fn new() -> TestCa {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = tempfile::Builder::new()
            .prefix("egress-ca-")
            .tempdir()
            .expect("temp dir");
        // Postfix's daemons read these files as the `postfix` user.
        crate::set_mode(dir.path(), 0o755);
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("egress test CA {}.{n}", std::process::id()),
        );
        let cert = params.self_signed(&key).expect("CA certificate");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("write ca.pem");
        TestCa { dir, key, cert }
    }

    /// The CA certificate (for `SSL_CERT_FILE`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A server certificate for `dns_name` (and `ip`), written as `NAME.pem` and
    /// `NAME.key`.
    pub fn issue(&self, dns_name: &str, ip: Option<IpAddr>) -> Issued {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec![dns_name.to_owned()]).expect("params");
        if let Some(ip) = ip {
            params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, dns_name);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("issue");
        let out = Issued {
            cert: self.dir.path().join(format!("{dns_name}.pem")),
            key: self.dir.path().join(format!("{dns_name}.key")),
        };
        std::fs::write(&out.cert, cert.pem()).expect("write cert");
        std::fs::write(&out.key, key.serialize_pem()).expect("write key");
        crate::set_mode(&out.key, 0o644);
        out
    }
}

/// How a [`TestCa::self_signed`] certificate is odd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfSigned {
    /// Made by `openssl req -x509`, which marks it `CA:TRUE` (as most
    /// hand-made MX certificates are).
    OpensslCa,
    /// Expired a year ago.
    Expired,
    /// Valid, for the name given (callers give one the MX is not called).
    Plain,
}

impl TestCa {
    /// A self-signed certificate (no CA of this one) for `dns_name`, written as
    /// `NAME.pem` and `NAME.key` in this CA's directory.
    pub fn self_signed(&self, dns_name: &str, kind: SelfSigned) -> Issued {
        let out = Issued {
            cert: self.dir.path().join(format!("{dns_name}.pem")),
            key: self.dir.path().join(format!("{dns_name}.key")),
        };
        if kind == SelfSigned::OpensslCa {
            let status = std::process::Command::new(crate::require("openssl"))
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                ])
                .arg("-subj")
                .arg(format!("/CN={dns_name}"))
                .arg("-keyout")
                .arg(&out.key)
                .arg("-out")
                .arg(&out.cert)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl req -x509");
            assert!(status.success(), "openssl req -x509 failed");
        } else {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params =
                rcgen::CertificateParams::new(vec![dns_name.to_owned()]).expect("params");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, dns_name);
            if kind == SelfSigned::Expired {
                params.not_before = rcgen::date_time_ymd(2024, 1, 1);
                params.not_after = rcgen::date_time_ymd(2025, 1, 1);
            }
            let cert = params.self_signed(&key).expect("self-signed");
            std::fs::write(&out.cert, cert.pem()).expect("write cert");
            std::fs::write(&out.key, key.serialize_pem()).expect("write key");
        }
        crate::set_mode(&out.key, 0o644);
        out
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
