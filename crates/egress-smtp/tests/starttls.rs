//! STARTTLS on the client side, against a TLS server in the same process.

use egress_smtp::{CertificateFault, ClientSession, StartTlsError, Timeouts};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate for mx.tls.test, and a client that trusts it.
fn pki() -> (tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["mx.tls.test".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let der = CertificateDer::from(cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        tokio_rustls::TlsConnector::from(Arc::new(client)),
    )
}

async fn line(r: &mut BufReader<DuplexStream>) -> String {
    let mut l = String::new();
    r.read_line(&mut l).await.unwrap();
    l
}

fn session(a: DuplexStream) -> ClientSession<DuplexStream> {
    ClientSession::new(a, Timeouts::uniform(Duration::from_secs(5)))
}

/// The destination's side up to STARTTLS: banner, EHLO offering STARTTLS, the
/// STARTTLS command read, then `after` written in clear.
async fn offer_starttls(b: DuplexStream, after: &[u8]) -> BufReader<DuplexStream> {
    let mut r = BufReader::new(b);
    r.get_mut().write_all(b"220 mx\r\n").await.unwrap();
    assert!(line(&mut r).await.starts_with("EHLO"));
    r.get_mut()
        .write_all(b"250-mx\r\n250 STARTTLS\r\n")
        .await
        .unwrap();
    assert_eq!(line(&mut r).await, "STARTTLS\r\n");
    r.get_mut().write_all(after).await.unwrap();
    r
}

#[tokio::test]
async fn starttls_then_ehlo_again_over_tls() {
    let (acceptor, connector) = pki();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let r = offer_starttls(b, b"220 go ahead\r\n").await;
        let tls = acceptor.accept(r.into_inner()).await.unwrap();
        let mut r = BufReader::new(tls);
        assert_eq!(line_tls(&mut r).await, "EHLO me.test\r\n");
        r.get_mut()
            .write_all(b"250-mx\r\n250 8BITMIME\r\n")
            .await
            .unwrap();
        assert!(line_tls(&mut r).await.starts_with("MAIL FROM:<a@b>"));
        r.get_mut().write_all(b"250 ok\r\n").await.unwrap();
    });
    let mut smtp = session(a);
    smtp.greet("me.test").await.unwrap();
    assert!(smtp.extensions().starttls);
    let name = ServerName::try_from("mx.tls.test").unwrap();
    let info = smtp
        .starttls(&connector, name, true, "me.test", Duration::from_secs(5))
        .await
        .unwrap()
        .clone();
    assert_eq!(info.version, "TLSv1.3");
    assert!(info.cipher.starts_with("TLS13_"), "{info:?}");
    assert!(info.verified);
    assert!(smtp.extensions().eight_bit_mime && !smtp.extensions().starttls);
    assert_eq!(smtp.mail("<a@b>", false).await.unwrap().code, 250);
    assert_eq!(
        smtp.tls().unwrap().to_string(),
        format!("TLSv1.3/{}", info.cipher)
    );
    server.await.unwrap();
}

async fn line_tls<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> String {
    let mut l = String::new();
    r.read_line(&mut l).await.unwrap();
    l
}

#[tokio::test]
async fn data_after_the_220_is_refused_and_a_wrong_name_fails_in_words() {
    let (_, connector) = pki();
    let (a, b) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        // A reply injected in clear, to be read as if it came over TLS.
        let _r = offer_starttls(b, b"220 go ahead\r\n250 injected\r\n").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let mut smtp = session(a);
    smtp.greet("me.test").await.unwrap();
    let name = ServerName::try_from("mx.tls.test").unwrap();
    let err = smtp
        .starttls(&connector, name, true, "me.test", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, StartTlsError::Handshake(_)), "{err}");
    assert!(err.to_string().contains("before TLS began"), "{err}");
    assert!(!smtp.is_clean().await);

    let (acceptor, connector) = pki();
    let (a, b) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let r = offer_starttls(b, b"220 go ahead\r\n").await;
        let _ = acceptor.accept(r.into_inner()).await;
    });
    let mut smtp = session(a);
    smtp.greet("me.test").await.unwrap();
    let wrong = ServerName::try_from("other.test").unwrap();
    let err = smtp
        .starttls(&connector, wrong, true, "me.test", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("certificate not valid for the host name"),
        "{err}"
    );
    assert!(
        matches!(
            err,
            StartTlsError::Certificate {
                fault: CertificateFault::HostMismatch,
                ..
            }
        ),
        "what TLS reporting counts: {err:?}"
    );
}

#[tokio::test]
async fn not_offered_is_said_plainly() {
    let (_, connector) = pki();
    let (a, b) = tokio::io::duplex(1024);
    tokio::spawn(async move {
        let mut r = BufReader::new(b);
        r.get_mut().write_all(b"220 mx\r\n").await.unwrap();
        line(&mut r).await;
        r.get_mut().write_all(b"250 mx\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let mut smtp = session(a);
    smtp.greet("me.test").await.unwrap();
    let err = smtp
        .starttls(
            &connector,
            ServerName::try_from("mx.tls.test").unwrap(),
            true,
            "me.test",
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "STARTTLS required but not offered");
    assert!(
        smtp.is_clean().await,
        "nothing was sent; the session is usable"
    );
}
