//! Log hooks (`policy-extras.log_hooks:new_json`): records POSTed to a webhook —
//! a Python `http.server` started here — retried while it fails, batched, kept
//! on disk across `kill -9`, and each taken exactly once.

mod common;

use common::Egressd;
use egress_e2e::{free_port, mx_entry, require, swaks, wait_until, Peer, SmtpSink};
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A webhook endpoint: answers 500 to its first `failures` POSTs, then 200 and
/// appends each body it took, one per line, to `bodies`.
struct Endpoint {
    addr: SocketAddr,
    bodies: PathBuf,
    _peer: Peer,
}

const ENDPOINT: &str = r#"
import http.server, sys
port, failures, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
seen = 0
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global seen
        body = self.rfile.read(int(self.headers['Content-Length']))
        seen += 1
        if seen <= failures or self.headers['Content-Type'] != 'application/json':
            self.send_response(500)
            self.send_header('Content-Length', '4')
            self.end_headers()
            self.wfile.write(b'fail')
            return
        with open(out, 'ab') as f:
            f.write(body.replace(b'\n', b' ') + b'\n')
        self.send_response(200)
        self.send_header('Content-Length', '2')
        self.end_headers()
        self.wfile.write(b'ok')
    def log_message(self, *args):
        pass
http.server.HTTPServer(('127.0.0.1', port), Hook).serve_forever()
"#;

impl Endpoint {
    fn start(port: u16, failures: usize, bodies: &Path) -> Endpoint {
        let mut cmd = Command::new(require("python3"));
        cmd.args(["-c", ENDPOINT])
            .arg(port.to_string())
            .arg(failures.to_string())
            .arg(bodies);
        let mut peer = Peer::spawn("python3 http.server", &mut cmd);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        egress_e2e::wait_listening("the webhook endpoint", addr, &mut peer);
        Endpoint {
            addr,
            bodies: bodies.to_owned(),
            _peer: peer,
        }
    }

    /// Each POST the endpoint took: its records.
    fn posts(&self) -> Vec<Vec<Value>> {
        std::fs::read_to_string(&self.bodies)
            .unwrap_or_default()
            .lines()
            .map(|l| match serde_json::from_str(l).unwrap() {
                Value::Array(batch) => batch,
                one => vec![one],
            })
            .collect()
    }

    fn records(&self) -> Vec<Value> {
        self.posts().into_iter().flatten().collect()
    }
}

/// How many times each (type, id, recipient) was taken.
fn tally(records: &[Value]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in records {
        let key = format!("{} {} {}", r["type"], r["id"], r["recipient"]);
        *seen.entry(key).or_insert(0) += 1;
    }
    seen
}

fn policy(sink: SocketAddr, url: &str, batch_size: usize) -> String {
    format!(
        "local log_hooks = require 'policy-extras.log_hooks'
         log_hooks:new_json {{
           name = 'webhook',
           url = '{url}',
           batch_size = {batch_size},
           -- true leaves a record out: r0's Reception is never sent.
           filter = function(msg, hook_name)
             local record = msg:get_meta 'log_record'
             return hook_name == 'webhook' and record.type == 'Reception' and msg:recipient() == 'r0@ok.test'
           end,
           log_parameters = {{ headers = {{ 'Subject' }} }},
           queue_config = {{ retry_interval = '200ms', max_retry_interval = '1s' }},
         }}
         kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}' }}
         end)
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main', protocol = {{ smtp = {{ mx_list = {{ '{mx}' }} }} }} }}
         end)
         {pool}",
        mx = mx_entry(sink),
        pool = egress_e2e::IP2_POOL,
    )
}

#[test]
fn a_failing_webhook_gets_every_record_once_batched_and_across_kill_9() {
    let sink = SmtpSink::start();
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let bodies = dir.path().join("bodies");
    let endpoint = Endpoint::start(port, 3, &bodies);
    let url = format!("http://{}/log", endpoint.addr);
    let policy = policy(sink.addr, &url, 5);
    let state_dir = state.path().display().to_string();
    let args = ["--state-dir", state_dir.as_str()];
    let mut d = Egressd::start_with_args(&policy, &args);
    for n in 0..4 {
        let s = swaks(
            d.addr,
            &format!("r{n}@ok.test"),
            &["--header", "Subject: hooked"],
        );
        assert!(s.ok, "{}", s.transcript);
    }
    // 4 messages: a Reception and a Delivery each (but r0's Reception, which
    // the filter leaves out), after three refused POSTs.
    assert!(
        wait_until(Duration::from_secs(20), || endpoint.records().len() >= 7),
        "{:?}\n{}",
        endpoint.posts(),
        d.log()
    );
    assert!(
        d.log().contains("webhook POST failed: HTTP 500"),
        "{}",
        d.log()
    );
    let first = endpoint.records();
    assert!(tally(&first).values().all(|n| *n == 1), "{first:?}");
    assert_eq!(first.len(), 7);
    assert!(!first
        .iter()
        .any(|r| r["type"] == "Reception" && r["recipient"] == "r0@ok.test"));
    assert!(first.iter().all(|r| r["headers"]["Subject"] == "hooked"));
    let posts = endpoint.posts();
    assert!(posts.iter().all(|p| p.len() <= 5), "batch_size: {posts:?}");
    assert!(posts.iter().any(|p| p.len() > 1), "batched: {posts:?}");

    // The endpoint goes away; records wait on disk; egressd is killed.
    drop(endpoint);
    for n in 4..7 {
        assert!(swaks(d.addr, &format!("r{n}@ok.test"), &[]).ok);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(Command::new("kill")
        .args(["-KILL", &d.pid().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(d.wait_exit(Duration::from_secs(5)));

    // Back up: the backlog arrives, nothing twice.
    let endpoint = Endpoint::start(port, 0, &bodies);
    let second = Egressd::start_with_args(&policy, &args);
    assert!(
        wait_until(Duration::from_secs(20), || endpoint.records().len() >= 13),
        "{:?}\n{}",
        endpoint.posts(),
        second.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    let all = endpoint.records();
    assert_eq!(all.len(), 13, "{all:?}");
    let seen = tally(&all);
    assert_eq!(seen.len(), 13);
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    for n in 0..7 {
        let to = format!("r{n}@ok.test");
        for kind in ["Reception", "Delivery"] {
            if n == 0 && kind == "Reception" {
                continue;
            }
            assert!(
                all.iter()
                    .any(|r| r["type"] == kind && r["recipient"] == to),
                "{kind} {to}: {all:?}"
            );
        }
    }
}

#[test]
fn a_hook_without_a_webhook_or_with_a_constructor_is_refused_at_load() {
    let check = |text: &str| {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.lua");
        std::fs::write(&file, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
            .args(["serve", "--policy"])
            .arg(&file)
            .args(["--state-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let plain = check(
        "kumo.on('init', function()
           kumo.start_esmtp_listener { listen = '127.0.0.1:0' }
           kumo.configure_log_hook { name = 'mine' }
         end)",
    );
    assert!(
        plain.contains("log hook \"mine\"") && plain.contains("new_json"),
        "{plain}"
    );
    let custom = check(
        "local log_hooks = require 'policy-extras.log_hooks'
         log_hooks:new { name = 'x', constructor = function() end }",
    );
    assert!(
        custom.contains("custom_lua") && custom.contains("new_json"),
        "{custom}"
    );
    let typo = check(
        "local log_hooks = require 'policy-extras.log_hooks'
         log_hooks:new_json { name = 'x', url = 'http://127.0.0.1:9/', batchsize = 10 }",
    );
    assert!(
        typo.contains("batchsize") && typo.contains("batch_size"),
        "{typo}"
    );
}
