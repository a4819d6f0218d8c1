//! The shared stores a fleet runs: one `redis-server`, or a Redis Cluster of three
//! masters made with `redis-cli --cluster create`. Nothing is persisted; each is
//! stopped on drop.

use crate::{free_port, require, wait_listening, Peer};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A store nodes share limits through: what the policy says to reach it, and a
/// way to make it fail.
pub trait SharedRedis {
    /// The `kumo.configure_redis_throttles { … }` call that reaches it.
    fn throttles_init(&self) -> String;
    /// Takes (part of) it away: the one server, or one master of a cluster.
    fn fail(&mut self);
}

/// `redis-server` on `127.0.0.1:<free port>`, nothing persisted, stopped on drop
/// (and by [`stop`](Self::stop), to test what happens when Redis goes away).
pub struct RedisServer {
    /// Where it listens.
    pub addr: SocketAddr,
    peer: Option<Peer>,
}

fn redis_server(port: u16, extra: &[&str]) -> Peer {
    let mut cmd = Command::new(require("redis-server"));
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .args(extra);
    let mut peer = Peer::spawn("redis-server", &mut cmd);
    wait_listening(
        "redis-server",
        SocketAddr::from(([127, 0, 0, 1], port)),
        &mut peer,
    );
    peer
}

impl RedisServer {
    /// Starts one.
    pub fn start() -> RedisServer {
        let port = free_port();
        RedisServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            peer: Some(redis_server(port, &[])),
        }
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Stops it now.
    pub fn stop(&mut self) {
        self.peer.take();
    }
}

impl SharedRedis for RedisServer {
    fn throttles_init(&self) -> String {
        format!(
            "kumo.configure_redis_throttles {{ node = '{}' }}",
            self.url()
        )
    }

    fn fail(&mut self) {
        self.stop();
    }
}

/// Three cluster-enabled `redis-server`s joined by `redis-cli --cluster create`
/// (three masters, no replicas), ready once every node says `cluster_state:ok`.
/// Node timeout 1 s, so losing a master is noticed quickly.
pub struct RedisCluster {
    /// The masters' addresses.
    pub nodes: Vec<SocketAddr>,
    peers: Vec<Option<Peer>>,
    _dir: tempfile::TempDir,
}

/// A port whose cluster bus (port + 10000) is free too, both below 32768 where
/// Linux hands out ephemeral ports: another test's bind(0) or outgoing
/// connection never takes one between our check and redis-server's bind.
fn cluster_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Spread over the range by process, so parallel test binaries rarely meet.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let offset = (std::process::id() % 1200) as u16 * 10;
    loop {
        let port = 10000 + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % 12000;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10000) {
            return port;
        }
    }
}

impl RedisCluster {
    /// Starts the three masters and creates the cluster.
    pub fn start() -> RedisCluster {
        let cli = require("redis-cli");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes = Vec::new();
        let mut peers = Vec::new();
        while nodes.len() < 3 {
            let port = cluster_port();
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            let mut peer = redis_server(
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf.display().to_string(),
                    "--cluster-node-timeout",
                    "1000",
                    "--dir",
                    &dir.path().display().to_string(),
                ],
            );
            // Lost the port to another process after all (what answered was not
            // ours): take the next one.
            if peer.wait_exit(Duration::from_millis(100)) {
                continue;
            }
            peers.push(Some(peer));
            nodes.push(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        let out = Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| n.to_string()))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster {
            nodes,
            peers,
            _dir: dir,
        };
        cluster.wait_state(&cli, "ok");
        cluster
    }

    /// Waits until every running node reports `cluster_state:STATE`.
    fn wait_state(&self, cli: &Path, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let want = format!("cluster_state:{state}");
        loop {
            let all = self
                .nodes
                .iter()
                .zip(&self.peers)
                .filter(|(_, p)| p.is_some())
                .all(|(n, _)| {
                    Command::new(cli)
                        .args(["-p", &n.port().to_string(), "cluster", "info"])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&want))
                        .unwrap_or(false)
                });
            if all {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster did not reach {want} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("redis://{n}/")).collect()
    }

    /// Kills master `i` (SIGKILL, as a crash).
    pub fn kill(&mut self, i: usize) {
        self.peers[i].take();
    }
}

impl SharedRedis for RedisCluster {
    fn throttles_init(&self) -> String {
        let urls: Vec<String> = self.urls().iter().map(|u| format!("'{u}'")).collect();
        format!(
            "kumo.configure_redis_throttles {{ node = {{ {} }} }}",
            urls.join(", ")
        )
    }

    /// Kills a master and waits until the others say the cluster has failed
    /// (`cluster_state:fail`: with no replica, its slots are lost, and a cluster
    /// that requires full coverage refuses every key).
    fn fail(&mut self) {
        self.kill(0);
        self.wait_state(&require("redis-cli"), "fail");
    }
}
