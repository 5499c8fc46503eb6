//! Smoke tests: the real edge binary and the real load generator, at tiny sizes.
//!
//! The edge binary is the one cargo built next to this test (`target/<profile>/heliograph-edge`);
//! run `cargo build -p heliograph-edge` first.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use heliograph_testkit::edge::{EdgeOptions, Node};
use heliograph_testkit::process::{self, Launchable, Proc};
use serde_json::Value;

use crate::LOADTEST;

const START_DEADLINE: Duration = Duration::from_secs(60);

struct Edge {
    node: Node,
    url: String,
    _data: tempfile::TempDir,
}

impl Edge {
    fn start() -> Self {
        Self::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Self {
        let data = tempfile::tempdir().unwrap();
        // Benchmarks measure relay capacity, not the per-connection abuse limiter.
        let mut args = vec![
            "--rate-limit-per-second",
            "1000000",
            "--rate-limit-burst",
            "1000000",
        ];
        args.extend_from_slice(extra);
        let options = EdgeOptions::new(data.path()).log_filter("warn").args(args);
        let node = Node::spawn(&options).unwrap();
        Self {
            url: node.ws_url(),
            node,
            _data: data,
        }
    }

    fn pid(&self) -> String {
        self.node.pid().to_string()
    }
}

/// Runs the load generator with `args` plus `--out`, and returns the result file.
fn loadtest(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("result.json");
    loadtest_to(args, &out);
    serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap()
}

/// Runs the load generator with `args` (bounded: every scenario here is a few seconds long)
/// and returns its output; it must succeed.
fn run_loadtest(args: &[&OsStr]) {
    let mut cmd = Command::new(LOADTEST);
    cmd.args(args);
    let run = process::run(cmd, Duration::from_secs(120)).unwrap();
    assert!(
        run.status.success(),
        "loadtest {args:?} failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Runs the load generator with `args` plus `--out OUT`.
fn loadtest_to(args: &[&str], out: &Path) {
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    all.extend([OsStr::new("--out"), out.as_os_str()]);
    run_loadtest(&all);
}

/// A short relay run against the server at `url` (process `pid`), with `extra` flags.
fn relay_args<'a>(extra: &[&'a str], url: &'a str, pid: &'a str) -> Vec<&'a str> {
    let mut args = vec!["relay"];
    args.extend(extra);
    args.extend([
        "--url",
        url,
        "--clients",
        "4",
        "--window",
        "2",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--server-pid",
        pid,
    ]);
    args
}

fn assert_envelope(v: &Value, scenario: &str) {
    assert_eq!(v["scenario"], scenario);
    assert!(v["settings"].is_object());
    assert!(v["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(v["machine"]["kernel"].is_string());
    assert!(v["machine"]["cpu_model"].is_string());
    assert!(v["started_at"].is_string());
    assert!(!v["runs"].as_array().unwrap().is_empty());
}

fn assert_relay_ok(r: &Value) {
    assert!(
        r["round_trips"].as_u64().unwrap() > 0,
        "no round trips: {r}"
    );
    assert!(r["round_trips_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(r["sent"], r["received"], "sent != received: {r}");
    assert!(r["sent"].as_u64().unwrap() > 0);
    assert_eq!(r["errors"], 0, "errors: {r}");
    assert_eq!(r["drained"], true);
    assert!(r["rtt"]["p50_us"].as_f64().unwrap() > 0.0);
    assert!(r["rtt"]["p99_us"].is_number());
    assert!(r["rtt"]["p999_us"].is_number());
    assert!(r["server_cpu_us_per_message"].as_f64().is_some());
    assert!(r["generator_cpu_percent_of_core"].is_number());
    assert!(r["round_trips_per_second_samples"].is_array());
}

#[test]
fn relay_against_the_edge() {
    let edge = Edge::start();
    let pid = edge.pid();
    let v = loadtest(&relay_args(&[], &edge.url, &pid));
    assert_envelope(&v, "relay");
    assert_relay_ok(&v["results"]);
    assert_eq!(
        v["results"]["round_trips_per_second_samples"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

/// Clients that never acknowledge (as plain WebSocket tools): every signal still arrives.
#[test]
fn relay_against_the_edge_without_acks() {
    let edge = Edge::start();
    let pid = edge.pid();
    let v = loadtest(&relay_args(&["--no-ack"], &edge.url, &pid));
    assert_envelope(&v, "relay");
    assert_eq!(v["settings"]["acks"], false, "{}", v["settings"]);
    assert_relay_ok(&v["results"]);
}

#[test]
fn relay_vs_reference() {
    let edge = Edge::start();
    let pid = edge.pid();
    let v = loadtest(&relay_args(&["--vs-reference"], &edge.url, &pid));
    assert_envelope(&v, "relay-vs-reference");
    assert_relay_ok(&v["results"]["edge"]);
    assert_relay_ok(&v["results"]["reference"]);
    assert!(v["results"]["ratios"]["throughput"].as_f64().unwrap() > 0.0);
    assert!(v["results"]["ratios"]["cpu_per_message"].is_number());
    assert!(v["results"]["ratios"]["p99"].is_number());
}

#[test]
fn relay_in_the_socketio_dialect_vs_a_nodejs_socketio_server() {
    let edge = Edge::start_with(&["--socketio"]);
    let pid = edge.pid();
    let base = edge.url.trim_end_matches("/ws").to_owned();
    let v = loadtest(&relay_args(
        &["--wire", "socketio", "--vs-reference"],
        &base,
        &pid,
    ));
    assert_envelope(&v, "relay-vs-reference");
    assert_eq!(v["settings"]["edge"]["wire"], "socketio");
    assert_relay_ok(&v["results"]["edge"]);
    assert_relay_ok(&v["results"]["reference"]);
    assert!(v["results"]["ratios"]["throughput"].as_f64().unwrap() > 0.0);
}

#[test]
fn reference_server_alone() {
    let mut cmd = Command::new(LOADTEST);
    cmd.args(["reference-server", "--listen", "127.0.0.1:0"]);
    let mut server = Proc::spawn(cmd, "reference server", None).unwrap();
    let line = server.address_line(START_DEADLINE).unwrap();
    let url = format!("ws://{}/ws", line["listening"].as_str().unwrap());
    let pid = server.pid().unwrap().to_string();
    let v = loadtest(&relay_args(&[], &url, &pid));
    assert_relay_ok(&v["results"]);
}

#[test]
fn idle_holds_connections() {
    let edge = Edge::start();
    let pid = edge.pid();
    let v = loadtest(&[
        "idle",
        "--url",
        &edge.url,
        "--clients",
        "20",
        "--hold",
        "0.5",
        "--server-pid",
        &pid,
    ]);
    assert_envelope(&v, "idle");
    let r = &v["results"];
    assert_eq!(r["connected"], 20, "{r}");
    assert_eq!(r["failed"], 0);
    assert!(r["server_rss_after_bytes"].as_u64().unwrap() > 0);
    assert!(r["server_bytes_per_connection"].is_number());
}

#[test]
fn idle_in_child_processes() {
    let edge = Edge::start();
    let v = loadtest(&[
        "idle",
        "--url",
        &edge.url,
        "--clients",
        "20",
        "--hold",
        "0.2",
        "--processes",
        "2",
    ]);
    assert_eq!(v["results"]["connected"], 20);
    assert_eq!(v["results"]["processes"], 2);
}

fn assert_storm_ok(r: &Value, clients: u64) {
    assert_eq!(r["clients"], clients, "{r}");
    assert_eq!(r["welcomed"], clients, "every client welcomed: {r}");
    assert_eq!(r["joined"], clients, "every client joined: {r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert!(r["connections_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    for step in ["to_welcome", "to_joined"] {
        assert_eq!(r[step]["samples"], clients, "{step}: {r}");
        let (p50, p99, max) = (
            r[step]["p50_us"].as_f64().unwrap(),
            r[step]["p99_us"].as_f64().unwrap(),
            r[step]["max_us"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{step}: {r}");
    }
    assert!(
        r["to_welcome"]["p50_us"].as_f64().unwrap() <= r["to_joined"]["p50_us"].as_f64().unwrap(),
        "welcome comes before joined: {r}"
    );
    assert!(r["server_cpu_us_per_connection"].is_number(), "{r}");
    assert!(r["generator_cpu_percent_of_core"].is_number());
}

#[test]
fn storm_vs_reference() {
    let edge = Edge::start();
    let pid = edge.pid();
    let v = loadtest(&[
        "storm",
        "--url",
        &edge.url,
        "--server-pid",
        &pid,
        "--clients",
        "40",
        "--concurrency",
        "8",
        "--vs-reference",
    ]);
    assert_envelope(&v, "storm-vs-reference");
    assert_storm_ok(&v["results"]["edge"], 40);
    assert_storm_ok(&v["results"]["reference"], 40);
    let ratios = &v["results"]["ratios"];
    assert!(
        ratios["connection_rate"].as_f64().unwrap() > 0.0,
        "{ratios}"
    );
    assert!(ratios["joined_p99"].as_f64().unwrap() > 0.0, "{ratios}");
}

#[test]
fn joins_storm() {
    let edge = Edge::start();
    let pid = edge.pid();
    let v = loadtest(&[
        "joins",
        "--url",
        &edge.url,
        "--concurrency",
        "4",
        "--duration",
        "2",
        "--server-pid",
        &pid,
    ]);
    assert_envelope(&v, "joins");
    let r = &v["results"];
    assert!(r["joins"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert!(r["join_latency"]["p99_us"].as_f64().unwrap() > 0.0);
}

#[test]
fn repeat_reports_medians_and_every_run() {
    let edge = Edge::start();
    let v = loadtest(&[
        "joins",
        "--url",
        &edge.url,
        "--concurrency",
        "2",
        "--duration",
        "1",
        "--repeat",
        "2",
    ]);
    assert_eq!(v["runs"].as_array().unwrap().len(), 2);
    assert!(v["results"]["joins"].as_f64().unwrap() > 0.0);
}

#[test]
fn report_renders_markdown_and_charts() {
    let edge = Edge::start();
    let results = tempfile::tempdir().unwrap();
    let relay_out = results.path().join("relay.json");
    let joins_out = results.path().join("joins.json");
    for (args, out) in [
        (
            vec![
                "relay",
                "--url",
                &edge.url,
                "--clients",
                "2",
                "--window",
                "1",
                "--duration",
                "1",
                "--warmup",
                "0.2",
            ],
            &relay_out,
        ),
        (
            vec![
                "joins",
                "--url",
                &edge.url,
                "--concurrency",
                "2",
                "--duration",
                "1",
            ],
            &joins_out,
        ),
    ] {
        loadtest_to(&args, out);
    }
    let report = tempfile::tempdir().unwrap();
    run_loadtest(&[
        OsStr::new("report"),
        OsStr::new("--input"),
        results.path().as_os_str(),
        OsStr::new("--out-dir"),
        report.path().as_os_str(),
    ]);
    let md = std::fs::read_to_string(report.path().join("report.md")).unwrap();
    assert!(
        md.contains("## Relay") && md.contains("## Join/leave storm"),
        "{md}"
    );
    for chart in ["latency.svg", "throughput.svg"] {
        let svg = std::fs::read_to_string(report.path().join(chart)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{chart}"
        );
    }
}
