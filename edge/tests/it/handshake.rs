//! The WebSocket handshake, whichever way it reaches the edge: whole in the connection's first
//! read (answered before HTTP machinery), or after another request on a kept-alive connection
//! or with more headers than that path reads (answered by the router). Either way the client
//! gets the same session, and bytes it sent right behind its request are not lost.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{DEADLINE, Node, masked_text};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// RFC 6455's answer to [`KEY`].
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn upgrade_request(extra_headers: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: edge\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\
         Sec-WebSocket-Protocol: heliograph.v1\r\n{extra_headers}\r\n"
    )
}

/// Reads one HTTP response head; its text.
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(DEADLINE, tcp.read_exact(&mut byte))
            .await
            .expect("no response head before the deadline")
            .unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Reads an HTTP response with a `content-length` body; head and body.
async fn read_response(tcp: &mut TcpStream) -> (String, String) {
    let head = read_head(tcp).await;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("a content-length");
    let mut body = vec![0u8; len];
    tcp.read_exact(&mut body).await.unwrap();
    (head, String::from_utf8(body).unwrap())
}

/// The next text frame from the server, as JSON (keepalive pings are skipped).
async fn next_json(tcp: &mut TcpStream) -> Value {
    loop {
        let mut head = [0u8; 2];
        tokio::time::timeout(DEADLINE, tcp.read_exact(&mut head))
            .await
            .expect("no frame before the deadline")
            .unwrap();
        let len = match head[1] {
            126 => usize::from(tcp.read_u16().await.unwrap()),
            127 => usize::try_from(tcp.read_u64().await.unwrap()).unwrap(),
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await.unwrap();
        match head[0] {
            0x89 => continue,
            0x81 => return serde_json::from_slice(&payload).unwrap(),
            other => panic!("unexpected frame opcode byte {other:#x}"),
        }
    }
}

/// After a `101`: the session's `welcome`, then the answer to a `ping` sent right behind the
/// request, then a join that works.
async fn assert_session(tcp: &mut TcpStream, head: &str, reference: &str) {
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    assert_eq!(
        header("sec-websocket-accept").as_deref(),
        Some(ACCEPT),
        "{head}"
    );
    assert_eq!(
        header("sec-websocket-protocol").as_deref(),
        Some("heliograph.v1"),
        "{head}"
    );
    let welcome = next_json(tcp).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert!(welcome["peer_id"].is_string());
    let pong = next_json(tcp).await;
    assert_eq!(pong["type"], "pong", "{pong}");
    assert_eq!(pong["ref"], reference);
    let join = masked_text(r#"{"type":"join","room":"hs","ref":"j"}"#);
    tcp.write_all(&join).await.unwrap();
    let joined = next_json(tcp).await;
    assert_eq!(joined["type"], "joined", "{joined}");
}

/// Sends a handshake (with `extra_headers`) and, in the same write, a `ping` with `reference`;
/// asserts the session that answers (see [`assert_session`]).
async fn handshake_and_ping(tcp: &mut TcpStream, extra_headers: &str, reference: &str) {
    let mut bytes = upgrade_request(extra_headers).into_bytes();
    bytes.extend(masked_text(&format!(
        r#"{{"type":"ping","ref":"{reference}"}}"#
    )));
    tcp.write_all(&bytes).await.unwrap();
    let head = read_head(tcp).await;
    assert_session(tcp, &head, reference).await;
}

/// `GET /healthz` on a kept-alive connection: answered `200`, its body returned.
async fn healthz(tcp: &mut TcpStream) -> String {
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body
}

#[tokio::test]
async fn a_handshake_in_the_first_read_gets_a_session_and_the_frame_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut tcp = TcpStream::connect(&node.addr).await.unwrap();
    handshake_and_ping(&mut tcp, "", "first").await;
}

#[tokio::test]
async fn a_handshake_after_another_request_is_answered_by_the_router_alike() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut tcp = TcpStream::connect(&node.addr).await.unwrap();
    assert_eq!(healthz(&mut tcp).await, "ok\n");

    handshake_and_ping(&mut tcp, "", "kept-alive").await;
}

#[tokio::test]
async fn a_handshake_with_many_headers_is_answered_by_the_router_alike() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut tcp = TcpStream::connect(&node.addr).await.unwrap();
    let extra: String = (0..40).map(|i| format!("X-Extra-{i}: {i}\r\n")).collect();
    handshake_and_ping(&mut tcp, &extra, "many").await;
}

#[tokio::test]
async fn refusals_are_the_same_whichever_way_the_handshake_came() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--allowed-origin", "https://app.example.com"]);
    let evil = "Origin: https://evil.example.net\r\n";
    let many: String = (0..40).map(|i| format!("X-Extra-{i}: {i}\r\n")).collect();
    for extra in [evil.to_string(), format!("{evil}{many}")] {
        let mut tcp = TcpStream::connect(&node.addr).await.unwrap();
        tcp.write_all(upgrade_request(&extra).as_bytes())
            .await
            .unwrap();
        let (head, body) = read_response(&mut tcp).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; charset=utf-8"),
            "{head}"
        );
        assert_eq!(body, "origin not allowed\n");
    }
    // Not a valid handshake: refused by the router's checks, with their reason.
    let mut tcp = TcpStream::connect(&node.addr).await.unwrap();
    let request = upgrade_request("").replace("Version: 13", "Version: 8");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(body, "Sec-WebSocket-Version must be 13\n");
}

#[tokio::test]
async fn garbage_and_silent_connections_neither_break_the_edge_nor_hold_its_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &["--shutdown-grace-ms", "10000"]);
    // Not HTTP at all (a TLS hello): hyper's answer, and the connection ends.
    let mut tls = TcpStream::connect(&node.addr).await.unwrap();
    tls.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, tls.read_to_end(&mut answer))
        .await
        .expect("the connection was not ended")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );

    // A connection that never sends a byte, and a kept-alive one idle after its request.
    let _silent = TcpStream::connect(&node.addr).await.unwrap();
    let mut idle = TcpStream::connect(&node.addr).await.unwrap();
    healthz(&mut idle).await;
    // The edge still serves WebSocket clients.
    let mut tcp = TcpStream::connect(&node.addr).await.unwrap();
    handshake_and_ping(&mut tcp, "", "after").await;
    drop(tcp);

    // Neither the silent nor the idle connection holds the shutdown (its grace is 10 s).
    node.signal("TERM");
    assert_eq!(node.wait_exit(std::time::Duration::from_secs(5)), Some(0));
}

#[tokio::test]
async fn connections_that_send_no_request_head_in_time_are_closed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--handshake-timeout-ms", "300"]);
    // Silent from the start; half a head; idle after a kept-alive request.
    let mut silent = TcpStream::connect(&node.addr).await.unwrap();
    let mut half = TcpStream::connect(&node.addr).await.unwrap();
    half.write_all(b"GET /ws HTTP/1.1\r\nHost: edge\r\n")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(&node.addr).await.unwrap();
    healthz(&mut idle).await;
    for (what, tcp) in [
        ("silent", &mut silent),
        ("half", &mut half),
        ("idle", &mut idle),
    ] {
        let mut rest = Vec::new();
        tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("the {what} connection was not closed"))
            .unwrap();
        // hyper may answer a head cut short with 408 before it closes.
        let rest = String::from_utf8_lossy(&rest);
        assert!(
            rest.is_empty() || rest.starts_with("HTTP/1.1 408"),
            "{what}: {rest}"
        );
    }
    let (_, body) = node.get("/metrics").await;
    assert_eq!(
        crate::support::metric(
            &body,
            r#"heliograph_edge_connections_refused_total{reason="handshake_timeout"}"#
        ),
        Some(3.0)
    );
    // A client that sends its handshake at once is unaffected.
    let mut tcp = TcpStream::connect(&node.addr).await.unwrap();
    handshake_and_ping(&mut tcp, "", "in-time").await;
}
