//! The region's Redis as managed services run it: TLS with the service's own CA and client
//! certificates, and an ACL user whose password comes from a file (never the command line).
//! A real `redis-server` with TLS on, plain TCP off and the default user disabled; two real
//! edges: the bus relays between them and a session resumes across them.

use std::path::{Path, PathBuf};
use std::process::Command;

use heliograph_testkit::ports::free_port;
use heliograph_testkit::process::Proc;
use heliograph_testkit::wait::{DEADLINE, until_blocking};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use serde_json::{Value, json};

use crate::support::resumable::Session;
use crate::support::{Cluster, Spec, metric};

const PASSWORD: &str = "s3cret-of-the-heliograph-user";

struct Tls {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, written to `dir`.
fn certificates(dir: &Path) -> Tls {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // OpenSSL (redis-server) builds chains by name: every certificate gets its own.
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "heliograph test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("127.0.0.1");
    let (client_cert, client_key) = leaf("heliograph-edge");
    let write = |file: &str, text: &str| {
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        path
    };
    Tls {
        ca: write("ca.pem", &ca_pem),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server-key.pem", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client-key.pem", &client_key),
    }
}

/// redis-server on a TLS port only, asking for client certificates, with the default user
/// off and one ACL user `heliograph`.
fn start_tls_redis(tls: &Tls, port: u16) -> Proc {
    let path = |p: &PathBuf| p.display().to_string();
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", "0", "--bind", "127.0.0.1"])
        .args(["--tls-port", &port.to_string()])
        .args(["--tls-cert-file", &path(&tls.server_cert)])
        .args(["--tls-key-file", &path(&tls.server_key)])
        .args(["--tls-ca-cert-file", &path(&tls.ca)])
        .args(["--tls-auth-clients", "yes"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--user", "default", "off"])
        // Exactly the rights docs/DEPLOY.md tells operators to grant.
        .args([
            "--user",
            "heliograph",
            "on",
            &format!(">{PASSWORD}"),
            "~heliograph:*",
            "&heliograph:edge:*",
            "+@read",
            "+@write",
            "+@pubsub",
            "+@scripting",
            "+@connection",
        ]);
    let proc = Proc::spawn(cmd, "redis-server with TLS", None).unwrap();
    until_blocking(DEADLINE, "redis-server to listen on its TLS port", || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    })
    .unwrap();
    proc
}

fn signal(room: &str, to: &str, n: u64) -> Value {
    json!({"type": "signal", "room": room, "to": to, "kind": "custom", "data": {"n": n}, "ref": n})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_and_the_bus_relays_over_tls_with_an_acl_user() {
    let dir = tempfile::tempdir().unwrap();
    let tls = certificates(dir.path());
    let port = free_port().unwrap();
    let _redis = start_tls_redis(&tls, port);
    let password_file = dir.path().join("redis-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();

    let cluster = Cluster::start(Spec {
        replicas: &[(1, "us")],
        ..Spec::default()
    })
    .await;
    let url = format!("rediss://127.0.0.1:{port}/");
    let flags = |p: &PathBuf| p.display().to_string();
    let (ca, cert, key, pw) = (
        flags(&tls.ca),
        flags(&tls.client_cert),
        flags(&tls.client_key),
        flags(&password_file),
    );
    let args = [
        "--region",
        "us",
        "--redis",
        url.as_str(),
        "--redis-ca",
        ca.as_str(),
        "--redis-client-cert",
        cert.as_str(),
        "--redis-client-key",
        key.as_str(),
        "--redis-username",
        "heliograph",
        "--redis-password-file",
        pw.as_str(),
        "--redis-connections",
        "3",
    ];
    let a = cluster.edge_on("us-a", &[1], &args);
    let b = cluster.edge_on("us-b", &[1], &args);
    for edge in [&a, &b] {
        heliograph_testkit::edge::wait_redis_up(&edge.addr, DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("Redis never came up for an edge: {e:#}\n{}", edge.log()));
    }
    // The password went through the file, not the command line.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", a.pid())).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(PASSWORD),
        "the password is not in argv"
    );

    let mut x = Session::connect(&a.ws_url()).await;
    let mut y = Session::connect(&b.ws_url()).await;
    x.send(json!({"type": "join", "room": "tls"})).await;
    x.expect("joined").await;
    y.send(json!({"type": "join", "room": "tls"})).await;
    y.expect("joined").await;
    x.expect("peer-joined").await;

    // Edge to edge over the TLS bus.
    y.send(signal("tls", &x.peer_id, 1)).await;
    assert_eq!(x.expect("signal").await["data"]["n"], 1);
    let (_, body) = crate::support::http_get(&b.addr, "/metrics").await;
    let over_bus = metric(
        &body,
        r#"heliograph_edge_routing_decisions_total{path="region"}"#,
    );
    assert!(
        over_bus.is_some_and(|n| n >= 1.0),
        "relayed over Redis: {over_bus:?}"
    );

    // X's network drops; what Y sends meanwhile waits in X's pending buffer in Redis, and
    // X resumes on the other edge with all of it.
    let (peer, token, last) = x.drop_connection();
    heliograph_testkit::http::wait_until(&a.addr, "/metrics", DEADLINE, |_, body| {
        metric(body, "heliograph_edge_sessions_detached_total").is_some_and(|n| n >= 1.0)
    })
    .await
    .expect("edge A stored the detached session");
    for n in 2..=4 {
        y.send(signal("tls", &peer, n)).await;
    }
    let (_x, replay, resumed) = Session::resume(&b.ws_url(), peer, token, last).await;
    let got: Vec<u64> = replay
        .iter()
        .filter(|v| v["type"] == "signal")
        .map(|v| v["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        got,
        [2, 3, 4],
        "every signal sent while detached: {replay:?}"
    );
    assert_eq!(resumed["replayed"], 3);
}
