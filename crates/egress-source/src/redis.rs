//! Where shared limits live: `kumo.configure_redis_throttles { … }`, whose
//! parameters are KumoMTA's `redis.open` ones — one Redis (a URL) or a Redis
//! Cluster (a list of URLs, or `cluster = true`).

use crate::keys::strict_table;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// How to reach the Redis (or Redis Cluster) that shares throttles, connection
/// limits and suspensions between nodes. Field names, forms and meanings are
/// those of KumoMTA's `redis.open`; the defaults differ where a transaction
/// waits on Redis (see each field).
///
/// ```
/// use egress_source::RedisParams;
/// let p: RedisParams = serde_json::from_str(r#"{
///     "node": ["redis://127.0.0.1:7001/", "redis://127.0.0.1:7002/"],
///     "password": "s3cret", "response_timeout": "500ms" }"#).unwrap();
/// assert!(p.is_cluster());
/// assert_eq!(p.nodes().len(), 2);
/// // Printed (as `egressd check` does) without the password.
/// assert!(!serde_json::to_string(&p).unwrap().contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct RedisParams {
    /// A Redis URL (`redis://[user][:password@]host[:port][/db]`), or a list of
    /// them: the nodes of a Redis Cluster.
    #[serde(deserialize_with = "one_or_many", serialize_with = "urls_redacted")]
    pub node: Vec<String>,
    /// Use a cluster client even for one node; default: a cluster client when
    /// more than one node is listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<bool>,
    /// KumoMTA: spare connections its pool keeps; default 10. Here one
    /// multiplexed connection (per cluster node) carries every concurrent
    /// request, so there is no pool to size: accepted, and has no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<u64>,
    /// For a cluster: the user every node is reached as (not used for one node,
    /// as in KumoMTA; put it in the URL there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// For a cluster: the password every node is reached with (not used for one
    /// node, as in KumoMTA). Never printed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redacted"
    )]
    pub password: Option<String>,
    /// How long one attempt to connect may take; default 1 s (KumoMTA: 30 s —
    /// a transaction waits on it here, and falls back to this node's numbers).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::fields::optional_duration"
    )]
    pub connect_timeout: Option<Duration>,
    /// How long a caller waits for a usable connection (connecting included)
    /// before using this node's numbers; default 2 s (KumoMTA: 30 s).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::fields::optional_duration"
    )]
    pub wait_timeout: Option<Duration>,
    /// How long one command may take to be answered; default 1 s.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::fields::optional_duration"
    )]
    pub response_timeout: Option<Duration>,
    /// KumoMTA: how long the liveness check of a pooled connection may take
    /// before reuse. With no pool (see `pool_size`) there is no such check — a
    /// failed connection is replaced when a command fails — so it is accepted
    /// and has no effect.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::fields::optional_duration"
    )]
    pub recycle_timeout: Option<Duration>,
    /// For a cluster: send reads to replicas, writes to the masters.
    #[serde(default)]
    pub read_from_replicas: bool,
}

strict_table!(
    RedisParams,
    "Redis (kumo.configure_redis_throttles)",
    [
        "node",
        "cluster",
        "pool_size",
        "username",
        "password",
        "connect_timeout",
        "wait_timeout",
        "response_timeout",
        "recycle_timeout",
        "read_from_replicas"
    ]
);

/// Defaults for the timeouts (see the fields).
pub const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// See [`RedisParams::wait_timeout`].
pub const REDIS_WAIT_TIMEOUT: Duration = Duration::from_secs(2);
/// See [`RedisParams::response_timeout`].
pub const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

impl RedisParams {
    /// One Redis at `url`, every other parameter at its default.
    pub fn single(url: &str) -> RedisParams {
        RedisParams {
            node: vec![url.to_owned()],
            cluster: None,
            pool_size: None,
            username: None,
            password: None,
            connect_timeout: None,
            wait_timeout: None,
            response_timeout: None,
            recycle_timeout: None,
            read_from_replicas: false,
        }
    }

    /// The node URLs, as given.
    pub fn nodes(&self) -> &[String] {
        &self.node
    }

    /// Whether a cluster client is used: `cluster` when set, else more than one
    /// node (KumoMTA's rule).
    pub fn is_cluster(&self) -> bool {
        self.cluster.unwrap_or(self.node.len() > 1)
    }

    /// The nodes for messages: URLs without their passwords, comma-separated.
    pub fn describe(&self) -> String {
        self.node
            .iter()
            .map(|u| without_password(u))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// [`connect_timeout`](Self::connect_timeout) or its default.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout.unwrap_or(REDIS_CONNECT_TIMEOUT)
    }

    /// [`wait_timeout`](Self::wait_timeout) or its default.
    pub fn wait_timeout(&self) -> Duration {
        self.wait_timeout.unwrap_or(REDIS_WAIT_TIMEOUT)
    }

    /// [`response_timeout`](Self::response_timeout) or its default.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout.unwrap_or(REDIS_RESPONSE_TIMEOUT)
    }

    /// The rules between fields: at least one node; more than one node only
    /// with a cluster client.
    pub fn validate(&self) -> Result<(), String> {
        if self.node.is_empty() || self.node.iter().any(|n| n.trim().is_empty()) {
            return Err(
                "node: expected a Redis URL such as 'redis://127.0.0.1:6379/', \
                        or a list of them for a Redis Cluster"
                    .into(),
            );
        }
        if self.node.len() > 1 && self.cluster == Some(false) {
            return Err(format!(
                "node lists {} URLs but cluster = false: a list of nodes is a Redis Cluster; \
                 remove `cluster = false`, or give one URL",
                self.node.len()
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for RedisParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisParams")
            .field("node", &self.describe())
            .field("cluster", &self.is_cluster())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "(redacted)"))
            .finish_non_exhaustive()
    }
}

/// `url` with the password (between `:` and `@` of the authority) replaced.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') {
                ":(redacted)"
            } else {
                ""
            };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d).map_err(|_| {
        serde::de::Error::custom(
            "expected a Redis URL (string) or a list of them (a Redis Cluster's nodes)",
        )
    })? {
        OneOrMany::One(url) => Ok(vec![url]),
        OneOrMany::Many(urls) => Ok(urls),
    }
}

fn urls_redacted<S: Serializer>(urls: &[String], s: S) -> Result<S::Ok, S::Error> {
    let shown: Vec<String> = urls.iter().map(|u| without_password(u)).collect();
    match shown.as_slice() {
        [one] => s.serialize_str(one),
        _ => shown.serialize(s),
    }
}

fn redacted<S: Serializer>(_: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("(redacted)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<RedisParams, String> {
        let p: RedisParams = serde_json::from_str(json).map_err(|e| e.to_string())?;
        p.validate()?;
        Ok(p)
    }

    #[test]
    fn one_url_is_one_node_and_a_list_is_a_cluster() {
        let one = parse(r#"{ "node": "redis://127.0.0.1:6379/" }"#).unwrap();
        assert!(!one.is_cluster());
        assert_eq!(one, RedisParams::single("redis://127.0.0.1:6379/"));
        let forced = parse(r#"{ "node": "redis://127.0.0.1:7000/", "cluster": true }"#).unwrap();
        assert!(forced.is_cluster());
        let many = parse(r#"{ "node": ["redis://a:7000/", "redis://b:7000/"] }"#).unwrap();
        assert!(many.is_cluster());
        let err =
            parse(r#"{ "node": ["redis://a/", "redis://b/"], "cluster": false }"#).unwrap_err();
        assert!(err.contains("cluster = false"), "{err}");
        assert!(parse(r#"{ "node": [] }"#).unwrap_err().contains("node"));
        assert!(parse(r#"{ "node": 7 }"#).unwrap_err().contains("Redis URL"));
        assert!(parse(r#"{ "node": "redis://a/", "pool_sise": 3 }"#).is_err());
    }

    #[test]
    fn every_parameter_of_redis_open_and_no_password_shown() {
        let p = parse(
            r#"{ "node": ["redis://u:pw1@a:7000/", "redis://b:7001"], "cluster": true,
                 "pool_size": 20, "username": "egress", "password": "pw2",
                 "connect_timeout": "5s", "wait_timeout": "10s", "response_timeout": "2s",
                 "recycle_timeout": "1s", "read_from_replicas": true }"#,
        )
        .unwrap();
        assert_eq!(p.connect_timeout(), Duration::from_secs(5));
        assert_eq!(p.wait_timeout(), Duration::from_secs(10));
        assert_eq!(p.response_timeout(), Duration::from_secs(2));
        assert_eq!(p.recycle_timeout, Some(Duration::from_secs(1)));
        assert!(p.read_from_replicas);
        let shown = serde_json::to_string(&p).unwrap();
        assert!(!shown.contains("pw1") && !shown.contains("pw2"), "{shown}");
        assert!(shown.contains("redis://u:(redacted)@a:7000/"), "{shown}");
        assert!(!format!("{p:?}").contains("pw"));
        assert_eq!(p.describe(), "redis://u:(redacted)@a:7000/, redis://b:7001");
        let defaults = RedisParams::single("redis://x/");
        assert_eq!(defaults.wait_timeout(), REDIS_WAIT_TIMEOUT);
    }
}
