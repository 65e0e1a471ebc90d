//! What a new user meets at the command line: a clear line for a taken
//! port or a SQLite file another eso holds, flags that reach the process
//! they configure, and no secret in `--help`.

mod common;

use std::net::TcpListener;
use std::process::{Command, Output};

fn eso(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eso"))
        .args(args)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("eso {args:?}: {e}"))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Nothing behind these: a participant binds its port before it connects.
const NOWHERE: [(&str, &str); 3] = [("DATABASE_URL", "postgres://eso:hunter2@127.0.0.1:1/eso"), ("NATS_URL", "nats://127.0.0.1:1"), ("RUST_LOG", "off")];

#[test]
fn a_taken_port_is_one_line_that_names_the_variable() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = taken.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("{e}")).to_string();
    let output = eso(&["participant", "payment", "--port", &port], &NOWHERE);
    assert!(!output.status.success());
    let said = stderr(&output);
    assert!(said.contains(&format!("port {port} on 127.0.0.1 is already in use; set PORT")), "{said}");
    assert_eq!(said.trim().lines().count(), 1, "one line, no backtrace: {said}");

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = dir.path().join("eso.db").display().to_string();
    let output = eso(&[], &[("PORT", port.as_str()), ("ESO_SQLITE_PATH", store.as_str()), ("RUST_LOG", "off")]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("is already in use; set PORT"), "{}", stderr(&output));
}

#[test]
fn the_orchestrators_flags_are_refused_before_a_participant() {
    let output = eso(&["--port", "4000", "participant", "payment"], &NOWHERE);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--port configures the orchestrator, not a participant"), "{}", stderr(&output));
}

#[test]
fn help_lists_the_configuration_without_the_database_password() {
    for args in [&["--help"][..], &["participant", "payment", "--help"][..]] {
        let output = eso(args, &NOWHERE);
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{args:?}");
        assert!(help.contains("DATABASE_URL") && help.contains("--port"), "{args:?}: {help}");
        assert!(!help.contains("hunter2"), "{args:?} shows the database password: {help}");
    }
}

/// A bad token setting stops eso with the reason, and never with the
/// setting's text: one bad entry must not print the good ones.
#[test]
fn a_bad_token_setting_is_refused_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = dir.path().join("eso.db").display().to_string();
    let setting = "alice:a-good-secret-token-0123456789,bob:tiny-tok";
    let output = eso(&["--port", "0"], &[("ESO_OPERATOR_TOKEN", setting), ("ESO_SQLITE_PATH", store.as_str()), ("RUST_LOG", "off")]);
    assert!(!output.status.success());
    let said = format!("{}{}", stderr(&output), String::from_utf8_lossy(&output.stdout));
    assert!(said.contains("ESO_OPERATOR_TOKEN: entry 2: the token is shorter than 16 characters"), "{said}");
    assert!(!said.contains("a-good-secret") && !said.contains("tiny-tok"), "the setting leaked: {said}");
}

/// One embedded SQLite file belongs to one process: a second eso on it is
/// refused with one line naming the file and who holds it, and the first
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_eso_on_one_sqlite_file_is_one_line_that_names_the_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = dir.path().join("eso.db").display().to_string();
    let first = common::Process::spawn(&[], &[("ESO_SQLITE_PATH", store.clone())]).await;
    let output = eso(&["--port", "0"], &[("ESO_SQLITE_PATH", store.as_str()), ("RUST_LOG", "off")]);
    assert!(!output.status.success());
    let said = stderr(&output);
    assert!(said.contains(&format!("the SQLite file {store} is in use by another eso process (pid {})", first.pid())), "{said}");
    assert!(said.contains("set ESO_SQLITE_PATH to another file"), "{said}");
    assert_eq!(said.trim().lines().count(), 1, "one line, no backtrace: {said}");

    let http = reqwest::Client::new();
    let created = http.post(first.url()).json(&serde_json::json!({ "amount": 10.50, "description": "test order" })).send().await;
    let created = created.unwrap_or_else(|e| panic!("POST to the first eso: {e}"));
    assert_eq!(created.status().as_u16(), 201, "the first eso stopped serving");
}
