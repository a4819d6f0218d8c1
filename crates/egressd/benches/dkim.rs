//! DKIM signing at the relay: messages per second signed with RSA-2048 and with
//! Ed25519 (20 sessions of smtp-source through egressd into smtp-sink), against
//! the sign rate `openssl speed` measures on this machine in the same run (per
//! core, times the cores the policy's handlers run on: the limit); and egressd's
//! CPU per message with `smtp_server_message_received` defined but not signing,
//! against the same relay without it. Run: `cargo bench -p egressd --bench dkim`
//! (`cargo xtask bench dkim`).

use egress_e2e::{free_port, require, wait_listening, Peer, SmtpSink};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

const ROUNDS: usize = 3;

fn cpu_of(pid: u32) -> f64 {
    let (user, kernel) = egress_e2e::cpu_seconds(pid);
    user + kernel
}

/// smtp-source: `messages` of 2 KB over 20 reused sessions; its wall time.
fn source(server: SocketAddr, messages: usize) -> Duration {
    let started = Instant::now();
    let status = Command::new(require("smtp-source"))
        .args(["-s", "20", "-m", &messages.to_string(), "-l", "2048"])
        .args(["-f", "news@example.com", "-t", "someone@example.net"])
        .arg(format!("{}:{}", server.ip(), server.port()))
        .status()
        .expect("smtp-source");
    assert!(status.success());
    started.elapsed()
}

/// `openssl speed`'s signatures per second on one core for `algorithm`.
fn openssl_signs(algorithm: &str) -> f64 {
    let out = Command::new(require("openssl"))
        .args(["speed", "-seconds", "2", algorithm])
        .output()
        .expect("openssl speed");
    let text = String::from_utf8_lossy(&out.stdout);
    // The last line: name, times, then sign/s and verify/s.
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let numbers: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse::<f64>().ok())
        .collect();
    numbers
        .get(numbers.len().saturating_sub(2))
        .copied()
        .unwrap_or(0.0)
}

fn key(dir: &std::path::Path, ed25519: bool) -> std::path::PathBuf {
    let path = dir.join(if ed25519 { "ed.pem" } else { "rsa.pem" });
    let mut cmd = Command::new("openssl");
    cmd.arg("genpkey").arg("-out").arg(&path);
    if ed25519 {
        cmd.args(["-algorithm", "ed25519"]);
    } else {
        cmd.args(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    }
    assert!(cmd.output().unwrap().status.success());
    path
}

/// An egressd relaying to `mx` with `handler` as its message event (none: no event).
fn egressd(
    dir: &std::path::Path,
    name: &str,
    mx: SocketAddr,
    handler: Option<&str>,
) -> (SocketAddr, Peer) {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let event = handler
        .map(|h| format!("kumo.on('smtp_server_message_received', function(msg) {h} end)"))
        .unwrap_or_default();
    let policy = dir.join(format!("{name}.lua"));
    std::fs::write(
        &policy,
        egress_e2e::relay_policy(
            "max_connection_rate_per_client = 'unlimited', max_connections_per_client = 0",
            &egress_e2e::mx_entry(mx),
            &event,
        )
        .replace("{listen}", &listen.to_string()),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_egressd"));
    cmd.arg("--policy").arg(&policy).env("EGRESSD_LOG", "warn");
    let mut peer = Peer::spawn("egressd", &mut cmd);
    wait_listening("egressd", listen, &mut peer);
    (listen, peer)
}

fn main() {
    let sink = SmtpSink::start_discarding();
    let dir = tempfile::tempdir().unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let rsa = key(dir.path(), false);
    let ed = key(dir.path(), true);
    let signer = |kind: &str, key: &std::path::Path| {
        format!(
            "msg:dkim_sign(kumo.dkim.{kind} {{ domain = 'example.com', selector = 's1', headers = {{ 'From', 'To', 'Subject' }}, key = '{}' }})",
            key.display()
        )
    };
    let plain = egressd(dir.path(), "plain", sink.addr, None);
    let event = egressd(dir.path(), "event", sink.addr, Some("local _ = msg:id()"));
    let rsa_d = egressd(
        dir.path(),
        "rsa",
        sink.addr,
        Some(&signer("rsa_sha256_signer", &rsa)),
    );
    let ed_d = egressd(
        dir.path(),
        "ed",
        sink.addr,
        Some(&signer("ed25519_signer", &ed)),
    );
    for (addr, _) in [&plain, &event, &rsa_d, &ed_d] {
        source(*addr, 100);
    }
    let messages = 3000;
    let (mut off, mut on) = (f64::MAX, f64::MAX);
    let (mut rsa_rate, mut ed_rate) = (0.0f64, 0.0f64);
    for _ in 0..ROUNDS {
        for (i, (addr, peer)) in [&plain, &event, &rsa_d, &ed_d].into_iter().enumerate() {
            let before = cpu_of(peer.id());
            let took = source(*addr, messages);
            let cpu = (cpu_of(peer.id()) - before) / messages as f64 * 1e6;
            let rate = messages as f64 / took.as_secs_f64();
            match i {
                0 => off = off.min(cpu),
                1 => on = on.min(cpu),
                2 => rsa_rate = rsa_rate.max(rate),
                _ => ed_rate = ed_rate.max(rate),
            }
        }
    }
    let (rsa_limit, ed_limit) = (
        openssl_signs("rsa2048") * cores,
        openssl_signs("ed25519") * cores,
    );
    println!(
        "dkim, smtp-source -> egressd -> smtp-sink, 20 sessions, 2 KB, {cores} cores, best of {ROUNDS}: RSA-2048 {rsa_rate:.0} msg/s vs openssl {rsa_limit:.0} signs/s ratio {:.2} (goal >= 0.8)  Ed25519 {ed_rate:.0} msg/s vs openssl {ed_limit:.0} signs/s ratio {:.2} (goal >= 0.8)  event defined, not signing: egressd CPU/msg {on:.0} us vs {off:.0} us without the event ratio {:.2} (goal <= 1.15)",
        rsa_rate / rsa_limit,
        ed_rate / ed_limit,
        on / off
    );
}
