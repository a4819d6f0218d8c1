//! `--proxy-config FILE`: a KumoProxy policy, run by egress-lua.
//! `kumo.on('proxy_init', …)` declares listeners with
//! `proxy.start_proxy_listener { … }` and `proxy.start_http_listener { … }`;
//! `kumo.on('proxy_server_auth_rfc1929', function(username, password,
//! conn_meta) … end)` checks credentials when a listener has `require_auth`.

use crate::rules::{Authenticator, Rules};
use egress_lua::{HttpListener, Policy, PolicyOptions, ProxyListenerParams};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

/// What a proxy policy declares.
pub struct ProxyConfig {
    /// The SOCKS5 listeners.
    pub listeners: Vec<ProxyListenerParams>,
    /// The HTTP listeners.
    pub http: Vec<HttpListener>,
    policy: Arc<Policy>,
}

impl ProxyConfig {
    /// Loads `path` (its `proxy_init` runs now).
    pub fn load(path: &Path) -> Result<ProxyConfig, String> {
        let options = PolicyOptions {
            states: 2,
            ..PolicyOptions::default()
        };
        let policy = Policy::from_file(path, options).map_err(|e| e.to_string())?;
        let init = policy.init();
        if init.proxy_listeners.is_empty() {
            return Err(format!(
                "{}: no proxy.start_proxy_listener {{ … }} in kumo.on('proxy_init', …); nothing to serve",
                path.display()
            ));
        }
        Ok(ProxyConfig {
            listeners: init.proxy_listeners,
            http: init.http_listeners,
            policy: Arc::new(policy),
        })
    }

    /// The rules of `params`' listener.
    pub fn rules(&self, params: &ProxyListenerParams) -> Result<Rules, String> {
        if params.require_auth
            && !self
                .policy
                .has_handler(egress_lua::events::PROXY_SERVER_AUTH_RFC1929)
        {
            return Err(format!(
                "listener {}: require_auth = true but the policy has no kumo.on('proxy_server_auth_rfc1929', function(username, password, conn_meta) … end)",
                params.listen
            ));
        }
        Ok(Rules {
            clients: params.allow_clients.clone(),
            sources: params.allow_sources.clone(),
            ports: params.allow_ports.clone(),
            auth: params
                .require_auth
                .then(|| Arc::new(PolicyAuth(self.policy.clone())) as Arc<dyn Authenticator>),
        })
    }
}

/// Credentials checked by the policy's `proxy_server_auth_rfc1929` event.
struct PolicyAuth(Arc<Policy>);

impl Authenticator for PolicyAuth {
    fn check<'a>(
        &'a self,
        user: &'a [u8],
        password: &'a [u8],
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let (user, password) = (
                String::from_utf8_lossy(user),
                String::from_utf8_lossy(password),
            );
            match self.0.proxy_auth(&user, &password, peer, local).await {
                Ok(Some(ok)) => ok,
                Ok(None) => false,
                Err(e) => {
                    tracing::warn!(client = %peer, "proxy_server_auth_rfc1929: {e}");
                    false
                }
            }
        })
    }
}
