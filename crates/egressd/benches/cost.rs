//! Relay cost per message: Postfix's `smtp-source` straight into `smtp-sink`, beside
//! `smtp-source` through egressd into the same `smtp-sink`, in one run — messages
//! per second, and CPU per message of egressd alone against `smtp-sink` +
//! `smtp-source` together (a server and a client: the work egressd does once
//! each). CPU is read from `/proc/PID/stat` (utime + stime) for the daemons and from
//! `getrusage(RUSAGE_CHILDREN)` for `smtp-source`. Each figure is the best of
//! interleaved rounds, taken on its own (the fastest round and the cheapest round
//! are not always the same one on a shared machine). egressd's CPU is also shown
//! split into user and kernel time: the kernel part is mostly loopback TCP, a
//! floor set by the number of writes a relayed message needs. Run:
//! `cargo bench -p egressd --bench cost` (part of `cargo xtask bench relay`).

use egress_e2e::{free_port, require, wait_listening, Peer, SmtpSink};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// Clock ticks per second for `/proc/PID/stat` (`getconf CLK_TCK`; 100 on Linux).
const TICKS: f64 = 100.0;
const ROUNDS: usize = 5;

/// CPU seconds a process has used: (user, kernel).
fn cpu_of(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name is in parentheses and may hold spaces: fields count after it.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    (ticks(11) / TICKS, ticks(12) / TICKS)
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
    // No dumps: a file per message would be most of the sink's CPU and would flatter
    // egressd's share of it.
    let sink = SmtpSink::start_discarding();
    let sink_pid = sink.pid();
    let dir = tempfile::tempdir().unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let policy = dir.path().join("cost.lua");
    std::fs::write(
        &policy,
        egress_e2e::relay_policy(
            "max_connection_rate_per_client = 'unlimited', max_connections_per_client = 0",
            &egress_e2e::mx_entry(sink.addr),
            "",
        )
        .replace("{listen}", &listen.to_string()),
    )
    .unwrap();
    let mut cmd = Command::new(egressd_bin());
    cmd.arg("--policy").arg(&policy).env("EGRESSD_LOG", "warn");
    let mut egressd = Peer::spawn("egressd", &mut cmd);
    wait_listening("egressd", listen, &mut egressd);
    let egressd_pid = egressd.id();

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!("relay cost: smtp-source -> [egressd ->] smtp-sink, loopback, {cores} cores, best of {ROUNDS} interleaved rounds");
    for (sessions, messages, size, reuse) in [
        (20, 10_000, 2048, true),
        (1, 3_000, 2048, true),
        (20, 1_000, 100 * 1024, true),
        (20, 4_000, 2048, false),
    ] {
        round(sink.addr, sessions, sessions * 5, size, reuse, &[]);
        round(listen, sessions, sessions * 5, size, reuse, &[]);
        let per = |cpu: f64| cpu / messages as f64 * 1e6;
        let rate = |t: Duration| messages as f64 / t.as_secs_f64();
        let (mut direct_rate, mut relay_rate) = (0.0f64, 0.0f64);
        let mut pair_cpu = f64::MAX;
        // egressd's cheapest round: (total, user, kernel) per message.
        let mut egressd_cpu = (f64::MAX, 0.0, 0.0);
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
        }
        let (total, user, kernel) = egressd_cpu;
        println!(
            "  {sessions:>2} session(s), {:>3} KB, {}: direct {direct_rate:>6.0} msg/s  via egressd {relay_rate:>6.0} msg/s  ratio {:.2} (goal >= 0.8)   CPU/msg: sink+source {pair_cpu:>5.0} us  egressd {total:>5.0} us (user {user:.0}, kernel {kernel:.0})  ratio {:.2} (goal <= 0.5)",
            size / 1024,
            if reuse { "reuse  " } else { "new conn" },
            relay_rate / direct_rate,
            total / pair_cpu
        );
    }
}

/// The egressd under test: this build's, or `EGRESSD_BIN` (another build's, for a
/// before/after comparison on the same machine and load).
fn egressd_bin() -> std::path::PathBuf {
    std::env::var_os("EGRESSD_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_egressd").into())
}
