//! The `eso` command: serve the API (default), check and draw saga
//! definitions, run a participant.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use orchestrator::config::Config;
use orchestrator::definitions;

// Every saga step allocates many small, short-lived buffers (JSON, spans,
// messages) across threads; glibc's malloc spent a tenth of eso's CPU on
// them under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    },
    /// Load-test eso: throughput, latency, memory, and the machine's ceiling.
    Bench(Box<orchestrator::bench::BenchArgs>),
}

#[derive(Subcommand)]
enum SagaCommand {
    /// Validate definition files; prints every problem as file:line:column and exits non-zero.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a definition as a Mermaid stateDiagram-v2.
    Graph { file: PathBuf },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ParticipantName {
    Payment,
    Delivery,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Saga { command }) => saga(command),
        other => {
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("eso: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = match other {
                Some(Command::Participant { name: ParticipantName::Payment }) => runtime.block_on(participants::serve::run_binary(
                    "eso-payment",
                    |pool, backend| Arc::new(participants::payment::Payment::new(pool, backend)),
                )),
                Some(Command::Participant { name: ParticipantName::Delivery }) => runtime.block_on(participants::serve::run_binary(
                    "eso-delivery",
                    |pool, backend| Arc::new(participants::delivery::Delivery::new(pool, backend)),
                )),
                Some(Command::Bench(args)) => runtime.block_on(orchestrator::bench::run(*args)),
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
        let running = orchestrator::app::start(&config, telemetry.clone()).await?;
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

fn saga(command: SagaCommand) -> ExitCode {
    match command {
        SagaCommand::Check { files } => {
            let mut failed = false;
            for path in &files {
                match definitions::parse_file(path) {
                    Ok((def, _)) => println!("{}: ok ({} v{}, {} states, hash {})", path.display(), def.name, def.version, def.states.len(), &def.hash()[..12]),
                    Err(e) => {
                        failed = true;
                        eprintln!("{e:#}");
                    }
                }
            }
            if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
        }
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
