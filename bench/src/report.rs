//! The benchmark's results: the JSON summary (`--json FILE`, one object
//! with the machine, the ceilings and one entry per point) and the human
//! table printed as points finish.

use std::collections::BTreeMap;

use serde::Serialize;

/// Bumped when a field changes meaning; `scripts/plot_bench.py` checks it.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub format_version: u32,
    pub started_at: String,
    /// The command line, to re-run the benchmark.
    pub command: String,
    pub label: Option<String>,
    pub machine: Machine,
    pub ceiling: Option<Ceiling>,
    pub targets: Vec<TargetSummary>,
    pub points: Vec<Point>,
    /// Whether every point finished every saga without errors.
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Machine {
    pub nproc: usize,
    pub memory_mib: u64,
    pub cpu_model: String,
    pub kernel: String,
    /// `git describe`-like: the commit of the current directory's
    /// repository, `+dirty` with uncommitted changes (best effort).
    pub source: Option<String>,
    pub postgres: Option<String>,
    /// fsync, synchronous_commit, wal_sync_method, shared_buffers, max_connections.
    pub postgres_settings: Option<String>,
    pub nats_server: Option<String>,
    /// `debug` or `release`: the profile eso-bench was built with, which is
    /// the spawned eso's when it is the one beside it (one `cargo build`).
    pub eso_profile: &'static str,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |text: &str, name: &str| text.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string());
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            memory_mib: field(&meminfo, "MemTotal").and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok()).map_or(0, |kib| kib / 1024),
            cpu_model: field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default(),
            source: git_source(),
            postgres: None,
            postgres_settings: None,
            nats_server: None,
            eso_profile: if cfg!(debug_assertions) { "debug" } else { "release" },
        }
    }
}

fn git_source() -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git").args(args).output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{commit}+dirty") } else { commit })
}

/// What this machine sustains without eso, measured in the same run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Ceiling {
    pub seconds: f64,
    /// Autocommit single-row INSERTs per second into a scratch table.
    pub pg_inserts_per_s: Option<f64>,
    pub pg_connections: usize,
    /// The same on a SQLite file with eso's settings (WAL, synchronous=FULL, one connection).
    pub sqlite_inserts_per_s: Option<f64>,
    /// NATS request-reply round trips per second to a trivial responder.
    pub nats_round_trips_per_s: Option<f64>,
    pub nats_requesters: usize,
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct TargetSummary {
    pub mode: String,
    pub url: String,
    pub otlp_endpoint: Option<String>,
    /// Spans the in-process receiver got (`--with-receiver`).
    pub spans_received: Option<usize>,
    /// Memory of each process when the benchmark ended, before it stopped them.
    pub processes: Vec<ProcessMemory>,
}

#[derive(Debug, Serialize)]
pub struct ProcessMemory {
    pub name: String,
    pub pid: u32,
    pub vm_hwm_mib: Option<f64>,
    pub vm_rss_mib: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub mode: String,
    pub tracing: bool,
    /// `closed` (fixed concurrency) or `open` (fixed arrival rate).
    pub kind: &'static str,
    /// Participants were paused while the POSTs went out (`--hold`).
    pub hold: bool,
    pub concurrency: Option<usize>,
    pub rate: Option<f64>,
    /// `--overload` points: the rate as a multiple of this target's
    /// closed-loop peak (`completed_per_s` of its best closed point).
    pub peak_factor: Option<f64>,
    /// POSTs sent, accepted (2xx), shed (`429`, or `503` with
    /// `Retry-After`), finished (terminal seen), never finished.
    pub attempted: usize,
    pub accepted: usize,
    pub shed: usize,
    pub completed: usize,
    pub unfinished: usize,
    pub errors: Errors,
    /// From the first POST to the last terminal transition.
    pub seconds: f64,
    pub completed_per_s: f64,
    /// POST sent (open loop: when it was due) → the terminal step's group
    /// commit began (the order's `updated_at`): short of that commit's own
    /// duration (see `server.commit_ms_mean`).
    pub latency_ms: Latency,
    /// POST sent (or due) → the poller saw the terminal status: an upper bound.
    pub latency_seen_ms: Latency,
    pub post_ms: Latency,
    /// Accepted and shed POSTs per second of the load (not of the drain).
    pub accepted_per_s: f64,
    pub shed_per_s: f64,
    /// How long a shed POST took to be answered.
    pub shed_ms: Latency,
    pub outcomes: BTreeMap<String, usize>,
    /// `latency_ms` of the sagas that ended in each status (`delivered`
    /// takes one step more than a declined order's `cancelled`).
    pub latency_by_outcome_ms: BTreeMap<String, Latency>,
    /// Most sagas accepted (POST answered) and not yet terminal at once, by
    /// the server's clock (`updated_at`), so without the poller's delay.
    pub peak_in_flight: usize,
    pub poll: PollStats,
    pub processes: Vec<ProcessPoint>,
    /// CPU milliseconds per completed saga of processes that are not
    /// targets: `bench` (this process), `postgres` (all backends), `nats-server`.
    pub other_cpu_ms_per_saga: BTreeMap<String, f64>,
    /// The targets' CPU plus Postgres's: what the system spent per saga,
    /// without the load generator.
    pub cpu_ms_per_saga_total: Option<f64>,
    /// What the point wrote to the store (spawned targets).
    pub bytes_per_saga: Option<crate::bytes::BytesPerSaga>,
    /// Postgres checkpoints that happened during the point (their writes
    /// show in commit latency); with --spawn postgres only.
    pub pg_checkpoints: Option<i64>,
    /// From the orchestrator's `/metrics`, over this point.
    pub server: Option<ServerStats>,
    pub ratios: Ratios,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Errors {
    pub post: usize,
    pub poll: usize,
    pub first: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// Percentiles (nearest rank) of microsecond samples, in milliseconds.
    pub fn of(samples: &mut [u64]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let rank = |q: f64| {
            let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i] as f64 / 1000.0
        };
        let mean = samples.iter().map(|&s| s as f64).sum::<f64>() / samples.len() as f64 / 1000.0;
        Latency { p50: rank(0.50), p90: rank(0.90), p99: rank(0.99), max: rank(1.0), mean }
    }
}

/// The poller's own cost, so its load on the server is on record.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PollStats {
    pub gets: u64,
    pub gets_per_saga: f64,
    /// Terminal transition recorded → seen by the poller (median, ms).
    pub detect_ms_p50: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessPoint {
    pub name: String,
    pub pid: u32,
    /// Highest `VmRSS` sampled (every 100 ms) during the point.
    pub peak_rss_mib: Option<f64>,
    /// `VmHWM` at the end of the point (peak since the process started).
    pub vm_hwm_mib: Option<f64>,
    pub vm_rss_mib: Option<f64>,
    pub cpu_ms_per_saga: Option<f64>,
}

/// Counters of the orchestrator over one point, per completed saga.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ServerStats {
    /// Group-commit transactions per saga and appends (saga steps) per transaction.
    pub commits_per_saga: f64,
    pub appends_per_commit: f64,
    pub commit_ms_mean: f64,
    pub events_published_per_saga: f64,
    /// The relay's mean delay from an event's commit to its publication.
    pub relay_delay_ms_mean: f64,
    pub command_retries: f64,
    pub command_timeouts: f64,
    pub append_conflicts: f64,
}

/// eso's completed sagas per second divided by each ceiling.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Ratios {
    pub per_pg_insert: Option<f64>,
    pub per_sqlite_insert: Option<f64>,
    pub per_nats_round_trip: Option<f64>,
}

impl Ratios {
    pub fn of(sagas_per_s: f64, ceiling: Option<&Ceiling>) -> Ratios {
        let div = |c: Option<f64>| c.filter(|c| *c > 0.0).map(|c| sagas_per_s / c);
        match ceiling {
            None => Ratios::default(),
            Some(c) => Ratios {
                per_pg_insert: div(c.pg_inserts_per_s),
                per_sqlite_insert: div(c.sqlite_inserts_per_s),
                per_nats_round_trip: div(c.nats_round_trips_per_s),
            },
        }
    }
}

pub fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

pub fn print_header() {
    println!(
        "  {:<6} {:>8} {:>7} {:>6} {:>8} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>9} {:>7} {:>8}  peak RSS MiB (sampled)",
        "kind", "offered", "sagas", "errors", "sagas/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "POST p50", "POST p99", "in-flight", "shed/s", "shed p99"
    );
}

pub fn print_row(p: &Point) {
    let offered = match (p.concurrency, p.rate, p.peak_factor) {
        (Some(c), _, _) => format!("c={c}"),
        (_, _, Some(f)) => format!("{f}×peak"),
        (_, Some(r), _) => format!("r={r}"),
        _ => "-".into(),
    };
    let kind = if p.hold { "hold" } else { p.kind };
    let rss: Vec<String> =
        p.processes.iter().map(|q| format!("{} {}", short_name(&q.name), q.peak_rss_mib.map_or("?".into(), |m| format!("{m:.1}")))).collect();
    println!(
        "  {:<6} {:>8} {:>7} {:>6} {:>8.1} {:>7.2} {:>7.2} {:>7.2} {:>8.1} {:>8.2} {:>8.2} {:>9} {:>7.1} {:>8.2}  {}",
        kind,
        offered,
        p.completed,
        p.errors.post + p.errors.poll + p.unfinished,
        p.completed_per_s,
        p.latency_ms.p50,
        p.latency_ms.p90,
        p.latency_ms.p99,
        p.latency_ms.max,
        p.post_ms.p50,
        p.post_ms.p99,
        p.peak_in_flight,
        p.shed_per_s,
        p.shed_ms.p99,
        rss.join(" · ")
    );
    if let Some(rate) = p.rate.filter(|_| p.peak_factor.is_some()) {
        println!("         offered {rate:.0}/s: accepted {:.1}/s, shed {:.1}/s ({} of {} POSTs)", p.accepted_per_s, p.shed_per_s, p.shed, p.attempted);
    }
    let mut detail = vec![format!("outcomes {}", p.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "))];
    if let Some(s) = &p.server {
        detail.push(format!("{:.2} commits/saga ({:.1} appends each, {:.2} ms mean)", s.commits_per_saga, s.appends_per_commit, s.commit_ms_mean));
        detail.push(format!("relay {:.2} ms after the commit", s.relay_delay_ms_mean));
        if s.command_retries + s.command_timeouts + s.append_conflicts > 0.0 {
            detail.push(format!("retries {} timeouts {} conflicts {}", s.command_retries, s.command_timeouts, s.append_conflicts));
        }
    }
    let cpu: Vec<String> = p
        .processes
        .iter()
        .filter_map(|q| q.cpu_ms_per_saga.map(|c| format!("{} {c:.2}", short_name(&q.name))))
        .chain(p.other_cpu_ms_per_saga.iter().map(|(k, v)| format!("{k} {v:.2}")))
        .collect();
    if let Some(n) = p.pg_checkpoints.filter(|n| *n > 0) {
        detail.push(format!("{n} Postgres checkpoint(s) during the point"));
    }
    if !cpu.is_empty() {
        let total = p.cpu_ms_per_saga_total.map_or(String::new(), |t| format!(" (system {t:.2})"));
        detail.push(format!("CPU ms/saga: {}{total}", cpu.join(", ")));
    }
    if let Some(b) = &p.bytes_per_saga {
        detail.push(format!("per saga: {}", b.summary()));
    }
    detail.push(format!("seen by the poller p50 {:.2} p99 {:.2} ms ({:.1} GETs/saga)", p.latency_seen_ms.p50, p.latency_seen_ms.p99, p.poll.gets_per_saga));
    println!("         {}", detail.join("; "));
    if p.unfinished > 0 || p.errors.post + p.errors.poll > 0 {
        println!(
            "         ! {} unfinished, {} POST errors, {} poll errors{}",
            p.unfinished,
            p.errors.post,
            p.errors.poll,
            p.errors.first.as_ref().map_or(String::new(), |e| format!(" (first: {e})"))
        );
    }
}

fn short_name(name: &str) -> &str {
    match name {
        "eso participant payment" => "payment",
        "eso participant delivery" => "delivery",
        other => other,
    }
}

pub fn print_ceiling(c: &Ceiling) {
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0}"));
    println!(
        "ceiling ({:.1} s each): postgres {} single-row insert tx/s ({} connections); sqlite {} insert tx/s (1 connection, synchronous=FULL); nats {} request-reply/s ({} requesters)",
        c.seconds,
        fmt(c.pg_inserts_per_s),
        c.pg_connections,
        fmt(c.sqlite_inserts_per_s),
        fmt(c.nats_round_trips_per_s),
        c.nats_requesters
    );
    for note in &c.notes {
        println!("  note: {note}");
    }
}

/// The closing lines: each mode's best point against the ceilings, and memory.
pub fn print_summary(summary: &Summary) {
    println!();
    if let Some(c) = &summary.ceiling {
        print_ceiling(c);
    }
    let mut modes: Vec<&str> = summary.points.iter().map(|p| p.mode.as_str()).collect();
    modes.dedup();
    for mode in modes {
        let best = summary.points.iter().filter(|p| p.mode == mode).max_by(|a, b| a.completed_per_s.total_cmp(&b.completed_per_s));
        let Some(best) = best else { continue };
        let offered = best.concurrency.map_or_else(|| format!("rate {}", best.rate.unwrap_or_default()), |c| format!("concurrency {c}"));
        let r = &best.ratios;
        let ratio = |name: &str, v: Option<f64>| v.map(|v| format!("{v:.3} × {name}"));
        // Embedded mode writes SQLite and sends nothing over NATS.
        let embedded = mode == "embedded";
        let ratios: Vec<String> = [
            ratio("pg inserts/s", r.per_pg_insert),
            if embedded { ratio("sqlite inserts/s", r.per_sqlite_insert) } else { None },
            if embedded { None } else { ratio("nats round trips/s", r.per_nats_round_trip) },
        ]
        .into_iter()
        .flatten()
        .collect();
        println!(
            "{mode}: peak {:.1} sagas/s at {offered}{}",
            best.completed_per_s,
            if ratios.is_empty() { String::new() } else { format!(" = {}", ratios.join(", ")) }
        );
    }
    for target in &summary.targets {
        for p in &target.processes {
            println!(
                "memory {} · {} (pid {}): VmHWM {} MiB, VmRSS {} MiB at the end",
                target.mode,
                p.name,
                p.pid,
                p.vm_hwm_mib.map_or("?".into(), |m| format!("{m:.1}")),
                p.vm_rss_mib.map_or("?".into(), |m| format!("{m:.1}"))
            );
        }
        if let Some(n) = target.spans_received {
            println!("spans received by the in-process OTLP receiver ({}): {n}", target.mode);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut samples: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        let l = Latency::of(&mut samples);
        assert_eq!((l.p50, l.p90, l.p99, l.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Latency::of(&mut []).p99, 0.0);
        let mut one = [2500];
        assert_eq!(Latency::of(&mut one).p50, 2.5);
    }

    #[test]
    fn ratios_skip_missing_ceilings() {
        let c = Ceiling { pg_inserts_per_s: Some(1000.0), nats_round_trips_per_s: Some(0.0), ..Ceiling::default() };
        let r = Ratios::of(500.0, Some(&c));
        assert_eq!(r.per_pg_insert, Some(0.5));
        assert_eq!(r.per_nats_round_trip, None);
        assert_eq!(r.per_sqlite_insert, None);
    }
}
