//! Run a plugin on the host, without a WebAssembly runtime: for plugin unit tests.
//!
//! ```
//! use er_plugin_sdk::testing::{run, TestOutcome, TestRecord};
//! use er_plugin_sdk::{Config, Outcome, Plugin, Record};
//!
//! struct DropEmpty;
//! impl Plugin for DropEmpty {
//!     fn init(_: Config) -> Result<Self, String> { Ok(DropEmpty) }
//!     fn process<'a>(&mut self, rec: &Record<'a>) -> Outcome<'a> {
//!         if rec.value().is_some_and(|v| v.is_empty()) { Outcome::Drop } else { Outcome::Keep }
//!     }
//! }
//!
//! let out = run(&mut DropEmpty, &[TestRecord::new("t", ""), TestRecord::new("t", "x")]).unwrap();
//! assert_eq!(out, vec![TestOutcome::Drop, TestOutcome::Keep]);
//! ```

use crate::bindings::edge_replicator::plugin::types as wit;
use crate::{Batch, BatchPlugin, Output, Plugin};

/// An input record for [`run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp (ms).
    pub timestamp: i64,
    /// Key (`None` = null).
    pub key: Option<Vec<u8>>,
    /// Value (`None` = null).
    pub value: Option<Vec<u8>>,
    /// Headers in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl TestRecord {
    /// A record on `topic` with a UTF-8 `value`, partition 0, offset 0.
    pub fn new(topic: &str, value: &str) -> Self {
        TestRecord {
            topic: topic.to_owned(),
            value: Some(value.as_bytes().to_vec()),
            ..Default::default()
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: &str) -> Self {
        self.key = Some(key.as_bytes().to_vec());
        self
    }

    /// Appends a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_owned(), Some(value.as_bytes().to_vec())));
        self
    }
}

/// A record produced by a `Replace` outcome, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestOut {
    /// New topic (`None` = unchanged).
    pub topic: Option<String>,
    /// New partition (`None` = unchanged).
    pub partition: Option<i32>,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// New timestamp (`None` = unchanged).
    pub timestamp: Option<i64>,
}

impl TestOut {
    /// The value as UTF-8 (empty when null or not UTF-8).
    pub fn value_str(&self) -> &str {
        self.value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or("")
    }

    /// The last header called `name`, as UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// The decoded outcome of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestOutcome {
    /// Kept unchanged.
    Keep,
    /// Dropped.
    Drop,
    /// Replaced by these records.
    Replace(Vec<TestOut>),
    /// Failed with this message.
    Fail(String),
}

/// Runs a per-record plugin over `records` as one batch.
pub fn run<P: Plugin>(plugin: &mut P, records: &[TestRecord]) -> Result<Vec<TestOutcome>, String> {
    let batch = encode(records);
    let view = Batch::new(&batch);
    let mut out = Output::new(&view);
    for rec in view.iter() {
        out.push(plugin.process(&rec));
    }
    Ok(decode(&batch, &out.finish()?))
}

/// Runs a per-batch plugin over `records` as one batch.
pub fn run_batch<P: BatchPlugin>(
    plugin: &mut P,
    records: &[TestRecord],
) -> Result<Vec<TestOutcome>, String> {
    let batch = encode(records);
    let view = Batch::new(&batch);
    let mut out = Output::new(&view);
    plugin.process_batch(&view, &mut out)?;
    Ok(decode(&batch, &out.finish()?))
}

fn push(data: &mut Vec<u8>, bytes: Option<&[u8]>) -> [u32; 2] {
    match bytes {
        None => [0, crate::NULL_LEN],
        Some(b) => {
            let offset = data.len() as u32;
            data.extend_from_slice(b);
            [offset, b.len() as u32]
        }
    }
}

fn encode(records: &[TestRecord]) -> wit::Batch {
    let mut b = wit::Batch {
        topics: vec![],
        record_topics: vec![],
        partitions: vec![],
        offsets: vec![],
        timestamps: vec![],
        record_fields: vec![],
        header_fields: vec![],
        data: vec![],
    };
    for r in records {
        let topic = match b.topics.iter().position(|t| *t == r.topic) {
            Some(i) => i,
            None => {
                b.topics.push(r.topic.clone());
                b.topics.len() - 1
            }
        } as u32;
        let start = (b.header_fields.len() / 4) as u32;
        for (n, v) in &r.headers {
            let name = push(&mut b.data, Some(n.as_bytes()));
            let value = push(&mut b.data, v.as_deref());
            b.header_fields.extend(name.into_iter().chain(value));
        }
        let key = push(&mut b.data, r.key.as_deref());
        let value = push(&mut b.data, r.value.as_deref());
        b.record_topics.push(topic);
        b.partitions.push(r.partition);
        b.offsets.push(r.offset);
        b.timestamps.push(r.timestamp);
        b.record_fields.extend(
            key.into_iter()
                .chain(value)
                .chain([start, r.headers.len() as u32]),
        );
    }
    b
}

fn bytes(batch: &wit::Batch, res: &wit::BatchResult, b: &wit::BytesRef) -> Option<Vec<u8>> {
    let get =
        |data: &[u8], s: &wit::Span| data[s.offset as usize..(s.offset + s.len) as usize].to_vec();
    match b {
        wit::BytesRef::Null => None,
        wit::BytesRef::Input(s) => Some(get(&batch.data, s)),
        wit::BytesRef::Output(s) => Some(get(&res.data, s)),
    }
}

fn text(batch: &wit::Batch, res: &wit::BatchResult, t: &wit::TextRef) -> String {
    let b = match t {
        wit::TextRef::Input(s) => bytes(batch, res, &wit::BytesRef::Input(*s)),
        wit::TextRef::Output(s) => bytes(batch, res, &wit::BytesRef::Output(*s)),
    };
    String::from_utf8(b.unwrap_or_default()).unwrap_or_default()
}

fn decode(batch: &wit::Batch, res: &wit::BatchResult) -> Vec<TestOutcome> {
    res.outcomes
        .iter()
        .map(|o| match o {
            wit::Outcome::Keep => TestOutcome::Keep,
            wit::Outcome::Drop => TestOutcome::Drop,
            wit::Outcome::Fail(m) => TestOutcome::Fail(m.clone()),
            wit::Outcome::Replace(range) => TestOutcome::Replace(
                res.records[range.start as usize..(range.start + range.count) as usize]
                    .iter()
                    .map(|r| TestOut {
                        topic: r.topic.as_ref().map(|t| text(batch, res, t)),
                        partition: r.partition,
                        key: bytes(batch, res, &r.key),
                        value: bytes(batch, res, &r.value),
                        headers: res.headers[r.headers.start as usize
                            ..(r.headers.start + r.headers.count) as usize]
                            .iter()
                            .map(|h| (text(batch, res, &h.name), bytes(batch, res, &h.value)))
                            .collect(),
                        timestamp: r.timestamp,
                    })
                    .collect(),
            ),
        })
        .collect()
}
