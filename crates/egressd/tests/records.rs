//! Delivery records (KumoMTA's log records) as egressd writes them: every
//! outcome — delivered, deferred, bounced, refused by us, spooled and delivered
//! later, expired, bounced by an operator — is a record in the local log's zstd
//! segments, read back with `zstdcat`, with the fields KumoMTA's consumers read.

mod common;

use common::Egressd;
use egress_e2e::{
    free_port, http_request, mx_entry, postfix_tls_main_cf, require, swaks, wait_until, HaProxy,
    MicroSocks, Postfix, ScriptedDestination, SmtpSink, TestCa,
};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Every record in every segment under `dir` (recursively), via `zstdcat`.
fn records(dir: &Path) -> Vec<Value> {
    lines(dir)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Every line of every segment under `dir`, read with `zstdcat`.
fn lines(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for file in segments(dir) {
        let text = Command::new(require("zstdcat"))
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            text.status.success(),
            "zstdcat {}: {}",
            file.display(),
            String::from_utf8_lossy(&text.stderr)
        );
        out.extend(
            String::from_utf8(text.stdout)
                .unwrap()
                .lines()
                .map(str::to_owned),
        );
    }
    out
}

/// The segment files under `dir` (or `dir` itself, a file), sorted by name (time).
fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    if dir.is_file() {
        return vec![dir.to_owned()];
    }
    let mut files: Vec<_> = walk(dir);
    files.sort();
    files
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn of_type<'a>(all: &'a [Value], kind: &str, recipient: &str) -> Vec<&'a Value> {
    all.iter()
        .filter(|r| r["type"] == kind)
        .filter(|r| match &r["recipient"] {
            Value::String(s) => s == recipient,
            Value::Array(a) => a.iter().any(|v| v == recipient),
            _ => false,
        })
        .collect()
}

fn one<'a>(all: &'a [Value], kind: &str, recipient: &str) -> &'a Value {
    let found = of_type(all, kind, recipient);
    assert_eq!(
        found.len(),
        1,
        "one {kind} record for {recipient}; all records:\n{}",
        all.iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    found[0]
}

fn sigterm(d: &mut Egressd) {
    assert!(Command::new("kill")
        .args(["-TERM", &d.pid().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(d.wait_exit(Duration::from_secs(40)), "{}", d.log());
}

/// The fields every record carries, with KumoMTA's shapes.
fn check_common(r: &Value) {
    egress_record::conforms(r).unwrap_or_else(|e| panic!("{e}: {r}"));
    for key in [
        "type",
        "id",
        "sender",
        "recipient",
        "queue",
        "site",
        "size",
        "response",
        "peer_address",
        "timestamp",
        "event_time",
        "created",
        "created_time",
        "num_attempts",
        "bounce_classification",
        "egress_pool",
        "egress_source",
        "source_address",
        "feedback_report",
        "meta",
        "headers",
        "delivery_protocol",
        "reception_protocol",
        "nodeid",
    ] {
        assert!(r.get(key).is_some(), "{key} missing: {r}");
    }
    assert!(r["timestamp"].is_u64() && r["created"].is_u64(), "{r}");
    assert!(r["event_time"].as_str().unwrap().ends_with('Z'), "{r}");
    assert_eq!(r["bounce_classification"], "Uncategorized");
    assert_eq!(r["nodeid"].as_str().unwrap().len(), 36, "{r}");
    assert!(r["response"]["code"].is_u64(), "{r}");
}

#[test]
fn every_outcome_is_a_record_in_the_local_log() {
    let ok = SmtpSink::start();
    let bounce = ScriptedDestination::start(false);
    let defer = ScriptedDestination::refusing_mail_from(
        &["127.0.0.2".parse::<IpAddr>().unwrap()],
        "451 4.7.1 come back later",
    );
    let via_socks = SmtpSink::start();
    let via_haproxy = SmtpSink::start();
    let socks = MicroSocks::start(Some("127.0.0.1".parse().unwrap()), None);
    let haproxy = HaProxy::start();
    let ca = TestCa::new();
    let issued = ca.issue("mx.tls.test", Some("127.0.0.1".parse().unwrap()));
    let tls_mx = Postfix::start_with(ok.addr, &postfix_tls_main_cf(&issued));
    let down = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let closed = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let spool = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let policy = format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}', relay_hosts = {{ '127.0.0.1' }} }}
           kumo.start_http_listener {{ listen = '{{http}}' }}
           kumo.define_spool {{ name = 'data', path = '{spool}', max_spool_bytes = 1048576 }}
           kumo.configure_local_logs {{ log_dir = '{logs}', headers = {{ 'Subject', 'X-*' }},
             meta = {{ 'received_from', 'reception_protocol' }} }}
         end)
         local MX = {{ ['ok.test'] = '{ok}', ['bounce.test'] = '{bounce}', ['defer.test'] = '{defer}',
           ['socks.test'] = '{vs}', ['haproxy.test'] = '{vh}', ['down.test'] = '{down}',
           ['expire.test'] = '{closed}', ['held.test'] = '{closed}', ['client.test'] = '{ok}', ['tls.test'] = '{tls}' }}
         local POOL = {{ ['socks.test'] = 'socks', ['haproxy.test'] = 'haproxy' }}
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = POOL[domain] or 'main',
             retry_interval = '1s', max_retry_interval = '1s',
             max_age = domain == 'expire.test' and '3s' or '1h',
             protocol = {{ smtp = {{ mx_list = {{ MX[domain] }} }} }} }}
         end)
         kumo.on('get_egress_pool', function(name)
           local source = ({{ main = 'ip-2', socks = 'socks', haproxy = 'haproxy' }})[name]
           return kumo.make_egress_pool {{ name = name, entries = {{ {{ name = source }} }} }}
         end)
         kumo.on('get_egress_source', function(name)
           if name == 'socks' then
             return kumo.make_egress_source {{ name = name, socks5_proxy_server = '{socks}' }}
           elseif name == 'haproxy' then
             return kumo.make_egress_source {{ name = name, ha_proxy_server = '{haproxy}', ha_proxy_source_address = '127.0.0.5' }}
           end
           return kumo.make_egress_source {{ name = name, source_address = '127.0.0.2' }}
         end)
         kumo.on('get_egress_path_config', function(domain, source, site)
           return kumo.make_egress_path {{ enable_tls = domain == 'tls.test' and 'OpportunisticInsecure' or 'Disabled' }}
         end)",
        spool = spool.path().display(),
        logs = logs.path().display(),
        ok = mx_entry(ok.addr),
        bounce = mx_entry(bounce.addr),
        defer = mx_entry(defer.addr),
        vs = mx_entry(via_socks.addr),
        vh = mx_entry(via_haproxy.addr),
        down = mx_entry(down),
        closed = mx_entry(closed),
        tls = mx_entry(tls_mx.addr),
        socks = socks.addr,
        haproxy = haproxy.addr,
    );
    let state_dir = state.path().display().to_string();
    let mut d = Egressd::start_with_args(&policy, &["--state-dir", &state_dir]);
    let headers = [
        "--header",
        "Subject: quarterly report",
        "--header",
        "X-Campaign: q4",
    ];
    assert!(swaks(d.addr, "a@ok.test", &headers).ok);
    assert!(!swaks(d.addr, "refused@bounce.test", &[]).ok);
    assert!(!swaks(d.addr, "x@defer.test", &[]).ok);
    let denied = swaks(d.addr, "a@ok.test", &["--local-interface", "127.0.0.5"]);
    assert!(denied.has_reply("550 5.7.1"), "{}", denied.transcript);
    assert!(swaks(d.addr, "s@socks.test", &[]).ok);
    assert!(swaks(d.addr, "h@haproxy.test", &[]).ok);
    assert!(swaks(d.addr, "t@tls.test", &[]).ok);
    // Spooled: two domains, one down; then up.
    assert!(swaks(d.addr, "u@ok.test,v@down.test", &[]).ok);
    // Spooled: one domain expires (max_age 3s), one held for the operator.
    assert!(swaks(d.addr, "e@ok.test,e@expire.test", &[]).ok);
    assert!(swaks(d.addr, "g@ok.test,g@held.test", &[]).ok);
    std::thread::sleep(Duration::from_millis(1500));
    let back = SmtpSink::start_on(down, &[]);
    assert_eq!(back.wait_for(1).len(), 1, "{}", d.log());
    let answer = http_request(
        None,
        d.http.unwrap(),
        "POST",
        "/api/admin/bounce/v1",
        &["Content-Type: application/json"],
        r#"{"domain": "held.test", "reason": "list cleaned"}"#,
    )
    .unwrap();
    assert!(
        answer.body.contains("\"total_bounced\": 1"),
        "{}",
        answer.body
    );
    // Both give-ups send the sender a DSN (client.test is routed to the ok sink).
    let dsns = |m: &String| m.contains("Undelivered Mail Returned to Sender");
    assert!(
        wait_until(Duration::from_secs(20), || ok
            .messages()
            .iter()
            .filter(|m| dsns(m))
            .count()
            == 2),
        "{}",
        d.log()
    );
    let metrics = egress_e2e::http_get(d.http.unwrap(), "/metrics").body;
    let written = metrics
        .lines()
        .find(|l| l.starts_with("egressd_log_records_total{") && l.contains("kind=\"local\""))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(!written.ends_with(" 0"), "{written}");
    assert!(metrics.contains("egressd_log_backlog{"), "{metrics}");
    sigterm(&mut d);

    let all = records(logs.path());
    for r in &all {
        check_common(r);
    }

    // Delivered cut-through: Reception then Delivery, headers captured.
    let reception = one(&all, "Reception", "a@ok.test");
    assert_eq!(
        reception["peer_address"]["addr"]
            .as_str()
            .unwrap()
            .split(':')
            .next(),
        Some("127.0.0.1")
    );
    assert_eq!(reception["reception_protocol"], "ESMTP");
    assert_eq!(reception["headers"]["Subject"], "quarterly report");
    assert_eq!(reception["headers"]["X-Campaign"], "q4");
    assert_eq!(reception["meta"]["reception_protocol"], "ESMTP");
    assert!(reception["session_id"].is_string());
    let delivery = one(&all, "Delivery", "a@ok.test");
    assert_eq!(delivery["id"], reception["id"]);
    assert_eq!(delivery["egress_pool"], "main");
    assert_eq!(delivery["egress_source"], "ip-2");
    assert_eq!(delivery["response"]["code"], 250);
    assert_eq!(delivery["response"]["command"], ".");
    assert_eq!(delivery["queue"], "ok.test");
    assert_eq!(delivery["delivery_protocol"], "ESMTP");
    assert_eq!(delivery["peer_address"]["addr"], "127.0.0.1");
    assert!(
        delivery["source_address"]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.2:"),
        "{delivery}"
    );
    assert!(delivery["source_address"].get("protocol").is_none());
    assert!(
        delivery["site"].as_str().unwrap().contains("127.0.0.1"),
        "{delivery}"
    );
    assert!(delivery["size"].as_u64().unwrap() > 0);
    assert_eq!(delivery["headers"]["Subject"], "quarterly report");

    // The destination's 5xx at RCPT: a Bounce; its 4xx: a TransientFailure.
    let b = one(&all, "Bounce", "refused@bounce.test");
    assert_eq!(b["response"]["code"], 550);
    assert_eq!(b["response"]["enhanced_code"]["class"], 5);
    assert_eq!(b["response"]["enhanced_code"]["subject"], 1);
    assert_eq!(b["response"]["command"], "RCPT TO");
    assert_eq!(b["egress_source"], "ip-2");
    let t = one(&all, "TransientFailure", "x@defer.test");
    assert_eq!(t["response"]["code"], 451);
    assert!(t["response"]["content"]
        .as_str()
        .unwrap()
        .contains("come back later"));

    // Refused by egressd itself: a Rejection naming the client.
    let rejections: Vec<_> = all
        .iter()
        .filter(|r| r["type"] == "Rejection" && r["response"]["code"] == 550)
        .collect();
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert!(rejections[0]["peer_address"]["addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.5:"));
    assert_eq!(rejections[0]["response"]["enhanced_code"]["subject"], 7);

    // Through proxies: the address the destination saw and the proxy.
    let s = one(&all, "Delivery", "s@socks.test");
    assert_eq!(s["source_address"]["protocol"], "socks5");
    assert_eq!(s["source_address"]["server"], socks.addr.to_string());
    assert_eq!(s["egress_source"], "socks");
    let h = one(&all, "Delivery", "h@haproxy.test");
    assert_eq!(h["source_address"]["protocol"], "haproxy");
    assert_eq!(h["source_address"]["address"], "127.0.0.5:0");
    assert_eq!(h["source_address"]["server"], haproxy.addr.to_string());

    // Over STARTTLS: the TLS fields.
    let t = one(&all, "Delivery", "t@tls.test");
    assert!(
        t["tls_protocol_version"]
            .as_str()
            .unwrap()
            .starts_with("TLSv1."),
        "{t}"
    );
    assert!(
        t["tls_cipher"].as_str().unwrap().contains("AES")
            || t["tls_cipher"].as_str().unwrap().contains("CHACHA"),
        "{t}"
    );
    assert!(
        t["tls_peer_subject_name"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "CN=mx.tls.test"),
        "{t}"
    );
    assert!(delivery.get("tls_cipher").is_none(), "in clear: {delivery}");

    // Spooled: one Reception under the spool id; the down domain's attempt a
    // TransientFailure, then its Delivery from the spool.
    let spooled = one(&all, "Reception", "v@down.test");
    let spool_id = spooled["id"].as_str().unwrap();
    assert!(one(&all, "Reception", "u@ok.test")["id"] == spool_id);
    let first = of_type(&all, "TransientFailure", "v@down.test");
    assert!(!first.is_empty(), "{all:?}");
    assert_eq!(first[0]["id"], spool_id);
    let later = one(&all, "Delivery", "v@down.test");
    assert_eq!(later["id"], spool_id);
    assert!(later["num_attempts"].as_u64().unwrap() >= 2, "{later}");
    assert!(later["size"].as_u64().unwrap() > 0, "{later}");
    assert_eq!(one(&all, "Delivery", "u@ok.test")["id"], spool_id);

    // Given up: Expiration (max_age), AdminBounce (the operator).
    let e = one(&all, "Expiration", "e@expire.test");
    assert_eq!(e["response"]["enhanced_code"]["detail"], 7);
    let a = one(&all, "AdminBounce", "g@held.test");
    assert_eq!(a["response"]["code"], 551);
    assert!(a["response"]["content"]
        .as_str()
        .unwrap()
        .contains("list cleaned"));

    // The node id is the one kept on disk.
    let nodeid = std::fs::read_to_string(state.path().join("nodeid")).unwrap();
    assert!(all.iter().all(|r| r["nodeid"] == nodeid.trim()));
}

fn hup(d: &Egressd) {
    assert!(Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap()
        .success());
}

fn read_only(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.permissions().readonly())
        .unwrap_or(false)
}

#[test]
fn per_record_templates_and_suffixes_and_segments_complete_at_roll_reload_and_stop() {
    let ok = SmtpSink::start();
    let logs = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let policy = format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}' }}
           kumo.configure_local_logs {{
             log_dir = '{logs}',
             max_segment_duration = '2s',
             per_record = {{
               Reception = {{ suffix = '_recv' }},
               Delivery = {{
                 suffix = '.txt',
                 segment_header = 'type id recipient code source\\n',
                 template = [[{{{{ type }}}} {{{{ id }}}} {{{{ recipient }}}} {{{{ response.code }}}} {{{{ log_record.egress_source }}}}]],
               }},
               Any = {{ enable = false }},
             }},
           }}
         end)
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main', protocol = {{ smtp = {{ mx_list = {{ '{mx}' }} }} }} }}
         end)
         {pool}",
        logs = logs.path().display(),
        mx = mx_entry(ok.addr),
        pool = egress_e2e::IP2_POOL,
    );
    let state_dir = state.path().display().to_string();
    let mut d = Egressd::start_with_args(&policy, &["--state-dir", &state_dir]);
    let send = |n: usize| {
        let s = swaks(d.addr, &format!("r{n}@ok.test"), &[]);
        assert!(s.ok, "{}", s.transcript);
    };

    send(1);
    // max_segment_duration: the first segments are finished within 2 s.
    assert!(
        wait_until(Duration::from_secs(6), || {
            let files = segments(logs.path());
            files.len() == 2 && files.iter().all(|f| read_only(f))
        }),
        "{:?}",
        segments(logs.path())
    );
    send(2);
    // A reload finishes what is open at once (well before the 2 s roll).
    std::thread::sleep(Duration::from_millis(200));
    hup(&d);
    assert!(
        wait_until(Duration::from_millis(1500), || {
            let files = segments(logs.path());
            files.len() == 4 && files.iter().all(|f| read_only(f))
        }),
        "{:?}\n{}",
        segments(logs.path()),
        d.log()
    );
    send(3);
    sigterm(&mut d);

    let files = segments(logs.path());
    assert_eq!(files.len(), 6, "{files:?}");
    assert!(files.iter().all(|f| read_only(f)), "complete after SIGTERM");
    let (recv, txt): (Vec<_>, Vec<_>) = files
        .iter()
        .partition(|f| f.to_string_lossy().ends_with("_recv"));
    assert_eq!((recv.len(), txt.len()), (3, 3));
    for f in &txt {
        assert!(f.to_string_lossy().ends_with(".txt"), "{f:?}");
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        // KumoMTA's names: YYYYMMDD-HHMMSS.fraction, then the suffix.
        assert_eq!(name.as_bytes()[8], b'-', "{name}");
        let lines = lines(f);
        assert_eq!(lines[0], "type id recipient code source", "{lines:?}");
        assert_eq!(lines.len(), 2, "{lines:?}");
        let parts: Vec<&str> = lines[1].split(' ').collect();
        assert_eq!(parts[0], "Delivery");
        assert!(parts[2].starts_with('r') && parts[2].ends_with("@ok.test"));
        assert_eq!((parts[3], parts[4]), ("250", "ip-2"));
    }
    for f in &recv {
        let all = records(f);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0]["type"], "Reception");
    }
}

#[test]
fn filter_event_decides_per_message_and_a_log_short_of_space_refuses_mail() {
    let ok = SmtpSink::start();
    let (all_logs, r1_logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let state = tempfile::tempdir().unwrap();
    let policy = format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}' }}
           kumo.configure_local_logs {{ log_dir = '{all}' }}
           kumo.configure_local_logs {{ log_dir = '{r1}', filter_event = 'only_r1' }}
         end)
         kumo.on('only_r1', function(msg)
           return msg:recipient() == 'r1@ok.test' and msg:get_meta('reception_protocol') == 'ESMTP'
         end)
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main', protocol = {{ smtp = {{ mx_list = {{ '{mx}' }} }} }} }}
         end)
         {pool}",
        all = all_logs.path().display(),
        r1 = r1_logs.path().display(),
        mx = mx_entry(ok.addr),
        pool = egress_e2e::IP2_POOL,
    );
    let state_dir = state.path().display().to_string();
    let mut d = Egressd::start_with_args(&policy, &["--state-dir", &state_dir]);
    // `egressd check` prints the logging declarations.
    let check = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(["check", "--policy"])
        .arg(d.policy_path())
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&check.stdout).unwrap();
    let declared = &shown["init"]["local_logs"];
    assert_eq!(declared[1]["filter_event"], "only_r1", "{shown}");
    assert_eq!(
        declared[0]["log_dir"],
        all_logs.path().display().to_string()
    );
    assert_eq!(declared[0]["min_free_space"], "10%", "{shown}");
    for n in 1..=3 {
        assert!(swaks(d.addr, &format!("r{n}@ok.test"), &[]).ok);
    }
    sigterm(&mut d);
    assert_eq!(records(all_logs.path()).len(), 6);
    let only = records(r1_logs.path());
    assert_eq!(only.len(), 2, "{only:?}");
    assert!(only.iter().all(|r| r["recipient"] == "r1@ok.test"));

    // A log whose file system is "short" (min_free_space 100%): MAIL waits.
    let full = tempfile::tempdir().unwrap();
    let policy = format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}' }}
           kumo.configure_local_logs {{ log_dir = '{full}', min_free_space = '100%' }}
         end)",
        full = full.path().display(),
    );
    let d = Egressd::start_with_args(&policy, &["--state-dir", &state_dir]);
    let s = swaks(d.addr, "r1@ok.test", &[]);
    let refused = s.first_reply("451");
    assert!(
        refused.starts_with("451 4.3.0") && refused.contains("min_free_space"),
        "{}",
        s.transcript
    );
}
