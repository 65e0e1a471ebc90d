//! The delivery participant (`eso.cmd.delivery.deliver`).
//!
//! Delivers every order except those whose description contains
//! `undeliverable`, which fail: that is how users (and tests) exercise the
//! order saga's compensation path.

use db::Backend;
use db::Column::Text;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Map, json};
use sqlx::AnyPool;

use crate::record::Recorder;
use crate::{CommandMessage, Error, Participant, ReplyMessage};

pub const DELIVER: &str = "eso.cmd.delivery.deliver";

pub struct Delivery {
    deliveries: Recorder,
}

impl Delivery {
    pub fn new(pool: AnyPool, backend: Backend) -> Self {
        let columns = [("command_id", Text), ("order_id", Text), ("outcome", Text)];
        Delivery { deliveries: Recorder::spawn(pool, backend, "deliveries", &columns) }
    }

    async fn deliver(&self, command: CommandMessage) -> Result<ReplyMessage, Error> {
        let id = command.command_id.to_string();
        let mut row = Map::new();
        row.insert("command_id".into(), id.clone().into());
        row.insert("order_id".into(), command.saga_id.to_string().into());
        row.insert("outcome".into(), decide(command.field("description")?).into());
        let recorded = self.deliveries.record(row).await?;
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
