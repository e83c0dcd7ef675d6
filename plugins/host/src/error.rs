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
    /// `plugins.cache_dir` is unsafe or unusable: wasmtime loads native code from it, so only
    /// this user (or root) may own and write it.
    #[error("plugins.cache_dir {}: {problem}", Quoted(path))]
    CacheDir {
        /// The cache directory.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The plugin file could not be read.
    // The I/O error is part of the message, not a `source`: error reporters that print the
    // source chain would print it twice.
    #[error("plugin {}: cannot read the file: {error}", Quoted(path))]
    Read {
        /// Plugin file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
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
    /// The file is a precompiled plugin (native code) this host must not or cannot load: a file
    /// other users could have written, one made by another wasmtime version or for other
    /// limits, or a precompiled core module.
    #[error("plugin {}: precompiled plugin refused: {reason}", Quoted(path))]
    Precompiled {
        /// Plugin file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A WebAssembly plugin given to a host built without the `compiler` feature, which runs only
    /// precompiled plugins.
    #[error(
        "plugin {}: this edge-agent has no plugin compiler (built without the `compiler` feature) and runs only precompiled plugins: make one with `edge-agent plugin compile` on an edge-agent of the same version and target",
        Quoted(path)
    )]
    NoCompiler {
        /// Plugin file.
        path: PathBuf,
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
    /// The records one input turned into (through `replace`) hold more bytes than
    /// `max_output_bytes_per_input` allows. Bytes are counted per output record (topic, key,
    /// value, header names and values), also when they alias input bytes.
    #[error(
        "produced {produced} bytes of records for one input record, more than max_output_bytes_per_input = {limit}"
    )]
    TooManyOutputBytes {
        /// Bytes the plugin produced for the record.
        produced: u64,
        /// The configured bound.
        limit: u64,
    },
    /// The records one plugin call produced through `replace` hold more bytes than
    /// `max_output_bytes_per_batch` allows (kept records do not count: they are the input).
    #[error(
        "produced {produced} bytes of records in one batch call, more than max_output_bytes_per_batch = {limit}"
    )]
    BatchOutputBytes {
        /// Bytes produced by the call (up to and including the record that broke the bound).
        produced: u64,
        /// The configured bound.
        limit: u64,
    },
    /// The result breaks the contract (wrong number of outcomes, spans out of range, text that
    /// is not UTF-8).
    #[error("returned a malformed result: {0}")]
    Malformed(String),
}

/// Where a record came from: its source topic, partition and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePosition {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
}

impl fmt::Display for SourcePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "topic \"{}\" partition {} offset {}",
            self.topic, self.partition, self.offset
        )
    }
}

/// What a stopping failure was about: one record, or a whole batch call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailedAt {
    /// One input record (the source of the record the plugin failed, after earlier plugins of
    /// the chain).
    Record {
        /// Index into the input slice.
        source_index: u32,
        /// Its source coordinates.
        position: SourcePosition,
    },
    /// The whole batch call failed (trap, deadline, memory cap, batch error).
    Batch {
        /// Records in the failing call.
        records: u32,
        /// Source coordinates of its first record.
        first: SourcePosition,
    },
}

impl fmt::Display for FailedAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailedAt::Record { position, .. } => write!(f, "record at {position}"),
            FailedAt::Batch { records, first } => {
                write!(f, "batch of {records} records from {first}")
            }
        }
    }
}

/// Why [`crate::Chain::process`] gave up on a batch. Only under [`crate::ErrorPolicy::Stop`], or
/// when the host itself cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A plugin failed a record or the batch and the route's policy is `Stop`. Nothing of the
    /// batch was output: the caller should stop the route without moving its position.
    #[error("plugin {}: {failure} ({at})", Quoted(plugin))]
    Plugin {
        /// Plugin file.
        plugin: PathBuf,
        /// The failing record, or the failing batch call.
        at: FailedAt,
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

impl ChainError {
    /// Index into the input slice of the record that stopped the chain; `None` for a failed
    /// batch call or a restart failure.
    pub fn source_index(&self) -> Option<u32> {
        match self {
            ChainError::Plugin {
                at: FailedAt::Record { source_index, .. },
                ..
            } => Some(*source_index),
            _ => None,
        }
    }
}

/// Most bytes of a text a plugin hands the host that the host keeps: `fail` messages, batch
/// errors, `init` rejections, panic messages and log messages. They end up in dead-letter
/// headers, logs and route errors, so a plugin must not be able to make them arbitrarily large.
pub const MAX_TEXT_BYTES: usize = 1024;

/// Shortens `text` to at most `max` bytes (on a character boundary) plus a marker saying how
/// long it was: `"aaaa… [truncated: 5000 bytes]"`.
pub(crate) fn cap_text(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let total = text.len();
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&format!("\u{2026} [truncated: {total} bytes]"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_text_cuts_on_a_char_boundary_and_says_so() {
        assert_eq!(cap_text("short".into(), 8), "short");
        assert_eq!(cap_text("exactly8".into(), 8), "exactly8");
        assert_eq!(
            cap_text("abcdefghij".into(), 4),
            "abcd\u{2026} [truncated: 10 bytes]"
        );
        // 'é' is two bytes: a cut at 3 would split it.
        assert_eq!(cap_text("aéé".into(), 4), "aé\u{2026} [truncated: 5 bytes]");
    }
}
