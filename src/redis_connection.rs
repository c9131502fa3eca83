//! The one Redis connection every part of the gateway shares (the sink's
//! writes, the guard's buckets and dedupe history, IMAP leases and
//! checkpoints, backpressure): a single server or a Redis Cluster, chosen
//! by `redis.cluster` in the config, behind one type.
//!
//! Both kinds connect lazily, so the gateway starts (and answers 503)
//! while Redis is down, and reconnect by themselves. On a cluster, every
//! command goes to the node that owns its key's slot; the key layout puts
//! all keys one script touches under one hash tag (`{...}`), so every
//! script runs on one node.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::Mutex;

use serde::Deserialize;

use crate::secret::{Secret, SecretValue};
use crate::units::HumanDuration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db` or `rediss://` for TLS. Put the password in
    /// `password`, not here.
    pub url: String,
    /// Redis password (ACL user from the URL, if any).
    #[serde(default)]
    pub password: Option<Secret>,
    /// Prefix of every stream and key: `<prefix>:desk`, ...
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Longest wait for one Redis command (connect included); past it the
    /// item is not acknowledged and the client is told to retry.
    #[serde(default = "default_redis_timeout")]
    pub timeout: HumanDuration,
    /// `url` is one node of a Redis Cluster (the others are found from it).
    #[serde(default)]
    pub cluster: bool,
    /// More cluster nodes to start from, should the one in `url` be down.
    #[serde(default)]
    pub cluster_nodes: Vec<String>,
}

fn default_prefix() -> String {
    "intake".into()
}
fn default_redis_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

impl crate::validate::Validate for RedisConfig {
    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        if !(self.url.starts_with("redis://")
            || self.url.starts_with("rediss://")
            || self.url.starts_with("unix://"))
        {
            problems.push(format!(
                "{at}.url: `{}` must start with redis://, rediss:// or unix://",
                self.url
            ));
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}', ' ']) {
            problems.push(format!(
                "{at}.prefix: must be non-empty, without spaces or braces"
            ));
        }
        if self.timeout.0 < Duration::from_millis(10) {
            problems.push(format!("{at}.timeout: must be at least 10ms"));
        }
        if let Some(secret) = &self.password {
            if let Err(e) = secret.resolve() {
                problems.push(format!("{at}.password: {e}"));
            }
        }
    }
}

/// A connection to Redis or to a Redis Cluster; cheap to clone, every clone
/// shares the same sockets.
#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(LazyCluster),
}

impl RedisConnection {
    /// Prepares the connection without waiting for Redis to be up.
    pub fn new(config: &RedisConfig, password: Option<SecretValue>) -> Result<Self, RedisError> {
        let timeout: Duration = config.timeout.into();
        let with_password = |url: &str| connection_info(url, password.as_ref());
        if config.cluster {
            let seeds = std::iter::once(&config.url)
                .chain(&config.cluster_nodes)
                .map(|url| with_password(url))
                .collect::<Result<Vec<_>, _>>()?;
            let client = ClusterClient::builder(seeds)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2)
                .build()?;
            return Ok(RedisConnection::Cluster(LazyCluster(Arc::new(
                LazyClusterInner {
                    client,
                    connection: Mutex::new(None),
                    timeout,
                },
            ))));
        }
        let client = redis::Client::open(with_password(&config.url)?)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // One quick retry inside the manager; the client retries the rest.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        Ok(RedisConnection::Single(
            ConnectionManager::new_lazy_with_config(client, manager_config)?,
        ))
    }

    /// Whether keys are spread over a Redis Cluster: one script's or one
    /// pipeline's keys must then share a slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConnection::Cluster(_))
    }

    /// `INFO <section>` of the server that holds `key`: on a cluster, the
    /// primary of its slot (the node whose memory decides whether a write
    /// to `key` succeeds), not a merge of every node.
    pub async fn info_for_key(&mut self, key: &str, section: &str) -> RedisResult<String> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg(section);
        match self {
            RedisConnection::Single(c) => cmd.query_async(c).await,
            RedisConnection::Cluster(lazy) => {
                let mut c = lazy.get().await?;
                let route = Route::with_slot(Slot::for_key(key), SlotAddr::Master);
                let value = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                redis::from_redis_value(value).map_err(RedisError::from)
            }
        }
    }
}

/// Where one Redis server is, with the password from the config's secret.
pub fn connection_info(
    url: &str,
    password: Option<&SecretValue>,
) -> Result<redis::ConnectionInfo, RedisError> {
    let mut info = redis::IntoConnectionInfo::into_connection_info(url)?;
    if let Some(password) = password {
        let settings = info
            .redis_settings()
            .clone()
            .set_password(password.expose());
        info = info.set_redis_settings(settings);
    }
    Ok(info)
}

/// A cluster connection made on first use: the slot map can only be read
/// from a live node, and the gateway must start while the cluster is down.
#[derive(Clone)]
pub struct LazyCluster(Arc<LazyClusterInner>);

struct LazyClusterInner {
    client: ClusterClient,
    /// The connection once made; the cluster client reconnects to nodes
    /// and refreshes its slot map by itself after that.
    connection: Mutex<Option<ClusterConnection>>,
    timeout: Duration,
}

impl LazyCluster {
    async fn get(&self) -> RedisResult<ClusterConnection> {
        let inner = &self.0;
        let mut slot = inner.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let connection = tokio::time::timeout(inner.timeout, inner.client.get_async_connection())
            .await
            .map_err(|_| {
                RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no cluster node answered in time",
                ))
            })??;
        *slot = Some(connection.clone());
        Ok(connection)
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(lazy) => Box::pin(async move {
                let mut c = lazy.get().await?;
                c.req_packed_command(cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConnection::Cluster(lazy) => Box::pin(async move {
                let mut c = lazy.get().await?;
                c.req_packed_commands(cmd, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(c) => c.get_db(),
            RedisConnection::Cluster(_) => 0,
        }
    }
}
