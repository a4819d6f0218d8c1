//! `egressd check`, `egressd probe`, limits, reload and shutdown, against real peers.

mod common;

use common::Egressd;
use egress_e2e::swaks;
use egress_e2e::{header, SmtpSink};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

fn egressd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn write_policy(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.lua");
    std::fs::write(&path, text).unwrap();
    (dir, path.display().to_string())
}

#[test]
fn check_prints_resolved_definitions_as_json() {
    let (_dir, path) = write_policy(
        "kumo.on('get_egress_source', function(name)
           return kumo.make_egress_source { name = name, source_address = '127.0.0.2', ehlo_domain = 'mta2.example.test', ttl = '5 mins' }
         end)
         kumo.on('get_egress_pool', function(name)
           return kumo.make_egress_pool { name = name, entries = { { name = 'ip-2', weight = 3 } } }
         end)",
    );
    let (ok, out, err) = egressd(&[
        "check", "--policy", &path, "--source", "ip-2", "--pool", "bulk",
    ]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["sources"]["ip-2"]["source_address"], "127.0.0.2");
    assert_eq!(json["sources"]["ip-2"]["ehlo_domain"], "mta2.example.test");
    assert_eq!(json["sources"]["ip-2"]["ttl"], "5m");
    assert_eq!(json["pools"]["bulk"]["entries"][0]["weight"], 3);
}

#[test]
fn check_fails_with_the_teaching_error() {
    let (_dir, path) = write_policy(
        "kumo.on('get_egress_source', function(name)
           kumo.make_egress_source { name = name, source_address = '127.0.0.2' }
         end)",
    );
    let (ok, _, err) = egressd(&["check", "--policy", &path, "--source", "ip-1"]);
    assert!(!ok);
    assert!(
        err.contains("get_egress_source('ip-1') returned nil"),
        "{err}"
    );
    assert!(err.contains("return kumo.make_egress_source"), "{err}");

    // A misspelt event name: the handler would never run, and the log says why.
    let (_dir, path) = write_policy(
        "kumo.on('get_egress_sources', function(name) return kumo.make_egress_source { name = name } end)",
    );
    let (ok, _, err) = egressd(&["check", "--policy", &path, "--source", "ip-1"]);
    assert!(!ok);
    assert!(err.contains("no handler for 'get_egress_source'"), "{err}");
    assert!(
        err.contains("kumo.on('get_egress_sources', ...) will never run")
            && err.contains("did you mean 'get_egress_source'?"),
        "{err}"
    );

    let (_dir, path) = write_policy("kumo.on('get_egress_source', function(name)\n  return kumo.make_egress_source { name = name, sorce_address = '127.0.0.2' }\nend)");
    let (ok, _, err) = egressd(&["check", "--policy", &path, "--source", "ip-1"]);
    assert!(!ok);
    assert!(
        err.contains("policy.lua:2:") && err.contains("did you mean `source_address`?"),
        "{err}"
    );
}

#[test]
fn probe_prints_banner_ehlo_reply_and_egress() {
    let sink = SmtpSink::start();
    let (_dir, path) = write_policy(
        "kumo.on('get_egress_source', function(name)
           return kumo.make_egress_source { name = name, source_address = '127.0.0.3', ehlo_domain = 'probe.example.test' }
         end)",
    );
    let target = format!("[127.0.0.1]:{}", sink.addr.port());
    let (ok, out, err) = egressd(&["probe", "--policy", &path, "--source", "ip-3", &target]);
    assert!(ok, "{err}");
    assert!(out.contains("egress:      127.0.0.3 (direct)"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("banner:") && l.contains("220")),
        "{out}"
    );
    assert!(out.contains("EHLO probe.example.test"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("ehlo reply:") && l.contains("250")),
        "{out}"
    );
}

fn read_reply(reader: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return all;
        }
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

fn session(addr: std::net::SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert!(read_reply(&mut r).starts_with("220"));
    (s, r)
}

fn say(s: &mut TcpStream, r: &mut BufReader<TcpStream>, line: &str) -> String {
    s.write_all(line.as_bytes()).unwrap();
    read_reply(r)
}

#[test]
fn limits_line_size_and_connections() {
    let sink = SmtpSink::start();
    let d = Egressd::start(&format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}', max_message_size = 1000, max_connections = 2,
                                        max_recipients_per_message = 1 }}
         end)
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{}' }} }} }} }}
         end)",
        sink.addr.port()
    ));
    let (mut s, mut r) = session(d.addr);
    let long = format!("NOOP {}\r\n", "x".repeat(1200));
    assert!(say(&mut s, &mut r, &long).starts_with("500 5.5.2"));
    assert!(say(&mut s, &mut r, "EHLO client.test\r\n").contains("250-ENHANCEDSTATUSCODES"));
    assert!(
        say(&mut s, &mut r, "MAIL FROM:<a@client.test> SIZE=5000\r\n").starts_with("552 5.3.4")
    );
    assert!(say(&mut s, &mut r, "MAIL FROM:<a@client.test>\r\n").starts_with("250"));
    assert!(say(&mut s, &mut r, "RCPT TO:<b@dest.test>\r\n").starts_with("250"));
    assert!(say(&mut s, &mut r, "RCPT TO:<c@dest.test>\r\n")
        .starts_with("452 4.5.3 too many recipients"));
    assert!(say(&mut s, &mut r, "DATA\r\n").starts_with("354"));
    let body = format!(
        "Subject: big\r\n\r\n{}\r\n.\r\n",
        "y".repeat(900)
            .repeat(2)
            .chars()
            .collect::<Vec<_>>()
            .chunks(80)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join("\r\n")
    );
    assert!(say(&mut s, &mut r, &body).starts_with("552 5.3.4"));
    // smtp-sink records a transaction even when the connection drops mid-DATA, so
    // the check is on content: none of the message got through.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        sink.messages().iter().all(|m| !m.contains("Subject: big")),
        "nothing over the limit reached the destination: {:?}",
        sink.messages()
    );

    // Two sessions are open (this one and the next); a third is turned away.
    let (_s2, _r2) = session(d.addr);
    let mut third = TcpStream::connect(d.addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut greeting = String::new();
    let _ = third.read_to_string(&mut greeting);
    assert!(greeting.starts_with("421 4.7.0"), "{greeting}");
    drop(s);
}

#[test]
fn sighup_reloads_the_policy() {
    let sink = SmtpSink::start();
    // The reloaded policy routes elsewhere too: a domain's remembered route must not
    // outlive the queue config that named it.
    let moved = SmtpSink::start();
    let policy = |ehlo: &str, sink: &SmtpSink| {
        format!(
            "kumo.on('init', function() kumo.start_esmtp_listener {{ listen = '{{listen}}' }} end)
             kumo.on('get_queue_config', function(domain)
               return kumo.make_queue_config {{ protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{}' }} }} }} }}
             end)
             kumo.on('get_egress_path_config', function(domain, source, site)
               return kumo.make_egress_path {{ ehlo_domain = '{ehlo}' }}
             end)",
            sink.addr.port()
        )
    };
    let d = Egressd::start(&policy("before.example.test", &sink));
    assert!(swaks(d.addr, "a@dest.test", &[]).ok);
    let text = policy("after.example.test", &moved).replace("{listen}", &d.addr.to_string());
    std::fs::write(d.policy_path(), text).unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap()
        .success());
    let mut after = false;
    for _ in 0..50 {
        if d.log().contains("policy reloaded") {
            after = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(after, "{}", d.log());
    assert!(swaks(d.addr, "b@dest.test", &[]).ok);
    let helo = |sink: &SmtpSink| {
        let messages = sink.wait_for(1);
        assert_eq!(messages.len(), 1, "{messages:?}");
        header(&messages[0], "X-Helo-Args").unwrap().to_owned()
    };
    assert_eq!(helo(&sink), "before.example.test");
    assert_eq!(helo(&moved), "after.example.test");

    // A broken policy on reload: the error is logged and the last good one serves on.
    std::fs::write(d.policy_path(), "this is not lua").unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap()
        .success());
    let mut refused = false;
    for _ in 0..50 {
        if d.log()
            .contains("failed, the previous policy keeps serving")
        {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(refused, "{}", d.log());
    assert!(swaks(d.addr, "c@dest.test", &[]).ok);
    let last = moved.wait_for(2);
    assert_eq!(last.len(), 2, "still the last good policy");
    assert!(
        last.iter()
            .all(|m| header(m, "X-Helo-Args") == Some("after.example.test")),
        "still the last good policy"
    );
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn sigterm_lets_the_transaction_in_flight_finish() {
    let sink = SmtpSink::start();
    let d = Egressd::start(&format!(
        "kumo.on('init', function() kumo.start_esmtp_listener {{ listen = '{{listen}}' }} end)
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{}' }} }} }} }}
         end)",
        sink.addr.port()
    ));
    let (mut s, mut r) = session(d.addr);
    assert!(say(&mut s, &mut r, "EHLO client.test\r\n").starts_with("250"));
    assert!(say(&mut s, &mut r, "MAIL FROM:<a@client.test>\r\n").starts_with("250"));
    assert!(say(&mut s, &mut r, "RCPT TO:<b@dest.test>\r\n").starts_with("250"));
    // The transaction is open: now the signal.
    assert!(Command::new("kill")
        .args(["-TERM", &d.pid().to_string()])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(say(&mut s, &mut r, "DATA\r\n").starts_with("354"));
    let done = say(&mut s, &mut r, "Subject: in flight\r\n\r\nhello\r\n.\r\n");
    assert!(
        done.starts_with("250"),
        "the transaction in flight completed: {done}"
    );
    assert_eq!(sink.wait_for(1).len(), 1);
    // Between transactions, the draining server says goodbye.
    let next = say(&mut s, &mut r, "MAIL FROM:<a@client.test>\r\n");
    assert!(next.starts_with("421 4.3.2"), "{next}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        TcpStream::connect(d.addr).is_err(),
        "no new connections after shutdown"
    );
}

#[test]
fn the_example_policy_resolves() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/policy.lua");
    let (ok, out, err) = egressd(&[
        "check",
        "--policy",
        example,
        "--source",
        "direct-1",
        "--source",
        "via-haproxy",
        "--source",
        "via-socks",
        "--pool",
        "transactional",
        "--pool",
        "bulk",
    ]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        json["sources"]["via-haproxy"]["ha_proxy_source_address"],
        "127.0.0.5"
    );
    assert_eq!(json["pools"]["transactional"]["entries"][0]["weight"], 3);
    assert_eq!(
        json["init"]["esmtp_listeners"][0]["listen"],
        "127.0.0.1:2525"
    );
}

#[test]
fn silent_clients_are_dropped_after_client_timeout() {
    let d = Egressd::start(
        "kumo.on('init', function()
           kumo.start_esmtp_listener { listen = '{listen}', client_timeout = '1s', banner = 'ready for egress' }
         end)",
    );
    let s = TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let banner = read_reply(&mut r);
    assert!(
        banner.starts_with("220 ") && banner.trim_end().ends_with("ready for egress"),
        "{banner}"
    );
    let started = std::time::Instant::now();
    let bye = read_reply(&mut r);
    assert!(bye.starts_with("421 4.4.2"), "{bye}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after about client_timeout"
    );
}

#[test]
fn the_embedded_default_listens_on_loopback_and_relays_for_loopback_only() {
    let (ok, out, err) = egressd(&["check", "--pool", "unspecified", "--source", "unspecified"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let listener = &json["init"]["esmtp_listeners"][0];
    assert_eq!(listener["listen"], "127.0.0.1:2525");
    assert_eq!(
        listener["relay_hosts"],
        serde_json::json!(["127.0.0.0/8", "::1/128"])
    );
    // The senders the relay is for are not flood-limited: check shows who is exempt.
    assert_eq!(
        listener["client_limit_exceptions"],
        serde_json::json!(["127.0.0.0/8", "::1/128"])
    );
    assert_eq!(
        json["pools"]["unspecified"]["entries"][0]["name"],
        "unspecified"
    );
    assert!(
        json["sources"]["unspecified"]
            .get("source_address")
            .is_none(),
        "kernel-chosen address"
    );
}

/// `--log-format json`: the transaction line is one JSON record with its fields.
#[test]
fn json_log_has_one_record_per_transaction() {
    let sink = SmtpSink::start();
    let policy = egress_e2e::relay_policy("", &egress_e2e::mx_entry(sink.addr), "");
    let d = Egressd::start_with_args(&policy, &["--log-format", "json"]);
    assert!(swaks(d.addr, "rcpt@dest.test", &[]).ok);
    sink.wait_for(1);
    let records: Vec<serde_json::Value> = d
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|r: &serde_json::Value| r["target"] == "transaction")
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let fields = &records[0]["fields"];
    assert_eq!(fields["source"], "ip-2");
    assert_eq!(fields["pool"], "main");
    assert_eq!(fields["egress"], "127.0.0.2");
    assert_eq!(fields["sender"], "<sender@client.test>");
    assert!(
        fields["outcome"]
            .as_str()
            .unwrap_or_default()
            .starts_with("250"),
        "{fields}"
    );
}

/// `kumo.configure_redis_throttles` takes every parameter of KumoMTA's
/// `redis.open`; `egressd check` prints them, never a password (the field's or
/// one in a URL).
#[test]
fn check_takes_every_redis_open_parameter_and_prints_no_password() {
    let (_dir, path) = write_policy(
        "kumo.on('init', function()
           kumo.configure_redis_throttles {
             node = { 'redis://ops:url-secret@127.0.0.1:7001/', 'redis://127.0.0.1:7002/',
                      'redis://127.0.0.1:7003/' },
             cluster = true, pool_size = 20, username = 'egress', password = 'field-secret',
             connect_timeout = '5 seconds', wait_timeout = '10s', response_timeout = '2s',
             recycle_timeout = '1s', read_from_replicas = true,
           }
         end)",
    );
    let (ok, out, err) = egressd(&["check", "--policy", &path]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let redis = &json["init"]["redis_throttles"];
    assert_eq!(
        redis["node"][0], "redis://ops:(redacted)@127.0.0.1:7001/",
        "{out}"
    );
    assert_eq!(redis["node"][2], "redis://127.0.0.1:7003/");
    assert_eq!(redis["cluster"], true);
    assert_eq!(redis["pool_size"], 20);
    assert_eq!(redis["username"], "egress");
    assert_eq!(redis["password"], "(redacted)");
    assert_eq!(redis["connect_timeout"], "5s");
    assert_eq!(redis["wait_timeout"], "10s");
    assert_eq!(redis["response_timeout"], "2s");
    assert_eq!(redis["recycle_timeout"], "1s");
    assert_eq!(redis["read_from_replicas"], true);
    assert!(
        !out.contains("secret") && !err.contains("secret"),
        "{out}{err}"
    );

    // A misspelt parameter, and a list of nodes with cluster = false, are refused
    // naming what to do.
    let (_dir, path) = write_policy(
        "kumo.on('init', function()
           kumo.configure_redis_throttles { node = 'redis://127.0.0.1/', pool_sise = 3 }
         end)",
    );
    let (ok, _, err) = egressd(&["check", "--policy", &path]);
    assert!(
        !ok && err.contains("pool_sise") && err.contains("pool_size"),
        "{err}"
    );
    let (_dir, path) = write_policy(
        "kumo.on('init', function()
           kumo.configure_redis_throttles { node = { 'redis://a/', 'redis://b/' }, cluster = false }
         end)",
    );
    let (ok, _, err) = egressd(&["check", "--policy", &path]);
    assert!(!ok && err.contains("cluster = false"), "{err}");
}
