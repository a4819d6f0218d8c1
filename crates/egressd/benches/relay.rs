//! Relay throughput: messages per second from Postfix's `smtp-source` through egressd
//! to `smtp-sink`, beside `smtp-source` straight to `smtp-sink`, in one run, at 1 and
//! 20 concurrent sessions. Run: `cargo bench -p egressd --bench relay` (or
//! `cargo xtask bench relay`).

use egress_e2e::{free_port, require, wait_listening, Peer, SmtpSink};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    let sink = SmtpSink::start_with("127.0.0.1".parse().unwrap(), &[]);
    let dir = tempfile::tempdir().unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let policy = dir.path().join("policy.lua");
    std::fs::write(
        &policy,
        format!(
            "kumo.on('init', function() kumo.start_esmtp_listener {{ listen = '{listen}', max_connection_rate_per_client = 'unlimited' }} end)
             kumo.on('get_queue_config', function(domain)
               return kumo.make_queue_config {{ egress_pool = 'bench', protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{}' }} }} }} }}
             end)
             kumo.on('get_egress_pool', function(name)
               return kumo.make_egress_pool {{ name = name, entries = {{ {{ name = 'ip-2' }}, {{ name = 'ip-3' }} }} }}
             end)
             kumo.on('get_egress_source', function(name)
               local addrs = {{ ['ip-2'] = '127.0.0.2', ['ip-3'] = '127.0.0.3' }}
               return kumo.make_egress_source {{ name = name, source_address = addrs[name] }}
             end)",
            sink.addr.port()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_egressd"));
    cmd.arg("--policy").arg(&policy).env("EGRESSD_LOG", "warn");
    let mut egressd = Peer::spawn("egressd", &mut cmd);
    wait_listening("egressd", listen, &mut egressd);

    println!("relay: smtp-source -> [egressd ->] smtp-sink, loopback, same run");
    for (sessions, messages) in [(1, 500), (20, 4000)] {
        // Warm both paths, then alternate three rounds and keep each side's best,
        // so drift on a shared machine (TIME_WAIT build-up, other load) falls on both.
        run(sink.addr, sessions, sessions * 5);
        run(listen, sessions, sessions * 5);
        let (mut direct, mut relayed) = (Duration::MAX, Duration::MAX);
        for _ in 0..3 {
            direct = direct.min(run(sink.addr, sessions, messages));
            relayed = relayed.min(run(listen, sessions, messages));
        }
        let (direct, relayed) = (rate(direct, messages), rate(relayed, messages));
        println!(
            "  {sessions:>2} session(s), {messages} messages: direct {direct:>7.0} msg/s   via egressd {relayed:>7.0} msg/s   ratio {:.2}",
            relayed / direct
        );
    }
}

fn rate(took: Duration, messages: usize) -> f64 {
    messages as f64 / took.as_secs_f64()
}

fn run(server: SocketAddr, sessions: usize, messages: usize) -> Duration {
    let started = Instant::now();
    let status = Command::new(require("smtp-source"))
        .args([
            "-s",
            &sessions.to_string(),
            "-m",
            &messages.to_string(),
            "-l",
            "2048",
        ])
        .args(["-f", "sender@bench.test", "-t", "rcpt@dest.test"])
        .arg(server.to_string())
        .status()
        .expect("run smtp-source");
    assert!(
        status.success(),
        "smtp-source against {server} failed: {status}"
    );
    started.elapsed()
}
