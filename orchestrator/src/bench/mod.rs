//! `eso bench`: a load generator for eso, in the workspace so it builds
//! and runs wherever eso does.
//!
//! It starts order sagas over HTTP (closed loop at a concurrency, or open
//! loop at a rate), follows each to its terminal status, and reports
//! completed sagas per second, POST→terminal and POST latency, errors,
//! and each eso process's memory and CPU per saga. It can start the server
//! itself (`--spawn embedded|postgres`, child processes of this executable,
//! each run on its own database and NATS), and it measures the machine's
//! ceiling (Postgres and SQLite single-row commits per second, NATS round
//! trips per second) in the same run so figures compare across machines.
//! Results go to stdout as a table and to `--json FILE`; see
//! `docs/benchmarks.md` for how to read them and `scripts/plot_bench.py`
//! for the chart.
//!
//! Files: `load.rs` the load shapes and the HTTP client, `poller.rs`
//! how completion is detected, `target.rs` the processes under test,
//! `ceiling.rs` the machine's ceiling, `procfs.rs` memory and CPU readings,
//! `report.rs` the JSON and the table.

mod ceiling;
mod load;
mod poller;
mod procfs;
mod report;
mod target;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

pub use load::Mix;
use load::{Client, Length, Plan, Shape};
use poller::PollSettings;
use report::{Ceiling, Errors, Machine, Point, PollStats, ProcessMemory, ProcessPoint, Ratios, ServerStats, Summary, TargetSummary};
pub use target::SpawnMode;
use target::{SpawnOptions, Target};

const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Between points, so one point's tail (relay, timers) is not the next one's load.
const SETTLE: Duration = Duration::from_millis(500);

/// Load-test eso and report throughput, latency, memory and the machine's ceiling.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    eso bench --spawn embedded,postgres --concurrency 1,16,64 --rate 100,200 --json bench.json\n  \
    eso bench --url http://127.0.0.1:3000 --pid $(pgrep -x eso) --concurrency 8 --sagas 2000 --no-ceiling")]
pub struct BenchArgs {
    /// Load a server that is already running, at this base URL.
    #[arg(long, conflicts_with = "spawn", required_unless_present = "spawn")]
    pub url: Option<String>,
    /// Start the server as child processes instead: `embedded` (SQLite,
    /// in-process bus), `postgres` (fresh database, private nats-server,
    /// participants as processes), or both, comma-separated, in turn.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub spawn: Vec<SpawnMode>,
    /// Closed-loop points: this many clients, each with one saga in flight
    /// (comma-separated for a sweep). Default 8 when --rate is not given.
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Open-loop points: sagas started per second, whatever the server does
    /// (comma-separated for a sweep).
    #[arg(long, value_delimiter = ',')]
    pub rate: Vec<f64>,
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
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub admin_url: String,
    /// Use this NATS (with JetStream) instead of starting a private nats-server.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// The nats-server binary (default: /usr/sbin/nats-server or PATH).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// Saga definitions for spawned servers (default: `sagas/` found from here or the executable).
    #[arg(long)]
    pub sagas_dir: Option<PathBuf>,
    /// Export spawned processes' traces to this OTLP/gRPC endpoint.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// Export traces to an OTLP receiver inside the bench (needs `--features bench-receiver`).
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
    /// Shortest time between two looks at one saga.
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// GET /orders/{id} requests the poller has in flight at most.
    #[arg(long, default_value_t = 8)]
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

/// Runs the benchmark; fails (after printing and writing every figure) if a
/// saga never finished, a POST failed, or a spawned process died.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let shapes = shapes(&args)?;
    let length = Length { sagas: args.sagas, duration: args.duration.or(if args.sagas.is_none() { Some(DEFAULT_DURATION) } else { None }) };
    if args.hold && (args.spawn.contains(&SpawnMode::Embedded) || args.url.is_some()) {
        bail!("--hold pauses participant processes: only with --spawn postgres");
    }
    if args.url.is_some() && (args.otlp_endpoint.is_some() || args.with_receiver) {
        bail!("--otlp-endpoint and --with-receiver configure spawned processes; with --url, set OTEL_EXPORTER_OTLP_ENDPOINT on the server yourself");
    }
    let exe = std::env::current_exe().context("finding the eso executable")?;
    let nats_server = args.nats_server.clone().unwrap_or_else(target::find_nats_server);
    let started_at = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();

    let mut machine = Machine::probe();
    if (args.spawn.contains(&SpawnMode::Postgres) || !args.no_ceiling)
        && let Ok((version, settings)) = ceiling::postgres_version(&args.admin_url).await
    {
        machine.postgres = Some(version);
        machine.postgres_settings = Some(settings);
    }
    machine.nats_server = std::process::Command::new(&nats_server)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty());
    println!(
        "machine: {} CPUs ({}), {} MiB, kernel {}; {}; {}; eso {} build of {}",
        machine.nproc,
        machine.cpu_model,
        machine.memory_mib,
        machine.kernel,
        machine.postgres.as_ref().map_or("PostgreSQL: n/a".to_string(), |v| format!("{v} ({})", machine.postgres_settings.as_deref().unwrap_or_default())),
        machine.nats_server.as_deref().unwrap_or("nats-server: n/a"),
        machine.eso_profile,
        machine.source.as_deref().unwrap_or("unknown source")
    );
    if machine.eso_profile == "debug" {
        println!("note: a debug build; for figures to publish use `cargo build --release -p orchestrator` and target/release/eso");
    }

    let ceiling = if args.no_ceiling { None } else { Some(measure_ceiling(&args, &nats_server).await) };
    if let Some(c) = &ceiling {
        report::print_ceiling(c);
    }
    let receiver = Receiver::start(args.with_receiver).await?;
    let otlp_endpoint = args.otlp_endpoint.clone().or_else(|| receiver.endpoint());
    let opts = SpawnOptions {
        exe: exe.clone(),
        sagas_dir: args.sagas_dir.clone().or_else(|| target::find_sagas_dir(&exe)).unwrap_or_else(|| PathBuf::from("/nonexistent/eso-sagas")),
        admin_url: args.admin_url.clone(),
        nats_url: args.nats_url.clone(),
        nats_server,
        otlp_endpoint: otlp_endpoint.clone(),
        child_env: args.child_env.clone(),
        keep: args.keep,
    };

    let mut points = Vec::new();
    let mut targets = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    let specs: Vec<Option<SpawnMode>> = if args.spawn.is_empty() { vec![None] } else { args.spawn.iter().copied().map(Some).collect() };
    for spec in specs {
        let mut target = match spec {
            None => Target::attach(args.url.as_deref().unwrap_or_default(), &args.pids),
            Some(mode) => match Target::spawn(mode, &opts).await {
                Ok(t) => t,
                Err(e) => {
                    failure = Some(e.context(format!("starting the {} target", mode.name())));
                    break;
                }
            },
        };
        let spans_before = receiver.spans();
        let tracing = otlp_endpoint.is_some() && spec.is_some();
        println!(
            "\n{}: {} ({}), tracing {}",
            target.mode,
            target.url,
            if target.processes.is_empty() {
                "no --pid given: memory and CPU not reported".to_string()
            } else {
                target.processes.iter().map(|p| format!("{} pid {}", p.name, p.pid)).collect::<Vec<_>>().join(", ")
            },
            if tracing { otlp_endpoint.as_deref().unwrap_or("on") } else { "off" }
        );
        let result = run_target(&args, &mut target, &shapes, length, tracing, ceiling.as_ref(), &mut points).await;
        let processes = target
            .processes
            .iter()
            .map(|p| {
                let m = procfs::memory(p.pid);
                ProcessMemory { name: p.name.clone(), pid: p.pid, vm_hwm_mib: m.map(|m| report::mib(m.hwm_kib)), vm_rss_mib: m.map(|m| report::mib(m.rss_kib)) }
            })
            .collect();
        let (mode, url) = (target.mode.clone(), target.url.clone());
        target.stop().await;
        let spans_received = match (spans_before, receiver.spans()) {
            (Some(before), Some(after)) => Some(after - before),
            _ => None,
        };
        targets.push(TargetSummary { mode, url, otlp_endpoint: if tracing { otlp_endpoint.clone() } else { None }, spans_received, processes });
        if let Err(e) = result {
            failure = Some(e);
            break;
        }
    }

    let ok = failure.is_none() && !points.is_empty() && points.iter().all(point_ok);
    let summary = Summary {
        format_version: report::FORMAT_VERSION,
        started_at,
        command: std::env::args().map(|a| if a.contains(char::is_whitespace) { format!("{a:?}") } else { a }).collect::<Vec<_>>().join(" "),
        label: args.label.clone(),
        machine,
        ceiling,
        targets,
        points,
        ok,
    };
    report::print_summary(&summary);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&summary)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if !ok {
        bail!("benchmark failed: a point had unfinished sagas, failed POSTs or completed nothing (see the lines marked !)");
    }
    Ok(())
}

fn shapes(args: &BenchArgs) -> anyhow::Result<Vec<Shape>> {
    if args.concurrency.contains(&0) {
        bail!("--concurrency must be at least 1");
    }
    if args.rate.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
        bail!("--rate must be positive");
    }
    let concurrency = if args.concurrency.is_empty() && args.rate.is_empty() { vec![8] } else { args.concurrency.clone() };
    Ok(concurrency.into_iter().map(|c| Shape::Closed { concurrency: c }).chain(args.rate.iter().map(|&r| Shape::Open { rate: r })).collect())
}

fn point_ok(p: &Point) -> bool {
    p.unfinished == 0 && p.errors.post == 0 && p.completed > 0
}

async fn run_target(
    args: &BenchArgs,
    target: &mut Target,
    shapes: &[Shape],
    length: Length,
    tracing: bool,
    ceiling: Option<&Ceiling>,
    points: &mut Vec<Point>,
) -> anyhow::Result<()> {
    let client = Client::new(&target.url, args.mix)?;
    let poll = PollSettings { min_interval: args.poll_interval, parallel: args.poll_parallel };
    if args.warmup > 0 {
        let plan = Plan {
            shape: Shape::Closed { concurrency: 4 },
            length: Length { sagas: Some(args.warmup), duration: None },
            poll,
            drain: args.drain_timeout,
            max_posts: args.max_posts,
        };
        let raw = load::run(&client, plan, || {}).await;
        if raw.seen.finished.is_empty() || !raw.seen.unfinished_accepted_wall_us.is_empty() {
            bail!(
                "warm-up: {} of {} sagas finished ({} POST errors{}); is the server working?",
                raw.seen.finished.len(),
                raw.attempted,
                raw.post_errors,
                raw.first_post_error.map_or(String::new(), |e| format!(", first: {e}"))
            );
        }
        println!("warm-up: {} sagas", raw.seen.finished.len());
    }
    if let Some(db) = &target.database
        && let Err(e) = db.checkpoint().await
    {
        println!("note: CHECKPOINT before the points failed (not a superuser?): {e:#}");
    }
    report::print_header();
    for &shape in shapes {
        target.check_alive()?;
        let point = measure(args, target, &client, shape, length, poll, tracing, ceiling).await?;
        report::print_row(&point);
        points.push(point);
        tokio::time::sleep(SETTLE).await;
    }
    target.check_alive()
}

/// One point: CPU and metrics before, the load with memory sampling, then
/// the same readings after, summarised per completed saga.
#[allow(clippy::too_many_arguments)]
async fn measure(
    args: &BenchArgs,
    target: &mut Target,
    client: &Client,
    shape: Shape,
    length: Length,
    poll: PollSettings,
    tracing: bool,
    ceiling: Option<&Ceiling>,
) -> anyhow::Result<Point> {
    let procs = target.processes.clone();
    let others = other_cpu(target);
    let cpu_before: Vec<Option<f64>> = procs.iter().map(|p| procfs::cpu_seconds(p.pid)).collect();
    let others_before: Vec<Option<f64>> = others.iter().map(|o| o.cpu_seconds()).collect();
    let metrics_before = client.metrics().await.ok();
    let checkpoints_before = match &target.database {
        Some(db) => db.checkpoints().await,
        None => None,
    };
    let sampler = procfs::RssSampler::start(&procs);

    let plan = Plan { shape, length, poll, drain: args.drain_timeout, max_posts: args.max_posts };
    let hold = args.hold && matches!(shape, Shape::Open { .. });
    let participants = target.participants();
    if hold {
        target::signal(&participants, "STOP");
    }
    let mut raw = load::run(client, plan, || {
        if hold {
            target::signal(&participants, "CONT");
        }
    })
    .await;

    let peaks = sampler.finish().await;
    let metrics_after = client.metrics().await.ok();
    let checkpoints_after = match &target.database {
        Some(db) => db.checkpoints().await,
        None => None,
    };
    let completed = raw.seen.finished.len();
    let per_saga = |delta: f64| if completed > 0 { delta * 1000.0 / completed as f64 } else { 0.0 };
    let processes = procs
        .iter()
        .zip(cpu_before)
        .map(|(p, before)| {
            let m = procfs::memory(p.pid);
            ProcessPoint {
                name: p.name.clone(),
                pid: p.pid,
                peak_rss_mib: peaks.get(&p.pid).map(|&kib| report::mib(kib)),
                vm_hwm_mib: m.map(|m| report::mib(m.hwm_kib)),
                vm_rss_mib: m.map(|m| report::mib(m.rss_kib)),
                cpu_ms_per_saga: before.zip(procfs::cpu_seconds(p.pid)).map(|(b, a)| per_saga(a - b)),
            }
        })
        .collect();
    let other_cpu_ms_per_saga = others
        .iter()
        .zip(others_before)
        .filter_map(|(o, before)| Some((o.name().to_string(), per_saga(o.cpu_seconds()? - before?))))
        .collect();

    let last_terminal = raw.seen.finished.iter().map(|f| f.terminal_wall_us).max();
    let seconds = match last_terminal {
        Some(t) if t > raw.started_wall_us => (t - raw.started_wall_us) as f64 / 1e6,
        _ => raw.elapsed.as_secs_f64(),
    };
    let completed_per_s = if seconds > 0.0 { completed as f64 / seconds } else { 0.0 };
    let mut latencies: Vec<u64> = raw.seen.finished.iter().map(|f| f.latency_us).collect();
    let mut seen: Vec<u64> = raw.seen.finished.iter().map(|f| f.seen_us).collect();
    let mut detects: Vec<u64> = raw.seen.finished.iter().map(|f| f.detect_us).collect();
    let mut outcomes = BTreeMap::new();
    let mut by_outcome: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for f in &raw.seen.finished {
        *outcomes.entry(f.status.clone()).or_insert(0) += 1;
        by_outcome.entry(f.status.clone()).or_default().push(f.latency_us);
    }
    let latency_by_outcome_ms = by_outcome.into_iter().map(|(status, mut l)| (status, report::Latency::of(&mut l))).collect();
    let (concurrency, rate, kind) = match shape {
        Shape::Closed { concurrency } => (Some(concurrency), None, "closed"),
        Shape::Open { rate } => (None, Some(rate), "open"),
    };
    Ok(Point {
        mode: target.mode.clone(),
        tracing,
        kind,
        hold,
        concurrency,
        rate,
        attempted: raw.attempted,
        accepted: raw.post_us.len(),
        completed,
        unfinished: raw.seen.unfinished_accepted_wall_us.len(),
        errors: Errors {
            post: raw.post_errors,
            poll: raw.seen.errors as usize,
            first: raw.first_post_error.take().or_else(|| raw.seen.first_error.take()),
        },
        seconds,
        completed_per_s,
        latency_ms: report::Latency::of(&mut latencies),
        latency_seen_ms: report::Latency::of(&mut seen),
        post_ms: report::Latency::of(&mut raw.post_us),
        outcomes,
        latency_by_outcome_ms,
        peak_in_flight: raw.seen.peak_in_flight(),
        poll: PollStats {
            gets: raw.seen.gets,
            gets_per_saga: if completed > 0 { raw.seen.gets as f64 / completed as f64 } else { 0.0 },
            detect_ms_p50: report::Latency::of(&mut detects).p50,
        },
        processes,
        other_cpu_ms_per_saga,
        pg_checkpoints: checkpoints_before.zip(checkpoints_after).map(|(b, a)| a - b),
        server: metrics_before.zip(metrics_after).map(|(b, a)| server_stats(&b, &a, completed)),
        ratios: Ratios::of(completed_per_s, ceiling),
    })
}

/// Processes that are not targets but do the work too, for CPU per saga.
#[derive(Debug, Clone, Copy)]
enum Other {
    /// This process: the load and the poller.
    Bench,
    /// Every `postgres` process on the machine (the backends eso uses).
    Postgres,
}

impl Other {
    fn name(self) -> &'static str {
        match self {
            Other::Bench => "bench",
            Other::Postgres => "postgres",
        }
    }

    fn cpu_seconds(self) -> Option<f64> {
        match self {
            Other::Bench => procfs::cpu_seconds(std::process::id()),
            Other::Postgres => procfs::cpu_seconds_by_name("postgres"),
        }
    }
}

fn other_cpu(target: &Target) -> Vec<Other> {
    if target.database.is_some() { vec![Other::Bench, Other::Postgres] } else { vec![Other::Bench] }
}

fn server_stats(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, completed: usize) -> ServerStats {
    let delta = |name: &str| after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let commits = delta("eso_commit_batch_size_count");
    ServerStats {
        commits_per_saga: ratio(commits, completed as f64),
        appends_per_commit: ratio(delta("eso_commit_batch_size_sum"), commits),
        commit_ms_mean: ratio(delta("eso_commit_seconds_sum") * 1000.0, delta("eso_commit_seconds_count")),
        events_published_per_saga: ratio(delta("eso_outbox_published_total"), completed as f64),
        command_retries: delta("eso_command_retries_total"),
        command_timeouts: delta("eso_command_timeouts_total"),
        append_conflicts: delta("eso_append_conflicts_total"),
    }
}

async fn measure_ceiling(args: &BenchArgs, nats_server: &std::path::Path) -> Ceiling {
    let seconds = args.ceiling_duration;
    let mut c = Ceiling {
        seconds: seconds.as_secs_f64(),
        pg_connections: args.ceiling_pg_connections,
        nats_requesters: args.ceiling_nats_requesters,
        ..Ceiling::default()
    };
    println!("measuring the ceiling ({} s each: postgres, sqlite, nats)…", c.seconds);
    match ceiling::pg_inserts(&args.admin_url, args.ceiling_pg_connections, seconds).await {
        Ok(rate) => c.pg_inserts_per_s = Some(rate),
        Err(e) => c.notes.push(format!("postgres not measured: {e:#}")),
    }
    let dir = target::scratch_dir("ceiling");
    let dir = match dir {
        Ok(d) => d,
        Err(e) => {
            c.notes.push(format!("no scratch directory: {e:#}"));
            return c;
        }
    };
    match ceiling::sqlite_inserts(&dir, seconds).await {
        Ok(rate) => c.sqlite_inserts_per_s = Some(rate),
        Err(e) => c.notes.push(format!("sqlite not measured: {e:#}")),
    }
    let mut private = None;
    let url = match &args.nats_url {
        Some(url) => Some(url.clone()),
        None => match target::NatsServer::start(nats_server, &dir.join("nats")).await {
            Ok(n) => {
                let url = n.url.clone();
                private = Some(n);
                Some(url)
            }
            Err(e) => {
                c.notes.push(format!("nats not measured: {e:#}"));
                None
            }
        },
    };
    if let Some(url) = url {
        match ceiling::nats_round_trips(&url, args.ceiling_nats_requesters, seconds).await {
            Ok((rate, _)) => c.nats_round_trips_per_s = Some(rate),
            Err(e) => c.notes.push(format!("nats not measured: {e:#}")),
        }
    }
    if let Some(mut n) = private {
        n.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    c
}

/// The in-process OTLP receiver of `--with-receiver`, when built in.
struct Receiver {
    #[cfg(feature = "bench-receiver")]
    inner: Option<observability::testing::OtlpReceiver>,
}

impl Receiver {
    async fn start(wanted: bool) -> anyhow::Result<Receiver> {
        #[cfg(feature = "bench-receiver")]
        {
            let inner = if wanted { Some(observability::testing::OtlpReceiver::start().await?) } else { None };
            Ok(Receiver { inner })
        }
        #[cfg(not(feature = "bench-receiver"))]
        {
            if wanted {
                bail!("--with-receiver needs eso built with `--features bench-receiver` (cargo build --release -p orchestrator --features bench-receiver)");
            }
            Ok(Receiver {})
        }
    }

    fn endpoint(&self) -> Option<String> {
        #[cfg(feature = "bench-receiver")]
        {
            self.inner.as_ref().map(|r| r.endpoint())
        }
        #[cfg(not(feature = "bench-receiver"))]
        {
            None
        }
    }

    /// Spans received so far.
    fn spans(&self) -> Option<usize> {
        #[cfg(feature = "bench-receiver")]
        {
            self.inner.as_ref().map(|r| r.spans().len())
        }
        #[cfg(not(feature = "bench-receiver"))]
        {
            None
        }
    }
}
