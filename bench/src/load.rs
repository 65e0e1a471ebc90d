//! The load: order sagas started over HTTP, either by a fixed number of
//! clients that each wait for their saga to end before starting the next
//! (closed loop: offered load adapts to the server, so it measures
//! capacity) or at a fixed arrival rate whatever the server does (open
//! loop: queueing shows in the latency; latency counts from when a POST
//! was due, not when it could be sent, so a slow server cannot hide its
//! queue in the client).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::poller::{PollSettings, Seen, Tracker};
use orchestrator::clock::now_us;

const TERMINAL: &[&str] = &["delivered", "cancelled", "failed"];
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A closed-loop client whose POST failed waits this long before the next.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Which descriptions the orders carry (they choose the saga's path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// A third each: `test …` (paid, delivered), `xxx …` (declined,
    /// cancelled), anything else (the payment participant flips a coin).
    Mixed,
    /// Only `test …`: every saga takes the full happy path.
    Test,
}

/// An HTTP client of the eso API.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    mix: Mix,
}

/// What a POST came to, short of an error.
#[derive(Debug, Clone, Copy)]
pub enum Posted {
    Accepted(Uuid),
    /// Turned away at once by the server's admission control.
    Shed,
}

/// The fields of `GET /orders/{id}` the bench reads.
#[derive(Debug, Deserialize)]
pub struct OrderView {
    pub status: String,
    pub updated_at: String,
}

impl OrderView {
    pub fn is_terminal(&self) -> bool {
        TERMINAL.contains(&self.status.as_str())
    }

    /// `updated_at` (RFC 3339) in µs since the epoch.
    pub fn updated_at_us(&self) -> Option<i64> {
        let t = time::OffsetDateTime::parse(&self.updated_at, &time::format_description::well_known::Rfc3339).ok()?;
        i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
    }
}

impl Client {
    pub fn new(base: &str, mix: Mix) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder().no_proxy().timeout(REQUEST_TIMEOUT).tcp_nodelay(true).build().context("building the HTTP client")?;
        Ok(Client { http, base: base.trim_end_matches('/').to_string(), mix })
    }

    pub fn description(&self, i: usize) -> String {
        match (self.mix, i % 3) {
            (Mix::Test, _) | (Mix::Mixed, 0) => format!("test bench order {i}"),
            (Mix::Mixed, 1) => format!("xxx bench order {i}"),
            (Mix::Mixed, _) => format!("bench order {i}"),
        }
    }

    /// `POST /orders`: the new saga's id once it is durable (201), or
    /// [`Posted::Shed`] when the server turned it away (`429`, or `503`
    /// with `Retry-After`) without taking it on.
    pub async fn create(&self, i: usize) -> anyhow::Result<Posted> {
        let body = json!({ "amount": 10.50, "description": self.description(i) });
        let response = self.http.post(format!("{}/orders", self.base)).json(&body).send().await.context("POST /orders")?;
        let status = response.status();
        let shed = status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || (status == reqwest::StatusCode::SERVICE_UNAVAILABLE && response.headers().contains_key(reqwest::header::RETRY_AFTER));
        let text = response.text().await.context("reading the POST answer")?;
        if shed {
            return Ok(Posted::Shed);
        }
        if !status.is_success() {
            bail!("POST /orders answered {status}: {}", text.chars().take(200).collect::<String>());
        }
        let answer: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("POST /orders answered {text:?}"))?;
        answer["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()).map(Posted::Accepted).with_context(|| format!("no id in {text:?}"))
    }

    /// `GET /orders/{id}`, held by the server up to `wait` while the saga runs.
    pub async fn order(&self, id: Uuid, wait: Duration) -> anyhow::Result<OrderView> {
        let response = self.http.get(format!("{}/orders/{id}?wait={}ms", self.base, wait.as_millis())).timeout(wait + REQUEST_TIMEOUT).send().await?;
        let status = response.status();
        if !status.is_success() {
            bail!("answered {status}");
        }
        Ok(response.json().await?)
    }

    /// `GET /metrics`, every series summed by metric name (labels dropped).
    /// Median time of `rounds` sequential GETs of `path` (the saga list's
    /// pages), in milliseconds.
    pub async fn time_get(&self, path: &str, rounds: usize) -> anyhow::Result<f64> {
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = std::time::Instant::now();
            self.http.get(format!("{}{path}", self.base)).send().await?.error_for_status()?.bytes().await?;
            samples.push(started.elapsed().as_micros() as u64);
        }
        Ok(crate::report::Latency::of(&mut samples).p50)
    }

    pub async fn metrics(&self) -> anyhow::Result<BTreeMap<String, f64>> {
        let text = self.http.get(format!("{}/metrics", self.base)).send().await?.error_for_status()?.text().await?;
        Ok(parse_metrics(&text))
    }
}

/// Every counter, gauge and untyped series of a Prometheus text exposition,
/// summed by name across labels. A histogram's or summary's `_sum` and
/// `_count` are series of their own here; buckets and quantiles are skipped.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    let Ok(scrape) = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))) else { return sums };
    for sample in scrape.samples {
        use prometheus_parse::Value;
        if let Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) = sample.value {
            *sums.entry(sample.metric).or_insert(0.0) += v;
        }
    }
    sums
}

#[derive(Debug, Clone, Copy)]
pub enum Shape {
    Closed { concurrency: usize },
    Open { rate: f64 },
}

/// How long a point runs: a number of sagas, a duration, or whichever ends first.
#[derive(Debug, Clone, Copy)]
pub struct Length {
    pub sagas: Option<usize>,
    pub duration: Option<Duration>,
}

/// What one point measured, before it is summarised.
pub struct Raw {
    pub attempted: usize,
    pub post_us: Vec<u64>,
    /// How long each shed POST took to be answered.
    pub shed_us: Vec<u64>,
    pub post_errors: usize,
    pub first_post_error: Option<String>,
    pub started_wall_us: i64,
    pub elapsed: Duration,
    /// The load alone, without the wait for the last sagas.
    pub load_elapsed: Duration,
    pub seen: Seen,
}

#[derive(Default)]
struct Posts {
    post_us: Vec<u64>,
    shed_us: Vec<u64>,
    errors: usize,
    first_error: Option<String>,
}

impl Posts {
    fn record(log: &Mutex<Posts>, result: &anyhow::Result<Posted>, since: Instant) {
        let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(Posted::Accepted(_)) => log.post_us.push(since.elapsed().as_micros() as u64),
            Ok(Posted::Shed) => log.shed_us.push(since.elapsed().as_micros() as u64),
            Err(e) => {
                log.errors += 1;
                if log.first_error.is_none() {
                    log.first_error = Some(format!("{e:#}"));
                }
            }
        }
    }
}

/// One point's load and how to wait for it.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub shape: Shape,
    pub length: Length,
    pub poll: PollSettings,
    /// How long to wait for the last sagas once the load ends.
    pub drain: Duration,
    /// Open loop: POSTs in flight at most (past that the bench, not the
    /// server, holds the queue; latency still counts from when each was due).
    pub max_posts: usize,
}

/// Runs one point: the load; then `after_load` (e.g. resume paused
/// participants); then waits up to `plan.drain` for every accepted saga to
/// be seen terminal.
pub async fn run(client: &Client, plan: Plan, after_load: impl FnOnce()) -> Raw {
    let Plan { shape, length, poll, drain, max_posts } = plan;
    let tracker = Tracker::new(poll);
    let poller = tokio::spawn(tracker.clone().run(client.clone()));
    let posts = Arc::new(Mutex::new(Posts::default()));
    let started = Instant::now();
    let started_wall_us = now_us();
    let attempted = match shape {
        Shape::Closed { concurrency } => closed(client, &tracker, &posts, concurrency, length, drain).await,
        Shape::Open { rate } => open(client, &tracker, &posts, (rate, max_posts), length, (started, started_wall_us)).await,
    };
    let load_elapsed = started.elapsed();
    after_load();
    tracker.close();
    let poller_abort = poller.abort_handle();
    if tokio::time::timeout(drain, poller).await.is_err() {
        poller_abort.abort();
    }
    let seen = tracker.take();
    let posts = std::mem::take(&mut *posts.lock().unwrap_or_else(PoisonError::into_inner));
    Raw {
        attempted,
        post_us: posts.post_us,
        shed_us: posts.shed_us,
        post_errors: posts.errors,
        first_post_error: posts.first_error,
        started_wall_us,
        elapsed: started.elapsed(),
        load_elapsed,
        seen,
    }
}

/// `concurrency` clients, each: POST, wait until its saga is terminal, repeat.
async fn closed(client: &Client, tracker: &Arc<Tracker>, posts: &Arc<Mutex<Posts>>, concurrency: usize, length: Length, saga_timeout: Duration) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = length.duration.map(|d| Instant::now() + d);
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (client, tracker, posts, next) = (client.clone(), tracker.clone(), posts.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if length.sagas.is_some_and(|n| i >= n) || deadline.is_some_and(|d| Instant::now() >= d) {
                    return;
                }
                let sent = Instant::now();
                let sent_wall = now_us();
                let result = client.create(i).await;
                Posts::record(&posts, &result, sent);
                match result {
                    Ok(Posted::Accepted(id)) => {
                        let done = tracker.watch(id, sent_wall);
                        // Not terminal in time: counted as unfinished; go on.
                        let _ = tokio::time::timeout(saga_timeout, done).await;
                    }
                    Ok(Posted::Shed) | Err(_) => tokio::time::sleep(ERROR_PAUSE).await,
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let issued = next.load(Ordering::Relaxed);
    // Each client drew one index past the end before it stopped.
    let attempted = issued.saturating_sub(concurrency.max(1));
    length.sagas.map_or(attempted, |n| attempted.min(n))
}

/// POST `i` is due at `i / rate` seconds, sent then whether or not earlier
/// ones were answered.
async fn open(
    client: &Client,
    tracker: &Arc<Tracker>,
    posts: &Arc<Mutex<Posts>>,
    (rate, max_posts): (f64, usize),
    length: Length,
    (t0, wall0): (Instant, i64),
) -> usize {
    let in_flight = Arc::new(Semaphore::new(max_posts.max(1)));
    let mut tasks = JoinSet::new();
    let mut i = 0usize;
    loop {
        let offset = Duration::from_secs_f64(i as f64 / rate.max(f64::MIN_POSITIVE));
        if length.sagas.is_some_and(|n| i >= n) || length.duration.is_some_and(|d| offset >= d) {
            break;
        }
        let due = t0 + offset;
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
        let (client, tracker, posts) = (client.clone(), tracker.clone(), posts.clone());
        let due_wall = wall0 + offset.as_micros() as i64;
        tasks.spawn(async move {
            let result = client.create(i).await;
            Posts::record(&posts, &result, due);
            // A shed POST is not sent again: the open loop measures what
            // the server takes of a load that does not wait for it.
            if let Ok(Posted::Accepted(id)) = result {
                drop(tracker.watch(id, due_wall));
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
        i += 1;
    }
    while tasks.join_next().await.is_some() {}
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_series_by_name() {
        let text = "# TYPE eso_commit_batch_size histogram\n\
                    eso_commit_batch_size_bucket{le=\"1\"} 3\n\
                    eso_commit_batch_size_sum 42.5\n\
                    eso_commit_batch_size_count 7\n\
                    eso_command_retries_total{state=\"payment\"} 2\n\
                    eso_command_retries_total{state=\"delivery\"} 1\n";
        let m = parse_metrics(text);
        assert_eq!(m.get("eso_commit_batch_size_sum"), Some(&42.5));
        assert_eq!(m.get("eso_commit_batch_size_count"), Some(&7.0));
        assert_eq!(m.get("eso_command_retries_total"), Some(&3.0));
    }

    #[test]
    fn reads_updated_at_to_the_microsecond() {
        let view = OrderView { status: "delivered".into(), updated_at: "2026-01-02T03:04:05.123456Z".into() };
        assert!(view.is_terminal());
        assert_eq!(view.updated_at_us().map(|us| us % 1_000_000), Some(123_456));
    }

    #[test]
    fn mixed_descriptions_take_every_path() {
        let client = Client::new("http://127.0.0.1:1", Mix::Mixed).unwrap_or_else(|e| panic!("{e}"));
        let d: Vec<String> = (0..3).map(|i| client.description(i)).collect();
        assert!(d[0].starts_with("test") && d[1].starts_with("xxx") && !d[2].starts_with("test") && !d[2].starts_with("xxx"));
    }
}
