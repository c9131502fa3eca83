//! The admin listener: metrics for operators, closed to everyone else.

mod support;

use support::{client, free_port, redis_url, Gateway};

async fn gateway_with_admin(test: &str) -> (Gateway, String, tempfile::NamedTempFile) {
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "admin-secret-1\n").unwrap();
    let port = free_port();
    let extra = format!(
        "[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = {{ file = \"{}\" }}\n",
        token.path().display()
    );
    let gw = Gateway::start_with(test, &redis_url(), &extra).await;
    let admin = format!("http://127.0.0.1:{port}");
    // The admin listener binds while the gateway starts; wait for it.
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    (gw, admin, token)
}

#[tokio::test]
async fn metrics_need_the_admin_token() {
    let (_gw, admin, _token) = gateway_with_admin("admin_auth").await;
    let response = client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "no token, no metrics");
    let response = client()
        .get(format!("{admin}/metrics"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "wrong token, no metrics");
}

#[tokio::test]
async fn metrics_count_requests_and_stored_items() {
    let (gw, admin, _token) = gateway_with_admin("admin_metrics").await;
    let response = client()
        .post(gw.form_url("contact"))
        .form(&[("email", "ann@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let response = client()
        .get(format!("{admin}/metrics"))
        .bearer_auth("admin-secret-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("intake_http_requests_total{")
                && l.contains("endpoint=\"forms\"")
                && l.contains("status=\"202\"")),
        "request counter missing:\n{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("intake_items_total{")
            && l.contains("stream=\"desk\"")
            && l.contains("channel=\"form\"")),
        "stored-item counter missing:\n{text}"
    );
    assert!(
        text.contains("intake_http_request_duration_seconds_bucket"),
        "latency histogram missing:\n{text}"
    );
}
