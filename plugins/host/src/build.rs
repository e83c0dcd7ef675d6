//! Builds the example plugins and test fixtures (`plugins/examples`) for wasm32-wasip2 with the
//! project's own toolchain: no extra tool needed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why the example plugins could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `cargo` could not be started.
    #[error("cannot run {cargo:?} to build the example plugins: {source}")]
    Spawn {
        /// The cargo executable used.
        cargo: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// cargo ran and failed (its output went to stderr). A missing target is fixed with
    /// `rustup target add wasm32-wasip2`.
    #[error(
        "building the example plugins failed ({status}); is the wasm32-wasip2 target installed? (rustup target add wasm32-wasip2)"
    )]
    Failed {
        /// cargo's exit status.
        status: std::process::ExitStatus,
    },
}

/// The example workspace (`plugins/examples`) in this source tree.
pub fn examples_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    dir.canonicalize().unwrap_or(dir)
}

/// Where [`build_examples`] puts the components: `<name>.wasm` with dashes as underscores
/// (`filter.wasm`, `fixture_hostile.wasm`).
pub fn output_dir() -> PathBuf {
    examples_dir().join("target/wasm32-wasip2/release")
}

/// Runs `cargo build --release --target wasm32-wasip2` in `plugins/examples` and returns
/// [`output_dir`]. Incremental: fast when nothing changed.
pub fn build_examples() -> Result<PathBuf, BuildError> {
    let dir = examples_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(&dir)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(dir.join("target"))
        // Flags meant for the host build (e.g. from an outer `cargo test`) do not apply here.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .map_err(|source| BuildError::Spawn { cargo, source })?;
    if !status.success() {
        return Err(BuildError::Failed { status });
    }
    Ok(output_dir())
}
