//! STARTTLS (RFC 3207) on either side: a stream that starts in clear and may become
//! TLS in place, and what the handshake negotiated, in words.

use rustls::pki_types::CertificateDer;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection in clear that can be upgraded to TLS without changing type, so an
/// SMTP session keeps one stream field across STARTTLS.
#[derive(Debug)]
pub enum MaybeTls<S> {
    /// In clear.
    Plain(S),
    /// After a successful handshake.
    Tls(Box<tokio_rustls::TlsStream<S>>),
    /// A failed upgrade took the stream: nothing more can be read or written.
    Gone,
}

impl<S> MaybeTls<S> {
    /// The underlying stream in clear, leaving [`MaybeTls::Gone`] (for a handshake).
    pub fn take_plain(&mut self) -> Option<S> {
        match std::mem::replace(self, MaybeTls::Gone) {
            MaybeTls::Plain(s) => Some(s),
            other => {
                *self = other;
                None
            }
        }
    }

    /// The stream in clear, whether or not TLS runs over it.
    pub fn get_ref(&self) -> Option<&S> {
        match self {
            MaybeTls::Plain(s) => Some(s),
            MaybeTls::Tls(t) => Some(t.get_ref().0),
            MaybeTls::Gone => None,
        }
    }

    /// True after a successful handshake.
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the connection was lost in a failed TLS handshake",
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
            MaybeTls::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
            MaybeTls::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
            MaybeTls::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
            MaybeTls::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// What a TLS handshake negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.3`, `TLSv1.2`.
    pub version: String,
    /// The IANA name of the cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// The peer certificate's subject (`CN=mx.example.com, O=…`), when it sent one.
    pub peer_subject: Option<String>,
    /// The peer's certificate was verified against the trust store.
    pub verified: bool,
}

impl TlsInfo {
    /// Reads what a finished handshake negotiated.
    pub fn of(conn: &rustls::CommonState, verified: bool) -> TlsInfo {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
            Some(other) => other.as_str().unwrap_or("TLS").to_owned(),
            None => "TLS".to_owned(),
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown")
            .to_owned();
        let peer_subject = conn
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(subject);
        TlsInfo {
            version,
            cipher,
            peer_subject,
            verified,
        }
    }
}

impl fmt::Display for TlsInfo {
    /// `TLSv1.3/TLS13_AES_256_GCM_SHA384`, as the transaction log writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.version, self.cipher)
    }
}

/// A certificate's subject as RFC 4514 text.
pub fn subject(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.subject().to_string())
}

/// What made a certificate unacceptable, in the kinds TLS reporting (RFC 8460
/// §4.3.2.1) counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateFault {
    /// It does not name the host.
    HostMismatch,
    /// It has expired.
    Expired,
    /// It does not chain to a trusted root.
    NotTrusted,
    /// Anything else wrong with it (not yet valid, revoked, a bad signature).
    Other,
}

/// The certificate fault behind a failed handshake, when that is what failed.
pub fn certificate_fault(e: &io::Error) -> Option<CertificateFault> {
    use rustls::{CertificateError, Error};
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    let Error::InvalidCertificate(cert) = tls else {
        return None;
    };
    Some(match cert {
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            CertificateFault::HostMismatch
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            CertificateFault::Expired
        }
        CertificateError::UnknownIssuer => CertificateFault::NotTrusted,
        _ => CertificateFault::Other,
    })
}

/// A TLS failure in words: what an operator can act on, not rustls' enum names.
pub fn describe_tls_error(e: &io::Error) -> String {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return e.to_string();
    };
    use rustls::{CertificateError, Error};
    match tls {
        Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => {
                "certificate not trusted: issued by an unknown authority (add its CA to SSL_CERT_FILE, or use an *Insecure mode)".into()
            }
            CertificateError::NotValidForName => {
                "certificate not valid for the host name".into()
            }
            CertificateError::NotValidForNameContext { expected, presented } => format!(
                "certificate not valid for the host name {} (it names {})",
                expected.to_str(),
                presented
                    .iter()
                    .map(|p| p.trim_start_matches("DnsName(\"").trim_end_matches("\")"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not valid yet".into()
            }
            CertificateError::Revoked => "certificate revoked".into(),
            CertificateError::BadSignature => "certificate has a bad signature".into(),
            other => format!("certificate refused: {other}"),
        },
        Error::AlertReceived(alert) => format!(
            "the peer ended the handshake with the alert '{}'",
            alert.as_str().unwrap_or("unknown")
        ),
        Error::NoCertificatesPresented => "the peer presented no certificate".into(),
        other => format!("TLS handshake failed: {other}"),
    }
}
