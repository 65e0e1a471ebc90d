//! `eso replay`: rebuild every saga snapshot and projection from the event
//! log, or (`--dry-run`) only report where the stored rows differ from
//! what the events say. See `store/replay.rs`.

use std::fmt::Write as _;

use crate::config::Config;
use crate::store::replay::Report;

/// Runs replay on the configured store and prints its report; returns the
/// report, whose differences the caller turns into the exit status.
pub async fn run(config: &Config, dry_run: bool) -> anyhow::Result<Report> {
    let store = crate::app::open_store(config).await?;
    let report = store.replay(dry_run).await;
    store.close().await;
    let report = report?;
    print!("{}", describe(&report));
    Ok(report)
}

/// The report as people read it: a line per difference, then a summary.
pub fn describe(report: &Report) -> String {
    let mut out = String::new();
    for (id, differences) in &report.differences {
        for d in differences {
            let _ = writeln!(out, "{id}: {d}");
        }
    }
    let verdict = match (report.is_clean(), report.written) {
        (true, _) => "every snapshot and projection matches its events".to_string(),
        (false, true) => format!("{} sagas differed from their events and were rebuilt", report.differences.len()),
        (false, false) => format!("{} sagas differ from their events (dry run: nothing written)", report.differences.len()),
    };
    let _ = writeln!(out, "replayed {} events of {} sagas: {verdict}", report.events, report.sagas);
    out
}
