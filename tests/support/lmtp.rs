//! A raw LMTP client for tests: one transaction as a mail server would
//! make it, with Postfix's `XFORWARD` when asked.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One LMTP transaction to `127.0.0.1:port` on a raw connection, saying
/// with `XFORWARD` which SMTP client the mail came from (what SPF checks)
/// when given; the DATA answer. Every step must succeed.
pub async fn deliver(port: u16, xforward: Option<&str>, sender: &str, raw: &str) -> String {
    let stream = loop {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    async fn reply(read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            read.read_line(&mut line).await.unwrap();
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                return all;
            }
        }
    }
    reply(&mut read).await;
    let mut commands = vec!["LHLO mx.shop.test".to_string()];
    if let Some(xforward) = xforward {
        commands.push(format!("XFORWARD {xforward}"));
    }
    for command in commands.into_iter().chain([
        format!("MAIL FROM:<{sender}>"),
        "RCPT TO:<support@shop.test>".to_string(),
        "DATA".to_string(),
    ]) {
        write
            .write_all(format!("{command}\r\n").as_bytes())
            .await
            .unwrap();
        let answer = reply(&mut read).await;
        assert!(
            answer.starts_with('2') || answer.starts_with('3'),
            "{command}: {answer}"
        );
    }
    write
        .write_all(format!("{}.\r\n", raw.replace("\r\n.", "\r\n..")).as_bytes())
        .await
        .unwrap();
    let answer = reply(&mut read).await;
    assert!(answer.starts_with("250"), "DATA: {answer}");
    write.write_all(b"QUIT\r\n").await.unwrap();
    answer
}
