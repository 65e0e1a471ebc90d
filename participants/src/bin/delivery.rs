//! The delivery participant as its own process (Postgres + NATS).

use std::sync::Arc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    participants::serve::run_binary("eso-delivery", |pool, backend| Arc::new(participants::delivery::Delivery::new(pool, backend))).await
}
