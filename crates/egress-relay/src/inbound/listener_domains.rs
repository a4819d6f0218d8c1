//! Relaying for clients outside `relay_hosts`, as the policy's
//! `get_listener_domain` says (KumoMTA's event): `relay_to` opens a recipient
//! domain to anyone (an MX backup, an inbound relay); `relay_from` lets clients
//! in its networks relay anywhere when the sender's domain is the one named.

use egress_policy::{Policy, PolicyError};
use egress_smtp::Reply;
use std::net::IpAddr;

/// Whether the policy lets `client` relay this recipient: asked first of the
/// recipient's domain (`relay_to`), then of the sender's (`relay_from`). A
/// policy error is a 4xx (the client keeps the message), never a refusal.
pub async fn permits(
    policy: &dyn Policy,
    listener: &str,
    conn_meta: &[(&str, String)],
    client: IpAddr,
    sender: &str,
    recipient: &str,
) -> Result<bool, Reply> {
    let failed = |e: PolicyError| {
        Reply::new(
            451,
            [4, 3, 0],
            format!("get_listener_domain failed: {}", first_line(&e.to_string())),
        )
    };
    if let Some(domain) = domain_of(recipient) {
        let said = policy
            .listener_domain(domain, listener, conn_meta)
            .await
            .map_err(failed)?;
        if said.is_some_and(|d| d.relay_to) {
            return Ok(true);
        }
    }
    if let Some(domain) = domain_of(sender) {
        let said = policy
            .listener_domain(domain, listener, conn_meta)
            .await
            .map_err(failed)?;
        if said.is_some_and(|d| d.relays_from(client)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The domain of `local@domain` (none for the null sender or a bare name).
fn domain_of(address: &str) -> Option<&str> {
    address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::domain_of;

    #[test]
    fn domains_of_addresses() {
        assert_eq!(domain_of("u@example.com"), Some("example.com"));
        assert_eq!(domain_of("\"a@b\"@example.com"), Some("example.com"));
        assert_eq!(domain_of(""), None);
        assert_eq!(domain_of("postmaster"), None);
    }
}
