//! A join's `key` (a member's public key for signals relayed by peers) is checked and shown to
//! the room as `meta.key`; a `meta.key` the client wrote itself never reaches the others.

use crate::support::{Client, Node};
use base64::Engine as _;
use serde_json::json;

/// An uncompressed P-256 point's shape (0x04 and 64 bytes), base64url without padding.
fn key(fill: u8) -> String {
    let mut bytes = vec![0x04_u8];
    bytes.extend([fill; 64]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn a_joins_key_reaches_the_roster_and_a_forged_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut a = Client::connect(&node.ws_url()).await;
    let mut b = Client::connect(&node.ws_url()).await;
    let mut c = Client::connect(&node.ws_url()).await;

    // Malformed keys are refused and leave the client outside the room.
    for bad in [
        json!("short"),
        json!(7),
        json!(key(1).replacen('A', "+", 1)),
    ] {
        a.send(json!({"type": "join", "room": "keys", "key": bad, "ref": "k"}))
            .await;
        let e = a.expect("error").await;
        assert_eq!(
            (e["code"].as_str(), e["ref"].as_str()),
            (Some("bad-field"), Some("k")),
            "{e}"
        );
    }
    let mut compressed = vec![0x02_u8];
    compressed.extend([1_u8; 64]);
    let compressed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(compressed);
    a.send(json!({"type": "join", "room": "keys", "key": compressed}))
        .await;
    assert_eq!(a.expect("error").await["code"], "bad-field");

    // A's key replaces the one it wrote into meta.
    a.send(json!({"type": "join", "room": "keys", "key": key(1), "meta": {"name": "a", "key": "forged"}}))
        .await;
    assert_eq!(a.expect("joined").await["peers"], json!([]));
    // B sends no key but claims one in meta: removed.
    b.send(json!({"type": "join", "room": "keys", "meta": {"name": "b", "key": key(9)}}))
        .await;
    let joined = b.expect("joined").await;
    assert_eq!(
        joined["peers"][0]["meta"],
        json!({"name": "a", "key": key(1)})
    );
    let pj = a.expect("peer-joined").await;
    assert_eq!(pj["peer"]["meta"], json!({"name": "b"}));

    // Padding is accepted and dropped: the roster has one spelling of each key.
    c.send(json!({"type": "join", "room": "keys", "key": format!("{}=", key(3))}))
        .await;
    let joined = c.expect("joined").await;
    let metas: Vec<_> = joined["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["meta"].clone())
        .collect();
    assert!(
        metas.contains(&json!({"name": "a", "key": key(1)})),
        "{metas:?}"
    );
    assert!(metas.contains(&json!({"name": "b"})), "{metas:?}");
    assert_eq!(
        a.expect("peer-joined").await["peer"]["meta"],
        json!({"key": key(3)})
    );
}
