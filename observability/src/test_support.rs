//! Unit-test helpers: run code under a local (non-global) subscriber with the
//! same OpenTelemetry layer as production, and collect the finished spans.

use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::layer::SubscriberExt as _;

/// Collects exported spans in memory (the SDK's in-memory exporter needs a
/// feature that compiles metrics and logs too).
#[derive(Debug, Clone, Default)]
pub(crate) struct Collected(Arc<Mutex<Vec<SpanData>>>);

impl Collected {
    pub(crate) fn spans(&self) -> Vec<SpanData> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn named(&self, name: &str) -> SpanData {
        self.spans().into_iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no span named {name} in {:#?}", self.spans()))
    }
}

impl SpanExporter for Collected {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend(batch);
        Ok(())
    }
}

/// Runs `f` with a thread-local subscriber (OpenTelemetry layer only, spans
/// exported synchronously on close), and returns its result and the spans.
pub(crate) fn with_tracing<R>(f: impl FnOnce() -> R) -> (R, Collected) {
    let collected = Collected::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(collected.clone()).build();
    let subscriber = tracing_subscriber::registry().with(crate::traces::layer(&provider));
    let result = tracing::subscriber::with_default(subscriber, f);
    (result, collected)
}
