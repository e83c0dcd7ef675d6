//! Runs a chain over JSON-lines records and prints the outcomes: the plugin author's loop
//! (`edge-agent plugin test`). The record format is described in `plugins/host/README.md`.

use std::io::{BufRead, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Chain, ChainError, InRecord, OutBatch};

/// Why a JSON-lines run stopped.
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    // Inner errors are part of the messages, not `source`s: reporters that print the source
    // chain (anyhow's `{:#}`) would print them twice.
    /// Reading the input failed.
    #[error("input line {line}: cannot read: {error}")]
    Read {
        /// 1-based line number.
        line: usize,
        /// The I/O error.
        error: std::io::Error,
    },
    /// An input line is not a valid record.
    #[error("input line {line}: {message}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Writing the outcomes failed.
    #[error("cannot write outcomes: {0}")]
    Write(std::io::Error),
    /// The chain stopped (policy `Stop`, or a plugin could not restart).
    #[error("input line {line}: {error}")]
    Chain {
        /// 1-based line number of the failing record (of the batch's first record when a
        /// whole batch call failed).
        line: usize,
        /// The chain's error (it names the plugin and the record's source coordinates).
        error: ChainError,
    },
}

/// Totals of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Input records.
    pub records_in: u64,
    /// Output records (kept, changed or dead-lettered).
    pub records_out: u64,
    /// Input records with no output and no failure.
    pub dropped: u64,
    /// Input records a plugin failed (skipped or dead-lettered).
    pub failed: u64,
}

/// Bytes in JSON: a UTF-8 string, `{"base64": "..."}`, or `{"json": <any JSON>}` (compact text).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonBytes {
    Text(String),
    Base64 { base64: String },
    Json { json: Value },
}

impl JsonBytes {
    fn into_bytes(self) -> Result<Vec<u8>, String> {
        match self {
            JsonBytes::Text(s) => Ok(s.into_bytes()),
            JsonBytes::Base64 { base64 } => {
                B64.decode(base64).map_err(|e| format!("bad base64: {e}"))
            }
            JsonBytes::Json { json } => Ok(json.to_string().into_bytes()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonHeaders {
    List(Vec<(String, Option<JsonBytes>)>),
    Map(std::collections::BTreeMap<String, Option<JsonBytes>>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRecord {
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    partition: i32,
    #[serde(default)]
    offset: Option<i64>,
    #[serde(default)]
    timestamp: i64,
    #[serde(default)]
    key: Option<JsonBytes>,
    #[serde(default)]
    value: Option<JsonBytes>,
    #[serde(default)]
    headers: Option<JsonHeaders>,
}

struct Owned {
    /// 1-based input line.
    line: usize,
    topic: String,
    partition: i32,
    offset: i64,
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

fn parse(line: &str, line_no: usize, index: i64) -> Result<Owned, String> {
    let r: JsonRecord = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let bytes = |b: Option<JsonBytes>| b.map(JsonBytes::into_bytes).transpose();
    let headers = match r.headers {
        None => Vec::new(),
        Some(JsonHeaders::List(l)) => l
            .into_iter()
            .map(|(n, v)| Ok((n, bytes(v)?)))
            .collect::<Result<_, String>>()?,
        Some(JsonHeaders::Map(m)) => m
            .into_iter()
            .map(|(n, v)| Ok((n, bytes(v)?)))
            .collect::<Result<_, String>>()?,
    };
    Ok(Owned {
        line: line_no,
        topic: r.topic.unwrap_or_else(|| "test".into()),
        partition: r.partition,
        offset: r.offset.unwrap_or(index),
        timestamp: r.timestamp,
        key: bytes(r.key)?,
        value: bytes(r.value)?,
        headers,
    })
}

fn bytes_json(b: Option<&[u8]>) -> Value {
    match b {
        None => Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => Value::from(s),
            Err(_) => json!({ "base64": B64.encode(b) }),
        },
    }
}

/// Runs `chain` over the records of `input` (one JSON object per line; blank lines and lines
/// starting with `#` are skipped) in batches of `batch_size`, and writes one JSON line per
/// outcome to `output`, in input order.
pub fn run_jsonl(
    chain: &mut Chain,
    input: impl BufRead,
    mut output: impl Write,
    batch_size: usize,
) -> Result<RunSummary, JsonlError> {
    let batch_size = batch_size.max(1);
    let mut summary = RunSummary::default();
    let mut pending: Vec<Owned> = Vec::new();
    let mut out = OutBatch::new();
    let mut lines = input.lines().enumerate().peekable();
    let mut index = 0i64;
    while let Some((n, line)) = lines.next() {
        let line = line.map_err(|error| JsonlError::Read { line: n + 1, error })?;
        let trimmed = line.trim();
        if !trimmed.is_empty() && !trimmed.starts_with('#') {
            let rec = parse(trimmed, n + 1, index).map_err(|message| JsonlError::Parse {
                line: n + 1,
                message,
            })?;
            index += 1;
            pending.push(rec);
        }
        if pending.len() >= batch_size || (lines.peek().is_none() && !pending.is_empty()) {
            run_batch(chain, &pending, &mut out, &mut output, &mut summary)
                .map_err(|e| e.locate(&pending))?;
            pending.clear();
        }
    }
    output.flush().map_err(JsonlError::Write)?;
    Ok(summary)
}

enum BatchError {
    Write(std::io::Error),
    Chain(ChainError),
}

impl BatchError {
    /// The error with the input line of the record (or batch) it is about.
    fn locate(self, batch: &[Owned]) -> JsonlError {
        match self {
            BatchError::Write(e) => JsonlError::Write(e),
            BatchError::Chain(error) => {
                let i = error.source_index().unwrap_or(0) as usize;
                let line = batch.get(i).map_or(0, |r| r.line);
                JsonlError::Chain { line, error }
            }
        }
    }
}

/// Borrowed headers of one record.
type HeaderRefs<'a> = Vec<(&'a str, Option<&'a [u8]>)>;

fn run_batch(
    chain: &mut Chain,
    records: &[Owned],
    out: &mut OutBatch,
    output: &mut impl Write,
    summary: &mut RunSummary,
) -> Result<(), BatchError> {
    let headers: Vec<HeaderRefs<'_>> = records
        .iter()
        .map(|r| {
            r.headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_deref()))
                .collect()
        })
        .collect();
    let input: Vec<InRecord<'_>> = records
        .iter()
        .zip(&headers)
        .map(|(r, h)| InRecord {
            topic: &r.topic,
            partition: r.partition,
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            headers: h,
        })
        .collect();
    chain.process_into(&input, out).map_err(BatchError::Chain)?;
    summary.records_in += input.len() as u64;
    summary.records_out += out.len() as u64;
    let mut next = 0;
    let outs: Vec<_> = out.iter(&input).collect();
    for (i, src) in input.iter().enumerate() {
        let source =
            json!({ "topic": src.topic, "partition": src.partition, "offset": src.offset });
        let failure = out.failures().iter().find(|f| f.source_index as usize == i);
        let mut any = false;
        while let Some(o) = outs.get(next).filter(|o| o.source_index as usize == i) {
            any = true;
            next += 1;
            let outcome = if o.kept {
                "kept"
            } else if failure.is_some_and(|f| f.dead_lettered) {
                "dead-letter"
            } else {
                "changed"
            };
            let line = json!({
                "source": source,
                "outcome": outcome,
                "topic": o.topic.unwrap_or(src.topic),
                "partition": o.partition.unwrap_or(src.partition),
                "timestamp": o.timestamp,
                "key": bytes_json(o.key),
                "value": bytes_json(o.value),
                "headers": o.headers.iter().map(|(n, v)| json!([n, bytes_json(v)])).collect::<Vec<_>>(),
            });
            writeln!(output, "{line}").map_err(BatchError::Write)?;
        }
        if let Some(f) = failure {
            summary.failed += 1;
            if !any {
                let line = json!({
                    "source": source,
                    "outcome": "failed",
                    "plugin": f.plugin.display().to_string(),
                    "error": f.failure.to_string(),
                });
                writeln!(output, "{line}").map_err(BatchError::Write)?;
            }
        } else if !any {
            summary.dropped += 1;
            writeln!(
                output,
                "{}",
                json!({ "source": source, "outcome": "dropped" })
            )
            .map_err(BatchError::Write)?;
        }
    }
    Ok(())
}
