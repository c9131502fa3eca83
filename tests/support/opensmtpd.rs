//! A private OpenSMTPD 6.8 for tests: Debian's package unpacked under the
//! dev state by deploy/dev/mtas (Postfix is the installed mail server),
//! run in the foreground (`smtpd -d`) with a config of its own. Its spool
//! (/var/spool/smtpd), control socket (/run/smtpd.sock), helpers
//! (/usr/libexec/opensmtpd) and chroot (/var/lib/opensmtpd/empty) are
//! compiled in, so each instance runs in a mount namespace of its own
//! (`unshare -m`) where a temp dir is bound over those folders; `smtpctl`
//! reaches it with `nsenter`. It listens for SMTP on a free loopback port
//! of INTAKE_TEST_MTA_PORTS. The action lines are the shipped example
//! deploy/opensmtpd/smtpd.conf.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::postfix::PIPE_USER;

/// The support domain of the shipped example.
pub const DOMAIN: &str = "support.shop.example";

/// How the example delivers into the gateway's LMTP listener on `port`.
pub enum Action {
    /// The `lmtp` action (mail.lmtp, one transaction per recipient).
    Lmtp { port: u16 },
    /// The relay to `lmtp://` (one transaction per message).
    Relay { port: u16 },
}

pub struct PrivateOpenSmtpd {
    dir: tempfile::TempDir,
    root: PathBuf,
    child: Child,
    /// The SMTP port it listens on.
    pub port: u16,
}

fn mta_root() -> PathBuf {
    let root = std::env::var("INTAKE_TEST_MTA_ROOT")
        .unwrap_or_else(|_| format!("{}/target/dev-state/mta/root", env!("CARGO_MANIFEST_DIR")));
    let root = PathBuf::from(root);
    assert!(
        root.join("usr/sbin/smtpd").exists(),
        "{}/usr/sbin/smtpd is missing: run deploy/dev/test, which unpacks \
         OpenSMTPD (deploy/dev/mtas)",
        root.display()
    );
    root
}

/// A loopback port of INTAKE_TEST_MTA_PORTS (`12500-12599`) nothing
/// listens on.
fn free_mta_port() -> u16 {
    let range = std::env::var("INTAKE_TEST_MTA_PORTS").unwrap_or_else(|_| "12500-12599".into());
    let (low, high) = range
        .split_once('-')
        .expect("INTAKE_TEST_MTA_PORTS is LOW-HIGH");
    let (low, high): (u16, u16) = (low.parse().unwrap(), high.parse().unwrap());
    // Start at a different place per process and per call, so parallel
    // tests rarely race for one port.
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let start = (std::process::id() as u16)
        .wrapping_mul(7919)
        .wrapping_add(call.wrapping_mul(17));
    (0..=(high - low))
        .map(|n| low + (start.wrapping_add(n)) % (high - low + 1))
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port in INTAKE_TEST_MTA_PORTS")
}

impl PrivateOpenSmtpd {
    pub fn start(action: Action) -> PrivateOpenSmtpd {
        let root = mta_root();
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path();
        run(Command::new("chmod").arg("755").arg(base));
        for sub in ["spool", "run", "varlib/opensmtpd/empty"] {
            std::fs::create_dir_all(base.join(sub)).expect("mkdir");
        }
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/opensmtpd/smtpd.conf"),
        )
        .expect("deploy/opensmtpd/smtpd.conf");
        let (lmtp_port, chosen) = match action {
            Action::Lmtp { port } => (port, "intake"),
            Action::Relay { port } => (port, "intake-relay"),
        };
        let actions = example
            .replace("127.0.0.1:2424", &format!("127.0.0.1:{lmtp_port}"))
            .replace("= \"intake\"", &format!("= \"{PIPE_USER}\""))
            .replace(" user intake\n", &format!(" user {PIPE_USER}\n"))
            .replace("action \"intake\"\n", &format!("action \"{chosen}\"\n"));
        let port = free_mta_port();
        std::fs::write(
            base.join("smtpd.conf"),
            format!("listen on 127.0.0.1 port {port}\n{actions}"),
        )
        .expect("smtpd.conf");
        let script = format!(
            "set -e\n\
             mount --make-rprivate /\n\
             mount --bind {base}/spool /var/spool\n\
             mount --bind {base}/run /run\n\
             mount --bind {root}/usr/libexec /usr/libexec\n\
             mount --bind {base}/varlib /var/lib\n\
             exec {root}/usr/sbin/smtpd -d -f {base}/smtpd.conf\n",
            base = base.display(),
            root = root.display(),
        );
        std::fs::write(base.join("namespace.sh"), script).expect("namespace.sh");
        let log = std::fs::File::create(base.join("log")).expect("log");
        let child = Command::new("unshare")
            .args(["--mount", "sh"])
            .arg(base.join("namespace.sh"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("unshare runs");
        let smtpd = PrivateOpenSmtpd {
            dir,
            root,
            child,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "smtpd did not listen on {port}:\n{}",
                smtpd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        smtpd
    }

    /// Hands a message over by SMTP, as a sending server would.
    pub fn sendmail(&self, sender: &str, recipients: &[&str], message: &[u8]) {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to smtpd");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let mut expect = |code: &str, what: &str| loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("smtpd replies");
            assert!(line.starts_with(code), "{what}: {line:?}\n{}", self.log());
            if line.as_bytes().get(3) == Some(&b' ') {
                break;
            }
        };
        expect("220", "greeting");
        let mut say = |line: String| writer.write_all(line.as_bytes()).unwrap();
        say("EHLO client.test\r\n".into());
        expect("250", "EHLO");
        say(format!("MAIL FROM:<{sender}>\r\n"));
        expect("250", "MAIL");
        for rcpt in recipients {
            say(format!("RCPT TO:<{rcpt}>\r\n"));
            expect("250", "RCPT");
        }
        say("DATA\r\n".into());
        expect("354", "DATA");
        let mut data = Vec::new();
        for line in message.split_inclusive(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.starts_with(b".") {
                data.push(b'.');
            }
            data.extend_from_slice(line);
            data.extend_from_slice(b"\r\n");
        }
        data.extend_from_slice(b".\r\n");
        writer.write_all(&data).unwrap();
        expect("250", "end of data");
        writer.write_all(b"QUIT\r\n").unwrap();
        expect("221", "QUIT");
    }

    fn smtpctl(&self, args: &[&str]) -> Output {
        run(Command::new("nsenter")
            .arg("-t")
            .arg(self.child.id().to_string())
            .arg("-m")
            .arg(self.root.join("usr/sbin/smtpctl"))
            .args(args))
    }

    /// `smtpctl schedule all`: try every queued envelope now.
    pub fn schedule_all(&self) {
        self.smtpctl(&["schedule", "all"]);
    }

    /// Envelopes (one per recipient) waiting in the queue.
    pub fn queued(&self) -> usize {
        let out = self.smtpctl(&["show", "queue"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .count()
    }

    /// Waits until the log satisfies `done`.
    pub fn wait_log(&self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(&self.log()) {
            assert!(
                Instant::now() < deadline,
                "OpenSMTPD: {what} did not happen.\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What smtpd logged (it runs with -d: its log goes to stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for PrivateOpenSmtpd {
    fn drop(&mut self) {
        // smtpd -d stops its processes on SIGTERM; the namespace and its
        // mounts go with the last of them.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
