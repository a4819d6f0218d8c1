//! The `egress-proxy` binary against real peers: egress-connect (egressd's own
//! connect code) choosing a source address through it to smtp-sink, curl as an
//! independent SOCKS5 client to a local HTTP server (IPv4 and IPv6), and refusals
//! by rule, each checked in the proxy's log.

use egress_connect::{connect, ConnectError};
use egress_e2e::{deliver_through, free_port, header, require, wait_until, SmtpSink};
use egress_source::EgressSource;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

/// The proxy binary on a free loopback port with `args`; its log in a file.
struct Proxy {
    addr: SocketAddr,
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Proxy {
    fn start(args: &[&str]) -> Proxy {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], free_port())), args)
    }

    fn start_on(addr: SocketAddr, args: &[&str]) -> Proxy {
        let mut all = vec!["--listen".to_owned(), addr.to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        Self::launch(addr, &all)
    }

    /// With `--proxy-config FILE`, whose first listener is `addr`.
    fn with_config(addr: SocketAddr, file: &std::path::Path) -> Proxy {
        Self::launch(
            addr,
            &["--proxy-config".to_owned(), file.display().to_string()],
        )
    }

    fn launch(addr: SocketAddr, args: &[String]) -> Proxy {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_egress-proxy"))
            .args(args)
            .stderr(log.reopen().unwrap())
            .stdout(Stdio::null())
            .spawn()
            .expect("egress-proxy");
        let mut proxy = Proxy { addr, child, log };
        let up = wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        assert!(up, "egress-proxy did not listen on {addr}: {}", proxy.log());
        assert!(proxy.child.try_wait().unwrap().is_none());
        proxy
    }

    fn log(&self) -> String {
        let mut text = String::new();
        let _ = self.log.reopen().unwrap().read_to_string(&mut text);
        text
    }

    /// Waits for a log line containing `needle`.
    fn logged(&self, needle: &str) -> bool {
        wait_until(Duration::from_secs(5), || self.log().contains(needle))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn source(proxy: &Proxy, from: &str, credentials: Option<(&str, &str)>) -> EgressSource {
    let mut json = serde_json::json!({
        "name": "proxied",
        "socks5_proxy_server": proxy.addr.to_string(),
        "socks5_proxy_source_address": from,
    });
    if let Some((u, p)) = credentials {
        json["socks5_proxy_username"] = u.into();
        json["socks5_proxy_password"] = p.into();
    }
    let src: EgressSource = serde_json::from_value(json).unwrap();
    src.validate().unwrap();
    src
}

/// One message through `src` to `sink`; what the sink recorded.
async fn deliver(src: &EgressSource, sink: &SmtpSink, ehlo: &str) -> String {
    let conn = connect(src, sink.addr, TIMEOUT).await.unwrap();
    // The proxy and the sink are processes of their own: blocking here is fine.
    deliver_through(conn.stream.into_std().unwrap(), sink, ehlo)
}

#[tokio::test]
async fn a_source_address_chosen_with_bind_is_where_the_mail_leaves_from() {
    let sink = SmtpSink::start();
    let proxy = Proxy::start(&[]);
    let src = source(&proxy, "127.0.0.5", None);
    let m = deliver(&src, &sink, "mta5.example.test").await;
    assert_eq!(header(&m, "X-Client-Addr"), Some("127.0.0.5"), "{m}");
    assert!(
        proxy.logged(&format!("destination={}", sink.addr)),
        "{}",
        proxy.log()
    );
    let log = proxy.log();
    let line = log
        .lines()
        .find(|l| l.contains("source=127.0.0.5"))
        .unwrap_or_default();
    assert!(
        line.contains("source=127.0.0.5")
            && line.contains("outcome=relayed")
            && !line.contains("up=0"),
        "one line per session with what happened: {line}"
    );
}

#[tokio::test]
async fn credentials_are_checked_when_required() {
    let sink = SmtpSink::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    std::fs::write(&file, "relay1:s3cret\n").unwrap();
    let proxy = Proxy::start(&["--auth-file", file.to_str().unwrap()]);

    let right = source(&proxy, "127.0.0.6", Some(("relay1", "s3cret")));
    let m = deliver(&right, &sink, "mta6.example.test").await;
    assert_eq!(header(&m, "X-Client-Addr"), Some("127.0.0.6"));

    let wrong = source(&proxy, "127.0.0.6", Some(("relay1", "guess")));
    let e = connect(&wrong, sink.addr, TIMEOUT).await.unwrap_err();
    assert_eq!(e.kind(), "proxy_auth_failed", "{e}");
    let none = source(&proxy, "127.0.0.6", None);
    let e = connect(&none, sink.addr, TIMEOUT).await.unwrap_err();
    assert_eq!(e.kind(), "proxy_auth_failed", "{e}");
    assert!(
        proxy.logged("username/password not accepted"),
        "{}",
        proxy.log()
    );
}

/// A source address the proxy's host does not have is refused by rule, and
/// egress-connect calls that unplumbed — what `suspend_when_unplumbed` acts on.
#[tokio::test]
async fn an_unassigned_source_address_is_refused_and_reads_as_unplumbed() {
    let sink = SmtpSink::start();
    let proxy = Proxy::start(&[]);
    let src = source(&proxy, "192.0.2.77", None);
    let e = connect(&src, sink.addr, TIMEOUT).await.unwrap_err();
    assert!(e.is_unplumbed(), "{e}");
    assert_eq!(e.kind(), "unplumbed_at_proxy");
    assert!(matches!(e, ConnectError::SourceRefusedByProxy { .. }));
    assert!(e.to_string().contains("192.0.2.77"), "{e}");
    assert!(
        proxy.logged("source address 192.0.2.77 is not assigned to this host"),
        "{}",
        proxy.log()
    );
    // An allowed-sources list narrows what is assigned.
    let narrow = Proxy::start(&["--allow-source", "127.0.0.5"]);
    let e = connect(&source(&narrow, "127.0.0.6", None), sink.addr, TIMEOUT)
        .await
        .unwrap_err();
    assert!(e.is_unplumbed(), "{e}");
    assert!(
        narrow.logged("not in the allowed sources (127.0.0.5/32)"),
        "{}",
        narrow.log()
    );
    assert!(sink.messages().is_empty());
}

/// A static file served on `ip` by Python's http.server.
struct HttpServer {
    addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl HttpServer {
    fn start(ip: IpAddr) -> HttpServer {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello.txt"), "hello through the proxy\n").unwrap();
        // 8 MiB that is not all one byte, for the bulk path.
        let big: Vec<u8> = (0..8u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        std::fs::write(dir.path().join("big.bin"), big).unwrap();
        let addr = SocketAddr::new(ip, free_port());
        let child = Command::new(require("python3"))
            .args([
                "-m",
                "http.server",
                "--bind",
                &ip.to_string(),
                &addr.port().to_string(),
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        }));
        HttpServer {
            addr,
            child,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        match self.addr.ip() {
            IpAddr::V6(ip) => format!("http://[{ip}]:{}/hello.txt", self.addr.port()),
            IpAddr::V4(ip) => format!("http://{ip}:{}/hello.txt", self.addr.port()),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl -x socks5://…` (the client resolves) or `socks5h://…` (the proxy resolves):
/// exit code and body.
fn curl(proxy: &SocketAddr, scheme: &str, url: &str) -> (i32, String) {
    let proxy = match proxy.ip() {
        IpAddr::V6(ip) => format!("{scheme}://[{ip}]:{}", proxy.port()),
        IpAddr::V4(ip) => format!("{scheme}://{ip}:{}", proxy.port()),
    };
    let out = Command::new(require("curl"))
        .args(["-sS", "--max-time", "10", "-x", &proxy, url])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn curl_connects_through_it_with_addresses_names_and_ipv6() {
    let web = HttpServer::start("127.0.0.1".parse().unwrap());
    let proxy = Proxy::start(&[]);
    let (code, body) = curl(&proxy.addr, "socks5", &web.url());
    assert_eq!((code, body.as_str()), (0, "hello through the proxy\n"));
    let by_name = web.url().replace("127.0.0.1", "localhost");
    let (code, body) = curl(&proxy.addr, "socks5h", &by_name);
    assert_eq!((code, body.as_str()), (0, "hello through the proxy\n"));
    assert!(proxy.logged("destination=localhost:"), "{}", proxy.log());

    let web6 = HttpServer::start("::1".parse().unwrap());
    let proxy6 = Proxy::start_on(SocketAddr::new("::1".parse().unwrap(), free_port()), &[]);
    let (code, body) = curl(&proxy6.addr, "socks5", &web6.url());
    assert_eq!(
        (code, body.as_str()),
        (0, "hello through the proxy\n"),
        "{}",
        proxy6.log()
    );
}

#[test]
fn clients_and_ports_outside_the_rules_are_refused_and_logged() {
    let web = HttpServer::start("127.0.0.1".parse().unwrap());
    let only_other = Proxy::start(&["--allow-client", "127.0.0.9"]);
    let (code, out) = curl(&only_other.addr, "socks5", &web.url());
    assert_ne!(code, 0, "{out}");
    // curl names the SOCKS5 reply code: 2, "connection not allowed by ruleset".
    assert!(out.contains("(2)"), "curl says why: {out}");
    assert!(
        only_other.logged("client 127.0.0.1 is not in the allowed clients"),
        "{}",
        only_other.log()
    );

    let smtp_only = Proxy::start(&["--allow-port", "25", "--allow-port", "587"]);
    let (code, out) = curl(&smtp_only.addr, "socks5", &web.url());
    assert_ne!(code, 0, "{out}");
    assert!(
        smtp_only.logged(&format!(
            "destination port {} is not in the allowed ports (25, 587)",
            web.addr.port()
        )),
        "{}",
        smtp_only.log()
    );
}

#[test]
fn sigterm_stops_it_cleanly() {
    let mut proxy = Proxy::start(&[]);
    let killed = Command::new("kill")
        .args(["-TERM", &proxy.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exited = wait_until(Duration::from_secs(10), || {
        proxy.child.try_wait().unwrap().is_some()
    });
    assert!(exited, "{}", proxy.log());
    assert!(proxy.child.wait().unwrap().success());
    assert!(proxy.log().contains("stopping"), "{}", proxy.log());
}

/// contrib/egress-proxy.service is a unit systemd accepts as written.
#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../contrib/egress-proxy.service"
    ))
    .unwrap();
    let verified = egress_e2e::systemd_verify(
        &unit,
        "/usr/local/bin/egress-proxy",
        env!("CARGO_BIN_EXE_egress-proxy"),
    );
    assert_eq!(verified, Ok(()));
}

/// A KumoProxy policy file as KumoMTA documents it runs unchanged: `proxy_init`
/// declares the listeners, `proxy_server_auth_rfc1929` checks credentials, and the
/// HTTP listener serves metrics (checked by promtool) and liveness.
#[tokio::test]
async fn a_kumoproxy_policy_runs_unchanged_with_lua_auth_and_metrics() {
    let sink = SmtpSink::start();
    let socks = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.lua");
    std::fs::write(
        &file,
        format!(
            "local kumo = require 'kumo'
local proxy = require 'proxy'
kumo.on('proxy_init', function()
  proxy.start_proxy_listener {{
    listen = '{socks}',
    timeout = '30 seconds',
    require_auth = true,
    tcp_keepalive = {{ enabled = true, time = '2 minutes' }},
  }}
  proxy.start_http_listener {{ listen = '{http}', trusted_hosts = {{ '127.0.0.1' }} }}
end)
kumo.on('proxy_server_auth_rfc1929', function(username, password, conn_meta)
  local password_database = {{ ['proxyuser'] = 'secretpassword' }}
  if password == '' or conn_meta.peer_address == nil then
    return false
  end
  return password_database[username] == password
end)
"
        ),
    )
    .unwrap();
    let proxy = Proxy::with_config(socks, &file);
    let by_addr = |creds| {
        let mut src = serde_json::json!({
            "name": "proxied",
            "socks5_proxy_server": socks.to_string(),
            "socks5_proxy_source_address": "127.0.0.7",
        });
        if let Some((u, p)) = creds {
            src["socks5_proxy_username"] = serde_json::Value::from(u);
            src["socks5_proxy_password"] = serde_json::Value::from(p);
        }
        serde_json::from_value::<EgressSource>(src).unwrap()
    };
    let m = deliver(
        &by_addr(Some(("proxyuser", "secretpassword"))),
        &sink,
        "mta7.example.test",
    )
    .await;
    assert_eq!(
        header(&m, "X-Client-Addr"),
        Some("127.0.0.7"),
        "{}",
        proxy.log()
    );
    let e = connect(&by_addr(Some(("proxyuser", "nope"))), sink.addr, TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "proxy_auth_failed", "{e}");

    let get = |path: &str| egress_e2e::http_get(http, path);
    let live = get("/api/check-liveness/v1");
    assert_eq!(live.status, 200, "{}", live.body);
    let expected = [
        format!("proxy_connections_completed_total{{listener=\"{socks}\"}} 1"),
        format!("proxy_connections_failed_total{{listener=\"{socks}\",reason=\"auth\"}} 1"),
        format!("proxy_outbound_connections_total{{listener=\"{socks}\",source=\"127.0.0.7\"}} 1"),
    ];
    // A session is counted when the proxy has finished with it, which may be just
    // after the client has.
    let mut metrics = String::new();
    let all_there = wait_until(Duration::from_secs(5), || {
        metrics = get("/metrics").body;
        expected.iter().all(|line| metrics.contains(line))
    });
    assert!(all_there, "{expected:?} in:\n{metrics}");
    let checked = Command::new(require("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(metrics.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[test]
fn a_policy_that_asks_for_auth_without_the_event_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.lua");
    std::fs::write(
        &file,
        "kumo.on('proxy_init', function()
           proxy.start_proxy_listener { listen = '127.0.0.1:1', require_auth = true }
         end)",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_egress-proxy"))
        .arg("--proxy-config")
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("proxy_server_auth_rfc1929"), "{said}");
}

/// 8 MiB through splice(2) (the default) and through the copy loop
/// (`--no-splice`): the same bytes arrive, counted in the session's log line.
#[test]
fn bulk_bytes_arrive_intact_with_and_without_splice() {
    let web = HttpServer::start("127.0.0.1".parse().unwrap());
    let url = web.url().replace("hello.txt", "big.bin");
    let expected = std::fs::read(web._dir.path().join("big.bin")).unwrap();
    for args in [&[][..], &["--no-splice"][..]] {
        let proxy = Proxy::start(args);
        let out = Command::new(require("curl"))
            .args(["-sS", "--max-time", "20", "-x"])
            .arg(format!("socks5://{}", proxy.addr))
            .arg(&url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == expected,
            "{args:?}: {} bytes differ",
            out.stdout.len()
        );
        assert!(proxy.logged("outcome=relayed"), "{}", proxy.log());
        let log = proxy.log();
        let line = log.lines().find(|l| l.contains("outcome=relayed")).unwrap();
        let down: u64 = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("down="))
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(down > expected.len() as u64, "{line}");
    }
}

/// `use_tls`: the SOCKS5 exchange inside TLS with the listener's certificate
/// (from the test CA, given as `key_data`); a client that does not speak TLS is
/// counted as a failed handshake.
#[tokio::test]
async fn a_tls_listener_speaks_socks5_inside_tls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = egress_e2e::TestCa::new();
    let issued = ca.issue("proxy.test", Some("127.0.0.1".parse().unwrap()));
    let socks = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.lua");
    let key = std::fs::read_to_string(&issued.key).unwrap();
    std::fs::write(
        &file,
        format!(
            "kumo.on('proxy_init', function()
               proxy.start_proxy_listener {{
                 listen = '{socks}', use_tls = true,
                 tls_certificate = '{}', tls_private_key = {{ key_data = [[{key}]] }},
               }}
               proxy.start_http_listener {{ listen = '{http}' }}
             end)",
            issued.cert.display()
        ),
    )
    .unwrap();
    let proxy = Proxy::with_config(socks, &file);
    let web = HttpServer::start("127.0.0.1".parse().unwrap());

    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca.ca_file()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(socks).await.unwrap();
    let mut tls = connector
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .expect("a TLS handshake with the listener's certificate");
    tls.write_all(&[5, 1, 0]).await.unwrap();
    let mut choice = [0u8; 2];
    tls.read_exact(&mut choice).await.unwrap();
    assert_eq!(choice, [5, 0]);
    let mut request = vec![5, 1, 0, 1, 127, 0, 0, 1];
    request.extend_from_slice(&web.addr.port().to_be_bytes());
    tls.write_all(&request).await.unwrap();
    let mut reply = [0u8; 10];
    tls.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[1], 0, "CONNECT succeeded");
    tls.write_all(b"GET /hello.txt HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap_or_default();
    assert!(answer.ends_with("hello through the proxy\n"), "{answer}");

    // Plain SOCKS5 at a TLS listener: the handshake fails and is counted (the
    // start-up probe that connected and left counts too, hence before/after).
    let failures = || {
        let prefix = format!("proxy_tls_handshake_failures_total{{listener=\"{socks}\"}} ");
        egress_e2e::http_get(http, "/metrics")
            .body
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).and_then(|n| n.parse::<u64>().ok()))
            .unwrap_or(0)
    };
    let before = failures();
    let mut plain = std::net::TcpStream::connect(socks).unwrap();
    std::io::Write::write_all(&mut plain, &[5, 1, 0]).unwrap();
    let _ = std::io::Read::read(&mut plain, &mut [0u8; 16]);
    let counted = wait_until(Duration::from_secs(5), || failures() == before + 1);
    assert!(counted, "{}", proxy.log());
}
