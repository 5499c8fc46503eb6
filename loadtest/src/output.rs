//! Result files: one JSON document per invocation, medians over repeats, and the human summary.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::machine::Machine;

/// What every run writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunFile {
    pub scenario: String,
    pub settings: Value,
    pub machine: Machine,
    /// The median of every figure over `runs` (the run itself when there is one).
    pub results: Value,
    /// Each repeat's figures, in order.
    #[serde(default)]
    pub runs: Vec<Value>,
    pub started_at: String,
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `loadtest-results/<scenario>-<timestamp>.json` unless `--out` names a file.
pub fn out_path(out: Option<&Path>, scenario: &str) -> PathBuf {
    match out {
        Some(p) => p.to_owned(),
        None => PathBuf::from("loadtest-results").join(format!(
            "{scenario}-{}.json",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        )),
    }
}

pub fn write(path: &Path, file: &RunFile) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(file)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The median of each numeric figure over the runs, recursing into objects and into arrays of
/// objects of the same length in every run (rows such as one per region, in the same order).
/// Booleans are true when any run's is; other values (strings, arrays of numbers such as
/// samples) are taken from the first run.
pub fn median(runs: &[Value]) -> Value {
    let Some(first) = runs.first() else {
        return Value::Null;
    };
    if let Value::Object(obj) = first {
        let mut out = Map::new();
        for key in obj.keys() {
            let column: Vec<Value> = runs
                .iter()
                .map(|r| r.get(key).cloned().unwrap_or(Value::Null))
                .collect();
            out.insert(key.clone(), median(&column));
        }
        return Value::Object(out);
    }
    if let Value::Array(rows) = first
        && rows.iter().all(Value::is_object)
        && runs
            .iter()
            .all(|r| r.as_array().is_some_and(|a| a.len() == rows.len()))
    {
        return Value::Array(
            (0..rows.len())
                .map(|i| median(&runs.iter().map(|r| r[i].clone()).collect::<Vec<_>>()))
                .collect(),
        );
    }
    if runs.iter().all(Value::is_boolean) {
        return Value::Bool(runs.iter().any(|v| v.as_bool() == Some(true)));
    }
    let mut nums: Vec<f64> = runs.iter().filter_map(Value::as_f64).collect();
    if nums.len() != runs.len() {
        return first.clone();
    }
    nums.sort_by(f64::total_cmp);
    let mid = nums.len() / 2;
    let m = if nums.len() % 2 == 1 {
        nums[mid]
    } else {
        (nums[mid - 1] + nums[mid]) / 2.0
    };
    if runs.iter().all(|v| v.is_u64()) && m.fract() == 0.0 {
        Value::from(m as u64)
    } else {
        Value::from(m)
    }
}

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

fn show(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".to_owned(), |x| format!("{x:.digits$}"))
}

/// A few lines a person reads after a run.
pub fn summary(scenario: &str, results: &Value) -> String {
    match scenario {
        "relay" => relay_summary(results),
        "regions" => crate::scenarios::regions::summary(results),
        "failover" => failover_summary(results),
        "chaos" => crate::scenarios::chaos::summary(results),
        "registry-scale" => crate::scenarios::registry_scale::summary(results),
        "idle" => format!(
            "idle: {} of {} connected in {} s ({} conn/s), {} failed, {} closed early\n\
             server RSS {} → {} MiB, {} bytes per connection",
            show(f(results, &["connected"]), 0),
            show(f(results, &["clients"]), 0),
            show(f(results, &["connect_secs"]), 2),
            show(f(results, &["connections_per_sec"]), 0),
            show(f(results, &["failed"]), 0),
            show(f(results, &["unexpected_closes"]), 0),
            show(
                f(results, &["server_rss_before_bytes"]).map(|b| b / 1048576.0),
                1
            ),
            show(
                f(results, &["server_rss_after_bytes"]).map(|b| b / 1048576.0),
                1
            ),
            show(f(results, &["server_bytes_per_connection"]), 0),
        ),
        "joins" => format!(
            "joins: {} joins/s ({} joins, {} errors); join latency p50 {} µs, p99 {} µs, \
             p99.9 {} µs; server CPU {} µs/join",
            show(f(results, &["joins_per_sec"]), 0),
            show(f(results, &["joins"]), 0),
            show(f(results, &["errors"]), 0),
            show(f(results, &["join_latency", "p50_us"]), 0),
            show(f(results, &["join_latency", "p99_us"]), 0),
            show(f(results, &["join_latency", "p999_us"]), 0),
            show(f(results, &["server_cpu_us_per_join"]), 1),
        ),
        "storm" => storm_summary(results),
        "storm-vs-reference" => {
            let edge = results.get("edge").cloned().unwrap_or_default();
            let reference = results.get("reference").cloned().unwrap_or_default();
            format!(
                "edge:      {}\nreference: {}\nratios (edge / reference): connection rate {}, \
                 CPU per connection {}, p99 to welcome {}, p99 to joined {}",
                storm_summary(&edge).replace('\n', "\n           "),
                storm_summary(&reference).replace('\n', "\n           "),
                show(f(results, &["ratios", "connection_rate"]), 3),
                show(f(results, &["ratios", "cpu_per_connection"]), 3),
                show(f(results, &["ratios", "welcome_p99"]), 3),
                show(f(results, &["ratios", "joined_p99"]), 3),
            )
        }
        "relay-vs-reference" => {
            let edge = results.get("edge").cloned().unwrap_or_default();
            let reference = results.get("reference").cloned().unwrap_or_default();
            format!(
                "edge:      {}\nreference: {}\nratios (edge / reference): throughput {}, \
                 CPU per message {}, p99 {}",
                relay_summary(&edge).replace('\n', "\n           "),
                relay_summary(&reference).replace('\n', "\n           "),
                show(f(results, &["ratios", "throughput"]), 3),
                show(f(results, &["ratios", "cpu_per_message"]), 3),
                show(f(results, &["ratios", "p99"]), 3),
            )
        }
        _ => serde_json::to_string_pretty(results).unwrap_or_default(),
    }
}

fn failover_summary(r: &Value) -> String {
    let mode = r.get("mode").and_then(Value::as_str).unwrap_or("?");
    let since = if mode == "kill" {
        "the kill"
    } else {
        "their socket's close"
    };
    let in_flight = if mode == "kill" {
        format!(
            ", {} in flight at the kill ({} of them written after it)",
            show(f(r, &["lost_in_flight_at_kill"]), 0),
            show(f(r, &["in_flight_written_after_kill"]), 0),
        )
    } else {
        format!(
            " ({} of them sent after a reconnect notice)",
            show(f(r, &["lost_sent_after_reconnect_notice"]), 0),
        )
    };
    format!(
        "failover ({mode}): {} of {} clients resumed; 50% in {} ms, 99% in {} ms, 100% in {} ms \
         ({} failed, {} attempts, {} frames replayed)\n  socket loss to resumed: p50 {} ms, \
         p99 {} ms, max {} ms\n  signals: {} sent, {} received, {} \
         duplicates, {} reordered, {} expired, {} refused, {} lost{in_flight}\n  generator CPU \
         {}% of a core; target (99% resumed within {} ms of {since}, 0 lost): {}",
        show(f(r, &["resumed"]), 0),
        show(f(r, &["clients"]), 0),
        show(f(r, &["resumed_p50_ms"]), 0),
        show(f(r, &["resumed_p99_ms"]), 0),
        show(f(r, &["resumed_max_ms"]), 0),
        show(f(r, &["failed"]), 0),
        show(f(r, &["resume_attempts"]), 0),
        show(f(r, &["replayed"]), 0),
        show(f(r, &["resume_latency_p50_ms"]), 0),
        show(f(r, &["resume_latency_p99_ms"]), 0),
        show(f(r, &["resume_latency_max_ms"]), 0),
        show(f(r, &["sent"]), 0),
        show(f(r, &["received"]), 0),
        show(f(r, &["duplicates"]), 0),
        show(f(r, &["reordered"]), 0),
        show(f(r, &["expired"]), 0),
        show(f(r, &["refused"]), 0),
        show(f(r, &["lost"]), 0),
        show(f(r, &["generator_cpu_percent_of_core"]), 0),
        show(f(r, &["target_p99_ms"]), 0),
        if r.get("target_met") == Some(&Value::Bool(true)) {
            "met"
        } else {
            "missed"
        },
    )
}

fn storm_summary(r: &Value) -> String {
    format!(
        "storm: {} of {} joined in {} s ({} conn/s), {} failed; to welcome p50 {} µs, p99 {} µs, \
         max {} µs; to joined p50 {} µs, p99 {} µs, max {} µs\n  server CPU {} µs/connection; \
         generator CPU {}% of a core",
        show(f(r, &["joined"]), 0),
        show(f(r, &["clients"]), 0),
        show(f(r, &["storm_secs"]), 2),
        show(f(r, &["connections_per_sec"]), 0),
        show(f(r, &["failed"]), 0),
        show(f(r, &["to_welcome", "p50_us"]), 0),
        show(f(r, &["to_welcome", "p99_us"]), 0),
        show(f(r, &["to_welcome", "max_us"]), 0),
        show(f(r, &["to_joined", "p50_us"]), 0),
        show(f(r, &["to_joined", "p99_us"]), 0),
        show(f(r, &["to_joined", "max_us"]), 0),
        show(f(r, &["server_cpu_us_per_connection"]), 1),
        show(f(r, &["generator_cpu_percent_of_core"]), 0),
    )
}

fn relay_summary(r: &Value) -> String {
    format!(
        "relay: {} round trips/s ({} msgs/s) over {} pairs; RTT p50 {} µs, p99 {} µs, \
         p99.9 {} µs\n  sent {} received {} errors {}; server CPU {} µs/message; \
         generator CPU {}% of a core",
        show(f(r, &["round_trips_per_sec"]), 0),
        show(f(r, &["messages_per_sec"]), 0),
        show(f(r, &["pairs"]), 0),
        show(f(r, &["rtt", "p50_us"]), 0),
        show(f(r, &["rtt", "p99_us"]), 0),
        show(f(r, &["rtt", "p999_us"]), 0),
        show(f(r, &["sent"]), 0),
        show(f(r, &["received"]), 0),
        show(f(r, &["errors"]), 0),
        show(f(r, &["server_cpu_us_per_message"]), 2),
        show(f(r, &["generator_cpu_percent_of_core"]), 0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn median_recurses_and_keeps_types() {
        let runs = vec![
            json!({"a": 1, "b": {"c": 10.0}, "ok": false, "s": [1]}),
            json!({"a": 3, "b": {"c": 30.0}, "ok": true, "s": [2]}),
            json!({"a": 2, "b": {"c": 20.0}, "ok": false, "s": [3]}),
        ];
        let m = median(&runs);
        assert_eq!(m["a"], json!(2));
        assert_eq!(m["b"]["c"], json!(20.0));
        assert_eq!(m["ok"], json!(true));
        assert_eq!(m["s"], json!([1]));
    }

    #[test]
    fn median_goes_into_rows_of_objects() {
        let runs = [
            json!({"rows": [{"p99": 5.1}, {"p99": 4.5}], "samples": [1, 2]}),
            json!({"rows": [{"p99": 4.0}, {"p99": 3.5}], "samples": [3, 4]}),
            json!({"rows": [{"p99": 4.1}, {"p99": 4.0}], "samples": [5, 6]}),
        ];
        let m = median(&runs);
        assert_eq!(m["rows"], json!([{"p99": 4.1}, {"p99": 4.0}]));
        assert_eq!(
            m["samples"],
            json!([1, 2]),
            "arrays of numbers: the first run's"
        );
    }

    #[test]
    fn median_of_even_count_averages() {
        let m = median(&[json!(1), json!(2)]);
        assert_eq!(m, json!(1.5));
    }
}
