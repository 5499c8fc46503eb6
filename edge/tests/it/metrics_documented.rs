//! Every metric that docs/METRICS.md lists as emitted is on the `/metrics` of running edges and
//! coordinator replicas after real traffic, with a numeric value; the Grafana dashboard uses
//! only metrics found there.

use std::collections::BTreeSet;
use std::path::Path;

use crate::support::Client;
use crate::support::us_and_eu;
use serde_json::json;

fn repo_file(rel: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(rel)).unwrap()
}

/// Metric names in the first column of the tables of the "Emitted" part of METRICS.md.
fn documented() -> BTreeSet<String> {
    let doc = repo_file("docs/METRICS.md");
    let emitted = doc.split("## Planned").next().unwrap();
    emitted
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("heliograph_") || n.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// Sample names (with their numeric values) in a Prometheus text exposition.
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let name = l.split(['{', ' ']).next()?.to_owned();
            let value: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((name, value))
        })
        .collect()
}

/// The metric a sample belongs to (histogram series carry a suffix).
fn family(sample: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| sample.strip_suffix(s))
        .unwrap_or(sample)
}

#[tokio::test]
async fn every_documented_metric_is_exposed_after_real_traffic() {
    let cluster = us_and_eu(&["us"]).await;
    cluster.wait_redis_up().await;

    // Peers on every edge meet in one room and signal each other: local, same-region and
    // cross-region paths all carry traffic; one bad frame produces an error.
    let mut clients = Vec::new();
    for edge in ["us-a", "us-a", "us-b", "eu-a"] {
        let mut c = Client::connect(&cluster.edge(edge).node.ws_url()).await;
        c.join("metrics-room").await;
        clients.push(c);
    }
    let ids: Vec<String> = clients.iter().map(|c| c.peer_id.clone()).collect();
    for (i, sender) in clients.iter_mut().enumerate() {
        for (j, to) in ids.iter().enumerate() {
            if i != j {
                sender
                    .send(json!({"type": "signal", "room": "metrics-room", "to": to, "kind": "offer", "data": {"i": i}}))
                    .await;
            }
        }
    }
    for c in clients.iter_mut() {
        let mut signals = 0;
        while signals < ids.len() - 1 {
            match c.recv().await["type"].as_str() {
                Some("signal") => signals += 1,
                Some("peer-joined") => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    clients[0].send(json!({"type": "nonsense"})).await;
    clients[0].expect("error").await;
    clients[0].send(json!({"type": "list-rooms"})).await;
    clients[0].expect("rooms").await;

    // One server API call (refused: no key) is traffic for its request counter.
    let (status, _) = heliograph_testkit::http::request(
        &cluster.replicas[0].metrics,
        "GET",
        "/api/v1/rooms",
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 401);

    let mut exposed: Vec<(String, f64)> = Vec::new();
    let mut all_lines: Vec<String> = Vec::new();
    for edge in &cluster.edges {
        let (status, body) = edge.node.get("/metrics").await;
        assert_eq!(status, 200);
        exposed.extend(samples(&body));
        all_lines.extend(body.lines().map(str::to_owned));
    }
    for replica in &cluster.replicas {
        let body = replica.scrape().await;
        exposed.extend(samples(&body));
        all_lines.extend(body.lines().map(str::to_owned));
    }
    let names: BTreeSet<&str> = exposed.iter().map(|(n, _)| family(n)).collect();

    let documented = documented();
    assert!(
        documented.len() > 30,
        "parsed {} metrics from METRICS.md",
        documented.len()
    );
    let missing: Vec<&String> = documented
        .iter()
        .filter(|m| !names.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "documented but not exposed: {missing:?}"
    );
    for (name, value) in &exposed {
        assert!(value.is_finite() && *value >= 0.0, "{name} = {value}");
    }
    // Traffic really happened where the docs say it is counted.
    let total = |name: &str| -> f64 {
        exposed
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .sum()
    };
    assert!(total("heliograph_edge_messages_received_total") >= 15.0);
    assert!(total("heliograph_edge_connections_accepted_total") >= 4.0);
    assert!(total("heliograph_registry_batches_total") >= 1.0);
    assert!(total("heliograph_raft_term") >= 1.0);
    // Every process says what it is, and its process figures are read at the scrape.
    let processes = cluster.edges.len() + cluster.replicas.len();
    assert_eq!(total("heliograph_build_info"), processes as f64);
    let versioned = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    for binary in ["heliograph-edge", "heliograph-coordinator"] {
        let series = format!("binary=\"{binary}\"");
        assert!(
            exposed.iter().any(|(n, _)| n == "heliograph_build_info")
                && all_lines
                    .iter()
                    .any(|l| l.starts_with("heliograph_build_info{")
                        && l.contains(&series)
                        && l.contains(&versioned)),
            "build info of {binary}"
        );
    }
    assert!(total("process_resident_memory_bytes") > 0.0);
    assert!(total("process_open_fds") >= processes as f64);

    // The dashboard's queries name only metrics that exist on these endpoints.
    let dashboard = repo_file("deploy/grafana/heliograph.json");
    let used: BTreeSet<String> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("heliograph_"))
        .map(|w| family(w).to_owned())
        .collect();
    assert!(!used.is_empty());
    let unknown: Vec<&String> = used
        .iter()
        .filter(|m| !names.contains(m.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard uses metrics that are not exposed: {unknown:?}"
    );
}
