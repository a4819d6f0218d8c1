//! Operating egressd (issue: operations): a real Prometheus scraping the metrics,
//! promtool checking them, suspensions through the CLI moving traffic, HTTP
//! authentication for untrusted clients, resolve-egress-path against what the relay
//! then does, the log filter changed live, liveness while draining.

mod common;

use common::Egressd;
use egress_e2e::{by_client_addr, swaks, Raw};
use egress_e2e::{
    header, http_get, http_request, mx_entry, require, Dnsmasq, Prometheus, SmtpSink,
};
use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Pool `main` = `ip-2` (127.0.0.2) and `ip-3` (127.0.0.3), equal weights, routed to
/// `mx`; an HTTP listener on `{http}` with `http` more keys; `extra` more policy.
fn ops_policy(mx: &str, http: &str, extra: &str) -> String {
    format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}' }}
           kumo.start_http_listener {{ listen = '{{http}}', {http} }}
         end)
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main', protocol = {{ smtp = {{ mx_list = {{ '{mx}' }} }} }} }}
         end)
         kumo.on('get_egress_pool', function(name)
           return kumo.make_egress_pool {{ name = name, entries = {{ {{ name = 'ip-2' }}, {{ name = 'ip-3' }} }} }}
         end)
         local ADDRESSES = {{ ['ip-2'] = '127.0.0.2', ['ip-3'] = '127.0.0.3' }}
         kumo.on('get_egress_source', function(name)
           if not ADDRESSES[name] then error('no such source: ' .. name) end
           return kumo.make_egress_source {{ name = name, source_address = ADDRESSES[name] }}
         end)
         {extra}"
    )
}

fn send(d: &Egressd, n: usize) {
    for _ in 0..n {
        let s = swaks(d.addr, "someone@example.test", &[]);
        assert!(s.ok, "{}", s.transcript);
    }
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn prometheus_counts_the_messages_each_source_relayed() {
    let sink = SmtpSink::start();
    let d = Egressd::start(
        &egress_e2e::relay_policy("", &mx_entry(sink.addr), "").replace(
            "kumo.start_esmtp_listener",
            "kumo.start_http_listener { listen = '{http}' } kumo.start_esmtp_listener",
        ),
    );
    let http = d.http.unwrap();
    let prometheus = Prometheus::start(&[http]);
    send(&d, 3);
    assert_eq!(sink.wait_for(3).len(), 3);
    let relayed = prometheus.wait_for(
        r#"sum(egressd_messages_relayed_total{source="ip-2"})"#,
        3.0,
        Duration::from_secs(30),
    );
    assert_eq!(relayed, Some(3.0), "Prometheus saw {relayed:?}");
    let connections = prometheus.query(r#"sum(egressd_connections_opened_total{source="ip-2"}) + sum(egressd_connections_reused_total{source="ip-2"})"#);
    assert_eq!(connections, Some(3.0));
    assert!(prometheus
        .query(r#"sum(egressd_transaction_seconds_count{source="ip-2"})"#)
        .is_some_and(|n| n >= 3.0));

    // promtool accepts the exposition as a client without OpenMetrics gets it.
    let exposition = http_get(http, "/metrics");
    assert_eq!(exposition.status, 200);
    assert!(
        exposition.headers.contains("text/plain; version=0.0.4"),
        "{}",
        exposition.headers
    );
    let mut promtool = Command::new(require("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.body.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}\n{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr),
        exposition.body
    );
    for name in [
        "egress_source_connection_failures_total",
        "lua_event_latency_bucket",
        "egressd_inbound_sessions_total",
        "egressd_policy_cache_hits_total",
    ] {
        assert!(
            exposition.body.contains(name),
            "{name} missing:\n{}",
            exposition.body
        );
    }

    let json = http_get(http, "/metrics.json");
    let doc: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    let samples = doc["egressd_messages_relayed_total"]["samples"]
        .as_array()
        .unwrap();
    assert_eq!(samples[0]["labels"]["source"], "ip-2");
    assert_eq!(samples[0]["value"], 3.0);
}

#[test]
fn a_source_suspended_through_the_cli_is_skipped_until_resumed() {
    let sink = SmtpSink::start();
    let d = Egressd::start(&ops_policy(&mx_entry(sink.addr), "", ""));
    send(&d, 4);
    let before = by_client_addr(&sink.wait_for(4));
    assert_eq!(before.get("127.0.0.2"), Some(&2), "{before:?}");
    assert_eq!(before.get("127.0.0.3"), Some(&2), "{before:?}");

    let said = stdout(&d.ctl(&[
        "suspend",
        "ip-2",
        "--duration",
        "1h",
        "--reason",
        "blocked at example.test, ticket 42",
    ]));
    assert!(said.contains("id ip-2"), "{said}");
    send(&d, 4);
    // The sink's files come in no order: compare totals.
    let during = by_client_addr(&sink.wait_for(8));
    assert_eq!(during.get("127.0.0.2"), Some(&2), "{during:?}");
    assert_eq!(during.get("127.0.0.3"), Some(&6), "{during:?}");

    let listed = stdout(&d.ctl(&["suspensions"]));
    assert!(
        listed.contains("blocked at example.test, ticket 42"),
        "{listed}"
    );
    assert!(listed.contains("59m"), "{listed}");
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&d.ctl(&["suspensions", "--json"]))).unwrap();
    assert_eq!(json[0]["id"], "ip-2");
    assert_eq!(json[0]["name"], "ip-2");
    assert!(json[0]["expires"].as_str().unwrap().ends_with('Z'));
    let status = stdout(&d.ctl(&["status"]));
    assert!(status.contains("ip-3"), "{status}");
    assert!(status.contains("blocked at example.test"), "{status}");

    stdout(&d.ctl(&["resume", "ip-2"]));
    send(&d, 4);
    let after = by_client_addr(&sink.wait_for(12));
    assert_eq!(after.get("127.0.0.2"), Some(&4), "{after:?}");
    assert_eq!(after.get("127.0.0.3"), Some(&8), "{after:?}");
    assert!(stdout(&d.ctl(&["suspensions"])).contains("no suspensions"));

    // Mistakes are refused with what to do, and the server keeps serving.
    let typo = d.ctl(&["suspend", "ip-9", "--duration", "1h", "--reason", "x"]);
    assert!(!typo.status.success());
    assert!(String::from_utf8_lossy(&typo.stderr).contains("no egress source \"ip-9\""));
    let unknown = d.ctl(&["resume", "ip-9"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("404"));
    let http = d.http.unwrap();
    let bad = http_request(
        None,
        http,
        "POST",
        "/api/admin/suspend-ready-q/v1",
        &[],
        r#"{"name": "ip-2", "reason": "r", "duration": "soon"}"#,
    )
    .unwrap();
    assert_eq!(bad.status, 400);
    let body: serde_json::Value = serde_json::from_str(&bad.body).unwrap();
    assert_eq!(body["field"], "duration", "{}", bad.body);
    let site_form = http_request(
        None,
        http,
        "POST",
        "/api/admin/suspend-ready-q/v1",
        &[],
        r#"{"name": "ip-3->mx.example.test@smtp_client", "reason": "r", "expires": "2099-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    assert_eq!(site_form.status, 200, "{}", site_form.body);
    assert!(site_form.body.contains("ip-3->mx.example.test"));
    assert_eq!(http_get(http, "/api/nothing").status, 404);
}

#[test]
fn clients_outside_trusted_hosts_need_credentials_the_policy_accepts() {
    let sink = SmtpSink::start();
    let d = Egressd::start(&ops_policy(
        &mx_entry(sink.addr),
        "trusted_hosts = { '127.0.0.1/32' }",
        "kumo.on('http_server_validate_auth_basic', function(user, password)
           return user == 'ops' and password == 'tiger'
         end)",
    ));
    let http = d.http.unwrap();
    let outside: IpAddr = "127.0.0.50".parse().unwrap();
    let get = |auth: &[&str]| {
        http_request(Some(outside), http, "GET", "/api/admin/status/v1", auth, "").unwrap()
    };
    let none = get(&[]);
    assert_eq!(none.status, 401, "{}", none.body);
    assert!(
        none.headers
            .to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{}",
        none.headers
    );
    assert!(
        none.body.contains("127.0.0.50 is not in trusted_hosts"),
        "{}",
        none.body
    );
    // ops:wrong, then ops:tiger
    assert_eq!(get(&["Authorization: Basic b3BzOndyb25n"]).status, 401);
    let good = get(&["Authorization: Basic b3BzOnRpZ2Vy"]);
    assert_eq!(good.status, 200, "{}", good.body);
    assert!(good.body.contains("\"listeners\""), "{}", good.body);
    // The trusted address needs nothing.
    assert_eq!(http_get(http, "/api/admin/status/v1").status, 200);
    // The CLI sends credentials too.
    let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(["status", "--endpoint", &format!("http://{http}")])
        .args(["--credentials", "ops:tiger"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn resolve_egress_path_shows_what_the_relay_then_does() {
    let sink = SmtpSink::start();
    let dns = Dnsmasq::start(&[
        "--mx-host=example.test,mx1.example.test,10",
        "--host-record=mx1.example.test,127.0.0.1",
    ]);
    let d = Egressd::start(&format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}' }}
           kumo.start_http_listener {{ listen = '{{http}}' }}
           kumo.dns.configure_resolver {{ name_servers = {{ '{}' }} }}
         end)
         kumo.on('get_egress_pool', function(name)
           return kumo.make_egress_pool {{ name = name, entries = {{ {{ name = 'ip-3' }} }} }}
         end)
         kumo.on('get_egress_source', function(name)
           return kumo.make_egress_source {{ name = name, source_address = '127.0.0.3',
                                             ehlo_domain = 'mta3.example.com' }}
         end)
         kumo.on('get_egress_path_config', function(domain, source, site)
           return kumo.make_egress_path {{ smtp_port = {}, max_message_rate = '100/h' }}
         end)",
        dns.addr,
        sink.addr.port()
    ));
    let out = stdout(&d.ctl(&["resolve", "example.test", "--json"]));
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["site_name"], "mx1.example.test");
    let source = &doc["sources"][0];
    assert_eq!(source["name"], "ip-3");
    assert_eq!(source["ehlo_domain"], "mta3.example.com");
    let dest = &source["destinations"][0];
    assert_eq!(dest["host"], "mx1.example.test");
    assert_eq!(dest["address"], "127.0.0.1");
    assert_eq!(dest["port"], sink.addr.port());
    let rate = &source["throttles"][0];
    assert_eq!(rate["setting"], "max_message_rate");
    assert_eq!(rate["available"], 100);
    let human = stdout(&d.ctl(&["resolve", "example.test"]));
    assert!(
        human.contains(&format!(
            "mx1.example.test [127.0.0.1]:{}",
            sink.addr.port()
        )),
        "{human}"
    );

    // Now the relay: the same host, port and name on the wire.
    let s = swaks(d.addr, "someone@example.test", &[]);
    assert!(s.ok, "{}", s.transcript);
    let m = sink.wait_for(1);
    assert_eq!(header(&m[0], "X-Helo-Args"), Some("mta3.example.com"));
    assert_eq!(header(&m[0], "X-Client-Addr"), Some("127.0.0.3"));
    assert!(d.log().contains(&format!(
        "mx1.example.test [127.0.0.1:{}]",
        sink.addr.port()
    )));
    // The message counted against the rate the resolve showed.
    let again: serde_json::Value =
        serde_json::from_str(&stdout(&d.ctl(&["resolve", "example.test", "--json"]))).unwrap();
    assert_eq!(again["sources"][0]["throttles"][0]["available"], 99);
    // Bad requests name the field.
    let missing = http_get(
        d.http.unwrap(),
        "/api/admin/resolve-egress-path/v1?domian=x",
    );
    assert_eq!(missing.status, 400);
    assert!(
        missing.body.contains("\"field\": \"domian\""),
        "{}",
        missing.body
    );
}

#[test]
fn the_log_filter_changes_without_a_restart() {
    let sink = SmtpSink::start();
    let d = Egressd::start(&ops_policy(&mx_entry(sink.addr), "", ""));
    let http = d.http.unwrap();
    assert_eq!(http_get(http, "/api/check-liveness/v1").status, 200);
    let debug_lines = |log: &str| log.lines().filter(|l| l.contains("DEBUG")).count();
    assert_eq!(debug_lines(&d.log()), 0, "{}", d.log());

    let bad = http_request(
        None,
        http,
        "POST",
        "/api/admin/set-diagnostic-log-filter/v1",
        &[],
        r#"{"filter": "info,egressd=[[["}"#,
    )
    .unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("\"field\": \"filter\""), "{}", bad.body);

    let changed = http_request(
        None,
        http,
        "POST",
        "/api/admin/set-diagnostic-log-filter/v1",
        &[],
        r#"{"filter": "info,egressd::admin=debug"}"#,
    )
    .unwrap();
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(http_get(http, "/api/check-liveness/v1").status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d
        .log()
        .contains("path=\"/api/check-liveness/v1\" status=200")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(debug_lines(&d.log()) > 0, "{}", d.log());
    // The relay serves on.
    send(&d, 1);
}

#[test]
fn liveness_says_503_while_draining() {
    let sink = SmtpSink::start();
    let mut d = Egressd::start(&ops_policy(&mx_entry(sink.addr), "", ""));
    let http = d.http.unwrap();
    assert_eq!(http_get(http, "/api/check-liveness/v1").status, 200);
    // A transaction in flight holds the drain open.
    let (mut smtp, _) = Raw::connect(d.addr);
    smtp.cmd("EHLO client.test");
    assert!(smtp.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    assert!(smtp.cmd("RCPT TO:<b@example.test>").starts_with("250"));
    assert!(Command::new("kill")
        .args(["-TERM", &d.pid().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut status = 0;
    while Instant::now() < deadline {
        status = http_get(http, "/api/check-liveness/v1").status;
        if status == 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status, 503);
    assert!(smtp.cmd("DATA").starts_with("354"));
    assert!(smtp
        .cmd("Subject: drain\r\n\r\nbody\r\n.")
        .starts_with("250"));
    assert_eq!(sink.wait_for(1).len(), 1);
    drop(smtp);
    assert!(d.wait_exit(Duration::from_secs(10)));
}

#[test]
fn the_service_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../contrib/egressd.service"
    ))
    .unwrap();
    for directive in [
        "Type=exec",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
    ] {
        assert!(unit.contains(directive), "{directive} missing");
    }
    let verified = egress_e2e::systemd_verify(
        &unit,
        "/usr/local/bin/egressd",
        env!("CARGO_BIN_EXE_egressd"),
    );
    assert_eq!(verified, Ok(()));
}

#[test]
fn a_suspension_made_on_one_node_is_listed_and_honoured_by_another_through_redis() {
    let redis = egress_e2e::RedisServer::start();
    let sink = SmtpSink::start();
    let policy = ops_policy(&mx_entry(sink.addr), "", "").replace(
        "kumo.start_esmtp_listener",
        &format!(
            "kumo.configure_redis_throttles {{ node = '{}' }} kumo.start_esmtp_listener",
            redis.url()
        ),
    );
    let (a, b) = (Egressd::start(&policy), Egressd::start(&policy));
    stdout(&a.ctl(&[
        "suspend",
        "ip-2",
        "--site",
        &format!("[127.0.0.1]:{}", sink.addr.port()),
        "--duration",
        "10m",
        "--reason",
        "shared block",
    ]));
    let listed: serde_json::Value =
        serde_json::from_str(&stdout(&b.ctl(&["suspensions", "--json"]))).unwrap();
    assert_eq!(listed[0]["reason"], "shared block", "{listed}");
    let site = listed[0]["id"].as_str().unwrap().to_owned();
    assert!(site.starts_with("ip-2->"), "{site}");
    send(&b, 4);
    let counts = by_client_addr(&sink.wait_for(4));
    assert_eq!(counts, HashMap::from([("127.0.0.3".to_owned(), 4)]));
    stdout(&b.ctl(&["resume", &site]));
    assert!(stdout(&a.ctl(&["suspensions"])).contains("no suspensions"));
}
