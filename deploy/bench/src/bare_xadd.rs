//! The ceiling for the form benchmark: a minimal hyper server that answers
//! every POST with the same XADD the gateway does (same connection type,
//! same Redis), and nothing else: no parsing, no checks, no envelope.
//!
//! `cargo run --release --example bare_xadd -- 127.0.0.1:8081 redis://127.0.0.1:16379 bench-bare`

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use redis::aio::ConnectionManager;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8081".into())
        .parse()?;
    let redis_url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:16379".into());
    let key = format!(
        "{}:desk",
        args.next().unwrap_or_else(|| "bench-bare".into())
    );
    let redis = ConnectionManager::new(redis::Client::open(redis_url)?).await?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("bare_xadd listening on {addr}, writing to {key}");
    loop {
        let (stream, _) = listener.accept().await?;
        let redis = redis.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let mut redis = redis.clone();
                let key = key.clone();
                async move {
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let id = ulid::Ulid::new().to_string();
                    let written: redis::RedisResult<String> = redis::cmd("XADD")
                        .arg(&key)
                        .arg("*")
                        .arg("id")
                        .arg(&id)
                        .arg("kind")
                        .arg("message")
                        .arg("envelope")
                        .arg(body.as_ref())
                        .query_async(&mut redis)
                        .await;
                    let response = match written {
                        Ok(_) => Response::builder()
                            .status(202)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(format!(
                                "{{\"id\":\"{id}\",\"status\":\"accepted\"}}"
                            )))),
                        Err(_) => Response::builder()
                            .status(503)
                            .body(Full::new(Bytes::new())),
                    };
                    Ok::<_, Infallible>(response.expect("valid response"))
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
