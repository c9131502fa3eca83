//! The webhook benchmark's helpers (deploy/bench/run, scenario `webhook`):
//!
//! - `receiver ADDR`: a minimal webhook receiver, 204 to every POST;
//! - `fill REDIS_URL STREAM N`: N desk entries of a 2 KB envelope each;
//! - `bare REDIS_URL STREAM URL CONCURRENCY`: the ceiling, the least work
//!   any consumer that acknowledges after the receiver's answer must do:
//!   CONCURRENCY loops of XREADGROUP + POST (one kept-alive connection
//!   each) + XACK, until the stream is drained. No signature, no retry
//!   state, no envelope shaping. Prints `delivered=N seconds=S`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("receiver") => receiver(args[1].parse()?).await,
        Some("fill") => fill(&args[1], &args[2], args[3].parse()?).await,
        Some("bare") => bare(&args[1], &args[2], &args[3], args[4].parse()?).await,
        _ => Err("usage: webhook_deliver receiver ADDR | fill REDIS STREAM N | bare REDIS STREAM URL CONCURRENCY".into()),
    }
}

async fn receiver(addr: SocketAddr) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = service_fn(|request: Request<hyper::body::Incoming>| async move {
                let _ = request.into_body().collect().await;
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = hyper::StatusCode::NO_CONTENT;
                Ok::<_, Infallible>(response)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn connection(url: &str) -> Result<MultiplexedConnection, Error> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

async fn fill(url: &str, stream: &str, n: usize) -> Result<(), Error> {
    let mut redis = connection(url).await?;
    let text = "Where is my order? ".repeat(100);
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let id = format!("01BENCH{i:019}");
            let envelope = serde_json::json!({"version": 1, "id": id, "channel": "form",
                "subject": "Order", "text": text, "attachments": []})
            .to_string();
            pipe.xadd(
                stream,
                "*",
                &[
                    ("id", id.as_str()),
                    ("kind", "message"),
                    ("envelope", &envelope),
                ],
            )
            .ignore();
        }
        let () = pipe.query_async(&mut redis).await?;
    }
    Ok(())
}

async fn bare(url: &str, stream: &str, target: &str, concurrency: usize) -> Result<(), Error> {
    let mut redis = connection(url).await?;
    let created: redis::RedisResult<()> = redis.xgroup_create(stream, "bare", "0").await;
    if let Err(e) = created {
        if e.code() != Some("BUSYGROUP") {
            return Err(e.into());
        }
    }
    let uri: hyper::Uri = target.parse()?;
    let authority = uri.authority().ok_or("no host")?.to_string();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let mut redis = redis.clone();
        let stream = stream.to_string();
        let uri = uri.clone();
        let authority = authority.clone();
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(&authority).await?;
            tcp.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            let consumer = format!("bare-{worker}");
            let mut delivered = 0usize;
            loop {
                let options = StreamReadOptions::default()
                    .group("bare", &consumer)
                    .count(10);
                let reply: Option<StreamReadReply> =
                    redis.xread_options(&[&stream], &[">"], &options).await?;
                let entries: Vec<_> = reply
                    .into_iter()
                    .flat_map(|r| r.keys)
                    .flat_map(|k| k.ids)
                    .collect();
                if entries.is_empty() {
                    return Ok::<usize, Error>(delivered);
                }
                for entry in entries {
                    let body = match entry.map.get("envelope") {
                        Some(redis::Value::BulkString(bytes)) => Bytes::from(bytes.clone()),
                        _ => Bytes::new(),
                    };
                    let request = Request::post(uri.path())
                        .header("host", &authority)
                        .header("content-type", "application/json")
                        .body(Full::new(body))?;
                    let response = sender.send_request(request).await?;
                    let status = response.status();
                    let _ = response.into_body().collect().await;
                    if status.is_success() {
                        let _: i64 = redis.xack(&stream, "bare", &[&entry.id]).await?;
                        delivered += 1;
                    }
                }
            }
        }));
    }
    let mut delivered = 0;
    for task in tasks {
        delivered += task.await??;
    }
    println!(
        "delivered={delivered} seconds={:.3}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
