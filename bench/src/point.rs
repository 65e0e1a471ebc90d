//! One point of the benchmark: readings before, the load with memory
//! sampling, readings after, and the summary per completed saga.

use std::collections::BTreeMap;

use crate::args::BenchArgs;
use crate::load::{self, Client, Length, Plan, Shape};
use crate::poller::PollSettings;
use crate::procfs;
use crate::report::{self, Ceiling, Errors, Point, PollStats, ProcessPoint, Ratios, ServerStats};
use crate::target::{self, Target};

/// Whether a point counts as a success: every saga finished, no POST failed.
pub(super) fn point_ok(p: &Point) -> bool {
    p.unfinished == 0 && p.errors.post == 0 && p.completed > 0
}

/// One point: CPU and metrics before, the load with memory sampling, then
/// the same readings after, summarised per completed saga.
#[allow(clippy::too_many_arguments)]
pub(super) async fn measure(
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
        Some(db) => target::checkpoints(db).await,
        None => None,
    };
    let bytes_before = match &target.probe {
        Some(probe) => probe.read().await.map_err(|e| println!("note: cannot read the store's size: {e:#}")).ok(),
        None => None,
    };
    let sampler = procfs::RssSampler::start(&procs);

    let plan = Plan { shape, length, poll, drain: args.drain_timeout, max_posts: args.max_posts };
    let hold = args.hold && matches!(shape, Shape::Open { .. });
    let participants = target.participants();
    if hold {
        testkit::signal(&participants, testkit::Signal::SIGSTOP);
    }
    let mut raw = load::run(client, plan, || {
        if hold {
            testkit::signal(&participants, testkit::Signal::SIGCONT);
        }
    })
    .await;

    let peaks = sampler.finish().await;
    let metrics_after = client.metrics().await.ok();
    let checkpoints_after = match &target.database {
        Some(db) => target::checkpoints(db).await,
        None => None,
    };
    let completed = raw.seen.finished.len();
    let bytes = match (&target.probe, bytes_before) {
        (Some(probe), Some(before)) => probe.since(before, completed).await.map_err(|e| println!("note: cannot read the store's size: {e:#}")).ok(),
        _ => None,
    };
    let per_saga = |delta: f64| if completed > 0 { delta * 1000.0 / completed as f64 } else { 0.0 };
    let processes: Vec<ProcessPoint> = procs
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
    let other_cpu_ms_per_saga: BTreeMap<String, f64> =
        others.iter().zip(others_before).filter_map(|(o, before)| Some((o.name().to_string(), per_saga(o.cpu_seconds()? - before?)))).collect();
    // The system's cost: every process of it, not the load generator.
    let cpu_ms_per_saga_total = processes_cpu_total(&processes, &other_cpu_ms_per_saga);

    let last_terminal = raw.seen.finished.iter().map(|f| f.terminal_wall_us).max();
    let seconds = match last_terminal {
        Some(t) if t > raw.started_wall_us => (t - raw.started_wall_us) as f64 / 1e6,
        _ => raw.elapsed.as_secs_f64(),
    };
    let completed_per_s = if seconds > 0.0 { completed as f64 / seconds } else { 0.0 };
    let load_seconds = raw.load_elapsed.as_secs_f64();
    let per_load_second = |n: usize| if load_seconds > 0.0 { n as f64 / load_seconds } else { 0.0 };
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
        peak_factor: None,
        attempted: raw.attempted,
        accepted: raw.post_us.len(),
        shed: raw.shed_us.len(),
        completed,
        unfinished: raw.seen.unfinished_accepted_wall_us.len(),
        errors: Errors { post: raw.post_errors, poll: raw.seen.errors as usize, first: raw.first_post_error.take().or_else(|| raw.seen.first_error.take()) },
        seconds,
        completed_per_s,
        latency_ms: report::Latency::of(&mut latencies),
        latency_seen_ms: report::Latency::of(&mut seen),
        accepted_per_s: per_load_second(raw.post_us.len()),
        shed_per_s: per_load_second(raw.shed_us.len()),
        shed_ms: report::Latency::of(&mut raw.shed_us),
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
        cpu_ms_per_saga_total,
        bytes_per_saga: bytes,
        pg_checkpoints: checkpoints_before.zip(checkpoints_after).map(|(b, a)| a - b),
        server: metrics_before.zip(metrics_after).map(|(b, a)| server_stats(&b, &a, completed)),
        ratios: Ratios::of(completed_per_s, ceiling),
    })
}

fn processes_cpu_total(processes: &[ProcessPoint], others: &BTreeMap<String, f64>) -> Option<f64> {
    let targets: Option<f64> = processes.iter().map(|p| p.cpu_ms_per_saga).sum();
    let others: f64 = others.iter().filter(|(name, _)| *name != Other::Bench.name()).map(|(_, v)| v).sum();
    targets.filter(|_| !processes.is_empty()).map(|t| t + others)
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
        relay_delay_ms_mean: ratio(delta("eso_outbox_delay_seconds_sum") * 1000.0, delta("eso_outbox_delay_seconds_count")),
        command_retries: delta("eso_command_retries_total"),
        command_timeouts: delta("eso_command_timeouts_total"),
        append_conflicts: delta("eso_append_conflicts_total"),
    }
}
