//! A relay embedded in the test process, serving a policy exactly as an embedder
//! would: the policy's `init` declares the listeners, each is bound and served
//! through `Relay::serve`. Each relay runs on a runtime of its own whose threads
//! log into that relay's buffer, so parallel tests keep their logs apart.
#![allow(dead_code)]

use egress_lua::{EsmtpListener, Policy, PolicyOptions};
use egress_relay::Relay;
use egress_relay::{NoReport, Report};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

thread_local! {
    /// The relay's log, in force on each of its runtime's threads.
    static LOG_SCOPE: RefCell<Option<tracing::dispatcher::DefaultGuard>> = const { RefCell::new(None) };
}

/// A relay serving a policy in this process; stopped on drop.
pub struct Embedded {
    /// Where its first listener listens (`{listen}` in the policy).
    pub addr: SocketAddr,
    /// The relay, for what a test asks of it directly.
    pub relay: Arc<Relay>,
    log: Arc<Mutex<Vec<u8>>>,
    runtime: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

/// Appends log output to a shared buffer.
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Embedded {
    /// Serves `policy`, in which `{listen}` stands for a free loopback address (and
    /// `{http}` for another: an HTTP listener a policy declares is egressd's to
    /// serve, so nothing listens there).
    pub fn start(policy: &str) -> Embedded {
        Self::start_reporting(policy, Arc::new(NoReport))
    }

    /// As [`start`](Self::start), reporting to `report`.
    pub fn start_reporting(policy: &str, report: Arc<dyn Report>) -> Embedded {
        let dir = tempfile::tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], egress_e2e::free_port()));
        let file = dir.path().join("policy.lua");
        let http = SocketAddr::from(([127, 0, 0, 1], egress_e2e::free_port()));
        let text = policy
            .replace("{listen}", &addr.to_string())
            .replace("{http}", &http.to_string());
        std::fs::write(&file, text).unwrap();

        let log = Arc::new(Mutex::new(Vec::new()));
        let writer = log.clone();
        let dispatch = tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
                .with_writer(move || LogWriter(writer.clone()))
                .finish(),
        );
        let scoped = dispatch.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                let guard = tracing::dispatcher::set_default(&scoped);
                LOG_SCOPE.with(|g| *g.borrow_mut() = Some(guard));
            })
            .build()
            .unwrap();
        let relay = tracing::dispatcher::with_default(&dispatch, || {
            runtime.block_on(async {
                let policy =
                    Policy::from_file(&file, PolicyOptions::default()).expect("the policy loads");
                let init = policy.init();
                let listeners = match init.esmtp_listeners.is_empty() {
                    true => vec![EsmtpListener {
                        listen: addr,
                        ..EsmtpListener::default()
                    }],
                    false => init.esmtp_listeners.clone(),
                };
                let relay = Relay::builder(Arc::new(policy))
                    .product("egressd")
                    .report(report)
                    .build()
                    .expect("the relay builds");
                for config in listeners {
                    let socket = tokio::net::TcpListener::bind(config.listen)
                        .await
                        .expect("bind the listener");
                    let listener = relay.listener(config).expect("listener");
                    tokio::spawn(relay.clone().accept(socket, listener));
                }
                relay
            })
        });
        Embedded {
            addr,
            relay,
            log,
            runtime: Some(runtime),
            _dir: dir,
        }
    }

    /// What routing would do for `domain` (`Relay::resolve`), as JSON.
    pub fn resolve(&self, domain: &str, source: Option<&str>) -> serde_json::Value {
        let runtime = self.runtime.as_ref().expect("running");
        runtime
            .block_on(self.relay.resolve(domain, source))
            .unwrap_or_else(|e| panic!("resolve {domain}: {e}"))
    }

    /// Runs `future` on the relay's runtime (to ask its state directly).
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.as_ref().expect("running").block_on(future)
    }

    /// What TLS reporting (RFC 8460) would say now, as JSON.
    pub fn tls_report(&self) -> serde_json::Value {
        let now = std::time::SystemTime::now();
        self.relay.admin().tls_report(now)
    }

    /// The TLS report's entry for `domain` (the first, when it has several).
    pub fn tls_policy(&self, domain: &str) -> serde_json::Value {
        let report = self.tls_report();
        report["policies"]
            .as_array()
            .and_then(|all| all.iter().find(|p| p["policy"]["policy-domain"] == domain))
            .unwrap_or_else(|| panic!("no policy for {domain} in {report:#}"))
            .clone()
    }

    /// What the TLS report says of `domain`'s policy: its type, (successes,
    /// failures), and the result type of its first failure.
    pub fn tls_reported(&self, domain: &str) -> (String, (u64, u64), Option<String>) {
        let policy = self.tls_policy(domain);
        let count = |name: &str| policy["summary"][name].as_u64().unwrap_or(0);
        (
            policy["policy"]["policy-type"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            (
                count("total-successful-session-count"),
                count("total-failure-session-count"),
            ),
            policy["failure-details"][0]["result-type"]
                .as_str()
                .map(str::to_owned),
        )
    }

    /// Everything the relay logged so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The TLS-policy events a relay reports — MTA-STS's (`fetched`, `cache_hit`,
/// `refused`, …) and DANE's (`verified`, `failed`, `encrypt_only`, `deferred`) —
/// recorded for a test to count.
#[derive(Default)]
#[allow(dead_code)] // each test file uses the helpers it needs
pub struct TlsPolicyEvents(Mutex<Vec<&'static str>>);

impl Report for TlsPolicyEvents {
    fn mta_sts(&self, event: &'static str) {
        self.0.lock().unwrap().push(event);
    }

    fn dane(&self, result: &'static str) {
        self.0.lock().unwrap().push(result);
    }
}

#[allow(dead_code)]
impl TlsPolicyEvents {
    /// How many times `event` was reported.
    pub fn count(&self, event: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| **e == event)
            .count()
    }
}
