//! Renders a definition as a Mermaid `stateDiagram-v2`, so a saga can be
//! reviewed as a picture (GitHub renders Mermaid in Markdown).

use std::fmt::Write;

use crate::definition::{Definition, Transition};

/// The diagram, one line per state and transition, in file order.
pub fn mermaid(def: &Definition) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "---\ntitle: {} v{}\n---\nstateDiagram-v2", def.name, def.version);
    let _ = writeln!(out, "    [*] --> {}: {}", def.initial, def.started);
    for name in &def.order {
        let Some(state) = def.state(name) else { continue };
        let mut label = format!("{name}<br/>status: {}", state.status);
        if let Some(c) = &state.command {
            let _ = write!(label, "<br/>sends {} (timeout {:?}, retries {})", c.subject, c.timeout, c.retries);
        }
        if let Some(undone) = &state.compensates {
            let _ = write!(label, "<br/>undoes {undone}");
        }
        let _ = writeln!(out, "    {name}: {label}");
        let edge = |out: &mut String, on: &str, t: &Transition| {
            let _ = writeln!(out, "    {name} --> {}: {on} / {}", t.goto, t.record.join(", "));
        };
        for (outcome, t) in &state.on_reply {
            edge(&mut out, outcome, t);
        }
        if let Some(t) = &state.on_timeout {
            edge(&mut out, "timeout", t);
        }
        for (event, t) in &state.on_event {
            edge(&mut out, &format!("event {event}"), t);
        }
        if let Some(t) = &state.cancel {
            edge(&mut out, "operator cancel", t);
        }
        for target in &state.repair {
            let _ = writeln!(out, "    {name} --> {target}: operator resume");
        }
        if state.terminal {
            let _ = writeln!(out, "    {name} --> [*]");
        }
        if state.compensates.is_some() {
            let _ = writeln!(out, "    class {name} compensation");
        }
    }
    let _ = writeln!(out, "    classDef compensation fill:#fde2e1,stroke:#c0392b");
    out
}
