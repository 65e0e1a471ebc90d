//! `eso-bench`: a load generator for eso, a workspace member of its own so
//! it builds and runs wherever eso does without shipping in the server.
//!
//! It starts order sagas over HTTP (closed loop at a concurrency, or open
//! loop at a rate), follows each to its terminal status, and reports
//! completed sagas per second, POST→terminal and POST latency, errors,
//! and each eso process's memory and CPU per saga. It can start the server
//! itself (`--spawn embedded|postgres`, child processes of the `eso`
//! binary, `--eso PATH` or the one beside this executable, each run on its
//! own database and NATS, from the test kit `testkit`), and it measures the machine's
//! ceiling (Postgres and SQLite single-row commits per second, NATS round
//! trips per second) in the same run so figures compare across machines.
//! Results go to stdout as a table and to `--json FILE`; see
//! `docs/benchmarks.md` for how to read them and `scripts/plot_bench.py`
//! for the chart.
//!
//! Files: `args.rs` the command line, `load.rs` the load shapes and the
//! HTTP client, `poller.rs` how completion is detected, `point.rs` one
//! point's readings and summary, `target.rs` the processes under test,
//! `ceiling.rs` the machine's ceiling, `procfs.rs` memory and CPU
//! readings, `report.rs` the JSON and the table.

mod args;
mod bytes;
mod ceiling;
mod load;
mod point;
mod poller;
mod prefill;
mod procfs;
mod report;
mod target;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use args::BenchArgs;
use load::{Client, Length, Plan, Shape};
use poller::PollSettings;
use report::{Ceiling, Machine, Point, ProcessMemory, Summary, TargetSummary};
use target::{SpawnMode, SpawnOptions, Target};

/// Between points, so one point's tail (relay, timers) is not the next one's load.
const SETTLE: Duration = Duration::from_millis(500);

fn main() -> std::process::ExitCode {
    let args = BenchArgs::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("eso-bench: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eso-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the benchmark; fails (after printing and writing every figure) if a
/// saga never finished, a POST failed, or a spawned process died.
async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let shapes = args.shapes()?;
    let length = args.length();
    if args.prefill_events.is_some() && (args.spawn.contains(&SpawnMode::Embedded) || args.url.is_some()) {
        bail!("--prefill-events fills a Postgres database the bench made: only with --spawn postgres");
    }
    if args.hold && (args.spawn.contains(&SpawnMode::Embedded) || args.url.is_some()) {
        bail!("--hold pauses participant processes: only with --spawn postgres");
    }
    if args.poll_wait > orchestrator::api::MAX_WAIT || args.poll_wait.is_zero() {
        bail!("--poll-wait must be more than 0 and at most {} (the server's limit for ?wait=)", humantime::format_duration(orchestrator::api::MAX_WAIT));
    }
    if args.url.is_some() && (args.otlp_endpoint.is_some() || args.with_receiver) {
        bail!("--otlp-endpoint and --with-receiver configure spawned processes; with --url, set OTEL_EXPORTER_OTLP_ENDPOINT on the server yourself");
    }
    let exe = if args.spawn.is_empty() { PathBuf::from("eso") } else { target::find_eso(args.eso.as_deref())? };
    let nats_server = args.nats_server.clone().unwrap_or_else(testkit::find_nats_server);
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
        println!("note: a debug build; for figures to publish use `cargo build --release -p eso -p eso-bench` and target/release/eso-bench");
    }

    let ceiling = if args.no_ceiling { None } else { Some(ceiling::measure(&args, &nats_server).await) };
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

    let ok = failure.is_none() && !points.is_empty() && points.iter().all(point::point_ok);
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
    let poll = PollSettings { wait: args.poll_wait, min_interval: args.poll_interval, parallel: args.poll_parallel };
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
    if let Some(events) = args.prefill_events {
        prefill::prefill(target, events).await?;
    }
    if let Some(db) = &target.database
        && let Err(e) = target::checkpoint(db).await
    {
        println!("note: CHECKPOINT before the points failed (not a superuser?): {e:#}");
    }
    report::print_header();
    let first = points.len();
    for &shape in shapes {
        target.check_alive()?;
        let point = point::measure(args, target, &client, shape, length, poll, tracing, ceiling).await?;
        report::print_row(&point);
        points.push(point);
        tokio::time::sleep(SETTLE).await;
    }
    if !args.overload.is_empty() {
        let peak = points[first..].iter().filter(|p| p.kind == "closed").map(|p| p.completed_per_s).fold(0.0, f64::max);
        if peak <= 0.0 {
            bail!("--overload: the closed-loop points completed nothing, so there is no peak to multiply");
        }
        println!("  overload: closed-loop peak {peak:.1} sagas/s");
        for &factor in &args.overload {
            target.check_alive()?;
            let shape = Shape::Open { rate: (peak * factor).round().max(1.0) };
            let mut point = point::measure(args, target, &client, shape, length, poll, tracing, ceiling).await?;
            point.peak_factor = Some(factor);
            report::print_row(&point);
            points.push(point);
            // A backlog's tail (relay, timers) must not be the next point's load.
            tokio::time::sleep(SETTLE * 4).await;
        }
    }
    // The list's first pages, as an operator's console reads them: with
    // --prefill-events, whether history slows them.
    for path in ["/sagas?definition=order&limit=50", "/sagas?definition=order&status=delivered&limit=50", "/sagas?definition=order&terminal=false&limit=50"] {
        match client.time_get(path, 20).await {
            Ok(ms) => println!("  list: GET {path} p50 {ms:.2} ms (20 in turn, after the points)"),
            Err(e) => println!("  list: GET {path} failed: {e:#}"),
        }
    }
    target.check_alive()
}

/// The in-process OTLP receiver of `--with-receiver`, when built in.
struct Receiver {
    #[cfg(feature = "with-receiver")]
    inner: Option<observability::testing::OtlpReceiver>,
}

impl Receiver {
    async fn start(wanted: bool) -> anyhow::Result<Receiver> {
        #[cfg(feature = "with-receiver")]
        {
            let inner = if wanted { Some(observability::testing::OtlpReceiver::counting().await?) } else { None };
            Ok(Receiver { inner })
        }
        #[cfg(not(feature = "with-receiver"))]
        {
            if wanted {
                bail!(
                    "--with-receiver needs eso-bench built with `--features with-receiver` (cargo build --release -p eso -p eso-bench --features eso-bench/with-receiver)"
                );
            }
            Ok(Receiver {})
        }
    }

    fn endpoint(&self) -> Option<String> {
        #[cfg(feature = "with-receiver")]
        {
            self.inner.as_ref().map(|r| r.endpoint())
        }
        #[cfg(not(feature = "with-receiver"))]
        {
            None
        }
    }

    /// Spans received so far.
    fn spans(&self) -> Option<usize> {
        #[cfg(feature = "with-receiver")]
        {
            self.inner.as_ref().map(observability::testing::OtlpReceiver::received)
        }
        #[cfg(not(feature = "with-receiver"))]
        {
            None
        }
    }
}
