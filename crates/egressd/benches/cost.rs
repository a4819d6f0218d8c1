//! Relay cost per message: Postfix's `smtp-source` straight into `smtp-sink`, beside
//! `smtp-source` through egressd into the same `smtp-sink`, in one run — messages
//! per second, and CPU per message of egressd alone against `smtp-sink` +
//! `smtp-source` together (a server and a client: the work egressd does once
//! each). CPU is read from `/proc/PID/stat` (utime + stime) for the daemons and from
//! `getrusage(RUSAGE_CHILDREN)` for `smtp-source`. Each figure is the best of
//! interleaved rounds. Run: `cargo bench -p egressd --bench cost` (part of
//! `cargo xtask bench relay`).

use egress_e2e::{free_port, require, wait_listening, Peer, SmtpSink};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// Clock ticks per second for `/proc/PID/stat` (`getconf CLK_TCK`; 100 on Linux).
const TICKS: f64 = 100.0;
const ROUNDS: usize = 3;

/// CPU seconds a process has used.
fn cpu_of(pid: u32) -> f64 {
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
    (ticks(11) + ticks(12)) / TICKS
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
    daemons_cpu: Vec<f64>,
}

fn round(
    server: SocketAddr,
    sessions: usize,
    messages: usize,
    size: usize,
    reuse: bool,
    watch: &[u32],
) -> Round {
    let before_daemons: Vec<f64> = watch.iter().map(|p| cpu_of(*p)).collect();
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
            .map(|(p, b)| cpu_of(*p) - b)
            .collect(),
    }
}

fn main() {
    let sink = SmtpSink::start();
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
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_egressd"));
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
        let mut direct: Option<Round> = None;
        let mut relayed: Option<Round> = None;
        for _ in 0..ROUNDS {
            let d = round(sink.addr, sessions, messages, size, reuse, &[sink_pid]);
            if direct.as_ref().is_none_or(|b| d.took < b.took) {
                direct = Some(d);
            }
            let r = round(
                listen,
                sessions,
                messages,
                size,
                reuse,
                &[egressd_pid, sink_pid],
            );
            if relayed.as_ref().is_none_or(|b| r.took < b.took) {
                relayed = Some(r);
            }
        }
        let (d, r) = (direct.unwrap(), relayed.unwrap());
        let per = |cpu: f64| cpu / messages as f64 * 1e6;
        let rate = |t: Duration| messages as f64 / t.as_secs_f64();
        let pair_cpu = per(d.source_cpu + d.daemons_cpu[0]);
        let egressd_cpu = per(r.daemons_cpu[0]);
        println!(
            "  {sessions:>2} session(s), {:>3} KB, {}: direct {:>6.0} msg/s  via egressd {:>6.0} msg/s  ratio {:.2} (goal >= 0.8)   CPU/msg: sink+source {pair_cpu:>5.0} us  egressd {egressd_cpu:>5.0} us  ratio {:.2} (goal <= 0.5)",
            size / 1024,
            if reuse { "reuse  " } else { "new conn" },
            rate(d.took),
            rate(r.took),
            rate(r.took) / rate(d.took),
            egressd_cpu / pair_cpu
        );
    }
}
