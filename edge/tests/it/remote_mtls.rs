//! An edge process reaches a remote coordinator over mutual TLS (`--tls-cert`, `--tls-key`,
//! `--tls-ca`); without a certificate from the cluster CA it cannot.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{self, Client, Node};
use heliograph_coordinator::grpc::proto::registry_server::RegistryServer;
use heliograph_coordinator::grpc::registry_service::RegistryService;
use heliograph_coordinator::transport::ClusterSecret;
use heliograph_coordinator::transport::{MutualTls, tls};
use heliograph_coordinator::{EmbeddedConfig, Replica};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio_util::sync::CancellationToken;

/// Writes a CA and a certificate for 127.0.0.1 signed by it; returns (cert, key, ca) paths.
fn credentials(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let write = |file: &str, text: &str| {
        let path = dir.join(format!("{name}-{file}"));
        std::fs::write(&path, text).unwrap();
        path
    };
    (
        write("cert.pem", &cert.pem()),
        write("key.pem", &key.serialize_pem()),
        write("ca.pem", &ca_pem),
    )
}

#[tokio::test]
async fn an_edge_links_to_its_coordinator_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = credentials(dir.path(), "cluster");
    let tls = MutualTls::load(&cert, &key, &ca).unwrap();

    let replica = Replica::open(EmbeddedConfig::new(dir.path().join("replica")))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let secret = ClusterSecret::new(support::CLUSTER_SECRET)
        .unwrap()
        .with_tls(Some(tls.clone()));
    let service = RegistryServer::new(RegistryService::new(replica.clone(), secret, stop.clone()));
    let server = tokio::spawn({
        let stop = stop.clone();
        async move {
            tls::server(Some(&tls))
                .unwrap()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                )
                .await
                .unwrap();
        }
    });

    // An http:// URL is upgraded to https when the TLS flags are given.
    let url = format!("http://{addr}");
    let path = |p: &Path| p.display().to_string();
    let (cert, key, ca) = (path(&cert), path(&key), path(&ca));
    let start = |name: &str, tls_args: &[&str]| {
        let node_dir = dir.path().join(name);
        std::fs::create_dir_all(&node_dir).unwrap();
        let mut args = vec![
            "--coordinator",
            url.as_str(),
            "--cluster-secret",
            support::CLUSTER_SECRET,
        ];
        args.extend_from_slice(tls_args);
        Node::start(&node_dir, &args)
    };
    let edge = start(
        "edge-tls",
        &["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &ca],
    );
    edge.wait_ready().await;
    let mut client = Client::connect(&edge.ws_url()).await;
    let joined = client.join("secure-room").await;
    assert_eq!(joined["type"], "joined");

    // Plain text, and a certificate from another CA, never get the edge ready.
    let (rogue_cert, rogue_key, rogue_ca) = credentials(dir.path(), "rogue");
    let (rogue_cert, rogue_key, rogue_ca) = (path(&rogue_cert), path(&rogue_key), path(&rogue_ca));
    let plain = start("edge-plain", &[]);
    let rogue = start(
        "edge-rogue",
        &[
            "--tls-cert",
            &rogue_cert,
            "--tls-key",
            &rogue_key,
            "--tls-ca",
            &rogue_ca,
        ],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(plain.get("/readyz").await.0, 503);
    assert_eq!(rogue.get("/readyz").await.0, 503);

    drop((client, edge, plain, rogue));
    stop.cancel();
    server.await.unwrap();
    replica.shutdown().await;
}
