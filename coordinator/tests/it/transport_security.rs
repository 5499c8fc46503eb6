//! Who may talk to a replica: mutual TLS (certificates from the cluster CA, on top of the
//! cluster secret) and the Raft port's refusal of nodes that are not in the cluster.
//!
//! Certificates are made in the test with a throwaway CA; replicas run in this process on
//! port-0 listeners.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use heliograph_coordinator::grpc::admin_client::{self, AdminCall};
use heliograph_coordinator::raft::TypeConfig;
use heliograph_coordinator::transport::MutualTls;
use heliograph_proto::admin::v1 as pb;
use heliograph_proto::admin::v1::admin_client::AdminClient;
use heliograph_proto::raft::v1::RaftBytes;
use heliograph_proto::raft::v1::raft_client::RaftClient;
use openraft::Vote;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::Code;

use crate::support::{Node, secret};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const WAIT: Duration = Duration::from_secs(15);
/// A throwaway certificate authority.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `127.0.0.1` and `localhost`, used as server and as client.
    fn leaf(&self, name: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn tls(&self, leaf: &Leaf) -> MutualTls {
        MutualTls::from_pem(&leaf.cert, &leaf.key, &self.pem).unwrap()
    }
}

/// A `Status` admin call at `addr` over TLS with `tls`, with the secret if `with_secret`.
/// `Err` holds the gRPC code, or `Unavailable` when no connection could be made.
async fn status_call(
    addr: SocketAddr,
    tls: ClientTlsConfig,
    with_secret: bool,
) -> Result<pb::StatusResponse, Code> {
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|_| Code::Unavailable)?;
    let mut request = tonic::Request::new(pb::StatusRequest::default());
    if with_secret {
        secret().attach(&mut request);
    }
    AdminClient::new(channel)
        .status(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| s.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_cluster_certificate_and_the_secret() {
    let ca = Ca::new("heliograph test CA");
    let replica_cert = ca.leaf("replica-1");
    let node = Node::start_in_tempdir(1, secret().with_tls(Some(ca.tls(&replica_cert)))).await;
    node.replica.bootstrap().await.unwrap();

    // The admin client with the secret and a certificate of the cluster CA.
    let admin_cert = ca.leaf("admin");
    let admin = secret().with_tls(Some(ca.tls(&admin_cert)));
    let status = admin_client::call(&node.api.to_string(), Some(&admin), AdminCall::Status)
        .await
        .unwrap();
    assert_eq!(status.node_id, 1);

    let ca_cert = Certificate::from_pem(&ca.pem);
    let with_identity = |leaf: &Leaf| {
        ClientTlsConfig::new()
            .ca_certificate(ca_cert.clone())
            .identity(Identity::from_pem(&leaf.cert, &leaf.key))
    };
    assert!(
        status_call(node.api, with_identity(&admin_cert), true)
            .await
            .is_ok()
    );

    // No client certificate: the handshake (or the first call) fails.
    let anonymous = ClientTlsConfig::new().ca_certificate(ca_cert.clone());
    let refused = status_call(node.api, anonymous, true).await.unwrap_err();
    assert_ne!(refused, Code::Ok);

    // A certificate from another CA, even with the secret.
    let rogue_ca = Ca::new("rogue CA");
    let rogue = rogue_ca.leaf("rogue");
    let refused = status_call(node.api, with_identity(&rogue), true)
        .await
        .unwrap_err();
    assert_ne!(refused, Code::Ok);

    // A valid certificate without the secret.
    let refused = status_call(node.api, with_identity(&admin_cert), false)
        .await
        .unwrap_err();
    assert_eq!(refused, Code::Unauthenticated);

    // Plain text is not served at all, on either port.
    for addr in [node.api, node.raft] {
        let refused = admin_client::call(&addr.to_string(), Some(&secret()), AdminCall::Status)
            .await
            .unwrap_err();
        assert_ne!(refused.code(), Some(Code::Ok));
    }
    let mut raft = RaftClient::new(
        Endpoint::from_shared(format!("https://{}", node.raft))
            .unwrap()
            .tls_config(ClientTlsConfig::new().ca_certificate(ca_cert))
            .unwrap()
            .connect_lazy(),
    );
    let mut request = tonic::Request::new(RaftBytes {
        json: b"{}".to_vec(),
        ..Default::default()
    });
    secret().attach(&mut request);
    assert!(raft.vote(request).await.is_err());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_replicate_over_mutual_tls() {
    let ca = Ca::new("heliograph test CA");
    let one =
        Node::start_in_tempdir(1, secret().with_tls(Some(ca.tls(&ca.leaf("replica-1"))))).await;
    let two =
        Node::start_in_tempdir(2, secret().with_tls(Some(ca.tls(&ca.leaf("replica-2"))))).await;
    one.replica.bootstrap().await.unwrap();
    one.replica.add_member(2, two.info(), false).await.unwrap();
    two.replica
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.current_leader == Some(1) && m.membership_config.voter_ids().count() == 2,
            "the second replica follows the first over TLS",
        )
        .await
        .unwrap();
    two.stop().await;
    one.stop().await;
}

/// A Raft RPC as another replica sends it: the secret, this cluster's id, JSON bytes.
fn raft_request(json: Vec<u8>, cluster: &str) -> tonic::Request<RaftBytes> {
    let mut request = tonic::Request::new(RaftBytes {
        json,
        ..Default::default()
    });
    secret().attach(&mut request);
    request
        .metadata_mut()
        .insert("x-heliograph-cluster", cluster.parse().unwrap());
    request
}

fn vote_from(node: u64, term: u64) -> Vec<u8> {
    serde_json::to_vec(&VoteRequest::new(Vote::new(term, node), None)).unwrap()
}

fn append_from(node: u64, term: u64) -> Vec<u8> {
    let request = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term, node),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    serde_json::to_vec(&request).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raft_port_refuses_nodes_outside_the_cluster() {
    let node = Node::start_in_tempdir(1, secret()).await;
    node.replica.bootstrap().await.unwrap();
    node.replica
        .raft()
        .wait(Some(WAIT))
        .metrics(|m| m.current_leader == Some(1), "the replica leads")
        .await
        .unwrap();
    let cluster = node.replica.status().cluster_id.unwrap();
    let term = node.replica.raft().metrics().borrow().current_term;
    let mut raft = RaftClient::connect(format!("http://{}", node.raft))
        .await
        .unwrap();

    let stranger = raft
        .vote(raft_request(vote_from(99, term + 100), &cluster))
        .await
        .unwrap_err();
    assert_eq!(stranger.code(), Code::PermissionDenied);
    let stale = raft
        .append_entries(raft_request(append_from(99, 0), &cluster))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::PermissionDenied);
    // Nothing changed: the stranger's higher term did not reach the replica.
    assert_eq!(node.replica.raft().metrics().borrow().current_term, term);

    // A member is heard (its stale vote is answered, and refused, by Raft itself).
    let member = raft
        .vote(raft_request(vote_from(1, 0), &cluster))
        .await
        .unwrap();
    assert!(!member.into_inner().json.is_empty());

    // An uninitialized replica accepts anyone: that is how it learns it joined a cluster.
    let fresh = Node::start_in_tempdir(2, secret()).await;
    let mut raft = RaftClient::connect(format!("http://{}", fresh.raft))
        .await
        .unwrap();
    raft.vote(raft_request(vote_from(99, 1), &cluster))
        .await
        .unwrap();
    fresh.stop().await;
    node.stop().await;
}

#[test]
fn tls_files_are_checked_at_load() {
    let ca = Ca::new("heliograph test CA");
    let leaf = ca.leaf("replica");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (cert, key, ca_file) = (
        write("cert.pem", &leaf.cert),
        write("key.pem", &leaf.key),
        write("ca.pem", &ca.pem),
    );
    assert!(MutualTls::load(&cert, &key, &ca_file).is_ok());
    let missing = Path::new("/nonexistent/heliograph.pem");
    assert!(MutualTls::load(&cert, missing, &ca_file).is_err());
    assert!(MutualTls::load(&key, &key, &ca_file).is_err());
}
