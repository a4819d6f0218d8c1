//! TLS on both sides and authenticated relaying, against real peers: a private
//! Postfix with a certificate from a CA the test makes (its `Received:` header at
//! the sink says whether it was reached over TLS), swaks `--tls --auth`, Python's
//! smtplib, and a real Postfix authenticating to egressd.

mod common;

use common::Egressd;
use egress_e2e::{http_get, swaks, Raw};
use egress_e2e::{Postfix, SmtpSink, TestCa, IP2_POOL};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// A Postfix that offers STARTTLS with a certificate for `mx.tls.test` issued by
/// `ca`, and relays what it receives to `sink`, noting TLS in its `Received:`.
fn tls_postfix(ca: &TestCa, sink: &SmtpSink) -> Postfix {
    let issued = ca.issue("mx.tls.test", Some("127.0.0.1".parse().unwrap()));
    Postfix::start_with(sink.addr, &egress_e2e::postfix_tls_main_cf(&issued))
}

/// The message at the sink whose Subject is `subject`.
fn by_subject(sink: &SmtpSink, subject: &str) -> Option<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(m) = sink
            .messages()
            .into_iter()
            .find(|m| m.contains(&format!("Subject: {subject}")))
        {
            return Some(m);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Postfix's own Received line for a message (the one that says how egressd
/// reached it).
fn postfix_received(message: &str) -> String {
    let start = message
        .find("by postfix.example.test")
        .expect("Postfix's Received header");
    let from = message[..start].rfind("Received:").unwrap_or(0);
    message[from..start + 200.min(message.len() - start)].to_owned()
}

#[test]
fn outbound_starttls_modes_against_a_real_postfix() {
    let sink = SmtpSink::start();
    let trusted_ca = TestCa::new();
    let other_ca = TestCa::new();
    let trusted = tls_postfix(&trusted_ca, &sink);
    let untrusted = tls_postfix(&other_ca, &sink);
    let plain = SmtpSink::start();
    let policy = format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}' }}
           kumo.start_http_listener {{ listen = '{{http}}' }}
         end)
         local routes = {{
           ['trusted.test'] = {{ mx = '{trusted}', tls = 'Opportunistic' }},
           ['untrusted.test'] = {{ mx = '{untrusted}', tls = 'Opportunistic' }},
           ['reconnect.test'] = {{ mx = '{untrusted}', tls = 'Opportunistic', reconnect = true }},
           ['insecure.test'] = {{ mx = '{untrusted}', tls = 'OpportunisticInsecure' }},
           ['disabled.test'] = {{ mx = '{trusted}', tls = 'Disabled' }},
           ['required.test'] = {{ mx = '{plain}', tls = 'Required' }},
         }}
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main',
             protocol = {{ smtp = {{ mx_list = {{ {{ name = 'mx.tls.test', addr = routes[domain].mx }} }} }} }} }}
         end)
         {IP2_POOL}
         kumo.on('get_egress_path_config', function(domain, source, site)
           return kumo.make_egress_path {{ enable_tls = routes[domain].tls,
             opportunistic_tls_reconnect_on_failed_handshake = routes[domain].reconnect or false }}
         end)",
        trusted = trusted.addr,
        untrusted = untrusted.addr,
        plain = plain.addr,
    );
    let ca_file = trusted_ca.ca_file();
    let d = Egressd::start_with_env(
        &policy,
        &[],
        &[("SSL_CERT_FILE", ca_file.to_str().unwrap())],
    );
    let send = |domain: &str| {
        swaks(
            d.addr,
            &format!("rcpt@{domain}"),
            &["--header", &format!("Subject: case {domain}")],
        )
    };

    // Opportunistic, CA trusted: delivered over TLS, verified.
    let s = send("trusted.test");
    assert!(s.ok, "{}", s.transcript);
    let m = by_subject(&sink, "case trusted.test").expect("delivered");
    assert!(postfix_received(&m).contains("using TLS"), "{m}");
    let log = d.log();
    assert!(log.contains("tls=TLSv1.3/TLS13_"), "{log}");
    assert!(log.contains("tls_peer=CN=mx.tls.test"), "{log}");

    // Opportunistic, CA not trusted: a 4xx that names the certificate problem.
    let s = send("untrusted.test");
    assert!(!s.ok);
    let reply = s.first_reply("451");
    assert!(reply.starts_with("451 4.7.5"), "{}", s.transcript);
    assert!(reply.contains("certificate not trusted"), "{reply}");
    assert!(reply.contains("pool 'main', source 'ip-2'"), "{reply}");

    // ... unless the path says to reconnect in clear.
    let s = send("reconnect.test");
    assert!(s.ok, "{}", s.transcript);
    let m = by_subject(&sink, "case reconnect.test").expect("delivered");
    assert!(!postfix_received(&m).contains("using TLS"), "{m}");

    // OpportunisticInsecure: TLS without verification.
    let s = send("insecure.test");
    assert!(s.ok, "{}", s.transcript);
    let m = by_subject(&sink, "case insecure.test").expect("delivered");
    assert!(postfix_received(&m).contains("using TLS"), "{m}");

    // Disabled: in clear although offered.
    let s = send("disabled.test");
    assert!(s.ok, "{}", s.transcript);
    let m = by_subject(&sink, "case disabled.test").expect("delivered");
    assert!(!postfix_received(&m).contains("using TLS"), "{m}");

    // Required, and smtp-sink does not offer STARTTLS.
    let s = send("required.test");
    assert!(!s.ok);
    let reply = s.first_reply("451");
    assert!(reply.starts_with("451 4.7.5"), "{}", s.transcript);
    assert!(
        reply.contains("STARTTLS required but not offered"),
        "{reply}"
    );
    assert!(plain.messages().is_empty());

    // What TLS reporting (RFC 8460) would say of these sessions, per domain (no
    // MTA-STS or DANE here: every policy is "no-policy-found").
    let answer = http_get(d.http.unwrap(), "/api/admin/tls-report/v1");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let report: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    let policies = report["policies"].as_array().expect("policies");
    let of = |domain: &str| {
        policies
            .iter()
            .find(|p| p["policy"]["policy-domain"] == domain)
            .unwrap_or_else(|| panic!("{domain} in {report:#}"))
    };
    let summary = |domain: &str| {
        let s = &of(domain)["summary"];
        (
            s["total-successful-session-count"].as_u64().unwrap(),
            s["total-failure-session-count"].as_u64().unwrap(),
        )
    };
    let failure = |domain: &str| of(domain)["failure-details"][0].clone();
    assert_eq!(
        of("trusted.test")["policy"]["policy-type"],
        "no-policy-found"
    );
    assert_eq!(summary("trusted.test"), (1, 0));
    assert_eq!(summary("insecure.test"), (1, 0));
    assert_eq!(summary("untrusted.test"), (0, 1));
    let untrusted_failure = failure("untrusted.test");
    assert_eq!(untrusted_failure["result-type"], "certificate-not-trusted");
    assert_eq!(untrusted_failure["sending-mta-ip"], "127.0.0.2");
    assert_eq!(untrusted_failure["receiving-mx-hostname"], "mx.tls.test");
    assert_eq!(untrusted_failure["receiving-ip"], "127.0.0.1");
    // The handshake failed before the session went on in clear.
    assert_eq!(summary("reconnect.test"), (0, 1));
    assert_eq!(summary("required.test"), (0, 1));
    assert_eq!(
        failure("required.test")["result-type"],
        "starttls-not-supported"
    );
    assert!(
        !policies
            .iter()
            .any(|p| p["policy"]["policy-domain"] == "disabled.test"),
        "no TLS was tried for disabled.test: {report:#}"
    );
    assert_eq!(
        report["date-range"]["end-datetime"].as_str().map(str::len),
        Some(20)
    );
}

#[test]
fn probe_shows_the_tls_a_destination_offers() {
    let sink = SmtpSink::start();
    let ca = TestCa::new();
    let postfix = tls_postfix(&ca, &sink);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.lua");
    std::fs::write(
        &policy,
        "kumo.on('get_egress_source', function(name)
           return kumo.make_egress_source { name = name, source_address = '127.0.0.2' }
         end)",
    )
    .unwrap();
    let probe = |ca_file: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
            .args(["probe", "--policy"])
            .arg(&policy)
            .args(["--source", "ip-2", "--tls"])
            .arg(format!("[127.0.0.1]:{}", postfix.addr.port()))
            .env("SSL_CERT_FILE", ca_file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = probe(&ca.ca_file());
    assert!(out.contains("tls:         TLSv1.3 TLS13_"), "{out}");
    assert!(out.contains("certificate: CN=mx.tls.test"), "{out}");
    assert!(out.contains("verified:    yes"), "{out}");
    let other = TestCa::new();
    let out = probe(&other.ca_file());
    assert!(
        out.contains("verified:    no: certificate not trusted"),
        "{out}"
    );
    assert!(out.contains("certificate: CN=mx.tls.test"), "{out}");
}

/// A policy whose listener relays by address only for `relay_hosts` (a Lua list;
/// `'10.0.0.0/8'` leaves loopback clients to authenticate), and whose AUTH handler
/// accepts alice.
fn auth_policy(sink: &SmtpSink, relay_hosts: &str) -> String {
    egress_e2e::relay_policy(
        &format!("relay_hosts = {{ {relay_hosts} }}"),
        &egress_e2e::mx_entry(sink.addr),
        "kumo.on('smtp_server_auth_plain', function(authz, authc, password, conn_meta)
           return authc == 'alice' and password == 's3cret' and conn_meta.received_from ~= nil
         end)",
    )
}

/// Relaying by address only for 10.0.0.0/8: loopback clients are outsiders.
const OUTSIDE: &str = "'10.0.0.0/8'";

fn require_swaks_tls() {
    let ok = Command::new("perl")
        .args(["-MNet::SSLeay", "-e1"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "swaks --tls needs Perl's Net::SSLeay: apt-get install -y libnet-ssleay-perl (cargo xtask peers does it)"
    );
}

#[test]
fn swaks_authenticates_over_starttls_and_relays_from_outside_relay_hosts() {
    require_swaks_tls();
    let sink = SmtpSink::start();
    let d = Egressd::start(&auth_policy(&sink, OUTSIDE));
    for mechanism in ["PLAIN", "LOGIN"] {
        let s = swaks(
            d.addr,
            "rcpt@dest.test",
            &[
                "--tls",
                "--auth",
                mechanism,
                "--auth-user",
                "alice",
                "--auth-password",
                "s3cret",
            ],
        );
        assert!(s.ok, "{mechanism}: {}", s.transcript);
        assert!(s.has_reply("235 2.7.0"), "{}", s.transcript);
    }
    let messages = sink.wait_for(2);
    assert_eq!(messages.len(), 2);
    for m in &messages {
        assert!(m.contains("with ESMTPSA"), "{m}");
        assert!(m.contains("(version=TLSv1.3 cipher=TLS13_"), "{m}");
    }
    // Wrong password.
    let s = swaks(
        d.addr,
        "rcpt@dest.test",
        &[
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "wrong",
        ],
    );
    assert!(!s.ok);
    assert!(s.has_reply("535 5.7.8"), "{}", s.transcript);
    // No AUTH from outside relay_hosts: 530 at MAIL.
    let s = swaks(d.addr, "rcpt@dest.test", &["--tls"]);
    assert!(!s.ok);
    assert!(s.has_reply("530 5.7.0"), "{}", s.transcript);
    assert!(
        !d.log().contains("s3cret") && !d.log().contains("wrong"),
        "{}",
        d.log()
    );
}

#[test]
fn auth_is_refused_in_clear_and_limited_to_three_failures() {
    let sink = SmtpSink::start();
    let d = Egressd::start(&auth_policy(&sink, OUTSIDE));
    let (mut c, _) = Raw::connect(d.addr);
    let ehlo = c.cmd("EHLO client.test");
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    // An initial response in clear is not read as credentials.
    let r = c.cmd("AUTH PLAIN AGFsaWNlAHMzY3JldA==");
    assert!(r.starts_with("538 5.7.11"), "{r}");
    assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("530 5.7.0"));

    // Over TLS, three wrong attempts end the session.
    let mut tls = TlsClient::connect(d.addr);
    let ehlo = tls.cmd("EHLO client.test");
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    for attempt in 1..=3 {
        // "\0alice\0nope"
        let r = tls.cmd("AUTH PLAIN AGFsaWNlAG5vcGU=");
        assert!(r.starts_with("535 5.7.8"), "attempt {attempt}: {r}");
        if attempt == 3 {
            assert!(r.contains("421 4.7.0"), "{r}");
        }
    }
    assert_eq!(tls.reply(), "", "closed after the third failure");
}

#[test]
fn commands_pipelined_after_starttls_are_discarded() {
    let sink = SmtpSink::start();
    let d = Egressd::start(&auth_policy(&sink, "'127.0.0.0/8'"));
    let mut tls = TlsClient::connect_with(d.addr, "STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\n");
    // The injected MAIL was sent in clear: it must not have been read. Over TLS the
    // session starts over, so RCPT has no transaction to join.
    let r = tls.cmd("RCPT TO:<victim@dest.test>");
    assert!(r.starts_with("503"), "{r}");
    assert!(tls.cmd("EHLO client.test").starts_with("250"));
    assert!(tls.cmd("MAIL FROM:<user@client.test>").starts_with("250"));
    assert!(tls.cmd("RCPT TO:<victim@dest.test>").starts_with("250"));
    tls.cmd("QUIT");
}

#[test]
fn python_smtplib_starttls_and_login() {
    let sink = SmtpSink::start();
    let d = Egressd::start(&auth_policy(&sink, OUTSIDE));
    let script = format!(
        "import smtplib, ssl\n\
         s = smtplib.SMTP('127.0.0.1', {port}, timeout=20)\n\
         s.ehlo('py.client.test')\n\
         ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n\
         s.starttls(context=ctx)\n\
         s.ehlo('py.client.test')\n\
         s.login('alice', 's3cret')\n\
         s.sendmail('py@client.test', ['rcpt@dest.test'], 'Subject: from smtplib\\r\\n\\r\\nhello\\r\\n')\n\
         s.quit()\n",
        port = d.addr.port()
    );
    let out = Command::new(egress_e2e::require("python3"))
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = sink.wait_for(1);
    assert_eq!(m.len(), 1);
    assert!(
        m[0].contains("Subject: from smtplib") && m[0].contains("with ESMTPSA"),
        "{}",
        m[0]
    );
}

#[test]
fn a_real_postfix_relays_through_egressd_with_tls_and_sasl() {
    let sink = SmtpSink::start();
    let d = Egressd::start(&auth_policy(&sink, OUTSIDE));
    let postfix = Postfix::start_with(
        d.addr,
        "smtp_tls_security_level = encrypt\n\
         smtp_sasl_auth_enable = yes\n\
         smtp_sasl_password_maps = static:alice:s3cret\n\
         smtp_sasl_security_options = noanonymous\n\
         smtp_sasl_tls_security_options = noanonymous\n",
    );
    let s = swaks(
        postfix.addr,
        "rcpt@dest.test",
        &["--header", "Subject: via postfix"],
    );
    assert!(s.ok, "{}", s.transcript);
    let m = by_subject(&sink, "via postfix").unwrap_or_else(|| {
        panic!(
            "not delivered; postfix log:\n{}\negressd log:\n{}",
            postfix.maillog(),
            d.log()
        )
    });
    assert!(m.contains("with ESMTPSA"), "{m}");
    // Postfix logs the delivery after egressd has answered it: wait for the line.
    assert!(
        egress_e2e::wait_until(Duration::from_secs(10), || postfix
            .maillog()
            .contains("status=sent")),
        "{}",
        postfix.maillog()
    );
}

/// A client that speaks STARTTLS to egressd (whose certificate is self-signed, so
/// it is not verified here) and then SMTP over TLS.
struct TlsClient {
    rt: tokio::runtime::Runtime,
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    pending: Vec<u8>,
}

impl TlsClient {
    fn connect(addr: SocketAddr) -> TlsClient {
        Self::connect_with(addr, "STARTTLS\r\n")
    }

    /// EHLO in clear, then `starttls_write` in one write (STARTTLS and anything to
    /// inject after it), then the handshake.
    fn connect_with(addr: SocketAddr, starttls_write: &str) -> TlsClient {
        let (mut raw, _) = Raw::connect(addr);
        assert!(raw.cmd("EHLO client.test").contains("STARTTLS"));
        raw.send(starttls_write.as_bytes());
        let r = raw.reply();
        assert!(r.starts_with("220"), "{r}");
        let std_stream = raw.into_inner();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stream = rt.block_on(async {
            std_stream.set_nonblocking(true).unwrap();
            let tcp = tokio::net::TcpStream::from_std(std_stream).unwrap();
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify))
            .with_no_client_auth();
            tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect("egressd.test".try_into().unwrap(), tcp)
                .await
                .expect("TLS handshake with egressd")
        });
        TlsClient {
            rt,
            stream,
            pending: Vec::new(),
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        let bytes = format!("{line}\r\n");
        self.rt.block_on(async {
            use tokio::io::AsyncWriteExt;
            self.stream.write_all(bytes.as_bytes()).await.unwrap();
        });
        self.reply()
    }

    /// The next reply (all lines; several replies if they arrived together up to
    /// a final line), empty when the server closed.
    fn reply(&mut self) -> String {
        let mut out = String::new();
        loop {
            while let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line).into_owned();
                out.push_str(&line);
                if line.as_bytes().get(3) != Some(&b'-') && self.pending.is_empty() {
                    return out;
                }
            }
            let mut buf = [0u8; 4096];
            let n = self.rt.block_on(async {
                use tokio::io::AsyncReadExt;
                tokio::time::timeout(Duration::from_secs(20), self.stream.read(&mut buf))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .unwrap_or(0)
            });
            if n == 0 {
                return out;
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }
}

#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
