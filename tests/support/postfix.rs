//! A private Postfix for tests: its own config and queue directories under
//! a temp dir, started with `postfix -c DIR start` and stopped when
//! dropped. Mail goes in with `sendmail -C DIR`, or (started with
//! [`PrivatePostfix::start_with_smtpd`]) over SMTP to an smtpd on a
//! loopback port, as from a customer's mail server; it looks nothing up in
//! DNS and sends nothing out: only the support domain's transport
//! delivers. Its main.cf and master.cf are the shipped examples in
//! deploy/postfix/, with this machine's paths.
//!
//! Needs Postfix installed and the unprivileged user `intake-pipe` for the
//! pipe transport; deploy/dev/test sets up both.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The user Postfix's pipe runs `intake mailgate` as (pipe refuses root).
pub const PIPE_USER: &str = "intake-pipe";

/// The support domain of the shipped examples.
pub const DOMAIN: &str = "support.shop.example";

/// How long a test waits for Postfix to do something before it calls it
/// stuck: a safety net, not a speed assertion.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Where the support domain's mail goes.
pub enum Delivery<'a> {
    /// The `intake` pipe of deploy/postfix/master.cf, running the real
    /// `intake mailgate` against `url` with `token`.
    Pipe { url: &'a str, token: &'a str },
    /// deploy/postfix/transport-lmtp, to an LMTP listener on this port.
    Lmtp { port: u16 },
}

pub struct PrivatePostfix {
    dir: tempfile::TempDir,
    running: bool,
    /// The loopback port of its smtpd, when it has one.
    smtp_port: Option<u16>,
}

impl PrivatePostfix {
    /// Writes the configuration and starts the instance.
    pub fn start(delivery: Delivery<'_>) -> PrivatePostfix {
        PrivatePostfix::start_listening(delivery, None)
    }

    /// [`PrivatePostfix::start`] with an smtpd on `127.0.0.1:smtp_port`
    /// too, for [`PrivatePostfix::submit_smtp`].
    pub fn start_with_smtpd(delivery: Delivery<'_>, smtp_port: u16) -> PrivatePostfix {
        PrivatePostfix::start_listening(delivery, Some(smtp_port))
    }

    fn start_listening(delivery: Delivery<'_>, smtp_port: Option<u16>) -> PrivatePostfix {
        assert!(
            Path::new("/usr/sbin/postfix").exists(),
            "Postfix is not installed: run deploy/dev/test, which installs it"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        // Postfix's own processes (user postfix) and the pipe's user must
        // reach the queue, the token and the binary below this directory.
        chmod(&root, "755");
        for sub in ["etc", "queue", "data"] {
            std::fs::create_dir(root.join(sub)).expect("mkdir");
        }
        run(Command::new("chown").arg("postfix:").arg(root.join("data")));

        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/postfix");
        let read = |name: &str| {
            std::fs::read_to_string(deploy.join(name))
                .unwrap_or_else(|e| panic!("deploy/postfix/{name}: {e}"))
        };
        let transport_file = root.join("etc/transport");
        let mut main_cf = base_main_cf(&root);
        main_cf.push_str(&read("main.cf").replace(
            "hash:/etc/postfix/transport",
            &format!("texthash:{}", transport_file.display()),
        ));
        let mut master_cf = String::from(BASE_MASTER_CF);
        if let Some(port) = smtp_port {
            // Loopback is in mynetworks: the support domain is a relay
            // domain anyway, and nothing else is delivered.
            master_cf.push_str(&format!(
                "127.0.0.1:{port} inet n       -       n       -       -       smtpd\n"
            ));
        }
        let transport = match delivery {
            Delivery::Pipe { url, token } => {
                let token_file = root.join("mailgate.token");
                std::fs::write(&token_file, format!("{token}\n")).expect("token file");
                chmod(&token_file, "644");
                master_cf.push_str(
                    &read("master.cf")
                        .replace("user=intake ", &format!("user={PIPE_USER} "))
                        .replace(
                            "/usr/local/bin/intake",
                            &pipe_binary(&root).display().to_string(),
                        )
                        .replace("http://127.0.0.1:8080", url)
                        .replace(
                            "/etc/intake/mailgate.token",
                            &token_file.display().to_string(),
                        ),
                );
                read("transport")
            }
            Delivery::Lmtp { port } => {
                read("transport-lmtp").replace("127.0.0.1:2424", &format!("127.0.0.1:{port}"))
            }
        };
        std::fs::write(root.join("etc/main.cf"), main_cf).expect("main.cf");
        std::fs::write(root.join("etc/master.cf"), master_cf).expect("master.cf");
        std::fs::write(&transport_file, transport).expect("transport");

        let mut postfix = PrivatePostfix {
            dir,
            running: false,
            smtp_port,
        };
        let out = postfix.postfix("start");
        assert!(
            out.status.success(),
            "postfix -c {} start failed: {}\nlog:\n{}",
            postfix.config_dir().display(),
            String::from_utf8_lossy(&out.stderr),
            postfix.log()
        );
        postfix.running = true;
        postfix
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    /// Hands a message to the instance as a local program would.
    pub fn sendmail(&self, sender: &str, recipients: &[&str], message: &[u8]) {
        use std::io::Write as _;
        let mut child = Command::new("/usr/sbin/sendmail")
            .arg("-C")
            .arg(self.config_dir())
            .args(["-i", "-f", sender, "--"])
            .args(recipients)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sendmail runs");
        child.stdin.take().unwrap().write_all(message).unwrap();
        let out = child.wait_with_output().expect("sendmail");
        assert!(
            out.status.success(),
            "sendmail failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Hands a message to the instance's smtpd over SMTP from 127.0.0.1,
    /// greeting with `EHLO helo`, as a customer's mail server would; the
    /// message (LF or CRLF line ends) is dot-stuffed here. Panics unless
    /// every step is answered 2xx/3xx.
    pub fn submit_smtp(&self, helo: &str, sender: &str, recipients: &[&str], message: &[u8]) {
        let port = self
            .smtp_port
            .expect("start the instance with start_with_smtpd to submit over SMTP");
        let deadline = Instant::now() + PATIENCE;
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(stream) => break stream,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "Postfix's smtpd on port {port} did not come up: {e}\nlog:\n{}",
                        self.log()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut writer = stream;
        let mut step = |line: Option<&[u8]>, want: u16, what: &str| {
            if let Some(line) = line {
                writer.write_all(line).expect("write to smtpd");
            }
            let mut reply = String::new();
            loop {
                let mut text = String::new();
                let n = reader.read_line(&mut text).expect("read from smtpd");
                assert!(
                    n > 0,
                    "smtpd closed during {what}:\n{reply}\nlog:\n{}",
                    self.log()
                );
                reply.push_str(&text);
                if text.as_bytes().get(3) != Some(&b'-') {
                    break;
                }
            }
            assert!(
                reply.starts_with(&want.to_string()),
                "smtpd answered {what} with {reply:?}, not {want}\nlog:\n{}",
                self.log()
            );
        };
        step(None, 220, "the connection");
        step(Some(format!("EHLO {helo}\r\n").as_bytes()), 250, "EHLO");
        step(
            Some(format!("MAIL FROM:<{sender}>\r\n").as_bytes()),
            250,
            "MAIL",
        );
        for rcpt in recipients {
            step(
                Some(format!("RCPT TO:<{rcpt}>\r\n").as_bytes()),
                250,
                "RCPT",
            );
        }
        step(Some(b"DATA\r\n"), 354, "DATA");
        let mut data = Vec::new();
        let message = message.strip_suffix(b"\n").unwrap_or(message);
        for line in message.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.starts_with(b".") {
                data.push(b'.');
            }
            data.extend_from_slice(line);
            data.extend_from_slice(b"\r\n");
        }
        data.extend_from_slice(b".\r\n");
        step(Some(&data), 250, "the message");
        step(Some(b"QUIT\r\n"), 221, "QUIT");
    }

    /// `postqueue -p`: what is in the queue and why.
    pub fn queue(&self) -> String {
        let out = run(Command::new("/usr/sbin/postqueue")
            .arg("-c")
            .arg(self.config_dir())
            .arg("-p"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `postqueue -f`: try every queued mail now.
    pub fn flush(&self) {
        run(Command::new("/usr/sbin/postqueue")
            .arg("-c")
            .arg(self.config_dir())
            .arg("-f"));
    }

    /// Waits until the queue listing satisfies `done`; returns it.
    pub fn wait_queue(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let queue = self.queue();
            if done(&queue) {
                return queue;
            }
            assert!(
                Instant::now() < deadline,
                "Postfix queue: {what} did not happen.\nqueue:\n{queue}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The instance's mail log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// Sets `setting` (`name = value`) in the instance's main.cf and
    /// reloads it.
    pub fn set(&self, setting: &str) {
        run(Command::new("/usr/sbin/postconf")
            .arg("-c")
            .arg(self.config_dir())
            .arg("-e")
            .arg(setting));
        let out = self.postfix("reload");
        assert!(
            out.status.success(),
            "postfix reload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn postfix(&self, command: &str) -> Output {
        Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(self.config_dir())
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .expect("postfix runs")
    }
}

impl Drop for PrivatePostfix {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let _ = self.postfix("stop");
        // Wait for the master to go, so the temp dir is not pulled away
        // from under running Postfix processes.
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.postfix("status").status.success() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The settings every instance needs before the shipped main.cf lines:
/// its own directories, no network listener, no DNS, nothing sent out,
/// and retries in seconds rather than minutes.
fn base_main_cf(root: &Path) -> String {
    let root = root.display();
    format!(
        "compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
myhostname = mx.shop.test
mydomain = shop.test
myorigin = $mydomain
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtp_dns_support_level = disabled
lmtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
local_recipient_maps =
alias_maps =
alias_database =
default_transport = error:this test instance sends no mail out
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"
    )
}

/// The services a queue needs (no smtpd: nothing listens), none chrooted.
const BASE_MASTER_CF: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

/// The `intake` binary as the pipe user can run it: the build's own when
/// that user can reach it, else a copy beside the instance (a target dir
/// under a private home is out of its reach).
pub fn pipe_binary(root: &Path) -> PathBuf {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_intake"));
    let user_exists = Command::new("id")
        .arg(PIPE_USER)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        user_exists,
        "user {PIPE_USER} is missing: run deploy/dev/test, or \
         useradd --system --no-create-home --shell /usr/sbin/nologin {PIPE_USER}"
    );
    let reachable = Command::new("runuser")
        .args(["-u", PIPE_USER, "--", "test", "-x"])
        .arg(&built)
        .status()
        .is_ok_and(|s| s.success());
    if reachable {
        return built;
    }
    let copy = root.join("intake");
    std::fs::copy(&built, &copy).expect("copy the intake binary for the pipe user");
    chmod(&copy, "755");
    copy
}

fn chmod(path: &Path, mode: &str) {
    run(Command::new("chmod").arg(mode).arg(path));
}

fn run(command: &mut Command) -> Output {
    let out = command.output().expect("command runs");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
