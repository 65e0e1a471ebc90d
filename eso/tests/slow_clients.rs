//! Slow clients are load too: a connection that trickles its headers or
//! its body is cut off once its time is up, a connection past the cap is
//! answered `503` at once, and the metrics say so. Raw TCP against the
//! embedded orchestrator, as a slow or hostile client would send it.
//!
//! Times are asserted as bounds with wide margins (the timeouts are 1 s,
//! the margins 5 s), never as exact figures.

mod common;

use std::time::{Duration, Instant};

use common::{Mode, TestApp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The metrics are the process's: tests that count connections take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long past a timeout a connection may take to be closed.
const MARGIN: Duration = Duration::from_secs(5);
/// How much earlier than its timeout a connection may seem closed, for the
/// rounding of two clocks read at slightly different moments.
const EARLY: Duration = Duration::from_millis(100);

const HEADERS: &str = "eso_http_slow_clients_total{phase=\"headers\"}";
const BODY: &str = "eso_http_slow_clients_total{phase=\"body\"}";
const OPEN: &str = "eso_http_connections_open";
const REFUSED: &str = "eso_http_connections_refused_total";

/// A sample of this process's metrics (0 before its first recording).
fn metric(name: &str) -> f64 {
    value(&common::telemetry().render_metrics(), name).unwrap_or(0.0)
}

fn value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The same sample as `/metrics` serves it, over HTTP.
async fn scraped(app: &TestApp, name: &str) -> f64 {
    let response = app.http.get(format!("{}/metrics", app.url)).send().await.unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    let text = response.text().await.unwrap_or_default();
    value(&text, name).unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

async fn until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what} after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connect(app: &TestApp) -> TcpStream {
    let addr = app.running.as_ref().map(|r| r.addr).unwrap_or_else(|| panic!("not running"));
    TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// Opens a connection, sends `first`, then `each` every `every` until the
/// server closes it; returns what the server answered and how long after
/// the connection it closed (`None` if still open after `within`).
async fn trickle(app: &TestApp, first: String, each: &'static [u8], every: Duration, within: Duration) -> Option<(String, Duration)> {
    let started = Instant::now();
    let (mut reader, mut writer) = connect(app).await.into_split();
    let writing = tokio::spawn(async move {
        if writer.write_all(first.as_bytes()).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(every).await;
            // A write fails once the server has closed; then stop.
            if writer.write_all(each).await.is_err() {
                return;
            }
        }
    });
    let answer = tokio::time::timeout(within, until_closed(&mut reader)).await.ok().map(|answer| (answer, started.elapsed()));
    writing.abort();
    answer
}

/// Everything the server sends until it closes the connection (a reset is
/// a close too).
async fn until_closed(reader: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = reader.read(&mut buf).await {
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_trickled_past_the_header_timeout_are_cut_off_and_counted() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let timeout = Duration::from_secs(1);
    let mut app = TestApp::start_configured(Mode::Embedded, |config| config.header_timeout = timeout).await;
    let before = metric(HEADERS);

    // Half send a header line every 300 ms, steadily (a per-line timeout
    // would never trip), half one every 2 s; none ever ends its headers.
    const CLIENTS: usize = 20;
    let start = "GET /healthz HTTP/1.1\r\nHost: eso\r\n".to_string();
    let clients = (0..CLIENTS).map(|i| {
        let every = if i % 2 == 0 { Duration::from_millis(300) } else { Duration::from_secs(2) };
        trickle(&app, start.clone(), b"x-trickle: 1\r\n", every, timeout + MARGIN)
    });
    let (closed, (status, _)) = tokio::join!(futures::future::join_all(clients), app.get("/healthz"));
    // While they trickle, a client that sends its request is answered.
    assert_eq!(status, 200);
    for (i, closed) in closed.into_iter().enumerate() {
        let (answer, after) = closed.unwrap_or_else(|| panic!("client {i} still held after {:?}", timeout + MARGIN));
        assert!(after >= timeout - EARLY, "client {i} closed after {after:?}, before the {timeout:?} timeout");
        assert_eq!(answer, "", "client {i} was answered before its headers were in");
    }
    until("every trickler counted", MARGIN, || metric(HEADERS) - before >= CLIENTS as f64).await;
    let counted = metric(HEADERS);
    assert_eq!(counted - before, CLIENTS as f64, "only the tricklers are slow clients");

    // A kept-alive connection that goes quiet after its answer is closed as
    // well, but it is idle, not slow: not counted.
    let mut idle = connect(&app).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: eso\r\n\r\n";
    idle.write_all(request).await.unwrap_or_else(|e| panic!("write: {e}"));
    let quiet = Instant::now();
    let answered = tokio::time::timeout(timeout + MARGIN, until_closed(&mut idle)).await.unwrap_or_else(|_| panic!("an idle connection held"));
    assert!(answered.starts_with("HTTP/1.1 200 "), "{answered}");
    assert!(quiet.elapsed() >= timeout - EARLY, "closed {:?} after its answer", quiet.elapsed());
    assert_eq!(metric(HEADERS), counted, "an idle connection was counted as a slow client");

    assert!(scraped(&app, HEADERS).await >= CLIENTS as f64);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_past_the_body_timeout_is_answered_408_and_counted() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let timeout = Duration::from_secs(1);
    let mut app = TestApp::start_configured(Mode::Embedded, |config| config.body_timeout = timeout).await;
    let before = metric(BODY);

    // Headers at once, then a byte of the body every 200 ms: 64 bytes would take 13 s.
    let start = "POST / HTTP/1.1\r\nHost: eso\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{".to_string();
    let (answer, after) = trickle(&app, start, b" ", Duration::from_millis(200), timeout + MARGIN)
        .await
        .unwrap_or_else(|| panic!("a trickled body held its connection for {:?}", timeout + MARGIN));
    assert!(after >= timeout - EARLY, "answered after {after:?}, before the {timeout:?} timeout");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    assert!(head.starts_with("HTTP/1.1 408 "), "{head}");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    let error = serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| v["error"].as_str().map(str::to_string));
    assert!(error.as_deref().is_some_and(|e| e.contains("did not arrive within 1s")), "{body}");
    assert!(metric(BODY) - before >= 1.0);

    // A body sent at once is still taken.
    app.order("sent in one go").await;
    assert!(scraped(&app, BODY).await >= 1.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_connections_are_refused_until_a_slot_frees() {
    let _turn = ONE_AT_A_TIME.lock().await;
    const CAP: usize = 50;
    let mut app = TestApp::start_configured(Mode::Embedded, |config| {
        config.max_connections = Some(CAP);
        config.header_timeout = Duration::from_secs(60);
    })
    .await;
    let (baseline, refused_before) = (metric(OPEN), metric(REFUSED));

    // Silent connections, each holding a slot.
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(connect(&app).await);
    }
    until("every slot taken", MARGIN, || metric(OPEN) - baseline >= CAP as f64).await;

    // One more is answered at once and closed.
    let mut extra = connect(&app).await;
    let answer = tokio::time::timeout(MARGIN, until_closed(&mut extra)).await.unwrap_or_else(|_| panic!("a connection past the cap was held"));
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    assert!(head.starts_with("HTTP/1.1 503 ") && head.contains("connection: close"), "{head}");
    assert!(body.contains(&format!("maximum of {CAP} connections")), "{body}");
    assert!(metric(REFUSED) - refused_before >= 1.0);
    assert_eq!(metric(OPEN) - baseline, CAP as f64, "a refused connection took a slot");

    // Once a client leaves, its slot serves the next one.
    drop(held.pop());
    let deadline = Instant::now() + MARGIN;
    loop {
        let response = app.http.get(format!("{}/healthz", app.url)).send().await;
        if response.as_ref().is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "no request served after a slot freed: {response:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // With room for the scrape (the client may open a second connection
    // before its first is back in its pool), /metrics shows the cap at work.
    drop(held.pop());
    assert!(scraped(&app, OPEN).await >= held.len() as f64);
    assert!(scraped(&app, REFUSED).await >= 1.0);

    // When every client has gone, the gauge is back where it started.
    drop(held);
    app.http = reqwest::Client::new();
    until("the open connections back to their baseline", MARGIN, || metric(OPEN) == baseline).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_closes_quiet_connections_at_once() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut app = TestApp::start_configured(Mode::Embedded, |config| config.header_timeout = Duration::from_secs(60)).await;
    let baseline = metric(OPEN);
    // One that never sent a byte, one kept alive after its answer.
    let mut silent = connect(&app).await;
    let mut kept = connect(&app).await;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: eso\r\n\r\n").await.unwrap_or_else(|e| panic!("write: {e}"));
    let mut buf = [0u8; 1024];
    let n = kept.read(&mut buf).await.unwrap_or(0);
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 "), "{}", String::from_utf8_lossy(&buf[..n]));
    until("both connections open", MARGIN, || metric(OPEN) - baseline >= 2.0).await;

    // Far sooner than their 60 s header timeout.
    let stopping = Instant::now();
    tokio::time::timeout(MARGIN, app.stop()).await.unwrap_or_else(|_| panic!("stop waited on quiet connections"));
    assert!(stopping.elapsed() < MARGIN);
    for connection in [&mut silent, &mut kept] {
        let rest = tokio::time::timeout(MARGIN, until_closed(connection)).await.unwrap_or_else(|_| panic!("a connection outlived the stop"));
        assert_eq!(rest, "");
    }
    assert_eq!(metric(OPEN), baseline);
}
