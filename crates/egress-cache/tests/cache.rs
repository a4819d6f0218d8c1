//! Deterministic tests: TTLs of tens of milliseconds, assertions on counts and order.

use egress_cache::{HasTtl, TtlCache};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
struct Def {
    version: u32,
    ttl: Duration,
}

impl HasTtl for Def {
    fn ttl(&self) -> Duration {
        self.ttl
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn load(
    cache: &TtlCache<&'static str, Def>,
    key: &'static str,
    ttl: Duration,
    calls: &AtomicU32,
) -> Def {
    cache
        .get_or_load(key, || async {
            let version = calls.fetch_add(1, Ordering::SeqCst) + 1;
            Ok::<_, String>(Def { version, ttl })
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn entries_expire_after_their_own_ttl() {
    let cache = TtlCache::new(100);
    let (short_calls, long_calls) = (AtomicU32::new(0), AtomicU32::new(0));
    assert_eq!(load(&cache, "short", ms(50), &short_calls).await.version, 1);
    assert_eq!(
        load(&cache, "long", Duration::from_secs(60), &long_calls)
            .await
            .version,
        1
    );
    // Poll until the short entry has expired (no fixed sleep of the TTL itself).
    let mut reloaded = 0;
    for _ in 0..200 {
        tokio::time::sleep(ms(20)).await;
        reloaded = load(&cache, "short", ms(50), &short_calls).await.version;
        if reloaded > 1 {
            break;
        }
    }
    assert!(reloaded >= 2, "short entry never expired");
    // The long one is still the first load.
    assert_eq!(
        load(&cache, "long", Duration::from_secs(60), &long_calls)
            .await
            .version,
        1
    );
    assert_eq!(long_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_misses_load_once() {
    let cache: TtlCache<&'static str, Def> = TtlCache::new(100);
    let calls = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..10_000)
        .map(|_| {
            let (cache, calls) = (cache.clone(), calls.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load("hot", || async move {
                        // Slow enough that every caller arrives while the load runs.
                        tokio::time::sleep(ms(200)).await;
                        calls.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, String>(Def {
                            version: 7,
                            ttl: Duration::from_secs(60),
                        })
                    })
                    .await
            })
        })
        .collect();
    for task in futures::future::join_all(tasks).await {
        assert_eq!(task.unwrap().unwrap().version, 7);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let stats = cache.stats();
    assert_eq!(stats.loads, 1);
    assert_eq!(stats.hits + stats.misses, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_reach_every_waiter_and_are_not_cached() {
    let cache: TtlCache<&'static str, Def> = TtlCache::new(100);
    let calls = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (cache, calls) = (cache.clone(), calls.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load("broken", || async move {
                        tokio::time::sleep(ms(100)).await;
                        calls.fetch_add(1, Ordering::SeqCst);
                        Err::<Def, _>("policy error: attempt to index a nil value".to_string())
                    })
                    .await
            })
        })
        .collect();
    for task in futures::future::join_all(tasks).await {
        let err = task.unwrap().unwrap_err();
        assert!(err.contains("attempt to index a nil value"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The next call loads again, and can succeed.
    let ok = cache
        .get_or_load("broken", || async {
            Ok::<_, String>(Def {
                version: 2,
                ttl: Duration::from_secs(60),
            })
        })
        .await
        .unwrap();
    assert_eq!(ok.version, 2);
    let stats = cache.stats();
    assert_eq!((stats.loads, stats.load_errors), (2, 1));
}

#[tokio::test]
async fn capacity_is_respected_and_invalidate_all_forces_reloads() {
    let cache = TtlCache::new(50);
    let calls = AtomicU32::new(0);
    let keys: Vec<&'static str> = (0..500).map(|i| &*format!("k{i}").leak()).collect();
    for key in &keys {
        load(&cache, key, Duration::from_secs(60), &calls).await;
    }
    cache.sync().await;
    let entries = cache.stats().entries;
    assert!(entries <= 50, "{entries} entries in a cache of 50");
    assert!(entries > 0);

    let before = calls.load(Ordering::SeqCst);
    load(&cache, "pinned", Duration::from_secs(60), &calls).await;
    load(&cache, "pinned", Duration::from_secs(60), &calls).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 1,
        "second call is a hit"
    );
    cache.invalidate_all();
    load(&cache, "pinned", Duration::from_secs(60), &calls).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 2,
        "invalidate_all forces a reload"
    );
    cache.invalidate(&"pinned").await;
    load(&cache, "pinned", Duration::from_secs(60), &calls).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 3,
        "invalidate forces a reload"
    );
}

#[tokio::test]
async fn source_ttl_comes_from_the_definition() {
    let mut src = egress_source::EgressSource::named("ip-1");
    src.ttl = Duration::from_secs(300);
    assert_eq!(Arc::new(src).ttl(), Duration::from_secs(300));
    assert_eq!(
        egress_source::EgressPool::unspecified().ttl(),
        Duration::from_secs(60)
    );
}
