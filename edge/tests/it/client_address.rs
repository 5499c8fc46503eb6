//! The client's address behind proxies: `X-Forwarded-For` from a trusted proxy, the same
//! header from anyone else, and PROXY protocol headers. The per-address connection limit
//! shows which address the edge counted.

use std::net::SocketAddr;

use crate::support::{DEADLINE, Node, metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, ClientRequestBuilder};

type Socket<S> = tokio_tungstenite::WebSocketStream<S>;

fn request(node: &Node, forwarded_for: Option<&str>) -> ClientRequestBuilder {
    let r = ClientRequestBuilder::new(node.ws_url().parse().unwrap())
        .with_sub_protocol("heliograph.v1");
    match forwarded_for {
        Some(v) => r.with_header("X-Forwarded-For", v),
        None => r,
    }
}

/// The upgrade's status: 101 (the socket is kept in `open`) or the refusal's status code.
async fn upgrade<S>(
    open: &mut Vec<Socket<S>>,
    attempt: impl Future<
        Output = Result<(Socket<S>, tungstenite::handshake::client::Response), tungstenite::Error>,
    >,
) -> u16 {
    match tokio::time::timeout(DEADLINE, attempt).await.unwrap() {
        Ok((ws, resp)) => {
            open.push(ws);
            resp.status().as_u16()
        }
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

#[tokio::test]
async fn proxy_forwarded_for_from_a_trusted_peer_is_the_counted_address() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &[
            "--max-connections-per-ip",
            "2",
            "--trusted-proxy",
            "127.0.0.1/32",
        ],
    );
    let mut open = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let req = request(&node, Some("203.0.113.7"));
        statuses.push(upgrade(&mut open, tokio_tungstenite::connect_async(req)).await);
    }
    assert_eq!(statuses, [101, 101, 429]);
    // Another client behind the same proxy has its own count.
    let req = request(&node, Some("198.51.100.9"));
    assert_eq!(
        upgrade(&mut open, tokio_tungstenite::connect_async(req)).await,
        101
    );
    // What the client wrote itself (left of the proxy's entry) is not believed.
    let req = request(&node, Some("192.0.2.1, 203.0.113.7"));
    assert_eq!(
        upgrade(&mut open, tokio_tungstenite::connect_async(req)).await,
        429
    );
    // The log names the client, not the proxy.
    assert!(
        node.log()
            .lines()
            .any(|l| l.contains("connection refused") && l.contains("client=203.0.113.7")),
        "{}",
        node.log()
    );
    assert_eq!(
        node.metric(r#"heliograph_edge_connections_refused_total{reason="address_limit"}"#)
            .await,
        2.0
    );
}

#[tokio::test]
async fn proxy_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    // 127.0.0.1 is not a trusted proxy here: it is the client, whatever its header says.
    let node = Node::start(
        dir.path(),
        &[
            "--max-connections-per-ip",
            "2",
            "--trusted-proxy",
            "10.0.0.0/8",
        ],
    );
    let mut open = Vec::new();
    let mut statuses = Vec::new();
    for xff in ["203.0.113.7", "198.51.100.9", "192.0.2.44"] {
        let req = request(&node, Some(xff));
        statuses.push(upgrade(&mut open, tokio_tungstenite::connect_async(req)).await);
    }
    assert_eq!(statuses, [101, 101, 429]);
}

fn proxy_v2(source: &str, destination: &str) -> Vec<u8> {
    let source: SocketAddr = source.parse().unwrap();
    let destination: SocketAddr = destination.parse().unwrap();
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (source, destination),
    )
    .build()
    .unwrap()
}

fn proxy_v2_local() -> Vec<u8> {
    ppp::v2::Builder::new(
        ppp::v2::Version::Two | ppp::v2::Command::Local,
        ppp::v2::AddressFamily::Unspecified | ppp::v2::Protocol::Unspecified,
    )
    .build()
    .unwrap()
}

/// A TCP connection to the edge that opens with `header` (the edge may already have closed
/// it: what follows finds out).
async fn connect_with(node: &Node, header: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(&node.addr).await.unwrap();
    let _ = tcp.write_all(header).await;
    tcp
}

/// `GET path` over a connection opening with `header`: the status and body.
async fn get_with(node: &Node, header: &[u8], path: &str) -> (u16, String) {
    let mut tcp = connect_with(node, header).await;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[tokio::test]
async fn proxy_protocol_v2_header_names_the_counted_address() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &[
            "--max-connections-per-ip",
            "2",
            "--trusted-proxy",
            "127.0.0.1/32",
            "--proxy-protocol",
        ],
    );
    let dst = node.addr.as_str();
    let mut open = Vec::new();
    let mut statuses = Vec::new();
    for port in [40001, 40002, 40003] {
        let tcp = connect_with(&node, &proxy_v2(&format!("203.0.113.7:{port}"), dst)).await;
        let req = request(&node, None);
        statuses.push(upgrade(&mut open, tokio_tungstenite::client_async(req, tcp)).await);
    }
    assert_eq!(statuses, [101, 101, 429]);
    let tcp = connect_with(&node, &proxy_v2("198.51.100.9:40004", dst)).await;
    let req = request(&node, None);
    assert_eq!(
        upgrade(&mut open, tokio_tungstenite::client_async(req, tcp)).await,
        101
    );
    // v1 names the client the same way.
    let tcp = connect_with(&node, b"PROXY TCP4 198.51.100.9 127.0.0.1 40005 80\r\n").await;
    let req = request(&node, None);
    assert_eq!(
        upgrade(&mut open, tokio_tungstenite::client_async(req, tcp)).await,
        101
    );
    let tcp = connect_with(&node, b"PROXY TCP4 198.51.100.9 127.0.0.1 40006 80\r\n").await;
    let req = request(&node, None);
    assert_eq!(
        upgrade(&mut open, tokio_tungstenite::client_async(req, tcp)).await,
        429
    );

    // Without a header the connection is closed, and counted.
    let bare = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(node.ws_url()))
        .await
        .unwrap();
    assert!(bare.is_err());
    // A LOCAL header (the load balancer's own check) keeps the TCP peer.
    let (status, body) = get_with(&node, &proxy_v2_local(), "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &body,
            r#"heliograph_edge_connections_refused_total{reason="proxy_header"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &body,
            r#"heliograph_edge_connections_refused_total{reason="address_limit"}"#
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn proxy_protocol_from_an_untrusted_peer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &["--trusted-proxy", "10.0.0.0/8", "--proxy-protocol"],
    );
    let tcp = connect_with(&node, &proxy_v2("203.0.113.7:40001", &node.addr)).await;
    let req = request(&node, None);
    let refused = tokio::time::timeout(DEADLINE, tokio_tungstenite::client_async(req, tcp))
        .await
        .unwrap();
    assert!(refused.is_err());
}
