//! A handler call through the pool of Lua states (cache miss) against a cached
//! resolve, in one run. Run: `cargo bench -p egress-lua`.

use criterion::{criterion_group, criterion_main, Criterion};
use egress_lua::{Policy, PolicyOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const POLICY: &str = "
kumo.on('get_egress_source', function(name)
  return kumo.make_egress_source { name = name, source_address = '127.0.0.2',
                                   ehlo_domain = 'mta1.example.com', ttl = '5 mins' }
end)";

fn policy_calls(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = Policy::from_source(
        "bench.lua",
        POLICY,
        PolicyOptions {
            cache_capacity: 1_000_000,
            ..Default::default()
        },
    )
    .unwrap();
    let next = AtomicU64::new(0);
    rt.block_on(p.egress_source("hot")).unwrap();

    let mut group = c.benchmark_group("policy");
    group.bench_function("cached resolve (hit)", |b| {
        b.to_async(&rt).iter(|| p.egress_source("hot"))
    });
    group.bench_function("handler call through the state pool (miss)", |b| {
        b.to_async(&rt).iter(|| {
            let name = format!("ip-{}", next.fetch_add(1, Ordering::Relaxed));
            let p = &p;
            async move { p.egress_source(&name).await.unwrap() }
        })
    });
    group.finish();

    // The two side by side, measured back to back in this process.
    const N: u64 = 20_000;
    let (hit, miss) = rt.block_on(async {
        let t = Instant::now();
        for _ in 0..N {
            std::hint::black_box(p.egress_source("hot").await.unwrap());
        }
        let hit = t.elapsed();
        let t = Instant::now();
        for _ in 0..N {
            let name = format!("ip-{}", next.fetch_add(1, Ordering::Relaxed));
            std::hint::black_box(p.egress_source(&name).await.unwrap());
        }
        (hit, t.elapsed())
    });
    println!(
        "policy: handler call (miss) {:.1} us vs cached resolve {:.2} us per call; cached is {:.0}x faster",
        miss.as_secs_f64() * 1e6 / N as f64,
        hit.as_secs_f64() * 1e6 / N as f64,
        miss.as_secs_f64() / hit.as_secs_f64()
    );
}

criterion_group!(benches, policy_calls);
criterion_main!(benches);
