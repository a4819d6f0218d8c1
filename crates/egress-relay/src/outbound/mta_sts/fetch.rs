//! Fetching a policy: `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`, the
//! certificate verified for `mta-sts.DOMAIN` against the system trust store
//! (`SSL_CERT_FILE` honoured), within a deadline.
//!
//! The HTTP is written here: one fixed HTTP/1.0 GET (no chunked coding, the
//! connection closes at the end of the body) and a 64 KiB cap (RFC 8461 §3.3
//! suggests that much), so the relay keeps its "no HTTP library" invariant.

use crate::dns::Dns;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest policy body read.
const MAX_BODY: usize = 64 * 1024;

/// The policy text for `domain`, or why not.
pub async fn policy_text(
    dns: &Dns,
    domain: &str,
    user_agent: &str,
    deadline: Duration,
) -> Result<String, String> {
    let host = format!("mta-sts.{domain}");
    tokio::time::timeout(deadline, get(dns, &host, user_agent))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "https://{host}/.well-known/mta-sts.txt: no answer within {} s",
                deadline.as_secs().max(1)
            ))
        })
}

async fn get(dns: &Dns, host: &str, user_agent: &str) -> Result<String, String> {
    let url = format!("https://{host}/.well-known/mta-sts.txt");
    let fail = |what: String| format!("{url}: {what}");
    let addrs = dns.addresses(host).await.map_err(|e| fail(e.to_string()))?;
    let mut last = String::from("no address");
    let mut tcp = None;
    for ip in addrs {
        match TcpStream::connect(SocketAddr::new(ip, 443)).await {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = format!("{ip}:443: {e}"),
        }
    }
    let tcp = tcp.ok_or_else(|| fail(last))?;
    let connector = crate::outbound::tls::verified_connector().map_err(fail)?;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| fail(format!("not a host name: {e}")))?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| fail(format!("TLS: {}", egress_smtp::describe_tls_error(&e))))?;
    let request = format!(
        "GET /.well-known/mta-sts.txt HTTP/1.0\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\nAccept: text/plain\r\n\r\n"
    );
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut response = Vec::with_capacity(4096);
    let read = (&mut tls)
        .take((MAX_BODY + 8192) as u64)
        .read_to_end(&mut response)
        .await;
    // Servers often end TLS without close_notify after an HTTP/1.0 body.
    if let Err(e) = read {
        if e.kind() != io::ErrorKind::UnexpectedEof || response.is_empty() {
            return Err(fail(e.to_string()));
        }
    }
    body_of(&response).map_err(fail)
}

/// The body of a 200 response.
fn body_of(response: &[u8]) -> Result<String, String> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the response has no end of headers")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("answered {status:?}"));
    }
    let body = &response[split + 4..];
    if body.len() > MAX_BODY {
        return Err(format!("the policy is larger than {MAX_BODY} bytes"));
    }
    String::from_utf8(body.to_vec()).map_err(|_| "the policy is not UTF-8 text".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_200_body_is_a_policy() {
        let ok = body_of(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nversion: STSv1\r\n");
        assert_eq!(ok.unwrap(), "version: STSv1\r\n");
        assert!(body_of(b"HTTP/1.0 404 Not Found\r\n\r\nno")
            .unwrap_err()
            .contains("404"));
        assert!(body_of(b"HTTP/1.0 200 OK\r\n").is_err());
    }
}
