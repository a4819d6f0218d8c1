//! Which of a domain's destination hosts a path may use: `ip_lookup_strategy`
//! picks the address families, `skip_hosts` removes hosts, and `prohibited_hosts`
//! — or, when a policy leaves it unset, egressd's own listening addresses —
//! refuses the destination outright.
//!
//! KumoMTA prohibits loopback by default. A relay's next hop is often on loopback
//! (a local LMTP store, a local smarthost), so egressd's default refuses only
//! the real loop: a destination that is one of its own listeners.

use crate::dns::Destination;
use egress_smtp::Reply;
use egress_source::{EgressPathConfig, IpLookupStrategy};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

/// The addresses egressd's listeners are bound to.
#[derive(Default)]
pub struct OwnAddresses(Mutex<Vec<SocketAddr>>);

impl OwnAddresses {
    /// Notes a listener's bound address.
    pub fn add(&self, addr: SocketAddr) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(addr);
    }

    /// `addr` reaches one of our listeners: the same port, and the same address —
    /// or any loopback or unspecified address when the listener is bound to all.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        let own = self.0.lock().unwrap_or_else(|e| e.into_inner());
        own.iter().any(|l| {
            l.port() == addr.port()
                && (l.ip().to_canonical() == addr.ip().to_canonical()
                    || (l.ip().is_unspecified()
                        && (addr.ip().is_loopback() || addr.ip().is_unspecified())))
        })
    }
}

/// The hosts `path` lets this transaction try, in order, each with the port it is
/// reached on; the refusal when none may be tried.
pub fn for_path<'a>(
    hosts: &'a [Destination],
    path: &EgressPathConfig,
    port_of: impl Fn(&Destination) -> u16,
    own: &OwnAddresses,
) -> Result<Vec<(&'a Destination, SocketAddr)>, Reply> {
    let chosen = by_strategy(hosts, path.ip_lookup_strategy);
    if chosen.is_empty() {
        return Err(Reply::new(
            451,
            [4, 4, 4],
            format!(
                "MX didn't resolve to any hosts (ip_lookup_strategy = {:?})",
                path.ip_lookup_strategy
            ),
        ));
    }
    let with_ports: Vec<_> = chosen
        .into_iter()
        .map(|d| (d, SocketAddr::new(d.ip, port_of(d))))
        .collect();
    // Every host is checked, not only the ones reached: KumoMTA fails the whole
    // destination when any of its hosts is prohibited.
    for (dest, addr) in &with_ports {
        let refused = match &path.prohibited_hosts {
            Some(list) => listed(list, dest.ip).map(|net| {
                format!(
                    "{} [{}] is in prohibited_hosts ({net} of {})",
                    dest.host,
                    dest.ip,
                    words(list)
                )
            }),
            None => own.contains(*addr).then(|| {
                format!(
                    "{} [{addr}] is one of egressd's own listeners: delivering there would loop \
                     (prohibited_hosts, when a policy sets it, decides instead)",
                    dest.host
                )
            }),
        };
        if let Some(text) = refused {
            return Err(Reply::new(550, [5, 4, 4], text));
        }
    }
    let kept: Vec<_> = with_ports
        .into_iter()
        .filter(|(d, _)| listed(&path.skip_hosts, d.ip).is_none())
        .collect();
    if kept.is_empty() {
        return Err(Reply::new(
            451,
            [4, 4, 4],
            format!(
                "MX consisted solely of hosts on the skip_hosts list ({})",
                words(&path.skip_hosts)
            ),
        ));
    }
    Ok(kept)
}

/// The network of `list` that holds `ip`.
fn listed(list: &[IpNet], ip: IpAddr) -> Option<&IpNet> {
    let ip = ip.to_canonical();
    list.iter().find(|net| net.contains(&ip))
}

fn words(list: &[IpNet]) -> String {
    list.iter()
        .map(IpNet::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The addresses of each host the strategy keeps, hosts in their order; within a
/// host, IPv4 before IPv6 when both are used.
fn by_strategy(hosts: &[Destination], strategy: IpLookupStrategy) -> Vec<&Destination> {
    use IpLookupStrategy::*;
    let mut out = Vec::with_capacity(hosts.len());
    let mut i = 0;
    while i < hosts.len() {
        // The list holds each host's addresses together.
        let same = hosts[i..]
            .iter()
            .take_while(|d| d.host == hosts[i].host && same_entry(d, &hosts[i]))
            .count();
        let group = &hosts[i..i + same];
        let v4 = || group.iter().filter(|d| d.ip.to_canonical().is_ipv4());
        let v6 = || group.iter().filter(|d| !d.ip.to_canonical().is_ipv4());
        match strategy {
            Ipv4AndIpv6 => out.extend(v4().chain(v6())),
            Ipv4Only => out.extend(v4()),
            Ipv6Only => out.extend(v6()),
            Ipv4ThenIpv6 if v4().next().is_some() => out.extend(v4()),
            Ipv4ThenIpv6 => out.extend(v6()),
            Ipv6ThenIpv4 if v6().next().is_some() => out.extend(v6()),
            Ipv6ThenIpv4 => out.extend(v4()),
        }
        i += same;
    }
    out
}

fn same_entry(a: &Destination, b: &Destination) -> bool {
    a.entry.as_ref().map(|e| e.port()) == b.entry.as_ref().map(|e| e.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(host: &str, ip: &str) -> Destination {
        Destination {
            host: host.into(),
            ip: ip.parse().unwrap(),
            entry: None,
            secure_chain: false,
        }
    }

    fn path(lua_like: &str) -> EgressPathConfig {
        serde_json::from_str(lua_like).unwrap()
    }

    fn ips(r: &Result<Vec<(&Destination, SocketAddr)>, Reply>) -> Vec<String> {
        r.as_ref()
            .unwrap()
            .iter()
            .map(|(_, a)| a.ip().to_string())
            .collect()
    }

    #[test]
    fn strategies_choose_families_per_host() {
        let hosts = [
            dest("mx1", "2001:db8::1"),
            dest("mx1", "192.0.2.1"),
            dest("mx2", "2001:db8::2"),
        ];
        let own = OwnAddresses::default();
        let run = |s: &str| {
            ips(&for_path(
                &hosts,
                &path(&format!(r#"{{ "ip_lookup_strategy": "{s}" }}"#)),
                |_| 25,
                &own,
            ))
        };
        assert_eq!(
            run("Ipv4AndIpv6"),
            ["192.0.2.1", "2001:db8::1", "2001:db8::2"]
        );
        assert_eq!(run("Ipv4Only"), ["192.0.2.1"]);
        assert_eq!(run("Ipv6Only"), ["2001:db8::1", "2001:db8::2"]);
        assert_eq!(run("Ipv4ThenIpv6"), ["192.0.2.1", "2001:db8::2"]);
        assert_eq!(run("Ipv6ThenIpv4"), ["2001:db8::1", "2001:db8::2"]);
        let none = for_path(
            &hosts[2..],
            &path(r#"{ "ip_lookup_strategy": "Ipv4Only" }"#),
            |_| 25,
            &own,
        )
        .unwrap_err();
        assert_eq!(
            (none.code, none.to_string().contains("Ipv4Only")),
            (451, true)
        );
    }

    #[test]
    fn skipped_and_prohibited_hosts() {
        let hosts = [dest("mx1", "192.0.2.1"), dest("mx2", "192.0.2.2")];
        let own = OwnAddresses::default();
        let skip = path(r#"{ "skip_hosts": ["192.0.2.1"] }"#);
        assert_eq!(ips(&for_path(&hosts, &skip, |_| 25, &own)), ["192.0.2.2"]);
        let all = path(r#"{ "skip_hosts": ["192.0.2.0/24"] }"#);
        let e = for_path(&hosts, &all, |_| 25, &own).unwrap_err();
        assert_eq!(e.code, 451);
        assert!(
            e.to_string()
                .contains("solely of hosts on the skip_hosts list"),
            "{e}"
        );
        let prohibited = path(r#"{ "prohibited_hosts": ["192.0.2.2"] }"#);
        let e = for_path(&hosts, &prohibited, |_| 25, &own).unwrap_err();
        assert_eq!(e.code, 550);
        assert!(
            e.to_string()
                .contains("5.4.4 mx2 [192.0.2.2] is in prohibited_hosts"),
            "{e}"
        );
    }

    #[test]
    fn by_default_only_our_own_listener_is_refused() {
        let hosts = [dest("mx1", "127.0.0.1")];
        let own = OwnAddresses::default();
        own.add("0.0.0.0:2525".parse().unwrap());
        assert!(for_path(&hosts, &path("{}"), |_| 25, &own).is_ok());
        let e = for_path(&hosts, &path("{}"), |_| 2525, &own).unwrap_err();
        assert!(e.to_string().contains("own listeners"), "{e}");
    }
}
