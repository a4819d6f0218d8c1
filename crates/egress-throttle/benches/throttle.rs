//! What a throttle check costs, as ratios against a baseline in the same run:
//! a local check vs a bare atomic increment, and a Redis check vs a PING on the same
//! connection. Run: `cargo xtask bench throttle`.

use egress_e2e::RedisServer;
use egress_throttle::gcra::{now_micros, Cell, Limiter};
use egress_throttle::{LocalStore, RedisStore, Store, ThrottleSpec};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn per_op(took: Duration, n: u64) -> f64 {
    took.as_nanos() as f64 / n as f64
}

fn main() {
    // Limits that never bind, so every check takes the full path.
    let spec: ThrottleSpec = "1000000000/s".parse().unwrap();
    let local = LocalStore::default();
    let counter = AtomicU64::new(0);
    const N: u64 = 2_000_000;
    let limiter = Limiter::default();
    let cell = Cell::of(&spec);
    let (mut atomic, mut check, mut handle) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..N {
            black_box(counter.fetch_add(1, Ordering::Relaxed));
        }
        atomic = atomic.min(per_op(t.elapsed(), N));
        let t = Instant::now();
        for _ in 0..N {
            black_box(local.check(
                black_box("ip-1@(alt1|alt2)?.gmail-smtp-in.l.google.com"),
                &spec,
            ));
        }
        check = check.min(per_op(t.elapsed(), N));
        let t = Instant::now();
        for _ in 0..N {
            black_box(limiter.check(cell, now_micros()));
        }
        handle = handle.min(per_op(t.elapsed(), N));
    }
    println!("throttle: best of 5 rounds, {N} operations each");
    println!("  bare atomic fetch_add (baseline)   {atomic:>8.1} ns/op");
    println!(
        "  local GCRA decision (limiter held)  {handle:>8.1} ns/op   ratio {:.2}  (goal <= 3x: clock read + compare-and-swap)",
        handle / atomic
    );
    println!(
        "  local check by key (what egressd does) {check:>5.1} ns/op   ratio {:.2}  (adds hashing a 44-byte key under a read lock)",
        check / atomic
    );

    let redis = RedisServer::start();
    let store = RedisStore::new(&redis.url()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    const M: u64 = 5_000;
    let (ping, gcra) = rt.block_on(async {
        store.ping().await.unwrap();
        let (mut ping, mut gcra) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..M {
                store.ping().await.unwrap();
            }
            ping = ping.min(per_op(t.elapsed(), M));
            let t = Instant::now();
            for _ in 0..M {
                let d = store.throttle("ip-1@gmail", &spec).await.unwrap();
                assert!(d.allowed);
            }
            gcra = gcra.min(per_op(t.elapsed(), M));
        }
        (ping, gcra)
    });
    println!(
        "  Redis PING round trip (baseline)   {:>8.1} us/op",
        ping / 1000.0
    );
    println!(
        "  Redis GCRA check (script)          {:>8.1} us/op   ratio {:.2}  (goal <= 1.5x)",
        gcra / 1000.0,
        gcra / ping
    );
}
