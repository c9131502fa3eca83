//! IMAP helpers for tests: a client that seeds and inspects mailboxes of
//! the dev Dovecot (each test its own mailbox), a private Dovecot a test
//! may stop and restart, and the gateway binary as a child process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use tokio::net::TcpStream;

pub type Session = async_imap::Session<TcpStream>;

/// The dev Dovecot's plain IMAP port (deploy/dev/intake-env).
pub fn dev_port() -> u16 {
    std::env::var("INTAKE_TEST_IMAP_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(11143)
}

pub fn dev_user() -> String {
    std::env::var("INTAKE_TEST_IMAP_USER").unwrap_or_else(|_| "support@shop.test".into())
}

pub fn dev_password() -> String {
    std::env::var("INTAKE_TEST_IMAP_PASSWORD").unwrap_or_else(|_| "support-dev".into())
}

/// A mailbox name no other test uses, with its two target folders.
pub struct Boxes {
    pub inbox: String,
    pub done: String,
    pub quarantine: String,
}

impl Boxes {
    pub fn new(test: &str) -> Boxes {
        let base = format!("t-{test}-{}", ulid::Ulid::new());
        Boxes {
            done: format!("{base}-done"),
            quarantine: format!("{base}-quar"),
            inbox: base,
        }
    }
}

/// Logs in on a clear-text loopback port.
pub async fn login(port: u16, user: &str, password: &str) -> Session {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match try_login(port, user, password).await {
            Ok(session) => return session,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot log in to IMAP on 127.0.0.1:{port}: {e}"),
        }
    }
}

async fn try_login(port: u16, user: &str, password: &str) -> Result<Session, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let mut client = async_imap::Client::new(tcp);
    client
        .read_response()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no greeting")?;
    client
        .login(user, password)
        .await
        .map_err(|(e, _)| e.to_string())
}

pub async fn dev_login() -> Session {
    login(dev_port(), &dev_user(), &dev_password()).await
}

pub async fn create(session: &mut Session, mailbox: &str) {
    session
        .create(mailbox)
        .await
        .unwrap_or_else(|e| panic!("CREATE {mailbox}: {e}"));
}

/// Appends each mail (one APPEND a mail; fast enough on loopback).
pub async fn append_all(
    session: &mut Session,
    mailbox: &str,
    mails: &[Vec<u8>],
    flags: Option<&str>,
) {
    for mail in mails {
        session
            .append(mailbox, flags, None, mail)
            .await
            .unwrap_or_else(|e| panic!("APPEND to {mailbox}: {e}"));
    }
}

/// How many mails a mailbox holds (0 if it does not exist).
pub async fn count(session: &mut Session, mailbox: &str) -> u32 {
    match session.status(mailbox, "(MESSAGES)").await {
        Ok(status) => status.exists,
        Err(_) => 0,
    }
}

/// Deletes the test's mailboxes, ignoring ones that are gone.
pub async fn cleanup(boxes: &Boxes) {
    let mut session = dev_login().await;
    for mailbox in [&boxes.inbox, &boxes.done, &boxes.quarantine] {
        let _ = session.delete(mailbox).await;
    }
    let _ = session.logout().await;
}

/// A small mail with a unique subject and Message-ID.
pub fn small_mail(n: usize, tag: &str) -> Vec<u8> {
    format!(
        "From: Customer {n} <c{n}@example.com>\r\n\
         To: support@shop.test\r\n\
         Subject: {tag} mail {n}\r\n\
         Message-ID: <{tag}-{n}@example.com>\r\n\
         Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
         \r\n\
         Hello, this is mail {n} about my order.\r\n"
    )
    .into_bytes()
}

/// Polls `f` until it returns `Some`, or panics with `what` after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// XLEN of `<prefix>:<stream>`.
pub async fn xlen(redis_url: &str, prefix: &str, stream: &str) -> usize {
    let mut conn = super::test_connection(redis_url).await;
    redis::cmd("XLEN")
        .arg(format!("{prefix}:{stream}"))
        .query_async(&mut conn)
        .await
        .expect("XLEN")
}

/// The `[[imap]]` table for a test mailbox on a clear loopback port.
pub fn imap_toml(port: u16, boxes: &Boxes, password_file: &Path, extra: &str) -> String {
    format!(
        r#"
[[imap]]
name = "test"
host = "127.0.0.1"
port = {port}
tls = "none"
username = "{user}"
password = {{ file = "{password}" }}
mailboxes = ["{inbox}"]
processed_folder = "{done}"
quarantine_folder = "{quarantine}"
{defaults}{extra}
"#,
        user = dev_user(),
        password = password_file.display(),
        inbox = boxes.inbox,
        done = boxes.done,
        quarantine = boxes.quarantine,
        defaults = imap_defaults(extra),
    )
}

/// Test-friendly timings; a key given in `extra` wins.
fn imap_defaults(extra: &str) -> String {
    [
        ("poll_interval", "\"500ms\""),
        ("connect_timeout", "\"3s\""),
        ("command_timeout", "\"10s\""),
        ("backoff_max", "\"2s\""),
        ("lease_ttl", "\"3s\""),
    ]
    .iter()
    .filter(|(key, _)| !extra.contains(&format!("{key} =")))
    .map(|(key, value)| format!("{key} = {value}\n"))
    .collect()
}

/// A file holding `secret`, in `dir`.
pub fn secret_file(dir: &Path, name: &str, secret: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).expect("write secret");
    path
}

/// The gateway binary running `serve --config FILE`, its log in a file.
pub struct GatewayProcess {
    child: Option<Child>,
    pub log: PathBuf,
}

impl GatewayProcess {
    pub fn start(config: &Path, log: &Path) -> GatewayProcess {
        GatewayProcess::start_as(config, log, "intake-test")
    }

    /// Like [`GatewayProcess::start`], as consumer `consumer`
    /// (`INTAKE_CONSUMER`): two replicas need two names, and a restarted
    /// replica its old one to take back its pending entries at once.
    pub fn start_as(config: &Path, log: &Path, consumer: &str) -> GatewayProcess {
        let file = std::fs::File::create(log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_intake"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "intake=info")
            .env("INTAKE_CONSUMER", consumer)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the intake binary");
        GatewayProcess {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    /// The process id, while it runs (to read its /proc/PID/status).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no shutdown, no lease release, mid-whatever.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Dovecot of this test's own on a free port (clear IMAP, one account
/// with the dev credentials), so a test can stop and restart it without
/// disturbing the shared one. Its config has the dev stack's shape.
pub struct PrivateDovecot {
    pub port: u16,
    dir: tempfile::TempDir,
    running: bool,
    /// Dovecot's `mail_max_userip_connections`.
    max_connections: u32,
}

impl PrivateDovecot {
    pub fn start() -> PrivateDovecot {
        PrivateDovecot::start_limited(50)
    }

    /// Allows the account at most `max_connections` at once from one IP
    /// (Dovecot refuses the login past it).
    pub fn start_limited(max_connections: u32) -> PrivateDovecot {
        let dir = tempfile::Builder::new()
            .prefix("intake-dovecot-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let port = super::free_port();
        let mut dovecot = PrivateDovecot {
            port,
            dir,
            running: false,
            max_connections,
        };
        dovecot.write_config();
        dovecot.restart();
        dovecot
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("dovecot.conf")
    }

    fn write_config(&self) {
        let d = self.dir.path();
        let root = id("-u") == "0";
        let mail_user = "intake-dev-mail";
        let (uid, gid, internal, internal_group, login) = if root {
            let uid = id_of(&["-u", mail_user]);
            let gid = id_of(&["-g", mail_user]);
            (
                uid,
                gid,
                "dovecot".to_string(),
                "dovecot".to_string(),
                "dovenull".to_string(),
            )
        } else {
            let user = id("-un");
            (id("-u"), id("-g"), user.clone(), id("-gn"), user)
        };
        for sub in ["mail", "lib", "run"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        let users = d.join("users");
        std::fs::write(
            &users,
            format!("{}:{{PLAIN}}{}::::::\n", dev_user(), dev_password()),
        )
        .expect("users");
        if root {
            // Dovecot's own users must reach the folder and files.
            let _ = Command::new("chmod").arg("755").arg(d).status();
            let _ = Command::new("chmod").arg("755").arg(d.join("run")).status();
            let _ = Command::new("chown")
                .arg(format!("root:{internal_group}"))
                .arg(&users)
                .status();
            let _ = Command::new("chmod").arg("640").arg(&users).status();
            let _ = Command::new("chown")
                .arg(format!("{uid}:{gid}"))
                .arg(d.join("mail"))
                .status();
        }
        let mut nochroot = String::new();
        if !root {
            for s in ["anvil", "imap-login"] {
                nochroot.push_str(&format!("service {s} {{\n  chroot =\n}}\n"));
            }
        }
        let conf = format!(
            r#"instance_name = intake-test-{port}
base_dir = {d}/run
state_dir = {d}/lib
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
shutdown_clients = yes
default_internal_user = {internal}
default_internal_group = {internal_group}
default_login_user = {login}
first_valid_uid = {uid}
last_valid_uid = 0
first_valid_gid = 0
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {users}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/mail/%u
}}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}
protocol imap {{
  mail_max_userip_connections = {max_connections}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
{nochroot}"#,
            port = self.port,
            max_connections = self.max_connections,
            d = d.display(),
            users = users.display(),
        );
        std::fs::write(self.conf(), conf).expect("dovecot.conf");
    }

    /// Starts (again) on the same port and mail folder.
    pub fn restart(&mut self) {
        assert!(!self.running, "already running");
        let status = Command::new("dovecot")
            .arg("-c")
            .arg(self.conf())
            .status()
            .expect("dovecot is installed (deploy/dev/services installs it)");
        assert!(status.success(), "dovecot failed to start: {}", self.log());
        self.running = true;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private dovecot did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it (clients are disconnected) and waits until the port closes.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let _ = Command::new("doveadm")
            .arg("-c")
            .arg(self.conf())
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The master's pid file goes when it has exited.
        let pid = self.dir.path().join("run/master.pid");
        let deadline = Instant::now() + Duration::from_secs(10);
        while pid.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL to the master and every process under it, as a crash or an
    /// OOM kill would: no goodbye to clients, nothing flushed.
    pub fn kill(&mut self) {
        if !self.running {
            return;
        }
        let pid_file = self.dir.path().join("run/master.pid");
        let master = std::fs::read_to_string(&pid_file).expect("dovecot master.pid");
        let mut tree = vec![master.trim().to_string()];
        let mut i = 0;
        while i < tree.len() {
            let children = children_of(&tree[i]);
            tree.extend(children);
            i += 1;
        }
        let _ = Command::new("kill").arg("-KILL").args(&tree).status();
        self.running = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        // A stale pid file could name a process that reused the pid.
        let _ = std::fs::remove_file(pid_file);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for PrivateDovecot {
    fn drop(&mut self) {
        // A failed test's server side, or it is gone with the temp dir.
        if std::thread::panicking() {
            eprintln!("--- private Dovecot's log ---\n{}", self.log());
        }
        self.stop();
    }
}

/// The pids whose parent is `pid`, from /proc (no procps needed).
pub fn children_of(pid: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.bytes().all(|b| b.is_ascii_digit()).then_some(())?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces and parens.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
            (ppid == pid).then_some(name)
        })
        .collect()
}

fn id(flag: &str) -> String {
    id_of(&[flag])
}

fn id_of(args: &[&str]) -> String {
    let out = Command::new("id").args(args).output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every entry's envelope `source.uid`, to check each mail came once.
pub fn uids(entries: &[super::Entry]) -> Vec<u64> {
    let mut uids: Vec<u64> = entries
        .iter()
        .map(|e| e.envelope()["source"]["uid"].as_u64().expect("source.uid"))
        .collect();
    uids.sort_unstable();
    uids
}

/// Drains a stream of fetches (helper for tests that FETCH directly).
pub async fn collect<S, T, E>(stream: S) -> Vec<T>
where
    S: futures_util::Stream<Item = Result<T, E>>,
    E: std::fmt::Debug,
{
    stream.try_collect().await.expect("stream")
}
