//! clamd for tests: the dev stack's (shared, never stopped) and private
//! instances a test may stop, restart or replace with a silent listener.

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The dev stack's clamd (`host:port`, deploy/dev/intake-env).
pub fn dev_clamd() -> String {
    std::env::var("INTAKE_TEST_CLAMD").unwrap_or_else(|_| "127.0.0.1:13310".into())
}

/// The 68-byte EICAR test file, assembled at run time so that no file in
/// the repository contains it.
pub fn eicar() -> Vec<u8> {
    let head = ["X5O!P%@AP[4\\PZX54(P^", ")7CC)7}$"].concat();
    [
        head.as_str(),
        "EICAR-STANDARD-",
        "ANTIVIRUS-TEST-FILE!",
        "$H+H*",
    ]
    .concat()
    .into_bytes()
}

/// The name the dev signature database gives EICAR.
pub const EICAR_SIGNATURE: &str = "Intake-Test.EICAR.UNOFFICIAL";

/// A zip (deflated) holding one file, made by Python's zipfile.
pub fn zip_of(name: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import io,sys,zipfile\nb=io.BytesIO()\nz=zipfile.ZipFile(b,'w',zipfile.ZIP_DEFLATED)\nz.writestr(sys.argv[1],sys.stdin.buffer.read())\nz.close()\nsys.stdout.buffer.write(b.getvalue())",
            name,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is installed");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().expect("python3 zip");
    assert!(out.status.success(), "python3 zipfile failed");
    out.stdout
}

/// A clamd of this test's own on a free port, with a copy of the dev
/// signature database and limits the test chooses.
pub struct PrivateClamd {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateClamd {
    /// Starts clamd with extra config lines (limits) and waits until it
    /// answers.
    pub fn start(extra: &str) -> PrivateClamd {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("db");
        std::fs::create_dir_all(&db).unwrap();
        let state = std::env::var("INTAKE_DEV_STATE")
            .unwrap_or_else(|_| "/work/main/target/dev-state".into());
        let source = PathBuf::from(state).join("clamav/db");
        for entry in std::fs::read_dir(&source).unwrap_or_else(|e| {
            panic!(
                "dev signatures at {}: {e} (deploy/dev/services start clamd)",
                source.display()
            )
        }) {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), db.join(entry.file_name())).unwrap();
        }
        let port = super::free_port();
        let conf = dir.path().join("clamd.conf");
        std::fs::write(
            &conf,
            format!(
                "Foreground yes\nLogFile {log}\nTemporaryDirectory {tmp}\nDatabaseDirectory {db}\n\
                 OfficialDatabaseOnly no\nTCPAddr 127.0.0.1\nTCPSocket {port}\nAlertExceedsMax yes\n{extra}\n",
                log = dir.path().join("clamd.log").display(),
                tmp = dir.path().display(),
                db = db.display(),
            ),
        )
        .unwrap();
        let mut clamd = PrivateClamd {
            port,
            dir,
            child: None,
        };
        clamd.restart();
        clamd
    }

    /// `tcp://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and waits until it answers PING.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("clamd")
            .arg("-c")
            .arg(self.dir.path().join("clamd.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("clamd is installed (deploy/dev/services installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ping(self.port) {
            assert!(Instant::now() < deadline, "private clamd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills clamd, as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateClamd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ping(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = Vec::new();
    stream.write_all(b"zPING\0").is_ok()
        && stream.read_to_end(&mut reply).is_ok()
        && reply.starts_with(b"PONG")
}

/// A "clamd" that accepts connections and never answers.
pub struct SilentClamd {
    pub port: u16,
    _thread: std::thread::JoinHandle<()>,
}

impl SilentClamd {
    pub fn start() -> SilentClamd {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let thread = std::thread::spawn(move || {
            // Keep every connection open and unread until the test ends.
            let mut open = Vec::new();
            for stream in listener.incoming().flatten() {
                open.push(stream);
            }
        });
        SilentClamd {
            port,
            _thread: thread,
        }
    }

    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }
}
