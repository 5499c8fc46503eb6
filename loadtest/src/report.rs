//! `report`: result files → `report.md` (tables per scenario) and SVG charts: latency
//! percentiles per run (`latency.svg`) and relay throughput over time (`throughput.svg`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use serde_json::Value;

use crate::output::RunFile;

/// One measured run as shown in the report: a file, or one side of a vs-reference file.
struct Row {
    n: usize,
    label: String,
    scenario: String,
    settings: Value,
    results: Value,
}

fn collect(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, RunFile)>> {
    let mut paths = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("reading {}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            found.sort();
            paths.extend(found);
        } else {
            paths.push(input.clone());
        }
    }
    let mut files = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        match serde_json::from_str::<RunFile>(&text) {
            Ok(f) => files.push((path, f)),
            Err(e) => eprintln!(
                "report: skipping {}: not a result file ({e})",
                path.display()
            ),
        }
    }
    Ok(files)
}

fn rows(files: &[(PathBuf, RunFile)]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (path, file) in files {
        let stem = path
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        if file.scenario == "relay-vs-reference" {
            for side in ["edge", "reference"] {
                rows.push(Row {
                    n: rows.len() + 1,
                    label: format!("{stem} ({side})"),
                    scenario: "relay".to_owned(),
                    settings: file.settings.get(side).cloned().unwrap_or_default(),
                    results: file.results.get(side).cloned().unwrap_or_default(),
                });
            }
        } else {
            rows.push(Row {
                n: rows.len() + 1,
                label: stem,
                scenario: file.scenario.clone(),
                settings: file.settings.clone(),
                results: file.results.clone(),
            });
        }
    }
    rows
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

fn cell(v: &Value, path: &[&str], digits: usize) -> String {
    num(v, path).map_or_else(|| "–".to_owned(), |x| format!("{x:.digits$}"))
}

pub fn render(inputs: &[PathBuf], out_dir: &Path) -> Result<()> {
    let files = collect(inputs)?;
    if files.is_empty() {
        bail!("no result files found in {inputs:?}");
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let rows = rows(&files);
    let md = markdown(&files, &rows)?;
    let md_path = out_dir.join("report.md");
    std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    latency_chart(&rows, &out_dir.join("latency.svg"))?;
    throughput_chart(&rows, &out_dir.join("throughput.svg"))?;
    println!(
        "wrote {}, latency.svg and throughput.svg in {}",
        md_path.display(),
        out_dir.display()
    );
    Ok(())
}

fn markdown(files: &[(PathBuf, RunFile)], rows: &[Row]) -> Result<String> {
    let mut md = String::from("# Heliograph load test report\n\n");
    writeln!(md, "| file | scenario | started at | machine | runs |")?;
    writeln!(md, "|---|---|---|---|---|")?;
    for (path, f) in files {
        writeln!(
            md,
            "| {} | {} | {} | {} cores, {}, Linux {} | {} |",
            path.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            f.scenario,
            f.started_at,
            f.machine.cores,
            f.machine.cpu_model,
            f.machine.kernel,
            f.runs.len().max(1)
        )?;
    }
    let relay: Vec<&Row> = rows.iter().filter(|r| r.scenario == "relay").collect();
    if !relay.is_empty() {
        md.push_str("\n## Relay\n\n");
        md.push_str(
            "| # | run | clients | window | round trips/s | messages/s | RTT p50 µs | p99 µs | \
             p99.9 µs | server CPU µs/msg | generator CPU % | errors | sent | received |\n",
        );
        md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &relay {
            let x = &r.results;
            writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.n,
                r.label,
                cell(&r.settings, &["clients"], 0),
                cell(&r.settings, &["window"], 0),
                cell(x, &["round_trips_per_sec"], 0),
                cell(x, &["messages_per_sec"], 0),
                cell(x, &["rtt", "p50_us"], 0),
                cell(x, &["rtt", "p99_us"], 0),
                cell(x, &["rtt", "p999_us"], 0),
                cell(x, &["server_cpu_us_per_message"], 2),
                cell(x, &["generator_cpu_percent_of_core"], 0),
                cell(x, &["errors"], 0),
                cell(x, &["sent"], 0),
                cell(x, &["received"], 0),
            )?;
        }
    }
    let ratios: Vec<_> = files
        .iter()
        .filter(|(_, f)| f.scenario == "relay-vs-reference")
        .collect();
    if !ratios.is_empty() {
        md.push_str("\n## Edge against the reference forwarder (edge / reference)\n\n");
        md.push_str("| file | throughput | CPU per message | p99 RTT |\n|---|---|---|---|\n");
        for (path, f) in ratios {
            writeln!(
                md,
                "| {} | {} | {} | {} |",
                path.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                cell(&f.results, &["ratios", "throughput"], 3),
                cell(&f.results, &["ratios", "cpu_per_message"], 3),
                cell(&f.results, &["ratios", "p99"], 3),
            )?;
        }
    }
    let idle: Vec<&Row> = rows.iter().filter(|r| r.scenario == "idle").collect();
    if !idle.is_empty() {
        md.push_str("\n## Idle connections\n\n");
        md.push_str(
            "| # | run | connected | failed | processes | connect s | conn/s | server RSS \
             before MiB | after MiB | bytes/connection |\n|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in &idle {
            let x = &r.results;
            let mib = |k: &str| {
                num(x, &[k]).map_or_else(|| "–".to_owned(), |b| format!("{:.1}", b / 1048576.0))
            };
            writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.n,
                r.label,
                cell(x, &["connected"], 0),
                cell(x, &["failed"], 0),
                cell(x, &["processes"], 0),
                cell(x, &["connect_secs"], 2),
                cell(x, &["connections_per_sec"], 0),
                mib("server_rss_before_bytes"),
                mib("server_rss_after_bytes"),
                cell(x, &["server_bytes_per_connection"], 0),
            )?;
        }
    }
    let joins: Vec<&Row> = rows.iter().filter(|r| r.scenario == "joins").collect();
    if !joins.is_empty() {
        md.push_str("\n## Join/leave storm\n\n");
        md.push_str(
            "| # | run | workers | joins/s | join p50 µs | p99 µs | p99.9 µs | server CPU \
             µs/join | errors |\n|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in &joins {
            let x = &r.results;
            writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.n,
                r.label,
                cell(x, &["workers"], 0),
                cell(x, &["joins_per_sec"], 0),
                cell(x, &["join_latency", "p50_us"], 0),
                cell(x, &["join_latency", "p99_us"], 0),
                cell(x, &["join_latency", "p999_us"], 0),
                cell(x, &["server_cpu_us_per_join"], 1),
                cell(x, &["errors"], 0),
            )?;
        }
    }
    md.push_str(
        "\n## Charts\n\n![Latency percentiles per run (relay RTT, join latency)](latency.svg)\n\n\
         ![Relay round trips per second over the measured window](throughput.svg)\n",
    );
    Ok(md)
}

/// The latency figure of a row: relay round trip or join latency.
fn latency(row: &Row, key: &str) -> Option<f64> {
    match row.scenario.as_str() {
        "relay" => num(&row.results, &["rtt", key]),
        "joins" => num(&row.results, &["join_latency", key]),
        _ => None,
    }
}

fn latency_chart(rows: &[Row], path: &Path) -> Result<()> {
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| latency(r, "p50_us").is_some())
        .collect();
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let series: [(&str, &str, RGBColor); 3] = [
        ("p50", "p50_us", BLUE),
        ("p99", "p99_us", RGBColor(230, 120, 0)),
        ("p99.9", "p999_us", RED),
    ];
    let values = rows
        .iter()
        .flat_map(|r| series.iter().filter_map(|(_, k, _)| latency(r, k)));
    let max = values.fold(10.0f64, f64::max) * 2.0;
    let n = rows.len().max(1);
    let labels: Vec<String> = rows.iter().map(|r| format!("#{}", r.n)).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Latency percentiles per run (relay RTT, join latency)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (1.0f64..max).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(n.min(30))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("run (see report.md)")
        .y_desc("latency, µs (log)")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (name, key, color) in series {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| latency(r, key).map(|v| (i as f64, v.max(1.0))))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)).point_size(4))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn throughput_chart(rows: &[Row], path: &Path) -> Result<()> {
    let runs: Vec<(&Row, Vec<f64>)> = rows
        .iter()
        .filter(|r| r.scenario == "relay")
        .map(|r| {
            let samples = r
                .results
                .get("round_trips_per_second_samples")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            (r, samples)
        })
        .collect();
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let seconds = runs.iter().map(|(_, s)| s.len()).max().unwrap_or(0).max(1);
    let max = runs
        .iter()
        .flat_map(|(_, s)| s.iter().copied())
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Relay round trips per second over the measured window",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..seconds as f64, 0f64..max)?;
    chart
        .configure_mesh()
        .x_desc("second of the measured window")
        .y_desc("round trips / s")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (i, (row, samples)) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = samples
            .iter()
            .enumerate()
            .map(|(s, v)| (s as f64 + 1.0, *v))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)).point_size(3))?
            .label(format!("#{} {}", row.n, row.label))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    if !runs.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
