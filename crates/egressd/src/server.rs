//! `egressd serve`: the listeners, the connection limit, signals.

use crate::admin::{Admin, HttpServer, LogFilter};
use crate::listen;
use crate::metrics::Metrics;
use egress_lua::Policy;
use egress_relay::{Boxed, EsmtpListener, Relay};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// How long transactions in flight may take to finish after SIGTERM.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// What `serve` needs besides the policy.
pub struct ServeOptions {
    /// Our name, when a listener names none.
    pub host_name: String,
    /// Recorded into once the policy starts an HTTP listener (the policy's handler
    /// observer feeds it too, so it is made before the policy is loaded).
    pub metrics: Arc<Metrics>,
    /// Changes the log filter at run time (the admin API's
    /// `set-diagnostic-log-filter`).
    pub log_filter: Option<LogFilter>,
    /// Where the node id and each log hook's backlog are kept.
    pub state_dir: std::path::PathBuf,
}

/// Serves until SIGTERM or SIGINT. (Boxed, so the binary does not compile the
/// server's futures again: see `egress_relay::Relay::accept`.)
pub fn serve(policy: Arc<Policy>, options: ServeOptions) -> Boxed<'static, Result<(), String>> {
    Box::pin(serve_until_signalled(policy, options))
}

async fn serve_until_signalled(policy: Arc<Policy>, options: ServeOptions) -> Result<(), String> {
    let ServeOptions {
        host_name,
        metrics,
        log_filter,
        state_dir,
    } = options;
    let init = policy.init();
    if !init.http_listeners.is_empty() {
        metrics.enable();
    }
    let listeners = if init.esmtp_listeners.is_empty() {
        tracing::info!("the policy starts no ESMTP listener; using the default, 127.0.0.1:2525, relaying for loopback");
        vec![EsmtpListener::default()]
    } else {
        init.esmtp_listeners.clone()
    };
    let records = crate::records::Records::start(policy.clone(), state_dir)?;
    let relay = Relay::builder(policy.clone())
        .product("egressd")
        .hostname(host_name.clone())
        .report(metrics.clone())
        .records(records.clone())
        .build()?;

    // Every listener is bound before any serves: a port in use fails the start.
    let mut http = Vec::new();
    for config in &init.http_listeners {
        let server = HttpServer::bind(config.clone(), &host_name).await?;
        tracing::info!(
            listen = %config.listen,
            tls = config.use_tls,
            trusted_hosts = ?config.trusted_hosts.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "HTTP admin API and metrics listening"
        );
        http.push(server);
    }

    for config in listeners {
        let (socket, backlog) = listen::bind(config.listen, config.max_connections)?;
        tracing::info!(
            listen = %config.listen,
            backlog,
            max_connections = config.max_connections,
            max_connections_per_client = config.max_connections_per_client,
            max_connection_rate_per_client = %config.max_connection_rate_per_client.map(|r| r.to_string()).unwrap_or_else(|| "unlimited".into()),
            relay_hosts = ?config.relay_hosts.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            client_limit_exceptions = ?config.client_limit_exceptions().iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "listening"
        );
        let listener = relay.listener(config)?;
        // Until the drain begins; the relay admits each session within the
        // listener's limits, or answers 421 and closes.
        tokio::spawn(relay.clone().accept(socket, listener));
    }

    let admin = Arc::new(Admin {
        relay: relay.clone(),
        policy: policy.clone(),
        metrics,
        log_filter,
        started: std::time::SystemTime::now(),
        records: Some(records.clone()),
    });
    for server in http {
        tokio::spawn(server.serve(admin.clone()));
    }

    let (changed, mut config_changed) = tokio::sync::mpsc::channel::<()>(1);
    let _watcher = match init.config_monitor_globs.as_slice() {
        [] => None,
        globs => Some(watch_config(globs, changed)?),
    };
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = hup.recv() => reload(&policy, &records, "SIGHUP").await,
            Some(()) = config_changed.recv() => {
                // Editors write in several steps: let them finish, then reload once.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while config_changed.try_recv().is_ok() {}
                reload(&policy, &records, "a monitored configuration file changed").await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    tracing::info!("shutting down: no new connections; waiting up to {DRAIN_DEADLINE:?} for transactions in flight");
    relay.shutdown(DRAIN_DEADLINE).await;
    // Every record of what was drained is written; segments finished.
    let _ = tokio::task::spawn_blocking(move || records.finish()).await;
    Ok(())
}

/// Rebuilds the policy (new Lua states, caches cleared) and finishes the log
/// segments (new loggers when their declarations changed); on error the
/// previous policy keeps serving.
async fn reload(policy: &Arc<Policy>, records: &Arc<crate::records::Records>, why: &str) {
    let (policy, records) = (policy.clone(), records.clone());
    let reloaded = tokio::task::spawn_blocking(move || {
        let result = policy.reload();
        records.reload();
        result
    });
    match reloaded.await {
        Ok(Ok(())) => tracing::info!("policy reloaded ({why}); caches cleared"),
        Ok(Err(e)) => {
            tracing::error!("policy reload ({why}) failed, the previous policy keeps serving: {e}")
        }
        Err(e) => tracing::error!("policy reload ({why}) failed: {e}"),
    }
}

/// Watches `kumo.set_config_monitor_globs` (globset syntax: `*`, `**`, `{a,b}`):
/// the directory before each glob's first wildcard, recursively; a change to a
/// matching file sends on `changed`. The globs are read once, at start.
fn watch_config(
    globs: &[String],
    changed: tokio::sync::mpsc::Sender<()>,
) -> Result<notify::RecommendedWatcher, String> {
    use notify::Watcher;
    let mut set = globset::GlobSetBuilder::new();
    let mut roots = Vec::new();
    for glob in globs {
        let compiled = globset::GlobBuilder::new(glob)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("kumo.set_config_monitor_globs: {glob:?}: {e}"))?;
        set.add(compiled);
        let literal: Vec<&str> = glob
            .split('/')
            .take_while(|part| !part.contains(['*', '?', '[', '{']))
            .collect();
        let root = std::path::PathBuf::from(match literal.join("/") {
            l if l.is_empty() => "/".to_owned(),
            l => l,
        });
        // A glob naming one file watches its directory.
        let root = match root.is_file() {
            true => root.parent().map(|p| p.to_path_buf()).unwrap_or(root),
            false => root,
        };
        roots.push(root);
    }
    let set = set
        .build()
        .map_err(|e| format!("kumo.set_config_monitor_globs: {e}"))?;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event.paths.iter().any(|p| set.is_match(p)) {
            let _ = changed.try_send(());
        }
    })
    .map_err(|e| format!("kumo.set_config_monitor_globs: cannot watch files: {e}"))?;
    for root in &roots {
        watcher
            .watch(root, notify::RecursiveMode::Recursive)
            .map_err(|e| {
                format!(
                    "kumo.set_config_monitor_globs: cannot watch {}: {e}",
                    root.display()
                )
            })?;
        tracing::info!(directory = %root.display(), "watching configuration files; a change reloads the policy");
    }
    Ok(watcher)
}
