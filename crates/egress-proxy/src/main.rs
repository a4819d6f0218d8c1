//! The `egress-proxy` binary: KumoProxy's command line (`--listen`,
//! `--timeout-seconds`, `--no-splice`) plus the rules KumoProxy leaves to
//! firewalls.

use clap::Parser;
use egress_proxy::config::ProxyConfig;
use egress_proxy::rules::PasswordFile;
use egress_proxy::{ProxyListener, Rules};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// A SOCKS5 proxy for the host that owns egress IP addresses (a KumoProxy drop-in).
#[derive(Parser, Debug)]
#[command(name = "egress-proxy", version)]
struct Args {
    /// A KumoProxy policy (Lua): `kumo.on('proxy_init', …)` with
    /// `proxy.start_proxy_listener { … }`. Instead of --listen and the options below.
    #[arg(long = "proxy-config", conflicts_with_all = ["listen", "no_splice", "timeout_seconds", "allow_client", "allow_source", "allow_port", "auth_file"])]
    proxy_config: Option<std::path::PathBuf>,
    /// Address to listen on (repeatable), e.g. 127.0.0.1:5000.
    #[arg(long = "listen", required_unless_present = "proxy_config")]
    listen: Vec<SocketAddr>,
    /// Deadline of each phase, and how long a session may sit idle.
    #[arg(long = "timeout-seconds")]
    timeout_seconds: Option<u64>,
    /// Copy bytes in user space rather than splice(2) (KumoProxy's flag).
    #[arg(long = "no-splice")]
    no_splice: bool,
    /// Clients allowed to use the proxy (CIDR or address, repeatable).
    /// Default: 127.0.0.0/8 and ::1 — never an open proxy.
    #[arg(long = "allow-client", value_parser = egress_source::parse_network)]
    allow_client: Vec<IpNet>,
    /// Source addresses clients may ask for with BIND (repeatable). Default: any
    /// address assigned to this host.
    #[arg(long = "allow-source", value_parser = egress_source::parse_network)]
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
        match PasswordFile::parse(&text) {
            Ok(file) => rules.auth = Some(std::sync::Arc::new(file)),
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

/// One SOCKS5 listener to start.
struct Planned {
    addr: SocketAddr,
    rules: Rules,
    timeout: Duration,
    use_splice: bool,
    keepalive: Option<socket2::TcpKeepalive>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The listeners the command line or the policy asks for, and the HTTP ones.
fn plan(
    args: &Args,
    rules: Rules,
) -> Result<(Vec<Planned>, Vec<egress_lua::HttpListener>), String> {
    let Some(path) = &args.proxy_config else {
        let timeout = Duration::from_secs(args.timeout_seconds.unwrap_or(60).max(1));
        let planned = args
            .listen
            .iter()
            .map(|addr| Planned {
                addr: *addr,
                rules: rules.clone(),
                timeout,
                use_splice: !args.no_splice,
                keepalive: None,
                tls: None,
            })
            .collect();
        return Ok((planned, Vec::new()));
    };
    let config = ProxyConfig::load(path)?;
    let mut planned = Vec::new();
    for params in &config.listeners {
        let tls = match params.use_tls {
            true => Some(egress_tls::acceptor(
                params.tls_certificate.as_ref(),
                params.tls_private_key.as_ref(),
                params.hostname.as_deref().unwrap_or("localhost"),
                &format!("listener {}", params.listen),
            )?),
            false => None,
        };
        let k = &params.tcp_keepalive;
        planned.push(Planned {
            addr: params.listen,
            rules: config.rules(params)?,
            timeout: params.timeout.max(Duration::from_secs(1)),
            use_splice: params.use_splice,
            tls,
            keepalive: k.enabled.then(|| {
                socket2::TcpKeepalive::new()
                    .with_time(k.time)
                    .with_interval(k.interval)
                    .with_retries(k.retries)
            }),
        });
    }
    for http in &config.http {
        if http.use_tls {
            return Err(format!(
                "HTTP listener {}: use_tls is not provided by egress-proxy yet; leave it off",
                http.listen
            ));
        }
    }
    Ok((planned, config.http.clone()))
}

async fn serve(args: Args, rules: Rules) -> ExitCode {
    let (planned, http) = match plan(&args, rules) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("egress-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    for h in http {
        let bound = egress_http::HttpListener::bind(
            h.listen,
            None,
            h.trusted_hosts.clone(),
            "HTTP listener",
        )
        .await;
        match bound {
            Ok(listener) => {
                tracing::info!(listen = %h.listen, "HTTP listening: /metrics, /api/check-liveness/v1, /proxy/status");
                tokio::spawn(egress_proxy::http::serve(listener));
            }
            Err(e) => {
                eprintln!("egress-proxy: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for p in planned {
        let (addr, rules) = (p.addr, p.rules);
        let mut listener = match ProxyListener::bind(addr, rules.clone()).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("egress-proxy: listening on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        listener.timeout = p.timeout;
        listener.use_splice = p.use_splice;
        listener.keepalive = p.keepalive;
        listener.tls = p.tls;
        tracing::info!(
            listen = %listener.local_addr().map_or(addr.to_string(), |a| a.to_string()),
            clients = %words(&rules.clients),
            sources = %if rules.sources.is_empty() { "any assigned to this host".to_owned() } else { words(&rules.sources) },
            ports = %if rules.ports.is_empty() { "any".to_owned() } else { rules.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",") },
            auth = rules.auth.is_some(),
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
