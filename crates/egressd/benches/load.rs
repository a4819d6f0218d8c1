//! Load: 10,000 concurrent inbound sessions held open, then each relays one message.
//! Reports wall time, egressd's peak RSS and RSS per idle session, and checks every
//! message arrived exactly once. Run: `cargo xtask bench load`.

use egress_e2e::{free_port, wait_listening, Peer, SmtpSink};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const SESSIONS: usize = 10_000;
/// Sessions relaying at the same moment in the second phase (the rest wait, open).
const RELAYING_AT_ONCE: usize = 200;

fn main() {
    raise_fd_limit();
    let sink = SmtpSink::start();
    let dir = tempfile::tempdir().unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let policy = dir.path().join("policy.lua");
    let text = egress_e2e::relay_policy(
        "max_connections = 12000, max_connections_per_client = 0,
         max_connection_rate_per_client = 'unlimited', client_timeout = '10m'",
        &egress_e2e::mx_entry(sink.addr),
        "",
    );
    std::fs::write(&policy, text.replace("{listen}", &listen.to_string())).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_egressd"));
    cmd.arg("--policy").arg(&policy).env("EGRESSD_LOG", "warn");
    let mut egressd = Peer::spawn("egressd", &mut cmd);
    wait_listening("egressd", listen, &mut egressd);
    let pid = egressd.id();
    std::thread::sleep(Duration::from_millis(300));
    let baseline = rss_kib(pid, "VmRSS");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let sessions = rt.block_on(open_all(listen));
    let opened = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_kib(pid, "VmRSS");

    let relay_started = Instant::now();
    let failures = rt.block_on(relay_all(sessions));
    let relayed = relay_started.elapsed();
    let peak = rss_kib(pid, "VmHWM");

    let messages = wait_for(&sink, SESSIONS);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in &messages {
        let id = m
            .lines()
            .find_map(|l| l.strip_prefix("Subject: load "))
            .unwrap_or("?")
            .trim()
            .to_owned();
        *seen.entry(id).or_default() += 1;
    }
    let once = (0..SESSIONS)
        .filter(|i| seen.get(&i.to_string()) == Some(&1))
        .count();

    println!("load: {SESSIONS} concurrent inbound sessions through egressd to smtp-sink, loopback");
    println!(
        "  open + EHLO, all {SESSIONS} held:  {:>8.2} s",
        opened.as_secs_f64()
    );
    println!(
        "  relay one message each ({RELAYING_AT_ONCE} at a time): {:>8.2} s, {failures} failed",
        relayed.as_secs_f64()
    );
    println!("  egressd RSS: before {baseline} KiB, {SESSIONS} idle {idle} KiB, peak {peak} KiB");
    println!(
        "  RSS per idle session: {:.1} KiB (goal <= 64 KiB)",
        (idle.saturating_sub(baseline)) as f64 / SESSIONS as f64
    );
    println!(
        "  delivered exactly once: {once} of {SESSIONS} (messages at the sink: {})",
        messages.len()
    );
    assert_eq!(once, SESSIONS, "every message exactly once");
}

type Session = (
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
);

async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return all;
        }
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return all;
        }
    }
}

async fn open_all(addr: SocketAddr) -> Vec<Session> {
    let limit = Arc::new(tokio::sync::Semaphore::new(1000));
    let tasks: Vec<_> = (0..SESSIONS)
        .map(|_| {
            let limit = limit.clone();
            tokio::spawn(async move {
                let _permit = limit.acquire().await.unwrap();
                let stream = TcpStream::connect(addr).await.expect("connect");
                let (r, mut w) = stream.into_split();
                let mut r = BufReader::new(r);
                assert!(reply(&mut r).await.starts_with("220"));
                w.write_all(b"EHLO load.client.test\r\n").await.unwrap();
                assert!(reply(&mut r).await.starts_with("250"));
                (r, w)
            })
        })
        .collect();
    let mut out = Vec::with_capacity(SESSIONS);
    for t in tasks {
        out.push(t.await.expect("session opened"));
    }
    out
}

async fn relay_all(sessions: Vec<Session>) -> usize {
    let limit = Arc::new(tokio::sync::Semaphore::new(RELAYING_AT_ONCE));
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, (mut r, mut w))| {
            let limit = limit.clone();
            tokio::spawn(async move {
                let _permit = limit.acquire().await.unwrap();
                let script = format!(
                    "MAIL FROM:<load@client.test>\r\nRCPT TO:<rcpt{i}@dest.test>\r\nDATA\r\n"
                );
                w.write_all(script.as_bytes()).await.ok()?;
                for want in ["250", "250", "354"] {
                    if !reply(&mut r).await.starts_with(want) {
                        return None;
                    }
                }
                let body = format!(
                    "Subject: load {i}\r\n\r\n{}\r\n.\r\nQUIT\r\n",
                    "x".repeat(1000)
                );
                w.write_all(body.as_bytes()).await.ok()?;
                reply(&mut r).await.starts_with("250").then_some(())
            })
        })
        .collect();
    let mut failures = 0;
    for t in tasks {
        if !matches!(t.await, Ok(Some(()))) {
            failures += 1;
        }
    }
    failures
}

fn wait_for(sink: &SmtpSink, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let messages = sink.messages();
        if messages.len() >= n || Instant::now() > deadline {
            return messages;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A field of /proc/PID/status, in KiB.
fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
