//! The payment participant: charges (`eso.cmd.payment.process`) and
//! refunds (`eso.cmd.payment.refund`).
//!
//! Decision rule (from the original system): a description starting with
//! `test` is confirmed, with `xxx` declined, anything else a coin flip.
//! The first answer for a command id is recorded and every repeat gets it.
//! A refund that arrives before its charge records the charge as `voided`,
//! so a late charge is declined instead of taking money after the saga
//! gave up on it.

use db::Backend;
use db::Column::{BigInt, Text};
use db::now_us;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Map, json};
use sqlx::{AnyPool, Row};

use crate::record::Recorder;
use crate::{CommandMessage, Error, Participant, ReplyMessage};

pub const PROCESS: &str = "eso.cmd.payment.process";
pub const REFUND: &str = "eso.cmd.payment.refund";

pub struct Payment {
    pool: AnyPool,
    charges: Recorder,
}

impl Payment {
    pub fn new(pool: AnyPool, backend: Backend) -> Self {
        let columns = [("command_id", Text), ("order_id", Text), ("amount", Text), ("outcome", Text), ("refunded", BigInt)];
        let charges = Recorder::spawn(pool.clone(), backend, "payments", &columns);
        Payment { pool, charges }
    }

    async fn process(&self, command: CommandMessage) -> Result<ReplyMessage, Error> {
        let id = command.command_id.to_string();
        let description = command.field("description")?;
        let amount = command.field("amount")?;
        let outcome = decide(description, rand::random::<bool>());
        // Record first, then answer. A repeat (or a charge voided by an
        // earlier refund) gets the outcome recorded first.
        let mut row = Map::new();
        row.insert("command_id".into(), id.clone().into());
        row.insert("order_id".into(), command.saga_id.to_string().into());
        row.insert("amount".into(), amount.into());
        row.insert("outcome".into(), outcome.into());
        row.insert("refunded".into(), 0.into());
        let recorded = self.charges.record(row).await?;
        Ok(answer(&recorded, &id))
    }

    async fn refund(&self, command: CommandMessage) -> Result<ReplyMessage, Error> {
        let charge = command
            .payload
            .pointer("/compensates/command_id")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::BadCommand("refund without compensates.command_id".into()))?
            .to_string();
        let amount = command.field("amount").unwrap_or("0.00");
        let charged = self.void_or_refund(&charge, &command.saga_id.to_string(), amount).await.map_err(Error::failed)?;
        // Only a confirmed charge moved money back; say which it was.
        Ok(ReplyMessage { outcome: "refunded".into(), data: json!({ "charge": charge, "charge_outcome": charged }) })
    }

    /// Marks the charge refunded, or records it as voided when the refund
    /// came first; returns the charge's outcome.
    async fn void_or_refund(&self, charge: &str, order_id: &str, amount: &str) -> Result<String, sqlx::Error> {
        let now = now_us();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO payments (command_id, order_id, amount, outcome, refunded, created_at, refunded_at) \
             VALUES ($1, $2, $3, 'voided', 1, $4, $4) ON CONFLICT (command_id) DO NOTHING",
        )
        .bind(charge)
        .bind(order_id)
        .bind(amount)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE payments SET refunded = 1, refunded_at = $2 WHERE command_id = $1 AND refunded = 0")
            .bind(charge)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let charged =
            sqlx::query("SELECT outcome FROM payments WHERE command_id = $1").bind(charge).fetch_one(&mut *tx).await?.try_get::<String, _>("outcome")?;
        tx.commit().await?;
        Ok(charged)
    }
}

/// The payment rule; `coin` is the random pick for descriptions without a prefix.
pub fn decide(description: &str, coin: bool) -> &'static str {
    if description.starts_with("test") {
        "confirmed"
    } else if description.starts_with("xxx") || !coin {
        "declined"
    } else {
        "confirmed"
    }
}

fn answer(outcome: &str, command_id: &str) -> ReplyMessage {
    // A charge voided by an earlier refund is declined: no money moves.
    let outcome = if outcome == "voided" { "declined" } else { outcome };
    ReplyMessage { outcome: outcome.into(), data: json!({ "payment_id": command_id }) }
}

impl Participant for Payment {
    fn name(&self) -> &'static str {
        "payment"
    }

    fn subjects(&self) -> &'static [&'static str] {
        &[PROCESS, REFUND]
    }

    fn handle<'a>(&'a self, subject: &'a str, command: CommandMessage) -> BoxFuture<'a, Result<ReplyMessage, Error>> {
        match subject {
            PROCESS => self.process(command).boxed(),
            REFUND => self.refund(command).boxed(),
            other => futures::future::ready(Err(Error::UnknownSubject(other.to_string()))).boxed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::decide;

    #[test]
    fn the_payment_rule() {
        for coin in [true, false] {
            assert_eq!(decide("test top up e wallet", coin), "confirmed");
            assert_eq!(decide("xxx", coin), "declined");
        }
        assert_eq!(decide("a book", true), "confirmed");
        assert_eq!(decide("a book", false), "declined");
    }
}
