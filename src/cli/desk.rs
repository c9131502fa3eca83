//! `intake desk tail`: the reference consumer of `intake:desk`, the pattern
//! a desk integrator copies.
//!
//! It reads the stream in a consumer group, so several copies share the
//! work and each item goes to one of them. Every item is handed on (a JSON
//! line on stdout, or a file per item) and only then acknowledged with
//! `XACK`: a consumer that dies between the two leaves the entry pending,
//! and it is delivered again, to itself at restart (its own pending entries
//! are read first) or to a live peer, which claims entries another consumer
//! has left pending longer than `--claim-after` (`XAUTOCLAIM`). Delivery is
//! therefore at least once; an item's receipt id (`id`) is the key that
//! makes a second delivery harmless, and `--out DIR` names each file by it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions};
use redis::{AsyncCommands, Value};
use serde_json::json;

use super::exit::Exit;
use super::fail;
use crate::config::Config;
use crate::redis_connection::connection_info;
use crate::secret::SecretValue;

#[derive(Subcommand)]
pub enum DeskCommand {
    /// Consume a stream in a consumer group: print or store each item,
    /// then acknowledge it; reclaim items a dead consumer left pending.
    Tail(TailArgs),
}

#[derive(Args)]
pub struct TailArgs {
    /// The gateway's config file, for Redis' address, password and prefix.
    #[arg(
        long,
        short,
        default_value = "/etc/intake/intake.toml",
        env = "INTAKE_CONFIG"
    )]
    config: PathBuf,
    /// Redis URL instead of the config's (`redis://host:port/db`).
    #[arg(long, env = "INTAKE_REDIS_URL")]
    redis_url: Option<String>,
    /// Stream prefix when `--redis-url` is given.
    #[arg(long, default_value = "intake")]
    prefix: String,
    /// Which stream: desk, quarantine, suppressed, held or events.
    #[arg(long, default_value = "desk")]
    stream: String,
    /// The consumer group: one per application that reads the stream.
    #[arg(long, default_value = "desk")]
    group: String,
    /// This consumer's name, stable across restarts so that it finds its
    /// own unacknowledged entries again (default: the host name).
    #[arg(long)]
    consumer: Option<String>,
    /// Where a new group starts: `all` (the whole stream) or `new` (only
    /// entries added from now on).
    #[arg(long, default_value = "all", value_parser = ["all", "new"])]
    start: String,
    /// Write each item to DIR/<receipt id>.json instead of stdout.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Take over entries another consumer has left pending this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    claim_after: Duration,
    /// Entries per read.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// How long one read waits for new entries before looking for
    /// abandoned ones again.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    block: Duration,
    /// Stop after this many items (default: run until SIGINT / SIGTERM).
    #[arg(long)]
    max: Option<u64>,
    /// Stop when the stream has nothing more to give instead of waiting.
    #[arg(long)]
    drain: bool,
}

pub fn main(command: DeskCommand) -> Exit {
    match command {
        DeskCommand::Tail(args) => tail_main(args),
    }
}

/// Where the stream lives.
struct Target {
    url: String,
    password: Option<SecretValue>,
    stream: String,
}

fn target(args: &TailArgs) -> Result<Target, Exit> {
    let stream_names = ["desk", "quarantine", "suppressed", "held", "events"];
    if !stream_names.contains(&args.stream.as_str()) {
        return Err(fail(
            Exit::Usage,
            format!(
                "--stream {}: must be one of {}",
                args.stream,
                stream_names.join(", ")
            ),
        ));
    }
    if let Some(url) = &args.redis_url {
        return Ok(Target {
            url: url.clone(),
            password: None,
            stream: format!("{}:{}", args.prefix, args.stream),
        });
    }
    let config = Config::load(&args.config).map_err(|e| {
        fail(
            Exit::Config,
            format!("{e}\n(give --redis-url to read a stream without the gateway's config)"),
        )
    })?;
    let password = match &config.redis.password {
        Some(secret) => Some(
            secret
                .resolve()
                .map_err(|e| fail(Exit::Config, format!("redis.password: {e}")))?,
        ),
        None => None,
    };
    Ok(Target {
        url: config.redis.url.clone(),
        password,
        stream: format!("{}:{}", config.redis.prefix, args.stream),
    })
}

fn tail_main(args: TailArgs) -> Exit {
    if args.batch == 0 || args.batch > 10_000 {
        return fail(Exit::Usage, "--batch: must be between 1 and 10000");
    }
    let target = match target(&args) {
        Ok(t) => t,
        Err(code) => return code,
    };
    if let Some(dir) = &args.out {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return fail(Exit::IoErr, format!("--out {}: {e}", dir.display()));
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut connection = match connect(&target, args.block).await {
            Ok(c) => c,
            Err(e) => {
                return fail(
                    Exit::Unavailable,
                    format!("Redis at {} does not answer: {e}", target.url),
                )
            }
        };
        let consumer = args.consumer.clone().unwrap_or_else(host_name);
        let mut tail = Tail {
            stream: target.stream,
            group: args.group.clone(),
            consumer,
            out: args.out.clone(),
            handled: 0,
            max: args.max,
        };
        let stop = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        tokio::select! {
            result = tail.run(&mut connection, &args) => match result {
                Ok(()) => Exit::Ok,
                Err(TailError::Redis(e)) => fail(Exit::Unavailable, format!("Redis: {e} (unacknowledged items stay pending and are delivered again)")),
                Err(TailError::Output(e)) => fail(Exit::IoErr, format!("cannot write an item, so it was not acknowledged: {e}")),
            },
            // The signal wins only between commands of the loop below: an
            // item is either written and acknowledged, or left pending.
            _ = stop => {
                eprintln!("intake desk tail: stopped; every item handed on was acknowledged");
                Exit::Ok
            }
        }
    })
}

/// Connects with a response timeout longer than a blocking read's wait:
/// the client's default (half a second) would cut every `BLOCK` short.
async fn connect(
    target: &Target,
    block: Duration,
) -> Result<MultiplexedConnection, redis::RedisError> {
    let client = redis::Client::open(connection_info(&target.url, target.password.as_ref())?)?;
    let mut connection = tokio::time::timeout(
        Duration::from_secs(10),
        client.get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(10)))
                .set_response_timeout(Some(block + Duration::from_secs(10))),
        ),
    )
    .await
    .map_err(|_| redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
    let _: String = redis::cmd("PING").query_async(&mut connection).await?;
    Ok(connection)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "desk-tail".into())
}

enum TailError {
    Redis(redis::RedisError),
    Output(std::io::Error),
}

impl From<redis::RedisError> for TailError {
    fn from(e: redis::RedisError) -> Self {
        TailError::Redis(e)
    }
}

struct Tail {
    stream: String,
    group: String,
    consumer: String,
    out: Option<PathBuf>,
    handled: u64,
    max: Option<u64>,
}

impl Tail {
    fn done(&self) -> bool {
        self.max.is_some_and(|max| self.handled >= max)
    }

    async fn run(
        &mut self,
        connection: &mut MultiplexedConnection,
        args: &TailArgs,
    ) -> Result<(), TailError> {
        self.create_group(connection, &args.start).await?;
        // 1. What this consumer was given before a crash and never acked.
        loop {
            let options = StreamReadOptions::default()
                .group(&self.group, &self.consumer)
                .count(args.batch);
            let reply: Option<redis::streams::StreamReadReply> = connection
                .xread_options(&[&self.stream], &["0"], &options)
                .await?;
            let entries = entries_of(reply);
            if entries.is_empty() {
                break;
            }
            self.handle_all(connection, &entries).await?;
            if self.done() {
                return Ok(());
            }
        }
        let claim_after_ms = args.claim_after.as_millis() as u64;
        let block_ms = args.block.as_millis().max(1) as usize;
        loop {
            // 2. What dead consumers left behind.
            let mut cursor = "0-0".to_string();
            loop {
                let options = StreamAutoClaimOptions::default().count(args.batch);
                let reply: StreamAutoClaimReply = connection
                    .xautoclaim_options(
                        &self.stream,
                        &self.group,
                        &self.consumer,
                        claim_after_ms,
                        &cursor,
                        options,
                    )
                    .await?;
                if !reply.claimed.is_empty() {
                    self.handle_all(connection, &reply.claimed).await?;
                    if self.done() {
                        return Ok(());
                    }
                }
                if reply.next_stream_id == "0-0" {
                    break;
                }
                cursor = reply.next_stream_id;
            }
            // 3. New entries.
            let mut options = StreamReadOptions::default()
                .group(&self.group, &self.consumer)
                .count(args.batch);
            if !args.drain {
                options = options.block(block_ms);
            }
            let reply: Option<redis::streams::StreamReadReply> = connection
                .xread_options(&[&self.stream], &[">"], &options)
                .await?;
            let entries = entries_of(reply);
            if entries.is_empty() && args.drain {
                return Ok(());
            }
            self.handle_all(connection, &entries).await?;
            if self.done() {
                return Ok(());
            }
        }
    }

    async fn create_group(
        &self,
        connection: &mut MultiplexedConnection,
        start: &str,
    ) -> Result<(), redis::RedisError> {
        let from = if start == "new" { "$" } else { "0" };
        let created: Result<(), redis::RedisError> = connection
            .xgroup_create_mkstream(&self.stream, &self.group, from)
            .await;
        match created {
            Ok(()) => Ok(()),
            // The group exists: its position is kept, `--start` is moot.
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn handle_all(
        &mut self,
        connection: &mut MultiplexedConnection,
        entries: &[StreamId],
    ) -> Result<(), TailError> {
        for entry in entries {
            if self.done() {
                break;
            }
            // An entry trimmed or deleted while pending comes back without
            // fields: there is nothing to hand on, only to acknowledge.
            if !entry.map.is_empty() {
                let item = item_json(&self.stream, entry);
                match &self.out {
                    Some(dir) => write_file(dir, &item).map_err(TailError::Output)?,
                    None => write_line(&item).map_err(TailError::Output)?,
                }
                self.handled += 1;
            }
            let _: u64 = connection
                .xack(&self.stream, &self.group, &[&entry.id])
                .await?;
        }
        Ok(())
    }
}

fn entries_of(reply: Option<redis::streams::StreamReadReply>) -> Vec<StreamId> {
    reply
        .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
        .unwrap_or_default()
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// One item as the desk sees it: the stream entry's fields, the envelope
/// parsed (kept as text if it is not JSON, so nothing is lost).
fn item_json(stream: &str, entry: &StreamId) -> serde_json::Value {
    let mut item = serde_json::Map::new();
    item.insert("stream".into(), json!(stream));
    item.insert("entry_id".into(), json!(entry.id));
    let mut names: Vec<&String> = entry.map.keys().collect();
    names.sort();
    for name in names {
        let Some(value) = text(entry.map.get(name)) else {
            continue;
        };
        let value = if name == "envelope" {
            serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value))
        } else {
            serde_json::Value::String(value)
        };
        item.insert(name.clone(), value);
    }
    serde_json::Value::Object(item)
}

fn write_line(item: &serde_json::Value) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, item)?;
    stdout.write_all(b"\n")?;
    // Flushed before the XACK: a pipe reader has it before Redis forgets it.
    stdout.flush()
}

/// Writes `<dir>/<receipt>.json` durably and atomically: a crash leaves the
/// old file or the new one, and a second delivery rewrites the same file.
fn write_file(dir: &Path, item: &serde_json::Value) -> std::io::Result<()> {
    let name = item
        .get("id")
        .and_then(|v| v.as_str())
        .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()))
        .or_else(|| item.get("entry_id").and_then(|v| v.as_str()))
        .unwrap_or("unnamed")
        .to_string();
    let path = dir.join(format!("{name}.json"));
    let tmp = dir.join(format!(".{name}.json.tmp"));
    {
        let mut file = std::fs::File::create(&tmp)?;
        serde_json::to_writer_pretty(&mut file, item)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn entry(fields: &[(&str, &str)]) -> StreamId {
        let map: HashMap<String, Value> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), Value::BulkString(v.as_bytes().to_vec())))
            .collect();
        StreamId {
            id: "1-0".into(),
            map,
            milliseconds_elapsed_from_delivery: None,
            delivered_count: None,
        }
    }

    #[test]
    fn item_parses_the_envelope_and_keeps_other_fields_as_text() {
        let e = entry(&[
            ("id", "01ABC"),
            ("kind", "message"),
            ("envelope", r#"{"version":1,"subject":"Hi"}"#),
        ]);
        let item = item_json("intake:desk", &e);
        assert_eq!(item["envelope"]["subject"], "Hi");
        assert_eq!(item["kind"], "message");
        assert_eq!(item["entry_id"], "1-0");
        assert_eq!(item["stream"], "intake:desk");
    }

    #[test]
    fn an_envelope_that_is_not_json_is_kept_as_text() {
        let e = entry(&[("id", "01ABC"), ("envelope", "not json {")]);
        let item = item_json("intake:desk", &e);
        assert_eq!(item["envelope"], "not json {");
    }

    #[test]
    fn files_are_named_by_receipt_and_rewritten_on_redelivery() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry(&[("id", "01ABC"), ("envelope", "{}")]);
        write_file(dir.path(), &item_json("s", &e)).unwrap();
        write_file(dir.path(), &item_json("s", &e)).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|d| d.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["01ABC.json".to_string()]);
    }

    #[test]
    fn a_hostile_receipt_id_cannot_escape_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry(&[("id", "../../etc/passwd"), ("envelope", "{}")]);
        write_file(dir.path(), &item_json("s", &e)).unwrap();
        assert!(dir.path().join("1-0.json").exists());
    }
}
