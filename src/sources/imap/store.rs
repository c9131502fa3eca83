//! What the gateway keeps in Redis per mailbox: the lease (which replica
//! works it) and the checkpoint (UIDVALIDITY and the last UID done).
//!
//! Both keys carry the mailbox as hash tag, so the scripts that touch both
//! run on one node of a Redis Cluster. A checkpoint is written only by the
//! lease's holder and never moves backwards within one UIDVALIDITY.

use std::time::Duration;

use crate::redis_connection::RedisConnection;

use super::error::ImapError;

/// Progress through one mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub uidvalidity: u32,
    /// Every mail up to this UID is stored and acknowledged on the server.
    pub last_uid: u32,
}

/// Claims a free lease, or renews our own. KEYS[1] lease; ARGV[1] owner,
/// ARGV[2] ttl ms. Returns 1 when held.
const ACQUIRE: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// Extends the lease only while we still hold it.
const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// KEYS[1] lease, KEYS[2] checkpoint; ARGV[1] owner, ARGV[2] uidvalidity,
/// ARGV[3] last uid. Returns 1 when written (or already as far), 0 when
/// the lease is not ours.
const SAVE: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local old = redis.call('HMGET', KEYS[2], 'uidvalidity', 'last_uid')
if old[1] == ARGV[2] and tonumber(old[2] or '0') >= tonumber(ARGV[3]) then return 1 end
redis.call('HSET', KEYS[2], 'uidvalidity', ARGV[2], 'last_uid', ARGV[3])
return 1
"#;

/// The Redis side of one mailbox.
#[derive(Clone)]
pub struct MailboxStore {
    connection: RedisConnection,
    lease_key: String,
    checkpoint_key: String,
    /// This replica's id in the lease.
    owner: String,
    timeout: Duration,
}

impl MailboxStore {
    pub fn new(
        connection: RedisConnection,
        prefix: &str,
        account: &str,
        mailbox: &str,
        owner: String,
        timeout: Duration,
    ) -> Self {
        let tag = format!("{prefix}:imap:{{{account}/{mailbox}}}");
        MailboxStore {
            connection,
            lease_key: format!("{tag}:lease"),
            checkpoint_key: format!("{tag}:checkpoint"),
            owner,
            timeout,
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    async fn script<T: redis::FromRedisValue>(
        &self,
        script: &str,
        keys: &[&str],
        args: &[String],
    ) -> Result<T, ImapError> {
        let script = redis::Script::new(script);
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        let mut connection = self.connection.clone();
        tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection))
            .await
            .map_err(|_| ImapError::RedisTimeout(self.timeout))?
            .map_err(ImapError::Redis)
    }

    /// Takes the lease if it is free (or already ours).
    pub async fn acquire(&self, ttl: Duration) -> Result<bool, ImapError> {
        let held: i64 = self
            .script(ACQUIRE, &[&self.lease_key], &[self.owner.clone(), ms(ttl)])
            .await?;
        Ok(held == 1)
    }

    /// Extends the lease; `false` means another replica holds it now.
    pub async fn renew(&self, ttl: Duration) -> Result<bool, ImapError> {
        let held: i64 = self
            .script(RENEW, &[&self.lease_key], &[self.owner.clone(), ms(ttl)])
            .await?;
        Ok(held == 1)
    }

    /// Gives the lease up, so another replica need not wait for it to expire.
    pub async fn release(&self) -> Result<(), ImapError> {
        let _: i64 = self
            .script(
                RELEASE,
                &[&self.lease_key],
                std::slice::from_ref(&self.owner),
            )
            .await?;
        Ok(())
    }

    pub async fn load(&self) -> Result<Option<Checkpoint>, ImapError> {
        let mut connection = self.connection.clone();
        let (uidvalidity, last_uid): (Option<u32>, Option<u32>) = tokio::time::timeout(
            self.timeout,
            redis::cmd("HMGET")
                .arg(&self.checkpoint_key)
                .arg("uidvalidity")
                .arg("last_uid")
                .query_async(&mut connection),
        )
        .await
        .map_err(|_| ImapError::RedisTimeout(self.timeout))?
        .map_err(ImapError::Redis)?;
        Ok(match (uidvalidity, last_uid) {
            (Some(uidvalidity), Some(last_uid)) => Some(Checkpoint {
                uidvalidity,
                last_uid,
            }),
            _ => None,
        })
    }

    /// Records progress; `false` when the lease was lost (nothing written).
    pub async fn save(&self, checkpoint: Checkpoint) -> Result<bool, ImapError> {
        let written: i64 = self
            .script(
                SAVE,
                &[&self.lease_key, &self.checkpoint_key],
                &[
                    self.owner.clone(),
                    checkpoint.uidvalidity.to_string(),
                    checkpoint.last_uid.to_string(),
                ],
            )
            .await?;
        Ok(written == 1)
    }
}

fn ms(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}
