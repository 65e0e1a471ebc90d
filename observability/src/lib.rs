//! Telemetry for every eso binary: logs, traces, metrics, and trace-context
//! propagation, set up in one call so the orchestrator and the participants
//! produce one distributed trace per saga and the same log and metric shapes.
//!
//! A binary calls [`init`] first thing inside its Tokio runtime, keeps the
//! returned [`Telemetry`] alive, serves [`Telemetry::render_metrics`] at
//! `/metrics`, and calls [`Telemetry::shutdown`] last so queued spans reach
//! the collector. Spans are plain `tracing` spans at INFO level named with
//! OpenTelemetry semantic conventions (`otel.name`, `otel.kind`,
//! `messaging.system`, …); the [`propagation`] functions carry their context
//! across NATS, HTTP, and the event store.
//!
//! The subscriber stack is:
//! - the tracing-opentelemetry layer, filtered to INFO and above regardless of
//!   `RUST_LOG` (so log levels never cut a trace apart);
//! - the fmt layer (text, or JSON lines with `LOG_FORMAT=json`) behind the
//!   `RUST_LOG` filter (default `info`), with the trace id on each line.
//!
//! Configuration is the standard OpenTelemetry environment (see
//! [`TelemetryConfig`]). Without `OTEL_EXPORTER_OTLP_ENDPOINT` nothing is
//! exported, but spans still get real trace ids. Test support (an in-process
//! OTLP receiver) is in `testing`, behind the `test-receiver` feature.

mod config;
mod logging;
mod metrics;
pub mod propagation;
#[cfg(test)]
mod test_support;
#[cfg(feature = "test-receiver")]
pub mod testing;
mod traces;

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;

pub use config::{LogFormat, SamplerConfig, TelemetryConfig};

/// Upper bound on how long [`Telemetry::shutdown`] waits for the last spans.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Installed once per binary at start; keep it alive; call shutdown() at exit.
///
/// Dropping it does not shut anything down (the subscriber is global and
/// outlives it); only [`Telemetry::shutdown`] flushes spans.
///
/// Cloning is cheap (shared handles), e.g. to put it in the axum state that
/// serves `/metrics`.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// `None` when this call did not install the global subscriber (it was
    /// already set), so there is nothing of ours to flush.
    provider: Option<SdkTracerProvider>,
    metrics: PrometheusHandle,
    config: TelemetryConfig,
}

impl Telemetry {
    /// Flushes spans (batch processor) and shuts the tracer provider down. Idempotent. Must not hang (bounded, e.g. 5 s).
    ///
    /// Spans ended after this are dropped; logs and metrics keep working.
    pub fn shutdown(&self) {
        if let Some(provider) = &self.provider {
            traces::shutdown_provider(provider, SHUTDOWN_TIMEOUT);
        }
    }

    /// Prometheus text exposition of every metric recorded through the `metrics` crate facade.
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    /// The effective configuration, for the binary's first log line.
    pub fn config(&self) -> &TelemetryConfig {
        &self.config
    }
}

/// `default_service_name` e.g. "eso-orchestrator"; OTEL_SERVICE_NAME overrides it.
///
/// Reads `RUST_LOG` (default "info"), `LOG_FORMAT` ("json" = JSON lines,
/// anything else = human-readable), `OTEL_EXPORTER_OTLP_ENDPOINT` (unset or
/// empty = no exporter), `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`,
/// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`; see [`TelemetryConfig`].
/// Sets the global W3C TraceContext propagator and the global `metrics`
/// recorder.
///
/// Safe to call more than once per process (tests do): if a global
/// subscriber is already installed, it is kept and the returned `Telemetry`
/// only renders metrics.
///
/// # Errors
/// When an OTLP endpoint is configured but this is not called inside a Tokio
/// runtime, or the endpoint is not a valid URI.
pub fn init(default_service_name: &'static str) -> anyhow::Result<Telemetry> {
    init_with_config(TelemetryConfig::from_env(default_service_name))
}

/// [`init`] with an explicit configuration instead of the environment.
///
/// # Errors
/// As [`init`].
pub fn init_with_config(config: TelemetryConfig) -> anyhow::Result<Telemetry> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = install_subscriber(&config)?;
    Ok(Telemetry { provider, metrics: metrics::handle(), config })
}

/// Installs the global subscriber; `None` if one was already installed.
fn install_subscriber(config: &TelemetryConfig) -> anyhow::Result<Option<SdkTracerProvider>> {
    if tracing::dispatcher::has_been_set() {
        tracing::debug!("a global tracing subscriber is already installed; keeping it");
        return Ok(None);
    }
    let provider = traces::tracer_provider(config)?;
    let (filter, filter_warning) = logging::env_filter(&config.log_filter);
    let subscriber = tracing_subscriber::registry().with(traces::layer(&provider)).with(logging::layer(config, filter, std::io::stdout, logging::use_ansi()));
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        // Lost a race with another init: that one's provider is in charge.
        traces::shutdown_provider(&provider, SHUTDOWN_TIMEOUT);
        return Ok(None);
    }
    opentelemetry::global::set_tracer_provider(provider.clone());
    for warning in filter_warning.iter().chain(&config.warnings) {
        tracing::warn!("{warning}");
    }
    Ok(Some(provider))
}
