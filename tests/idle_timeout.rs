//! Kept-alive connections that sit idle are closed by the server
//! (`http.idle_timeout`), over HTTP/1.1 and HTTP/2, so idle clients do not
//! hold connection slots.

mod support;

use std::time::Duration;

use support::{client, free_port, redis_url, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN_TOKEN: &str = "idle-admin-3f1";

/// A gateway whose idle timeout (1 s) is far shorter than its header
/// timeout (60 s), so a close can only come from the idle timeout.
async fn gateway(test: &str) -> (Gateway, String, tempfile::NamedTempFile) {
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), ADMIN_TOKEN).unwrap();
    let port = free_port();
    let extra = format!(
        "[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = {{ file = \"{}\" }}\n",
        token.path().display()
    );
    let gw = Gateway::start_edited(test, &redis_url(), &extra, |text| {
        text.replace(
            "header_timeout = \"5s\"",
            "header_timeout = \"60s\"\nidle_timeout = \"1s\"",
        )
    })
    .await;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (gw, format!("http://127.0.0.1:{port}"), token)
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed_by_the_server() {
    let (gw, admin, _token) = gateway("idle_http1").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    // The answer, then nothing more: the connection stays open for the
    // next request until the server gives up on it.
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap_or(false);
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "the request was answered first: {text}"
    );
    assert!(
        !text.to_ascii_lowercase().contains("connection: close"),
        "the answer itself kept the connection alive: {text}"
    );
    assert!(
        closed,
        "the idle connection was closed by the server (idle_timeout 1s, header_timeout 60s)"
    );
    let metrics = client()
        .get(format!("{admin}/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("intake_http_idle_closed_total ")),
        "idle closes are counted:\n{metrics}"
    );
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_by_the_server() {
    let (gw, _admin, _token) = gateway("idle_http2").await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake (prior knowledge)");
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("http://{}/healthz", gw.addr))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200, "answered over HTTP/2");
    drop(response);
    // The client keeps its side open; the server must end it (GOAWAY),
    // which completes the client's connection future.
    let ended = tokio::time::timeout(Duration::from_secs(30), connection).await;
    assert!(
        ended.is_ok(),
        "the idle HTTP/2 connection was closed by the server"
    );
    // Held until here: a dropped sender would let the client close first.
    drop(sender);
}
