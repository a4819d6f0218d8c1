//! Resolving a proxy's `host:port` at connect time.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

/// A boxed future returned by [`Resolve::resolve`].
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Turns a proxy host name into addresses, in the order they should be tried.
///
/// The default, [`SystemResolver`], asks the operating system (`/etc/hosts`, then DNS);
/// a server that has its own DNS configuration passes its resolver instead.
pub trait Resolve: Send + Sync {
    /// All addresses of `host`, with `port`.
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a>;
}

/// The operating system's resolver (`getaddrinfo`, via tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// A fixed table of names, for tests and for pinning proxies without DNS.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    entries: Vec<(String, Vec<std::net::IpAddr>)>,
}

impl StaticResolver {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `host` with its addresses, tried in the order given.
    pub fn with(mut self, host: &str, addrs: impl IntoIterator<Item = std::net::IpAddr>) -> Self {
        self.entries
            .push((host.to_owned(), addrs.into_iter().collect()));
        self
    }
}

impl Resolve for StaticResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a> {
        let found = self
            .entries
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(host))
            .map(|(_, addrs)| addrs.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("no such host '{host}'"))
            });
        Box::pin(async move { found })
    }
}
