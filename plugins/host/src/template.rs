//! The plugin crate template behind `edge-agent plugin new`: a standalone Rust crate, outside
//! any workspace, that builds a component for wasm32-wasip2 against the SDK by path.

use std::path::{Path, PathBuf};

/// The template's files, in `plugins/sdk/template` (its `lib.rs` is also compiled and tested by
/// the SDK's tests, and shown in `plugins/README.md`).
const LIB_RS: &str = include_str!("../../sdk/template/src/lib.rs");
const RECORDS: &str = include_str!("../../sdk/template/records.jsonl");
const README: &str = include_str!("../../sdk/template/README.md");
/// The repository's own toolchain file: a plugin builds with the toolchain the SDK is tested on.
const TOOLCHAIN: &str = include_str!("../../../rust-toolchain.toml");

/// Why a template crate could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The name cannot be a crate name.
    #[error(
        "plugin name {0:?}: use ASCII letters, digits, '-' and '_', starting with a letter (at most 64)"
    )]
    BadName(String),
    /// The target directory exists and is not empty.
    #[error("{} already exists and is not empty", .0.display())]
    Exists(PathBuf),
    /// The SDK directory has no `Cargo.toml` of `er-plugin-sdk`.
    #[error(
        "no er-plugin-sdk at {}: pass --sdk <plugins/sdk of an edge-replicator checkout>",
        .0.display()
    )]
    NoSdk(PathBuf),
    /// A file could not be written.
    #[error("cannot write {}: {error}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
}

/// The SDK crate of the source tree this binary was built from (`plugins/sdk`).
pub fn sdk_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
    dir.canonicalize().unwrap_or(dir)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
    // TOML basic strings: escape what a path may contain.
    let sdk = sdk
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
# The SDK needs Rust 1.95 or newer; rust-toolchain.toml pins the version it is tested with.
rust-version = "1.95"
publish = false

# A crate of its own, not a member of a workspace in a directory above it.
[workspace]

[lib]
# cdylib: the WebAssembly component (cargo build --target wasm32-wasip2);
# rlib: lets `cargo test` run the unit tests on the host.
crate-type = ["cdylib", "rlib"]

[dependencies]
# er-plugin-sdk is not published on a registry. This is a path dependency on the SDK of the
# edge-replicator checkout this crate was made from (edge-agent plugin new). On another machine
# point it at a checkout there, or use a git dependency on the edge-replicator repository:
#   er-plugin-sdk = {{ git = "<repository url>" }}
er-plugin-sdk = {{ path = "{sdk}" }}
# Typed JSON decoding (`rec.json_as::<T>()` into a `#[derive(Deserialize)]` struct).
serde = {{ version = "1", features = ["derive"] }}

[profile.release]
# Small, fast components: one codegen unit and LTO let the SDK glue inline into the plugin.
opt-level = 3
lto = true
codegen-units = 1
strip = true
"#
    )
}

/// Writes the template crate `name` into `<dir>/<name>` (created; it must not exist or be
/// empty), depending on the SDK at `sdk`. Returns the crate's directory.
pub fn write(name: &str, dir: &Path, sdk: &Path) -> Result<PathBuf, TemplateError> {
    if !valid_name(name) {
        return Err(TemplateError::BadName(name.to_owned()));
    }
    let sdk_manifest = std::fs::read_to_string(sdk.join("Cargo.toml")).unwrap_or_default();
    if !sdk_manifest.contains("name = \"er-plugin-sdk\"") {
        return Err(TemplateError::NoSdk(sdk.to_owned()));
    }
    let sdk = sdk.canonicalize().unwrap_or_else(|_| sdk.to_owned());
    let root = dir.join(name);
    if std::fs::read_dir(&root).is_ok_and(|mut d| d.next().is_some()) {
        return Err(TemplateError::Exists(root));
    }
    let lib = name.replace('-', "_");
    let readme = README.replace("{{name}}", name).replace("{{lib}}", &lib);
    let files: [(&str, &str); 6] = [
        ("Cargo.toml", &cargo_toml(name, &sdk)),
        ("rust-toolchain.toml", TOOLCHAIN),
        ("src/lib.rs", LIB_RS),
        ("records.jsonl", RECORDS),
        ("README.md", &readme),
        (".gitignore", "/target\n"),
    ];
    for (rel, text) in files {
        let path = root.join(rel);
        let write_err = |error| TemplateError::Write {
            path: path.clone(),
            error,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write_err)?;
        }
        std::fs::write(&path, text).map_err(write_err)?;
    }
    Ok(root.canonicalize().unwrap_or(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_crate_names() {
        for ok in ["keep-hot", "k", "a_b9"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "9lives", "-x", "a b", "a/b", "ä", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn writes_a_standalone_crate_that_points_at_the_sdk() {
        let dir = tempfile::tempdir().unwrap();
        let root = write("keep-hot", dir.path(), &sdk_dir()).unwrap();
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        let dep = format!("er-plugin-sdk = {{ path = \"{}\" }}", sdk_dir().display());
        assert!(manifest.contains(&dep), "{manifest}");
        assert!(manifest.contains("\n[workspace]\n"), "{manifest}");
        assert!(manifest.contains(r#"crate-type = ["cdylib", "rlib"]"#));
        let toolchain = std::fs::read_to_string(root.join("rust-toolchain.toml")).unwrap();
        assert!(toolchain.contains("wasm32-wasip2"), "{toolchain}");
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        assert!(readme.contains("release/keep_hot.wasm"), "{readme}");
        assert!(!readme.contains("{{"), "{readme}");
        assert_eq!(
            std::fs::read_to_string(root.join("src/lib.rs")).unwrap(),
            LIB_RS
        );

        // Not over an existing crate, not without an SDK.
        let err = write("keep-hot", dir.path(), &sdk_dir()).unwrap_err();
        assert!(matches!(err, TemplateError::Exists(_)), "{err}");
        let err = write("other", dir.path(), dir.path()).unwrap_err();
        assert!(err.to_string().contains("pass --sdk"), "{err}");
        let err = write("no way", dir.path(), &sdk_dir()).unwrap_err();
        assert!(err.to_string().contains("\"no way\""), "{err}");
    }
}
