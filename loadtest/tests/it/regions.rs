//! Smoke test of `heliograph-loadtest regions`: a 3-region simulation at tiny size with small
//! delays. Needs the workspace's binaries (`cargo build --workspace`) and `redis-server`.

use std::process::Command;
use std::time::Duration;

use heliograph_testkit::process;
use serde_json::Value;

use crate::LOADTEST;

const DEADLINE: Duration = Duration::from_secs(90);

#[test]
fn regions_matrix_at_tiny_size() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("regions.json");
    let mut cmd = Command::new(LOADTEST);
    cmd.args(["regions", "--regions", "us,eu,ap", "--leader", "us"])
        .args(["--delay", "us-eu=20,us-ap=30,eu-ap=40"])
        .args(["--edges-per-region", "2", "--clients-per-region", "2"])
        .args([
            "--rounds",
            "10",
            "--round-interval-ms",
            "30",
            "--join-rounds",
            "1",
            "--homing-rounds",
            "2",
            "--partition-window-ms",
            "300",
        ])
        .args(["--threads", "2", "--out"])
        .arg(&out);
    let run = process::run(cmd, DEADLINE).unwrap();
    assert!(
        run.status.success(),
        "regions failed: {}: {}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );

    let file: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(file["scenario"], "regions");
    assert_eq!(
        file["settings"]["regions"],
        serde_json::json!(["us", "eu", "ap"])
    );
    let r = &file["results"];
    for layout in ["federated", "central"] {
        let s = &r["signals"][layout];
        assert!(s["sent"].as_u64().unwrap() > 0, "{layout}: {s}");
        assert_eq!(s["sent"], s["received"], "{layout}: every signal arrives");
    }
    let pairs = r["pairs"].as_array().unwrap();
    assert_eq!(
        pairs.len(),
        9,
        "every ordered region pair, same-region included"
    );
    for p in pairs {
        let delay = p["one_way_delay_ms"].as_f64().unwrap();
        for layout in ["federated", "central"] {
            let sig = &p["signal"][layout];
            assert!(sig["samples"].as_u64().unwrap() > 0, "{p}");
            assert!(sig["p99_ms"].as_f64().unwrap() >= sig["p50_ms"].as_f64().unwrap());
            assert!(p["join_seen"][layout]["p50_ms"].is_number(), "{p}");
        }
        let fed = p["signal"]["federated"]["p50_ms"].as_f64().unwrap();
        if p["from"] == p["to"] {
            // Within a region a signal never crosses a delayed link (20 ms is the smallest;
            // delays this large keep the check meaningful on a busy 2-core machine).
            assert!(fed < 20.0, "same-region signal took {fed} ms: {p}");
        } else {
            // Across regions it does, exactly once each way it goes.
            assert!(
                fed >= delay,
                "cross-region signal faster than its link: {p}"
            );
        }
        assert!(p["signal"]["meets_target"].is_boolean());
    }
    for j in r["joins"].as_array().unwrap() {
        assert!(j["federated"]["samples"].as_u64().unwrap() > 0, "{j}");
        assert!(j["central"]["p99_ms"].is_number(), "{j}");
    }
    assert!(r["targets"]["same_region_met"].is_boolean());
    assert!(r["targets"]["cross_region_met"].is_boolean());

    // Region-homed (the default layout): join latency by where the room is homed, each
    // joining region against each other home, and the partition run.
    assert_eq!(r["layout"], "homed");
    let rows = r["homing"]["by_region"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        for kind in ["create", "local"] {
            assert_eq!(row[kind]["samples"], 2, "{row}");
        }
        let others = row["homed_elsewhere"].as_object().unwrap();
        assert_eq!(others.len(), 2, "{row}");
        for (home, v) in others {
            assert_eq!(v["samples"], 2, "{home}: {row}");
            // A room homed elsewhere costs at least the round trip to its home.
            let rtt = v["target_p99_ms"].as_f64().unwrap() - 10.0;
            assert!(v["p50_ms"].as_f64().unwrap() >= rtt, "{home}: {row}");
        }
    }
    let p = &r["partition"];
    assert_eq!(p["region"], "ap");
    assert!(p["joins_per_second_before"].as_f64().unwrap() > 0.0, "{p}");
    assert!(p["joins_per_second_during"].as_f64().unwrap() > 0.0, "{p}");
    assert!(p["meets_target"].is_boolean());
}
