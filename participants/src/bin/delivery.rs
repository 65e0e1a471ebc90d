//! The delivery participant as its own process (Postgres + NATS); `--help` lists its configuration.

fn main() -> std::process::ExitCode {
    participants::serve::main_of(participants::serve::DELIVERY)
}
