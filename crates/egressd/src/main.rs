//! egressd: an SMTP relay that sends each transaction through an egress source picked
//! from a weighted pool, as a KumoMTA-style Lua policy defines them.
//!
//! ```text
//! egressd [serve] [--policy FILE]                     relay (embedded default policy without --policy)
//! egressd check --policy FILE [--source N]... [--pool N]...   resolve and print JSON
//! egressd probe --policy FILE --source NAME HOST[:PORT]       connect, banner, EHLO, QUIT
//! egressd status | suspensions | spool                         ask a running egressd (--endpoint)
//! egressd suspend SOURCE [--site SITE] --duration 1h --reason "…"
//! egressd resume ID
//! egressd resolve DOMAIN [--source S]
//! ```
#![forbid(unsafe_code)]

use egressd::admin::LogFilter;
use egressd::metrics::Metrics;
use egressd::{ctl, listen, probe, server};

use clap::{Parser, Subcommand, ValueEnum};
use egress_lua::{Policy, PolicyOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// The policy used when no `--policy` is given.
const DEFAULT_POLICY: &str = include_str!("default_policy.lua");

#[derive(Parser)]
#[command(
    name = "egressd",
    version,
    about = "SMTP relay through KumoMTA-style egress sources and pools"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The Lua policy; without it, the embedded default (127.0.0.1:2525, loopback relay, MX routing).
    #[arg(long, global = true)]
    policy: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Longest a policy handler may run before it is interrupted (and the
    /// transaction answered 451 4.3.0), e.g. `5s`, `500ms`.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    policy_time_limit: std::time::Duration,
    /// Where the node id (KumoMTA's `nodeid` in log records; `KUMO_NODE_ID` or
    /// `KUMO_NODE_ID_PATH` take precedence) and each log hook's backlog are kept.
    #[arg(long, global = true, env = "EGRESSD_STATE_DIR", default_value = egressd::records::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    egress_source::parse_duration(text)
}

#[derive(Subcommand)]
enum Command {
    /// Relay mail (the default).
    Serve,
    /// Resolve sources and pools through the policy and print them as JSON.
    Check {
        /// A source to resolve (repeatable).
        #[arg(long = "source")]
        sources: Vec<String>,
        /// A pool to resolve (repeatable).
        #[arg(long = "pool")]
        pools: Vec<String>,
        /// Also run the policy's `validate_config` event (KumoMTA's `kumod
        /// --validate`): a non-zero exit when it called `kumo.validation_failed()`.
        #[arg(long)]
        validate: bool,
    },
    /// Connect through a source, read the banner, send EHLO, print what was seen, QUIT.
    Probe {
        /// The source to connect through.
        #[arg(long)]
        source: String,
        /// Destination, `host`, `host:port`, `[ip]` or `[ip]:port`.
        target: String,
        /// Also STARTTLS: show protocol, cipher, certificate subject and whether it
        /// verified against the system trust store (`SSL_CERT_FILE` honoured).
        #[arg(long)]
        tls: bool,
    },
    /// Ask a running egressd: listeners, sessions, per-source counts, suspensions.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Suspend a source (everywhere, or at one site) on a running egressd; with
    /// Redis configured, every node honours it.
    Suspend {
        /// The source to suspend.
        source: String,
        /// Only at this site (a factored MX name, as `resolve` shows it).
        #[arg(long)]
        site: Option<String>,
        /// How long, e.g. `30m`, `1h`, `2 days`.
        #[arg(long)]
        duration: String,
        /// Why (shown in lists, logs and the API).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// End a suspension early (its id, as `suspensions` lists it).
    Resume {
        /// The suspension's id.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the messages held in the spool (several-domain transactions) and
    /// when each domain is tried next.
    Spool {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the suspensions in force.
    Suspensions {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// What a running egressd would do for a domain: pool, site, destinations,
    /// EHLO name, port, throttles.
    Resolve {
        /// The destination domain.
        domain: String,
        /// Only this source (default: every source the pool can pick).
        #[arg(long)]
        source: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Where the running egressd's HTTP API is.
#[derive(clap::Args)]
struct ApiArgs {
    /// The HTTP listener of the running egressd.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8000",
        env = "EGRESSD_ENDPOINT"
    )]
    endpoint: String,
    /// `USER:PASSWORD` for HTTP Basic (needed outside the listener's trusted_hosts).
    #[arg(long, env = "EGRESSD_CREDENTIALS")]
    credentials: Option<String>,
    /// Print the API's JSON instead of text for people.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_filter = init_logging(cli.log_format);
    let fds = listen::raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("egressd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::debug!(open_files = ?fds, "file descriptor limit");
    let result = runtime.block_on(run(cli, log_filter));
    // A policy handler stuck in a C call must not hold the exit: the time limit
    // has already answered its caller, so its blocking thread is not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egressd: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, log_filter: LogFilter) -> Result<(), String> {
    let state_dir = cli.state_dir.clone();
    let command = cli.command.unwrap_or(Command::Serve);
    if let Some(result) = api_command(&command).await {
        return result;
    }
    // Made before the policy so its handler observer can feed the latency
    // histogram; enabled by `serve` when the policy starts an HTTP listener.
    let metrics = Arc::new(Metrics::disabled());
    let observed = metrics.clone();
    let observer: egress_lua::HandlerObserver =
        Arc::new(move |event, took, _ok| observed.handler_call(event, took));
    let policy = Arc::new(load_policy(
        cli.policy.as_ref(),
        cli.policy_time_limit,
        Some(observer),
    )?);
    match command {
        Command::Serve => {
            let options = server::ServeOptions {
                host_name: egress_relay::host_name(),
                metrics,
                log_filter: Some(log_filter),
                state_dir,
            };
            server::serve(policy, options).await
        }
        Command::Check {
            sources,
            pools,
            validate,
        } => {
            if validate && !policy.validate().await.map_err(|e| e.to_string())? {
                return Err(
                    "policy validation failed (validate_config called kumo.validation_failed())"
                        .into(),
                );
            }
            check(&policy, &sources, &pools).await
        }
        Command::Probe {
            source,
            target,
            tls,
        } => probe::probe(policy, &source, &target, egress_relay::host_name(), tls).await,
        _ => Err("internal error: an API command reached the policy".into()),
    }
}

/// The commands that talk to a running egressd; `None` for the others.
async fn api_command(command: &Command) -> Option<Result<(), String>> {
    use hyper::Method;
    let (api, call): (&ApiArgs, _) = match command {
        Command::Status { api } => (api, (Method::GET, "/api/admin/status/v1".to_owned(), None)),
        Command::Spool { api } => (api, (Method::GET, "/api/admin/spool/v1".to_owned(), None)),
        Command::Suspensions { api } => (
            api,
            (
                Method::GET,
                "/api/admin/suspend-ready-q/v1".to_owned(),
                None,
            ),
        ),
        Command::Suspend {
            source,
            site,
            duration,
            reason,
            api,
        } => {
            let name = match site {
                Some(site) => format!("{source}->{site}@smtp_client"),
                None => source.clone(),
            };
            let body = serde_json::json!({ "name": name, "reason": reason, "duration": duration });
            (
                api,
                (
                    Method::POST,
                    "/api/admin/suspend-ready-q/v1".to_owned(),
                    Some(body),
                ),
            )
        }
        Command::Resume { id, api } => {
            let body = serde_json::json!({ "id": id });
            (
                api,
                (
                    Method::DELETE,
                    "/api/admin/suspend-ready-q/v1".to_owned(),
                    Some(body),
                ),
            )
        }
        Command::Resolve {
            domain,
            source,
            api,
        } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("domain", domain);
            if let Some(source) = source {
                query.append_pair("source", source);
            }
            let path = format!("/api/admin/resolve-egress-path/v1?{}", query.finish());
            (api, (Method::GET, path, None))
        }
        Command::Serve | Command::Check { .. } | Command::Probe { .. } => return None,
    };
    let (method, path, body) = call;
    let result = async {
        let client = ctl::Api::new(&api.endpoint, api.credentials.as_deref())?;
        let value = client.expect(method, &path, body.as_ref()).await?;
        let text = if api.json {
            serde_json::to_string_pretty(&value).map_err(|e| e.to_string())? + "\n"
        } else {
            match command {
                Command::Status { .. } => ctl::show_status(&value),
                Command::Suspensions { .. } => ctl::show_suspensions(&value),
                Command::Spool { .. } => ctl::show_spool(&value),
                Command::Resolve { .. } => ctl::show_resolution(&value),
                Command::Suspend { .. } => format!(
                    "suspended; id {} (egressd resume {0} ends it early)\n",
                    value["id"].as_str().unwrap_or("?")
                ),
                _ => format!("resumed {}\n", value["id"].as_str().unwrap_or("?")),
            }
        };
        print!("{text}");
        Ok(())
    }
    .await;
    Some(result)
}

fn load_policy(
    path: Option<&PathBuf>,
    time_limit: std::time::Duration,
    observer: Option<egress_lua::HandlerObserver>,
) -> Result<Policy, String> {
    let options = PolicyOptions {
        time_limit,
        observer,
        ..PolicyOptions::default()
    };
    match path {
        Some(path) => Policy::from_file(path, options),
        None => Policy::from_source("<embedded default policy>", DEFAULT_POLICY, options),
    }
    .map_err(|e| e.to_string())
}

/// Resolves each named source and pool and prints one JSON document; the first
/// failure is the error (and a non-zero exit).
async fn check(policy: &Policy, sources: &[String], pools: &[String]) -> Result<(), String> {
    let mut out = serde_json::Map::new();
    out.insert(
        "init".into(),
        serde_json::to_value(policy.init()).map_err(|e| e.to_string())?,
    );
    let mut resolved = serde_json::Map::new();
    for name in sources {
        let src = policy
            .egress_source(name)
            .await
            .map_err(|e| e.to_string())?;
        resolved.insert(
            name.clone(),
            serde_json::to_value(&*src).map_err(|e| e.to_string())?,
        );
    }
    out.insert("sources".into(), resolved.into());
    let mut resolved = serde_json::Map::new();
    for name in pools {
        let pool = policy.egress_pool(name).await.map_err(|e| e.to_string())?;
        resolved.insert(
            name.clone(),
            serde_json::to_value(&*pool).map_err(|e| e.to_string())?,
        );
    }
    out.insert("pools".into(), resolved.into());
    let text =
        serde_json::to_string_pretty(&serde_json::Value::Object(out)).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

/// Logs go to standard error (journald keeps them under systemd; nothing to
/// rotate). The filter (`EGRESSD_LOG`, default `info`) can be changed while
/// serving through the admin API; the returned function does that.
fn init_logging(format: LogFormat) -> LogFilter {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    let filter = EnvFilter::try_from_env("EGRESSD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let output = match format {
        LogFormat::Text => fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .init();
    Arc::new(move |text: &str| {
        let filter = EnvFilter::try_new(text).map_err(|e| e.to_string())?;
        let shown = filter.to_string();
        handle.reload(filter).map_err(|e| e.to_string())?;
        Ok(shown)
    })
}
