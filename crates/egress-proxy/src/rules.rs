//! Who may do what through the proxy. KumoProxy leaves this to firewalls;
//! egress-proxy refuses by rule, answers with SOCKS5's own code ("connection not
//! allowed by ruleset") and logs why, because an IP whose reputation is money
//! must never be an open proxy.

use ipnet::IpNet;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

/// Checks RFC 1929 credentials: a file of `username:password` lines
/// ([`PasswordFile`]), or the policy's `proxy_server_auth_rfc1929` event.
pub trait Authenticator: Send + Sync {
    /// Whether `user` with `password`, from `peer` to `local`, may use the proxy.
    fn check<'a>(
        &'a self,
        user: &'a [u8],
        password: &'a [u8],
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
}

/// Credentials from `username:password` lines.
pub struct PasswordFile(HashMap<Vec<u8>, Vec<u8>>);

impl PasswordFile {
    /// Reads `username:password` lines (`#` comments and blank lines skipped).
    pub fn parse(text: &str) -> Result<PasswordFile, String> {
        let mut out = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let Some((user, password)) = line.split_once(':') else {
                return Err(format!(
                    "line {}: expected `username:password`, got no ':'",
                    n + 1
                ));
            };
            if user.is_empty() || user.len() > 255 || password.len() > 255 {
                return Err(format!(
                    "line {}: username and password must be 1 to 255 bytes (RFC 1929)",
                    n + 1
                ));
            }
            out.insert(user.as_bytes().to_vec(), password.as_bytes().to_vec());
        }
        Ok(PasswordFile(out))
    }
}

impl Authenticator for PasswordFile {
    fn check<'a>(
        &'a self,
        user: &'a [u8],
        password: &'a [u8],
        _peer: SocketAddr,
        _local: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        let known = self.0.get(user);
        // Constant time in the password's bytes.
        let ok = known.is_some_and(|known| {
            known.len() == password.len()
                && known
                    .iter()
                    .zip(password)
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        Box::pin(std::future::ready(ok))
    }
}

/// The rules of one listener.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Clients that may use the proxy. Default: loopback only.
    pub clients: Vec<IpNet>,
    /// Source addresses clients may ask for (BIND). Empty: any address assigned
    /// to this host — the bind itself tells (`EADDRNOTAVAIL` otherwise).
    pub sources: Vec<IpNet>,
    /// Destination ports that may be reached. Empty: any (see the README for why
    /// that is the default).
    pub ports: Vec<u16>,
    /// When set, clients must authenticate (RFC 1929) and this checks them.
    pub auth: Option<Arc<dyn Authenticator>>,
}

impl std::fmt::Debug for dyn Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator")
    }
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            clients: vec![
                "127.0.0.0/8".parse().expect("a CIDR"),
                "::1/128".parse().expect("a CIDR"),
            ],
            sources: Vec::new(),
            ports: Vec::new(),
            auth: None,
        }
    }
}

impl Rules {
    /// `client` may use the proxy (IPv4-mapped IPv6 is matched as IPv4).
    pub fn client_allowed(&self, client: IpAddr) -> bool {
        let ip = client.to_canonical();
        self.clients.iter().any(|net| net.contains(&ip))
    }

    /// `source` may be asked for; None, or why not.
    pub fn source_refusal(&self, source: IpAddr) -> Option<String> {
        let ip = source.to_canonical();
        if self.sources.is_empty() || self.sources.iter().any(|net| net.contains(&ip)) {
            return None;
        }
        Some(format!(
            "source address {ip} is not in the allowed sources ({})",
            words(&self.sources)
        ))
    }

    /// `port` may be reached; None, or why not.
    pub fn port_refusal(&self, port: u16) -> Option<String> {
        if self.ports.is_empty() || self.ports.contains(&port) {
            return None;
        }
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        Some(format!(
            "destination port {port} is not in the allowed ports ({})",
            ports.join(", ")
        ))
    }
}

fn words(nets: &[IpNet]) -> String {
    nets.iter()
        .map(IpNet::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_loopback_clients_any_assigned_source_any_port() {
        let r = Rules::default();
        assert!(r.client_allowed("127.0.0.9".parse().unwrap()));
        assert!(r.client_allowed("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!r.client_allowed("192.0.2.1".parse().unwrap()));
        assert!(r.source_refusal("192.0.2.1".parse().unwrap()).is_none());
        assert!(r.port_refusal(443).is_none());
    }

    #[test]
    fn lists_restrict_and_say_why() {
        let r = Rules {
            sources: vec!["10.0.0.0/24".parse().unwrap()],
            ports: vec![25, 587],
            ..Rules::default()
        };
        let why = r.source_refusal("10.0.1.1".parse().unwrap()).unwrap();
        assert!(why.contains("10.0.0.0/24"), "{why}");
        assert!(r.port_refusal(25).is_none());
        assert!(r.port_refusal(80).unwrap().contains("25, 587"));
    }

    #[tokio::test]
    async fn credentials_file() {
        let file = PasswordFile::parse("# relays\nrelay1:s3cret\n\nrelay2:p:w\n").unwrap();
        let at: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(file.check(b"relay1", b"s3cret", at, at).await);
        assert!(file.check(b"relay2", b"p:w", at, at).await);
        assert!(!file.check(b"relay1", b"s3cre", at, at).await);
        assert!(!file.check(b"nobody", b"s3cret", at, at).await);
        assert!(PasswordFile::parse("nocolon")
            .err()
            .unwrap()
            .contains("line 1"));
    }
}
