//! `observability::init` as a binary uses it, in a process of its own.
//!
//! `init` installs process-wide state (subscriber, recorder, propagator) and
//! reads the environment, so the real work runs in a child process: this test
//! binary re-runs itself with `OBSERVABILITY_INIT_CHILD` set, and the parent
//! checks the child's stdout (log lines) and what reached an OTLP receiver.

use std::time::Duration;

use observability::testing::OtlpReceiver;

const CHILD_ENV: &str = "OBSERVABILITY_INIT_CHILD";

/// The child's body; a no-op in a normal test run.
#[test]
fn child_process_entry() -> anyhow::Result<()> {
    if std::env::var_os(CHILD_ENV).is_none() {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let telemetry = observability::init("eso-default-name")?;
        {
            let saga = tracing::info_span!("saga", otel.name = "saga order step", saga.id = "saga-7", saga.definition = "order",);
            let command = tracing::info_span!(parent: &saga, "command", otel.kind = "client");
            let follower = tracing::info_span!(parent: None, "follower");
            observability::propagation::follow(&follower, &saga);
            let mut headers = async_nats::HeaderMap::new();
            observability::propagation::inject_nats(&command, &mut headers);
            let _entered = saga.enter();
            tracing::info!(event.type = "order_created", "stepped");
            let trace_id = observability::propagation::trace_id(&saga).unwrap_or_default();
            let traceparent = headers.get("traceparent").map(|v| v.as_str().to_owned());
            println!("TRACE_ID={trace_id}");
            println!("TRACEPARENT={}", traceparent.unwrap_or_default());
        }
        // A second init in the same process is fine and shares the recorder.
        let again = observability::init("eso-default-name")?;
        metrics::counter!("eso_init_test_total").increment(2);
        println!("METRICS_SECOND={}", again.render_metrics().contains("eso_init_test_total 2"));
        again.shutdown();
        telemetry.shutdown();
        telemetry.shutdown();
        println!("METRICS_FIRST={}", telemetry.render_metrics().contains("eso_init_test_total 2"));
        anyhow::Ok(())
    })
}

/// Runs the child with `env` and returns its stdout.
async fn run_child(env: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command
        .args(["--exact", "child_process_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env_remove("RUST_LOG")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("OTEL_TRACES_SAMPLER")
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output()).await??;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(output.status.success(), "child failed: {}\nstdout:\n{stdout}\nstderr:\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    Ok(stdout)
}

fn value<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_exports_spans_logs_json_and_renders_metrics() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let endpoint = receiver.endpoint();
    let stdout = run_child(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_SERVICE_NAME", "eso-init-test"), ("LOG_FORMAT", "json")]).await?;

    let trace_id = value(&stdout, "TRACE_ID");
    assert_eq!(trace_id.len(), 32, "{stdout}");
    assert!(value(&stdout, "TRACEPARENT").contains(trace_id), "{stdout}");
    assert_eq!(value(&stdout, "METRICS_SECOND"), "true", "{stdout}");
    assert_eq!(value(&stdout, "METRICS_FIRST"), "true", "{stdout}");

    // libtest prints `test child_process_entry ... ` before the first line.
    let line = stdout
        .lines()
        .filter_map(|l| l.find('{').map(|at| &l[at..]))
        .find(|l| l.contains("\"message\":\"stepped\""))
        .unwrap_or_else(|| panic!("no JSON log line in {stdout}"));
    assert!(line.starts_with("{\"trace_id\":") && line.ends_with('}'), "{line}");
    assert!(line.contains(&format!("\"trace_id\":\"{trace_id}\"")), "{line}");
    assert!(line.contains("\"saga.id\":\"saga-7\""), "{line}");

    // The child shut down (flushed) before exiting, so the spans are here.
    let spans = receiver.wait_for(|s| s.len() >= 3, Duration::from_secs(10)).await;
    let saga = spans.iter().find(|s| s.name == "saga order step").unwrap_or_else(|| panic!("saga span missing: {spans:#?}"));
    assert_eq!(saga.trace_id, trace_id);
    assert_eq!(saga.service_name, "eso-init-test");
    assert_eq!(saga.attributes.get("saga.id").map(String::as_str), Some("saga-7"));
    let command = spans.iter().find(|s| s.name == "command").unwrap_or_else(|| panic!("command span missing: {spans:#?}"));
    assert_eq!(command.parent_span_id.as_deref(), Some(saga.span_id.as_str()));
    assert_eq!(command.kind, "client");
    // Not the saga's child in `tracing`, but in the trace.
    let follower = spans.iter().find(|s| s.name == "follower").unwrap_or_else(|| panic!("follower span missing: {spans:#?}"));
    assert_eq!((follower.trace_id.as_str(), follower.parent_span_id.as_deref()), (trace_id, Some(saga.span_id.as_str())));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counting_receiver_counts_the_spans_and_keeps_none() -> anyhow::Result<()> {
    let receiver = OtlpReceiver::counting().await?;
    let endpoint = receiver.endpoint();
    run_child(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())]).await?;
    // The child flushed its three spans before it exited.
    assert_eq!(receiver.received(), 3);
    assert!(receiver.spans().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_without_endpoint_logs_text_with_trace_ids() -> anyhow::Result<()> {
    let stdout = run_child(&[("OTEL_EXPORTER_OTLP_ENDPOINT", ""), ("LOG_FORMAT", "text")]).await?;
    let trace_id = value(&stdout, "TRACE_ID");
    assert_eq!(trace_id.len(), 32, "spans get real ids without an exporter: {stdout}");
    let line = stdout.lines().find(|l| l.contains("stepped")).unwrap_or_else(|| panic!("no log line in {stdout}"));
    assert!(line.ends_with(&format!("trace_id={trace_id}")), "{line}");
    assert!(line.contains("saga.id"), "{line}");
    Ok(())
}
