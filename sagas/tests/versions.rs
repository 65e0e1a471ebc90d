//! Definitions change while sagas run: a saga finishes on the version it
//! started with, new sagas take the newest version, and a version's content
//! can never change under a running saga.

mod common;

use common::{Run, order_data};
use sagas::{Registry, RegistryError};

/// The order saga as version 1 shipped it: the edits below start from it.
const ORDER: &str = include_str!("shipped/order-v1.toml");

fn order() -> sagas::Definition {
    sagas::parse("order-v1.toml", ORDER).unwrap_or_else(|e| panic!("{e}"))
}

/// Version 2 of the order saga: reserve stock after payment; if delivery
/// fails, release the stock (a new compensation) before refunding.
fn order_v2_source() -> String {
    let mut source = ORDER.replace("version = 1", "version = 2").replace(
        r#"on.confirmed = { record = ["payment_confirmed", "order_confirmed"], goto = "delivery" }"#,
        r#"on.confirmed = { record = ["payment_confirmed", "order_confirmed"], goto = "stock" }"#,
    );
    source = source
        .replace(r#"on.failed = { record = ["delivery_failed"], goto = "refund" }"#, r#"on.failed = { record = ["delivery_failed"], goto = "release_stock" }"#);
    source.push_str(
        r#"
[states.stock]
status = "confirmed"
command = { subject = "eso.cmd.stock.reserve", fields = ["description"], timeout = "1s", retries = 2, backoff = "100ms" }
on.reserved = { record = ["stock_reserved"], goto = "delivery" }
on.unavailable = { record = ["stock_unavailable"], goto = "refund" }
on_timeout = { record = ["stock_timed_out"], goto = "refund" }

[states.release_stock]
status = "cancelling"
compensates = "stock"
command = { subject = "eso.cmd.stock.release", timeout = "1s", retries = 5, backoff = "100ms" }
on.released = { record = ["stock_released"], goto = "refund" }
on_timeout = { record = ["stock_release_failed"], goto = "refund" }
"#,
    );
    source
}

#[test]
fn an_edited_definition_runs_new_sagas_while_old_ones_finish_on_their_version() {
    let mut registry = Registry::new();
    let v1 = registry.insert(order()).unwrap_or_else(|e| panic!("{e}"));
    let old = Run::start((*v1).clone(), order_data("test"));

    let v2 = sagas::parse("order.toml", &order_v2_source()).unwrap_or_else(|e| panic!("v2 invalid:\n{e}"));
    let v2 = registry.insert(v2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(registry.latest("order").map(|d| d.version), Some(2), "new sagas start on v2");

    // The old saga is resumed with the definition it recorded, not the latest.
    let recorded = registry.get(&old.saga.definition).unwrap_or_else(|| panic!("v1 no longer loaded"));
    assert_eq!(recorded.version, 1);
    let mut old = Run { def: (**recorded).clone(), ..old };
    old.reply("confirmed");
    assert_eq!(old.saga.state, "delivery", "v1 has no stock step");
    old.reply("failed");
    old.reply("refunded");
    assert_eq!(old.types(), ["order_created", "payment_confirmed", "order_confirmed", "delivery_failed", "payment_refunded", "order_cancelled"]);

    // A new saga on v2 takes the new step and its compensation.
    let mut new = Run::start((*v2).clone(), order_data("test"));
    new.reply("confirmed");
    assert_eq!(new.saga.state, "stock");
    new.reply("reserved");
    new.reply("failed");
    assert_eq!(new.saga.state, "release_stock");
    let release = new.sent.last().map(|c| c.payload.clone()).unwrap_or_default();
    assert_eq!(release["compensates"]["state"], "stock");
    new.reply("released");
    new.reply("refunded");
    assert_eq!(new.saga.status, "cancelled");
    assert_eq!(
        new.subjects(),
        ["eso.cmd.payment.process", "eso.cmd.stock.reserve", "eso.cmd.delivery.deliver", "eso.cmd.stock.release", "eso.cmd.payment.refund"]
    );
    new.assert_replays();

    // Stepping a v1 saga with v2 is refused by the machine itself.
    assert!(sagas::step(&v2, Some(&old.saga), &sagas::Input::Deadline, old.now).is_err());
}

#[test]
fn changing_a_version_without_bumping_it_is_refused() {
    let mut registry = Registry::new();
    registry.insert(order()).unwrap_or_else(|e| panic!("{e}"));
    let edited = ORDER.replace(r#"timeout = "2s", retries = 3"#, r#"timeout = "5s", retries = 3"#);
    assert_ne!(edited, ORDER);
    let edited = sagas::parse("order.toml", &edited).unwrap_or_else(|e| panic!("{e}"));
    let err = registry.insert(edited).err().unwrap_or_else(|| panic!("accepted a changed v1"));
    assert!(matches!(&err, RegistryError::ChangedWithoutBump { name, version: 1, next: 2, .. } if name == "order"));
    assert!(err.to_string().contains("without a version bump"), "{err}");
}

#[test]
fn comments_and_layout_do_not_change_the_hash() {
    let reformatted = format!("# a new comment\n\n{}", ORDER.replace(" = ", "  =  "));
    let a = order();
    let b = sagas::parse("order.toml", &reformatted).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.hash(), b.hash());
    let mut registry = Registry::new();
    registry.insert(a).unwrap_or_else(|e| panic!("{e}"));
    assert!(registry.insert(b).is_ok(), "same meaning, same version: accepted");
}

#[test]
fn the_diagram_shows_every_state_and_transition() {
    let diagram = sagas::graph::mermaid(&order());
    for line in [
        "stateDiagram-v2",
        "[*] --> payment: order_created",
        "payment --> delivery: confirmed / payment_confirmed, order_confirmed",
        "payment --> cancelled: declined / payment_declined, order_cancelled",
        "payment --> refund: timeout / payment_timed_out",
        "delivery --> refund: failed / delivery_failed",
        "refund --> cancelled: refunded / payment_refunded, order_cancelled",
        "delivered --> [*]",
        "class refund compensation",
    ] {
        assert!(diagram.contains(line), "missing `{line}` in\n{diagram}");
    }
}

#[test]
fn the_shipped_definitions_keep_the_hashes_running_sagas_recorded() {
    // Running sagas recorded these hashes; a change to a released file, or
    // to how the hash is taken, would strand them. A changed file is a new
    // version, and the released one is kept under tests/shipped/ (each
    // store keeps its own copy; these prove the parser still reads it the
    // same way).
    for (file, source, hash) in [
        ("order-v1.toml", ORDER, "4f3bdc0776fe03f19cf647c6adab1b050cb3c7ac1bad46d6d9eb4b76575c8769"),
        ("trip-v1.toml", include_str!("shipped/trip-v1.toml"), "244f2bc00cdb2e7e99e2258d11a37acecf7581a5e2263cc573fa5a3ece23a396"),
        ("order.toml (v2)", common::ORDER, "d11f765126b4e0976534065f49fa3012bcf4be4e1835c2db694e9d1e9bcacf27"),
        ("trip.toml (v2)", common::TRIP, "4e51aa0111fd9adeadd32cf9eaa340c6b82db8611a1131376ea0c1cf51449ebe"),
    ] {
        let def = sagas::parse(file, source).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(def.hash(), hash, "{file}");
    }
}
