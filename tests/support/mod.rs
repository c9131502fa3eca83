//! Shared test support: reaches the real services of the dev stack
//! (`deploy/dev/services start`), starts a gateway in-process on a free
//! port, and gives each test its own Redis key prefix so tests never see
//! each other's streams.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod audit;
pub mod bystander;
pub mod clamd;
pub mod cluster;
pub mod cyrus;
pub mod envelope;
pub mod exim;
pub mod imap;
pub mod lmtp;
pub mod opensmtpd;
pub mod outbox;
pub mod postfix;
pub mod receiver;
pub mod redis_proxy;
pub mod rt;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The bearer token every test gateway accepts on `/v1/messages`.
pub const TOKEN: &str = "test-token-6b1f";

/// The dev stack's Redis (deploy/dev/intake-env), unless overridden.
pub fn redis_url() -> String {
    std::env::var("INTAKE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:16379".into())
}

/// A key prefix no other test uses.
pub fn unique_prefix(test: &str) -> String {
    format!("test:{test}:{}", ulid::Ulid::new())
}

/// The config every test gateway starts from; `extra` is appended (more
/// `[[form]]` tables, say).
pub fn default_toml(
    redis_url: &str,
    prefix: &str,
    token_file: &std::path::Path,
    extra: &str,
) -> String {
    format!(
        r#"
[http]
listen = "127.0.0.1:0"
request_timeout = "10s"
header_timeout = "5s"
retry_after = "7s"

[redis]
url = "{redis_url}"
prefix = "{prefix}"
timeout = "1s"

[messages]
token = {{ file = "{token}" }}
max_size = "1MB"

[[form]]
id = "contact"
required = ["email"]
redirect = "https://shop.test/thanks"
allowed_origins = ["https://shop.test"]
max_size = "200KB"
max_files = 2

{extra}
"#,
        token = token_file.display()
    )
}

/// A gateway running in this process, stopped when dropped.
pub struct Gateway {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub prefix: String,
    pub redis_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts a gateway against the dev Redis with the default config.
    pub async fn start(test: &str) -> Gateway {
        Gateway::start_with(test, &redis_url(), "").await
    }

    /// Starts a gateway against `redis_url` with `extra` config appended.
    pub async fn start_with(test: &str, redis_url: &str, extra: &str) -> Gateway {
        Gateway::start_custom(test, redis_url, |prefix, token_file| {
            default_toml(redis_url, prefix, token_file, extra)
        })
        .await
    }

    /// Like [`Gateway::start_with`], with the config text passed through
    /// `edit` first (to change a default, say).
    pub async fn start_edited(
        test: &str,
        redis_url: &str,
        extra: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Gateway {
        Gateway::start_custom(test, redis_url, |prefix, token_file| {
            edit(default_toml(redis_url, prefix, token_file, extra))
        })
        .await
    }

    /// Starts a gateway with a whole config of the test's own, made from
    /// the key prefix and the token file's path.
    pub async fn start_custom(
        test: &str,
        redis_url: &str,
        make: impl FnOnce(&str, &std::path::Path) -> String,
    ) -> Gateway {
        Gateway::start_custom_at(test, redis_url, "127.0.0.1:0", make).await
    }

    /// Like [`Gateway::start_custom`], listening on `listen` (a gateway
    /// that comes back on the port a mail server already points at).
    pub async fn start_custom_at(
        test: &str,
        redis_url: &str,
        listen: &str,
        make: impl FnOnce(&str, &std::path::Path) -> String,
    ) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let token_file: PathBuf = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write token");
        let prefix = unique_prefix(test);
        let text = make(&prefix, &token_file);
        let config = intake::config::Config::from_toml(&text).expect("test config parses");
        config.validate().expect("test config is valid");
        let listener = TcpListener::bind(listen).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(intake::serve::run_on(listener, config, async {
            let _ = rx.await;
        }));
        Gateway {
            addr,
            url: format!("http://{addr}"),
            prefix,
            redis_url: redis_url.to_string(),
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    pub fn form_url(&self, form: &str) -> String {
        format!("{}/v1/forms/{form}", self.url)
    }

    /// Every entry of `<prefix>:<stream>`, oldest first.
    pub async fn entries(&self, stream: &str) -> Vec<Entry> {
        read_stream(&self.redis_url, &format!("{}:{stream}", self.prefix)).await
    }

    /// Stops the gateway and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("gateway stops within 30 s");
            result
                .expect("gateway task")
                .expect("gateway ran without error");
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// One stream entry: its Redis id and fields.
#[derive(Debug, Clone)]
pub struct Entry {
    pub entry_id: String,
    pub fields: HashMap<String, String>,
}

impl Entry {
    pub fn field(&self, name: &str) -> &str {
        self.fields
            .get(name)
            .unwrap_or_else(|| panic!("entry has no field `{name}`: {:?}", self.fields))
    }

    pub fn envelope(&self) -> serde_json::Value {
        serde_json::from_str(self.field("envelope")).expect("envelope is JSON")
    }
}

/// A connection for test checks. redis-rs gives up on an answer after
/// 500 ms by default; on a busy shared machine reading a stream of a few
/// thousand entries can take longer, and that made tests fail now and then
/// while nothing was wrong. A check is not a timing assertion.
pub async fn test_connection(redis_url: &str) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(30)));
    redis::Client::open(redis_url)
        .expect("redis url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("the dev Redis is up (deploy/dev/services start)")
}

pub async fn read_stream(redis_url: &str, key: &str) -> Vec<Entry> {
    let mut conn = test_connection(redis_url).await;
    let reply: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    reply
        .into_iter()
        .map(|(entry_id, pairs)| Entry {
            entry_id,
            fields: pairs.into_iter().collect(),
        })
        .collect()
}

/// An HTTP client that neither follows redirects nor uses a proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A Redis server of this test's own, so a test can stop and restart it
/// without disturbing the others.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    /// Keeps an append-only file synced on every write, so what it
    /// acknowledged survives a kill and a restart.
    persistent: bool,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        PrivateRedis::start_with(false)
    }

    /// A Redis that loses nothing it acknowledged when killed
    /// (`appendonly yes`, `appendfsync always`).
    pub fn start_persistent() -> PrivateRedis {
        PrivateRedis::start_with(true)
    }

    fn start_with(persistent: bool) -> PrivateRedis {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut redis = PrivateRedis {
            port: free_port(),
            child: None,
            dir,
            persistent,
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(if self.persistent {
                ["--appendonly", "yes", "--appendfsync", "always"].as_slice()
            } else {
                ["--appendonly", "no"].as_slice()
            })
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (deploy/dev/services installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing
    /// answers, like a Redis stuck on a slow disk.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Thaws a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Kills the server, as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.thaw();
        }
        self.stop();
    }
}
