//! Logs and traces of both binaries: the one global `tracing` subscriber (logs as text or
//! JSON lines on stderr, and, with `--otlp-endpoint`, spans exported over OTLP/gRPC), and the
//! W3C trace context (`traceparent`) carried between processes: in gRPC metadata for joins
//! and leaves (edge → replica → leader), and in a field of each relayed signal through the
//! gateways (the signal travels on long-lived streams, where per-call metadata cannot follow
//! it).
//!
//! Off by default, and then free: the traced paths ask [`enabled`] (one relaxed load) before
//! they make a span, and a signal's `traceparent` stays an empty string, so no signal
//! allocates for tracing. Only spans of target [`TARGET`] are exported, never the libraries'.
//!
//! Imports nothing of the crate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The target of every span that is exported: the join path and the signal path.
pub const TARGET: &str = "heliograph::trace";
/// The W3C header (and gRPC metadata key) of the trace context.
pub const TRACEPARENT: &str = "traceparent";
/// How long the exporter gets to send what it holds when the process stops.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported. The traced paths make no span, and carry no trace context,
/// when this is false.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields, spans).
    Json,
}

/// What [`init`] sets up.
pub struct Settings<'a> {
    /// `service.name` of the exported spans: `heliograph-edge` or `heliograph-coordinator`.
    pub service: &'static str,
    /// `service.instance.id`: the edge id or the replica's node id (empty: none).
    pub instance: String,
    /// The process's region (`heliograph.region`).
    pub region: String,
    /// An OTLP/gRPC receiver (`http://collector:4317`); `None`: no traces.
    pub otlp_endpoint: Option<&'a str>,
    pub log_format: LogFormat,
    /// Which log lines are written (`info`, `heliograph_edge=debug`, …).
    pub filter: EnvFilter,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("cannot install the log subscriber: {0}")]
    Install(#[from] tracing_subscriber::util::TryInitError),
}

/// An `--otlp-endpoint` that cannot be a gRPC receiver's address.
#[derive(Debug, thiserror::Error)]
#[error(
    "--otlp-endpoint must be an http:// or https:// URL (e.g. http://otel-collector:4317), not `{0}`"
)]
pub struct EndpointError(String);

/// Checks `--otlp-endpoint` before anything starts.
pub fn check_endpoint(endpoint: &str) -> Result<(), EndpointError> {
    let scheme_ok = endpoint.starts_with("http://") || endpoint.starts_with("https://");
    let parses = endpoint
        .parse::<tonic::codegen::http::Uri>()
        .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()));
    if scheme_ok && parses {
        Ok(())
    } else {
        Err(EndpointError(endpoint.to_owned()))
    }
}

/// The exporter, if any; [`Telemetry::shutdown`] sends what it still holds.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// [`init`] within `runtime`: the exporter's gRPC channel is spawned on it.
pub fn init_on(
    runtime: &tokio::runtime::Runtime,
    settings: Settings<'_>,
) -> Result<Telemetry, TelemetryError> {
    let _entered = runtime.enter();
    init(settings)
}

/// Installs the global subscriber. With an OTLP endpoint it must run inside a Tokio runtime
/// (the exporter's gRPC channel is spawned there); spans are batched and sent by the SDK's
/// own thread (`OTEL_BSP_SCHEDULE_DELAY` and the other `OTEL_BSP_*` variables tune it).
pub fn init(settings: Settings<'_>) -> Result<Telemetry, TelemetryError> {
    let logs = match settings.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(settings.filter);
    let provider = match settings.otlp_endpoint {
        Some(endpoint) => Some(provider(
            endpoint,
            settings.service,
            &settings.instance,
            &settings.region,
        )?),
        None => None,
    };
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(settings.service))
            .with_filter(Targets::new().with_target(TARGET, tracing::Level::TRACE))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()?;
    ENABLED.store(provider.is_some(), Ordering::Relaxed);
    Ok(Telemetry { provider })
}

fn provider(
    endpoint: &str,
    service: &'static str,
    instance: &str,
    region: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    let mut resource = Resource::builder()
        .with_service_name(service)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attribute(KeyValue::new("heliograph.region", region.to_owned()));
    if !instance.is_empty() {
        resource =
            resource.with_attribute(KeyValue::new("service.instance.id", instance.to_owned()));
    }
    Ok(SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build())
}

impl Telemetry {
    /// Sends the spans still batched and stops the exporter (within [`FLUSH_DEADLINE`]). It
    /// blocks a thread of its own: the export needs the runtime this is awaited on.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        ENABLED.store(false, Ordering::Relaxed);
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_DEADLINE))
                .await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "the trace exporter did not flush");
        }
    }
}

/// The W3C `traceparent` of `span`; empty when tracing is off or the span is disabled (an
/// empty string does not allocate).
pub fn traceparent(span: &Span) -> String {
    if !enabled() || span.is_none() {
        return String::new();
    }
    let mut carrier = Carrier::default();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.0.unwrap_or_default()
}

/// Makes the trace context `traceparent` (from another process) the parent of `span`;
/// nothing when it is empty or unreadable.
pub fn set_parent(span: &Span, traceparent: &str) {
    if traceparent.is_empty() || span.is_none() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Carrier(Some(traceparent.to_owned())));
    if let Err(e) = span.set_parent(parent) {
        tracing::debug!(error = ?e, "a trace context could not be set as parent");
    }
}

/// Puts the trace context of `span` into a gRPC call's metadata.
pub fn inject(span: &Span, metadata: &mut tonic::metadata::MetadataMap) {
    let value = traceparent(span);
    if value.is_empty() {
        return;
    }
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(value) {
        metadata.insert(TRACEPARENT, v);
    }
}

/// The trace context a gRPC call carried in its metadata (empty: none).
pub fn extract(metadata: &tonic::metadata::MetadataMap) -> &str {
    metadata
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The one header the W3C propagator reads and writes.
#[derive(Default)]
struct Carrier(Option<String>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0.as_deref()).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// Whether `traceparent` is a readable W3C trace context.
pub fn is_valid(traceparent: &str) -> bool {
    let cx: Context = TraceContextPropagator::new().extract(&Carrier(Some(traceparent.to_owned())));
    opentelemetry::trace::TraceContextExt::span(&cx)
        .span_context()
        .is_valid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_tracing_nothing_is_carried() {
        assert!(!enabled());
        let span = tracing::info_span!(target: TARGET, "x");
        assert_eq!(traceparent(&span), "");
        let mut md = tonic::metadata::MetadataMap::new();
        inject(&span, &mut md);
        assert_eq!(extract(&md), "");
    }

    #[test]
    fn an_endpoint_is_an_http_url() {
        assert!(check_endpoint("http://127.0.0.1:4317").is_ok());
        assert!(check_endpoint("https://otel-collector.observability:4317").is_ok());
        for bad in ["127.0.0.1:4317", "grpc://x:1", "http://", "not a url"] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_w3c_traceparent_is_read() {
        assert!(is_valid(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid("garbage"));
        assert!(!is_valid(""));
    }
}
