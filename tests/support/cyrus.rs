//! A private Cyrus IMAP 3.6 for tests: Debian's `cyrus-imapd` unpacked
//! under the dev state by deploy/dev/cyrus (dovecot-imapd is the installed
//! IMAP server), run as the system user `intake-cyrus` with a config
//! folder, partition, sockets and loopback port of its own. Every service
//! of its `cyrus.conf` names its own `-C imapd.conf` (else it reads
//! /etc/imapd.conf); `idled` runs, so IDLE is push, not a poll.
//!
//! Cyrus logs only to syslog (`/dev/log`): each instance runs in a mount
//! namespace of its own (`unshare -m`) with a small `/dev` where `log` leads
//! to a datagram socket this process reads, so a test can print what the
//! server said. Logins are checked by `sasl_pwcheck_method: alwaystrue`
//! (any password); `cyrus` is the admin, who creates the user's mailbox
//! (`user.support`) before the user logs in. Mail is put in with
//! MULTIAPPEND (one command per batch) on a small blocking client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The account the gateway reads.
pub const USER: &str = "support";
/// The admin of `admins:` in imapd.conf.
const ADMIN: &str = "cyrus";
/// The system user the instance runs as (deploy/dev/cyrus creates it).
const RUN_AS: &str = "intake-cyrus";

/// How the server names folders: the three shapes Cyrus can be set to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    /// `altnamespace: no`, `unixhierarchysep: no`: `(("INBOX." "."))`.
    Standard,
    /// `altnamespace: no`, `unixhierarchysep: yes`: `(("INBOX/" "/"))`.
    UnixSeparator,
    /// `altnamespace: yes`, `unixhierarchysep: no`: `(("" "."))`.
    Alt,
}

impl Namespace {
    fn settings(self) -> (&'static str, &'static str) {
        match self {
            Namespace::Standard => ("no", "no"),
            Namespace::UnixSeparator => ("no", "yes"),
            Namespace::Alt => ("yes", "no"),
        }
    }

    pub fn separator(self) -> char {
        match self {
            Namespace::UnixSeparator => '/',
            _ => '.',
        }
    }

    /// The folder `leaf` of the user as this server names it.
    pub fn folder(self, leaf: &str) -> String {
        match self {
            Namespace::Alt => leaf.to_string(),
            _ => format!("INBOX{}{leaf}", self.separator()),
        }
    }

    /// The user's mailbox as the admin names it.
    fn user_mailbox(self) -> String {
        format!("user{}{USER}", self.separator())
    }
}

pub struct PrivateCyrus {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub port: u16,
    pub namespace: Namespace,
    syslog: Arc<Mutex<String>>,
    stop_syslog: Arc<AtomicBool>,
    syslog_thread: Option<std::thread::JoinHandle<()>>,
}

/// Where deploy/dev/cyrus unpacked Debian's packages.
fn cyrus_root() -> PathBuf {
    let root = std::env::var("INTAKE_TEST_CYRUS_ROOT")
        .unwrap_or_else(|_| format!("{}/target/dev-state/cyrus/root", env!("CARGO_MANIFEST_DIR")));
    let root = PathBuf::from(root);
    assert!(
        root.join("usr/lib/cyrus/bin/master").exists(),
        "{}/usr/lib/cyrus/bin/master is missing: run deploy/dev/test, which \
         unpacks Cyrus (deploy/dev/cyrus)",
        root.display()
    );
    root
}

/// The folder of the unpacked libcyrus*.so (not on the loader's path).
fn library_dir(root: &Path) -> PathBuf {
    std::fs::read_dir(root.join("usr/lib"))
        .expect("usr/lib of the unpacked Cyrus")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("libcyrus.so.0").exists())
        .expect("libcyrus.so.0 among the unpacked files")
}

impl PrivateCyrus {
    /// Starts an instance and creates the user's mailbox (its INBOX).
    pub fn start(namespace: Namespace) -> PrivateCyrus {
        let root = cyrus_root();
        let bin = root.join("usr/lib/cyrus/bin");
        // Under /tmp: unix socket paths must stay short.
        let dir = tempfile::Builder::new()
            .prefix("intake-cyrus-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let base = dir.path().to_path_buf();
        let port = unused_port();
        for sub in [
            "conf/db",
            "conf/lock",
            "conf/proc",
            "conf/socket",
            "spool",
            "sieve",
            "run",
        ] {
            std::fs::create_dir_all(base.join(sub)).expect("mkdir");
        }
        let (alt, unix) = namespace.settings();
        let conf = base.join("imapd.conf");
        std::fs::write(
            &conf,
            format!(
                "configdirectory: {b}/conf\n\
                 partition-default: {b}/spool\n\
                 sievedir: {b}/sieve\n\
                 idlesocket: {b}/conf/socket/idle\n\
                 notifysocket: {b}/conf/socket/notify\n\
                 lmtpsocket: {b}/conf/socket/lmtp\n\
                 mboxname_lockpath: {b}/conf/lock\n\
                 admins: {ADMIN}\n\
                 sasl_pwcheck_method: alwaystrue\n\
                 allowplaintext: yes\n\
                 altnamespace: {alt}\n\
                 unixhierarchysep: {unix}\n\
                 syslog_prefix: intake-cyrus-{port}\n\
                 cyrus_user: {RUN_AS}\n",
                b = base.display()
            ),
        )
        .expect("imapd.conf");
        let c = format!("-C {}", conf.display());
        std::fs::write(
            base.join("cyrus.conf"),
            format!(
                "START {{\n  recover cmd=\"{bin}/ctl_cyrusdb {c} -r\"\n}}\n\
                 SERVICES {{\n  imap cmd=\"{bin}/imapd {c}\" listen=\"127.0.0.1:{port}\" prefork=1\n}}\n\
                 EVENTS {{\n}}\n\
                 DAEMON {{\n  idled cmd=\"{bin}/idled {c}\"\n}}\n",
                bin = bin.display()
            ),
        )
        .expect("cyrus.conf");
        run(Command::new("chown")
            .arg("-R")
            .arg(format!("{RUN_AS}:"))
            .arg(base.join("conf"))
            .arg(base.join("spool"))
            .arg(base.join("sieve"))
            .arg(base.join("run")));
        run(Command::new("chmod").arg("755").arg(&base));

        // The syslog socket its processes write to through /dev/log.
        let socket_path = base.join("syslog.sock");
        let socket = UnixDatagram::bind(&socket_path).expect("bind the syslog socket");
        run(Command::new("chmod").arg("666").arg(&socket_path));
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let syslog = Arc::new(Mutex::new(String::new()));
        let stop_syslog = Arc::new(AtomicBool::new(false));
        let syslog_thread = {
            let (syslog, stop) = (syslog.clone(), stop_syslog.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        let mut log = syslog.lock().unwrap();
                        log.push_str(String::from_utf8_lossy(&buf[..n]).trim_end());
                        log.push('\n');
                    }
                }
            })
        };

        let script = format!(
            "set -e\n\
             mount --make-rprivate /\n\
             mount -t tmpfs -o mode=755 intake-cyrus-dev /dev\n\
             mknod -m 666 /dev/null c 1 3\n\
             mknod -m 666 /dev/zero c 1 5\n\
             mknod -m 666 /dev/random c 1 8\n\
             mknod -m 666 /dev/urandom c 1 9\n\
             ln -s {b}/syslog.sock /dev/log\n\
             export LD_LIBRARY_PATH={lib}\n\
             exec {bin}/master -C {b}/imapd.conf -M {b}/cyrus.conf -p {b}/run/master.pid -D\n",
            b = base.display(),
            lib = library_dir(&root).display(),
            bin = bin.display(),
        );
        std::fs::write(base.join("namespace.sh"), script).expect("namespace.sh");
        let log = std::fs::File::create(base.join("master.log")).expect("log");
        // unshare execs sh, which execs master: the child's pid is master's.
        // A process group of its own: master's shutdown signals its whole
        // group, which would stop every other instance of the test run.
        let child = Command::new("unshare")
            .process_group(0)
            .args(["--mount", "sh"])
            .arg(base.join("namespace.sh"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("unshare runs");
        let cyrus = PrivateCyrus {
            dir,
            child: Some(child),
            port,
            namespace,
            syslog,
            stop_syslog,
            syslog_thread: Some(syslog_thread),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut admin = loop {
            match Client::login(port, ADMIN) {
                Ok(client) => break client,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "Cyrus did not let the admin in on {port}: {e}\n{}",
                        cyrus.log()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        let user = namespace.user_mailbox();
        admin
            .command(&format!("CREATE {}", quote(&user)))
            .unwrap_or_else(|e| panic!("the admin's CREATE {user}: {e}\n{}", cyrus.log()));
        admin.logout();
        cyrus
    }

    /// A session of the user.
    pub fn user(&self) -> Client {
        Client::login(self.port, USER)
            .unwrap_or_else(|e| panic!("login as {USER}: {e}\n{}", self.log()))
    }

    /// Appends `mails` to the user's INBOX, `batch` mails per MULTIAPPEND.
    pub fn append(&self, mails: &[Vec<u8>], batch: usize) {
        let mut user = self.user();
        for chunk in mails.chunks(batch.max(1)) {
            user.append("INBOX", chunk)
                .unwrap_or_else(|e| panic!("APPEND: {e}\n{}", self.log()));
        }
        user.logout();
    }

    /// Creates the user's `folder` (a name as this server spells it).
    pub fn create(&self, folder: &str) {
        let mut user = self.user();
        user.command(&format!("CREATE {}", quote(folder)))
            .unwrap_or_else(|e| panic!("CREATE {folder}: {e}\n{}", self.log()));
        user.logout();
    }

    /// How many mails the user's `folder` holds (`None`: no such folder).
    pub fn count(&self, folder: &str) -> Option<u32> {
        let mut user = self.user();
        let n = user.count(folder);
        user.logout();
        n
    }

    /// The server's side: its syslog lines and master's own output.
    pub fn log(&self) -> String {
        let master =
            std::fs::read_to_string(self.dir.path().join("master.log")).unwrap_or_default();
        format!(
            "--- Cyrus syslog ---\n{}--- master ---\n{master}",
            self.syslog.lock().unwrap()
        )
    }

    /// Stops master (SIGTERM: it stops its services) and waits for it;
    /// SIGKILL to the whole tree when it does not go within 10 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill").arg(&pid).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let tree = super::imap::children_of(&pid);
        let _ = Command::new("kill").arg("-KILL").args(&tree).status();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PrivateCyrus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
        self.stop();
        self.stop_syslog.store(true, Ordering::Relaxed);
        if let Some(thread) = self.syslog_thread.take() {
            let _ = thread.join();
        }
    }
}

/// A free loopback port no other instance of this process was given:
/// tests run in parallel, and a port just released can be handed out
/// again to the next caller.
fn unused_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = super::free_port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// An IMAP quoted string (test names hold no quotes or backslashes).
fn quote(name: &str) -> String {
    format!("\"{name}\"")
}

/// A small blocking IMAP client: enough to seed and inspect a mailbox.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    tag: u32,
}

impl Client {
    /// Connects and logs in as `user` (any password passes).
    pub fn login(port: u16, user: &str) -> Result<Client, String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut client = Client {
            reader: BufReader::new(stream.try_clone().map_err(|e| e.to_string())?),
            writer: stream,
            tag: 0,
        };
        let greeting = client.line()?;
        if !greeting.starts_with("* OK") {
            return Err(format!("greeting: {greeting}"));
        }
        client.command(&format!("LOGIN {user} secret"))?;
        Ok(client)
    }

    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("connection closed".into()),
            Ok(_) => Ok(line),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Reads untagged responses (literals included) up to the tagged one;
    /// `Err` with the server's words unless it is OK.
    fn finish(&mut self, tag: &str) -> Result<Vec<String>, String> {
        let mut untagged = Vec::new();
        loop {
            let mut response = self.line()?;
            // A literal `{n}` ends the line: its bytes, then the rest.
            while let Some(n) = literal_len(&response) {
                let mut bytes = vec![0u8; n];
                self.reader
                    .read_exact(&mut bytes)
                    .map_err(|e| e.to_string())?;
                response.push_str(&String::from_utf8_lossy(&bytes));
                response.push_str(&self.line()?);
            }
            if let Some(status) = response.strip_prefix(&format!("{tag} ")) {
                return if status.starts_with("OK") {
                    Ok(untagged)
                } else {
                    Err(status.trim_end().to_string())
                };
            }
            untagged.push(response);
        }
    }

    fn next_tag(&mut self) -> String {
        self.tag += 1;
        format!("c{}", self.tag)
    }

    /// Runs one command; its untagged responses.
    pub fn command(&mut self, command: &str) -> Result<Vec<String>, String> {
        let tag = self.next_tag();
        self.writer
            .write_all(format!("{tag} {command}\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        self.finish(&tag)
    }

    /// MULTIAPPEND (RFC 3502) with non-synchronizing literals (LITERAL+):
    /// the whole batch in one command and one write.
    pub fn append(&mut self, mailbox: &str, mails: &[Vec<u8>]) -> Result<(), String> {
        let tag = self.next_tag();
        let mut out = format!("{tag} APPEND {}", quote(mailbox)).into_bytes();
        for mail in mails {
            out.extend_from_slice(format!(" {{{}+}}\r\n", mail.len()).as_bytes());
            out.extend_from_slice(mail);
        }
        out.extend_from_slice(b"\r\n");
        self.writer.write_all(&out).map_err(|e| e.to_string())?;
        self.finish(&tag).map(drop)
    }

    /// `STATUS folder (MESSAGES)`; `None` when the folder does not exist.
    pub fn count(&mut self, folder: &str) -> Option<u32> {
        let lines = self
            .command(&format!("STATUS {} (MESSAGES)", quote(folder)))
            .ok()?;
        lines.iter().find_map(|l| {
            let rest = l.split("(MESSAGES ").nth(1)?;
            rest.split(')').next()?.trim().parse().ok()
        })
    }

    pub fn logout(mut self) {
        let _ = self.command("LOGOUT");
    }
}

/// `n` when `line` ends in a literal announcement `{n}`.
fn literal_len(line: &str) -> Option<usize> {
    let line = line.trim_end_matches(['\r', '\n']);
    let open = line.rfind('{')?;
    line[open + 1..].strip_suffix('}')?.parse().ok()
}

fn run(command: &mut Command) {
    let out = command.output().expect("command runs");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
