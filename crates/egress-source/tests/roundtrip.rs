//! Property tests: JSON round trip of every type, and exact WRR proportions.

use egress_source::{
    EgressPathConfig, EgressPool, EgressPoolEntry, EgressSource, HostPort, MxListEntry,
    QueueConfig, SuspensionRule, ThrottleSpec, Trigger, WeightedRoundRobin,
};
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<std::net::Ipv4Addr>().prop_map(IpAddr::V4),
        any::<std::net::Ipv6Addr>().prop_map(IpAddr::V6)
    ]
}

fn host_port() -> impl Strategy<Value = HostPort> {
    (
        prop_oneof![
            ip().prop_map(|i| i.to_string()),
            "[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,5}){0,2}"
        ],
        1u16..,
    )
        .prop_map(|(host, port)| HostPort { host, port })
}

fn opt<T: std::fmt::Debug + Clone>(
    s: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<T>> {
    prop::option::of(s)
}

fn source() -> impl Strategy<Value = EgressSource> {
    (
        "[a-zA-Z0-9 _-]{1,20}",
        opt(ip()),
        opt("[a-z]{1,10}\\.example\\.com"),
        opt(1u16..),
        (opt(host_port()), opt(ip()), opt(host_port()), opt(ip())),
        (opt(".{0,20}"), opt(".{0,20}")),
        0u64..100_000,
    )
        .prop_map(
            |(name, source_address, ehlo, port, proxies, creds, ttl)| EgressSource {
                name,
                source_address,
                ehlo_domain: ehlo,
                remote_port: port,
                ha_proxy_server: proxies.0,
                ha_proxy_source_address: proxies.1,
                socks5_proxy_server: proxies.2,
                socks5_proxy_source_address: proxies.3,
                socks5_proxy_username: creds.0,
                socks5_proxy_password: creds.1,
                ttl: Duration::from_secs(ttl),
                // Both rule forms, chosen by the ttl so the case stays one tuple.
                suspend_when_unplumbed: (ttl % 3 == 1).then(|| SuspensionRule {
                    trigger: Trigger::Immediate,
                    duration: Duration::from_secs(ttl),
                }),
                suspend_when_proxy_unhealthy: (ttl % 2 == 1).then(|| SuspensionRule {
                    trigger: Trigger::Threshold(ThrottleSpec {
                        limit: ttl % 7 + 1,
                        period: Duration::from_secs(60 * (ttl % 5 + 1)),
                        max_burst: None,
                    }),
                    duration: Duration::from_secs(300),
                }),
            },
        )
}

proptest! {
    #[test]
    fn source_json_round_trip(src in source()) {
        let json = serde_json::to_string(&src).unwrap();
        let back: EgressSource = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, src);
    }

    #[test]
    fn pool_json_round_trip(name in "[a-z]{1,8}", weights in prop::collection::vec(0u32..1000, 0..8), ttl in 0u64..10_000) {
        let pool = EgressPool {
            name,
            entries: weights.iter().enumerate().map(|(i, w)| EgressPoolEntry { name: format!("ip-{i}"), weight: *w }).collect(),
            ttl: Duration::from_secs(ttl),
        };
        let back: EgressPool = serde_json::from_str(&serde_json::to_string(&pool).unwrap()).unwrap();
        prop_assert_eq!(back, pool);
    }

    #[test]
    fn queue_json_round_trip(pool in "[a-z]{1,8}", hosts in prop::collection::vec((host_port(), any::<bool>(), ip(), "[a-z]{1,8}"), 0..5), retry in 1u64..100_000, max_retry in proptest::option::of(1u64..1_000_000), secure in any::<bool>()) {
        let mx_list = hosts.into_iter().map(|(hp, named, addr, name)| if named {
            MxListEntry::Named { name, addr, port: Some(hp.port) }
        } else {
            MxListEntry::Host { host: hp.host, port: Some(hp.port) }
        }).collect();
        let q = QueueConfig {
            egress_pool: pool,
            protocol: Some(egress_source::DeliveryProtocol { smtp: Some(egress_source::SmtpProtocol { mx_list, treat_mx_list_as_secure: secure }) }),
            retry_interval: std::time::Duration::from_secs(retry),
            max_retry_interval: max_retry.map(std::time::Duration::from_secs),
            ..QueueConfig::default()
        };
        let back: QueueConfig = serde_json::from_str(&serde_json::to_string(&q).unwrap()).unwrap();
        prop_assert_eq!(back, q);
    }

    /// Over any whole number of cycles, each entry gets exactly its share; weight 0 gets none.
    #[test]
    fn wrr_exact_proportions(weights in prop::collection::vec(0u32..50, 1..8), cycles in 1u32..4) {
        prop_assume!(weights.iter().any(|w| *w > 0));
        let wrr = WeightedRoundRobin::new("p", weights.iter().copied().enumerate()).unwrap();
        let total: u32 = weights.iter().sum();
        let mut counts: HashMap<usize, u32> = HashMap::new();
        for _ in 0..total * cycles {
            *counts.entry(*wrr.pick()).or_default() += 1;
        }
        for (i, w) in weights.iter().enumerate() {
            prop_assert_eq!(counts.get(&i).copied().unwrap_or(0), w * cycles, "entry {} of {:?}", i, weights);
        }
    }
}

#[test]
fn wrr_5_2_3_is_50_20_30_of_each_100() {
    let wrr = WeightedRoundRobin::new("p", [("a", 5), ("b", 2), ("c", 3)]).unwrap();
    for _ in 0..5 {
        let mut counts: HashMap<&str, u32> = HashMap::new();
        for _ in 0..100 {
            *counts.entry(wrr.pick()).or_default() += 1;
        }
        assert_eq!((counts["a"], counts["b"], counts["c"]), (50, 20, 30));
    }
}

#[test]
fn wrr_is_shared_across_threads() {
    let wrr = WeightedRoundRobin::new("p", [("a", 2), ("b", 1)]).unwrap();
    let counts = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| (0..3000).filter(|_| *wrr.pick() == "a").count()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum::<usize>()
    });
    assert_eq!(counts, 8000);
}

/// Each type's list of accepted keys matches the keys it serializes (so the
/// strict-key check can never refuse a field the type has).
#[test]
fn accepted_keys_match_serialized_keys() {
    fn keys(v: serde_json::Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }
    let full = EgressSource {
        source_address: Some("10.0.0.1".parse().unwrap()),
        ehlo_domain: Some("a".into()),
        remote_port: Some(1),
        ha_proxy_server: Some("h:1".parse().unwrap()),
        ha_proxy_source_address: Some("10.0.0.2".parse().unwrap()),
        socks5_proxy_server: Some("s:1".parse().unwrap()),
        socks5_proxy_source_address: Some("10.0.0.3".parse().unwrap()),
        socks5_proxy_username: Some("u".into()),
        socks5_proxy_password: Some("p".into()),
        ..EgressSource::named("n")
    };
    let json = serde_json::to_value(&full).unwrap();
    for key in keys(json.clone()) {
        let mut one = serde_json::json!({"name": "n"});
        one[&key] = json[&key].clone();
        serde_json::from_value::<EgressSource>(one).unwrap_or_else(|e| panic!("{key}: {e}"));
    }
    assert_eq!(keys(json).len(), 11);
    let path = serde_json::to_value(EgressPathConfig {
        ehlo_domain: Some("a".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        keys(path.clone()).len(),
        27,
        "the keys with a default (booleans such as enable_dane and enable_chunking, rset_timeout, batch size, lookup strategy, failures before delay) are always written"
    );
    serde_json::from_value::<EgressPathConfig>(path).unwrap();
}
