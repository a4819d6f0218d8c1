//! Shared throttles against a real redis-server and a real Redis Cluster (three
//! masters): two `Throttles` are two nodes. Each behaviour is checked against
//! both stores with the same assertions.

use egress_e2e::{RedisCluster, RedisServer};
use egress_source::RedisParams;
use egress_throttle::{ConnectionLimit, Throttles};
use std::time::Duration;

fn two_nodes(redis: &RedisServer) -> (Throttles, Throttles) {
    (
        Throttles::with_redis(&redis.url()).unwrap(),
        Throttles::with_redis(&redis.url()).unwrap(),
    )
}

/// Two nodes on `cluster`, as `kumo.configure_redis_throttles { node = { … } }`
/// declares them.
fn two_cluster_nodes(cluster: &RedisCluster) -> (Throttles, Throttles) {
    let params: RedisParams =
        serde_json::from_value(serde_json::json!({ "node": cluster.urls() })).unwrap();
    assert!(params.is_cluster());
    (
        Throttles::with_redis_params(&params).unwrap(),
        Throttles::with_redis_params(&params).unwrap(),
    )
}

#[tokio::test]
async fn a_shared_rate_holds_across_nodes() {
    let redis = RedisServer::start();
    shared_rate(two_nodes(&redis)).await;
}

#[tokio::test]
async fn a_shared_rate_holds_across_nodes_on_a_cluster() {
    let cluster = RedisCluster::start();
    shared_rate(two_cluster_nodes(&cluster)).await;
}

async fn shared_rate((a, b): (Throttles, Throttles)) {
    let spec = "10/hr".parse().unwrap();
    let mut allowed = 0;
    for i in 0..30 {
        let node = if i % 2 == 0 { &a } else { &b };
        if node.throttle("ip-1@site", &spec, true).await.allowed {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10);
    assert_eq!(a.fallbacks() + b.fallbacks(), 0);
    // Not shared: each node counts on its own.
    let local = "1/hr".parse().unwrap();
    assert!(a.throttle("only-here", &local, false).await.allowed);
    assert!(b.throttle("only-here", &local, false).await.allowed);
}

#[tokio::test]
async fn a_shared_connection_limit_holds_and_dead_nodes_free_their_slots() {
    let redis = RedisServer::start();
    shared_connection_limit(two_nodes(&redis)).await;
}

#[tokio::test]
async fn a_shared_connection_limit_holds_on_a_cluster() {
    let cluster = RedisCluster::start();
    shared_connection_limit(two_cluster_nodes(&cluster)).await;
}

async fn shared_connection_limit((a, b): (Throttles, Throttles)) {
    let limit: ConnectionLimit = "3".parse().unwrap();
    let long = Duration::from_secs(60);
    let l1 = a.acquire("ip-1@site", limit, long).await.unwrap();
    let _l2 = b.acquire("ip-1@site", limit, long).await.unwrap();
    // A node that dies: its lease is short and never renewed.
    let short = Duration::from_millis(800);
    let _dead = a.acquire("ip-1@site", limit, short).await.unwrap();
    assert!(
        b.acquire("ip-1@site", limit, long).await.is_none(),
        "limit 3 is full"
    );
    assert_eq!(b.in_use("ip-1@site", limit).await, 3);
    a.release(&l1).await;
    let l4 = b
        .acquire("ip-1@site", limit, long)
        .await
        .expect("a released slot");
    assert!(a.acquire("ip-1@site", limit, long).await.is_none());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        a.acquire("ip-1@site", limit, long).await.is_some(),
        "the dead node's lease expired"
    );
    b.renew(&l4, long).await;
    // local: limits never go to Redis.
    let local: ConnectionLimit = "local:1".parse().unwrap();
    let held = a.acquire("x", local, long).await.unwrap();
    assert!(!held.shared);
    assert!(b.acquire("x", local, long).await.is_some());
}

#[tokio::test]
async fn a_suspension_raised_on_one_node_is_honoured_by_another() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis);
    a.suspend("ip-1", "unplumbed: 192.0.2.1", Duration::from_secs(30))
        .await;
    let seen = b.suspension("ip-1").await.expect("shared suspension");
    assert_eq!(seen.reason, "unplumbed: 192.0.2.1");
    assert!(seen.until > std::time::SystemTime::now() + Duration::from_secs(25));
    b.resume("ip-1").await;
    a.resume("ip-1").await;
    assert!(b.suspension("ip-1").await.is_none());
}

#[tokio::test]
async fn every_node_lists_the_same_suspensions_and_sees_the_same_capacity() {
    let redis = RedisServer::start();
    same_suspensions_and_capacity(two_nodes(&redis)).await;
}

#[tokio::test]
async fn every_node_lists_the_same_suspensions_on_a_cluster() {
    let cluster = RedisCluster::start();
    same_suspensions_and_capacity(two_cluster_nodes(&cluster)).await;
}

async fn same_suspensions_and_capacity((a, b): (Throttles, Throttles)) {
    a.suspend(
        "ip-1",
        "admin: blocked at example.net",
        Duration::from_secs(60),
    )
    .await;
    b.suspend(
        "ip-2->mx.example.com",
        "admin: complaint",
        Duration::from_secs(30),
    )
    .await;
    for node in [&a, &b] {
        let mut list = node.suspensions().await;
        list.sort_by(|x, y| x.key.cmp(&y.key));
        let keys: Vec<(&str, &str)> = list
            .iter()
            .map(|s| (s.key.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("ip-1", "admin: blocked at example.net"),
                ("ip-2->mx.example.com", "admin: complaint")
            ]
        );
    }
    b.resume("ip-1").await;
    a.resume("ip-1").await;
    assert_eq!(a.suspensions().await.len(), 1);

    let spec = "5/hr".parse().unwrap();
    assert_eq!(b.capacity("ip-1@site", &spec, true).await.available, 5);
    for _ in 0..2 {
        assert!(a.throttle("ip-1@site", &spec, true).await.allowed);
    }
    let seen = b.capacity("ip-1@site", &spec, true).await;
    assert_eq!((seen.available, seen.burst), (3, 5));
    assert_eq!(a.fallbacks() + b.fallbacks(), 0);
}

#[tokio::test]
async fn when_redis_goes_away_each_node_falls_back_to_its_own_numbers() {
    let mut redis = RedisServer::start();
    let (a, _) = two_nodes(&redis);
    let spec = "2/hr".parse().unwrap();
    assert!(a.throttle("k", &spec, true).await.allowed);
    redis.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Mail keeps flowing on this node's own count (which starts afresh).
    assert!(a.throttle("k", &spec, true).await.allowed);
    assert!(a.throttle("k", &spec, true).await.allowed);
    assert!(!a.throttle("k", &spec, true).await.allowed);
    assert!(a.fallbacks() >= 1);
    let limit: ConnectionLimit = "1".parse().unwrap();
    let lease = a.acquire("c", limit, Duration::from_secs(5)).await.unwrap();
    assert!(!lease.shared);
}

/// A master dies: the keys it owned (and, once the cluster notices, all of
/// them) cannot be reached; each node uses its own numbers and says so.
#[tokio::test]
async fn when_a_cluster_master_dies_each_node_falls_back_to_its_own_numbers() {
    let mut cluster = RedisCluster::start();
    let (a, _) = two_cluster_nodes(&cluster);
    let spec = "1000/hr".parse().unwrap();
    // Keys spread over the three masters' slots.
    let keys: Vec<String> = (0..30).map(|i| format!("ip-{i}@site")).collect();
    for k in &keys {
        assert!(a.throttle(k, &spec, true).await.allowed);
    }
    assert_eq!(a.fallbacks(), 0);
    cluster.kill(0);
    for k in &keys {
        assert!(
            a.throttle(k, &spec, true).await.allowed,
            "mail keeps flowing"
        );
    }
    assert!(a.fallbacks() >= 1, "some keys lived on the dead master");
    let limit: ConnectionLimit = "1".parse().unwrap();
    assert!(a
        .acquire("c", limit, Duration::from_secs(5))
        .await
        .is_some());
}

#[tokio::test]
async fn an_override_set_on_one_node_is_listed_by_every_node_and_not_as_a_suspension() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis);
    a.set_override(
        "ip-2->mx.example",
        "max_message_rate",
        "\"10/minute\"",
        Duration::from_secs(600),
    )
    .await;
    for node in [&a, &b] {
        let found = node.overrides().await;
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].scope, "ip-2->mx.example");
        assert_eq!(found[0].name, "max_message_rate");
        assert_eq!(found[0].value, "\"10/minute\"");
        assert!(node.suspensions().await.is_empty());
    }
    b.end_override("ip-2->mx.example", "max_message_rate").await;
    assert!(a.overrides().await.is_empty());
    // Without Redis, the same on one node.
    let local = Throttles::local();
    local
        .set_override("s->d", "connection_limit", "1", Duration::from_secs(60))
        .await;
    assert_eq!(local.overrides().await[0].value, "1");
    assert!(local.suspensions().await.is_empty());
}
