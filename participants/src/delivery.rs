//! The delivery participant (`eso.cmd.delivery.deliver`).
//!
//! Delivers every order except those whose description contains
//! `undeliverable`, which fail: that is how users (and tests) exercise the
//! order saga's compensation path.

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::json;
use sqlx::{AnyPool, Row};

use crate::{CommandMessage, Error, Participant, ReplyMessage, now_us};

pub const DELIVER: &str = "eso.cmd.delivery.deliver";

pub struct Delivery {
    pool: AnyPool,
}

impl Delivery {
    pub fn new(pool: AnyPool) -> Self {
        Delivery { pool }
    }

    async fn deliver(&self, command: CommandMessage) -> Result<ReplyMessage, Error> {
        let id = command.command_id.to_string();
        let outcome = decide(command.field("description")?);
        let inserted = sqlx::query(
            "INSERT INTO deliveries (command_id, order_id, outcome, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (command_id) DO NOTHING",
        )
        .bind(&id)
        .bind(command.saga_id.to_string())
        .bind(outcome)
        .bind(now_us())
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(ReplyMessage { outcome: outcome.into(), data: json!({ "delivery_id": id }) });
        }
        let recorded = sqlx::query("SELECT outcome FROM deliveries WHERE command_id = $1")
            .bind(&id)
            .fetch_one(&self.pool)
            .await?
            .try_get::<String, _>("outcome")?;
        Ok(ReplyMessage { outcome: recorded, data: json!({ "delivery_id": id }) })
    }
}

pub fn decide(description: &str) -> &'static str {
    if description.contains("undeliverable") { "failed" } else { "delivered" }
}

impl Participant for Delivery {
    fn name(&self) -> &'static str {
        "delivery"
    }

    fn subjects(&self) -> &'static [&'static str] {
        &[DELIVER]
    }

    fn handle<'a>(&'a self, subject: &'a str, command: CommandMessage) -> BoxFuture<'a, Result<ReplyMessage, Error>> {
        match subject {
            DELIVER => self.deliver(command).boxed(),
            other => futures::future::ready(Err(Error::UnknownSubject(other.to_string()))).boxed(),
        }
    }
}
