//! Builds the example plugins and test fixtures: the Rust ones (`plugins/examples`) for
//! wasm32-wasip2 with the project's own toolchain, the Python and JavaScript ones with their
//! build scripts (`plugins/python/build.sh`, `plugins/js/build.sh`).

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
    /// A guest language's build script could not be started.
    #[error("cannot run {script} to build the {language} plugins: {source}")]
    ScriptSpawn {
        /// The language.
        language: Language,
        /// The script.
        script: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The machine lacks what installs the language's tools (python3, or node and npm); the
    /// script said what. Tests skip on this alone.
    #[error("the {language} plugins cannot be built on this machine: {message}")]
    ToolchainMissing {
        /// The language.
        language: Language,
        /// What the script printed.
        message: String,
    },
    /// A guest language's build script failed (tool install or componentize step).
    #[error("building the {language} plugins failed ({status}): {output}")]
    ScriptFailed {
        /// The language.
        language: Language,
        /// The script's exit status.
        status: std::process::ExitStatus,
        /// What the script printed on stderr.
        output: String,
    },
}

/// A guest language other than Rust, with a guest library and examples under `plugins/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    /// componentize-py: `plugins/python`.
    Python,
    /// componentize-js (StarlingMonkey): `plugins/js`.
    JavaScript,
}

impl Language {
    /// Both, in the order the docs list them.
    pub const ALL: [Language; 2] = [Language::Python, Language::JavaScript];

    /// The language's directory under `plugins/`.
    pub fn dir(self) -> PathBuf {
        let name = match self {
            Language::Python => "python",
            Language::JavaScript => "js",
        };
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name);
        dir.canonicalize().unwrap_or(dir)
    }
}

impl std::fmt::Display for Language {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Language::Python => "Python",
            Language::JavaScript => "JavaScript",
        })
    }
}

/// The build scripts' exit status for "this machine cannot install the tools".
const TOOLCHAIN_MISSING: i32 = 3;

/// Runs `plugins/<language>/build.sh`, which installs its pinned tools on first use (into
/// `$ER_CACHE_DIR`, default `~/.cache/edge-replicator`) and builds the language's examples and
/// fixtures into `plugins/<language>/target/<name>.wasm`; returns that directory. Incremental:
/// a component whose inputs did not change is not rebuilt.
pub fn build_language_examples(language: Language) -> Result<PathBuf, BuildError> {
    let dir = language.dir();
    let script = dir.join("build.sh");
    let out = Command::new(&script)
        .current_dir(&dir)
        .output()
        .map_err(|source| BuildError::ScriptSpawn {
            language,
            script: script.clone(),
            source,
        })?;
    let output = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    match out.status.code() {
        Some(0) => Ok(dir.join("target")),
        Some(TOOLCHAIN_MISSING) => Err(BuildError::ToolchainMissing {
            language,
            message: output,
        }),
        _ => Err(BuildError::ScriptFailed {
            language,
            status: out.status,
            output,
        }),
    }
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
