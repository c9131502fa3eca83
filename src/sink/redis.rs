//! The Redis Streams sink: one multiplexed connection shared by every
//! request, reconnecting by itself, every command bounded by a timeout.
//!
//! The connection is made lazily, so the gateway starts (and answers 503)
//! while Redis is down, and recovers without a restart when it is back.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError};

use super::{Entry, Sink, SinkError, SinkFuture};
use crate::config::{RedisConfig, SecretValue};

pub struct RedisSink {
    connection: ConnectionManager,
    /// `<prefix>:` prepended to every stream name.
    prefix: String,
    /// Bound on every command, connect and reconnect included.
    timeout: Duration,
}

impl RedisSink {
    /// Prepares the connection; does not wait for Redis to be up.
    pub fn new(config: &RedisConfig, password: Option<SecretValue>) -> Result<Self, RedisError> {
        let mut info: redis::ConnectionInfo =
            redis::IntoConnectionInfo::into_connection_info(config.url.as_str())?;
        if let Some(password) = password {
            let redis_settings = info
                .redis_settings()
                .clone()
                .set_password(password.expose());
            info = info.set_redis_settings(redis_settings);
        }
        let client = Client::open(info)?;
        let timeout: Duration = config.timeout.into();
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // One quick retry inside the manager; the client retries the rest.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let connection = ConnectionManager::new_lazy_with_config(client, manager_config)?;
        Ok(RedisSink {
            connection,
            prefix: config.prefix.clone(),
            timeout,
        })
    }

    pub fn stream_key(&self, stream: crate::route::Stream) -> String {
        format!("{}:{}", self.prefix, stream.name())
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, SinkError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(SinkError::Timeout(self.timeout)),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if is_connection_problem(&e) => Err(SinkError::Unavailable(e)),
            Ok(Err(e)) => Err(SinkError::Refused(e)),
        }
    }
}

fn is_connection_problem(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

impl Sink for RedisSink {
    fn append<'a>(&'a self, entry: &'a Entry) -> SinkFuture<'a, String> {
        Box::pin(async move {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(self.stream_key(entry.stream))
                .arg("*")
                .arg("id")
                .arg(entry.id.to_string())
                .arg("kind")
                .arg(entry.kind)
                .arg("envelope")
                .arg(entry.envelope.as_str());
            if let Some(reason) = &entry.reason {
                cmd.arg("reason").arg(reason.as_str());
            }
            if let Some(into) = &entry.folded_into {
                cmd.arg("folded_into").arg(into.to_string());
            }
            let mut connection = self.connection.clone();
            self.bounded(cmd.query_async::<String>(&mut connection))
                .await
        })
    }

    fn ping(&self) -> SinkFuture<'_, ()> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            self.bounded(redis::cmd("PING").query_async::<String>(&mut connection))
                .await
                .map(drop)
        })
    }
}
