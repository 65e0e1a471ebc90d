//! The OpenTelemetry side of tracing: resource, sampler, exporter, and the
//! `tracing` layer that turns `tracing` spans into OpenTelemetry spans.
//!
//! A tracer provider is always installed, even with no collector configured:
//! spans then get real W3C trace ids (so the API can hand a trace id to the
//! user and propagate it to participants) but have no processor, so nothing is
//! queued or sent and nothing slows down. With a collector, spans go through
//! the SDK's batch processor (its own thread; `OTEL_BSP_*` honoured) to the
//! OTLP/gRPC exporter.

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::registry::LookupSpan;

use crate::config::TelemetryConfig;

/// Instrumentation scope of every span eso creates through `tracing`.
const SCOPE: &str = "eso";

/// The resource describing this process: defaults we know cheaply, then
/// `OTEL_RESOURCE_ATTRIBUTES` on top, then the resolved `service.name` (which
/// already honours `OTEL_SERVICE_NAME` over the attributes, as the spec says).
pub(crate) fn resource(service_name: &str) -> Resource {
    let mut defaults = vec![
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("process.pid", i64::from(std::process::id())),
        KeyValue::new("process.runtime.name", "rust"),
    ];
    // Linux-only and one small read; in Kubernetes this is the pod name.
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            defaults.push(KeyValue::new("host.name", host.to_owned()));
        }
    }
    if let Some(exe) = std::env::current_exe().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())) {
        defaults.push(KeyValue::new("process.executable.name", exe));
    }
    Resource::builder_empty()
        .with_attributes(defaults)
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_detector(Box::new(EnvResourceDetector::new()))
        .with_service_name(service_name.to_owned())
        .build()
}

/// Builds the tracer provider described by `config`.
///
/// # Errors
/// With an OTLP endpoint configured, this must run inside a Tokio runtime (the
/// gRPC channel spawns its connection task on it); otherwise, or if the
/// endpoint is not a valid URI, it returns an error instead of panicking.
pub(crate) fn tracer_provider(config: &TelemetryConfig) -> anyhow::Result<SdkTracerProvider> {
    let builder = SdkTracerProvider::builder().with_sampler(config.sampler.to_sampler()).with_resource(resource(&config.service_name));
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(builder.build());
    };
    tokio::runtime::Handle::try_current().context("OTEL_EXPORTER_OTLP_ENDPOINT is set: observability::init must run inside a Tokio runtime")?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
        .with_context(|| format!("building the OTLP/gRPC span exporter for {endpoint}"))?;
    Ok(builder.with_batch_exporter(exporter).build())
}

/// The layer bridging `tracing` spans to `provider`.
///
/// It has its own filter, independent of `RUST_LOG`: every span and event at
/// INFO or above is exported, so quieting the logs never breaks a trace, and
/// the DEBUG/TRACE spans of hyper, h2 and tonic (including the exporter's own
/// requests) never become spans. Our crates create their spans at INFO.
pub(crate) fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + Send + Sync + 'static
where
    S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SCOPE))
        // Thread ids mean nothing for tasks that hop between Tokio workers.
        .with_threads(false)
        .with_filter(LevelFilter::INFO)
}

/// Flushes queued spans and shuts `provider` down, waiting at most `timeout`.
///
/// On a multi-threaded Tokio runtime the wait is wrapped in `block_in_place`,
/// so the worker we block hands its tasks over; the gRPC channel's connection
/// task must keep running for the flush to reach the collector. On a
/// current-thread runtime that task cannot run while we block, so the flush
/// gives up after `timeout`: call shutdown from a multi-threaded runtime (the
/// `#[tokio::main]` default) or after the runtime has finished other work.
pub(crate) fn shutdown_provider(provider: &SdkTracerProvider, timeout: Duration) {
    let run = || provider.shutdown_with_timeout(timeout);
    let on_multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    let result = if on_multi_thread { tokio::task::block_in_place(run) } else { run() };
    match result {
        Ok(()) | Err(OTelSdkError::AlreadyShutdown) => {}
        Err(error) => {
            tracing::warn!(%error, "flushing spans at shutdown failed; some spans were lost")
        }
    }
}

#[cfg(all(test, feature = "test-receiver"))]
mod tests {
    use std::time::Duration;

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::testing::OtlpReceiver;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_reach_an_otlp_receiver_with_parent_and_service_name() -> anyhow::Result<()> {
        let receiver = OtlpReceiver::start().await?;
        let endpoint = receiver.endpoint();
        let config = TelemetryConfig::from_lookup("eso-default", |key| match key {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(endpoint.clone()),
            "OTEL_SERVICE_NAME" => Some("eso-e2e".to_owned()),
            _ => None,
        });
        let provider = tracer_provider(&config)?;
        let subscriber = tracing_subscriber::registry().with(layer(&provider));
        tracing::subscriber::with_default(subscriber, || {
            let request = tracing::info_span!("request", otel.name = "POST /", otel.kind = "server", http.request.method = "POST", http.route = "/",);
            let _entered = request.enter();
            let command = tracing::info_span!(
                "command",
                otel.name = "eso.cmd.payment.process send",
                otel.kind = "client",
                messaging.system = "nats",
                saga.id = "saga-1",
            );
            command.in_scope(|| tracing::info!("sent"));
        });
        shutdown_provider(&provider, Duration::from_secs(5));
        // Idempotent, and quick the second time.
        shutdown_provider(&provider, Duration::from_secs(5));

        let spans = receiver.wait_for(|s| s.len() >= 2, Duration::from_secs(10)).await;
        let find = |name: &str| spans.iter().find(|s| s.name == name).cloned();
        let (Some(request), Some(command)) = (find("POST /"), find("eso.cmd.payment.process send")) else {
            panic!("expected both spans, got {spans:#?}");
        };
        assert_eq!(command.trace_id, request.trace_id);
        assert_eq!(command.parent_span_id.as_deref(), Some(request.span_id.as_str()));
        assert_eq!(request.parent_span_id, None);
        assert_eq!(request.trace_id.len(), 32);
        assert_eq!((request.kind.as_str(), command.kind.as_str()), ("server", "client"));
        assert_eq!(request.service_name, "eso-e2e");
        assert_eq!(request.attributes.get("http.request.method").map(String::as_str), Some("POST"));
        assert_eq!(command.attributes.get("saga.id").map(String::as_str), Some("saga-1"));
        assert_eq!(command.events, vec!["sent".to_owned()]);
        assert!(request.resource.contains_key("service.version"), "{:?}", request.resource);
        assert!(request.start_unix_nanos <= command.start_unix_nanos);
        assert!(command.end_unix_nanos <= request.end_unix_nanos);
        Ok(())
    }

    #[test]
    fn an_endpoint_outside_a_runtime_is_an_error_not_a_panic() {
        let config = TelemetryConfig::from_lookup("eso", |key| (key == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://127.0.0.1:4317".to_owned()));
        assert!(tracer_provider(&config).is_err());
    }
}
