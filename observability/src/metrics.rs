//! Prometheus metrics behind the `metrics` crate facade.
//!
//! Code everywhere records with `metrics::counter!`/`gauge!`/`histogram!`;
//! this module installs the process-wide recorder once and keeps its handle,
//! so every `Telemetry` (tests create many in one process) renders the same
//! registry. There is no HTTP listener here: the orchestrator's axum app serves
//! `/metrics` by calling `Telemetry::render_metrics`, on its own port, behind
//! its own middleware.
//!
//! Histograms are rendered as Prometheus histograms (fixed buckets, in
//! seconds), not summaries, because several replicas run behind one
//! Prometheus and only histogram buckets can be summed across them. Record
//! durations in seconds (`histogram!("x_duration_seconds").record(d.as_secs_f64())`).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Bucket bounds in seconds: 1 ms to 10 s covers an HTTP request, an append,
/// and a NATS round trip; anything slower is a timeout anyway.
const BUCKETS_SECONDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// How often queued histogram samples are folded in when nobody scrapes
/// (rendering does it too); this bounds their memory.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The handle of the process-wide recorder, installing it on first call.
///
/// If another recorder was installed first (not by us), the facade feeds that
/// one and our handle renders an empty registry; we warn instead of failing.
pub(crate) fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new().set_buckets(BUCKETS_SECONDS) {
                Ok(builder) => builder,
                // Only fails for an empty list, which ours is not.
                Err(_) => PrometheusBuilder::new(),
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if let Err(error) = ::metrics::set_global_recorder(recorder) {
                tracing::warn!(%error, "a metrics recorder was already installed; /metrics will not show its data");
            }
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        }
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "could not start the metrics upkeep thread; histograms are folded in on scrape only");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_and_histograms_render_as_prometheus_text() {
        let handle = super::handle();
        ::metrics::counter!("eso_test_events_total", "event_type" => "order_created").increment(3);
        ::metrics::histogram!("eso_test_step_duration_seconds").record(0.003);
        let text = handle.render();
        assert!(text.contains("eso_test_events_total{event_type=\"order_created\"} 3"), "{text}");
        assert!(text.contains("eso_test_step_duration_seconds_bucket{le=\"0.005\"} 1"), "{text}");
        // A second handle sees the same registry.
        assert!(super::handle().render().contains("eso_test_events_total"));
    }
}
