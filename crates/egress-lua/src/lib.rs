//! KumoMTA-compatible Lua policies for egress.
//!
//! A policy is a Lua 5.4 file (Lua is vendored: nothing to install) that registers
//! handlers with `kumo.on` and builds definitions with `kumo.make_egress_source`,
//! `kumo.make_egress_pool`, `kumo.make_egress_path` and `kumo.make_queue_config`,
//! exactly as a KumoMTA policy does. [`Policy`] loads it into a pool of Lua states
//! and answers typed, cached calls:
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use egress_lua::{Policy, PolicyOptions};
//! let policy = Policy::from_source("policy.lua", r#"
//!     kumo.on('get_egress_source', function(name)
//!       return kumo.make_egress_source { name = name, source_address = '127.0.0.2',
//!                                        ehlo_domain = 'mta2.example.com', ttl = '5 mins' }
//!     end)
//! "#, PolicyOptions::default()).unwrap();
//! let src = policy.egress_source("ip-2").await.unwrap();
//! assert_eq!(src.ehlo_domain.as_deref(), Some("mta2.example.com"));
//! assert_eq!(src.ttl.as_secs(), 300);
//! # });
//! ```
//!
//! Sources, pools, path and queue configs are cached (egress-cache) for their own
//! `ttl`; concurrent misses share one handler call. Handlers run on blocking threads,
//! one state each, so a slow handler holds one state and not the policy.
//! [`Policy::reload`] builds new states and clears the caches; calls in flight finish
//! on the old states.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod declarations;
mod definition;
mod dkim;
mod engine;
mod error;
mod extras;
mod kumo;
mod lookup;
mod message;
mod proxy;
mod states;
mod utility;

pub use declarations::{
    EsmtpListener, HttpListener, InitConfig, InvalidLineEndings, RedisThrottles, SpoolDefinition,
};
pub use declarations::{ProxyListenerParams, TcpKeepalive};
pub use egress_dns::ResolverConfig;
pub use error::PolicyError;

use egress_cache::{CacheStats, TtlCache};
use egress_source::{
    EgressPathConfig, EgressPool, EgressSource, ListenerDomain, QueueConfig, DEFAULT_POOL,
};
use states::LuaStates;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// A future compiled in the crate that makes it, whatever crate awaits it (see
/// [`egress_policy::Boxed`]).
pub use egress_policy::Boxed;

/// The event names, as `kumo.on` knows them.
pub mod events {
    /// `init()`
    pub const INIT: &str = "init";
    /// `get_egress_source(name)`
    pub const GET_EGRESS_SOURCE: &str = "get_egress_source";
    /// `get_egress_pool(name)`
    pub const GET_EGRESS_POOL: &str = "get_egress_pool";
    /// `get_egress_path_config(domain, source_name, site_name)`
    pub const GET_EGRESS_PATH_CONFIG: &str = "get_egress_path_config";
    /// `get_queue_config(domain, tenant, campaign, routing_domain)`
    pub const GET_QUEUE_CONFIG: &str = "get_queue_config";
    /// `smtp_server_auth_plain(authz, authc, password, conn_meta)` → boolean
    pub const SMTP_SERVER_AUTH_PLAIN: &str = "smtp_server_auth_plain";
    /// `http_server_validate_auth_basic(user, password)` → boolean
    pub const HTTP_SERVER_VALIDATE_AUTH_BASIC: &str = "http_server_validate_auth_basic";
    /// `pre_init()`, before `init` (may be registered many times)
    pub const PRE_INIT: &str = "pre_init";
    /// `validate_config()`, run by `egressd check --validate`
    pub const VALIDATE_CONFIG: &str = "validate_config";
    /// `proxy_init()`: egress-proxy's `init` (KumoProxy's), run after `init`
    pub const PROXY_INIT: &str = "proxy_init";
    /// `proxy_server_auth_rfc1929(username, password, conn_meta)` → boolean
    pub const PROXY_SERVER_AUTH_RFC1929: &str = "proxy_server_auth_rfc1929";
    /// `get_listener_domain(domain, listener, conn_meta)` → a listener domain or nil
    pub const GET_LISTENER_DOMAIN: &str = "get_listener_domain";
    /// `should_enqueue_log_record(msg, hook_name)` → boolean: whether a log hook
    /// takes a record (may be registered many times)
    pub const SHOULD_ENQUEUE_LOG_RECORD: &str = "should_enqueue_log_record";
    /// `smtp_server_message_received(msg, conn_meta)`: the message, whole, before
    /// it leaves
    pub const SMTP_SERVER_MESSAGE_RECEIVED: &str = "smtp_server_message_received";
    /// Every event egress raises.
    pub const ALL: &[&str] = &[
        SMTP_SERVER_MESSAGE_RECEIVED,
        SHOULD_ENQUEUE_LOG_RECORD,
        PRE_INIT,
        VALIDATE_CONFIG,
        INIT,
        GET_EGRESS_SOURCE,
        GET_EGRESS_POOL,
        GET_EGRESS_PATH_CONFIG,
        GET_QUEUE_CONFIG,
        SMTP_SERVER_AUTH_PLAIN,
        HTTP_SERVER_VALIDATE_AUTH_BASIC,
        PROXY_INIT,
        GET_LISTENER_DOMAIN,
        PROXY_SERVER_AUTH_RFC1929,
    ];
}
use events::*;

/// An event name that lives as long as the process: a local log's
/// `filter_event` is the policy's own name; each distinct name is kept once.
fn intern(name: &str) -> &'static str {
    static NAMES: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<&'static str>>> =
        std::sync::OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// Told of every handler call: the event, how long the caller waited for the
/// answer (a free Lua state, then the handler), and whether it succeeded.
pub type HandlerObserver = Arc<dyn Fn(&'static str, std::time::Duration, bool) + Send + Sync>;

/// How a policy is run.
#[derive(Clone)]
pub struct PolicyOptions {
    /// Lua states (handlers that can run at once); default: the number of CPUs.
    pub states: usize,
    /// Entries per definition cache; default 100 000.
    pub cache_capacity: u64,
    /// Longest a handler may run (and a caller may wait for one) before it is
    /// interrupted with [`PolicyError::TimeLimit`]; default 5 s. Also bounds the
    /// policy's top level and `init` at load.
    pub time_limit: std::time::Duration,
    /// Called after each handler call (egressd's `lua_event_latency` histogram);
    /// default none.
    pub observer: Option<HandlerObserver>,
}

impl std::fmt::Debug for PolicyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyOptions")
            .field("states", &self.states)
            .field("cache_capacity", &self.cache_capacity)
            .field("time_limit", &self.time_limit)
            .field("observer", &self.observer.as_ref().map(|_| "set"))
            .finish()
    }
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            states: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            cache_capacity: 100_000,
            time_limit: std::time::Duration::from_secs(5),
            observer: None,
        }
    }
}

enum Origin {
    File(PathBuf),
    Source { name: String, code: String },
}

type PathKey = (String, String, Option<String>);
type QueueKey = (String, Option<String>, Option<String>, Option<String>);

/// Cache keys carry the generation of the states that loaded them: a load that was
/// running when the policy was reloaded lands under the old generation, where no
/// lookup will find it, instead of serving the old policy's answer for a whole ttl.
type Generational<K> = (u64, K);

/// A loaded policy: typed, cached, concurrent calls into its handlers.
pub struct Policy {
    origin: Origin,
    options: PolicyOptions,
    current: RwLock<Arc<LuaStates>>,
    sources: TtlCache<Generational<String>, Arc<EgressSource>>,
    pools: TtlCache<Generational<String>, Arc<EgressPool>>,
    paths: TtlCache<Generational<PathKey>, Arc<EgressPathConfig>>,
    queues: TtlCache<Generational<QueueKey>, Arc<QueueConfig>>,
    generation: std::sync::atomic::AtomicU64,
}

/// Cache counters per kind of definition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyCacheStats {
    /// Sources.
    pub sources: CacheStats,
    /// Pools.
    pub pools: CacheStats,
    /// Path configs.
    pub paths: CacheStats,
    /// Queue configs.
    pub queues: CacheStats,
}

impl Policy {
    /// Loads the policy in `path`.
    pub fn from_file(
        path: impl AsRef<Path>,
        options: PolicyOptions,
    ) -> Result<Policy, PolicyError> {
        let origin = Origin::File(path.as_ref().to_path_buf());
        Self::build(origin, options)
    }

    /// Loads a policy from text; `name` stands for the file name in messages.
    pub fn from_source(
        name: &str,
        code: &str,
        options: PolicyOptions,
    ) -> Result<Policy, PolicyError> {
        Self::build(
            Origin::Source {
                name: name.to_owned(),
                code: code.to_owned(),
            },
            options,
        )
    }

    fn build(origin: Origin, options: PolicyOptions) -> Result<Policy, PolicyError> {
        let states = load(&origin, &options, 0)?;
        let capacity = options.cache_capacity;
        Ok(Policy {
            origin,
            options,
            current: RwLock::new(states),
            sources: TtlCache::new(capacity),
            pools: TtlCache::new(capacity),
            paths: TtlCache::new(capacity),
            queues: TtlCache::new(capacity),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// What the policy's `init` declared: listeners and DNS.
    pub fn init(&self) -> InitConfig {
        self.states().init.clone()
    }

    /// Rebuilds the states from the file (or text) and clears every cache. Calls in
    /// flight finish on the old states. On error the old policy keeps serving.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let fresh = load(&self.origin, &self.options, generation)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.sources.invalidate_all();
        self.pools.invalidate_all();
        self.paths.invalidate_all();
        self.queues.invalidate_all();
        Ok(())
    }

    /// True when the policy handles `event` (egressd offers AUTH only when it
    /// handles `smtp_server_auth_plain`).
    pub fn has_handler(&self, event: &str) -> bool {
        self.states().has_handler(event)
    }

    /// `smtp_server_auth_plain(authz, authc, password, conn_meta)`: whether the
    /// credentials are good (KumoMTA's event; AUTH LOGIN calls it with
    /// `authz == authc`). `conn_meta` becomes a table of string fields. `Ok(None)`
    /// when the policy has no handler. Never cached; the password never appears in
    /// an error message.
    pub fn auth_plain<'a>(
        &'a self,
        authz: &'a str,
        authc: &'a str,
        password: &'a str,
        conn_meta: &'a [(&'a str, String)],
    ) -> Boxed<'a, Result<Option<bool>, PolicyError>> {
        Box::pin(async move {
            use states::Arg;
            let args = vec![
                Arg::Str(Some(authz.to_owned())),
                Arg::Str(Some(authc.to_owned())),
                Arg::Secret(password.to_owned()),
                Arg::conn_meta(conn_meta),
            ];
            self.yes_or_no(SMTP_SERVER_AUTH_PLAIN, args).await
        })
    }

    /// `http_server_validate_auth_basic(user, password)`: whether HTTP Basic
    /// credentials are good (KumoMTA's event; the password may be empty). `Ok(None)`
    /// when the policy has no handler. Never cached; the password never appears in
    /// an error message.
    pub fn http_auth_basic<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
    ) -> Boxed<'a, Result<Option<bool>, PolicyError>> {
        Box::pin(async move {
            use states::Arg;
            let args = vec![
                Arg::Str(Some(user.to_owned())),
                Arg::Secret(password.to_owned()),
            ];
            self.yes_or_no(HTTP_SERVER_VALIDATE_AUTH_BASIC, args).await
        })
    }

    /// `proxy_server_auth_rfc1929(username, password, conn_meta)` (KumoProxy's
    /// event): whether a SOCKS5 client's credentials are good. `conn_meta` has
    /// `peer_address` and `local_address`. `Ok(None)` when the policy has no
    /// handler. Never cached; the password never appears in an error message.
    pub fn proxy_auth<'a>(
        &'a self,
        username: &'a str,
        password: &'a str,
        peer: std::net::SocketAddr,
        local: std::net::SocketAddr,
    ) -> Boxed<'a, Result<Option<bool>, PolicyError>> {
        Box::pin(async move {
            use states::Arg;
            let args = vec![
                Arg::Str(Some(username.to_owned())),
                Arg::Secret(password.to_owned()),
                Arg::Table(vec![
                    ("peer_address".to_owned(), peer.to_string()),
                    ("local_address".to_owned(), local.to_string()),
                ]),
            ];
            self.yes_or_no(PROXY_SERVER_AUTH_RFC1929, args).await
        })
    }

    /// `get_listener_domain(domain, listener, conn_meta)` (KumoMTA's event): what
    /// the policy says of `domain` on the listener at `listener` (`ip:port`) —
    /// `Ok(None)` when it says nothing (the handler returned nil, or there is
    /// none). `conn_meta` becomes a table with KumoMTA's `get_meta(name)` method.
    /// Not cached: the answer may depend on the session (`authz_id`).
    pub fn listener_domain<'a>(
        &'a self,
        domain: &'a str,
        listener: &'a str,
        conn_meta: &'a [(&'a str, String)],
    ) -> Boxed<'a, Result<Option<ListenerDomain>, PolicyError>> {
        Box::pin(async move {
            use states::Arg;
            let args = vec![
                Arg::Str(Some(domain.to_owned())),
                Arg::Str(Some(listener.to_owned())),
                Arg::conn_meta(conn_meta),
            ];
            let found = self
                .states()
                .invoke(GET_LISTENER_DOMAIN, args, |lua, event, shown, value| {
                    if value.is_nil() {
                        return Ok(None);
                    }
                    let borrowed: Vec<Option<&str>> = shown.iter().map(|a| a.as_deref()).collect();
                    definition::from_return::<ListenerDomain>(lua, event, &borrowed, value)
                        .map(Some)
                })
                .await?;
            Ok(found.flatten())
        })
    }

    /// `validate_config()` (KumoMTA's `kumod --validate`): runs the handler, if
    /// any; `Ok(false)` when it (or the policy's top level) called
    /// `kumo.validation_failed()`. A handler error is the error.
    pub fn validate<'a>(&'a self) -> Boxed<'a, Result<bool, PolicyError>> {
        Box::pin(async move {
            let passed = self
                .states()
                .invoke(VALIDATE_CONFIG, Vec::new(), |lua, _, _, _| {
                    let failed = lua
                        .remove_app_data::<utility::ValidationFailed>()
                        .is_some_and(|f| f.0);
                    Ok(!failed)
                })
                .await?;
            Ok(passed.unwrap_or_else(|| self.states().top_level_passed()))
        })
    }

    /// Calls an event whose handler must return a boolean.
    async fn yes_or_no(
        &self,
        event: &'static str,
        args: Vec<states::Arg>,
    ) -> Result<Option<bool>, PolicyError> {
        self.states()
            .invoke(event, args, |_, event, shown, value| match value {
                mlua::Value::Boolean(ok) => Ok(ok),
                other => {
                    let borrowed: Vec<Option<&str>> = shown.iter().map(|a| a.as_deref()).collect();
                    Err(PolicyError::NotBoolean {
                        event,
                        args: error::quote_args(&borrowed),
                        got: error::Describe(&other).to_string(),
                    })
                }
            })
            .await
    }

    /// `smtp_server_message_received(msg, conn_meta)`: the message as the handler
    /// leaves it. A `kumo.reject(code, text)` comes back as an error carrying an
    /// [`egress_policy::Rejection`]. Never cached.
    pub fn message_received<'a>(
        &'a self,
        message: egress_policy::MessageInFlight,
        conn_meta: &'a [(&'a str, String)],
    ) -> Boxed<'a, Result<egress_policy::MessageInFlight, PolicyError>> {
        Box::pin(async move {
            use states::Arg;
            let shared = message::Shared(Arc::new(std::sync::Mutex::new(message)));
            let args = vec![Arg::InFlight(shared.clone()), Arg::conn_meta(conn_meta)];
            self.states()
                .invoke(SMTP_SERVER_MESSAGE_RECEIVED, args, |_, _, _, _| Ok(()))
                .await?;
            let message = std::mem::take(&mut *shared.0.lock().unwrap_or_else(|e| e.into_inner()));
            Ok(message)
        })
    }

    /// A logger's filter: `should_enqueue_log_record(msg, hook_name)` for a log
    /// hook (`msg` is the record's message: meta `log_record` the record,
    /// `reception_protocol` `"LogRecord"`, its data the record's JSON), or a local
    /// log's `filter_event(msg)` (`msg` the message the record is about, with its
    /// meta). `Ok(None)`: no handler, or it returned nil.
    pub fn log_filter<'a>(
        &'a self,
        event: &'a str,
        hook: Option<&'a str>,
        record: &'a egress_record::LogRecord,
        message: &'a egress_record::Message,
    ) -> Boxed<'a, Result<Option<bool>, PolicyError>> {
        Box::pin(async move {
            use states::{Arg, MessageArg};
            let event = intern(event);
            let mut arg = MessageArg {
                id: record.id.clone(),
                sender: record.sender.clone(),
                recipient: record.recipient.first().cloned().unwrap_or_default(),
                meta: (*message.meta).clone(),
                data: String::new(),
            };
            let mut args = Vec::with_capacity(2);
            if let Some(hook) = hook {
                let json = serde_json::to_value(record)
                    .map_err(|e| PolicyError::Internal(e.to_string()))?;
                arg.data = json.to_string();
                arg.meta = serde_json::Map::new();
                arg.meta.insert("log_record".into(), json);
                arg.meta
                    .insert("reception_protocol".into(), "LogRecord".into());
                args.push(Arg::Message(Box::new(arg)));
                args.push(Arg::Str(Some(hook.to_owned())));
            } else {
                args.push(Arg::Message(Box::new(arg)));
            }
            self.states()
                .invoke(event, args, |_, event, shown, value| match value {
                    mlua::Value::Boolean(b) => Ok(Some(b)),
                    mlua::Value::Nil => Ok(None),
                    other => {
                        let borrowed: Vec<Option<&str>> =
                            shown.iter().map(|a| a.as_deref()).collect();
                        Err(PolicyError::NotBoolean {
                            event,
                            args: error::quote_args(&borrowed),
                            got: error::Describe(&other).to_string(),
                        })
                    }
                })
                .await
                .map(Option::flatten)
        })
    }

    fn states(&self) -> Arc<LuaStates> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `get_egress_source(name)`. Without a handler, only `unspecified` resolves (to a
    /// source with a kernel-chosen address).
    pub fn egress_source<'a>(
        &'a self,
        name: &'a str,
    ) -> Boxed<'a, Result<Arc<EgressSource>, PolicyError>> {
        Box::pin(async move {
            let fallback = || match name {
                DEFAULT_POOL => Ok(EgressSource::named(DEFAULT_POOL)),
                _ => Err(PolicyError::MissingHandler {
                    event: GET_EGRESS_SOURCE,
                    args: format!("source '{name}'"),
                }),
            };
            let args = || vec![Some(name.to_owned())];
            self.resolve(
                &self.sources,
                name.to_owned(),
                GET_EGRESS_SOURCE,
                args,
                fallback,
            )
            .await
        })
    }

    /// `get_egress_pool(name)`. Without a handler, only `unspecified` resolves (one
    /// source, `unspecified`).
    pub fn egress_pool<'a>(
        &'a self,
        name: &'a str,
    ) -> Boxed<'a, Result<Arc<EgressPool>, PolicyError>> {
        Box::pin(async move {
            let fallback = || match name {
                DEFAULT_POOL => Ok(EgressPool::unspecified()),
                _ => Err(PolicyError::MissingHandler {
                    event: GET_EGRESS_POOL,
                    args: format!("pool '{name}'"),
                }),
            };
            let args = || vec![Some(name.to_owned())];
            self.resolve(
                &self.pools,
                name.to_owned(),
                GET_EGRESS_POOL,
                args,
                fallback,
            )
            .await
        })
    }

    /// `get_egress_path_config(domain, source_name, site_name)`; defaults without a handler.
    pub fn egress_path_config<'a>(
        &'a self,
        domain: &'a str,
        source: &'a str,
        site: Option<&'a str>,
    ) -> Boxed<'a, Result<Arc<EgressPathConfig>, PolicyError>> {
        Box::pin(async move {
            let key: PathKey = (
                domain.to_owned(),
                source.to_owned(),
                site.map(str::to_owned),
            );
            let args = || {
                vec![
                    Some(domain.to_owned()),
                    Some(source.to_owned()),
                    site.map(str::to_owned),
                ]
            };
            self.resolve(&self.paths, key, GET_EGRESS_PATH_CONFIG, args, || {
                Ok(EgressPathConfig::default())
            })
            .await
        })
    }

    /// `get_queue_config(domain, tenant, campaign, routing_domain)`; defaults (pool
    /// `unspecified`, MX routing) without a handler.
    pub fn queue_config<'a>(
        &'a self,
        domain: &'a str,
        tenant: Option<&'a str>,
        campaign: Option<&'a str>,
        routing_domain: Option<&'a str>,
    ) -> Boxed<'a, Result<Arc<QueueConfig>, PolicyError>> {
        Box::pin(async move {
            let own = |s: Option<&str>| s.map(str::to_owned);
            let key: QueueKey = (
                domain.to_owned(),
                own(tenant),
                own(campaign),
                own(routing_domain),
            );
            let args = || {
                vec![
                    Some(domain.to_owned()),
                    own(tenant),
                    own(campaign),
                    own(routing_domain),
                ]
            };
            self.resolve(&self.queues, key, GET_QUEUE_CONFIG, args, || {
                Ok(QueueConfig::default())
            })
            .await
        })
    }

    /// One cached event call: the handler's definition, or `fallback()` when the
    /// policy has no handler for `event`. `args` and `fallback` run only on a
    /// miss: a hit — nearly every transaction — allocates nothing but the key.
    async fn resolve<K, T>(
        &self,
        cache: &TtlCache<Generational<K>, Arc<T>>,
        key: K,
        event: &'static str,
        args: impl FnOnce() -> Vec<Option<String>> + Send,
        fallback: impl FnOnce() -> Result<T, PolicyError> + Send,
    ) -> Result<Arc<T>, PolicyError>
    where
        K: std::hash::Hash + Eq + Send + Sync + 'static,
        T: definition::Definition + egress_cache::HasTtl + Sync,
    {
        let states = self.states();
        let loaded = cache
            .get_or_load((states.generation, key), || async move {
                let made = match states.call::<T>(event, args()).await? {
                    Some(made) => made,
                    None => fallback()?,
                };
                Ok(Arc::new(made))
            })
            .await;
        loaded.map_err(unshare)
    }

    /// Cache counters.
    pub fn cache_stats(&self) -> PolicyCacheStats {
        PolicyCacheStats {
            sources: self.sources.stats(),
            pools: self.pools.stats(),
            paths: self.paths.stats(),
            queues: self.queues.stats(),
        }
    }
}

fn unshare(e: Arc<PolicyError>) -> PolicyError {
    Arc::unwrap_or_clone(e)
}

fn load(
    origin: &Origin,
    options: &PolicyOptions,
    generation: u64,
) -> Result<Arc<LuaStates>, PolicyError> {
    let (states, limit) = (options.states, options.time_limit);
    let observer = options.observer.clone();
    match origin {
        Origin::File(path) => {
            let shown = path.display().to_string();
            let code = std::fs::read_to_string(path).map_err(|e| PolicyError::Read {
                path: shown.clone(),
                message: e.to_string(),
            })?;
            LuaStates::load(&code, &shown, states, generation, limit, observer)
        }
        Origin::Source { name, code } => {
            LuaStates::load(code, name, states, generation, limit, observer)
        }
    }
}
