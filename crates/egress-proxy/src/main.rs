//! The `egress-proxy` binary: KumoProxy's command line (`--listen`,
//! `--timeout-seconds`, `--no-splice`) plus the rules KumoProxy leaves to
//! firewalls.

use clap::Parser;
use egress_proxy::{ProxyListener, Rules};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

/// A SOCKS5 proxy for the host that owns egress IP addresses (a KumoProxy drop-in).
#[derive(Parser, Debug)]
#[command(name = "egress-proxy", version)]
struct Args {
    /// Address to listen on (repeatable), e.g. 127.0.0.1:5000.
    #[arg(long = "listen", required = true)]
    listen: Vec<SocketAddr>,
    /// Deadline of each phase, and how long a session may sit idle.
    #[arg(long = "timeout-seconds", default_value_t = 60)]
    timeout_seconds: u64,
    /// Copy bytes in user space rather than splice(2) (KumoProxy's flag).
    #[arg(long = "no-splice")]
    no_splice: bool,
    /// Clients allowed to use the proxy (CIDR or address, repeatable).
    /// Default: 127.0.0.0/8 and ::1 — never an open proxy.
    #[arg(long = "allow-client", value_parser = network)]
    allow_client: Vec<IpNet>,
    /// Source addresses clients may ask for with BIND (repeatable). Default: any
    /// address assigned to this host.
    #[arg(long = "allow-source", value_parser = network)]
    allow_source: Vec<IpNet>,
    /// Destination ports that may be reached (repeatable). Default: any.
    #[arg(long = "allow-port")]
    allow_port: Vec<u16>,
    /// Require RFC 1929 username/password, checked against this file of
    /// `username:password` lines.
    #[arg(long = "auth-file")]
    auth_file: Option<std::path::PathBuf>,
    /// How long to wait for sessions in progress after SIGTERM or SIGINT.
    #[arg(long = "drain-seconds", default_value_t = 30)]
    drain_seconds: u64,
}

fn network(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("expected a CIDR such as 10.0.0.0/24 or an IP address, got {s:?}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut rules = Rules::default();
    if !args.allow_client.is_empty() {
        rules.clients = args.allow_client.clone();
    }
    rules.sources = args.allow_source.clone();
    rules.ports = args.allow_port.clone();
    if let Some(file) = &args.auth_file {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("egress-proxy: --auth-file {}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        match Rules::parse_credentials(&text) {
            Ok(creds) => rules.credentials = Some(creds),
            Err(e) => {
                eprintln!("egress-proxy: --auth-file {}: {e}", file.display());
                return ExitCode::from(2);
            }
        }
    }
    raise_fd_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("egress-proxy: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(args, rules))
}

async fn serve(args: Args, rules: Rules) -> ExitCode {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for addr in &args.listen {
        let mut listener = match ProxyListener::bind(*addr, rules.clone()).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("egress-proxy: listening on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        listener.timeout = Duration::from_secs(args.timeout_seconds.max(1));
        listener.use_splice = !args.no_splice;
        tracing::info!(
            listen = %listener.local_addr().map_or(addr.to_string(), |a| a.to_string()),
            clients = %words(&rules.clients),
            sources = %if rules.sources.is_empty() { "any assigned to this host".to_owned() } else { words(&rules.sources) },
            ports = %if rules.ports.is_empty() { "any".to_owned() } else { rules.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",") },
            auth = rules.credentials.is_some(),
            "egress-proxy listening"
        );
        tasks.push(tokio::spawn(listener.run(stopped.clone())));
    }
    shutdown_signal().await;
    tracing::info!("stopping: no new sessions");
    let _ = stop.send(true);
    let drain = async {
        for task in tasks {
            let _ = task.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(args.drain_seconds), drain)
        .await
        .is_err()
    {
        tracing::warn!("sessions still open after --drain-seconds; exiting");
    }
    ExitCode::SUCCESS
}

fn words(nets: &[IpNet]) -> String {
    nets.iter()
        .map(IpNet::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// A proxy holds two descriptors per session: raise the soft limit to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("raising the open-file limit from {soft} to {hard}: {e}");
            }
        }
    }
}
