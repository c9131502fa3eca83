//! A private Exim 4 for tests: Debian's exim4-daemon-light unpacked under
//! the dev state by deploy/dev/mtas (Debian installs one mail server at a
//! time, and Postfix is the installed one), run with a config, spool and
//! log of its own under a temp dir. It never listens: mail goes in with
//! `exim -odq` (queued only) and out by a queue run (`exim -qff`), both as
//! root, which keeps root's privilege with `-C`. Its router and transports
//! are the shipped examples of deploy/exim/.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::postfix::{pipe_binary, PIPE_USER};

/// The support domain of the shipped examples.
pub const DOMAIN: &str = "support.shop.example";

/// Where the intake transport sends the mail.
pub enum Delivery<'a> {
    /// deploy/exim/transport-pipe.conf: the real `intake mailgate` against
    /// `url` with `token`.
    Pipe { url: &'a str, token: &'a str },
    /// deploy/exim/transport-lmtp.conf, to an LMTP listener on this port.
    Lmtp { port: u16 },
}

pub struct PrivateExim {
    dir: tempfile::TempDir,
    exim: PathBuf,
}

/// The unpacked exim4 binary (deploy/dev/intake-env's INTAKE_TEST_MTA_ROOT).
fn exim_binary() -> PathBuf {
    let root = std::env::var("INTAKE_TEST_MTA_ROOT")
        .unwrap_or_else(|_| format!("{}/target/dev-state/mta/root", env!("CARGO_MANIFEST_DIR")));
    let exim = Path::new(&root).join("usr/sbin/exim4");
    assert!(
        exim.exists(),
        "{} is missing: run deploy/dev/test, which unpacks Exim (deploy/dev/mtas)",
        exim.display()
    );
    exim
}

impl PrivateExim {
    pub fn start(delivery: Delivery<'_>) -> PrivateExim {
        let exim = exim_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        // Exim receives as its own user and the pipe runs as PIPE_USER:
        // both must reach what is below this directory.
        run(Command::new("chmod").arg("755").arg(root));
        for sub in ["spool", "log"] {
            std::fs::create_dir(root.join(sub)).expect("mkdir");
            run(Command::new("chown")
                .arg("Debian-exim:Debian-exim")
                .arg(root.join(sub)));
        }
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/exim");
        let read = |name: &str| {
            std::fs::read_to_string(deploy.join(name))
                .unwrap_or_else(|e| panic!("deploy/exim/{name}: {e}"))
        };
        let transport = match delivery {
            Delivery::Pipe { url, token } => {
                let token_file = root.join("mailgate.token");
                std::fs::write(&token_file, format!("{token}\n")).expect("token file");
                run(Command::new("chmod").arg("644").arg(&token_file));
                read("transport-pipe.conf")
                    .replace("user = intake", &format!("user = {PIPE_USER}"))
                    .replace(
                        "/usr/local/bin/intake",
                        &pipe_binary(root).display().to_string(),
                    )
                    .replace("http://127.0.0.1:8080", url)
                    .replace(
                        "/etc/intake/mailgate.token",
                        &token_file.display().to_string(),
                    )
            }
            Delivery::Lmtp { port } => {
                read("transport-lmtp.conf").replace("port = 2424", &format!("port = {port}"))
            }
        };
        let config = format!(
            "exim_path = {exim}\n\
             primary_hostname = mx.shop.test\n\
             qualify_domain = shop.test\n\
             spool_directory = {root}/spool\n\
             log_file_path = {root}/log/%slog\n\
             keep_environment =\n\
             # Bounces of this instance go nowhere: frozen, then dropped.\n\
             ignore_bounce_errors_after = 0s\n\
             timeout_frozen_after = 1s\n\
             begin routers\n{router}\n\
             begin transports\n{transport}\n\
             begin retry\n* * F,1d,1s\n",
            exim = exim.display(),
            root = root.display(),
            router = read("router.conf"),
        );
        std::fs::write(root.join("exim.conf"), config).expect("exim.conf");
        PrivateExim { dir, exim }
    }

    fn exim(&self) -> Command {
        let mut command = Command::new(&self.exim);
        command.arg("-C").arg(self.dir.path().join("exim.conf"));
        command
    }

    /// Queues a message as a local program would (`exim -odq`), to be
    /// delivered by the next [`PrivateExim::run_queue`].
    pub fn sendmail(&self, sender: &str, recipients: &[&str], message: &[u8]) {
        use std::io::Write as _;
        let mut child = self
            .exim()
            .args(["-odq", "-i", "-f", sender, "--"])
            .args(recipients)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("exim runs");
        child.stdin.take().unwrap().write_all(message).unwrap();
        let out = child.wait_with_output().expect("exim");
        assert!(
            out.status.success(),
            "exim -odq failed: {}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// One forced queue run in the foreground (`exim -qff`): every queued
    /// message is tried now, retry times or not.
    pub fn run_queue(&self) {
        run(self.exim().arg("-qff"));
    }

    /// How many messages wait in the queue (`exim -bpc`), bounces aside.
    pub fn queued(&self) -> usize {
        let out = run(self.exim().arg("-bp"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| line.contains('<') && !line.contains("<>"))
            .count()
    }

    /// The main log, then the panic log.
    pub fn log(&self) -> String {
        let log = |name: &str| {
            std::fs::read_to_string(self.dir.path().join("log").join(name)).unwrap_or_default()
        };
        format!("{}{}", log("mainlog"), log("paniclog"))
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
