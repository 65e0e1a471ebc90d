//! A library of deliberately broken definitions (`tests/broken/*.toml`).
//! Each file's first line says what loading it must report:
//! `# expect: [LINE:COLUMN ]text`. Adding a file adds a case.

mod common;

use std::path::Path;

#[test]
fn every_broken_definition_is_refused_with_its_reason_and_location() {
    let files = common::toml_files("tests/broken");
    assert!(files.len() >= 20, "the broken library shrank to {}", files.len());
    let mut failures = vec![];
    for path in &files {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let source = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let expect = source.lines().next().and_then(|l| l.strip_prefix("# expect: ")).unwrap_or_else(|| panic!("{name}: no `# expect:` line"));
        let (location, text) = match expect.split_once(' ') {
            Some((loc, rest)) if loc.ends_with(':') || loc.contains(':') && loc.chars().next().is_some_and(|c| c.is_ascii_digit()) => {
                (Some(loc.trim_end_matches(':')), rest)
            }
            _ => (None, expect),
        };
        let errors = match sagas::parse(&name, &source) {
            Ok(_) => {
                failures.push(format!("{name}: accepted, expected `{expect}`"));
                continue;
            }
            Err(e) => e,
        };
        let rendered: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
        let found = errors.0.iter().any(|e| {
            let at = format!("{}:{}", e.line, e.column);
            e.to_string().contains(text) && location.is_none_or(|l| at == l || at.starts_with(&format!("{l}:")) || e.line.to_string() == l)
        });
        if !found {
            failures.push(format!("{name}: expected `{expect}`, got:\n  {}", rendered.join("\n  ")));
        }
        for r in &rendered {
            assert!(r.starts_with(&format!("{name}:")), "{r} does not start with file:line:column");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn all_problems_of_a_file_are_reported_at_once() {
    let source = r#"
name = "order"
version = 1
initial = "payment"
started = "order_created"

[states.payment]
status = "created"
command = { subject = "eso.cmd.payment.process", timeout = "soon", backoff = "never" }
on.confirmed = { record = ["payment_confirmed"], goto = "nowhere" }
on_timeout = { record = ["payment_timed_out"], goto = "done" }

[states.done]
status = "delivered"
terminal = true
"#;
    let errors = sagas::parse("many.toml", source).err().unwrap_or_else(|| panic!("accepted"));
    let text = errors.to_string();
    assert_eq!(errors.0.len(), 3, "{text}");
    assert!(text.contains("many.toml:9:"), "{text}");
    assert!(text.contains("many.toml:10:"), "{text}");
    let lines: Vec<usize> = errors.0.iter().map(|e| e.line).collect();
    assert!(lines.is_sorted(), "sorted by position: {lines:?}");
}

#[test]
fn the_shipped_definitions_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("definitions");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // The folder holds the sagas and nothing else, so `definitions/*.toml` is the list of them.
    assert_eq!(names, ["order.toml", "trip.toml"]);
    for name in &names {
        let source = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Err(e) = sagas::parse(name, &source) {
            panic!("{e}");
        }
        assert!(source.starts_with("# "), "{name}: its first lines should say what the saga does");
    }
}
