//! What relaying costs egress-proxy against the proxies an operator would pick
//! instead — Dante and microsocks (installed by `cargo xtask peers`), and KumoProxy
//! when `KUMOPROXY=/path/to/proxy-server` is given — in one run, rounds
//! interleaved: standard CONNECT to a local discard server.
//!
//! - bulk: 8 streams × 128 MiB at once — proxy CPU seconds per GiB, and GiB/s;
//! - churn: 2,000 short sessions, 20 at a time — proxy CPU seconds per 1,000
//!   sessions, and sessions/s.
//!
//! CPU is the proxy's process tree (Dante works in child processes, which come
//! and go) read from `/proc/PID/stat`, reaped children included. Each figure is the best of the rounds. Run:
//! `cargo xtask bench proxy` (or `cargo bench -p egress-proxy`).

use egress_e2e::{free_port, Danted, MicroSocks};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TICKS: f64 = 100.0;
const ROUNDS: usize = 3;
const STREAMS: usize = 8;
const STREAM_BYTES: usize = 128 << 20;
const SESSIONS: usize = 2_000;
const AT_ONCE: usize = 20;

/// CPU seconds of `pid` and all its descendants.
fn tree_cpu(pid: u32) -> f64 {
    let mut parent: HashMap<u32, u32> = HashMap::new();
    let mut cpu: HashMap<u32, f64> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // After ')': state, ppid (1), … utime (11), stime (12), and the reaped
        // children's cutime (13), cstime (14): a worker that exited moved its CPU
        // into its parent's, so counting both keeps every tick counted once.
        parent.insert(p, num(1) as u32);
        cpu.insert(p, (num(11) + num(12) + num(13) + num(14)) / TICKS);
    }
    cpu.iter()
        .filter(|(p, _)| {
            let mut at = **p;
            for _ in 0..64 {
                if at == pid {
                    return true;
                }
                match parent.get(&at) {
                    Some(&up) if up != 0 && up != at => at = up,
                    _ => return false,
                }
            }
            false
        })
        .map(|(_, c)| c)
        .sum()
}

/// A server that reads everything sent to it and closes when the client does.
fn discard_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = vec![0u8; 256 * 1024];
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// A SOCKS5 CONNECT to `to` through `proxy`.
fn socks_connect(proxy: SocketAddr, to: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).unwrap();
    assert_eq!(choice, [5, 0], "the proxy accepts no authentication");
    let SocketAddr::V4(v4) = to else {
        panic!("IPv4")
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&v4.ip().octets());
    req.extend_from_slice(&v4.port().to_be_bytes());
    s.write_all(&req).unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply[1], 0, "CONNECT succeeded");
    s
}

fn bulk(proxy: SocketAddr, sink: SocketAddr) {
    let workers: Vec<_> = (0..STREAMS)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = socks_connect(proxy, sink);
                let chunk = vec![0x5au8; 256 * 1024];
                let mut left = STREAM_BYTES;
                while left > 0 {
                    let n = left.min(chunk.len());
                    s.write_all(&chunk[..n]).unwrap();
                    left -= n;
                }
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

fn churn(proxy: SocketAddr, sink: SocketAddr) {
    let per = SESSIONS / AT_ONCE;
    let workers: Vec<_> = (0..AT_ONCE)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..per {
                    let mut s = socks_connect(proxy, sink);
                    s.write_all(b"EHLO bench.test\r\nQUIT\r\n").unwrap();
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

/// A proxy under test.
struct Contender {
    name: String,
    addr: SocketAddr,
    pid: u32,
    bulk_cpu: f64,
    bulk_rate: f64,
    churn_cpu: f64,
    churn_rate: f64,
}

/// Spawns a binary that listens on `addr`, waiting until it accepts.
fn spawn(mut cmd: Command, addr: SocketAddr) -> Child {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{cmd:?} did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // cargo test --benches asks for the list; this bench has no cases to list.
        return;
    }
    let sink = discard_server();
    let mut children: Vec<Child> = Vec::new();
    let mut contenders = Vec::new();
    let ours = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_egress-proxy"));
    cmd.args(["--listen", &ours.to_string()]);
    let child = spawn(cmd, ours);
    contenders.push(("egress-proxy".to_owned(), ours, child.id()));
    children.push(child);
    let mut copy_cmd = Command::new(env!("CARGO_BIN_EXE_egress-proxy"));
    let copying = SocketAddr::from(([127, 0, 0, 1], free_port()));
    copy_cmd.args(["--listen", &copying.to_string(), "--no-splice"]);
    let child = spawn(copy_cmd, copying);
    contenders.push(("egress-proxy --no-splice".to_owned(), copying, child.id()));
    children.push(child);
    if let Ok(kumo) = std::env::var("KUMOPROXY") {
        let at = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new(kumo);
        cmd.args(["--listen", &at.to_string()]);
        let child = spawn(cmd, at);
        contenders.push(("KumoProxy".to_owned(), at, child.id()));
        children.push(child);
    }
    let micro = MicroSocks::start(None, None);
    contenders.push(("microsocks".to_owned(), micro.addr, micro.pid()));
    let dante = Danted::start();
    contenders.push(("Dante".to_owned(), dante.addr, dante.pid()));

    let mut results: Vec<Contender> = contenders
        .into_iter()
        .map(|(name, addr, pid)| Contender {
            name,
            addr,
            pid,
            bulk_cpu: f64::MAX,
            bulk_rate: 0.0,
            churn_cpu: f64::MAX,
            churn_rate: 0.0,
        })
        .collect();
    let gib = (STREAMS * STREAM_BYTES) as f64 / (1u64 << 30) as f64;
    for _ in 0..ROUNDS {
        for c in results.iter_mut() {
            let before = tree_cpu(c.pid);
            let started = Instant::now();
            bulk(c.addr, sink);
            let took = started.elapsed().as_secs_f64();
            c.bulk_cpu = c.bulk_cpu.min((tree_cpu(c.pid) - before) / gib);
            c.bulk_rate = c.bulk_rate.max(gib / took);

            let before = tree_cpu(c.pid);
            let started = Instant::now();
            churn(c.addr, sink);
            let took = started.elapsed().as_secs_f64();
            c.churn_cpu = c
                .churn_cpu
                .min((tree_cpu(c.pid) - before) / (SESSIONS as f64 / 1000.0));
            c.churn_rate = c.churn_rate.max(SESSIONS as f64 / took);
        }
    }
    println!(
        "proxy: {STREAMS} × {} MiB bulk, {SESSIONS} sessions {AT_ONCE} at a time; best of {ROUNDS} interleaved rounds",
        STREAM_BYTES >> 20
    );
    println!(
        "{:<26} {:>16} {:>10} {:>22} {:>12}",
        "proxy", "CPU s per GiB", "GiB/s", "CPU s per 1000 sess.", "sessions/s"
    );
    for c in &results {
        println!(
            "{:<26} {:>16.3} {:>10.2} {:>22.3} {:>12.0}",
            c.name, c.bulk_cpu, c.bulk_rate, c.churn_cpu, c.churn_rate
        );
    }
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}
