//! The guard's shared state in Redis (cluster buckets, dedupe history):
//! the sink's multiplexed connection, every command bounded by the same
//! timeout. An unreachable Redis is a [`GuardError`], never a silent pass.

use std::time::Duration;

use crate::redis_connection::RedisConnection;
use redis::RedisError;

use super::error::GuardError;

#[derive(Clone)]
pub struct RedisStore {
    connection: RedisConnection,
    prefix: String,
    timeout: Duration,
}

impl RedisStore {
    pub fn new(connection: RedisConnection, prefix: &str, timeout: Duration) -> Self {
        RedisStore {
            connection,
            prefix: prefix.to_string(),
            timeout,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The bound on each command.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether keys are spread over a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.connection.is_cluster()
    }

    pub fn connection(&self) -> RedisConnection {
        self.connection.clone()
    }

    pub async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, GuardError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(GuardError::StoreTimeout(self.timeout)),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(GuardError::StoreUnavailable(Box::new(e))),
        }
    }
}

/// 16 hex digits of SHA-256: short, stable across processes and
/// versions, and keeps customer addresses out of key names.
pub fn short_digest(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    // By table, not `write!`: the guard takes several digests per item,
    // and formatting each byte showed in its profile.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(16);
    for byte in &Sha256::digest(data)[..8] {
        out.push(HEX[usize::from(byte >> 4)] as char);
        out.push(HEX[usize::from(byte & 0x0f)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::short_digest;

    #[test]
    fn short_digest_is_the_first_eight_bytes_of_sha256_in_hex() {
        // Keys in Redis are named by it: it must never change.
        assert_eq!(short_digest(b"abc"), "ba7816bf8f01cfea");
        assert_eq!(short_digest(b""), "e3b0c44298fc1c14");
    }
}
