//! What the benchmark reads about processes from `/proc`, through the
//! `procfs` crate (Linux only; on other systems every reading is `None` and
//! the report says so): resident
//! memory (`VmHWM`, the peak since start, and `VmRSS`, now), CPU time, and
//! a sampler that keeps the highest `VmRSS` seen while a point runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// A process the report follows, by a name for people and its pid.
#[derive(Debug, Clone)]
pub struct Proc {
    pub name: String,
    pub pid: u32,
}

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Peak resident set since the process started.
    pub hwm_kib: u64,
    /// Resident set now.
    pub rss_kib: u64,
}

fn process(pid: u32) -> Option<::procfs::process::Process> {
    ::procfs::process::Process::new(i32::try_from(pid).ok()?).ok()
}

/// `VmHWM` and `VmRSS` of `/proc/<pid>/status`.
pub fn memory(pid: u32) -> Option<Memory> {
    let status = process(pid)?.status().ok()?;
    Some(Memory { hwm_kib: status.vmhwm?, rss_kib: status.vmrss? })
}

/// User plus system CPU time the process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = process(pid)?.stat().ok()?;
    Some(stat_cpu_seconds(&stat))
}

fn stat_cpu_seconds(stat: &::procfs::process::Stat) -> f64 {
    (stat.utime + stat.stime) as f64 / ::procfs::ticks_per_second() as f64
}

/// The command line of a process, for naming pids given on the command line.
pub fn command_name(pid: u32) -> Option<String> {
    let words = process(pid)?.cmdline().ok()?;
    let program = words.first()?.rsplit('/').next().unwrap_or_default().to_string();
    Some(match words.get(1) {
        Some(arg) if !arg.starts_with('-') => format!("{program} {}", words[1..].join(" ")),
        _ => program,
    })
}

/// CPU seconds used so far by every process whose command name is `comm`
/// (e.g. all `postgres` backends, which are not our children). Processes
/// that exit between two readings drop out of the sum, so a delta is a
/// lower bound; backends live as long as their pool connections, so in
/// practice it is exact.
pub fn cpu_seconds_by_name(comm: &str) -> Option<f64> {
    let all = ::procfs::process::all_processes().ok()?;
    Some(all.flatten().filter_map(|p| p.stat().ok()).filter(|stat| stat.comm == comm).map(|stat| stat_cpu_seconds(&stat)).sum())
}

/// Samples `VmRSS` of some processes every 100 ms and keeps each one's
/// highest reading (`VmHWM` cannot be reset, so this is the only way to
/// see one point's peak after an earlier point).
pub struct RssSampler {
    peaks: Arc<Mutex<BTreeMap<u32, u64>>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl RssSampler {
    pub fn start(procs: &[Proc]) -> RssSampler {
        let pids: Vec<u32> = procs.iter().map(|p| p.pid).collect();
        let peaks = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (peaks, stop) = (peaks.clone(), stop.clone());
            async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                loop {
                    for pid in &pids {
                        if let Some(m) = memory(*pid) {
                            let mut peaks = peaks.lock().unwrap_or_else(PoisonError::into_inner);
                            let peak = peaks.entry(*pid).or_insert(0);
                            *peak = (*peak).max(m.rss_kib);
                        }
                    }
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        });
        RssSampler { peaks, stop, task }
    }

    /// Stops sampling; returns the highest `VmRSS` (KiB) seen per pid.
    pub async fn finish(self) -> BTreeMap<u32, u64> {
        self.stop.cancel();
        let _ = self.task.await;
        let peaks = self.peaks.lock().unwrap_or_else(PoisonError::into_inner);
        peaks.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        if std::path::Path::new("/proc/self/status").exists() {
            let m = memory(pid).unwrap_or_default();
            assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib, "{m:?}");
            assert!(cpu_seconds(pid).is_some());
        }
    }
}
