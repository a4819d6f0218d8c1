//! A cache hit against a bare moka `get` on a cache of the same size, and load
//! throughput on misses. Run: `cargo bench -p egress-cache`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use egress_cache::TtlCache;
use egress_source::EgressSource;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ENTRIES: u64 = 10_000;

fn hit_vs_bare_moka(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ours: TtlCache<String, Arc<EgressSource>> = TtlCache::new(ENTRIES);
    let bare: moka::future::Cache<String, Arc<EgressSource>> =
        moka::future::Cache::builder().max_capacity(ENTRIES).build();
    // moka with the same per-entry expiry we use, to separate what per-entry TTLs
    // cost inside moka from what our wrapper adds.
    let expiring: moka::future::Cache<String, Arc<EgressSource>> = moka::future::Cache::builder()
        .max_capacity(ENTRIES)
        .expire_after(SourceTtl)
        .build();
    let keys: Vec<String> = (0..ENTRIES).map(|i| format!("ip-{i}")).collect();
    rt.block_on(async {
        for key in &keys {
            let src = Arc::new(EgressSource::named(key.clone()));
            bare.insert(key.clone(), src.clone()).await;
            expiring.insert(key.clone(), src.clone()).await;
            ours.get_or_load(key.clone(), || async { Ok::<_, ()>(src) })
                .await
                .unwrap();
        }
    });

    let mut group = c.benchmark_group("cache-hit");
    let mut i = 0usize;
    group.bench_function("bare moka get (baseline)", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 7919) % keys.len();
            let key = keys[i].clone();
            let bare = &bare;
            async move { bare.get(&key).await.unwrap() }
        })
    });
    group.bench_function("moka get with per-entry expiry", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 7919) % keys.len();
            let key = keys[i].clone();
            let expiring = &expiring;
            async move { expiring.get(&key).await.unwrap() }
        })
    });
    group.bench_function("TtlCache get_or_load hit", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 7919) % keys.len();
            let key = keys[i].clone();
            let ours = &ours;
            async move {
                ours.get_or_load(key, || async { Err::<Arc<EgressSource>, ()>(()) })
                    .await
                    .unwrap()
            }
        })
    });
    group.finish();
    print_ratio(&rt, &ours, &bare, &expiring, &keys);
}

struct SourceTtl;

impl moka::Expiry<String, Arc<EgressSource>> for SourceTtl {
    fn expire_after_create(
        &self,
        _: &String,
        value: &Arc<EgressSource>,
        _: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Criterion reports each figure; this prints the two side by side as a ratio,
/// measured back to back in this process.
fn print_ratio(
    rt: &tokio::runtime::Runtime,
    ours: &TtlCache<String, Arc<EgressSource>>,
    bare: &moka::future::Cache<String, Arc<EgressSource>>,
    expiring: &moka::future::Cache<String, Arc<EgressSource>>,
    keys: &[String],
) {
    const N: usize = 1_000_000;
    let (bare_t, expiring_t, ours_t) = rt.block_on(async {
        let t = Instant::now();
        for n in 0..N {
            let key = keys[n % keys.len()].clone();
            std::hint::black_box(bare.get(&key).await);
        }
        let bare_t = t.elapsed();
        let t = Instant::now();
        for n in 0..N {
            let key = keys[n % keys.len()].clone();
            std::hint::black_box(expiring.get(&key).await);
        }
        let expiring_t = t.elapsed();
        let t = Instant::now();
        for n in 0..N {
            let key = keys[n % keys.len()].clone();
            std::hint::black_box(
                ours.get_or_load(key, || async { Err::<Arc<EgressSource>, ()>(()) })
                    .await
                    .ok(),
            );
        }
        (bare_t, expiring_t, t.elapsed())
    });
    println!(
        "cache-hit ratio: TtlCache hit {:.1} ns vs bare moka get {:.1} ns = {:.2}x (both clone the key, as a caller holding a &str would)",
        ours_t.as_nanos() as f64 / N as f64,
        bare_t.as_nanos() as f64 / N as f64,
        ours_t.as_secs_f64() / bare_t.as_secs_f64(),
    );
    println!(
        "cache-hit ratio: moka get with the same per-entry expiry {:.1} ns = {:.2}x bare; TtlCache over it = {:.2}x",
        expiring_t.as_nanos() as f64 / N as f64,
        expiring_t.as_secs_f64() / bare_t.as_secs_f64(),
        ours_t.as_secs_f64() / expiring_t.as_secs_f64(),
    );
}

fn misses(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("cache-miss");
    group.bench_function("load 1000 distinct keys into an empty cache", |b| {
        b.to_async(&rt).iter_batched(
            || TtlCache::<u32, Arc<EgressSource>>::new(ENTRIES),
            |cache| async move {
                for k in 0..1000u32 {
                    cache
                        .get_or_load(k, || async {
                            Ok::<_, ()>(Arc::new(EgressSource::named("ip")))
                        })
                        .await
                        .unwrap();
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    // 10 000 concurrent misses on one key: loads executed (must be 1).
    let loads = rt.block_on(async {
        let cache = TtlCache::<u32, Arc<EgressSource>>::new(ENTRIES);
        let tasks: Vec<_> = (0..10_000)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    cache
                        .get_or_load(1, || async {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok::<_, ()>(Arc::new(EgressSource::named("ip")))
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        cache.stats().loads
    });
    println!("cache-miss: 10000 concurrent misses on one key -> {loads} load(s) executed");
}

criterion_group!(benches, hit_vs_bare_moka, misses);
criterion_main!(benches);
