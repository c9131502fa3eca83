//! `intake serve`: load the config, build the pipeline, run the sources
//! until SIGTERM or Ctrl-C, then drain.
//!
//! Shutdown is begin (stop accepting), drain (finish open requests), a
//! deadline, then force; each step is logged.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::exit::Exit;
use crate::config::Config;

use crate::guard::Guard;
use crate::pipeline::Pipeline;
use crate::scan::Scanner;
use crate::sink::redis::RedisSink;
use crate::sources::http::{self, AppState};
use crate::sources::imap::ImapSource;
use crate::telemetry::LogFormat;

/// How long open requests get to finish after a shutdown signal.
const DRAIN_DEADLINE: Duration = Duration::from_secs(20);

pub fn main(config_path: &Path) -> Exit {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("intake: {e}");
            return Exit::Config;
        }
    };
    // Rules that do not load are a configuration problem, named like one.
    if let Some(dir) = &config.rules.dir {
        if let Err(e) = crate::guard::rules::RuleSet::load_dir(dir) {
            eprintln!(
                "intake: rules.dir: the rules in {} do not load:\n{e}",
                dir.display()
            );
            return Exit::Config;
        }
    }
    // So are acknowledgement templates with a mistake: file and line.
    if let Some(section) = &config.acknowledge {
        if let Err(e) = crate::acknowledge::Acknowledger::new(section, config.auth.is_some()) {
            eprintln!("intake: acknowledge.templates: the templates do not load:\n{e}");
            return Exit::Config;
        }
    }
    init_tracing(&config);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("intake: cannot start the async runtime: {e}");
            return Exit::Failure;
        }
    };
    // Large items run here, their threads behind the workers for the CPU.
    let bulk = match crate::sources::offload::bulk_runtime() {
        Ok(bulk) => bulk,
        Err(e) => {
            eprintln!("intake: cannot start the runtime for large items: {e}");
            return Exit::Failure;
        }
    };
    crate::sources::offload::set_bulk_runtime(bulk.handle().clone());
    let result = runtime.block_on(run(config, shutdown_signal()));
    bulk.shutdown_timeout(DRAIN_DEADLINE);
    match result {
        Ok(()) => Exit::Ok,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("intake: {e:#}");
            Exit::Failure
        }
    }
}

/// Runs the daemon until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on http.listen = {}", config.http.listen))?;
    run_on(listener, config, shutdown).await
}

/// Runs the daemon on an already bound public listener (tests bind port
/// 0); the admin listener, when configured, binds `admin.listen`.
pub async fn run_on(
    listener: TcpListener,
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let metrics = crate::telemetry::metrics();
    let password = resolve(config.redis.password.as_ref()).context("redis.password")?;
    let sink = RedisSink::new(&config.redis, password).context("redis.url")?;
    let mailgate_token = resolve(config.messages.token.as_ref()).context("messages.token")?;
    let form_tokens = resolve(config.forms_security.as_ref().map(|f| &f.secret))
        .context("forms_security.secret")?
        .map(|secret| crate::sources::http::bots::TokenKey::new(secret.expose().as_bytes()));
    let admin_token = resolve(config.admin.token.as_ref()).context("admin.token")?;
    let tls = match &config.http.tls {
        Some(tls) => Some(http::server::tls_acceptor(&tls.cert, &tls.key).context("http.tls")?),
        None => None,
    };
    let admin_listener = match &admin_token {
        Some(_) => Some(
            TcpListener::bind(config.admin.listen)
                .await
                .with_context(|| {
                    format!("cannot listen on admin.listen = {}", config.admin.listen)
                })?,
        ),
        None => None,
    };
    let lmtp_listener = match &config.lmtp {
        Some(lmtp) => Some(
            TcpListener::bind(lmtp.listen)
                .await
                .with_context(|| format!("cannot listen on lmtp.listen = {}", lmtp.listen))?,
        ),
        None => None,
    };
    let guard_store = crate::guard::store::RedisStore::new(
        sink.connection(),
        &config.redis.prefix,
        config.redis.timeout.into(),
    );
    let guard = match &config.rules.dir {
        Some(dir) => Guard::from_dir(dir.clone(), Some(guard_store))
            .map_err(|e| anyhow::anyhow!("rules.dir: the rules do not load:\n{e}"))?,
        None => Guard::new(
            crate::guard::rules::RuleSet::nothing(),
            None,
            Some(guard_store),
            crate::guard::limiter::LimiterClock::Live,
        ),
    };
    tracing::info!(rules = guard.rules().rules.len(), dir = ?config.rules.dir, "rules loaded");
    let scanner = Scanner::from_config(config.scan.as_ref())
        .map_err(anyhow::Error::msg)
        .context("scan.clamd")?;
    let redis_connection = sink.connection();
    let redis_connection_for_watch = sink.connection();
    let redis_connection_for_delivery = sink.connection();
    let redis_connection_for_acknowledge = sink.connection();
    let redis_connection_for_admin = sink.connection();
    let delivery_status = crate::delivery::Registry::default();
    let backpressure = Arc::new(crate::backpressure::Backpressure::default());
    let replay_connection = redis_connection.clone();
    let sink: Arc<dyn crate::sink::Sink> = Arc::new(sink);
    let quarantine = crate::pipeline::quarantine::Quarantine {
        scanner: scanner.clone(),
        sink: sink.clone(),
    };
    let audit = crate::pipeline::audit::Audit::new(
        config.audit.clone(),
        Some(crate::guard::store::RedisStore::new(
            redis_connection.clone(),
            &config.redis.prefix,
            config.redis.timeout.into(),
        )),
    );
    let authenticator = config
        .auth
        .clone()
        .map(crate::auth::Authenticator::new)
        .transpose()
        .context("auth")?;
    let pipeline = Arc::new(
        Pipeline::new(guard.clone(), scanner.clone(), sink.clone())
            .with_authentication(authenticator)
            .with_privacy(config.privacy.clone())
            .with_mime_limits(config.mime.clone())
            .with_audit(audit)
            .with_backpressure(backpressure.clone()),
    );
    let imap = ImapSource::new(
        &config.imap,
        pipeline.clone(),
        redis_connection,
        &config.redis.prefix,
        config.redis.timeout.into(),
    )
    .context("imap")?;
    // One budget for every body in flight, whichever listener took it in.
    let budget = crate::budget::BodyBudget::from_config(&config.memory);
    let lmtp = lmtp_listener
        .zip(config.lmtp.clone())
        .map(|(listener, lmtp)| {
            let shared = Arc::new(crate::sources::lmtp::Shared {
                config: lmtp,
                pipeline: pipeline.clone(),
                keep_raw: config.messages.keep_raw,
                budget: budget.clone(),
            });
            (listener, shared)
        });
    let admin_pipeline = pipeline.clone();
    let state = Arc::new(AppState {
        http: config.http.clone(),
        messages: config.messages.clone(),
        forms: config.forms.clone(),
        pipeline,
        mailgate_token,
        per_ip: crate::sources::http::per_ip::PerIpLimit::new(config.http.max_requests_per_ip),
        bots: http::bots::BotChecks {
            tokens: form_tokens,
            redis: Some(replay_connection),
            prefix: config.redis.prefix.clone(),
            timeout: config.redis.timeout.into(),
        },
        budget,
        imap: imap.health(),
        deliveries: delivery_status.clone(),
    });
    tracing::info!(
        listen = %listener.local_addr()?,
        tls = tls.is_some(),
        forms = config.forms.len(),
        raw_mail = state.mailgate_token.is_some(),
        imap_mailboxes = imap.mailboxes(),
        "intake is serving"
    );
    match state.pipeline.sink().ping().await {
        Ok(()) => tracing::info!(url = %redact_url(&config.redis.url), "Redis reachable"),
        Err(e) => tracing::warn!(
            url = %redact_url(&config.redis.url),
            error = %e,
            "Redis unreachable; answering 503 until it is back"
        ),
    }

    // One signal stops every listener and background task.
    let stop = CancellationToken::new();
    let upkeep = tokio::spawn({
        let stop = stop.clone();
        let metrics = metrics.clone();
        async move {
            stop.run_until_cancelled(crate::telemetry::upkeep(metrics))
                .await
        }
    });
    // Health checks of clamd and the re-drive of held items.
    let redrive = match config.scan.as_ref().filter(|_| scanner.is_enabled()) {
        Some(scan) => {
            let redrive = crate::pipeline::held::Redrive {
                scanner,
                sink,
                keep_raw: config.messages.keep_raw,
                interval: scan.redrive_interval.into(),
                max_backoff: scan.redrive_max_backoff.into(),
                batch: scan.redrive_batch,
            };
            Some(tokio::spawn(redrive.run(stop.clone())))
        }
        None => {
            tracing::warn!(
                "virus scanning is off ([scan] missing or disabled): items are stored as unscanned"
            );
            None
        }
    };
    // Samples the desk's length and Redis' memory; the pipeline reads the
    // verdict without a round trip.
    let backpressure_watch = tokio::spawn(backpressure.clone().watch(
        redis_connection_for_watch,
        format!("{}:desk", config.redis.prefix),
        config.backpressure.clone(),
        stop.clone(),
    ));
    // Delivery workers share the gateway's Redis connection; their
    // failures never touch the listeners.
    let deliveries = crate::delivery::spawn_all(
        &config.deliveries,
        redis_connection_for_delivery,
        &config.redis.prefix,
        &crate::delivery::consumer_name(),
        delivery_status.clone(),
        stop.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    // Acknowledgements read the desk in a group of their own; a template
    // with a mistake stops the start here, with its file and line.
    let acknowledgements = match &config.acknowledge {
        Some(section) => {
            let acknowledger =
                crate::acknowledge::Acknowledger::new(section, config.auth.is_some())
                    .map_err(anyhow::Error::msg)
                    .context("acknowledge.templates")?;
            let tickets = config
                .deliveries
                .iter()
                .filter(|d| d.target == crate::delivery::config::TargetKind::Rt)
                .map(|d| crate::delivery::store::Keys::new(&config.redis.prefix, &d.name))
                .collect();
            crate::acknowledge::spawn(
                Arc::new(acknowledger),
                redis_connection_for_acknowledge,
                &config.redis.prefix,
                &crate::delivery::consumer_name(),
                tickets,
                stop.clone(),
            )
            .await
            .map_err(anyhow::Error::msg)
            .context("acknowledge.relay")?
        }
        None => Vec::new(),
    };
    let rules_watch = tokio::spawn(
        guard
            .clone()
            .watch(config.rules.poll_interval.into(), stop.clone()),
    );
    let limits = http::server::ConnectionLimits::from_config(&config.http);
    let public = http::server::serve(
        listener,
        tls,
        limits,
        state,
        stop.clone().cancelled_owned(),
        DRAIN_DEADLINE,
    );
    let imap_health = imap.health();
    let admin = async {
        let (Some(listener), Some(token)) = (admin_listener, admin_token) else {
            tracing::warn!("admin.token is not set: no admin listener, no /metrics");
            return;
        };
        tracing::info!(listen = %config.admin.listen, "admin listener serving");
        let admin = crate::admin::Admin(Arc::new(crate::admin::AdminState {
            token,
            metrics,
            guard: guard.clone(),
            quarantine,
            pipeline: admin_pipeline,
            retry_after: config.http.retry_after.into(),
            imap: imap_health,
            redis: redis_connection_for_admin,
            prefix: config.redis.prefix.clone(),
            deliveries: delivery_status.clone(),
        }));
        http::server::serve(
            listener,
            None,
            limits,
            admin,
            stop.clone().cancelled_owned(),
            DRAIN_DEADLINE,
        )
        .await;
    };
    // LMTP sessions in the middle of a message get their answer; idle
    // ones are told 421 (the mail server retries elsewhere or later).
    let lmtp = async {
        let Some((listener, shared)) = lmtp else {
            return;
        };
        tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "LMTP listener serving");
        crate::sources::lmtp::serve(
            listener,
            shared,
            stop.clone().cancelled_owned(),
            DRAIN_DEADLINE,
        )
        .await;
    };
    // IMAP mailboxes stop with the same signal: unacknowledged mail stays
    // on the server, and each lease is released for another replica.
    let imap = imap.run(stop.clone());
    let signal = async {
        shutdown.await;
        stop.cancel();
    };
    tokio::join!(public, admin, lmtp, imap, signal);
    let _ = upkeep.await;
    if let Some(redrive) = redrive {
        // The task stops at its next step; a scan in flight is bounded by
        // scan.timeout, and an item not yet deleted from held stays there.
        if tokio::time::timeout(DRAIN_DEADLINE, redrive).await.is_err() {
            tracing::warn!("re-drive did not stop within the drain deadline");
        }
    }
    for delivery in deliveries {
        let _ = delivery.await;
    }
    for task in acknowledgements {
        let _ = task.await;
    }
    let _ = rules_watch.await;
    let _ = backpressure_watch.await;
    tracing::info!("intake stopped");
    Ok(())
}

fn resolve(
    secret: Option<&crate::secret::Secret>,
) -> anyhow::Result<Option<crate::secret::SecretValue>> {
    secret
        .map(|s| s.resolve().map_err(anyhow::Error::msg))
        .transpose()
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received: no new connections");
}

/// A Redis URL without its password, for logs.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
