//! A webhook receiver of the test's own: a hyper HTTP/1.1 server on a
//! free port that records every request and answers as the test's script
//! says (a status, a `Retry-After`, or never).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request as the receiver got it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub key: String,
    pub attempt: u32,
    pub kind: String,
    pub signature: String,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Seen {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// How to answer one request.
pub enum Reply {
    Status(u16),
    /// A status with `Retry-After: <value>`.
    RetryAfter(u16, String),
    /// Never answer (the connection stays open).
    Hang,
}

/// What to answer: given the request and how many requests with its key
/// came before it.
pub type Script = Box<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

pub struct Receiver {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Receiver {
    pub async fn start(script: Script) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/intake", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let script = Arc::new(script);
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let record = record.clone();
                            let script = script.clone();
                            async move {
                                let header = |name: &str| {
                                    request
                                        .headers()
                                        .get(name)
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or("")
                                        .to_string()
                                };
                                let mut seen = Seen {
                                    key: header("idempotency-key"),
                                    attempt: header("intake-attempt").parse().unwrap_or(0),
                                    kind: header("intake-kind"),
                                    signature: header("intake-signature"),
                                    body: Vec::new(),
                                    at: Instant::now(),
                                };
                                seen.body = request
                                    .into_body()
                                    .collect()
                                    .await
                                    .unwrap()
                                    .to_bytes()
                                    .to_vec();
                                let before = {
                                    let mut all = record.lock().unwrap();
                                    let before = all.iter().filter(|s| s.key == seen.key).count();
                                    all.push(seen.clone());
                                    before
                                };
                                let (status, retry_after) = match script(&seen, before) {
                                    Reply::Status(code) => (code, None),
                                    Reply::RetryAfter(code, after) => (code, Some(after)),
                                    Reply::Hang => std::future::pending().await,
                                };
                                let mut response = hyper::Response::new(Full::new(Bytes::from(
                                    format!("{{\"answer\":{status}}}"),
                                )));
                                *response.status_mut() =
                                    hyper::StatusCode::from_u16(status).unwrap();
                                if let Some(after) = retry_after {
                                    response
                                        .headers_mut()
                                        .insert("retry-after", after.parse().unwrap());
                                }
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { url, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests with `key`.
    pub fn with_key(&self, key: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.key == key).collect()
    }
}
