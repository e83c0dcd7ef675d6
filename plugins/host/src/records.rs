//! Records in and out of a chain: borrowed inputs, buffer-backed outputs, owned outputs.

use std::path::PathBuf;

use crate::error::Failure;

/// One input record, borrowed from the caller's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InRecord<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Timestamp, ms since the Unix epoch.
    pub timestamp: i64,
    /// Key; `None` is a null key.
    pub key: Option<&'a [u8]>,
    /// Value; `None` is a null value (tombstone).
    pub value: Option<&'a [u8]>,
    /// Headers in order; a `None` value is a null header value.
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
}

/// One output record, owned. Outputs come in input order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    /// Index into the input slice of the record this one came from: its source topic,
    /// partition and offset make checkpoints exact.
    pub source_index: u32,
    /// Destination topic; `None` keeps the source topic.
    pub topic: Option<String>,
    /// Destination partition set by a plugin; `None` when no plugin chose one (the caller
    /// decides, usually the source partition).
    pub partition: Option<i32>,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Timestamp, ms since the Unix epoch.
    pub timestamp: i64,
}

/// A record the chain failed and handled by the route's policy (skipped or dead-lettered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFailure {
    /// Index into the input slice.
    pub source_index: u32,
    /// The plugin that failed it.
    pub plugin: PathBuf,
    /// What happened.
    pub failure: Failure,
    /// Whether it was sent to the dead-letter topic (else it was skipped).
    pub dead_lettered: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) offset: u32,
    pub(crate) len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NewEntry {
    pub(crate) source_index: u32,
    pub(crate) topic: Option<Span>,
    pub(crate) partition: Option<i32>,
    pub(crate) key: Option<Span>,
    pub(crate) value: Option<Span>,
    pub(crate) headers: (u32, u32),
    pub(crate) timestamp: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// The input record, unchanged: nothing copied.
    Kept(u32),
    /// A record whose bytes live in the batch's buffer.
    New(NewEntry),
}

impl Entry {
    pub(crate) fn source_index(&self) -> u32 {
        match self {
            Entry::Kept(i) => *i,
            Entry::New(n) => n.source_index,
        }
    }
}

/// The output of one [`crate::Chain::process_into`] call, backed by reusable buffers: kept
/// records borrow from the input, changed ones from one flat buffer. Reuse it across batches to
/// avoid allocations; read it with the same input slice that produced it.
#[derive(Debug, Clone, Default)]
pub struct OutBatch {
    pub(crate) entries: Vec<Entry>,
    pub(crate) headers: Vec<(Span, Option<Span>)>,
    pub(crate) data: Vec<u8>,
    pub(crate) failures: Vec<RecordFailure>,
}

impl OutBatch {
    /// An empty output.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.headers.clear();
        self.data.clear();
        self.failures.clear();
    }

    /// Number of output records.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no output records.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records failed by a plugin and skipped or dead-lettered under the route's policy.
    pub fn failures(&self) -> &[RecordFailure] {
        &self.failures
    }

    fn bytes(&self, s: Span) -> &[u8] {
        let start = s.offset as usize;
        self.data.get(start..start + s.len as usize).unwrap_or(&[])
    }

    fn text(&self, s: Span) -> &str {
        // Validated when the plugin's output was decoded.
        std::str::from_utf8(self.bytes(s)).unwrap_or("")
    }

    /// Output record `index`, reading kept records from `input` (the slice given to `process_into`).
    ///
    /// # Panics
    /// When `index` is out of range or `input` is not the slice that produced this output.
    pub fn get<'a>(&'a self, index: usize, input: &'a [InRecord<'a>]) -> OutRecordRef<'a> {
        match self.entries[index] {
            Entry::Kept(i) => {
                let r = &input[i as usize];
                OutRecordRef {
                    source_index: i,
                    kept: true,
                    topic: None,
                    partition: None,
                    key: r.key,
                    value: r.value,
                    headers: OutHeaders(HeadersInner::Input(r.headers)),
                    timestamp: r.timestamp,
                }
            }
            Entry::New(n) => OutRecordRef {
                source_index: n.source_index,
                kept: false,
                topic: n.topic.map(|t| self.text(t)),
                partition: n.partition,
                key: n.key.map(|s| self.bytes(s)),
                value: n.value.map(|s| self.bytes(s)),
                headers: OutHeaders(HeadersInner::Buffer {
                    batch: self,
                    start: n.headers.0,
                    count: n.headers.1,
                }),
                timestamp: n.timestamp,
            },
        }
    }

    /// The output records in order.
    pub fn iter<'a>(
        &'a self,
        input: &'a [InRecord<'a>],
    ) -> impl Iterator<Item = OutRecordRef<'a>> + 'a {
        (0..self.len()).map(move |i| self.get(i, input))
    }

    /// Owned copies of the output records.
    pub fn to_records(&self, input: &[InRecord<'_>]) -> Vec<OutRecord> {
        self.iter(input).map(|r| r.to_owned_record()).collect()
    }
}

/// A borrowed output record.
#[derive(Debug, Clone, Copy)]
pub struct OutRecordRef<'a> {
    /// Index into the input slice of the source record.
    pub source_index: u32,
    /// Whether this is the source record unchanged (every plugin kept it).
    pub kept: bool,
    /// Destination topic; `None` keeps the source topic.
    pub topic: Option<&'a str>,
    /// Partition chosen by a plugin; `None` when none chose.
    pub partition: Option<i32>,
    /// Key.
    pub key: Option<&'a [u8]>,
    /// Value.
    pub value: Option<&'a [u8]>,
    /// Headers.
    pub headers: OutHeaders<'a>,
    /// Timestamp, ms since the Unix epoch.
    pub timestamp: i64,
}

impl OutRecordRef<'_> {
    /// An owned copy.
    pub fn to_owned_record(&self) -> OutRecord {
        OutRecord {
            source_index: self.source_index,
            topic: self.topic.map(str::to_owned),
            partition: self.partition,
            key: self.key.map(<[u8]>::to_vec),
            value: self.value.map(<[u8]>::to_vec),
            headers: self
                .headers
                .iter()
                .map(|(n, v)| (n.to_owned(), v.map(<[u8]>::to_vec)))
                .collect(),
            timestamp: self.timestamp,
        }
    }
}

/// The headers of an [`OutRecordRef`].
#[derive(Debug, Clone, Copy)]
pub struct OutHeaders<'a>(HeadersInner<'a>);

#[derive(Debug, Clone, Copy)]
enum HeadersInner<'a> {
    Input(&'a [(&'a str, Option<&'a [u8]>)]),
    Buffer {
        batch: &'a OutBatch,
        start: u32,
        count: u32,
    },
}

impl<'a> OutHeaders<'a> {
    /// Number of headers.
    pub fn len(&self) -> usize {
        match self.0 {
            HeadersInner::Input(h) => h.len(),
            HeadersInner::Buffer { count, .. } => count as usize,
        }
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Name and value (`None` = null) of each header, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + 'a {
        let this = self.0;
        (0..self.len()).map(move |i| match this {
            HeadersInner::Input(h) => h[i],
            HeadersInner::Buffer { batch, start, .. } => {
                let (n, v) = batch.headers[start as usize + i];
                (batch.text(n), v.map(|v| batch.bytes(v)))
            }
        })
    }
}
