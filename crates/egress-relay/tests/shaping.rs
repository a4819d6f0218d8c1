//! Shaping sources (issue: shaping): selection rates, message rates, connection
//! limits, health suspensions — on one node and shared by two through a real Redis.

mod common;

use common::Embedded;
use egress_e2e::{
    by_client_addr, mx_entry, shaping_policy, swaks, three_connections, RedisCluster, RedisServer,
    ScriptedDestination, SharedRedis, SmtpSink,
};
use std::time::Duration;

/// Transaction log lines whose text mentions `what` (each attempt is noted once in
/// its transaction's line).
fn transactions_mentioning(log: &str, what: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(" transaction ") || l.contains("transaction:"))
        .filter(|l| l.contains(what))
        .count()
}

#[test]
fn a_selection_rate_holds_a_new_ip_to_its_allowance() {
    let sink = SmtpSink::start();
    let d = Embedded::start(&shaping_policy(
        &mx_entry(sink.addr),
        "{ name = 'new' }, { name = 'established' }",
        "new = { source_address = '127.0.0.2' }, established = { source_address = '127.0.0.3' }",
        "if source == 'new' then return kumo.make_egress_path { source_selection_rate = '3/hr' } end
         return kumo.make_egress_path {}",
        "",
    ));
    for _ in 0..20 {
        assert!(swaks(d.addr, "rcpt@dest.test", &[]).ok);
    }
    let counts = by_client_addr(&sink.wait_for(20));
    assert_eq!(counts.get("127.0.0.2"), Some(&3), "{counts:?}");
    assert_eq!(counts.get("127.0.0.3"), Some(&17), "{counts:?}");
    // The site reached the path config and the log.
    assert!(d.log().contains("site=\"[127.0.0.1]:"), "{}", d.log());
}

#[test]
fn a_message_rate_answers_451_with_the_delay() {
    let sink = SmtpSink::start();
    let d = Embedded::start(&shaping_policy(
        &mx_entry(sink.addr),
        "{ name = 'ip-2' }",
        "['ip-2'] = { source_address = '127.0.0.2' }",
        "return kumo.make_egress_path { max_message_rate = '5/min' }",
        "",
    ));
    for i in 0..5 {
        let s = swaks(d.addr, "rcpt@dest.test", &[]);
        assert!(s.ok, "message {i}: {}", s.transcript);
    }
    let s = swaks(d.addr, "rcpt@dest.test", &[]);
    assert!(!s.ok);
    let reply = s.first_reply("451");
    assert!(reply.starts_with("451 4.7.1"), "{}", s.transcript);
    assert!(
        reply.contains("max_message_rate 5/min") && reply.contains("next message may go in 1"),
        "{reply}"
    );
    assert_eq!(sink.wait_for(5).len(), 5);
}

#[test]
fn a_connection_limit_is_never_exceeded_and_everyone_is_served() {
    let dest = ScriptedDestination::slow(Duration::from_millis(300));
    let d = Embedded::start(&shaping_policy(
        &mx_entry(dest.addr),
        "{ name = 'ip-2' }",
        "['ip-2'] = { source_address = '127.0.0.2' }",
        "return kumo.make_egress_path { connection_limit = 2 }",
        "",
    ));
    let clients: Vec<_> = (0..5)
        .map(|i| {
            let addr = d.addr;
            std::thread::spawn(move || swaks(addr, &format!("rcpt{i}@dest.test"), &[]))
        })
        .collect();
    for c in clients {
        let s = c.join().unwrap();
        assert!(s.ok, "{}", s.transcript);
    }
    assert_eq!(dest.received().len(), 5);
    assert!(
        dest.max_concurrent() <= 2,
        "{} at once",
        dest.max_concurrent()
    );
}

#[test]
fn an_unplumbed_source_is_suspended_and_mail_goes_from_the_other() {
    let sink = SmtpSink::start();
    let d = Embedded::start(&shaping_policy(
        &mx_entry(sink.addr),
        "{ name = 'gone' }, { name = 'ip-2' }",
        "gone = { source_address = '192.0.2.1',
                  suspend_when_unplumbed = { trigger = 'Immediate', duration = '5m' } },
         ['ip-2'] = { source_address = '127.0.0.2' }",
        "return kumo.make_egress_path {}",
        "",
    ));
    for i in 0..10 {
        let s = swaks(d.addr, "rcpt@dest.test", &[]);
        assert!(s.ok, "message {i}: {}", s.transcript);
    }
    let counts = by_client_addr(&sink.wait_for(10));
    assert_eq!(counts.get("127.0.0.2"), Some(&10), "{counts:?}");
    let log = d.log();
    assert_eq!(log.matches("suspending egress source").count(), 1, "{log}");
    assert_eq!(
        transactions_mentioning(&log, "cannot bind local address 192.0.2.1"),
        1,
        "exactly one bind attempt, then the suspension: {log}"
    );
}

#[test]
fn a_dead_proxy_is_suspended_after_its_threshold() {
    let sink = SmtpSink::start();
    let dead = egress_e2e::free_port();
    let d = Embedded::start(&shaping_policy(
        &mx_entry(sink.addr),
        "{ name = 'socks' }, { name = 'ip-2' }",
        &format!(
            "socks = {{ socks5_proxy_server = '127.0.0.1:{dead}',
                       suspend_when_proxy_unhealthy = {{ trigger = {{ Threshold = '2/1m' }}, duration = '5m' }} }},
             ['ip-2'] = {{ source_address = '127.0.0.2' }}"
        ),
        "return kumo.make_egress_path {}",
        "",
    ));
    for i in 0..10 {
        let s = swaks(d.addr, "rcpt@dest.test", &[]);
        assert!(s.ok, "message {i}: {}", s.transcript);
    }
    assert_eq!(sink.wait_for(10).len(), 10);
    let log = d.log();
    assert_eq!(log.matches("suspending egress source").count(), 1, "{log}");
    assert!(log.contains("proxy unhealthy"), "{log}");
    assert_eq!(
        transactions_mentioning(&log, &format!("127.0.0.1:{dead}")),
        2,
        "two failures, then no more attempts: {log}"
    );
}

#[test]
fn two_nodes_share_rates_and_suspensions_through_redis() {
    share_rates_and_suspensions(RedisServer::start(), "redis://");
}

#[test]
fn two_nodes_share_rates_and_suspensions_through_a_redis_cluster() {
    share_rates_and_suspensions(RedisCluster::start(), "Redis Cluster redis://");
}

/// Two nodes on `redis`: a shared rate, a shared suspension; then the store (or
/// one master of it) fails mid-run: both keep relaying on their own numbers, say
/// so at WARN naming `store`, and every accepted message is delivered.
fn share_rates_and_suspensions(mut redis: impl SharedRedis, store: &str) {
    let sink = SmtpSink::start();
    let policy = shaping_policy(
        &mx_entry(sink.addr),
        "{ name = 'gone' }, { name = 'ip-2' }",
        "gone = { source_address = '192.0.2.1',
                  suspend_when_unplumbed = { trigger = 'Immediate', duration = '5m' } },
         ['ip-2'] = { source_address = '127.0.0.2' }",
        "return kumo.make_egress_path { max_message_rate = '10/hr' }",
        &redis.throttles_init(),
    );
    let a = Embedded::start(&policy);
    let b = Embedded::start(&policy);
    let mut accepted = 0;
    for i in 0..30 {
        let node = if i % 2 == 0 { &a } else { &b };
        if swaks(node.addr, "rcpt@dest.test", &[]).ok {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 10, "a shared 10/hr across both nodes");
    // Only one node ever tried the unplumbed source: the other saw the suspension.
    let binds = transactions_mentioning(&a.log(), "cannot bind local address 192.0.2.1")
        + transactions_mentioning(&b.log(), "cannot bind local address 192.0.2.1");
    assert_eq!(binds, 1, "{}\n{}", a.log(), b.log());

    // The store fails: both keep relaying on their own numbers, and say so.
    redis.fail();
    std::thread::sleep(Duration::from_millis(300));
    let (sa, sb) = (
        swaks(a.addr, "rcpt@dest.test", &[]),
        swaks(b.addr, "rcpt@dest.test", &[]),
    );
    assert!(sa.ok, "{}", sa.transcript);
    assert!(sb.ok, "{}", sb.transcript);
    let warned = |log: &str| {
        log.lines().any(|l| {
            l.contains("WARN") && l.contains(store) && l.contains("using this node's own limits")
        })
    };
    assert!(
        warned(&a.log()) || warned(&b.log()),
        "{}\n{}",
        a.log(),
        b.log()
    );
    // Nothing accepted was lost.
    assert_eq!(sink.wait_for(accepted + 2).len(), accepted + 2);
}

#[test]
fn a_connection_is_retired_after_max_deliveries_per_connection() {
    let dest = ScriptedDestination::start(false);
    let d = Embedded::start(&shaping_policy(
        &mx_entry(dest.addr),
        "{ name = 'ip-2' }",
        "['ip-2'] = { source_address = '127.0.0.2' }",
        "return kumo.make_egress_path { max_deliveries_per_connection = 2 }",
        "",
    ));
    for _ in 0..5 {
        assert!(swaks(d.addr, "rcpt@dest.test", &[]).ok);
    }
    assert_eq!(dest.received().len(), 5);
    assert_eq!(dest.connections(), 3, "2 + 2 + 1 messages per connection");
}

#[test]
fn a_shared_connection_limit_holds_across_nodes() {
    shared_connection_limit(&RedisServer::start());
}

#[test]
fn a_shared_connection_limit_holds_across_nodes_on_a_redis_cluster() {
    shared_connection_limit(&RedisCluster::start());
}

fn shared_connection_limit(redis: &impl SharedRedis) {
    let dest = ScriptedDestination::slow(Duration::from_millis(500));
    let policy = three_connections(&dest, redis);
    let (a, b) = (Embedded::start(&policy), Embedded::start(&policy));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let addr = if i % 2 == 0 { a.addr } else { b.addr };
            std::thread::spawn(move || swaks(addr, &format!("rcpt{i}@dest.test"), &[]))
        })
        .collect();
    for c in clients {
        let s = c.join().unwrap();
        assert!(s.ok, "{}", s.transcript);
    }
    assert_eq!(dest.received().len(), 8);
    assert!(
        dest.max_concurrent() <= 3,
        "{} at once",
        dest.max_concurrent()
    );
}
