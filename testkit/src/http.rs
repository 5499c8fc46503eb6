//! A minimal HTTP/1.1 GET, enough for health, readiness and Prometheus metrics.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wait::DEADLINE;

/// `GET path` on a fresh connection: the status code and the body.
pub async fn try_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf))
        .await
        .map_err(|_| anyhow!("GET {addr}{path}: no answer within {DEADLINE:?}"))??;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("GET {addr}{path}: no status line"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// [`try_get`] in a test: a failure fails the test.
#[allow(clippy::panic)]
pub async fn get(addr: &str, path: &str) -> (u16, String) {
    try_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// [`get`] off any async runtime.
#[allow(clippy::panic, clippy::expect_used)]
pub fn get_blocking(addr: &str, path: &str) -> (u16, String) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for one request")
        .block_on(get(addr, path))
}

/// The value of one Prometheus sample, e.g. `name{label="x"}`.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `GET path` until `ok` holds for its status and body, for at most `within`.
pub async fn wait_until(
    addr: &str,
    path: &str,
    within: Duration,
    ok: impl Fn(u16, &str) -> bool,
) -> Result<()> {
    crate::wait::until(within, &format!("{addr}{path}"), || async {
        try_get(addr, path)
            .await
            .ok()
            .filter(|(code, body)| ok(*code, body))
            .map(|_| ())
    })
    .await
}

/// `method path` with `headers` and `body` on a fresh connection: the status code and body.
pub async fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf))
        .await
        .map_err(|_| anyhow!("{method} {addr}{path}: no answer within {DEADLINE:?}"))??;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{method} {addr}{path}: no status line"))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    // The server API answers small bodies; a chunked one is de-chunked here.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// [`try_request`] in a test: a failure fails the test.
#[allow(clippy::panic)]
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    try_request(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}
