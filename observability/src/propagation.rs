//! W3C trace-context propagation between `tracing` spans and the carriers eso
//! uses: NATS headers (commands and events), HTTP headers (the API), and a
//! string map stored in an event's metadata (so a saga continued after a
//! restart, by a timer, or on another replica joins its original trace).
//!
//! These functions use the W3C `TraceContextPropagator` directly rather than
//! the global propagator, so they behave the same whether or not `init` ran
//! (unit tests of other crates) and cannot be switched to a format the other
//! side does not read.
//!
//! Parents must be set right after the span is created, before it is entered
//! or its context is read: the OpenTelemetry span is started at that moment
//! and its parent is fixed from then on. Carriers without a valid
//! `traceparent` (missing, garbage, all-zero ids) are ignored, so the span keeps
//! the parent it would have had anyway.

use std::collections::BTreeMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Inject the context of `span` (W3C traceparent/tracestate) into NATS headers.
pub fn inject_nats(span: &tracing::Span, headers: &mut async_nats::HeaderMap) {
    inject(span, &mut NatsInjector(headers));
}

/// Make `span`'s parent the context carried in the NATS headers (if any valid traceparent).
pub fn set_parent_from_nats(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    if let Some(headers) = headers {
        set_parent(span, &NatsExtractor(headers));
    }
}

/// Same for HTTP request headers (incoming traceparent honoured).
pub fn set_parent_from_http(span: &tracing::Span, headers: &http::HeaderMap) {
    set_parent(span, &HttpExtractor(headers));
}

/// The span's context as a string map (traceparent, tracestate), to store in an event's metadata.
///
/// Empty when the span has no valid context (no OpenTelemetry layer installed).
pub fn to_map(span: &tracing::Span) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    inject(span, &mut MapCarrier(&mut map));
    map
}

/// Make `span`'s parent the context stored in such a map (continuation after restart / timer / other replica).
pub fn set_parent_from_map(span: &tracing::Span, map: &BTreeMap<String, String>) {
    set_parent(span, &MapExtractor(map));
}

/// Make `span` a child of `parent` in the trace only, not in `tracing`'s
/// span tree (create `span` with `parent: None`). `parent` can then end and
/// be freed while `span` lives on: a command waiting seconds for its reply
/// would otherwise keep every ancestor span in memory until it ends.
pub fn follow(span: &tracing::Span, parent: &tracing::Span) {
    let cx = parent.context();
    if cx.span().span_context().is_valid()
        && let Err(error) = span.set_parent(cx)
    {
        tracing::debug!(%error, "could not set the parent of a span");
    }
}

/// Hex trace id (32 chars) of the span, None if invalid/not sampled context.
///
/// Not-sampled traces are not exported, so showing their id to a user would
/// point at nothing in Jaeger.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let otel_span = cx.span();
    let sc = otel_span.span_context();
    (sc.is_valid() && sc.is_sampled()).then(|| sc.trace_id().to_string())
}

fn inject(span: &tracing::Span, injector: &mut dyn Injector) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, injector);
    }
}

fn set_parent(span: &tracing::Span, extractor: &dyn Extractor) {
    // Extract against an empty context: `extract` alone would fall back to the
    // *current* context when the carrier is invalid.
    let parent = TraceContextPropagator::new().extract_with_context(&Context::new(), extractor);
    if !parent.span().span_context().is_valid() {
        return;
    }
    if let Err(error) = span.set_parent(parent) {
        // A disabled span (filtered out) is normal; anything else is a bug in
        // the caller (parent set after the span started), worth a debug line.
        tracing::debug!(%error, "could not set the propagated parent of a span");
    }
}

struct NatsInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // `insert` with a `&str` name panics on invalid names; parse instead.
        if let (Ok(name), Ok(value)) = (key.parse::<async_nats::header::HeaderName>(), value.parse::<async_nats::HeaderValue>()) {
            self.0.insert(name, value);
        }
    }
}

struct NatsExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // NATS header names are case-sensitive; W3C says lower case, but be
        // lenient with senders that capitalise (`Traceparent`).
        self.0.iter().find(|(name, _)| AsRef::<str>::as_ref(*name).eq_ignore_ascii_case(key)).and_then(|(_, values)| values.first()).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| AsRef::<str>::as_ref(name)).collect()
    }
}

struct HttpExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MapCarrier<'a>(&'a mut BTreeMap<String, String>);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct MapExtractor<'a>(&'a BTreeMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::with_tracing;

    const REMOTE_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const REMOTE_SPAN: &str = "00f067aa0ba902b7";

    fn http_headers(traceparent: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        if let Ok(value) = traceparent.parse() {
            headers.insert("traceparent", value);
        }
        headers
    }

    #[test]
    fn nats_headers_carry_the_trace_to_a_consumer() {
        let ((), spans) = with_tracing(|| {
            let client = tracing::info_span!("send", otel.kind = "client");
            let mut headers = async_nats::HeaderMap::new();
            inject_nats(&client, &mut headers);
            assert!(headers.get("traceparent").is_some(), "{headers:?}");
            drop(client);

            // The participant: a fresh root span, parent taken from the headers.
            let server = tracing::info_span!("handle", otel.kind = "server");
            set_parent_from_nats(&server, Some(&headers));
            server.in_scope(|| {});
        });
        let (client, server) = (spans.named("send"), spans.named("handle"));
        assert_eq!(server.span_context.trace_id(), client.span_context.trace_id());
        assert_eq!(server.parent_span_id, client.span_context.span_id());
        assert_eq!(server.span_kind, opentelemetry::trace::SpanKind::Server);
    }

    #[test]
    fn nats_header_names_are_matched_case_insensitively() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Traceparent", format!("00-{REMOTE_TRACE}-{REMOTE_SPAN}-01").as_str());
        let (id, _) = with_tracing(|| {
            let span = tracing::info_span!("handle");
            set_parent_from_nats(&span, Some(&headers));
            trace_id(&span)
        });
        assert_eq!(id.as_deref(), Some(REMOTE_TRACE));
    }

    #[test]
    fn map_round_trip_continues_the_trace() {
        let ((), spans) = with_tracing(|| {
            let original = tracing::info_span!("original");
            let map = to_map(&original);
            assert!(map.contains_key("traceparent"), "{map:?}");
            drop(original);

            let resumed = tracing::info_span!("resumed");
            set_parent_from_map(&resumed, &map);
            resumed.in_scope(|| {});
        });
        let (original, resumed) = (spans.named("original"), spans.named("resumed"));
        assert_eq!(resumed.span_context.trace_id(), original.span_context.trace_id());
        assert_eq!(resumed.parent_span_id, original.span_context.span_id());
    }

    #[test]
    fn incoming_http_traceparent_is_honoured() {
        let headers = http_headers(&format!("00-{REMOTE_TRACE}-{REMOTE_SPAN}-01"));
        let (id, spans) = with_tracing(|| {
            let span = tracing::info_span!("POST /");
            set_parent_from_http(&span, &headers);
            trace_id(&span)
        });
        assert_eq!(id.as_deref(), Some(REMOTE_TRACE));
        let span = spans.named("POST /");
        assert_eq!(span.parent_span_id.to_string(), REMOTE_SPAN);
    }

    #[test]
    fn garbage_traceparent_keeps_the_local_parent() {
        let ((), spans) = with_tracing(|| {
            let outer = tracing::info_span!("outer");
            let _entered = outer.enter();
            for garbage in ["garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-zzzzzzzzzzzzzzzz-01"] {
                let span = tracing::info_span!("inner");
                set_parent_from_http(&span, &http_headers(garbage));
                let mut map = BTreeMap::new();
                map.insert("traceparent".to_owned(), garbage.to_owned());
                set_parent_from_map(&span, &map);
                span.in_scope(|| {});
            }
        });
        let outer = spans.named("outer");
        let inner: Vec<_> = spans.spans().into_iter().filter(|s| s.name == "inner").collect();
        assert_eq!(inner.len(), 3);
        for span in inner {
            assert_eq!(span.parent_span_id, outer.span_context.span_id());
            assert_eq!(span.span_context.trace_id(), outer.span_context.trace_id());
        }
    }

    #[test]
    fn unsampled_parent_yields_no_trace_id() {
        let headers = http_headers(&format!("00-{REMOTE_TRACE}-{REMOTE_SPAN}-00"));
        let (id, spans) = with_tracing(|| {
            let span = tracing::info_span!("POST /");
            set_parent_from_http(&span, &headers);
            trace_id(&span)
        });
        assert_eq!(id, None);
        assert!(spans.spans().is_empty(), "parent-based sampling drops it");
    }

    #[test]
    fn without_the_otel_layer_everything_is_a_no_op() {
        let span = tracing::info_span!("untraced");
        assert_eq!(trace_id(&span), None);
        assert!(to_map(&span).is_empty());
        let mut headers = async_nats::HeaderMap::new();
        inject_nats(&span, &mut headers);
        assert!(headers.is_empty());
        set_parent_from_nats(&span, None);
    }
}
