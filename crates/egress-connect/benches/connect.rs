//! Connect latency through each route, measured in one run against its baseline.
//!
//! Not criterion's adaptive loop: every connect leaves a TIME_WAIT socket behind,
//! and an open-ended iteration count would exhaust loopback ports. Instead each
//! mode runs exactly N connects, interleaved round by round so that machine noise
//! falls on all modes alike, and we print median and p99 beside the baseline.
//!
//! Run: `cargo bench -p egress-connect` (or `cargo xtask bench connect`).

use egress_connect::connect;
use egress_e2e::{HaProxy, MicroSocks};
use egress_source::EgressSource;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const N: usize = 2000;
const TIMEOUT: Duration = Duration::from_secs(5);

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    // A destination that accepts and closes, so TIME_WAIT lands on the server side.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let destination = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    let haproxy = HaProxy::start();
    let socks = MicroSocks::start(None, None);

    let mut direct = EgressSource::named("bench-direct");
    direct.source_address = Some("127.0.0.2".parse().unwrap());
    let mut ha = EgressSource::named("bench-haproxy");
    ha.ha_proxy_server = Some(haproxy.addr.to_string().parse().unwrap());
    ha.ha_proxy_source_address = Some("127.0.0.2".parse().unwrap());
    let mut s5 = EgressSource::named("bench-socks5");
    s5.socks5_proxy_server = Some(socks.addr.to_string().parse().unwrap());

    let modes: [(&str, Option<&EgressSource>); 4] = [
        ("plain tokio connect (baseline)", None),
        ("direct, bound to 127.0.0.2", Some(&direct)),
        ("HAProxy (PROXY v2 header sent)", Some(&ha)),
        ("SOCKS5 microsocks (CONNECT done)", Some(&s5)),
    ];
    // Warm up every path once (haproxy and microsocks spawn work lazily).
    for (_, src) in &modes {
        once(*src, destination).await;
    }
    let mut samples = vec![Vec::with_capacity(N); modes.len()];
    for _ in 0..N {
        for (i, (_, src)) in modes.iter().enumerate() {
            samples[i].push(once(*src, destination).await);
        }
    }
    let stats: Vec<(Duration, Duration)> = samples.iter_mut().map(|s| median_p99(s)).collect();
    println!("connect, N={N} each, loopback, interleaved in one run:");
    for (i, (name, _)) in modes.iter().enumerate() {
        let (median, p99) = stats[i];
        let (base_name, base) = if i <= 1 {
            ("plain", stats[0])
        } else {
            ("direct", stats[1])
        };
        println!(
            "  {name:<34} median {:>7.1} us  p99 {:>7.1} us  ratio vs {base_name}: median {:.2}x  p99 {:.2}x",
            us(median),
            us(p99),
            us(median) / us(base.0),
            us(p99) / us(base.1),
        );
    }
}

async fn once(source: Option<&EgressSource>, destination: SocketAddr) -> Duration {
    let started = Instant::now();
    match source {
        None => drop(tokio::net::TcpStream::connect(destination).await.unwrap()),
        Some(src) => drop(connect(src, destination, TIMEOUT).await.unwrap()),
    }
    started.elapsed()
}

fn median_p99(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
