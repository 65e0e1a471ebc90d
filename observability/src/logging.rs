//! Log output: the fmt layer (text or JSON lines) behind a `RUST_LOG` filter,
//! with the current trace id on every line written inside a traced span.
//!
//! The trace id is what joins a log line to its trace in Jaeger, and to the
//! lines of the same saga in other services. It is read from the OpenTelemetry
//! context the tracing-opentelemetry layer attaches when a span is entered, so
//! it costs one thread-local lookup per line, and nothing for lines outside a
//! span. The `RUST_LOG` filter applies to this layer only (a per-layer filter):
//! quieting logs must not drop spans from traces.

use std::fmt;
use std::io::IsTerminal as _;

use opentelemetry::trace::{TraceContextExt as _, TraceId};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::{Format, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{LogFormat, TelemetryConfig};

/// The `RUST_LOG` filter, and the error message when the directives did not
/// parse (we then fall back to `info` rather than refuse to start: a typo in a
/// log level should not take a service down).
pub(crate) fn env_filter(directives: &str) -> (EnvFilter, Option<String>) {
    match EnvFilter::try_new(directives) {
        Ok(filter) => (filter, None),
        Err(error) => (EnvFilter::new("info"), Some(format!("invalid RUST_LOG {directives:?} ({error}); using \"info\""))),
    }
}

/// Whether to colour text output: only on a terminal, and never with `NO_COLOR`.
pub(crate) fn use_ansi() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The fmt layer for `config`, writing to `make_writer`, filtered by `filter`.
pub(crate) fn layer<S, W>(config: &TelemetryConfig, filter: EnvFilter, make_writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(make_writer)
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(WithTraceId { inner: Format::default().json().flatten_event(true).with_current_span(true).with_span_list(true), json: true })
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(make_writer)
            .with_ansi(ansi)
            .event_format(WithTraceId { inner: Format::default().with_ansi(ansi), json: false })
            .with_filter(filter)
            .boxed(),
    }
}

/// The trace id of the span this thread is in, if it has a valid one.
fn current_trace_id() -> Option<TraceId> {
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id())
}

/// Wraps an event formatter and adds `trace_id`: as the first key of the JSON
/// object, or as a trailing `trace_id=…` in text. Lines outside a traced span
/// are passed through untouched.
struct WithTraceId<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let Some(trace_id) = current_trace_id() else {
            return self.inner.format_event(ctx, writer, event);
        };
        // The inner formatter ends its line itself, so format into a buffer
        // and splice the trace id in. The inner formatter carries its own ANSI
        // setting, so colours survive the detour.
        let mut line = String::with_capacity(256);
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        if self.json {
            match line.strip_prefix('{') {
                Some(rest) => write!(writer, "{{\"trace_id\":\"{trace_id}\",{rest}"),
                None => writer.write_str(&line),
            }
        } else {
            let body = line.strip_suffix('\n').unwrap_or(&line);
            writeln!(writer, "{body} trace_id={trace_id}")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::config::TelemetryConfig;

    /// A `MakeWriter` collecting everything into one shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::ErrorKind::Other)?.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// Logs one line inside a saga span and one outside any span.
    fn log_lines(format: &str) -> (Vec<String>, String) {
        let config = TelemetryConfig::from_lookup("eso-test", |k| (k == "LOG_FORMAT").then(|| format.to_owned()));
        let provider = SdkTracerProvider::builder().build();
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(crate::traces::layer(&provider)).with(layer(&config, env_filter("info").0, buffer.clone(), false));
        let trace_id = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("saga.step", saga.id = "s-42", event.type = "order_created");
            let trace_id = crate::propagation::trace_id(&span).unwrap_or_default();
            span.in_scope(|| tracing::info!(amount = 207, "stepped"));
            tracing::info!("outside");
            trace_id
        });
        let out = String::from_utf8(buffer.0.lock().map(|b| b.clone()).unwrap_or_default()).unwrap_or_default();
        (out.lines().map(str::to_owned).collect(), trace_id)
    }

    #[test]
    fn text_lines_carry_the_trace_id_inside_spans_only() {
        let (lines, trace_id) = log_lines("text");
        assert_eq!(trace_id.len(), 32);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("saga.id=\"s-42\"") || lines[0].contains("saga.id=s-42"), "{}", lines[0]);
        assert!(lines[0].ends_with(&format!("trace_id={trace_id}")), "{}", lines[0]);
        assert!(!lines[1].contains("trace_id"), "{}", lines[1]);
    }

    #[test]
    fn json_lines_carry_trace_id_and_span_fields() {
        let (lines, trace_id) = log_lines("json");
        assert_eq!(lines.len(), 2, "{lines:?}");
        let inside = &lines[0];
        assert!(inside.starts_with(&format!("{{\"trace_id\":\"{trace_id}\",")), "{inside}");
        assert!(inside.contains("\"saga.id\":\"s-42\""), "{inside}");
        assert!(inside.contains("\"message\":\"stepped\""), "{inside}");
        assert!(inside.ends_with('}'), "{inside}");
        assert!(lines[1].starts_with("{\"timestamp\""), "{}", lines[1]);
    }

    #[test]
    fn bad_rust_log_falls_back_to_info() {
        let (_, warning) = env_filter("info,[[[");
        assert!(warning.is_some());
        assert!(env_filter("info,orchestrator=debug").1.is_none());
    }
}
