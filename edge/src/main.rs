//! `heliograph-edge`: load config (flags > environment > `--config` file > defaults; nothing
//! bound yet) → start → wait for SIGTERM/SIGINT → shut down within the grace period.

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};
use heliograph_coordinator::config_file;
use heliograph_coordinator::telemetry;
use heliograph_edge::config::{Args, Config};
use tokio_util::sync::CancellationToken;

/// The allocator: a signaling edge allocates and frees many small frames per message, from
/// every worker thread; mimalloc does that with less CPU and less fragmentation than the
/// system allocator (measured: docs/BENCHMARKS.md). Its v2 line (the workspace's `features =
/// ["v2"]`): v3 gives freed pages back only on later allocator activity, and an idle edge kept
/// more memory per connection, by a varying amount. The `system-allocator` feature leaves
/// the system's, for heap profilers that trace malloc (`heaptrack`). A runtime thread about to
/// sleep gives back what it freed (see `runtime`).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: heliograph_edge_alloc::MiMalloc = heliograph_edge_alloc::MiMalloc;

/// Exit code for a configuration that cannot work (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;
const EXIT_START: u8 = 1;

fn main() -> ExitCode {
    let parsed = match config_file::parse(Args::command(), std::env::args_os().collect(), None) {
        Ok(p) => p,
        Err(config_file::FileError::Args(e)) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("heliograph-edge: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let args = match Args::from_arg_matches(&parsed.matches) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("heliograph-edge: {}", config_file::FileError::Args(e));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let print = args.print_config;
    let config = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("heliograph-edge: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if print {
        let cmd = Args::command();
        print!(
            "{}",
            config_file::render("heliograph-edge", &cmd, &parsed, &parsed.matches)
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match runtime(config.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("heliograph-edge: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_START);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(config.log_filter())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let settings = telemetry::Settings {
        service: "heliograph-edge",
        instance: config
            .edge_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        region: config.region.to_string(),
        otlp_endpoint: config.otlp_endpoint.as_deref(),
        log_format: config.log_format,
        filter,
    };
    let telemetry = telemetry::init_on(&runtime, settings);
    let telemetry = match telemetry {
        Ok(t) => t,
        Err(e) => {
            eprintln!("heliograph-edge: {e}");
            return ExitCode::from(EXIT_START);
        }
    };
    runtime.block_on(async {
        let code = run(config).await;
        telemetry.shutdown().await;
        code
    })
}

/// On one thread, a current-thread runtime: a multi-thread scheduler there only adds
/// cross-thread machinery, and its LIFO slot (a woken task runs next) lets pairs of sessions
/// that keep waking each other go ahead of all others. Measured: W=1 relay p99 3.8× the
/// reference's with it, 1.3× without (docs/BENCHMARKS.md).
///
/// Each runtime thread, when it is about to sleep, gives the memory it freed back to the
/// system (at most once a second): the allocator would otherwise keep it until the thread next
/// allocates, and an edge goes quiet right after its bursts (edge/alloc).
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    #[cfg(not(feature = "system-allocator"))]
    builder.on_thread_park(|| {
        if heliograph_edge_alloc::on_idle() {
            metrics::counter!(heliograph_edge::ALLOCATOR_COLLECTIONS).increment(1);
        }
    });
    builder.enable_all().build()
}

async fn run(config: Config) -> ExitCode {
    let signalled = match shutdown_signal() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("heliograph-edge: cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_START);
        }
    };
    let prometheus = match heliograph_coordinator::metrics::install_prometheus() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("heliograph-edge: cannot install the metrics recorder: {e}");
            return ExitCode::from(EXIT_START);
        }
    };
    heliograph_coordinator::metrics::describe_process("heliograph-edge");
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
