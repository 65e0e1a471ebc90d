//! An in-process OTLP/gRPC trace receiver, standing in for Jaeger in tests.
//!
//! Tests start one, point the code under test at it
//! (`OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint()` for a child process, or
//! an exporter built in-process), and then assert on the spans that arrived:
//! same trace id across services, parent/child links, names, kinds and
//! attributes. It speaks the real protocol the real exporter speaks, so a
//! passing test means Jaeger would have received the same spans.
//!
//! [`OtlpReceiver::counting`] keeps no spans, only their number: the
//! benchmark's stand-in for a collector that runs elsewhere, so decoding
//! and storing hundreds of thousands of spans does not take CPU from the
//! processes being measured on the same cores.
//!
//! Compiled only with the `test-receiver` feature; enable it from
//! `[dev-dependencies]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use tokio::task::JoinHandle;

/// One span as received, flattened for easy assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// 32 lowercase hex characters.
    pub trace_id: String,
    /// 16 lowercase hex characters.
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    pub name: String,
    /// `internal`, `server`, `client`, `producer`, `consumer` or `unspecified`.
    pub kind: String,
    /// The `service.name` resource attribute of the sender.
    pub service_name: String,
    /// Span attributes; non-string values rendered as text (`true`, `42`, `[a, b]`).
    pub attributes: BTreeMap<String, String>,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// `unset`, `ok` or `error`.
    pub status_code: String,
    /// Names of the span's events (log lines recorded inside the span).
    pub events: Vec<String>,
    /// All resource attributes of the sender (`service.version`, `host.name`, …).
    pub resource: BTreeMap<String, String>,
}

type Store = Arc<Mutex<Vec<ReceivedSpan>>>;

/// A running receiver on `127.0.0.1:<free port>`; stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Store,
    received: Arc<AtomicUsize>,
    server: JoinHandle<()>,
}

impl OtlpReceiver {
    /// Binds a free port on 127.0.0.1 and serves OTLP/gRPC traces on the
    /// current Tokio runtime.
    ///
    /// # Errors
    /// If the port cannot be bound.
    pub async fn start() -> anyhow::Result<Self> {
        Self::serve(true).await
    }

    /// A receiver that only counts the spans (see [`OtlpReceiver::received`]).
    ///
    /// # Errors
    /// If the port cannot be bound.
    pub async fn counting() -> anyhow::Result<Self> {
        Self::serve(false).await
    }

    async fn serve(keep: bool) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the OTLP test receiver")?;
        let addr = listener.local_addr()?;
        let spans = Store::default();
        let received = Arc::new(AtomicUsize::new(0));
        let service = TraceServiceServer::new(Collector { spans: keep.then(|| Arc::clone(&spans)), received: Arc::clone(&received) });
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = tokio::spawn(async move {
            if let Err(error) = tonic::transport::Server::builder().serve_with_incoming(service, incoming).await {
                eprintln!("OTLP test receiver stopped: {error}");
            }
        });
        Ok(Self { addr, spans, received, server })
    }

    /// The URL to put in `OTEL_EXPORTER_OTLP_ENDPOINT`, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many spans arrived so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }

    /// Every span received so far, in arrival order (none when counting).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Polls until `pred` holds for the received spans or `timeout` passes,
    /// then returns the spans either way (so the assertion that follows can
    /// print what did arrive).
    pub async fn wait_for(&self, pred: impl Fn(&[ReceivedSpan]) -> bool, timeout: Duration) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if pred(&spans) || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Collector {
    /// `None` when only counting.
    spans: Option<Store>,
    received: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(&self, request: tonic::Request<ExportTraceServiceRequest>) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let count = request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.received.fetch_add(count, Ordering::Relaxed);
        if let Some(spans) = &self.spans {
            spans.lock().unwrap_or_else(PoisonError::into_inner).extend(flatten(request));
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = attributes(resource_spans.resource.map(|r| r.attributes).unwrap_or_default());
        let service_name = resource.get("service.name").cloned().unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            let kind = match SpanKind::try_from(span.kind) {
                Ok(SpanKind::Internal) => "internal",
                Ok(SpanKind::Server) => "server",
                Ok(SpanKind::Client) => "client",
                Ok(SpanKind::Producer) => "producer",
                Ok(SpanKind::Consumer) => "consumer",
                Ok(SpanKind::Unspecified) | Err(_) => "unspecified",
            };
            let status_code = match span.status.map(|s| StatusCode::try_from(s.code)) {
                Some(Ok(StatusCode::Ok)) => "ok",
                Some(Ok(StatusCode::Error)) => "error",
                _ => "unset",
            };
            out.push(ReceivedSpan {
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
                name: span.name,
                kind: kind.to_owned(),
                service_name: service_name.clone(),
                attributes: attributes(span.attributes),
                start_unix_nanos: span.start_time_unix_nano,
                end_unix_nanos: span.end_time_unix_nano,
                status_code: status_code.to_owned(),
                events: span.events.into_iter().map(|e| e.name).collect(),
                resource: resource.clone(),
            });
        }
    }
    out
}

fn attributes(kvs: Vec<KeyValue>) -> BTreeMap<String, String> {
    kvs.into_iter().map(|kv| (kv.key, kv.value.map(render).unwrap_or_default())).collect()
}

fn render(value: AnyValue) -> String {
    match value.value {
        Some(any_value::Value::StringValue(s)) => s,
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex(&b),
        Some(any_value::Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.into_iter().map(render).collect();
            format!("[{}]", items.join(", "))
        }
        Some(any_value::Value::KvlistValue(l)) => format!("{:?}", attributes(l.values)),
        Some(any_value::Value::StringValueStrindex(i)) => format!("strindex:{i}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
