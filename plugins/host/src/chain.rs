//! A route's plugin chain: runs batches through plugins in order and applies the error policy.

use std::path::PathBuf;
use std::sync::Arc;

use crate::abi::{self, BatchArg, Data};
use crate::bindings::edge_replicator::plugin::types as wit;
use crate::error::{
    ChainError, FailedAt, Failure, MAX_TEXT_BYTES, PluginError, SourcePosition, cap_text,
};
use crate::plugin::{CallError, LoadedPlugin};
use crate::records::{Entry, InRecord, NewEntry, OutBatch, OutRecord, RecordFailure, Span};
use crate::{HostInner, OutputLimits};

/// Header naming the error of a dead-lettered record.
pub const DEAD_LETTER_ERROR_HEADER: &str = "er.error";
/// Header naming the plugin file that failed a dead-lettered record.
pub const DEAD_LETTER_PLUGIN_HEADER: &str = "er.plugin";

/// What a route does with a record (or batch) a plugin fails on: trap, deadline, memory cap,
/// `fail` outcome, too many outputs, malformed result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Stop: [`Chain::process`] returns the error and outputs nothing for the batch, so the
    /// route's position does not move past the failing record.
    Stop,
    /// Skip the failing record. After a whole-batch failure the records are re-run one at a
    /// time so every good record is kept; failures are listed in [`OutBatch::failures`].
    Skip,
    /// Like `Skip`, but the failing record (as it entered the failing plugin) goes to `topic`
    /// with headers `er.error` (the message) and `er.plugin` (the plugin file).
    DeadLetter {
        /// The dead-letter topic.
        topic: String,
    },
}

/// Counters of one plugin of a chain, since it was loaded (reloads keep counting).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginStats {
    /// Plugin file.
    pub plugin: PathBuf,
    /// Records given to the plugin.
    pub records_in: u64,
    /// Records the plugin kept or produced.
    pub records_out: u64,
    /// Records the plugin dropped (`drop`, or `replace` with no records).
    pub records_dropped: u64,
    /// Failed calls and failed records.
    pub errors: u64,
    /// Time spent in plugin calls, including copying batches in and out, in nanoseconds.
    pub time_ns: u64,
    /// Batch calls made (including one-record calls while isolating a failure).
    pub calls: u64,
    /// Fresh instances made after a trap.
    pub restarts: u64,
    /// Successful hot reloads.
    pub reloads: u64,
    /// Log events dropped by the per-call rate limit.
    pub logs_suppressed: u64,
    /// Linear memory of the running instance, in bytes, after its last `init` or call (the
    /// memory a plugin holds: at most `HostConfig::memory_limit_bytes`).
    pub memory_bytes: u64,
    /// Counters the plugin reported through `counter-add`.
    pub counters: Vec<(String, u64)>,
    /// The last error, for display.
    pub last_error: Option<String>,
}

/// One line for people: `filter.wasm: 2 in, 1 out, 1 dropped, 0 errors; 1 call, 0.412 ms,
/// 1.1 MiB memory`, then restarts, reloads, suppressed logs and plugin counters when there are
/// any, and the last error.
impl std::fmt::Display for PluginStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.plugin.file_name().map_or_else(
            || self.plugin.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let plural = |n: u64| if n == 1 { "" } else { "s" };
        write!(
            f,
            "{name}: {} in, {} out, {} dropped, {} error{}; {} call{}, {:.3} ms",
            self.records_in,
            self.records_out,
            self.records_dropped,
            self.errors,
            plural(self.errors),
            self.calls,
            plural(self.calls),
            self.time_ns as f64 / 1e6,
        )?;
        if self.memory_bytes > 0 {
            write!(
                f,
                ", {:.1} MiB memory",
                self.memory_bytes as f64 / f64::from(1 << 20)
            )?;
        }
        for (n, label) in [
            (self.restarts, "restart"),
            (self.reloads, "reload"),
            (self.logs_suppressed, "suppressed log"),
        ] {
            if n > 0 {
                write!(f, ", {n} {label}{}", plural(n))?;
            }
        }
        if !self.counters.is_empty() {
            f.write_str("; counters:")?;
            for (name, v) in &self.counters {
                write!(f, " {name}={v}")?;
            }
        }
        if let Some(e) = &self.last_error {
            write!(f, "; last error: {e}")?;
        }
        Ok(())
    }
}

/// Plugins applied in order to a route's batches. Not shared: one chain per route (or per
/// worker), moved to the thread that runs it.
pub struct Chain {
    host: Arc<HostInner>,
    plugins: Vec<LoadedPlugin>,
    policy: ErrorPolicy,
    limits: OutputLimits,
    stages: [Stage; 2],
    single: Stage,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field(
                "plugins",
                &self
                    .plugins
                    .iter()
                    .map(|p| &p.spec.path)
                    .collect::<Vec<_>>(),
            )
            .field("policy", &self.policy)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Records between two plugins, in the contract's batch shape (what the next plugin receives).
#[derive(Default)]
struct Stage {
    /// The columns, and the bytes unless `from_input`.
    batch: wit::Batch,
    /// The records are the chain's input records in order, unchanged, and `batch.data` is empty:
    /// their bytes are lowered into the plugin straight from the input (see [`abi`]), laid out
    /// as `input_len` bytes in [`abi::pieces`] order. Only a `replace` outcome, whose spans
    /// point into that layout, makes the host copy them ([`Stage::materialize`]).
    from_input: bool,
    input_len: usize,
    meta: Vec<Meta>,
}

// The generated type cannot carry a derive from here.
#[allow(clippy::derivable_impls)]
impl Default for wit::Batch {
    fn default() -> Self {
        wit::Batch {
            topics: Vec::new(),
            record_topics: Vec::new(),
            partitions: Vec::new(),
            offsets: Vec::new(),
            timestamps: Vec::new(),
            record_fields: Vec::new(),
            header_fields: Vec::new(),
            data: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    source: u32,
    /// Still the unchanged input record.
    original: bool,
    /// A plugin chose the partition.
    partition_set: bool,
}

/// The scalar and byte fields of a record to append.
struct Parts<'b> {
    topic: &'b str,
    partition: i32,
    offset: i64,
    timestamp: i64,
    key: Option<&'b [u8]>,
    value: Option<&'b [u8]>,
}

/// A record to append, with borrowed bytes.
struct View<'b> {
    meta: Meta,
    topic: &'b str,
    partition: i32,
    timestamp: i64,
    key: Option<&'b [u8]>,
    value: Option<&'b [u8]>,
    headers: Vec<(&'b str, Option<&'b [u8]>)>,
}

fn span_of(data: &mut Vec<u8>, bytes: &[u8]) -> wit::Span {
    let offset = data.len() as u32;
    data.extend_from_slice(bytes);
    wit::Span {
        offset,
        len: bytes.len() as u32,
    }
}

/// Length marking a null byte range in the batch columns.
const NULL_LEN: u32 = u32::MAX;

/// Appends `bytes` (or marks a null) and returns its `[offset, length]` column entry.
fn field(data: &mut Vec<u8>, bytes: Option<&[u8]>) -> [u32; 2] {
    match bytes {
        None => [0, NULL_LEN],
        Some(b) => {
            let s = span_of(data, b);
            [s.offset, s.len]
        }
    }
}

/// The bytes of a column entry; `None` for null.
fn column(data: &[u8], offset: u32, len: u32) -> Option<&[u8]> {
    if len == NULL_LEN {
        return None;
    }
    Some(
        data.get(offset as usize..(offset as usize).saturating_add(len as usize))
            .unwrap_or(&[]),
    )
}

fn get(data: &[u8], s: wit::Span) -> Option<&[u8]> {
    data.get(s.offset as usize..(s.offset as usize).checked_add(s.len as usize)?)
}

fn topic_index(topics: &mut Vec<String>, topic: &str) -> u32 {
    // Batches usually hold one topic: check the last one first.
    if topics.last().is_some_and(|t| t == topic) {
        return topics.len() as u32 - 1;
    }
    match topics.iter().position(|t| t == topic) {
        Some(i) => i as u32,
        None => {
            topics.push(topic.to_owned());
            topics.len() as u32 - 1
        }
    }
}

impl Stage {
    fn clear(&mut self) {
        let b = &mut self.batch;
        b.topics.clear();
        b.record_topics.clear();
        b.partitions.clear();
        b.offsets.clear();
        b.timestamps.clear();
        b.record_fields.clear();
        b.header_fields.clear();
        b.data.clear();
        self.from_input = false;
        self.input_len = 0;
        self.meta.clear();
    }

    fn len(&self) -> usize {
        self.meta.len()
    }

    fn topic_index(&mut self, topic: &str) -> u32 {
        topic_index(&mut self.batch.topics, topic)
    }

    fn push_parts(
        &mut self,
        meta: Meta,
        p: Parts<'_>,
        headers: impl ExactSizeIterator<Item = (impl AsRef<str>, Option<impl AsRef<[u8]>>)>,
    ) {
        let topic = self.topic_index(p.topic);
        let b = &mut self.batch;
        let start = (b.header_fields.len() / 4) as u32;
        let count = headers.len() as u32;
        for (n, v) in headers {
            let name = field(&mut b.data, Some(n.as_ref().as_bytes()));
            let value = field(&mut b.data, v.as_ref().map(AsRef::as_ref));
            b.header_fields
                .extend_from_slice(&[name[0], name[1], value[0], value[1]]);
        }
        let key = field(&mut b.data, p.key);
        let value = field(&mut b.data, p.value);
        b.record_topics.push(topic);
        b.partitions.push(p.partition);
        b.offsets.push(p.offset);
        b.timestamps.push(p.timestamp);
        b.record_fields
            .extend_from_slice(&[key[0], key[1], value[0], value[1], start, count]);
        self.meta.push(meta);
    }

    /// Makes this stage the chain's input: columns only, the bytes stay in `input`.
    fn set_input(&mut self, input: &[InRecord<'_>]) {
        self.clear();
        self.from_input = true;
        let n = input.len();
        let b = &mut self.batch;
        b.record_topics.reserve(n);
        b.partitions.reserve(n);
        b.offsets.reserve(n);
        b.timestamps.reserve(n);
        b.record_fields.reserve(n * 6);
        self.meta.reserve(n);
        // Offsets into the data as `abi::pieces` lays it out.
        let mut pos = 0usize;
        let mut field = |bytes: Option<&[u8]>| match bytes {
            None => [0, NULL_LEN],
            Some(x) => {
                let f = [pos as u32, x.len() as u32];
                pos += x.len();
                f
            }
        };
        // The records of a batch usually share one topic `&str`: then skip the string compare.
        let mut last_topic = (0usize, 0usize, 0u32);
        for (i, r) in input.iter().enumerate() {
            let (addr, len) = (r.topic.as_ptr() as usize, r.topic.len());
            let topic = if (addr, len) == (last_topic.0, last_topic.1) {
                last_topic.2
            } else {
                let t = topic_index(&mut b.topics, r.topic);
                last_topic = (addr, len, t);
                t
            };
            let start = (b.header_fields.len() / 4) as u32;
            for (name, value) in r.headers {
                let name = field(Some(name.as_bytes()));
                let value = field(*value);
                b.header_fields
                    .extend_from_slice(&[name[0], name[1], value[0], value[1]]);
            }
            let key = field(r.key);
            let value = field(r.value);
            b.record_topics.push(topic);
            b.partitions.push(r.partition);
            b.offsets.push(r.offset);
            b.timestamps.push(r.timestamp);
            b.record_fields.extend_from_slice(&[
                key[0],
                key[1],
                value[0],
                value[1],
                start,
                r.headers.len() as u32,
            ]);
            self.meta.push(Meta {
                source: i as u32,
                original: true,
                partition_set: false,
            });
        }
        self.input_len = pos;
    }

    /// Copies the input's bytes into `batch.data` (same layout), so spans into it resolve.
    fn materialize(&mut self, input: &[InRecord<'_>]) {
        if !self.from_input {
            return;
        }
        let data = &mut self.batch.data;
        data.clear();
        data.reserve(self.input_len);
        for piece in input.iter().flat_map(abi::pieces) {
            data.extend_from_slice(piece);
        }
        self.from_input = false;
    }

    /// The `process-batch` argument for this stage.
    fn arg<'a>(&'a self, input: &'a [InRecord<'a>]) -> BatchArg<'a> {
        let data = if self.from_input {
            Data::Input {
                records: input,
                len: self.input_len,
            }
        } else {
            Data::Bytes(&self.batch.data)
        };
        BatchArg::new(&self.batch, data)
    }

    fn push_view(&mut self, v: &View<'_>, offset: i64) {
        let parts = Parts {
            topic: v.topic,
            partition: v.partition,
            offset,
            timestamp: v.timestamp,
            key: v.key,
            value: v.value,
        };
        self.push_parts(v.meta, parts, v.headers.iter().copied());
    }

    /// Record `i` as a view over this stage's buffer (or over the input it stands for).
    fn view<'a>(&'a self, i: usize, input: &'a [InRecord<'a>]) -> View<'a> {
        if self.from_input {
            let r = &input[self.meta[i].source as usize];
            return View {
                meta: self.meta[i],
                topic: r.topic,
                partition: r.partition,
                timestamp: r.timestamp,
                key: r.key,
                value: r.value,
                headers: r.headers.to_vec(),
            };
        }
        let b = &self.batch;
        let data = &b.data[..];
        let f = &b.record_fields[i * 6..i * 6 + 6];
        let headers = (f[4] as usize..(f[4] + f[5]) as usize)
            .map(|h| {
                let hf = &b.header_fields[h * 4..h * 4 + 4];
                let name =
                    std::str::from_utf8(column(data, hf[0], hf[1]).unwrap_or(&[])).unwrap_or("");
                (name, column(data, hf[2], hf[3]))
            })
            .collect();
        View {
            meta: self.meta[i],
            topic: b
                .topics
                .get(b.record_topics[i] as usize)
                .map_or("", String::as_str),
            partition: b.partitions[i],
            timestamp: b.timestamps[i],
            key: column(data, f[0], f[1]),
            value: column(data, f[2], f[3]),
            headers,
        }
    }
}

/// Where a plugin's outputs go: the next stage, or the chain's output. Dead letters and
/// failures always go to the chain's output.
struct Sink<'s, 'i> {
    next: Option<&'s mut Stage>,
    out: &'s mut OutBatch,
    input: &'s [InRecord<'i>],
    /// Dead letters were appended out of input order: sort at the end.
    reorder: bool,
}

impl Sink<'_, '_> {
    /// Appends record `i` of `stage` unchanged.
    fn keep(&mut self, stage: &Stage, i: usize) {
        match &mut self.next {
            Some(next) => next.push_view(&stage.view(i, self.input), stage.batch.offsets[i]),
            None if stage.meta[i].original => {
                self.out.entries.push(Entry::Kept(stage.meta[i].source));
            }
            None => push_out(self.out, self.input, &stage.view(i, self.input)),
        }
    }

    fn push(&mut self, v: &View<'_>, offset: i64) {
        match &mut self.next {
            Some(next) => next.push_view(v, offset),
            None => push_out(self.out, self.input, v),
        }
    }

    fn dead_letter(&mut self, stage: &Stage, i: usize, topic: &str, plugin: &str, error: &str) {
        let mut v = stage.view(i, self.input);
        v.meta.original = false;
        v.meta.partition_set = false;
        v.topic = topic;
        v.headers
            .push((DEAD_LETTER_ERROR_HEADER, Some(error.as_bytes())));
        v.headers
            .push((DEAD_LETTER_PLUGIN_HEADER, Some(plugin.as_bytes())));
        push_out(self.out, self.input, &v);
        // Failures are handled after the batch's other outputs: restore input order at the end.
        self.reorder = true;
    }
}

fn push_out(out: &mut OutBatch, input: &[InRecord<'_>], v: &View<'_>) {
    let span = |data: &mut Vec<u8>, b: &[u8]| {
        let s = span_of(data, b);
        Span {
            offset: s.offset,
            len: s.len,
        }
    };
    let source_topic = input.get(v.meta.source as usize).map(|r| r.topic);
    let topic = (source_topic != Some(v.topic)).then(|| span(&mut out.data, v.topic.as_bytes()));
    let start = out.headers.len() as u32;
    for (n, val) in &v.headers {
        let name = span(&mut out.data, n.as_bytes());
        let value = val.map(|x| span(&mut out.data, x));
        out.headers.push((name, value));
    }
    let key = v.key.map(|k| span(&mut out.data, k));
    let value = v.value.map(|x| span(&mut out.data, x));
    out.entries.push(Entry::New(NewEntry {
        source_index: v.meta.source,
        topic,
        partition: v.meta.partition_set.then_some(v.partition),
        key,
        value,
        headers: (start, v.headers.len() as u32),
        timestamp: v.timestamp,
    }));
}

impl View<'_> {
    /// Bytes of this record as an output (see [`OutputLimits`]).
    fn bytes(&self) -> u64 {
        let len = |b: Option<&[u8]>| b.map_or(0, |b| b.len() as u64);
        let headers: u64 = self
            .headers
            .iter()
            .map(|(n, v)| n.len() as u64 + len(*v))
            .sum();
        self.topic.len() as u64 + len(self.key) + len(self.value) + headers
    }
}

/// Bytes of all records a result's `replace` outcomes produce, as their spans claim (before
/// any span is checked; topics only where the plugin set one): computed without copying or
/// decoding, to refuse an oversized result before touching it.
fn claimed_output_bytes(res: &wit::BatchResult) -> u64 {
    let bytes = |b: &wit::BytesRef| match b {
        wit::BytesRef::Null => 0,
        wit::BytesRef::Input(s) | wit::BytesRef::Output(s) => u64::from(s.len),
    };
    let text = |t: &wit::TextRef| match t {
        wit::TextRef::Input(s) | wit::TextRef::Output(s) => u64::from(s.len),
    };
    let mut total = 0u64;
    for o in &res.outcomes {
        let wit::Outcome::Replace(range) = o else {
            continue;
        };
        let start = range.start as usize;
        let recs = res
            .records
            .get(start..start.saturating_add(range.count as usize))
            .unwrap_or(&[]);
        for r in recs {
            total = total
                .saturating_add(r.topic.as_ref().map_or(0, text))
                .saturating_add(bytes(&r.key))
                .saturating_add(bytes(&r.value));
            let hs = r.headers.start as usize;
            for h in res
                .headers
                .get(hs..hs.saturating_add(r.headers.count as usize))
                .unwrap_or(&[])
            {
                total = total
                    .saturating_add(text(&h.name))
                    .saturating_add(bytes(&h.value));
            }
        }
    }
    total
}

/// The source coordinates of input record `source_index`.
fn position(input: &[InRecord<'_>], source_index: u32) -> SourcePosition {
    let r = &input[source_index as usize];
    SourcePosition {
        topic: r.topic.to_owned(),
        partition: r.partition,
        offset: r.offset,
    }
}

/// Decodes the records a `replace` outcome produced for input `i` of `stage` (materialized:
/// `input(..)` spans point into its data).
fn decode_replacements<'b>(
    stage: &'b Stage,
    i: usize,
    res: &'b wit::BatchResult,
    range: wit::Range,
    chain_input: &'b [InRecord<'b>],
) -> Result<Vec<View<'b>>, Failure> {
    debug_assert!(!stage.from_input, "stage not materialized");
    let input = &stage.batch.data[..];
    let bytes = |r: &wit::BytesRef| -> Result<Option<&'b [u8]>, Failure> {
        let (data, s) = match r {
            wit::BytesRef::Null => return Ok(None),
            wit::BytesRef::Input(s) => (input, *s),
            wit::BytesRef::Output(s) => (&res.data[..], *s),
        };
        get(data, s)
            .map(Some)
            .ok_or_else(|| Failure::Malformed(format!("span {}+{} out of range", s.offset, s.len)))
    };
    let text = |t: &wit::TextRef| -> Result<&'b str, Failure> {
        let b = match t {
            wit::TextRef::Input(s) => bytes(&wit::BytesRef::Input(*s)),
            wit::TextRef::Output(s) => bytes(&wit::BytesRef::Output(*s)),
        }?
        .unwrap_or(&[]);
        std::str::from_utf8(b)
            .map_err(|_| Failure::Malformed("topic or header name is not UTF-8".into()))
    };
    let recs = res
        .records
        .get(range.start as usize..(range.start as usize).saturating_add(range.count as usize))
        .ok_or_else(|| {
            Failure::Malformed(format!(
                "replace range {}+{} out of range",
                range.start, range.count
            ))
        })?;
    let src = stage.view(i, chain_input);
    recs.iter()
        .map(|r| {
            let hs = res
                .headers
                .get(
                    r.headers.start as usize
                        ..(r.headers.start as usize).saturating_add(r.headers.count as usize),
                )
                .ok_or_else(|| Failure::Malformed("header range out of range".into()))?;
            let headers = hs
                .iter()
                .map(|h| Ok((text(&h.name)?, bytes(&h.value)?)))
                .collect::<Result<Vec<_>, Failure>>()?;
            Ok(View {
                meta: Meta {
                    source: src.meta.source,
                    original: false,
                    partition_set: src.meta.partition_set || r.partition.is_some(),
                },
                topic: match &r.topic {
                    Some(t) => text(t)?,
                    None => src.topic,
                },
                partition: r.partition.unwrap_or(src.partition),
                timestamp: r.timestamp.unwrap_or(src.timestamp),
                key: bytes(&r.key)?,
                value: bytes(&r.value)?,
                headers,
            })
        })
        .collect()
}

impl Chain {
    pub(crate) fn new(
        host: Arc<HostInner>,
        plugins: Vec<LoadedPlugin>,
        policy: ErrorPolicy,
        limits: OutputLimits,
    ) -> Self {
        Chain {
            host,
            plugins,
            policy,
            limits,
            stages: Default::default(),
            single: Stage::default(),
        }
    }

    /// The route's error policy.
    pub fn policy(&self) -> &ErrorPolicy {
        &self.policy
    }

    /// The chain's output limits.
    pub fn limits(&self) -> OutputLimits {
        self.limits
    }

    /// Runs `input` through every plugin and returns owned outputs in input order. Errors only
    /// under [`ErrorPolicy::Stop`] or when a plugin cannot be restarted.
    pub fn process(&mut self, input: &[InRecord<'_>]) -> Result<Vec<OutRecord>, ChainError> {
        let mut out = OutBatch::new();
        self.process_into(input, &mut out)?;
        Ok(out.to_records(input))
    }

    /// Like [`Chain::process`], into a reusable buffer-backed [`OutBatch`] (kept records are not
    /// copied). On error `out` holds no usable result.
    pub fn process_into(
        &mut self,
        input: &[InRecord<'_>],
        out: &mut OutBatch,
    ) -> Result<(), ChainError> {
        out.clear();
        if self.plugins.is_empty() {
            out.entries.extend((0..input.len() as u32).map(Entry::Kept));
            return Ok(());
        }
        let [mut cur, mut next] = std::mem::take(&mut self.stages);
        cur.set_input(input);
        let n = self.plugins.len();
        let mut reorder = false;
        let mut result = Ok(());
        for k in 0..n {
            next.clear();
            let mut sink = Sink {
                next: (k + 1 < n).then_some(&mut next),
                out: &mut *out,
                input,
                reorder: false,
            };
            result = self.run_plugin(k, &mut cur, &mut sink);
            reorder |= sink.reorder;
            if result.is_err() {
                break;
            }
            std::mem::swap(&mut cur, &mut next);
        }
        self.stages = [cur, next];
        result?;
        if reorder {
            out.entries.sort_by_key(Entry::source_index);
        }
        Ok(())
    }

    /// Runs plugin `k` over `stage` into `sink`.
    fn run_plugin(
        &mut self,
        k: usize,
        stage: &mut Stage,
        sink: &mut Sink<'_, '_>,
    ) -> Result<(), ChainError> {
        if stage.len() == 0 {
            return Ok(());
        }
        self.plugins[k].stats.records_in += stage.len() as u64;
        let mut fails: Vec<(usize, Failure)> = Vec::new();
        let result = self.call(k, stage.arg(sink.input))?.and_then(|res| {
            // Checked before anything is copied: a batch over the bound fails as a whole.
            let produced = claimed_output_bytes(&res);
            let limit = self.limits.max_bytes_per_batch;
            if produced > limit {
                return Err(Failure::BatchOutputBytes { produced, limit });
            }
            Ok(res)
        });
        match result {
            Ok(res) => {
                if res
                    .outcomes
                    .iter()
                    .any(|o| matches!(o, wit::Outcome::Replace(_)))
                {
                    stage.materialize(sink.input);
                }
                self.apply(k, stage, &res, sink, &mut fails, &mut 0)
            }
            Err(f) => self.isolate(k, stage, f, sink, &mut fails)?,
        }
        self.fail_records(k, stage, fails, sink)
    }

    fn call(
        &mut self,
        k: usize,
        batch: BatchArg<'_>,
    ) -> Result<Result<wit::BatchResult, Failure>, ChainError> {
        let p = &mut self.plugins[k];
        p.stats.calls += 1;
        let records = batch.len();
        match p.call(&self.host, batch) {
            Ok(res) if res.outcomes.len() == records => Ok(Ok(res)),
            Ok(res) => Ok(Err(Failure::Malformed(format!(
                "{} outcomes for {} records",
                res.outcomes.len(),
                records
            )))),
            Err(CallError::Failed(f)) => Ok(Err(f)),
            Err(CallError::Restart(reason)) => Err(ChainError::Restart {
                plugin: p.spec.path.clone(),
                reason,
            }),
        }
    }

    /// Applies one successful result. Per-record failures are collected in `fails`;
    /// `batch_bytes` counts the bytes of the records produced by this plugin for this stage so
    /// far (across the one-record calls of [`Chain::isolate`]).
    fn apply(
        &mut self,
        k: usize,
        stage: &Stage,
        res: &wit::BatchResult,
        sink: &mut Sink<'_, '_>,
        fails: &mut Vec<(usize, Failure)>,
        batch_bytes: &mut u64,
    ) {
        let limits = self.limits;
        let stats = &mut self.plugins[k].stats;
        for (i, outcome) in res.outcomes.iter().enumerate() {
            match outcome {
                wit::Outcome::Keep => {
                    stats.records_out += 1;
                    sink.keep(stage, i);
                }
                wit::Outcome::Drop => stats.records_dropped += 1,
                wit::Outcome::Fail(msg) => {
                    fails.push((i, Failure::Record(cap_text(msg.clone(), MAX_TEXT_BYTES))))
                }
                wit::Outcome::Replace(range) if range.count > limits.max_outputs_per_input => fails
                    .push((
                        i,
                        Failure::TooManyOutputs {
                            produced: range.count,
                            limit: limits.max_outputs_per_input,
                        },
                    )),
                wit::Outcome::Replace(range) => {
                    let views = match decode_replacements(stage, i, res, *range, sink.input) {
                        Ok(views) => views,
                        Err(f) => {
                            fails.push((i, f));
                            continue;
                        }
                    };
                    let bytes: u64 = views.iter().map(View::bytes).sum();
                    if bytes > limits.max_bytes_per_input {
                        fails.push((
                            i,
                            Failure::TooManyOutputBytes {
                                produced: bytes,
                                limit: limits.max_bytes_per_input,
                            },
                        ));
                        continue;
                    }
                    if *batch_bytes + bytes > limits.max_bytes_per_batch {
                        fails.push((
                            i,
                            Failure::BatchOutputBytes {
                                produced: *batch_bytes + bytes,
                                limit: limits.max_bytes_per_batch,
                            },
                        ));
                        continue;
                    }
                    *batch_bytes += bytes;
                    if views.is_empty() {
                        stats.records_dropped += 1;
                    }
                    stats.records_out += views.len() as u64;
                    let offset = stage.batch.offsets[i];
                    for v in &views {
                        sink.push(v, offset);
                    }
                }
            }
        }
    }

    /// After a whole-batch failure: stop, or re-run records one at a time to find the bad ones.
    fn isolate(
        &mut self,
        k: usize,
        stage: &Stage,
        failure: Failure,
        sink: &mut Sink<'_, '_>,
        fails: &mut Vec<(usize, Failure)>,
    ) -> Result<(), ChainError> {
        let path = self.plugins[k].spec.path.clone();
        if self.policy == ErrorPolicy::Stop || stage.len() == 1 {
            // Stop reports it; a one-record batch needs no isolation.
            fails.push((0, failure));
            if self.policy == ErrorPolicy::Stop && stage.len() > 1 {
                let p = &mut self.plugins[k];
                p.stats.errors += 1;
                p.stats.last_error = Some(fails[0].1.to_string());
                return Err(ChainError::Plugin {
                    plugin: path,
                    at: FailedAt::Batch {
                        records: stage.len() as u32,
                        first: position(sink.input, stage.meta[0].source),
                    },
                    failure: fails.remove(0).1,
                });
            }
            return Ok(());
        }
        tracing::warn!(plugin = %path.display(), error = %failure, records = stage.len(), "batch failed; re-running its records one at a time");
        let mut single = std::mem::take(&mut self.single);
        // The per-batch output bound holds across the one-record calls: records are admitted
        // in order while their outputs fit.
        let mut batch_bytes = 0;
        for i in 0..stage.len() {
            single.clear();
            single.push_view(&stage.view(i, sink.input), stage.batch.offsets[i]);
            match self.call(k, single.arg(sink.input)) {
                Ok(Ok(res)) => {
                    let mut one = Vec::new();
                    self.apply(k, &single, &res, sink, &mut one, &mut batch_bytes);
                    fails.extend(one.into_iter().map(|(_, f)| (i, f)));
                }
                Ok(Err(f)) => fails.push((i, f)),
                Err(e) => {
                    self.single = single;
                    return Err(e);
                }
            }
        }
        self.single = single;
        Ok(())
    }

    /// Applies the route's policy to the failed records of `stage`.
    fn fail_records(
        &mut self,
        k: usize,
        stage: &Stage,
        mut fails: Vec<(usize, Failure)>,
        sink: &mut Sink<'_, '_>,
    ) -> Result<(), ChainError> {
        if fails.is_empty() {
            return Ok(());
        }
        fails.sort_by_key(|(i, _)| *i);
        let p = &mut self.plugins[k];
        p.stats.errors += fails.len() as u64;
        p.stats.last_error = fails.last().map(|(_, f)| f.to_string());
        let plugin = p.spec.path.clone();
        let plugin_name = plugin.display().to_string();
        for (i, failure) in fails {
            let source_index = stage.meta[i].source;
            let dead_lettered = match &self.policy {
                ErrorPolicy::Stop => {
                    return Err(ChainError::Plugin {
                        plugin,
                        at: FailedAt::Record {
                            source_index,
                            position: position(sink.input, source_index),
                        },
                        failure,
                    });
                }
                ErrorPolicy::Skip => false,
                ErrorPolicy::DeadLetter { topic } => {
                    let error = format!("plugin \"{plugin_name}\": {failure}");
                    sink.dead_letter(stage, i, topic, &plugin_name, &error);
                    true
                }
            };
            tracing::debug!(plugin = %plugin_name, source_index, error = %failure, dead_lettered, "record failed");
            sink.out.failures.push(RecordFailure {
                source_index,
                plugin: plugin.clone(),
                failure,
                dead_lettered,
            });
        }
        Ok(())
    }

    /// Checks every plugin file and swaps in changed ones (call between batches). `Ok(true)`
    /// when at least one plugin was reloaded. A file that fails to load keeps the previous
    /// version running; the error is returned once (and kept in [`PluginStats::last_error`]).
    pub fn reload_if_changed(&mut self) -> Result<bool, PluginError> {
        let mut reloaded = false;
        let mut first_err = None;
        for p in &mut self.plugins {
            match p.reload_if_changed(&self.host) {
                Ok(r) => reloaded |= r,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(reloaded),
        }
    }

    /// Counters of every plugin, in chain order.
    pub fn stats(&self) -> Vec<PluginStats> {
        self.plugins.iter().map(|p| p.stats.clone()).collect()
    }
}
