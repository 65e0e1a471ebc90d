// `sqlx::migrate!` embeds the migration files; a new file in the folder
// must rebuild the crate too (sqlx's documented build script).
fn main() {
    println!("cargo:rerun-if-changed=../migrations/orchestrator");
}
