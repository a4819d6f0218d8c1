//! The shared store: Redis, with every decision made by a script on the server (so
//! it is atomic across nodes and uses the server's clock, not each node's).
//!
//! GCRA runs as a Lua script on a stock redis-server; the redis-cell module's
//! `CL.THROTTLE` is not required. Connection leases are a sorted set per key whose
//! scores are expiry times: a node that dies stops renewing, and its slots free
//! themselves when the lease time passes. Suspensions are keys with a TTL.

use crate::gcra::{capacity, Capacity, Cell, Decision};
use crate::{Store, StoreError, StoreFuture, Suspension, ThrottleSpec};
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Mutex;

/// How long one Redis round trip may take before the caller falls back.
const ROUND_TRIP: Duration = Duration::from_secs(1);
/// After a failed connect, how long to wait before trying again.
const RECONNECT_PAUSE: Duration = Duration::from_secs(2);

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

/// Throttles, leases and suspensions shared by every node using the same Redis.
pub struct RedisStore {
    url: String,
    client: redis::Client,
    connection: Mutex<(Option<ConnectionManager>, Option<Instant>)>,
    gcra: redis::Script,
    acquire: redis::Script,
    renew: redis::Script,
    in_use: redis::Script,
    peek: redis::Script,
    next_id: AtomicU64,
}

impl RedisStore {
    /// A store for `url` (`redis://127.0.0.1:6379/`). Nothing is connected yet: a
    /// Redis that is down at start is the same as one that goes down later.
    pub fn new(url: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError {
            store: url.to_owned(),
            message: format!("not a Redis URL ({e}); expected e.g. redis://127.0.0.1:6379/"),
        })?;
        Ok(RedisStore {
            url: url.to_owned(),
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

    /// The URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn error(&self, message: impl std::fmt::Display) -> StoreError {
        StoreError {
            store: self.url.clone(),
            message: message.to_string(),
        }
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let mut slot = self.connection.lock().await;
        if let Some(manager) = &slot.0 {
            return Ok(manager.clone());
        }
        if let Some(failed) = slot.1 {
            if failed.elapsed() < RECONNECT_PAUSE {
                return Err(self.error("unreachable (retrying shortly)"));
            }
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(ROUND_TRIP)
            .set_response_timeout(ROUND_TRIP)
            .set_number_of_retries(1);
        match tokio::time::timeout(
            ROUND_TRIP * 2,
            self.client.get_connection_manager_with_config(config),
        )
        .await
        {
            Ok(Ok(manager)) => {
                *slot = (Some(manager.clone()), None);
                Ok(manager)
            }
            Ok(Err(e)) => {
                slot.1 = Some(Instant::now());
                Err(self.error(format!("cannot connect: {e}")))
            }
            Err(_) => {
                slot.1 = Some(Instant::now());
                Err(self.error("cannot connect: no answer within 2s"))
            }
        }
    }

    /// Waits for one command or script, within [`ROUND_TRIP`].
    async fn timed<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(ROUND_TRIP, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(format!("{what}: {e}"))),
            Err(_) => Err(self.error(format!("{what}: no answer within 1s"))),
        }
    }
}

fn key(kind: &str, key: &str) -> String {
    format!("egress:{kind}:{key}")
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
            Ok(())
        })
    }

    fn suspension<'a>(&'a self, k: &'a str) -> StoreFuture<'a, Option<Suspension>> {
        Box::pin(async move {
            let rkey = key("suspend", k);
            let mut con = self.connection().await?;
            let mut pipe = redis::pipe();
            pipe.cmd("GET").arg(&rkey).cmd("PTTL").arg(&rkey);
            let (reason, pttl): (Option<String>, i64) =
                self.timed("suspension", pipe.query_async(&mut con)).await?;
            Ok(reason.filter(|_| pttl > 0).map(|reason| Suspension {
                key: k.to_owned(),
                reason,
                until: SystemTime::now() + Duration::from_millis(pttl as u64),
            }))
        })
    }

    fn resume<'a>(&'a self, k: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let rkey = key("suspend", k);
            let mut con = self.connection().await?;
            let mut cmd = redis::cmd("DEL");
            cmd.arg(&rkey);
            let _: i64 = self.timed("resume", cmd.query_async(&mut con)).await?;
            Ok(())
        })
    }

    fn suspensions(&self) -> StoreFuture<'_, Vec<Suspension>> {
        Box::pin(async move {
            let prefix = key("suspend", "");
            let mut con = self.connection().await?;
            let mut keys: Vec<String> = Vec::new();
            let mut cursor: u64 = 0;
            // SCAN, not KEYS: a large Redis shared with other work is never blocked.
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}*"))
                    .arg("COUNT")
                    .arg(1000);
                let (next, batch): (u64, Vec<String>) =
                    self.timed("suspensions", cmd.query_async(&mut con)).await?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("GET").arg(k).cmd("PTTL").arg(k);
            }
            let answers: Vec<(Option<String>, i64)> = self
                .timed("suspensions", pipe.query_async(&mut con))
                .await?;
            let now = SystemTime::now();
            Ok(keys
                .iter()
                .zip(answers)
                .filter_map(|(k, (reason, pttl))| {
                    Some(Suspension {
                        key: k.strip_prefix(&prefix)?.to_owned(),
                        reason: reason.filter(|_| pttl > 0)?,
                        until: now + Duration::from_millis(pttl as u64),
                    })
                })
                .collect())
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
