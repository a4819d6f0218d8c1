//! The shared store: Redis or a Redis Cluster, with every decision made by a
//! script on the server (so it is atomic across nodes and uses the server's
//! clock, not each node's).
//!
//! GCRA runs as a Lua script on a stock redis-server; the redis-cell module's
//! `CL.THROTTLE` is not required. Connection leases are a sorted set per key whose
//! scores are expiry times: a node that dies stops renewing, and its slots free
//! themselves when the lease time passes. Suspensions are keys with a TTL, listed
//! in an index (a sorted set by expiry) so that listing them needs no `SCAN` of
//! every cluster node. Each script touches one key, so in a cluster every
//! decision is made on the one master that owns its slot.

use crate::gcra::{capacity, Capacity, Cell, Decision};
use crate::{Store, StoreError, StoreFuture, Suspension, ThrottleSpec};
use egress_source::RedisParams;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Mutex;

/// After a failed connect, how long to wait before trying again.
const RECONNECT_PAUSE: Duration = Duration::from_secs(2);

/// The suspensions in force, by expiry (ms since the epoch): the index listing reads.
const SUSPENSION_INDEX: &str = "egress:suspensions";

const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then
  return {0, string.format('%.0f', tat - tolerance - now)}
end
local new = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
return {1, '0'}
"#;

const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], string.format('%.0f', now + tonumber(ARGV[2])), ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) / 1000) + 1000)
return 1
"#;

const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', now + tonumber(ARGV[1])), ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) / 1000) + 1000)
return 1
"#;

const IN_USE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
return redis.call('ZCARD', KEYS[1])
"#;

/// The stored TAT (or -1) and the server's clock, for a capacity that counts nothing.
const PEEK: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
return {redis.call('GET', KEYS[1]) or '-1', string.format('%.0f', now)}
"#;

/// One Redis (a multiplexed connection that reconnects by itself) or a Redis
/// Cluster (a connection per master, following slot moves).
#[derive(Clone)]
enum Connection {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Node(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Node(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Node(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// How to make a [`Connection`].
enum Client {
    Node(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// Throttles, leases and suspensions shared by every node using the same Redis
/// (or Redis Cluster).
pub struct RedisStore {
    params: RedisParams,
    /// The nodes, for messages (no passwords).
    described: String,
    client: Client,
    connection: Mutex<(Option<Connection>, Option<Instant>)>,
    gcra: redis::Script,
    acquire: redis::Script,
    renew: redis::Script,
    in_use: redis::Script,
    peek: redis::Script,
    next_id: AtomicU64,
}

impl RedisStore {
    /// A store for one Redis at `url` (`redis://127.0.0.1:6379/`).
    pub fn new(url: &str) -> Result<RedisStore, StoreError> {
        Self::open(&RedisParams::single(url))
    }

    /// A store for what `kumo.configure_redis_throttles` declares: one Redis, or a
    /// Redis Cluster (several nodes, or `cluster = true`). Nothing is connected
    /// yet: a Redis that is down at start is the same as one that goes down later.
    pub fn open(params: &RedisParams) -> Result<RedisStore, StoreError> {
        let described = params.describe();
        // A policy's parameters were checked where it declared them; an
        // embedder's are checked here (an empty node list has no first node).
        params.validate().map_err(|message| StoreError {
            store: described.clone(),
            message,
        })?;
        let bad_url = |e: redis::RedisError| StoreError {
            store: described.clone(),
            message: format!(
                "not a Redis URL ({e}); expected e.g. redis://127.0.0.1:6379/ (or a list of \
                 them for a Redis Cluster)"
            ),
        };
        let client = if params.is_cluster() {
            let mut builder = redis::cluster::ClusterClientBuilder::new(params.nodes().to_vec())
                .connection_timeout(params.connect_timeout())
                .response_timeout(params.response_timeout())
                // A round trip is bounded by response_timeout as a whole: a few
                // quick retries follow a moved slot, not a dead master.
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(100);
            if let Some(user) = &params.username {
                builder = builder.username(user.clone());
            }
            if let Some(password) = &params.password {
                builder = builder.password(password.clone());
            }
            if params.read_from_replicas {
                builder = builder.read_from_replicas();
            }
            Client::Cluster(builder.build().map_err(bad_url)?)
        } else {
            if params.username.is_some() || params.password.is_some() {
                tracing::warn!(
                    node = %described,
                    "kumo.configure_redis_throttles: username and password are for a Redis \
                     Cluster and are not used for one node (as in KumoMTA); put them in the URL: \
                     redis://user:password@host:port/"
                );
            }
            Client::Node(redis::Client::open(params.nodes()[0].as_str()).map_err(bad_url)?)
        };
        Ok(RedisStore {
            params: params.clone(),
            described,
            client,
            connection: Mutex::new((None, None)),
            gcra: redis::Script::new(GCRA),
            acquire: redis::Script::new(ACQUIRE),
            renew: redis::Script::new(RENEW),
            in_use: redis::Script::new(IN_USE),
            peek: redis::Script::new(PEEK),
            next_id: AtomicU64::new(0),
        })
    }

    /// One PING round trip on the connection the store uses (its health, and the
    /// baseline its benchmark compares a throttle check with).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut con = self.connection().await?;
        let cmd = redis::cmd("PING");
        let _: String = self.timed("ping", cmd.query_async(&mut con)).await?;
        Ok(())
    }

    /// The node URLs (without passwords), for messages.
    pub fn url(&self) -> &str {
        &self.described
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.client, Client::Cluster(_))
    }

    fn error(&self, message: impl std::fmt::Display) -> StoreError {
        StoreError {
            store: if self.is_cluster() {
                format!("Redis Cluster {}", self.described)
            } else {
                self.described.clone()
            },
            message: message.to_string(),
        }
    }

    async fn connection(&self) -> Result<Connection, StoreError> {
        let wait = self.params.wait_timeout();
        let mut slot = match tokio::time::timeout(wait, self.connection.lock()).await {
            Ok(slot) => slot,
            Err(_) => {
                return Err(self.error(format!(
                    "no connection within wait_timeout ({})",
                    humanize(wait)
                )))
            }
        };
        if let Some(connection) = &slot.0 {
            return Ok(connection.clone());
        }
        if let Some(failed) = slot.1 {
            if failed.elapsed() < RECONNECT_PAUSE {
                return Err(self.error("unreachable (retrying shortly)"));
            }
        }
        let connect = async {
            match &self.client {
                Client::Node(client) => {
                    let config = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(self.params.connect_timeout())
                        .set_response_timeout(self.params.response_timeout())
                        .set_number_of_retries(1);
                    client
                        .get_connection_manager_with_config(config)
                        .await
                        .map(Connection::Node)
                }
                Client::Cluster(client) => {
                    client.get_async_connection().await.map(Connection::Cluster)
                }
            }
        };
        match tokio::time::timeout(wait, connect).await {
            Ok(Ok(connection)) => {
                *slot = (Some(connection.clone()), None);
                Ok(connection)
            }
            Ok(Err(e)) => {
                slot.1 = Some(Instant::now());
                Err(self.error(format!("cannot connect: {e}")))
            }
            Err(_) => {
                slot.1 = Some(Instant::now());
                Err(self.error(format!(
                    "cannot connect: no answer within wait_timeout ({})",
                    humanize(wait)
                )))
            }
        }
    }

    /// Waits for one command or script, within `response_timeout`.
    async fn timed<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let limit = self.params.response_timeout();
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(format!("{what}: {e}"))),
            Err(_) => Err(self.error(format!(
                "{what}: no answer within response_timeout ({})",
                humanize(limit)
            ))),
        }
    }
}

fn humanize(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn key(kind: &str, key: &str) -> String {
    format!("egress:{kind}:{key}")
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RedisStore {
    /// The suspension under `k`, if in force: its reason and how long it has left
    /// (GET and PTTL of one key: one slot, one round trip).
    async fn read_suspension(
        &self,
        con: &mut Connection,
        k: &str,
    ) -> Result<Option<Suspension>, StoreError> {
        let rkey = key("suspend", k);
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&rkey).cmd("PTTL").arg(&rkey);
        let (reason, pttl): (Option<String>, i64) =
            self.timed("suspension", pipe.query_async(con)).await?;
        Ok(reason.filter(|_| pttl > 0).map(|reason| Suspension {
            key: k.to_owned(),
            reason,
            until: SystemTime::now() + Duration::from_millis(pttl as u64),
        }))
    }
}

impl Store for RedisStore {
    fn throttle<'a>(&'a self, k: &'a str, spec: &'a ThrottleSpec) -> StoreFuture<'a, Decision> {
        Box::pin(async move {
            let cell = Cell::of(spec);
            let rkey = key("rate", k);
            let mut con = self.connection().await?;
            let mut call = self.gcra.prepare_invoke();
            call.key(&rkey).arg(cell.interval).arg(cell.tolerance);
            let (allowed, wait): (i64, String) =
                self.timed("throttle", call.invoke_async(&mut con)).await?;
            Ok(Decision {
                allowed: allowed == 1,
                retry_after: Duration::from_micros(wait.parse().unwrap_or(0)),
            })
        })
    }

    fn acquire<'a>(
        &'a self,
        k: &'a str,
        limit: u64,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let id = format!(
                "{}-{}-{}",
                std::process::id(),
                self.next_id.fetch_add(1, Ordering::Relaxed),
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            );
            let rkey = key("lease", k);
            let mut con = self.connection().await?;
            let mut call = self.acquire.prepare_invoke();
            call.key(&rkey)
                .arg(limit)
                .arg(ttl.as_micros() as u64)
                .arg(&id);
            let got: i64 = self.timed("acquire", call.invoke_async(&mut con)).await?;
            Ok((got == 1).then_some(id))
        })
    }

    fn renew<'a>(&'a self, k: &'a str, id: &'a str, ttl: Duration) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let rkey = key("lease", k);
            let mut con = self.connection().await?;
            let mut call = self.renew.prepare_invoke();
            call.key(&rkey).arg(ttl.as_micros() as u64).arg(id);
            let _: i64 = self.timed("renew", call.invoke_async(&mut con)).await?;
            Ok(())
        })
    }

    fn release<'a>(&'a self, k: &'a str, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let rkey = key("lease", k);
            let mut con = self.connection().await?;
            let mut cmd = redis::cmd("ZREM");
            cmd.arg(&rkey).arg(id);
            let _: i64 = self.timed("release", cmd.query_async(&mut con)).await?;
            Ok(())
        })
    }

    fn in_use<'a>(&'a self, k: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let rkey = key("lease", k);
            let mut con = self.connection().await?;
            let mut call = self.in_use.prepare_invoke();
            call.key(&rkey);
            self.timed("in_use", call.invoke_async(&mut con)).await
        })
    }

    fn suspend<'a>(
        &'a self,
        k: &'a str,
        reason: &'a str,
        duration: Duration,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let rkey = key("suspend", k);
            let ms = duration.as_millis().max(1) as u64;
            let mut con = self.connection().await?;
            let mut cmd = redis::cmd("SET");
            cmd.arg(&rkey).arg(reason).arg("PX").arg(ms);
            let _: () = self.timed("suspend", cmd.query_async(&mut con)).await?;
            // The index lives in another slot than the suspension: a second
            // command, not a pipeline (a cluster answers a pipeline on one node).
            let until = epoch_ms(SystemTime::now() + duration);
            let mut index = redis::cmd("ZADD");
            index.arg(SUSPENSION_INDEX).arg(until).arg(k);
            let _: i64 = self.timed("suspend", index.query_async(&mut con)).await?;
            Ok(())
        })
    }

    fn suspension<'a>(&'a self, k: &'a str) -> StoreFuture<'a, Option<Suspension>> {
        Box::pin(async move {
            let mut con = self.connection().await?;
            self.read_suspension(&mut con, k).await
        })
    }

    fn resume<'a>(&'a self, k: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let rkey = key("suspend", k);
            let mut con = self.connection().await?;
            let mut cmd = redis::cmd("DEL");
            cmd.arg(&rkey);
            let _: i64 = self.timed("resume", cmd.query_async(&mut con)).await?;
            let mut index = redis::cmd("ZREM");
            index.arg(SUSPENSION_INDEX).arg(k);
            let _: i64 = self.timed("resume", index.query_async(&mut con)).await?;
            Ok(())
        })
    }

    fn suspensions(&self) -> StoreFuture<'_, Vec<Suspension>> {
        Box::pin(async move {
            let mut con = self.connection().await?;
            let now = epoch_ms(SystemTime::now());
            let mut trim = redis::cmd("ZREMRANGEBYSCORE");
            trim.arg(SUSPENSION_INDEX).arg("-inf").arg(now);
            let _: i64 = self
                .timed("suspensions", trim.query_async(&mut con))
                .await?;
            let mut list = redis::cmd("ZRANGE");
            list.arg(SUSPENSION_INDEX).arg(0).arg(-1);
            let keys: Vec<String> = self
                .timed("suspensions", list.query_async(&mut con))
                .await?;
            // One request per suspension, each to the node that owns its slot, all
            // at once on the multiplexed connection(s): about one round trip.
            let reads = keys.iter().map(|k| {
                let mut con = con.clone();
                async move { self.read_suspension(&mut con, k).await }
            });
            let found = futures::future::try_join_all(reads).await?;
            Ok(found.into_iter().flatten().collect())
        })
    }

    fn capacity<'a>(&'a self, k: &'a str, spec: &'a ThrottleSpec) -> StoreFuture<'a, Capacity> {
        Box::pin(async move {
            let rkey = key("rate", k);
            let mut con = self.connection().await?;
            let mut call = self.peek.prepare_invoke();
            call.key(&rkey);
            let (tat, now): (String, String) =
                self.timed("capacity", call.invoke_async(&mut con)).await?;
            let tat = tat.parse::<u64>().ok();
            Ok(capacity(Cell::of(spec), tat, now.parse().unwrap_or(0)))
        })
    }
}
