//! The order saga's adapter: the seed API's orders on top of the generic
//! saga runtime.
//!
//! An order is a saga of the `order` definition whose inputs are the
//! checked amount and description plus the ids the original system gave
//! every order. Its read model, the `orders` table the seed routes answer
//! from, is a [`Projection`] of the saga's steps: written in the same
//! transaction as the events, and rebuilt from them by replay.

use std::collections::BTreeMap;

use db::Column::{BigInt, Text};
use db::{Backend, insert_from, recordset};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::{Map, Value, json};
use sqlx::Row;
use uuid::Uuid;

use crate::domain::{Amount, Description, NewOrder};
use crate::store::projection::Tx;
use crate::store::{BatchWrite, Projection, Rows, Statement, Step, Store, StoreError, id_rows};

/// The definition the seed routes start and read.
pub const DEFINITION: &str = "order";

/// Field errors, keyed by field, as clients of the original API expect.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// Turns the seed body (`fields`, parsed from `body`) into a [`NewOrder`],
/// collecting every field's problems. The amount is read as the client
/// wrote it: serde_json holds a number as an `f64`, whose rendering turns
/// `1.0000000000000001` into `1.0`, two decimals it never had.
pub fn parse(fields: &Map<String, Value>, body: &[u8]) -> Result<NewOrder, FieldErrors> {
    let amount = match fields.get("amount") {
        None | Some(Value::Null) => Err("is required".to_string()),
        Some(Value::Number(n)) => Amount::parse(&written_amount(body).unwrap_or_else(|| n.to_string())),
        Some(Value::String(_)) => Err("must be a number, not a string".to_string()),
        Some(_) => Err("must be a number".to_string()),
    };
    let description = match fields.get("description") {
        None | Some(Value::Null) => Err("is required".to_string()),
        Some(Value::String(s)) => Description::parse(s),
        Some(_) => Err("must be a string".to_string()),
    };
    let mut errors = FieldErrors::new();
    if let Err(e) = &amount {
        errors.entry("amount".into()).or_default().push(e.clone());
    }
    if let Err(e) = &description {
        errors.entry("description".into()).or_default().push(e.clone());
    }
    match (amount, description) {
        (Ok(amount), Ok(description)) => Ok(NewOrder { amount, description }),
        _ => Err(errors),
    }
}

/// The body's `amount` as written, if the body reads as an object with one.
fn written_amount(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Written<'a> {
        #[serde(borrow)]
        amount: Option<&'a serde_json::value::RawValue>,
    }
    Some(serde_json::from_slice::<Written>(body).ok()?.amount?.get().to_string())
}

/// The saga inputs of a new order: the amount as the API shows it, and
/// fresh user and payee ids, as the original system gave every order.
pub fn inputs(order: &NewOrder) -> Map<String, Value> {
    let mut data = Map::new();
    data.insert("amount".into(), Value::String(order.amount.to_string()));
    data.insert("description".into(), Value::String(order.description.as_str().to_string()));
    data.insert("user_id".into(), Value::String(Uuid::new_v4().to_string()));
    data.insert("payee_id".into(), Value::String(Uuid::new_v4().to_string()));
    data
}

/// An order as the API shows it.
#[derive(Debug, Clone)]
pub struct OrderRow {
    pub id: String,
    pub amount_cents: i64,
    pub user_id: String,
    pub payee_id: String,
    pub description: String,
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// The order's saga has reached a terminal state: its status is final.
    pub finished: bool,
}

impl OrderRow {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "amount": Amount::from_cents(self.amount_cents).to_string(),
            "user_id": self.user_id,
            "payee_id": self.payee_id,
            "description": self.description,
            "status": self.status,
            "created_at": crate::clock::rfc3339(self.created_at),
            "updated_at": crate::clock::rfc3339(self.updated_at),
        })
    }
}

/// The order, if there is one with this id.
pub async fn read(store: &Store, id: Uuid) -> Result<Option<OrderRow>, StoreError> {
    let row = sqlx::query(
        "SELECT o.id, o.amount_cents, o.user_id, o.payee_id, o.description, o.status, o.created_at, o.updated_at, s.terminal \
         FROM orders o JOIN sagas s ON s.id = o.id WHERE o.id = $1",
    )
    .bind(id.to_string())
    .fetch_optional(store.readers())
    .await?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(OrderRow {
        id: r.try_get("id")?,
        amount_cents: r.try_get("amount_cents")?,
        user_id: r.try_get("user_id")?,
        payee_id: r.try_get("payee_id")?,
        description: r.try_get("description")?,
        status: r.try_get("status")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        finished: r.try_get::<i64, _>("terminal")? != 0,
    }))
}

/// Writes the `orders` table from the order saga's steps: a row when the
/// saga starts, its status and `updated_at` whenever the status changes.
pub struct OrderProjection {
    /// The insert of new orders, then the update of moved ones.
    writes: [BatchWrite; 2],
    select: Statement,
    delete: Statement,
}

const COLUMNS: [(&str, db::Column); 8] = [
    ("id", Text),
    ("amount_cents", BigInt),
    ("user_id", Text),
    ("payee_id", Text),
    ("description", Text),
    ("status", Text),
    ("created_at", BigInt),
    ("updated_at", BigInt),
];

impl OrderProjection {
    pub fn new(backend: Backend) -> OrderProjection {
        let ids = recordset(backend, &[("id", Text)]);
        OrderProjection {
            writes: [
                BatchWrite::cached(backend, &COLUMNS, "id", |rows| insert_from("orders", &COLUMNS, &[], rows)),
                // Strictly after the last update (so after created_at) even
                // within one microsecond or with replicas' clocks apart, so
                // clients can tell an order has moved.
                BatchWrite::planned_each_time(backend, &[("id", Text), ("status", Text), ("at", BigInt)], "id", |rows| {
                    format!(
                        "UPDATE orders SET status = r.status, updated_at = CASE WHEN r.at > orders.updated_at THEN r.at ELSE orders.updated_at + 1 END \
                         FROM {rows} WHERE orders.id = r.id"
                    )
                }),
            ],
            select: Statement::planned_each_time(format!(
                "SELECT {} FROM orders WHERE id IN (SELECT r.id FROM {ids})",
                COLUMNS.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ")
            )),
            delete: Statement::planned_each_time(format!("DELETE FROM orders WHERE id IN (SELECT r.id FROM {ids})")),
        }
    }
}

#[derive(Serialize)]
struct NewRow<'a> {
    id: Uuid,
    amount_cents: i64,
    user_id: &'a str,
    payee_id: &'a str,
    description: &'a str,
    status: &'a str,
    created_at: i64,
    updated_at: i64,
}

#[derive(Serialize)]
struct Moved<'a> {
    id: Uuid,
    status: &'a str,
    at: i64,
}

/// The row a new order saga's inputs make; `None` when they are not an
/// order's (the runtime checks them before starting, so only a saga
/// started around the adapter gets here).
fn new_row<'a>(step: &Step<'a>) -> Option<NewRow<'a>> {
    let data = &step.saga.data;
    let text = |name: &str| data.get(name).and_then(Value::as_str);
    let amount = match data.get("amount")? {
        Value::String(s) => Amount::parse(s).ok()?,
        Value::Number(n) => Amount::parse(&n.to_string()).ok()?,
        _ => return None,
    };
    Some(NewRow {
        id: step.saga.id,
        amount_cents: amount.cents(),
        user_id: text("user_id")?,
        payee_id: text("payee_id")?,
        description: text("description")?,
        status: &step.saga.status,
        created_at: step.at,
        updated_at: step.at,
    })
}

impl Projection for OrderProjection {
    fn name(&self) -> &'static str {
        "orders"
    }

    fn definition(&self) -> &'static str {
        DEFINITION
    }

    fn writes(&self) -> &[BatchWrite] {
        &self.writes
    }

    fn rows(&self, steps: &[Step<'_>]) -> Result<Vec<Rows>, StoreError> {
        let mut new = Vec::new();
        let mut moved = Vec::new();
        for step in steps {
            if step.started() {
                match new_row(step) {
                    Some(row) => new.push(row),
                    None => tracing::warn!(saga.id = %step.saga.id, "order saga without an order's inputs; no order row"),
                }
            } else if step.status_changed() {
                moved.push(Moved { id: step.saga.id, status: &step.saga.status, at: step.at });
            }
        }
        Ok(vec![Rows::of(&new)?, Rows::of(&moved)?])
    }

    fn read<'t>(&'t self, tx: Tx<'t>, ids: &'t [Uuid]) -> BoxFuture<'t, Result<BTreeMap<Uuid, Value>, StoreError>> {
        async move {
            let mut rows = BTreeMap::new();
            for r in self.select.fetch(&mut **tx, &id_rows(ids), 0).await? {
                let id: String = r.try_get("id")?;
                let mut row = Map::new();
                for (column, kind) in COLUMNS {
                    let value = match kind {
                        BigInt => Value::from(r.try_get::<i64, _>(column)?),
                        _ => Value::from(r.try_get::<String, _>(column)?),
                    };
                    row.insert(column.into(), value);
                }
                rows.insert(Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?, Value::Object(row));
            }
            Ok(rows)
        }
        .boxed()
    }

    fn delete<'t>(&'t self, tx: Tx<'t>, ids: &'t [Uuid]) -> BoxFuture<'t, Result<(), StoreError>> {
        async move { self.delete.execute(tx, &id_rows(ids), 0).await }.boxed()
    }
}

/// The inputs of an order saga started through the generic API
/// (`POST /sagas/order`): the seed body's checks, and fresh user and payee
/// ids unless the body brings its own. Other fields stay, so the
/// definition's input check refuses them as undeclared.
pub fn prepare(mut fields: Map<String, Value>, body: &[u8]) -> Result<Map<String, Value>, FieldErrors> {
    let order = parse(&fields, body)?;
    let mut data = inputs(&order);
    for id in ["user_id", "payee_id"] {
        match fields.remove(id) {
            None => {}
            Some(Value::String(s)) if Uuid::parse_str(&s).is_ok() => {
                data.insert(id.into(), Value::String(s));
            }
            Some(_) => return Err(FieldErrors::from([(id.to_string(), vec!["must be a UUID".to_string()])])),
        }
    }
    fields.remove("amount");
    fields.remove("description");
    data.extend(fields);
    Ok(data)
}
