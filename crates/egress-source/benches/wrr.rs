//! Weighted round-robin picks against a bare atomic counter (the floor any shared
//! rotation pays), single-threaded and with two threads contending.
//! Run: `cargo bench -p egress-source` (or `cargo xtask bench source`).

use criterion::{criterion_group, criterion_main, Criterion};
use egress_source::WeightedRoundRobin;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

fn picks(c: &mut Criterion) {
    let counter = AtomicUsize::new(0);
    let scheduled = WeightedRoundRobin::new("p", [("a", 5), ("b", 2), ("c", 3)]).unwrap();
    // A cycle longer than MAX_SCHEDULE takes the stepping (mutex) path.
    let stepping = WeightedRoundRobin::new("p", [("a", 100_000), ("b", 1)]).unwrap();
    let mut group = c.benchmark_group("wrr");
    group.bench_function("atomic fetch_add (baseline)", |b| {
        b.iter(|| black_box(counter.fetch_add(1, Ordering::Relaxed)))
    });
    group.bench_function("pick, precomputed schedule", |b| {
        b.iter(|| black_box(scheduled.pick()))
    });
    group.bench_function("pick, stepping under a mutex", |b| {
        b.iter(|| black_box(stepping.pick()))
    });
    group.finish();

    // Two threads picking at once, against two threads incrementing one atomic.
    const N: usize = 2_000_000;
    let contended = |f: &(dyn Fn() + Sync)| {
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| (0..N).for_each(|_| f()));
            }
        });
        t.elapsed().as_nanos() as f64 / (2 * N) as f64
    };
    let base = contended(&|| {
        black_box(counter.fetch_add(1, Ordering::Relaxed));
    });
    let sched = contended(&|| {
        black_box(scheduled.pick());
    });
    let step = contended(&|| {
        black_box(stepping.pick());
    });
    println!(
        "wrr, 2 threads contending: atomic {base:.1} ns/op; schedule pick {sched:.1} ns ({:.2}x); stepping pick {step:.1} ns ({:.2}x)",
        sched / base,
        step / base
    );
}

criterion_group!(benches, picks);
criterion_main!(benches);
