//! The raw-mail benchmark of `deploy/bench/run`: N mails of about 10 KB of
//! text with a 50 KB attachment (random bytes, base64; the same bytes in
//! both modes), CONCURRENCY at a time.
//!
//!     mail_scan post URL TOKEN N CONCURRENCY
//!         POST each to URL/v1/messages (the gateway, scanning on); every
//!         answer must be 202.
//!     mail_scan ceiling CLAMD_HOST:PORT REDIS_URL STREAM N CONCURRENCY
//!         the ceiling: each mail streamed to clamd once (INSTREAM, what
//!         `clamdscan --stream` does, without a process per file) and then
//!         XADDed whole to STREAM, nothing else.
//!
//! Prints `MODE mails=N bytes=B seconds=S`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

#[path = "sample_mail.rs"]
mod sample_mail;

fn mail(i: usize, seed: u64) -> Vec<u8> {
    let text = sample_mail::text();
    let mut out = format!(
        "From: Customer {i} <c{i}@customers.example>\r\nTo: support@shop.test\r\n\
         Subject: Damaged parcel {i}\r\nMessage-ID: <scan-{i}@customers.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n\
         --b\r\nContent-Type: image/jpeg; name=\"photo.jpg\"\r\n\
         Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"photo.jpg\"\r\n\r\n"
    );
    out.push_str(&sample_mail::attachment_lines(i, seed));
    out.push_str("--b--\r\n");
    out.into_bytes()
}

async fn instream(address: &str, data: &[u8]) -> Result<String, std::io::Error> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    stream.write_all(b"zINSTREAM\0").await?;
    for chunk in data.chunks(64 * 1024) {
        stream
            .write_all(&(chunk.len() as u32).to_be_bytes())
            .await?;
        stream.write_all(chunk).await?;
    }
    stream.write_all(&[0, 0, 0, 0]).await?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await?;
    Ok(String::from_utf8_lossy(&reply)
        .trim_end_matches('\0')
        .to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: mail_scan post URL TOKEN N CONCURRENCY | ceiling CLAMD REDIS STREAM N CONCURRENCY";
    let (mode, rest) = args.split_first().ok_or(usage)?;
    let (n, concurrency): (usize, usize) = match rest {
        [_, _, n, c] | [_, _, _, n, c] => (n.parse()?, c.parse()?),
        _ => return Err(usage.into()),
    };
    let seed = sample_mail::seed();
    let mails: Arc<Vec<Vec<u8>>> = Arc::new((0..n).map(|i| mail(i, seed)).collect());
    let bytes: usize = mails.iter().map(Vec::len).sum();
    let limit = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    match (mode.as_str(), rest) {
        ("post", [url, token, ..]) => {
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(120))
                .build()?;
            for i in 0..n {
                let permit = limit.clone().acquire_owned().await?;
                let (client, mails) = (client.clone(), mails.clone());
                let (url, token) = (format!("{url}/v1/messages"), token.clone());
                tasks.spawn(async move {
                    let _permit = permit;
                    let answer = client
                        .post(url)
                        .bearer_auth(token)
                        .header("content-type", "message/rfc822")
                        .body(mails[i].clone())
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    match answer.status().as_u16() {
                        202 => Ok(()),
                        other => Err(format!("mail {i}: answer {other}")),
                    }
                });
            }
        }
        ("ceiling", [clamd, redis_url, stream, ..]) => {
            let redis =
                redis::aio::ConnectionManager::new(redis::Client::open(redis_url.as_str())?)
                    .await?;
            for i in 0..n {
                let permit = limit.clone().acquire_owned().await?;
                let (mut redis, mails) = (redis.clone(), mails.clone());
                let (clamd, stream) = (clamd.clone(), stream.clone());
                tasks.spawn(async move {
                    let _permit = permit;
                    let reply = instream(&clamd, &mails[i])
                        .await
                        .map_err(|e| e.to_string())?;
                    if !reply.ends_with("OK") {
                        return Err(format!("mail {i}: clamd said {reply}"));
                    }
                    redis::cmd("XADD")
                        .arg(&stream)
                        .arg("*")
                        .arg("id")
                        .arg(ulid::Ulid::new().to_string())
                        .arg("kind")
                        .arg("message")
                        .arg("envelope")
                        .arg(&mails[i])
                        .query_async::<String>(&mut redis)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(())
                });
            }
        }
        _ => return Err(usage.into()),
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    println!(
        "{mode} mails={n} bytes={bytes} seconds={:.4}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
