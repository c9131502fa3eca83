//! The HTTP API against its contract, src/openapi.yaml: schemathesis
//! (installed by deploy/dev/api-tools into target/tools/venv) generates
//! requests from the document, valid and invalid, sends them to a running
//! gateway (the dev Redis and clamd behind it) and checks every answer:
//! no server error, a status the document declares, its content type, its
//! body schema and its headers. The public and the admin listener are
//! checked in one run each, with their bearer tokens.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{clamd::dev_clamd, client, free_port, redis_url, Gateway, TOKEN};

const ADMIN_TOKEN: &str = "openapi-admin-token-1";
const FORM_SECRET: &str = "openapi-form-secret-0123456789abcdef";
/// Test cases per operation: enough to reach every declared answer,
/// few enough that both runs take well under a minute.
const MAX_EXAMPLES: &str = "25";

fn schemathesis() -> PathBuf {
    let st = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/venv/bin/st");
    assert!(
        st.exists(),
        "{} is missing: install schemathesis with deploy/dev/api-tools \
         (deploy/dev/test runs it)",
        st.display()
    );
    st
}

fn document() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/openapi.yaml")
}

/// Runs schemathesis against `url` with `args` and fails with its report.
fn run_schemathesis(url: &str, args: &[&str]) {
    let work = tempfile::tempdir().unwrap();
    let output = Command::new(schemathesis())
        .arg("run")
        .arg(document())
        .args(["--url", url])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance",
        ])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", "4711"])
        .args(["--workers", "1"])
        .args(["--max-redirects", "0"])
        .args(["--request-timeout", "20"])
        .args(["--output-truncate", "false"])
        .args(args)
        .current_dir(work.path())
        .env("SCHEMATHESIS_HOOKS", "")
        .env("NO_COLOR", "1")
        .output()
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found answers that break src/openapi.yaml ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

async fn gateway(test: &str) -> (Gateway, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let admin_token = dir.path().join("admin-token");
    std::fs::write(&admin_token, ADMIN_TOKEN).unwrap();
    let secret = dir.path().join("form-secret");
    std::fs::write(&secret, FORM_SECRET).unwrap();
    let port = free_port();
    let extra = format!(
        r#"
[[form]]
id = "guarded"
token = "optional"

[forms_security]
secret = {{ file = "{secret}" }}

[admin]
listen = "127.0.0.1:{port}"
token = {{ file = "{admin}" }}

[scan]
clamd = "tcp://{clamd}"
"#,
        secret = secret.display(),
        admin = admin_token.display(),
        clamd = dev_clamd(),
    );
    let gw = Gateway::start_with(test, &redis_url(), &extra).await;
    let admin = format!("http://127.0.0.1:{port}");
    // Both listeners answer before schemathesis starts.
    for url in [format!("{}/healthz", gw.url), format!("{admin}/metrics")] {
        let mut tries = 0;
        while client().get(&url).send().await.is_err() {
            tries += 1;
            assert!(tries < 200, "{url} does not answer");
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }
    (gw, admin, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_api_answers_as_its_openapi_document_says() {
    let (gw, _admin, _dir) = gateway("openapi_public").await;
    let url = gw.url.clone();
    let auth = format!("Authorization: Bearer {TOKEN}");
    tokio::task::spawn_blocking(move || {
        run_schemathesis(&url, &["--exclude-tag", "admin", "-H", &auth]);
    })
    .await
    .unwrap();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_answers_as_its_openapi_document_says() {
    let (gw, admin, _dir) = gateway("openapi_admin").await;
    let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
    tokio::task::spawn_blocking(move || {
        // The quarantine endpoints are documented ahead of their change.
        run_schemathesis(
            &admin,
            &[
                "--include-tag",
                "admin",
                "--exclude-path-regex",
                "^/v1/quarantine",
                "-H",
                &auth,
            ],
        );
    })
    .await
    .unwrap();
    gw.stop().await;
}

#[tokio::test]
async fn the_gateway_serves_its_openapi_document() {
    let gw = Gateway::start("openapi_served").await;
    let response = client()
        .get(format!("{}/v1/openapi.yaml", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/yaml");
    let text = response.text().await.unwrap();
    assert_eq!(
        text,
        std::fs::read_to_string(document()).unwrap(),
        "the served document is src/openapi.yaml"
    );
    gw.stop().await;
}
