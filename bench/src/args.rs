//! The `eso-bench` command line, and the points and lengths it asks for.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;

use crate::load::{Length, Mix, Shape};
use crate::target::SpawnMode;

/// A point's length when neither --sagas nor --duration is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// Load-test eso and report throughput, latency, memory and the machine's ceiling.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "eso-bench",
    version,
    after_help = "Examples:\n  \
    eso-bench --spawn embedded,postgres --concurrency 1,16,64 --rate 100,200 --json bench.json\n  \
    eso-bench --url http://127.0.0.1:3000 --pid $(pgrep -x eso) --concurrency 8 --sagas 2000 --no-ceiling"
)]
pub struct BenchArgs {
    /// Load a server that is already running, at this base URL.
    #[arg(long, conflicts_with = "spawn", required_unless_present = "spawn")]
    pub url: Option<String>,
    /// Start the server as child processes instead: `embedded` (SQLite,
    /// in-process bus), `postgres` (fresh database, private nats-server,
    /// participants as processes), or both, comma-separated, in turn.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub spawn: Vec<SpawnMode>,
    /// The `eso` binary --spawn starts (default: the `eso` beside this
    /// executable, e.g. target/release/eso beside target/release/eso-bench).
    #[arg(long)]
    pub eso: Option<PathBuf>,
    /// Closed-loop points: this many clients, each with one saga in flight
    /// (comma-separated for a sweep). Default 8 when --rate is not given.
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Open-loop points: sagas started per second, whatever the server does
    /// (comma-separated for a sweep).
    #[arg(long, value_delimiter = ',')]
    pub rate: Vec<f64>,
    /// Overload points: after the closed-loop points, open-loop points at
    /// these multiples of the target's closed-loop peak (the best
    /// `sagas/s` of its --concurrency points), e.g. `0.5,1,2,4`. Shed
    /// POSTs (`429`) are counted apart and not sent again.
    #[arg(long, value_delimiter = ',')]
    pub overload: Vec<f64>,
    /// Sagas per point (with --duration too: whichever ends first).
    #[arg(long)]
    pub sagas: Option<usize>,
    /// Time per point, e.g. `10s` (the default without --sagas).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Order descriptions: `mixed` (test/xxx/other: every saga path) or `test` (all delivered).
    #[arg(long, value_enum, default_value = "mixed")]
    pub mix: Mix,
    /// With --url: pids of the server's processes, to report their memory and CPU.
    #[arg(long = "pid", value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Postgres server for --spawn postgres and the ceiling (a database is created on it per run).
    #[arg(long, default_value = testkit::ADMIN_URL_DEFAULT)]
    pub admin_url: String,
    /// Use this NATS (with JetStream) instead of starting a private nats-server.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// The nats-server binary (default: /usr/sbin/nats-server or PATH).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// Saga definitions for spawned servers (default: `sagas/definitions/` found from here or the executable).
    #[arg(long)]
    pub sagas_dir: Option<PathBuf>,
    /// Export spawned processes' traces to this OTLP/gRPC endpoint.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// Export traces to an OTLP receiver inside the bench (needs eso-bench built with `--features with-receiver`).
    #[arg(long, conflicts_with = "otlp_endpoint")]
    pub with_receiver: bool,
    /// Extra environment for spawned processes, e.g. `ESO_DB_POOL=32` (repeatable).
    #[arg(long = "child-env", value_parser = parse_key_value)]
    pub child_env: Vec<(String, String)>,
    /// Skip measuring the machine's ceiling.
    #[arg(long)]
    pub no_ceiling: bool,
    /// Length of each ceiling measurement.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub ceiling_duration: Duration,
    #[arg(long, default_value_t = 8)]
    pub ceiling_pg_connections: usize,
    #[arg(long, default_value_t = 16)]
    pub ceiling_nats_requesters: usize,
    /// Sagas run (at concurrency 4) before the first point, not reported.
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// How long the server may hold each `GET /orders/{id}?wait=` while
    /// the saga runs (at most 30s).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub poll_wait: Duration,
    /// Between a GET that found the saga still running and the next.
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// GET /orders/{id} requests the poller has in flight at most (each
    /// holds a connection while the server waits).
    #[arg(long, default_value_t = 256)]
    pub poll_parallel: usize,
    /// Open loop: POSTs in flight at most (each is a connection). A POST
    /// due while this many are unanswered waits in the bench, and its
    /// latency still counts from when it was due.
    #[arg(long, default_value_t = 1024)]
    pub max_posts: usize,
    /// Open-loop points with --spawn postgres: pause the participants
    /// (SIGSTOP) while the POSTs go out and resume them after, so every
    /// saga of the point is in flight at once (memory with a backlog).
    #[arg(long)]
    pub hold: bool,
    /// With --spawn postgres: before the points, store this many events of
    /// finished sagas (copies of a warm-up order), to measure a store with
    /// a long history against an empty one (e.g. `10000000`).
    #[arg(long)]
    pub prefill_events: Option<u64>,
    /// How long a point waits for its last sagas before counting them unfinished.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Free text stored in the JSON (e.g. `tracing on`).
    #[arg(long)]
    pub label: Option<String>,
    /// Keep the temporary directories (logs) and databases of spawned servers.
    #[arg(long)]
    pub keep: bool,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

impl BenchArgs {
    /// The points to run: closed-loop ones first, then open-loop ones.
    pub(super) fn shapes(&self) -> anyhow::Result<Vec<Shape>> {
        if self.concurrency.contains(&0) {
            bail!("--concurrency must be at least 1");
        }
        if self.rate.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
            bail!("--rate must be positive");
        }
        if self.overload.iter().any(|f| !(f.is_finite() && *f > 0.0 && *f <= 100.0)) {
            bail!("--overload factors must be above 0 and at most 100");
        }
        if !self.overload.is_empty() && self.concurrency.is_empty() {
            bail!("--overload needs --concurrency: the closed-loop points measure the peak it multiplies");
        }
        let concurrency = if self.concurrency.is_empty() && self.rate.is_empty() { vec![8] } else { self.concurrency.clone() };
        Ok(concurrency.into_iter().map(|c| Shape::Closed { concurrency: c }).chain(self.rate.iter().map(|&r| Shape::Open { rate: r })).collect())
    }

    pub(super) fn length(&self) -> Length {
        Length { sagas: self.sagas, duration: self.duration.or(if self.sagas.is_none() { Some(DEFAULT_DURATION) } else { None }) }
    }
}
