//! `intake deliver --config FILE`: the delivery workers alone, without the
//! listeners, so they scale apart from them (the same `[[delivery]]`
//! tables `intake serve` runs). Stops on SIGTERM or SIGINT once the
//! attempts in flight have ended; what they leave is pending, never lost.

use std::path::PathBuf;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::exit::Exit;
use super::fail;
use crate::config::Config;
use crate::redis_connection::RedisConnection;

#[derive(Args)]
pub struct DeliverArgs {
    /// The configuration file (TOML) with its `[[delivery]]` tables.
    #[arg(
        long,
        short,
        default_value = "/etc/intake/intake.toml",
        env = "INTAKE_CONFIG"
    )]
    config: PathBuf,
    /// This worker's consumer name (default: `INTAKE_CONSUMER`, else the
    /// host name); stable across restarts, unique among live workers.
    #[arg(long)]
    consumer: Option<String>,
}

pub fn main(args: DeliverArgs) -> Exit {
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => return fail(Exit::Config, e),
    };
    if config.deliveries.is_empty() {
        return fail(
            Exit::Config,
            format!("{}: no [[delivery]] table", args.config.display()),
        );
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            return fail(
                Exit::Failure,
                format!("cannot start the async runtime: {e}"),
            )
        }
    };
    runtime.block_on(async move {
        let password = match config
            .redis
            .password
            .as_ref()
            .map(|s| s.resolve())
            .transpose()
        {
            Ok(password) => password,
            Err(e) => return fail(Exit::Config, format!("redis.password: {e}")),
        };
        let redis = match RedisConnection::new(&config.redis, password) {
            Ok(redis) => redis,
            Err(e) => return fail(Exit::Config, format!("redis.url: {e}")),
        };
        let _metrics = crate::telemetry::metrics();
        let consumer = args.consumer.unwrap_or_else(crate::delivery::consumer_name);
        let stop = CancellationToken::new();
        let handles = match crate::delivery::spawn_all(
            &config.deliveries,
            redis,
            &config.redis.prefix,
            &consumer,
            crate::delivery::Registry::default(),
            stop.clone(),
        ) {
            Ok(handles) => handles,
            Err(e) => return fail(Exit::Config, e),
        };
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => return fail(Exit::Failure, format!("SIGTERM handler: {e}")),
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stop.cancel();
        for handle in handles {
            let _ = handle.await;
        }
        Exit::Ok
    })
}
