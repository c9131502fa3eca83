//! `intake serve` as an operator meets it: a broken config stops start-up
//! naming every problem; TLS and HTTP/2 work with a real client (curl).

mod support;

use std::process::Command;

use support::{redis_url, unique_prefix};

fn serve_with_config(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("intake.toml");
    std::fs::write(&path, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_intake"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn unknown_key_stops_start_up_naming_the_key() {
    let (code, stderr) = serve_with_config(
        "[redis]\nurl = \"redis://127.0.0.1:16379\"\n[http]\nlisten_address = \"127.0.0.1:1\"\n",
    );
    assert_eq!(code, Some(78), "EX_CONFIG; stderr: {stderr}");
    assert!(stderr.contains("listen_address"), "names the key: {stderr}");
    assert!(stderr.contains("line"), "says where: {stderr}");
}

#[test]
fn every_invalid_value_is_reported_at_once() {
    let (code, stderr) = serve_with_config(
        "[redis]\nurl = \"http://nope\"\n[messages]\ntoken = { env = \"INTAKE_TEST_NO_SUCH_VAR\" }\n[[form]]\nid = \"a b\"\n",
    );
    assert_eq!(code, Some(78), "stderr: {stderr}");
    assert!(stderr.contains("redis.url"), "{stderr}");
    assert!(stderr.contains("messages.token"), "{stderr}");
    assert!(stderr.contains("INTAKE_TEST_NO_SUCH_VAR"), "{stderr}");
    assert!(stderr.contains("form[0]"), "{stderr}");
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_intake"))
        .args(["serve", "--config", "/nonexistent/intake.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("/nonexistent/intake.toml"), "{stderr}");
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_intake"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64), "EX_USAGE");
}

/// Generates a self-signed certificate for 127.0.0.1 with the openssl CLI.
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success(), "openssl req failed");
    (cert, key)
}

fn curl(args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(args)
        .output()
        .expect("curl is installed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn tls_serves_http2_and_http1_to_curl() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let prefix = unique_prefix("tls");
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n\
         [redis]\nurl = \"{}\"\nprefix = \"{prefix}\"\n\
         [[form]]\nid = \"contact\"\nrequired = [\"email\"]\n",
        cert.display(),
        key.display(),
        redis_url()
    );
    let config = intake::config::Config::from_toml(&text).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(intake::serve::run_on(listener, config, async {
        let _ = rx.await;
    }));
    let url = format!("https://127.0.0.1:{port}/v1/forms/contact");
    let cacert = cert.display().to_string();

    let (h2, h1) = tokio::task::spawn_blocking(move || {
        let fmt = "%{http_code} %{http_version}";
        let h2 = curl(&[
            "-sS",
            "--cacert",
            &cacert,
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            fmt,
            "-d",
            "email=ann@example.com",
            &url,
        ]);
        let h1 = curl(&[
            "-sS",
            "--cacert",
            &cacert,
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            fmt,
            "-d",
            "email=bob@example.com",
            &url,
        ]);
        (h2, h1)
    })
    .await
    .unwrap();
    assert_eq!(h2, "202 2", "HTTP/2 over TLS by ALPN");
    assert_eq!(h1, "202 1.1", "HTTP/1.1 over TLS");
    let entries = support::read_stream(&redis_url(), &format!("{prefix}:desk")).await;
    assert_eq!(entries.len(), 2, "both posts stored");
    let _ = tx.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn cleartext_http2_with_prior_knowledge_is_served() {
    let gw = support::Gateway::start("h2c").await;
    let url = gw.form_url("contact");
    let answer = tokio::task::spawn_blocking(move || {
        curl(&[
            "-sS",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            "-d",
            "email=ann@example.com",
            &url,
        ])
    })
    .await
    .unwrap();
    assert_eq!(answer, "202 2");
    assert_eq!(gw.entries("desk").await.len(), 1);
}
