//! Typed saga inputs: the data a saga starts with, as a definition declares
//! it, and the check a caller runs on start data before starting a saga.
//!
//! A definition writes its inputs either as a plain list of names (each
//! required, of any type: the form the first definitions used) or as an
//! `[inputs]` table naming each input's type and whether it may be left out:
//!
//! ```toml
//! [inputs]
//! traveller = "string"
//! nights = "integer"
//! date = { type = "string", optional = true }
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use toml::Spanned;

/// One input a saga starts with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputSpec {
    pub name: String,
    pub kind: InputKind,
    /// Whether a saga can start without it (absent or `null`).
    pub required: bool,
}

/// The JSON type an input must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// Any JSON value: what a name in the plain list form means.
    Any,
    String,
    /// A JSON integer (`2`, not `2.0` or `"2"`).
    Integer,
    /// Any JSON number.
    Number,
    Boolean,
    /// A string that parses as a UUID.
    Uuid,
    /// A JSON object.
    Object,
}

impl InputKind {
    /// Every kind, as a definition names it.
    pub const ALL: [InputKind; 7] =
        [InputKind::String, InputKind::Integer, InputKind::Number, InputKind::Boolean, InputKind::Uuid, InputKind::Object, InputKind::Any];

    /// The name a definition uses for this kind (`"integer"`).
    pub fn name(self) -> &'static str {
        match self {
            InputKind::Any => "any",
            InputKind::String => "string",
            InputKind::Integer => "integer",
            InputKind::Number => "number",
            InputKind::Boolean => "boolean",
            InputKind::Uuid => "uuid",
            InputKind::Object => "object",
        }
    }

    /// The kind a definition names, if it is one.
    pub fn from_name(name: &str) -> Option<InputKind> {
        InputKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether `value` (not `null`) is of this kind.
    pub fn admits(self, value: &Value) -> bool {
        match self {
            InputKind::Any => true,
            InputKind::String => value.is_string(),
            InputKind::Integer => value.is_i64() || value.is_u64(),
            InputKind::Number => value.is_number(),
            InputKind::Boolean => value.is_boolean(),
            InputKind::Uuid => value.as_str().is_some_and(|s| uuid::Uuid::parse_str(s).is_ok()),
            InputKind::Object => value.is_object(),
        }
    }

    /// What a value of this kind is, for messages (`"an integer"`).
    fn described(self) -> &'static str {
        match self {
            InputKind::Any => "any value",
            InputKind::String => "a string",
            InputKind::Integer => "an integer",
            InputKind::Number => "a number",
            InputKind::Boolean => "true or false",
            InputKind::Uuid => "a UUID",
            InputKind::Object => "an object",
        }
    }
}

impl fmt::Display for InputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What is wrong with one field of a saga's start data. Its text is what
/// [`crate::Definition::check_inputs`] reports under the field's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputProblem {
    #[error("is required")]
    Required,
    #[error("must be {}", .0.described())]
    WrongType(InputKind),
    #[error("is not an input of saga `{saga}`")]
    Undeclared { saga: String },
}

/// Every problem of `data` against `inputs`, by field name. A saga that
/// declares no inputs accepts any data: nothing is checked.
pub(crate) fn problems(saga: &str, inputs: &[InputSpec], data: &Map<String, Value>) -> Vec<(String, InputProblem)> {
    let mut found = Vec::new();
    if inputs.is_empty() {
        return found;
    }
    for input in inputs {
        // `null` is how JSON clients leave a field out, so it counts as absent.
        match data.get(&input.name).filter(|v| !v.is_null()) {
            None if input.required => found.push((input.name.clone(), InputProblem::Required)),
            None => {}
            Some(value) if !input.kind.admits(value) => {
                found.push((input.name.clone(), InputProblem::WrongType(input.kind)));
            }
            Some(_) => {}
        }
    }
    for field in data.keys() {
        if !inputs.iter().any(|i| &i.name == field) {
            found.push((field.clone(), InputProblem::Undeclared { saga: saga.to_string() }));
        }
    }
    found
}

/// [`problems`] grouped by field, as callers show them.
pub(crate) fn grouped(problems: Vec<(String, InputProblem)>) -> BTreeMap<String, Vec<String>> {
    let mut by_field: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (field, problem) in problems {
        by_field.entry(field).or_default().push(problem.to_string());
    }
    by_field
}

// ---- the file as written -------------------------------------------------

/// `inputs` as written: a list of names, or a table of name → type.
/// Deserialized by hand (not `#[serde(untagged)]`) because an untagged enum
/// buffers its content and so loses the spans errors are located with.
#[derive(Debug)]
pub(crate) enum RawInputs {
    List(Vec<Spanned<String>>),
    /// Sorted by name, as toml hands tables over; the spans give file order.
    Table(Vec<(Spanned<String>, Spanned<RawInput>)>),
}

/// One entry of an `[inputs]` table: `"integer"` or `{ type = "integer", optional = true }`.
#[derive(Debug)]
pub(crate) enum RawInput {
    Kind(String),
    Table { kind: Option<Spanned<String>>, optional: bool },
}

impl<'de> Deserialize<'de> for RawInputs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Inputs;
        impl<'de> Visitor<'de> for Inputs {
            type Value = RawInputs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of input names or an [inputs] table of name = \"type\"")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawInputs, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<Spanned<String>>()? {
                    names.push(name);
                }
                Ok(RawInputs::List(names))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawInputs, A::Error> {
                let mut entries = Vec::new();
                while let Some(name) = map.next_key::<Spanned<String>>()? {
                    entries.push((name, map.next_value::<Spanned<RawInput>>()?));
                }
                Ok(RawInputs::Table(entries))
            }
        }
        deserializer.deserialize_any(Inputs)
    }
}

impl<'de> Deserialize<'de> for RawInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            #[serde(rename = "type")]
            kind: Option<Spanned<String>>,
            #[serde(default)]
            optional: bool,
        }
        struct Entry;
        impl<'de> Visitor<'de> for Entry {
            type Value = RawInput;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a type (\"string\", \"integer\", ...) or a table { type = \"...\", optional = true }")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<RawInput, E> {
                Ok(RawInput::Kind(text.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawInput, A::Error> {
                let table = Table::deserialize(MapAccessDeserializer::new(map))?;
                Ok(RawInput::Table { kind: table.kind, optional: table.optional })
            }
        }
        deserializer.deserialize_any(Entry)
    }
}
