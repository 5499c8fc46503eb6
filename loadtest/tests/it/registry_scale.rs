//! `heliograph-loadtest registry-scale` at a smoke size: the replica group it starts, filled
//! through the registry's gRPC API by synthetic edges; the report must carry every figure,
//! each within sane bounds (the targets themselves are for the full size, in release).
//!
//! Needs the workspace's binaries (`cargo build --workspace`).

use std::process::Command;
use std::time::Duration;

use heliograph_testkit::process;
use serde_json::Value;

use crate::LOADTEST;

fn num(r: &Value, path: &[&str]) -> f64 {
    path.iter()
        .try_fold(r, |v, k| v.get(k))
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path:?} is not a number: {r:#}"))
}

#[test]
fn registry_scale_smoke_reports_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("scale.json");
    let mut cmd = Command::new(LOADTEST);
    cmd.args([
        "registry-scale",
        "--members",
        "5000",
        "--rooms",
        "2500",
        "--samples",
        "200",
        "--concurrency",
        "64",
    ])
    .arg("--out")
    .arg(&out);
    let run = process::run(cmd, Duration::from_secs(120)).unwrap();
    let output =
        String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "registry-scale failed:\n{output}");
    assert!(output.contains("registry-scale: 5000 members"), "{output}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["scenario"], "registry-scale");
    let r = &v["results"];
    assert_eq!(num(r, &["members"]), 5000.0, "{r:#}");
    assert_eq!(num(r, &["fill_errors"]), 0.0, "{r:#}");
    assert_eq!(num(r, &["lease_renewal_failures"]), 0.0, "{r:#}");
    assert!(num(r, &["fill_joins_per_sec"]) > 0.0, "{r:#}");

    let replicas = r["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 3, "{r:#}");
    assert_eq!(replicas.iter().filter(|x| x["leader"] == true).count(), 1);
    for x in replicas {
        let (before, after) = (num(x, &["rss_before_bytes"]), num(x, &["rss_after_bytes"]));
        assert!(before > 1e6 && after >= before, "{x:#}");
        assert!(num(x, &["rss_after_snapshot_bytes"]) > 1e6, "{x:#}");
        // Far above the target at this size (allocator granularity), far below anything wrong.
        let per = num(x, &["bytes_per_member"]);
        assert!((0.0..100_000.0).contains(&per), "{x:#}");
    }
    assert!(num(r, &["max_bytes_per_member"]) >= 0.0);

    // 5,000 members are at least ~100 bytes each in the snapshot's JSON.
    assert!(num(r, &["snapshot", "bytes"]) > 500_000.0, "{r:#}");
    assert!(num(r, &["snapshot", "index"]) > 0.0, "{r:#}");
    assert!(num(r, &["snapshot", "build_ms"]) < 30_000.0, "{r:#}");

    let c = &r["catch_up"];
    assert_eq!(num(c, &["replica"]), 4.0);
    assert!(
        num(c, &["target_index"]) >= num(r, &["snapshot", "index"]),
        "{c:#}"
    );
    assert!((0.0..60.0).contains(&num(c, &["secs"])), "{c:#}");
    assert!(num(c, &["add_member_secs"]) > 0.0, "{c:#}");
    assert!(num(c, &["rss_bytes"]) > 1e6, "{c:#}");

    for series in ["join_empty", "join_full"] {
        assert_eq!(num(r, &[series, "samples"]), 200.0, "{r:#}");
        let (p50, p99) = (num(r, &[series, "p50_us"]), num(r, &[series, "p99_us"]));
        assert!(p50 > 0.0 && p50 <= p99 && p99 < 5e6, "{series}: {r:#}");
    }
    assert!(num(r, &["join_p99_ratio"]) > 0.0);
    for t in ["bytes_per_member", "catch_up", "join_p99"] {
        assert!(r["targets"][t].is_boolean(), "{r:#}");
    }
}
