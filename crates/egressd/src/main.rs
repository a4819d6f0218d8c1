//! egressd: an SMTP relay that sends each transaction through an egress source picked
//! from a weighted pool, as a KumoMTA-style Lua policy defines them.
//!
//! ```text
//! egressd [serve] [--policy FILE]                     relay (embedded default policy without --policy)
//! egressd check --policy FILE [--source N]... [--pool N]...   resolve and print JSON
//! egressd probe --policy FILE --source NAME HOST[:PORT]       connect, banner, EHLO, QUIT
//! ```
#![forbid(unsafe_code)]

use egressd::{listen, probe, server};

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
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
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
    let result = runtime.block_on(run(cli));
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

async fn run(cli: Cli) -> Result<(), String> {
    let policy = Arc::new(load_policy(cli.policy.as_ref(), cli.policy_time_limit)?);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => server::serve(policy, host_name()).await,
        Command::Check { sources, pools } => check(&policy, &sources, &pools).await,
        Command::Probe {
            source,
            target,
            tls,
        } => probe::probe(policy, &source, &target, host_name(), tls).await,
    }
}

fn load_policy(path: Option<&PathBuf>, time_limit: std::time::Duration) -> Result<Policy, String> {
    let options = PolicyOptions {
        time_limit,
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

fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("EGRESSD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
