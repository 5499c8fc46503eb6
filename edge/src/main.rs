//! `heliograph-edge`: load config (nothing bound yet) → start → wait for SIGTERM/SIGINT →
//! shut down within the grace period.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use heliograph_edge::config::{Args, Config};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// The allocator: a signaling edge allocates and frees many small frames per message, from
/// every worker thread; mimalloc does that with less CPU and less fragmentation than the
/// system allocator (measured: docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a configuration that cannot work (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;
const EXIT_START: u8 = 1;

/// Histogram buckets for latencies, in seconds (50 µs to 10 s).
const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

fn main() -> ExitCode {
    let config = match Args::parse().validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("heliograph-edge: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing(&config.log_filter());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("heliograph-edge: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_START);
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let signalled = match shutdown_signal() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("heliograph-edge: cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_START);
        }
    };
    let prometheus = match install_metrics() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("heliograph-edge: cannot install the metrics recorder: {e}");
            return ExitCode::from(EXIT_START);
        }
    };
    let grace = config.shutdown_grace;
    let shutdown = CancellationToken::new();
    let running = match heliograph_edge::start(config, Some(prometheus), shutdown.clone()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("heliograph-edge: {e}");
            return ExitCode::from(EXIT_START);
        }
    };
    // One machine-readable line on stdout: launchers and tests read the bound addresses here.
    println!(
        "{}",
        serde_json::json!({
            "listening": running.http_addr.to_string(),
            "metrics": running.metrics_addr.map_or(running.http_addr, |a| a).to_string(),
        })
    );
    tracing::info!(
        "heliograph-edge listening on http://{0} (WebSocket ws://{0}/ws)",
        running.http_addr
    );
    signalled.await;
    shutdown.cancel();
    // The edge bounds its own shutdown by the grace period; this is the backstop.
    match tokio::time::timeout(grace + Duration::from_secs(2), running.finished).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => {
            tracing::error!("shutdown overran the grace period; exiting anyway");
            ExitCode::from(EXIT_START)
        }
    }
}

fn install_metrics() -> Result<PrometheusHandle, Box<dyn std::error::Error>> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS_SECONDS)?
        .install_recorder()?;
    Ok(handle)
}

/// Installs the SIGTERM/SIGINT handlers at once (before anything is announced as listening, so
/// that an early SIGTERM still drains instead of killing the process) and resolves on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
