//! Where a delivery hands its items: one enum, one arm per kind of target
//! (`webhook`, `rt`). A target makes one attempt and says what came back;
//! what that means for the entry is the policy's ([`super::policy`]), the
//! same for every target.

use super::config::{DeliveryConfig, TargetKind};
use super::item::Item;
use super::policy::Answer;
use super::rt::Rt;
use super::store::Keys;
use super::webhook::Webhook;
use crate::redis_connection::RedisConnection;

/// A configured target.
pub enum Target {
    Webhook(Box<Webhook>),
    Rt(Box<Rt>),
}

impl Target {
    /// The target of `config`; `redis` and `keys` are for the targets that
    /// keep state of their own (`rt`: which ticket holds what).
    pub fn from_config(
        config: &DeliveryConfig,
        redis: &RedisConnection,
        keys: &Keys,
    ) -> Result<Target, String> {
        match config.target {
            TargetKind::Webhook => {
                let webhook = config
                    .webhook
                    .as_ref()
                    .ok_or("target `webhook` needs [delivery.webhook]")?;
                Ok(Target::Webhook(Box::new(Webhook::new(webhook)?)))
            }
            TargetKind::Rt => {
                let rt = config
                    .rt
                    .as_ref()
                    .ok_or("target `rt` needs [delivery.rt]")?;
                Ok(Target::Rt(Box::new(Rt::new(
                    rt,
                    redis.clone(),
                    keys.clone(),
                    config.remember.into(),
                )?)))
            }
        }
    }

    pub fn kind(&self) -> TargetKind {
        match self {
            Target::Webhook(_) => TargetKind::Webhook,
            Target::Rt(_) => TargetKind::Rt,
        }
    }

    /// One attempt, bounded by the target's own timeout.
    pub async fn deliver(&self, item: &Item<'_>) -> Answer {
        match self {
            Target::Webhook(webhook) => webhook.deliver(item).await,
            Target::Rt(rt) => rt.deliver(item).await,
        }
    }
}
