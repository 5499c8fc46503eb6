//! Traces over OTLP, end to end: an OTLP/gRPC trace receiver runs in the test (the
//! `opentelemetry-proto` service, a real tonic server), and real replicas and edges of two
//! regions export to it with `--otlp-endpoint`. A join on an edge attached to a follower is
//! one trace with spans from that edge, its replica and the leader (the write forwarded);
//! a cross-region signal is one trace with spans from both edges and both gateways, each the
//! child of the one before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use heliograph_testkit::wait::{DEADLINE, until};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use serde_json::json;
use tokio_stream::wrappers::TcpListenerStream;

use crate::support::{Client, Cluster, REGION_REPLICA_ARGS, Spec};

/// One span as received, with the resource of the process that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    instance: String,
    region: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let resource = attributes(&rs.resource.map(|r| r.attributes).unwrap_or_default());
            let get = |k: &str| resource.get(k).cloned().unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(Received {
                        service: get("service.name"),
                        instance: get("service.instance.id"),
                        region: get("heliograph.region"),
                        trace: s.trace_id,
                        id: s.span_id,
                        parent: s.parent_span_id,
                        name: s.name,
                        attributes: attributes(&s.attributes),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    /// Serves on a port-0 listener of 127.0.0.1; returns its `http://` endpoint.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of the trace whose root is the first span named `root` that `pick` accepts,
    /// once `complete` holds for them.
    async fn trace(
        &self,
        what: &str,
        root: &str,
        pick: impl Fn(&Received) -> bool,
        complete: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let found = until(DEADLINE, what, || {
            let all = self.spans();
            let found = all
                .iter()
                .find(|s| s.name == root && pick(s))
                .map(|start| {
                    all.iter()
                        .filter(|s| s.trace == start.trace)
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .filter(|trace| complete(trace));
            std::future::ready(found)
        })
        .await;
        found.unwrap_or_else(|e| panic!("{e}; received: {:#?}", self.spans()))
    }
}

/// The span of `service` (and of `instance`, when not empty) named `name`.
fn of<'a>(
    trace: &'a [Received],
    service: &str,
    instance: &str,
    name: &str,
) -> Option<&'a Received> {
    trace.iter().find(|s| {
        s.service == service && s.name == name && (instance.is_empty() || s.instance == instance)
    })
}

const EDGE: &str = "heliograph-edge";
const REPLICA: &str = "heliograph-coordinator";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_and_a_cross_region_signal_are_each_one_trace_across_processes() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let replica_args: Vec<&str> = REGION_REPLICA_ARGS
        .iter()
        .copied()
        .chain(["--otlp-endpoint", &endpoint])
        .collect();
    // Replica 1 (us) leads; the eu edge is attached to replica 2, a follower.
    let cluster = Cluster::start(Spec {
        replicas: &[(1, "us"), (2, "eu")],
        edges: &[("us-a", "us"), ("eu-a", "eu")],
        replica_args: &replica_args,
        edge_args: &["--otlp-endpoint", &endpoint, "--log-format", "json"],
        // Batches leave every 50 ms instead of every 5 s.
        env: &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
        ..Spec::default()
    })
    .await;

    let mut us = Client::connect(&cluster.edge("us-a").node.ws_url()).await;
    us.join("traced").await;
    let mut eu = Client::connect(&cluster.edge("eu-a").node.ws_url()).await;
    eu.join("traced").await;
    us.expect("peer-joined").await;

    // The eu join: edge → its replica (a follower) → the leader, one trace.
    let join = receiver
        .trace(
            "the eu join",
            "registry.commit",
            |s| s.service == EDGE && s.region == "eu" && s.attributes["command"] == "join",
            |t| {
                of(t, REPLICA, "replica-2", "registry.write").is_some()
                    && of(t, REPLICA, "replica-1", "registry.write").is_some()
            },
        )
        .await;
    let edge = of(&join, EDGE, "", "registry.commit").unwrap();
    let follower = of(&join, REPLICA, "replica-2", "registry.write").unwrap();
    let leader = of(&join, REPLICA, "replica-1", "registry.write").unwrap();
    assert_eq!(
        follower.parent, edge.id,
        "the follower's span is the edge's child"
    );
    assert_eq!(
        leader.parent, follower.id,
        "the leader's span is the follower's child"
    );
    assert_eq!(follower.attributes["forwarded"], "false", "{follower:?}");
    assert_eq!(leader.attributes["forwarded"], "true", "{leader:?}");
    assert_eq!(
        (follower.region.as_str(), leader.region.as_str()),
        ("eu", "us")
    );

    // A signal from us to eu: sender's edge → us gateway → eu gateway → target's edge.
    us.send(json!({"type": "signal", "room": "traced", "to": eu.peer_id, "kind": "offer", "data": {"sdp": "x"}}))
        .await;
    eu.expect("signal").await;
    let signal = receiver
        .trace(
            "the cross-region signal",
            "signal.relay",
            |s| s.service == EDGE && s.region == "us",
            // Each process exports on its own schedule: wait for all four spans.
            |t| {
                of(t, EDGE, "", "signal.deliver").is_some()
                    && of(t, REPLICA, "replica-1", "relay.route").is_some()
                    && of(t, REPLICA, "replica-2", "relay.route").is_some()
            },
        )
        .await;
    let sent = of(&signal, EDGE, "", "signal.relay").unwrap();
    let gateway_us = of(&signal, REPLICA, "replica-1", "relay.route").unwrap();
    let gateway_eu = of(&signal, REPLICA, "replica-2", "relay.route").unwrap();
    let delivered = of(&signal, EDGE, "", "signal.deliver").unwrap();
    assert_eq!(sent.attributes["path"], "cross_region", "{sent:?}");
    assert_eq!(gateway_us.parent, sent.id, "{signal:#?}");
    assert_eq!(gateway_us.attributes["to"], "region", "{gateway_us:?}");
    assert_eq!(gateway_eu.parent, gateway_us.id, "{signal:#?}");
    assert_eq!(gateway_eu.attributes["to"], "edge", "{gateway_eu:?}");
    assert_eq!(delivered.parent, gateway_eu.id, "{signal:#?}");
    assert_eq!(delivered.region, "eu");
    assert_eq!(
        delivered.attributes["cross_region"], "true",
        "{delivered:?}"
    );
    assert_ne!(signal[0].trace, join[0].trace, "two traces");

    // `--log-format json`: the edges log one JSON object per line.
    let log = cluster.edge("eu-a").node.log();
    let line = log.lines().find(|l| l.contains("listening")).unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["level"], "INFO", "{line}");
}
