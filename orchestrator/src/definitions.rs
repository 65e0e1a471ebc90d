//! Loading saga definitions at start-up: every version recorded in the
//! store (so running sagas keep theirs) plus the files in `SAGAS_DIR`.
//! A file that changed a recorded version without bumping it stops the
//! start with the reason, rather than silently changing running sagas.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sagas::Registry;

use crate::store::Store;

/// The order saga shipped in the binary, used when `SAGAS_DIR` has none.
pub const BUILTIN_ORDER: &str = include_str!("../../sagas/order.toml");

/// The `*.toml` definition files of a directory (the crate manifest that
/// shares `sagas/` with them is not one), sorted by name.
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
            tracing::info!(dir = %dir.display(), "no saga definitions there; using the built-in order saga");
            let def = sagas::parse("built-in order.toml", BUILTIN_ORDER).map_err(|e| anyhow::anyhow!("{e}"))?;
            sources.push((def, BUILTIN_ORDER.to_string()));
        }
    }
    for (def, source) in sources {
        let id = def.id();
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
    if registry.latest("order").is_none() {
        anyhow::bail!("no saga definition named `order` in {} (the API starts order sagas)", dir.display());
    }
    Ok(registry)
}
