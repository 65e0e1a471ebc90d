//! Typed inputs, case by case: given a definition's inputs, when a saga is
//! started with this data, then these are the problems reported per field
//! (or none).

use std::collections::BTreeMap;

use sagas::{Definition, Ignored, Input, InputKind, InputSpec, Millis, step};
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// A one-state saga whose `inputs` are written as given.
fn saga_with_inputs(inputs: &str) -> Definition {
    let source = format!(
        r#"name = "trip"
version = 1
initial = "waiting"
started = "trip_started"
{inputs}

[states.waiting]
status = "waiting"
on_event.go = {{ record = ["went"], goto = "done" }}

[states.done]
status = "done"
terminal = true
"#
    );
    sagas::parse("trip.toml", &source).unwrap_or_else(|e| panic!("{e}\n{source}"))
}

fn typed() -> Definition {
    saga_with_inputs(
        r#"[inputs]
name = "string"
nights = "integer"
price = "number"
breakfast = "boolean"
traveller_id = "uuid"
extras = "object"
anything = "any"
date = { type = "string", optional = true }
note = { optional = true }
"#,
    )
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// Data every typed input accepts.
fn valid() -> Value {
    json!({
        "name": "Ada",
        "nights": 3,
        "price": 99.5,
        "breakfast": true,
        "traveller_id": "6a1d9a4e-58c7-4c3e-9a52-5d6cf1b1b1a1",
        "extras": { "bed": "double" },
        "anything": [1, 2],
    })
}

/// `valid()` with `changes` merged in (a `null` change removes the field).
fn valid_with(changes: Value) -> Map<String, Value> {
    let mut data = object(valid());
    for (key, value) in object(changes) {
        if value.is_null() {
            data.remove(&key);
        } else {
            data.insert(key, value);
        }
    }
    data
}

fn problems(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (field, problem) in pairs {
        map.entry((*field).to_string()).or_default().push((*problem).to_string());
    }
    map
}

#[test]
fn the_table_form_declares_each_input_with_its_kind_and_whether_it_is_required() {
    let def = typed();
    let spec = |name: &str, kind, required| InputSpec { name: name.into(), kind, required };
    assert_eq!(
        def.inputs,
        [
            spec("name", InputKind::String, true),
            spec("nights", InputKind::Integer, true),
            spec("price", InputKind::Number, true),
            spec("breakfast", InputKind::Boolean, true),
            spec("traveller_id", InputKind::Uuid, true),
            spec("extras", InputKind::Object, true),
            spec("anything", InputKind::Any, true),
            spec("date", InputKind::String, false),
            spec("note", InputKind::Any, false),
        ],
        "in file order"
    );
    let shown = serde_json::to_value(&def.inputs[1]).unwrap_or_default();
    assert_eq!(shown, json!({ "name": "nights", "kind": "integer", "required": true }));
}

#[test]
fn valid_data_passes() {
    let def = typed();
    assert_eq!(def.check_inputs(&object(valid())), Ok(()));
    let with_optionals = valid_with(json!({ "date": "2025-07-01", "note": 7 }));
    assert_eq!(def.check_inputs(&with_optionals), Ok(()));
}

#[test]
fn each_kind_refuses_the_values_that_are_not_of_it() {
    let def = typed();
    // given a field, when it holds this value, then this is reported
    let cases = [
        ("name", json!(42), "must be a string"),
        ("nights", json!("3"), "must be an integer"),
        ("nights", json!(3.5), "must be an integer"),
        ("nights", json!(3.0), "must be an integer"),
        ("price", json!("99.5"), "must be a number"),
        ("breakfast", json!("yes"), "must be true or false"),
        ("breakfast", json!(1), "must be true or false"),
        ("traveller_id", json!("not-a-uuid"), "must be a UUID"),
        ("traveller_id", json!(12), "must be a UUID"),
        ("extras", json!(["bed"]), "must be an object"),
        ("extras", json!("double"), "must be an object"),
        ("date", json!(20250701), "must be a string"),
    ];
    for (field, value, expected) in cases {
        let data = valid_with(json!({ field: value.clone() }));
        assert_eq!(def.check_inputs(&data), Err(problems(&[(field, expected)])), "{field} = {value}");
    }
}

#[test]
fn each_kind_accepts_the_values_that_are_of_it() {
    let def = typed();
    let cases = [
        ("nights", json!(0)),
        ("nights", json!(-2)),
        ("nights", json!(u64::MAX)),
        ("price", json!(3)),
        ("price", json!(-0.25)),
        ("breakfast", json!(false)),
        ("traveller_id", json!("6A1D9A4E58C74C3E9A525D6CF1B1B1A1")),
        ("extras", json!({})),
        ("anything", json!(null)),
        ("anything", json!("text")),
        ("note", json!({ "any": "thing" })),
    ];
    for (field, value) in cases {
        let data = valid_with(json!({ field: value.clone() }));
        let result = def.check_inputs(&data);
        // `null` for a required input is a missing input, checked below.
        if value.is_null() {
            assert_eq!(result, Err(problems(&[(field, "is required")])), "{field} = null");
        } else {
            assert_eq!(result, Ok(()), "{field} = {value}");
        }
    }
}

#[test]
fn a_missing_required_input_is_reported_and_null_counts_as_missing() {
    let def = typed();
    let data = valid_with(json!({ "name": null }));
    assert_eq!(def.check_inputs(&data), Err(problems(&[("name", "is required")])));
    let mut data = object(valid());
    data.insert("nights".into(), Value::Null);
    assert_eq!(def.check_inputs(&data), Err(problems(&[("nights", "is required")])));
}

#[test]
fn an_optional_input_may_be_absent_or_null() {
    let def = typed();
    assert_eq!(def.check_inputs(&object(valid())), Ok(()));
    let mut data = object(valid());
    data.insert("date".into(), Value::Null);
    data.insert("note".into(), Value::Null);
    assert_eq!(def.check_inputs(&data), Ok(()));
}

#[test]
fn an_undeclared_field_is_reported_by_name() {
    let def = typed();
    let data = valid_with(json!({ "colour": "red" }));
    assert_eq!(def.check_inputs(&data), Err(problems(&[("colour", "is not an input of saga `trip`")])));
}

#[test]
fn every_problem_is_reported_at_once() {
    let def = typed();
    let data = object(json!({ "name": 1, "nights": "two", "extra": true }));
    assert_eq!(
        def.check_inputs(&data),
        Err(problems(&[
            ("name", "must be a string"),
            ("nights", "must be an integer"),
            ("price", "is required"),
            ("breakfast", "is required"),
            ("traveller_id", "is required"),
            ("extras", "is required"),
            ("anything", "is required"),
            ("extra", "is not an input of saga `trip`"),
        ]))
    );
}

#[test]
fn the_plain_list_form_makes_every_name_required_and_of_any_type() {
    let def = saga_with_inputs(r#"inputs = ["amount", "description"]"#);
    assert!(def.inputs.iter().all(|i| i.required && i.kind == InputKind::Any), "{:?}", def.inputs);
    assert_eq!(def.check_inputs(&object(json!({ "amount": 1, "description": ["any", "type"] }))), Ok(()));
    assert_eq!(def.check_inputs(&object(json!({ "amount": "1" }))), Err(problems(&[("description", "is required")])));
    assert_eq!(def.check_inputs(&object(json!({ "amount": "1", "description": "d", "x": 1 }))), Err(problems(&[("x", "is not an input of saga `trip`")])));
}

#[test]
fn a_definition_without_inputs_accepts_any_data() {
    for inputs in ["", "inputs = []", "[inputs]"] {
        let def = saga_with_inputs(inputs);
        assert!(def.inputs.is_empty());
        assert_eq!(def.check_inputs(&object(json!({ "whatever": 1, "else": null }))), Ok(()), "{inputs:?}");
        assert_eq!(def.check_inputs(&Map::new()), Ok(()), "{inputs:?}");
    }
}

#[test]
fn a_start_without_its_required_inputs_is_refused_and_with_wrong_ones_too() {
    let def = typed();
    let id = Uuid::from_u128(7);
    let start = |data| step(&def, None, &Input::Start { id, data }, Millis(0));
    // given missing required inputs, when started, then it is refused naming them
    let missing = start(valid_with(json!({ "name": null, "nights": null })));
    assert_eq!(missing, Err(Ignored::MissingInputs(vec!["name".into(), "nights".into()])));
    // given an ill-typed or undeclared field, then it is refused with the problems
    let wrong = start(valid_with(json!({ "nights": "3", "colour": "red" })));
    assert_eq!(wrong, Err(Ignored::InvalidInputs(problems(&[("colour", "is not an input of saga `trip`"), ("nights", "must be an integer")]))));
    let message = wrong.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("`nights` must be an integer"), "{message}");
    // given valid data, then the saga starts with it (and its id)
    let started = start(valid_with(json!({ "date": null }))).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(started.saga.data["nights"], 3);
    assert_eq!(started.saga.data["saga_id"], id.to_string());
}
