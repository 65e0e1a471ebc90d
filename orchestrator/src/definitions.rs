//! Loading saga definitions at start-up: every version recorded in the
//! store (so running sagas keep theirs) plus the files in `SAGAS_DIR`.
//! A file that changed a recorded version without bumping it stops the
//! start with the reason, rather than silently changing running sagas.
//! Also the checks behind `eso saga check`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sagas::Registry;

use crate::store::Store;

/// The order saga shipped in the binary.
pub const BUILTIN_ORDER: &str = include_str!("../../sagas/definitions/order.toml");
/// The shipped definitions, built into the binary and used when `SAGAS_DIR`
/// has none, so the binary alone runs the sagas it ships participants for.
pub const BUILTIN: [(&str, &str); 2] = [("order.toml", BUILTIN_ORDER), ("trip.toml", include_str!("../../sagas/definitions/trip.toml"))];

/// The `*.toml` definition files of a directory, sorted by name. The shipped
/// ones have a folder of their own (`sagas/definitions/`); a `Cargo.toml` is
/// still passed over, so pointing `SAGAS_DIR` at a crate folder (as `sagas/`
/// was before) does not read a manifest as a saga.
pub fn files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.file_name().is_some_and(|n| n != "Cargo.toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Parses one file, with its path in every error.
pub fn parse_file(path: &Path) -> anyhow::Result<(sagas::Definition, String)> {
    let source = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let def = sagas::parse(&path.display().to_string(), &source).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((def, source))
}

pub async fn load(store: &Store, dir: &Path) -> anyhow::Result<Registry> {
    let mut registry = Registry::new();
    for (name, version, hash, source) in store.definitions().await? {
        match sagas::parse(&format!("{name} v{version} (stored)"), &source) {
            Ok(def) if def.hash() == hash => {
                registry.insert(def)?;
            }
            Ok(def) => tracing::warn!(%name, version, stored = %hash, now = %def.hash(), "stored definition hashes differently now; sagas on it cannot resume"),
            Err(e) => tracing::warn!(%name, version, error = %e, "stored definition no longer parses; sagas on it cannot resume"),
        }
    }
    let mut sources = Vec::new();
    match files_in(dir) {
        Ok(files) if !files.is_empty() => {
            let mut errors = Vec::new();
            for path in files {
                match parse_file(&path) {
                    Ok(parsed) => sources.push(parsed),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            if !errors.is_empty() {
                anyhow::bail!("invalid saga definitions:\n{}", errors.join("\n"));
            }
        }
        _ => {
            tracing::info!(dir = %dir.display(), "no saga definitions there; using the built-in ones (order, trip)");
            for (file, source) in BUILTIN {
                let def = sagas::parse(&format!("built-in {file}"), source).map_err(|e| anyhow::anyhow!("{e}"))?;
                sources.push((def, source.to_string()));
            }
        }
    }
    let retired = store.retired().await?;
    for (def, source) in sources {
        let id = def.id();
        if retired.contains(&(def.name.clone(), def.version)) {
            tracing::info!(definition = %id, "retired version not loaded; remove its file from SAGAS_DIR");
            continue;
        }
        registry.insert(def.clone())?;
        let recorded = store.record_definition(&def, &source).await?;
        if recorded != def.hash() {
            anyhow::bail!(
                "saga `{}` version {} was recorded with other content (hash {recorded}) by another replica; \
                 give the edited definition a new version",
                def.name,
                def.version
            );
        }
        tracing::info!(definition = %id, "saga definition loaded");
    }
    check_migrations(&registry)?;
    // Any set of valid definitions serves: the order routes answer for
    // themselves when no `order` saga is loaded.
    Ok(registry)
}

/// Every `[migrate.N]` mapping held against version N, where N is loaded
/// (a version never recorded has no sagas to move): a mapping that leaves
/// a state out or keeps a command the new state does not send stops the
/// start, as an invalid file does, before any saga could be moved by it.
fn check_migrations(registry: &Registry) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for new in registry.iter() {
        for from in new.migrations.keys() {
            if let Some(old) = registry.version(&new.name, *from)
                && let Err(e) = sagas::migration::check(old, new)
            {
                errors.push(e.to_string());
            }
        }
    }
    if !errors.is_empty() {
        anyhow::bail!("invalid migration mappings:\n{}", errors.join("\n"));
    }
    Ok(())
}

/// The files given, or every definition in `dir` when none are; `None`
/// (after saying why on stderr) when `dir` cannot be read or holds none.
fn files_or_dir(files: &[PathBuf], dir: &Path) -> Option<Vec<PathBuf>> {
    if !files.is_empty() {
        return Some(files.to_vec());
    }
    match files_in(dir) {
        Ok(found) if !found.is_empty() => Some(found),
        Ok(_) => {
            eprintln!("{}: no saga definitions (*.toml) there", dir.display());
            None
        }
        Err(e) => {
            eprintln!("{}: {e}", dir.display());
            None
        }
    }
}

/// `eso saga check`: parses `files`, or every `*.toml` in `dir` (SAGAS_DIR)
/// when none are given. Prints `path: ok (name vN, K states, hash …)` per
/// valid file to stdout and every problem as `file:line:column: reason` to
/// stderr; returns whether every file was valid. A `dir` that cannot be read
/// or holds no definitions counts as a failure: there is nothing to vouch for.
pub fn check(files: &[PathBuf], dir: &Path) -> bool {
    let Some(files) = files_or_dir(files, dir) else { return false };
    let mut valid = true;
    let mut checked = Vec::new();
    for path in &files {
        match parse_file(path) {
            Ok((def, _)) => {
                let hash = def.hash();
                println!("{}: ok ({} v{}, {} states, hash {})", path.display(), def.name, def.version, def.states.len(), &hash[..hash.len().min(12)]);
                checked.push((path, def));
            }
            Err(e) => {
                valid = false;
                eprintln!("{e:#}");
            }
        }
    }
    // A mapping is held against its old version when that is at hand: among
    // the files checked, or in SAGAS_DIR (where the running version lives).
    let mut known: Vec<sagas::Definition> = checked.iter().map(|(_, d)| d.clone()).collect();
    known.extend(files_in(dir).unwrap_or_default().iter().filter_map(|p| parse_file(p).ok()).map(|(d, _)| d));
    for (path, new) in &checked {
        for from in new.migrations.keys() {
            match known.iter().find(|d| d.name == new.name && d.version == *from) {
                Some(old) => match sagas::migration::check(old, new) {
                    Ok(()) => println!("{}: [migrate.{from}] ok (every state of {} v{from} mapped)", path.display(), new.name),
                    Err(e) => {
                        valid = false;
                        eprintln!("{e}");
                    }
                },
                None => eprintln!(
                    "{}: [migrate.{from}] not checked: no file of {} v{from} among those given or in {} (name it too, e.g. `eso saga check old.toml new.toml`)",
                    path.display(),
                    new.name,
                    dir.display()
                ),
            }
        }
    }
    valid
}

/// `eso saga verify`: parses `files` (or every `*.toml` in `dir`, as
/// [`check`] does) and explores each with [`sagas::verify::verify`]. Prints
/// `path: verified (N configurations, bound B, T ms)` per clean file to
/// stdout; every violation with its counterexample (readable, then as a
/// Mermaid path) and every invalid file to stderr. Returns whether every
/// file was valid and verified clean.
pub fn verify(files: &[PathBuf], dir: &Path) -> bool {
    let Some(files) = files_or_dir(files, dir) else { return false };
    let mut clean = true;
    for path in &files {
        let def = match parse_file(path) {
            Ok((def, _)) => def,
            Err(e) => {
                clean = false;
                eprintln!("{e:#}");
                continue;
            }
        };
        let started = std::time::Instant::now();
        let report = sagas::verify::verify(&def);
        let ms = started.elapsed().as_millis();
        if report.is_clean() {
            println!("{}: verified ({} configurations, bound {}, {ms} ms)", path.display(), report.configurations, report.bound);
            continue;
        }
        clean = false;
        eprintln!("{}: {} violation(s) ({} configurations, bound {}, {ms} ms)", path.display(), report.violations.len(), report.configurations, report.bound);
        for violation in &report.violations {
            eprintln!("{}: {violation}", path.display());
            if !violation.path.is_empty() {
                eprintln!("{}", violation.mermaid(&def));
            }
        }
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../sagas/definitions")
    }

    #[test]
    fn the_shipped_folder_holds_exactly_the_sagas_and_all_are_valid() {
        let files = files_in(&shipped()).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<_> = files.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["order.toml", "trip.toml"]);
        assert!(check(&[], &shipped()), "every shipped definition checks");
        for (file, source) in BUILTIN {
            assert!(sagas::parse(file, source).is_ok(), "{file}");
        }
    }

    #[test]
    fn check_fails_on_a_broken_file_an_empty_folder_and_a_missing_one() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert!(!check(&[], dir.path()), "nothing to check is not a pass");
        assert!(!check(&[], &dir.path().join("missing")));
        let broken = dir.path().join("broken.toml");
        std::fs::write(&broken, "name = \"x\"\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(!check(&[], dir.path()));
        assert!(!check(std::slice::from_ref(&broken), &shipped()), "given files are checked, not the folder");
        assert!(check(&[shipped().join("order.toml")], dir.path()));
    }

    #[test]
    fn a_mapping_is_held_against_its_old_version_by_check_and_at_start_up() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sagas/tests/migrate");
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let read = |name: &str| std::fs::read_to_string(fixtures.join(name)).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("order-v1.toml"), read("order-v1.toml")).unwrap_or_else(|e| panic!("{e}"));
        let v3 = dir.path().join("order-v3.toml");
        std::fs::write(&v3, read("order-v3.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert!(check(&[], dir.path()));
        assert!(check(std::slice::from_ref(&v3), dir.path()), "the old version found in SAGAS_DIR");

        let broken = read("order-v3.toml").replace("refund = \"refund\"\n", "");
        std::fs::write(&v3, &broken).unwrap_or_else(|e| panic!("{e}"));
        assert!(!check(&[], dir.path()), "refund left out");
        assert!(check(std::slice::from_ref(&v3), &shipped()), "without the old version at hand the file alone is valid");

        let mut registry = Registry::new();
        for (file, source) in [("order-v1.toml", read("order-v1.toml")), ("order-v3.toml", broken)] {
            registry.insert(sagas::parse(file, &source).unwrap_or_else(|e| panic!("{e}"))).unwrap_or_else(|e| panic!("{e}"));
        }
        let refused = check_migrations(&registry).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("order-v3.toml:") && refused.contains("`refund` of version 1 is not mapped"), "{refused}");
    }

    #[test]
    fn verify_passes_the_shipped_sagas_and_fails_a_skipped_compensation() {
        assert!(verify(&[], &shipped()), "every shipped definition verifies");
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert!(!verify(&[], dir.path()), "nothing to verify is not a pass");
        let broken = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sagas/tests/broken_verify/delivery_failure_skips_refund.toml");
        assert!(!verify(std::slice::from_ref(&broken), &shipped()));
        let invalid = dir.path().join("invalid.toml");
        std::fs::write(&invalid, "name = \"x\"\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(!verify(&[invalid], &shipped()));
    }
}
