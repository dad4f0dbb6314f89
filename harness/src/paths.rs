//! Where things are: the workspace, Envoy, the wasm module, run directories.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{Error, Result};

/// Root of the Cargo workspace (this crate lives in `<root>/harness`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `<root>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// The Envoy binary: `ENVOY` if set, else `<root>/.venv/bin/envoy`
/// (installed by `make envoy`).
pub fn envoy() -> Result<PathBuf> {
    let path = match std::env::var_os("ENVOY") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => workspace_root().join(".venv/bin/envoy"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::EnvoyMissing(path))
    }
}

/// The built filter, `<root>/dist/upstream_tagger.wasm` (`make wasm`).
pub fn wasm() -> Result<PathBuf> {
    let path = workspace_root().join("dist/upstream_tagger.wasm");
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::WasmMissing(path))
    }
}

/// `explicit` if given (it must exist), else [`envoy`]; canonical.
pub fn envoy_at(explicit: Option<PathBuf>) -> Result<PathBuf> {
    let path = match explicit {
        Some(path) if path.is_file() => path,
        Some(path) => return Err(Error::EnvoyMissing(path)),
        None => envoy()?,
    };
    Ok(std::fs::canonicalize(&path).unwrap_or(path))
}

/// `explicit` if given (it must exist), else [`wasm`]; canonical.
pub fn wasm_at(explicit: Option<PathBuf>) -> Result<PathBuf> {
    let path = match explicit {
        Some(path) if path.is_file() => path,
        Some(path) => return Err(Error::WasmMissing(path)),
        None => wasm()?,
    };
    Ok(std::fs::canonicalize(&path).unwrap_or(path))
}

/// The folder holding the workspace's binaries `names`: next to the running
/// executable (a tool), or one level up from `deps/` (a test).
pub fn bin_dir(names: &[&str]) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| Error::io("cannot find this executable", e))?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for _ in 0..2 {
        if names.iter().all(|b| dir.join(b).exists()) {
            return Ok(dir);
        }
        dir = dir.join("..");
    }
    Err(Error::NotBuilt {
        names: match names {
            [] => String::new(),
            [one] => (*one).to_owned(),
            [init @ .., last] => format!("{} and {last}", init.join(", ")),
        },
        exe,
    })
}

/// A fresh directory `target/harness/<label>-<pid>-<n>` for one run's
/// configs and logs. Kept after the run, so failures can be inspected.
pub fn run_dir(label: &str) -> Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let safe: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = target_dir()
        .join("harness")
        .join(format!("{safe}-{}-{n}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot clear {}", dir.display()), e))?;
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }

    #[test]
    fn explicit_paths_must_exist_and_missing_binaries_name_the_fix() {
        let err = envoy_at(Some("/nonexistent/envoy".into())).unwrap_err();
        assert!(err.to_string().contains("make envoy"), "{err}");
        let err = wasm_at(Some("/nonexistent/x.wasm".into())).unwrap_err();
        assert!(err.to_string().contains("make wasm"), "{err}");
        let err = bin_dir(&["no-such-a", "no-such-b", "no-such-c"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("no-such-a, no-such-b and no-such-c are not built next to"),
            "{err}"
        );
        assert!(err.to_string().contains("cargo build --bins"), "{err}");
    }

    #[test]
    fn run_dirs_are_distinct_and_under_target() {
        let a = run_dir("same label").unwrap();
        let b = run_dir("same label").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(target_dir().join("harness")));
        assert!(a.is_dir() && b.is_dir());
        assert!(
            a.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("same_label-")
        );
    }
}
