//! Shaping across nodes when a node dies (issue: shaping): the one shaping test that
//! needs a process to kill; the rest run in egress-relay's tests.

mod common;

use common::Egressd;
use egress_e2e::{swaks, three_connections, RedisServer, ScriptedDestination};
use std::time::Duration;

#[test]
fn a_killed_node_frees_its_connection_slots_within_the_lease_time() {
    let redis = RedisServer::start();
    let dest = ScriptedDestination::slow(Duration::from_secs(1));
    let policy = three_connections(&dest, &redis);
    let (a, b) = (Egressd::start(&policy), Egressd::start(&policy));
    // Node A takes all three slots (three overlapping transactions), keeps its
    // sessions idle, and dies without giving them back.
    let clients: Vec<_> = (0..3)
        .map(|i| {
            let addr = a.addr;
            std::thread::spawn(move || swaks(addr, &format!("a{i}@dest.test"), &[]))
        })
        .collect();
    for c in clients {
        assert!(c.join().unwrap().ok);
    }
    assert_eq!(dest.connections(), 3);
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &a.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Node B waits for the dead node's leases (15 s) to lapse, then delivers.
    let started = std::time::Instant::now();
    let s = swaks(b.addr, "after@dest.test", &[]);
    assert!(s.ok, "{}", s.transcript);
    let waited = started.elapsed();
    assert!(
        waited > Duration::from_secs(3) && waited < Duration::from_secs(40),
        "B should have waited for A's slots to lapse, took {waited:?}"
    );
}
