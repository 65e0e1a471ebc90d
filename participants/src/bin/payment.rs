//! The payment participant as its own process (Postgres + NATS).

use std::sync::Arc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    participants::serve::run_binary("eso-payment", |pool, backend| Arc::new(participants::payment::Payment::new(pool, backend))).await
}
