//! Where a delivery hands its items: one enum, one arm per kind of target
//! (`webhook` now). A target makes one attempt and says what came back;
//! what that means for the entry is the policy's ([`super::policy`]), the
//! same for every target.

use super::config::{DeliveryConfig, TargetKind};
use super::item::Item;
use super::policy::Answer;
use super::webhook::Webhook;

/// A configured target.
pub enum Target {
    Webhook(Webhook),
}

impl Target {
    pub fn from_config(config: &DeliveryConfig) -> Result<Target, String> {
        match config.target {
            TargetKind::Webhook => {
                let webhook = config
                    .webhook
                    .as_ref()
                    .ok_or("target `webhook` needs [delivery.webhook]")?;
                Ok(Target::Webhook(Webhook::new(webhook)?))
            }
        }
    }

    pub fn kind(&self) -> TargetKind {
        match self {
            Target::Webhook(_) => TargetKind::Webhook,
        }
    }

    /// One attempt, bounded by the target's own timeout.
    pub async fn deliver(&self, item: &Item<'_>) -> Answer {
        match self {
            Target::Webhook(webhook) => webhook.deliver(item).await,
        }
    }
}
