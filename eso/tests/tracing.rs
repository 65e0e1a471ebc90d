//! One distributed trace per saga, as Jaeger would receive it: the
//! orchestrator, payment and delivery run as separate processes on Postgres
//! and NATS and export OTLP to a receiver in this test.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::{Nats, Postgres, Process};
use observability::testing::{OtlpReceiver, ReceivedSpan};
use serde_json::{Value, json};

struct Traced {
    _postgres: Postgres,
    _nats: Nats,
    receiver: OtlpReceiver,
    env: Vec<(&'static str, String)>,
    http: reqwest::Client,
}

impl Traced {
    async fn new() -> Traced {
        let receiver = OtlpReceiver::start().await.unwrap_or_else(|e| panic!("receiver: {e}"));
        let postgres = Postgres::fresh().await;
        let nats = Nats::start().await;
        let mut env = common::process_env(&postgres, &nats);
        env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()));
        env.push(("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()));
        Traced { _postgres: postgres, _nats: nats, receiver, env, http: reqwest::Client::new() }
    }

    async fn spawn(&self, args: &[&str]) -> Process {
        Process::spawn(args, &self.env).await
    }

    /// POSTs an order; returns its id and the trace id the API announced.
    async fn order(&self, base: &str, description: &str) -> (String, String) {
        let r = self.http.post(base).json(&json!({ "amount": 12.5, "description": description })).send().await.unwrap_or_else(|e| panic!("{e}"));
        let trace = r.headers().get("x-trace-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        (body["id"].as_str().unwrap_or_default().to_string(), trace)
    }

    async fn wait_status(&self, base: &str, id: &str, statuses: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let body: Value = match self.http.get(format!("{base}/?id={id}")).send().await {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            if statuses.contains(&body["status"].as_str().unwrap_or_default()) {
                return;
            }
            assert!(Instant::now() < deadline, "order {id} never reached {statuses:?}: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn in_trace<'a>(spans: &'a [ReceivedSpan], trace: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.trace_id == trace).collect()
}

fn services(spans: &[&ReceivedSpan]) -> BTreeSet<String> {
    spans.iter().map(|s| s.service_name.clone()).collect()
}

/// Every saga span in one trace, one root, no orphans, participants
/// under the orchestrator's request spans, transitions in order.
fn assert_one_whole_trace(all: &[ReceivedSpan], order_id: &str, trace: &str, transitions: &[&str]) {
    let spans = in_trace(all, trace);
    let about_order: Vec<&ReceivedSpan> = all
        .iter()
        .filter(|s| s.attributes.get("order.id").map(String::as_str) == Some(order_id) || s.attributes.get("saga.id").map(String::as_str) == Some(order_id))
        .collect();
    assert!(!about_order.is_empty(), "no span names order {order_id}");
    for s in &about_order {
        assert_eq!(s.trace_id, trace, "span `{}` of order {order_id} ({}) is in another trace", s.name, s.service_name);
    }
    let by_id: HashMap<&str, &ReceivedSpan> = spans.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let roots: Vec<&&ReceivedSpan> = spans.iter().filter(|s| s.parent_span_id.is_none()).collect();
    assert_eq!(roots.len(), 1, "one root span, got {:?}", roots.iter().map(|s| &s.name).collect::<Vec<_>>());
    assert_eq!((roots[0].name.as_str(), roots[0].kind.as_str()), ("POST /", "server"));
    for s in &spans {
        if let Some(parent) = &s.parent_span_id {
            assert!(by_id.contains_key(parent.as_str()), "orphan span `{}` from {}", s.name, s.service_name);
        }
    }
    for s in spans.iter().filter(|s| s.service_name != "eso-orchestrator" && s.kind == "server") {
        let parent = s.parent_span_id.as_deref().and_then(|p| by_id.get(p)).unwrap_or_else(|| panic!("{} has no parent", s.name));
        assert_eq!(parent.service_name, "eso-orchestrator");
        assert_eq!(parent.kind, "client", "{}'s parent is {}", s.name, parent.name);
        assert!(parent.name.ends_with(" request"), "{}'s parent is {}", s.name, parent.name);
        assert_eq!(parent.attributes.get("messaging.system").map(String::as_str), Some("nats"));
    }
    let mut steps: Vec<&&ReceivedSpan> = spans.iter().filter(|s| s.name.starts_with("order ") && s.name.contains(" -> ")).collect();
    steps.sort_by_key(|s| s.start_unix_nanos);
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, transitions, "transitions of order {order_id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_saga_is_one_trace_across_three_processes() {
    let t = Traced::new().await;
    let _payment = t.spawn(&["participant", "payment"]).await;
    let _delivery = t.spawn(&["participant", "delivery"]).await;
    let orchestrator = t.spawn(&[]).await;
    let base = orchestrator.url();

    let (test_id, test_trace) = t.order(&base, "test top up e wallet").await;
    let (xxx_id, xxx_trace) = t.order(&base, "xxx").await;
    assert_eq!(test_trace.len(), 32);
    assert_ne!(test_trace, xxx_trace, "two sagas, two traces");
    t.wait_status(&base, &test_id, &["delivered"]).await;
    t.wait_status(&base, &xxx_id, &["cancelled"]).await;

    let spans = t
        .receiver
        .wait_for(
            |spans| {
                let test: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == test_trace).collect();
                let xxx: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == xxx_trace).collect();
                // Everything asserted below, since each process exports its
                // spans in batches of its own, at its own time.
                services(&test).len() == 3
                    && services(&xxx).len() == 2
                    && test.iter().filter(|s| s.kind == "producer").count() == 4
                    && xxx.iter().filter(|s| s.kind == "producer").count() == 3
                    && [&test, &xxx].iter().all(|t| t.iter().any(|s| s.name == "POST /"))
            },
            Duration::from_secs(20),
        )
        .await;

    assert_eq!(services(&in_trace(&spans, &test_trace)), BTreeSet::from(["eso-orchestrator".into(), "eso-payment".into(), "eso-delivery".into()]));
    assert_eq!(services(&in_trace(&spans, &xxx_trace)), BTreeSet::from(["eso-orchestrator".into(), "eso-payment".into()]));
    assert_one_whole_trace(&spans, &test_id, &test_trace, &["order payment -> delivery", "order delivery -> delivered"]);
    assert_one_whole_trace(&spans, &xxx_id, &xxx_trace, &["order payment -> cancelled"]);

    let http = in_trace(&spans, &test_trace).into_iter().find(|s| s.name == "POST /").map(|s| s.attributes.clone()).unwrap_or_default();
    assert_eq!(http.get("http.request.method").map(String::as_str), Some("POST"));
    assert_eq!(http.get("http.response.status_code").map(String::as_str), Some("201"));
    let published: BTreeSet<String> =
        in_trace(&spans, &test_trace).iter().filter(|s| s.kind == "producer").filter_map(|s| s.attributes.get("event.type").cloned()).collect();
    assert_eq!(published, BTreeSet::from(["order_created", "payment_confirmed", "order_confirmed", "order_delivered"].map(String::from)));

    // The counters match the sagas that ran.
    let metrics = t.http.get(format!("{base}/metrics")).send().await.unwrap_or_else(|e| panic!("{e}")).text().await.unwrap_or_default();
    for line in [
        "eso_sagas_started_total{definition=\"order\"} 2",
        "eso_sagas_finished_total{definition=\"order\",outcome=\"delivered\"} 1",
        "eso_sagas_finished_total{definition=\"order\",outcome=\"cancelled\"} 1",
        "eso_sagas_in_flight 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "`{line}` not in /metrics:\n{metrics}");
    }

    // Print the span tree of the test order, as the receiver recorded it.
    let tree = in_trace(&spans, &test_trace);
    print_tree(&tree);
}

fn print_tree(spans: &[&ReceivedSpan]) {
    fn walk(spans: &[&ReceivedSpan], parent: Option<&str>, depth: usize) {
        let mut children: Vec<&&ReceivedSpan> = spans.iter().filter(|s| s.parent_span_id.as_deref() == parent).collect();
        children.sort_by_key(|s| s.start_unix_nanos);
        for s in children {
            let ms = (s.end_unix_nanos.saturating_sub(s.start_unix_nanos)) as f64 / 1e6;
            eprintln!("{}{} [{} {}] {ms:.2} ms", "  ".repeat(depth), s.name, s.service_name, s.kind);
            walk(spans, Some(&s.span_id), depth + 1);
        }
    }
    walk(spans, None, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_resumed_after_a_crash_continues_its_trace() {
    let t = Traced::new().await;
    let _payment = t.spawn(&["participant", "payment"]).await;
    let mut orchestrator = t.spawn(&[]).await;
    let base = orchestrator.url();
    let (id, trace) = t.order(&base, "test").await;
    // Paid, waiting for a delivery participant that is not there yet.
    t.wait_status(&base, &id, &["confirmed"]).await;
    t.receiver.wait_for(|s| s.iter().any(|s| s.trace_id == trace && s.service_name == "eso-payment"), Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    orchestrator.kill();

    let _delivery = t.spawn(&["participant", "delivery"]).await;
    orchestrator.restart().await;
    t.wait_status(&base, &id, &["delivered"]).await;
    let spans =
        t.receiver.wait_for(|s| s.iter().any(|s| s.service_name == "eso-delivery" && s.attributes.get("saga.id") == Some(&id)), Duration::from_secs(20)).await;
    let delivery =
        spans.iter().find(|s| s.service_name == "eso-delivery" && s.attributes.get("saga.id") == Some(&id)).unwrap_or_else(|| panic!("no delivery span"));
    assert_eq!(delivery.trace_id, trace, "the delivery after the restart is in the order's first trace");
    let first = spans.iter().find(|s| s.trace_id == trace && s.name == "POST /");
    assert!(first.is_some(), "the order's first span (POST /) is in that trace");
    assert!(spans.iter().any(|s| s.trace_id == trace && s.name == "saga timer"), "the timer that resumed it is in the trace");
}
