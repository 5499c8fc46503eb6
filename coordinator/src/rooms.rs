//! `heliograph-coordinator rooms list|show|kick|close|send`: the server API from the command
//! line. The key comes from a file or `HELIOGRAPH_API_KEY`, never from a flag's value.

use std::process::ExitCode;
use std::time::Duration;

use heliograph_coordinator::http_client::{HttpClient, Trust};

use super::{RoomsArgs, RoomsOp};

/// Connecting and the whole exchange: a commit during a leader election takes up to ~3 s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// Percent-encodes one path segment (room and peer ids may hold any printable character).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn key(args: &RoomsArgs) -> Result<String, String> {
    match &args.api_key_file {
        Some(path) => std::fs::read_to_string(path)
            .map(|k| k.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| format!("reading {}: {e}", path.display())),
        None => std::env::var("HELIOGRAPH_API_KEY")
            .map_err(|_| "no API key: --api-key-file or HELIOGRAPH_API_KEY".to_owned()),
    }
}

pub async fn run(args: RoomsArgs) -> ExitCode {
    let key = match key(&args) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("heliograph-coordinator: {e}");
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    let base = format!("{}/api/v1", args.server.trim_end_matches('/'));
    let (method, url, body) = match &args.op {
        RoomsOp::List { limit, cursor } => {
            let mut query = Vec::new();
            if let Some(l) = limit {
                query.push(format!("limit={l}"));
            }
            if let Some(c) = cursor {
                query.push(format!("cursor={}", segment(c)));
            }
            let q = if query.is_empty() {
                String::new()
            } else {
                format!("?{}", query.join("&"))
            };
            ("GET", format!("{base}/rooms{q}"), Vec::new())
        }
        RoomsOp::Show { room } => ("GET", format!("{base}/rooms/{}", segment(room)), Vec::new()),
        RoomsOp::Kick { room, peer } => (
            "DELETE",
            format!("{base}/rooms/{}/peers/{}", segment(room), segment(peer)),
            Vec::new(),
        ),
        RoomsOp::Close { room } => (
            "DELETE",
            format!("{base}/rooms/{}", segment(room)),
            Vec::new(),
        ),
        RoomsOp::Send { room, data, to } => {
            let data: serde_json::Value = match serde_json::from_str(data) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("heliograph-coordinator: --data is not JSON: {e}");
                    return ExitCode::from(super::EXIT_CONFIG);
                }
            };
            let mut body = serde_json::json!({ "data": data });
            if let Some(to) = to {
                body["to"] = serde_json::Value::String(to.clone());
            }
            (
                "POST",
                format!("{base}/rooms/{}/messages", segment(room)),
                body.to_string().into_bytes(),
            )
        }
    };
    // https:// servers are verified against the platform's CA certificates.
    let trust = match Trust::load(None) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("heliograph-coordinator: {e}");
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    let client = HttpClient::new(CONNECT_TIMEOUT, &trust);
    let headers = [
        ("authorization", format!("Bearer {key}")),
        ("content-type", "application/json".to_owned()),
    ];
    match client
        .send(method, &url, &headers, body, REQUEST_DEADLINE)
        .await
    {
        Ok(answer) => {
            let text = String::from_utf8_lossy(&answer.body);
            if (200..300).contains(&answer.status) {
                println!("{text}");
                ExitCode::SUCCESS
            } else {
                eprintln!("{text}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("heliograph-coordinator: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}
