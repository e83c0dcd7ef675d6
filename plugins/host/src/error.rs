//! Errors of loading plugins and of running chains; every message names the plugin file.

use std::fmt;
use std::path::{Path, PathBuf};

/// Quotes a plugin path for messages: `plugin "filters/x.wasm"`.
pub(crate) struct Quoted<'a>(pub &'a Path);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.display())
    }
}

/// Why a plugin could not be loaded or reloaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The wasmtime engine, linker or epoch ticker could not be set up (bad [`crate::HostConfig`]
    /// or an unsupported platform).
    #[error("plugin host: {0}")]
    Engine(String),
    /// The plugin file could not be read.
    #[error("plugin {}: cannot read the file: {source}", Quoted(path))]
    Read {
        /// Plugin file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid WebAssembly component (a core module, garbage, truncated, or
    /// using features this host does not enable).
    #[error("plugin {}: not a valid WebAssembly component: {reason}", Quoted(path))]
    InvalidComponent {
        /// Plugin file.
        path: PathBuf,
        /// wasmtime's explanation.
        reason: String,
    },
    /// The component is valid but does not implement the contract at this version: it imports
    /// something the host does not grant, or lacks the `guest` export with the right types.
    #[error(
        "plugin {}: is not a component of world {}: {reason}",
        Quoted(path),
        crate::WORLD
    )]
    WrongWorld {
        /// Plugin file.
        path: PathBuf,
        /// What is missing or mismatched.
        reason: String,
    },
    /// Instantiation failed for a resource reason (no free pooling slot, memory cap below the
    /// component's initial memory).
    #[error("plugin {}: cannot instantiate: {reason}", Quoted(path))]
    Instantiate {
        /// Plugin file.
        path: PathBuf,
        /// wasmtime's explanation.
        reason: String,
    },
    /// The plugin's `init` returned an error for its settings.
    #[error("plugin {}: init rejected config: {message}", Quoted(path))]
    InitRejected {
        /// Plugin file.
        path: PathBuf,
        /// The plugin's message.
        message: String,
    },
    /// The plugin trapped, ran out of time or memory in `init`.
    #[error("plugin {}: init failed: {failure}", Quoted(path))]
    InitFailed {
        /// Plugin file.
        path: PathBuf,
        /// What happened.
        failure: Failure,
    },
}

/// What went wrong inside one plugin call or with one record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The call ran past the batch deadline and was interrupted.
    #[error("exceeded the {} ms deadline", .0.as_millis())]
    Deadline(std::time::Duration),
    /// The plugin tried to grow its memory past the cap.
    #[error("exceeded the memory limit of {limit} bytes (asked for {wanted} bytes)")]
    Memory {
        /// The cap in bytes.
        limit: usize,
        /// The size the plugin asked for.
        wanted: usize,
    },
    /// The plugin trapped (panic, `unreachable`, out-of-bounds access, denied sleep...). The
    /// message includes the plugin's last error log (a Rust panic message) when there is one.
    #[error("trapped: {0}")]
    Trap(String),
    /// `process-batch` returned an error for the whole batch.
    #[error("failed the batch: {0}")]
    Batch(String),
    /// The plugin returned `fail` for this record.
    #[error("failed the record: {0}")]
    Record(String),
    /// One input turned into more records than `max_outputs_per_input` allows.
    #[error("produced {produced} records for one input record, more than the limit of {limit}")]
    TooManyOutputs {
        /// Records the plugin produced.
        produced: u32,
        /// The configured bound.
        limit: u32,
    },
    /// The result breaks the contract (wrong number of outcomes, spans out of range, text that
    /// is not UTF-8).
    #[error("returned a malformed result: {0}")]
    Malformed(String),
}

/// Why [`crate::Chain::process`] gave up on a batch. Only under [`crate::ErrorPolicy::Stop`], or
/// when the host itself cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A plugin failed a record or the batch and the route's policy is `Stop`. Nothing of the
    /// batch was output: the caller should stop the route without moving its position.
    #[error("plugin {}: {failure}{}", Quoted(plugin), record_suffix(*source_index))]
    Plugin {
        /// Plugin file.
        plugin: PathBuf,
        /// Index (into the input slice) of the failing record; `None` when the whole batch failed.
        source_index: Option<u32>,
        /// What happened.
        failure: Failure,
    },
    /// A plugin instance could not be recreated after a trap.
    #[error("plugin {}: cannot restart after a failure: {reason}", Quoted(plugin))]
    Restart {
        /// Plugin file.
        plugin: PathBuf,
        /// Why the fresh instance failed.
        reason: String,
    },
}

fn record_suffix(index: Option<u32>) -> String {
    index.map_or_else(String::new, |i| format!(" (input record {i})"))
}
