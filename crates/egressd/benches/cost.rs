//! Relay cost per message: Postfix's `smtp-source` straight into `smtp-sink`, beside
//! `smtp-source` through egressd into the same `smtp-sink`, in one run — messages
//! per second, and CPU per message of egressd alone against `smtp-sink` +
//! `smtp-source` together (a server and a client: the work egressd does once
//! each). CPU is read from `/proc/PID/stat` (utime + stime) for the daemons and from
//! `getrusage(RUSAGE_CHILDREN)` for `smtp-source`. Each figure is the best of
//! interleaved rounds, taken on its own (the fastest round and the cheapest round
//! are not always the same one on a shared machine). egressd's CPU is also shown
//! split into user and kernel time: the kernel part is mostly loopback TCP, a
//! floor set by the number of writes a relayed message needs. The same sessions
//! through HAProxy in TCP mode (a byte proxy) give the baseline a relay that
//! understands SMTP should beat; strace counts the syscalls per message; and
//! Postfix as the client (it pipelines) into a Postfix that offers CHUNKING shows
//! the path real senders take. Run:
//! `cargo bench -p egressd --bench cost` (part of `cargo xtask bench relay`).

use egress_e2e::{free_port, require, wait_listening, Peer, SmtpSink};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

const ROUNDS: usize = 5;

/// CPU seconds a process has used: (user, kernel).
fn cpu_of(pid: u32) -> (f64, f64) {
    egress_e2e::cpu_seconds(pid)
}

/// CPU seconds of every waited-for child so far (smtp-source runs).
fn children_cpu() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_CHILDREN)
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or(0.0)
}

/// One run of smtp-source: its wall time and CPU, and the CPU the watched daemons
/// spent meanwhile.
struct Round {
    took: Duration,
    source_cpu: f64,
    /// (user, kernel) of each watched daemon.
    daemons_cpu: Vec<(f64, f64)>,
}

fn round(
    server: SocketAddr,
    sessions: usize,
    messages: usize,
    size: usize,
    reuse: bool,
    watch: &[u32],
) -> Round {
    let before_daemons: Vec<(f64, f64)> = watch.iter().map(|p| cpu_of(*p)).collect();
    let before_children = children_cpu();
    let started = Instant::now();
    let mut cmd = Command::new(require("smtp-source"));
    cmd.args([
        "-s",
        &sessions.to_string(),
        "-m",
        &messages.to_string(),
        "-l",
        &size.to_string(),
    ]);
    if reuse {
        cmd.arg("-d");
    }
    let status = cmd
        .args(["-f", "sender@bench.test", "-t", "rcpt@dest.test"])
        .arg(server.to_string())
        .status()
        .expect("run smtp-source");
    assert!(status.success(), "smtp-source against {server}: {status}");
    let took = started.elapsed();
    // The daemons may still be finishing the last replies' bookkeeping.
    std::thread::sleep(Duration::from_millis(50));
    Round {
        took,
        source_cpu: children_cpu() - before_children,
        daemons_cpu: watch
            .iter()
            .zip(before_daemons)
            .map(|(p, b)| {
                let (user, kernel) = cpu_of(*p);
                (user - b.0, kernel - b.1)
            })
            .collect(),
    }
}

fn main() {
    // `EGRESS_BENCH_ONLY=records`: the delivery-records rows alone.
    if std::env::var("EGRESS_BENCH_ONLY").as_deref() == Ok("records") {
        let sink = SmtpSink::start_discarding();
        let dir = tempfile::tempdir().unwrap();
        records_rows(dir.path(), sink.addr);
        return;
    }
    // No dumps: a file per message would be most of the sink's CPU and would flatter
    // egressd's share of it.
    let sink = SmtpSink::start_discarding();
    let sink_pid = sink.pid();
    let dir = tempfile::tempdir().unwrap();
    let (listen, egressd) = start_egressd(dir.path(), "cost", sink.addr);
    let egressd_pid = egressd.id();
    let (haproxy_addr, haproxy) = haproxy_tcp(dir.path(), sink.addr);
    let haproxy_pid = haproxy.id();

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!("relay cost: smtp-source -> [egressd | haproxy (TCP mode) ->] smtp-sink, loopback, {cores} cores, best of {ROUNDS} interleaved rounds");
    for (sessions, messages, size, reuse) in [
        (20, 10_000, 2048, true),
        (1, 3_000, 2048, true),
        (20, 1_000, 100 * 1024, true),
        (20, 4_000, 2048, false),
    ] {
        round(sink.addr, sessions, sessions * 5, size, reuse, &[]);
        round(listen, sessions, sessions * 5, size, reuse, &[]);
        round(haproxy_addr, sessions, sessions * 5, size, reuse, &[]);
        let per = |cpu: f64| cpu / messages as f64 * 1e6;
        let rate = |t: Duration| messages as f64 / t.as_secs_f64();
        let (mut direct_rate, mut relay_rate) = (0.0f64, 0.0f64);
        let mut pair_cpu = f64::MAX;
        // egressd's cheapest round: (total, user, kernel) per message.
        let mut egressd_cpu = (f64::MAX, 0.0, 0.0);
        let mut haproxy_cpu = f64::MAX;
        for _ in 0..ROUNDS {
            let d = round(sink.addr, sessions, messages, size, reuse, &[sink_pid]);
            direct_rate = direct_rate.max(rate(d.took));
            let (sink_user, sink_kernel) = d.daemons_cpu[0];
            pair_cpu = pair_cpu.min(per(d.source_cpu + sink_user + sink_kernel));
            let r = round(listen, sessions, messages, size, reuse, &[egressd_pid]);
            relay_rate = relay_rate.max(rate(r.took));
            let (user, kernel) = r.daemons_cpu[0];
            if per(user + kernel) < egressd_cpu.0 {
                egressd_cpu = (per(user + kernel), per(user), per(kernel));
            }
            let h = round(
                haproxy_addr,
                sessions,
                messages,
                size,
                reuse,
                &[haproxy_pid],
            );
            let (user, kernel) = h.daemons_cpu[0];
            haproxy_cpu = haproxy_cpu.min(per(user + kernel));
        }
        let (total, user, kernel) = egressd_cpu;
        println!(
            "  {sessions:>2} session(s), {:>3} KB, {}: direct {direct_rate:>6.0} msg/s  via egressd {relay_rate:>6.0} msg/s  ratio {:.2} (goal >= 0.8)   CPU/msg: sink+source {pair_cpu:>5.0} us  egressd {total:>5.0} us (user {user:.0}, kernel {kernel:.0})  ratio {:.2} (goal <= 0.5)  haproxy {haproxy_cpu:>5.0} us  egressd/haproxy {:.2}",
            size / 1024,
            if reuse { "reuse  " } else { "new conn" },
            relay_rate / direct_rate,
            total / pair_cpu,
            total / haproxy_cpu
        );
    }
    // Syscalls per message, counted by strace over one run of the first row.
    let messages = 2_000;
    let (reads, writes) = syscalls(egressd_pid, || {
        round(listen, 20, messages, 2048, true, &[]);
    });
    let (h_reads, h_writes) = syscalls(haproxy_pid, || {
        round(haproxy_addr, 20, messages, 2048, true, &[]);
    });
    let per = |n: usize| n as f64 / messages as f64;
    println!(
        "  syscalls per message, smtp-source (no pipelining) -> X -> smtp-sink (no CHUNKING), 20 sessions reused: egressd {:.1} reads + {:.1} writes, haproxy {:.1} reads + {:.1} writes",
        per(reads),
        per(writes),
        per(h_reads),
        per(h_writes)
    );
    drop(egressd);
    drop(haproxy);
    records_rows(dir.path(), sink.addr);
    postfix_rows(dir.path());
}

/// The cost of delivery records: the same relay with no logger, with a local log
/// (zstd segments), and with a webhook log hook (batches of 100 to an endpoint on
/// loopback), CPU per relayed message of egressd each — counted until every record
/// is written (local) or taken by the endpoint (hook), so no work is left out.
fn records_rows(dir: &std::path::Path, sink: SocketAddr) {
    let received = dir.join("hook-received");
    let port = free_port();
    let mut cmd = Command::new(require("python3"));
    cmd.args(["-c", FAST_ENDPOINT])
        .arg(port.to_string())
        .arg(&received);
    let mut endpoint = Peer::spawn("python3 http.server", &mut cmd);
    let endpoint_addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening("the webhook endpoint", endpoint_addr, &mut endpoint);
    let logs = dir.join("logs");
    let local_log = format!(
        "kumo.on('pre_init', function() kumo.configure_local_logs {{ log_dir = '{}' }} end)",
        logs.display()
    );
    let fast_log = format!(
        "kumo.on('pre_init', function() kumo.configure_local_logs {{ log_dir = '{}', compression_level = 1 }} end)",
        dir.join("logs-fast").display()
    );
    let hook = format!(
        "require('policy-extras.log_hooks'):new_json {{ name = 'bench', url = 'http://{endpoint_addr}/log', batch_size = 100 }}"
    );
    let plain = start_egressd_with(dir, "records-off", sink, "");
    let local = start_egressd_with(dir, "records-local", sink, &local_log);
    let hooked = start_egressd_with(dir, "records-hook", sink, &hook);
    let fast = start_egressd_with(dir, "records-fast", sink, &fast_log);
    let taken = || {
        std::fs::read_to_string(&received)
            .ok()
            .and_then(|t| t.trim().parse::<usize>().ok())
            .unwrap_or(0)
    };
    let (sessions, messages) = (20, 10_000);
    // Warm each (connections, caches, the hook's connection).
    for (addr, _) in [&plain, &local, &hooked, &fast] {
        round(*addr, sessions, sessions * 5, 2048, true, &[]);
    }
    let mut records = sessions * 5 * 2;
    let mut best = [f64::MAX; 4];
    for _ in 0..ROUNDS {
        for (i, (addr, peer)) in [&plain, &local, &hooked, &fast].into_iter().enumerate() {
            let pid = peer.id();
            let before = cpu_of(pid);
            round(*addr, sessions, messages, 2048, true, &[]);
            if i == 2 {
                // A Reception and a Delivery per message, all taken by the endpoint.
                records += messages * 2;
                let all = egress_e2e::wait_until(Duration::from_secs(60), || taken() >= records);
                assert!(all, "the endpoint took {} of {records} records", taken());
            } else {
                // The local log's thread keeps up within moments.
                std::thread::sleep(Duration::from_millis(300));
            }
            let after = cpu_of(pid);
            let cpu = (after.0 - before.0) + (after.1 - before.1);
            best[i] = best[i].min(cpu / messages as f64 * 1e6);
        }
    }
    println!(
        "delivery records, smtp-source -> egressd -> smtp-sink, {sessions} sessions, 2 KB, reuse, best of {ROUNDS}: egressd CPU/msg logs off {:.0} us  local log (zstd) {:.0} us ratio {:.2} (goal <= 1.10)  webhook (batches of 100) {:.0} us ratio {:.2} (goal <= 1.20)  local log at compression_level 1 {:.0} us ratio {:.2}",
        best[0],
        best[1],
        best[1] / best[0],
        best[2],
        best[2] / best[0],
        best[3],
        best[3] / best[0]
    );
}

/// A webhook endpoint that takes everything: HTTP/1.1 keep-alive, 200 to each
/// POST, the number of records taken so far written to a file.
const FAST_ENDPOINT: &str = r#"
import http.server, json, sys
port, out = int(sys.argv[1]), sys.argv[2]
taken = 0
class Hook(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_POST(self):
        global taken
        body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        taken += len(body) if isinstance(body, list) else 1
        with open(out, 'w') as f:
            f.write(str(taken))
        self.send_response(200)
        self.send_header('Content-Length', '0')
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(('127.0.0.1', port), Hook).serve_forever()
"#;

/// Postfix as the client (its SMTP client pipelines) through egressd into a
/// Postfix that offers CHUNKING, against Postfix straight into that Postfix:
/// messages per second end to end, egressd's CPU and syscalls per message.
fn postfix_rows(dir: &std::path::Path) {
    let sink = SmtpSink::start();
    let dest = egress_e2e::Postfix::start(sink.addr);
    let (listen, egressd) = start_egressd(dir, "postfix", dest.addr);
    let egressd_pid = egressd.id();
    let via = egress_e2e::Postfix::start(listen);
    let direct = egress_e2e::Postfix::start(dest.addr);
    let messages = 1_000;
    let mut delivered = 0;
    let mut run = |client: SocketAddr, watch: &[u32]| {
        let r = round(client, 20, messages, 2048, true, watch);
        delivered += messages;
        let all = egress_e2e::wait_until(Duration::from_secs(120), || sink.count() >= delivered);
        assert!(
            all,
            "{} of {delivered} messages reached the sink",
            sink.count()
        );
        (r.took, r.daemons_cpu)
    };
    // Warm both paths (queues, connection caches).
    run(via.addr, &[]);
    run(direct.addr, &[]);
    let (mut via_rate, mut direct_rate, mut cpu) = (0.0f64, 0.0f64, f64::MAX);
    for _ in 0..3 {
        let t0 = Instant::now();
        let (_, daemons) = run(via.addr, &[egressd_pid]);
        via_rate = via_rate.max(messages as f64 / t0.elapsed().as_secs_f64());
        let (user, kernel) = daemons[0];
        cpu = cpu.min((user + kernel) / messages as f64 * 1e6);
        let t0 = Instant::now();
        run(direct.addr, &[]);
        direct_rate = direct_rate.max(messages as f64 / t0.elapsed().as_secs_f64());
    }
    let (reads, writes) = syscalls(egressd_pid, || {
        run(via.addr, &[]);
    });
    println!(
        "relay cost, Postfix -> [egressd ->] Postfix (CHUNKING) -> smtp-sink, 20 sessions, 2 KB, best of 3: direct {direct_rate:.0} msg/s  via egressd {via_rate:.0} msg/s  egressd CPU {cpu:.0} us/msg  syscalls {:.1} reads + {:.1} writes per message (goal <= 4 + 4)",
        reads as f64 / messages as f64,
        writes as f64 / messages as f64
    );
}

/// An egressd relaying everything to `mx`, its policy written into `dir`.
fn start_egressd(dir: &std::path::Path, name: &str, mx: SocketAddr) -> (SocketAddr, Peer) {
    start_egressd_with(dir, name, mx, "")
}

/// [`start_egressd`] with `extra` Lua in its policy (and a state directory of its
/// own, for a log hook's backlog).
fn start_egressd_with(
    dir: &std::path::Path,
    name: &str,
    mx: SocketAddr,
    extra: &str,
) -> (SocketAddr, Peer) {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let policy = dir.join(format!("{name}.lua"));
    std::fs::write(
        &policy,
        egress_e2e::relay_policy(
            "max_connection_rate_per_client = 'unlimited', max_connections_per_client = 0",
            &egress_e2e::mx_entry(mx),
            extra,
        )
        .replace("{listen}", &listen.to_string()),
    )
    .unwrap();
    let state = dir.join(format!("{name}-state"));
    let mut cmd = Command::new(egressd_bin());
    cmd.arg("--policy")
        .arg(&policy)
        .arg("--state-dir")
        .arg(&state)
        .env("EGRESSD_LOG", "warn");
    let mut egressd = Peer::spawn("egressd", &mut cmd);
    wait_listening("egressd", listen, &mut egressd);
    (listen, egressd)
}

/// HAProxy forwarding TCP to `to`, as a byte proxy in front of a mail server
/// would: the baseline a relay that understands SMTP should beat.
fn haproxy_tcp(dir: &std::path::Path, to: SocketAddr) -> (SocketAddr, Peer) {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cfg = dir.join("haproxy-tcp.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 4096\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend smtp\n  bind {listen}\n  default_backend sink\n\
             backend sink\n  server sink {to}\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(require("haproxy"));
    cmd.arg("-f").arg(&cfg).arg("-db");
    let mut peer = Peer::spawn("haproxy", &mut cmd);
    wait_listening("haproxy", listen, &mut peer);
    (listen, peer)
}

/// Read-like and write-like system calls `pid` makes (all its threads) while
/// `during` runs, counted by `strace -c`.
fn syscalls(pid: u32, during: impl FnOnce()) -> (usize, usize) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut strace = Command::new(require("strace"))
        .args(["-c", "-f", "-q", "-o"])
        .arg(out.path())
        .args(["-p", &pid.to_string()])
        .spawn()
        .expect("run strace");
    // strace attaches to every thread before counting starts.
    std::thread::sleep(Duration::from_millis(500));
    during();
    let _ = Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status();
    let _ = strace.wait();
    let table = std::fs::read_to_string(out.path()).unwrap_or_default();
    let calls = |names: &[&str]| -> usize {
        table
            .lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                let name = *cols.last()?;
                // % time, seconds, usecs/call, calls, [errors,] syscall
                names
                    .contains(&name)
                    .then(|| cols.get(3)?.parse::<usize>().ok())?
            })
            .sum()
    };
    (
        calls(&["read", "readv", "recvfrom", "recvmsg"]),
        calls(&["write", "writev", "sendto", "sendmsg"]),
    )
}

/// The egressd under test: this build's, or `EGRESSD_BIN` (another build's, for a
/// before/after comparison on the same machine and load).
fn egressd_bin() -> std::path::PathBuf {
    std::env::var_os("EGRESSD_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_egressd").into())
}
