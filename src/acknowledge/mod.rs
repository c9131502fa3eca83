//! Acknowledgements to customers: one mail per new desk item ("we have
//! your request, reference X"), at most one per customer per window,
//! never to a robot, a list, a bounce, a loop or a forged sender.
//!
//! The flow, in the order a message takes it:
//! 1. [`queue`] reads `<prefix>:desk` in its own consumer group
//!    (`acknowledge`), so only stored items are ever acknowledged: what was
//!    collapsed, suppressed, quarantined, held, trapped or refused never
//!    reaches the desk. [`decide`] says yes or why not; the window per
//!    customer (and per network for forms) is claimed in Redis, shared by
//!    every replica; [`compose`] makes the mail from the [`template`]s,
//!    once; it is appended to `<prefix>:outbox`; the desk entry is
//!    acknowledged in the group.
//! 2. [`send`] reads `<prefix>:outbox` in its group and hands each mail to
//!    the [`relay`], acknowledging the entry only after the relay's 250
//!    (or its 5xx, which no retry changes). While the relay is down it
//!    waits with backoff; a replica that dies mid-send leaves the entry
//!    pending, and it is sent again, the same bytes with the same
//!    Message-ID, by the same replica when it restarts or by a peer after
//!    `claim_after`. A sent marker per receipt keeps a second queued copy
//!    from going out again.
//!
//! `config.rs` is the `[acknowledge]` section; `stream.rs` the group
//! reads both loops share.

pub mod compose;
pub mod config;
pub mod decide;
pub mod queue;
pub mod relay;
pub mod send;
pub mod stream;
pub mod template;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::envelope::Envelope;
use crate::redis_connection::RedisConnection;
pub use config::AcknowledgeConfig;
pub use decide::{Decision, Plan, Skip};
use template::Templates;

/// How long a sent acknowledgement's receipt is remembered, so that a
/// second queued copy of it (a crash between queueing and acknowledging
/// the desk entry) is recognised and not sent again.
pub const SENT_REMEMBERED: Duration = Duration::from_secs(7 * 24 * 3600);

/// The consumer group both loops read in.
pub const GROUP: &str = "acknowledge";

/// The `[acknowledge]` section, loaded and checked: its policy and every
/// language's templates.
pub struct Acknowledger {
    pub config: AcknowledgeConfig,
    pub policy: decide::Policy,
    pub templates: BTreeMap<String, Templates>,
}

impl Acknowledger {
    /// Loads the templates; a template with a mistake, or a language
    /// named without one, is an error that names the file and line.
    /// `auth_configured`: whether `[auth]` is on (then only senders that
    /// authenticated are answered, unless `authenticated_only = false`).
    pub fn new(config: &AcknowledgeConfig, auth_configured: bool) -> Result<Acknowledger, String> {
        let templates = template::load_dir(&config.templates).map_err(|e| e.to_string())?;
        let policy =
            decide::Policy::new(config, auth_configured, templates.keys().cloned().collect());
        let missing = policy.missing_languages();
        if !missing.is_empty() {
            return Err(format!(
                "{}: no template for {}; add {} beside the others",
                config.templates.display(),
                missing.join(", "),
                missing
                    .iter()
                    .map(|l| format!("{l}.txt"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(Acknowledger {
            config: config.clone(),
            policy,
            templates,
        })
    }

    /// The `[acknowledge]` of a gateway config file, read alone (with
    /// whether it has `[auth]`), for the commands that explain a mail;
    /// `None` when the file has none.
    pub fn from_gateway_config(path: &Path) -> Result<Option<Acknowledger>, String> {
        #[derive(serde::Deserialize)]
        struct Sections {
            #[serde(default)]
            acknowledge: Option<AcknowledgeConfig>,
            #[serde(default)]
            auth: Option<toml::Value>,
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let sections: Sections =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let Some(mut config) = sections.acknowledge else {
            return Ok(None);
        };
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        let problems = crate::validate::problems_of(&config, "acknowledge");
        if !problems.is_empty() {
            return Err(format!("{}: {}", path.display(), problems.join("; ")));
        }
        Acknowledger::new(&config, sections.auth.is_some()).map(Some)
    }

    pub fn decide(&self, kind: &str, envelope: &Envelope) -> Decision {
        self.policy.decide(kind, envelope)
    }

    /// Makes the acknowledgement `plan` describes.
    pub fn compose(
        &self,
        envelope: &Envelope,
        plan: &Plan,
        ticket: Option<String>,
    ) -> Result<compose::Composed, String> {
        let templates = self
            .templates
            .get(&plan.language)
            .ok_or_else(|| format!("no template for `{}`", plan.language))?;
        compose::compose(
            &self.config.from,
            self.policy.x_loop(),
            envelope,
            plan,
            templates,
            ticket,
        )
    }
}

/// The Redis keys of the acknowledgements. Keys of one customer carry the
/// address as hash tag, so the layout works on Redis Cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }
    pub fn desk(&self) -> String {
        format!("{}:desk", self.prefix)
    }
    pub fn outbox(&self) -> String {
        format!("{}:outbox", self.prefix)
    }
    /// Holds the receipt acknowledged for this address within the window.
    pub fn window(&self, address: &str) -> String {
        format!(
            "{}:ack:window:{{{}}}",
            self.prefix,
            address.to_ascii_lowercase()
        )
    }
    /// Counts a client network's form acknowledgements in the window.
    pub fn network(&self, network: &str) -> String {
        format!("{}:ack:network:{{{network}}}", self.prefix)
    }
    /// Set once the relay took this receipt's acknowledgement.
    pub fn sent(&self, receipt: &str) -> String {
        format!("{}:ack:sent:{{{receipt}}}", self.prefix)
    }
}

/// Starts the two loops; the handles end after `stop`. `tickets`: the
/// Redis key of the desk's ticket number for a receipt, one function per
/// `rt` delivery, so the acknowledgement names the ticket when it is known.
pub async fn spawn(
    acknowledger: Arc<Acknowledger>,
    redis: RedisConnection,
    prefix: &str,
    consumer: &str,
    tickets: Vec<crate::delivery::store::Keys>,
    stop: CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let relay = relay::Relay::new(&acknowledger.config)?;
    let keys = Keys::new(prefix);
    // The desk's group is made before the listeners take their first item,
    // so none stored from now on is missed; the loop makes it if Redis is
    // not there yet.
    let desk = stream::GroupReader {
        key: keys.desk(),
        group: GROUP.into(),
        consumer: consumer.to_string(),
    };
    if let Err(error) = desk.ensure_group(&mut redis.clone(), "$").await {
        tracing::warn!(%error, "cannot make the acknowledgements' consumer group yet; it is tried again");
    }
    let queue = queue::Queue {
        acknowledger: acknowledger.clone(),
        redis: redis.clone(),
        keys: keys.clone(),
        consumer: consumer.to_string(),
        tickets,
    };
    let send = send::Sender {
        relay,
        redis,
        keys,
        consumer: consumer.to_string(),
        claim_after: acknowledger.config.claim_after.0,
        backoff_initial: acknowledger.config.backoff_initial.0,
        backoff_max: acknowledger.config.backoff_max.0,
    };
    tracing::info!(relay = %send.relay.name, consumer, "acknowledgements on");
    Ok(vec![
        tokio::spawn(queue.run(stop.clone())),
        tokio::spawn(send.run(stop)),
    ])
}
