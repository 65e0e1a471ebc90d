//! The `eso` command: serve the API (default), check and draw saga
//! definitions, run a participant.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use orchestrator::config::Config;
use orchestrator::definitions;

mod remote;

// Every saga step allocates many small, short-lived buffers (JSON, spans,
// messages) across threads; glibc's malloc spent a tenth of eso's CPU on
// them under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 3's `mi_option_purge_delay` (its `mi_option_e` in
/// `include/mimalloc.h`; the Rust bindings name no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// What mimalloc 3 ships with, in milliseconds.
const MIMALLOC_DEFAULT_PURGE_DELAY_MS: std::ffi::c_long = 1000;
const PURGE_DELAY_MS: std::ffi::c_long = 50;

/// mimalloc 3 gives freed pages back to the OS only after they have been
/// free for a second, so a burst of sagas holds far more memory than it
/// needs; after 50 ms the peak falls with no throughput measurably lost
/// (the figures: docs/benchmarks.md, "Memory"). `MIMALLOC_PURGE_DELAY` in
/// the environment still wins.
fn tune_allocator() {
    // SAFETY: plain integer options of the linked mimalloc. `main` calls
    // this before any other thread exists (mimalloc's option setters are
    // not thread-safe); in the unit test other test threads run, but none
    // touches mimalloc's options. The index is checked against mimalloc's
    // documented default, so a future mimalloc that renumbers its options
    // is left alone.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == MIMALLOC_DEFAULT_PURGE_DELAY_MS {
            libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
}

#[derive(Parser)]
#[command(name = "eso", version, about = "eso: an event-sourced saga orchestrator")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API and run sagas (the default).
    Serve,
    /// Work with saga definition files.
    Saga {
        #[command(subcommand)]
        command: SagaCommand,
    },
    /// Run a participant as its own process (needs DATABASE_URL and NATS_URL).
    Participant {
        #[arg(value_enum)]
        name: ParticipantName,
        #[command(flatten)]
        config: participants::serve::Config,
    },
    /// Rebuild every saga's snapshot and every projection (the order saga's
    /// `orders`) from the event log; exits non-zero if any stored row differed.
    /// Stop the orchestrators first: a saga stepped during a rebuild can be
    /// overwritten by the rebuild of its state before.
    Replay {
        /// Only compare and report; write nothing (on Postgres it may run
        /// beside live orchestrators, and may report sagas that moved).
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum SagaCommand {
    /// Validate definition files (every `*.toml` in SAGAS_DIR when none are
    /// named); prints every problem as file:line:column and exits non-zero.
    Check { files: Vec<PathBuf> },
    /// Explore every configuration a saga on each definition can reach (every
    /// `*.toml` in SAGAS_DIR when none are named): dead ends, compensations
    /// skipped on the way to a failure, inputs the machine must ignore. Prints
    /// each violation with a shortest counterexample and exits non-zero.
    Verify { files: Vec<PathBuf> },
    /// Print a definition as a Mermaid stateDiagram-v2.
    Graph { file: PathBuf },
    /// Move the live sagas of version FROM onto version TO (whose file has a
    /// `[migrate.FROM]` mapping) on a running eso, and follow the job.
    Migrate {
        name: String,
        #[arg(long)]
        from: u32,
        #[arg(long)]
        to: u32,
        /// Only sagas in this state (of version FROM).
        #[arg(long)]
        state: Option<String>,
        /// Sagas moved per second (the server's default when not given).
        #[arg(long)]
        rate: Option<u32>,
        /// Why, for each saga's history.
        #[arg(long, default_value = "migrated with eso saga migrate")]
        reason: String,
        #[command(flatten)]
        api: remote::Api,
    },
    /// List the versions a running eso has loaded, with how many sagas are live on each.
    Versions {
        #[command(flatten)]
        api: remote::Api,
    },
    /// Retire a version no saga is live on and new sagas do not start on: it
    /// is no longer loaded from the next start.
    Retire {
        name: String,
        version: u32,
        #[command(flatten)]
        api: remote::Api,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ParticipantName {
    Payment,
    Delivery,
    /// The trip saga's flights and hotels.
    TripAgency,
}

fn main() -> ExitCode {
    tune_allocator();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The orchestrator's flags go before a subcommand; a participant would
    // silently ignore them.
    if let Some(Command::Participant { .. }) = &cli.command
        && let Some(flag) = matches.ids().find(|id| matches.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine))
    {
        eprintln!(
            "eso: --{flag} configures the orchestrator, not a participant; give a participant's flags after `participant <name>` (see `eso participant --help`)"
        );
        return ExitCode::FAILURE;
    }
    match cli.command {
        Some(Command::Saga { command }) => saga(command, &cli.config),
        other => {
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("eso: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = match other {
                Some(Command::Participant { name, config }) => {
                    let service = match name {
                        ParticipantName::Payment => participants::serve::PAYMENT,
                        ParticipantName::Delivery => participants::serve::DELIVERY,
                        ParticipantName::TripAgency => participants::serve::TRIP_AGENCY,
                    };
                    runtime.block_on(participants::serve::run_binary(config, service))
                }
                Some(Command::Replay { dry_run }) => runtime.block_on(replay(&cli.config, dry_run)),
                _ => runtime.block_on(serve(cli.config)),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("eso: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let telemetry = Arc::new(observability::init("eso-orchestrator")?);
    let result = async {
        let running = eso::start(&config, telemetry.clone()).await?;
        participants::serve::shutdown_signal().await;
        tracing::info!("shutting down");
        running.stop().await;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "eso stopped");
    }
    telemetry.shutdown();
    result
}

async fn replay(config: &Config, dry_run: bool) -> anyhow::Result<()> {
    let report = orchestrator::rebuild::run(config, dry_run).await?;
    if report.is_clean() { Ok(()) } else { anyhow::bail!("{} sagas differed from their events", report.differences.len()) }
}

fn saga(command: SagaCommand, config: &Config) -> ExitCode {
    match command {
        SagaCommand::Check { files } => {
            if definitions::check(&files, &config.sagas_dir) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        SagaCommand::Verify { files } => {
            if definitions::verify(&files, &config.sagas_dir) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        SagaCommand::Migrate { name, from, to, state, rate, reason, api } => {
            let migration = remote::Migrate { name, from, to, state, rate, reason };
            client(async move { remote::migrate(&api, migration).await })
        }
        SagaCommand::Versions { api } => client(async move { remote::versions(&api).await }),
        SagaCommand::Retire { name, version, api } => client(async move { remote::retire(&api, &name, version).await }),
        SagaCommand::Graph { file } => match definitions::parse_file(&file) {
            Ok((def, _)) => {
                print!("{}", sagas::graph::mermaid(&def));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Runs a command that talks to a running eso.
fn client(work: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let result = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(work),
        Err(e) => Err(anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eso: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails if mimalloc renumbers its options or ships another default:
    /// the tuning would then silently not happen.
    #[test]
    fn the_allocator_gives_freed_pages_back_after_50_ms() {
        // The environment's choice wins, by design.
        let expected = std::env::var("MIMALLOC_PURGE_DELAY").ok().and_then(|v| v.parse().ok()).unwrap_or(PURGE_DELAY_MS);
        tune_allocator();
        // SAFETY: reads an integer option.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }, expected);
    }
}
