//! Where a domain's mail goes — its destination hosts and their site — kept between
//! transactions, so a steady stream to one domain does not redo MX and address
//! lookups and the site's name for every message.
//!
//! An entry is used only while the queue config that named the route is the very
//! one the policy returns now (a reload, a ttl refresh or another tenant's config
//! looks it up again) and while every DNS answer behind it is fresh; at most
//! a minute either way.

use crate::dns::{Destination, Dns};
use egress_source::{site_name, QueueConfig};
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest an entry is used, whatever the DNS TTLs say.
const MAX_REUSE: Duration = Duration::from_secs(60);
/// Domains remembered; past this, expired entries go, then all.
const MAX_DOMAINS: usize = 10_000;

/// A domain's route.
#[derive(Debug)]
pub struct Routing {
    /// Hosts in the order they are tried.
    pub hosts: Vec<Destination>,
    /// Their site (see `site_of`).
    pub site: String,
    /// They are the domain's MX hosts (not an `mx_list`): MTA-STS applies.
    pub by_mx: bool,
}

struct Entry {
    queue: Arc<QueueConfig>,
    routing: Arc<Routing>,
    until: Instant,
}

/// Routes by domain (see the module documentation).
#[derive(Default)]
pub struct RoutingCache {
    entries: Mutex<HashMap<String, Entry>>,
}

impl RoutingCache {
    /// The route of `domain` under `queue`: remembered, or looked up now. Failures
    /// are not remembered (the resolver keeps its own negative answers).
    pub async fn get(
        &self,
        dns: &Dns,
        domain: &str,
        queue: &Arc<QueueConfig>,
    ) -> io::Result<Arc<Routing>> {
        if let Some(routing) = self.remembered(domain, queue) {
            return Ok(routing);
        }
        let found = dns
            .destinations(domain, queue.mx_list(), queue.mx_list_is_secure())
            .await?;
        let routing = Arc::new(Routing {
            site: site_of(&found.hosts),
            hosts: found.hosts,
            by_mx: queue.mx_list().is_empty(),
        });
        let now = Instant::now();
        let until = found
            .valid_until
            .map_or(now + MAX_REUSE, |t| t.min(now + MAX_REUSE));
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_DOMAINS {
            entries.retain(|_, e| e.until > now);
            if entries.len() >= MAX_DOMAINS {
                entries.clear();
            }
        }
        entries.insert(
            domain.to_owned(),
            Entry {
                queue: queue.clone(),
                routing: routing.clone(),
                until,
            },
        );
        Ok(routing)
    }

    fn remembered(&self, domain: &str, queue: &Arc<QueueConfig>) -> Option<Arc<Routing>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(domain)?;
        (Arc::ptr_eq(&entry.queue, queue) && Instant::now() < entry.until)
            .then(|| entry.routing.clone())
    }
}

/// The site of a destination: its hosts' names factored into one (and the port when
/// an mx_list entry gives one that is not 25).
fn site_of(hosts: &[Destination]) -> String {
    // An address literal stays one, bracketed as in an mx_list.
    let names: Vec<String> = hosts
        .iter()
        .map(|h| match h.host.parse::<std::net::IpAddr>() {
            Ok(ip) => format!("[{ip}]"),
            Err(_) => h.host.clone(),
        })
        .collect();
    let port = hosts
        .iter()
        .find_map(|h| h.entry.as_ref().and_then(|e| e.port()))
        .unwrap_or(25);
    site_name(&names, port)
}
