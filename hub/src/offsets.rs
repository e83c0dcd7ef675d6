//! Exact offset index of one site on one cluster: source offsets to destination offsets of committed records.
//!
//! For every (source partition, destination partition) pair the hub keeps a monotone map from
//! the source offsets of committed replicated records to their destination offsets. A consumer
//! group that committed source offset `u` resumes on the central cluster, for each destination
//! partition fed by that source partition, at the destination offset of the first replicated
//! record whose source offset is `>= u` ([`Translation::Exact`]). When there is none yet, it
//! resumes at the destination's end offset, but only once the source partition's committed
//! position has reached `u` ([`Translation::EndOffset`]); before that, records in
//! `[position, u)` may still arrive ([`Translation::NotYet`]). This stays exact when plugins
//! drop records (sparse source offsets), rename topics, fan a partition out to several
//! destinations, or replace one record with several (the first of them is the answer).
//!
//! # Representation and memory
//!
//! Each pair stores *runs*: `len` consecutive source offsets mapped to `len` consecutive
//! destination offsets. Unfiltered data is one run per transaction (the commit marker breaks
//! destination contiguity); filtered data degrades to one run per kept record. Runs are packed
//! into blocks of [`RUNS_PER_BLOCK`] with the same varint item encoding as the persisted format
//! (see [`encode`]): one byte per run when the source gap is below 32 and destination offsets
//! are consecutive, typically at most 4-5 bytes (large gaps, interleaved destinations), plus
//! well under one byte of block overhead per run. The cap on runs per pair
//! ([`DEFAULT_MAX_ENTRIES_PER_PARTITION`], configurable) therefore bounds memory at about
//! 1-5 MB per pair for filtered data, and costs nothing for unfiltered data. When a pair exceeds
//! its cap, its oldest block is evicted and queries below the retained window answer
//! [`Translation::TooOld`], never a wrong offset.
//!
//! # Consistency with Kafka
//!
//! The writer applies the entries of a transaction only after the transaction committed, and
//! writes the same entries into the transaction itself (see [`encode`]), so the rebuilt index
//! after a restart is exactly what was committed. Between `commit_transaction` and the apply,
//! and after the writer stopped, end-offset answers are withheld ([`Translation::NotYet`]):
//! a destination end offset could already include records the index does not know yet.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use er_protocol::TopicPartition;

/// First byte of every persisted index record; other versions are rejected.
pub const FORMAT_VERSION: u8 = 1;

/// Default cap on runs retained per (source partition, destination partition) pair.
///
/// One run per kept record in the worst case (heavy filtering), so one million runs keep the
/// last million kept records of a partition, at about 1-5 MB: enough for consumer groups lagging
/// minutes to hours behind a busy filtered partition, while a site with a hundred such
/// partitions stays in the hundreds of MB. Unfiltered partitions use one run per transaction and
/// keep days.
pub const DEFAULT_MAX_ENTRIES_PER_PARTITION: usize = 1_000_000;

/// Runs per in-memory block: the unit of eviction and of linear decoding during a lookup.
pub const RUNS_PER_BLOCK: usize = 256;

/// Soft upper bound of one persisted index record, well under Kafka's default 1 MB message limit.
pub const MAX_RECORD_BYTES: usize = 512 * 1024;

/// The index of a site shared between its writer and readers (e.g. a checkpoint task).
pub type SharedOffsetIndex = Arc<RwLock<OffsetIndex>>;

/// `len` consecutive source offsets from `src` mapped to consecutive destination offsets from `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// First source offset.
    pub src: i64,
    /// Destination offset of the record at `src`.
    pub dst: i64,
    /// Number of offsets, at least 1.
    pub len: u64,
}

impl Run {
    fn last_src(&self) -> i64 {
        self.src + (self.len - 1) as i64
    }

    fn last_dst(&self) -> i64 {
        self.dst + (self.len - 1) as i64
    }
}

/// The records one transaction wrote from one source partition to one destination partition,
/// as runs in send order. Consecutive runs may share a source offset (one source record replaced
/// by several); destination offsets strictly increase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestRuns {
    /// Destination partition.
    pub dest: TopicPartition,
    /// Runs in send order.
    pub runs: Vec<Run>,
}

impl DestRuns {
    /// Appends one record. Source offsets must not decrease and destination offsets must
    /// increase; the error says which did not.
    pub fn push_record(&mut self, src: i64, dst: i64) -> Result<(), String> {
        if let Some(last) = self.runs.last_mut() {
            let (ls, ld) = (last.last_src(), last.last_dst());
            if src < ls || dst <= ld {
                return Err(format!(
                    "record of source offset {src} got destination offset {dst} of {} after source offset {ls} at {ld}",
                    self.dest
                ));
            }
            if src == ls + 1 && dst == ld + 1 {
                last.len += 1;
                return Ok(());
            }
        }
        self.runs.push(Run { src, dst, len: 1 });
        Ok(())
    }
}

/// What one transaction did to one source partition: its position before and after, and the
/// records it wrote per destination partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceEntries {
    /// Source partition.
    pub source: TopicPartition,
    /// Committed position before the transaction; `None` when nothing of this partition was
    /// committed before (the index then covers it from offset 0).
    pub prev_position: Option<i64>,
    /// Committed position after the transaction.
    pub next_position: i64,
    /// Records per destination partition.
    pub dests: Vec<DestRuns>,
}

/// Collects the entries of one transaction from the records in send order.
#[derive(Debug, Default)]
pub struct EntriesBuilder {
    sources: Vec<SourceEntries>,
    /// Last (source, dest slot) hit: records of a batch usually go to one destination.
    last: Option<(usize, usize)>,
}

impl EntriesBuilder {
    /// Registers a source partition of the transaction (or moves its end position) and returns
    /// its id for [`record`](Self::record).
    pub fn source(
        &mut self,
        tp: &TopicPartition,
        prev_position: Option<i64>,
        next_position: i64,
    ) -> usize {
        if let Some(i) = self.sources.iter().position(|s| &s.source == tp) {
            let s = &mut self.sources[i];
            s.next_position = s.next_position.max(next_position);
            return i;
        }
        self.sources.push(SourceEntries {
            source: tp.clone(),
            prev_position,
            next_position,
            dests: Vec::new(),
        });
        self.sources.len() - 1
    }

    /// Adds a delivered record: source offset `src` of source `id` landed at `dst` in `dest`.
    pub fn record(
        &mut self,
        id: usize,
        dest: &TopicPartition,
        src: i64,
        dst: i64,
    ) -> Result<(), String> {
        let s = self
            .sources
            .get_mut(id)
            .ok_or_else(|| format!("unknown source id {id}"))?;
        let slot = match self.last {
            Some((i, d)) if i == id && s.dests[d].dest == *dest => d,
            _ => match s.dests.iter().position(|d| d.dest == *dest) {
                Some(d) => d,
                None => {
                    s.dests.push(DestRuns {
                        dest: dest.clone(),
                        runs: Vec::new(),
                    });
                    s.dests.len() - 1
                }
            },
        };
        self.last = Some((id, slot));
        s.dests[slot]
            .push_record(src, dst)
            .map_err(|e| format!("{}: {e}", s.source))
    }

    /// The entries, sources in registration order.
    pub fn finish(self) -> Vec<SourceEntries> {
        self.sources
    }
}

/// The answer for one destination partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Translation {
    /// Destination offset of the first replicated record whose source offset is `>= u`.
    Exact(i64),
    /// No such record yet but the source position passed `u`: every later record of this
    /// source lands at or after this destination end offset.
    EndOffset(i64),
    /// Not translatable yet: records with source offsets in `[position, u)` may still arrive,
    /// the destination end offset is unknown, or a commit is in flight.
    NotYet,
    /// `u` is below the retained window (evicted, or older than what the index topic kept).
    TooOld,
}

/// Counters of an index, for logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Source partitions known.
    pub sources: usize,
    /// (source, destination) pairs.
    pub pairs: usize,
    /// Runs retained.
    pub runs: usize,
    /// Approximate heap bytes of the runs.
    pub bytes: usize,
}

/// Why a persisted index record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexDecodeError {
    /// The record is empty.
    #[error("empty offset index record")]
    Empty,
    /// Written by another (newer) format version.
    #[error(
        "offset index record has format version {version}; this hub reads only version {FORMAT_VERSION}"
    )]
    UnknownVersion {
        /// The version byte found.
        version: u8,
    },
    /// The record ends inside a field.
    #[error("offset index record truncated in {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// A varint is longer than its type allows.
    #[error("offset index record: overlong varint in {field}")]
    BadVarint {
        /// The field being read.
        field: &'static str,
    },
    /// A value is out of range or inconsistent.
    #[error("offset index record: {0}")]
    Invalid(String),
    /// Bytes follow the last source.
    #[error("offset index record: {0} trailing bytes")]
    TrailingBytes(usize),
}

/// Whether end-offset answers can be trusted right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriterState {
    /// The writer applies every committed transaction before the next one starts committing.
    Live,
    /// A commit is in flight: it may be visible in Kafka before it is applied here.
    Committing,
    /// The writer stopped; later commits (by a newer writer) are unknown here.
    Stopped,
}

/// The offset index of one site on one cluster. See the module docs.
#[derive(Debug)]
pub struct OffsetIndex {
    max_runs: usize,
    block_runs: usize,
    state: WriterState,
    sources: HashMap<TopicPartition, Source>,
}

#[derive(Debug)]
struct Source {
    /// Committed position; `None` only transiently.
    position: Option<i64>,
    /// Every committed record of this partition with a source offset `>= cover_from` is known.
    cover_from: i64,
    pairs: BTreeMap<TopicPartition, Pair>,
}

#[derive(Debug, Default)]
struct Pair {
    blocks: VecDeque<Block>,
    /// The newest run, still growing; not yet encoded into a block.
    open: Option<Run>,
    /// Several records shared the open run's last source offset.
    open_multi: bool,
    runs: usize,
    /// Records up to this source offset were evicted.
    evicted_through: Option<i64>,
}

#[derive(Debug)]
struct Block {
    first_src: i64,
    first_dst: i64,
    last_src: i64,
    last_dst: i64,
    runs: usize,
    /// Some source offset in this block produced several records.
    multi: bool,
    /// Runs as items (see [`encode`]), the first relative to `(first_src - 1, first_dst - 1)`.
    data: Vec<u8>,
}

impl Block {
    fn new(r: Run) -> Self {
        let mut data = Vec::new();
        put_item(&mut data, (r.src - 1, r.dst - 1), &r);
        Block {
            first_src: r.src,
            first_dst: r.dst,
            last_src: r.last_src(),
            last_dst: r.last_dst(),
            runs: 1,
            multi: false,
            data,
        }
    }

    fn push(&mut self, r: Run) {
        put_item(&mut self.data, (self.last_src, self.last_dst), &r);
        self.last_src = r.last_src();
        self.last_dst = r.last_dst();
        self.runs += 1;
    }

    fn iter(&self) -> impl Iterator<Item = Run> + '_ {
        let mut cur = Reader::new(&self.data);
        let mut prev = (self.first_src - 1, self.first_dst - 1);
        (0..self.runs).map_while(move |_| {
            let r = get_item(&mut cur, prev).ok()?;
            prev = (r.last_src(), r.last_dst());
            Some(r)
        })
    }
}

/// Destination offset of the first record of `r` with a source offset `>= u`, if any.
fn answer_in(r: &Run, u: i64) -> Option<i64> {
    if u > r.last_src() {
        None
    } else if u <= r.src {
        Some(r.dst)
    } else {
        Some(r.dst + (u - r.src))
    }
}

impl Pair {
    fn last(&self) -> Option<(i64, i64)> {
        self.open.map(|o| (o.last_src(), o.last_dst()))
    }

    fn push(&mut self, mut r: Run, block_runs: usize) {
        if r.len == 0 {
            return;
        }
        if let Some((ls, ld)) = self.last() {
            if r.src <= ls {
                // Records sharing the previous source offset (one record replaced by several):
                // the first of them is the answer, the others are not indexed.
                self.open_multi = true;
                let skip = (ls - r.src + 1) as u64;
                if skip >= r.len {
                    return;
                }
                r = Run {
                    src: ls + 1,
                    dst: r.dst + skip as i64,
                    len: r.len - skip,
                };
            }
            if r.dst <= ld {
                tracing::warn!(
                    src = r.src,
                    dst = r.dst,
                    last_dst = ld,
                    "offset index: destination offset went backwards; run ignored"
                );
                return;
            }
            if r.src == ls + 1 && r.dst == ld + 1 {
                if let Some(o) = &mut self.open {
                    o.len += r.len;
                }
                return;
            }
        }
        if let Some(o) = self.open.take() {
            match self.blocks.back_mut() {
                Some(b) if b.runs < block_runs => b.push(o),
                _ => self.blocks.push_back(Block::new(o)),
            }
            let b = self.blocks.back_mut().expect("a block was just filled");
            b.multi |= std::mem::take(&mut self.open_multi);
            if b.runs == block_runs {
                b.data.shrink_to_fit();
            }
        }
        self.open = Some(r);
        self.runs += 1;
    }

    fn evict(&mut self, max_runs: usize) {
        while self.runs > max_runs {
            let Some(b) = self.blocks.pop_front() else {
                break;
            };
            self.runs -= b.runs;
            self.evicted_through = Some(b.last_src);
        }
    }

    fn first_at_or_after(&self, u: i64) -> Option<i64> {
        let i = self.blocks.partition_point(|b| b.last_src < u);
        if let Some(b) = self.blocks.get(i) {
            return b.iter().find_map(|r| answer_in(&r, u));
        }
        self.open.as_ref().and_then(|o| answer_in(o, u))
    }

    fn multi(&self) -> bool {
        self.open_multi || self.blocks.iter().any(|b| b.multi)
    }

    fn bytes(&self) -> usize {
        self.blocks
            .iter()
            .map(|b| std::mem::size_of::<Block>() + b.data.capacity())
            .sum::<usize>()
            + std::mem::size_of::<Self>()
    }
}

impl OffsetIndex {
    /// An empty index keeping at most `max_entries_per_pair` runs per (source, destination)
    /// pair (at least one).
    pub fn new(max_entries_per_pair: usize) -> Self {
        Self::with_block_runs(max_entries_per_pair, RUNS_PER_BLOCK)
    }

    fn with_block_runs(max_entries_per_pair: usize, block_runs: usize) -> Self {
        Self {
            max_runs: max_entries_per_pair.max(1),
            block_runs: block_runs.max(1),
            state: WriterState::Live,
            sources: HashMap::new(),
        }
    }

    /// Wraps the index for sharing.
    pub fn shared(self) -> SharedOffsetIndex {
        Arc::new(RwLock::new(self))
    }

    /// Forgets everything (e.g. after an unreadable index record: what follows is not
    /// contiguous with what came before). Later entries start a new covered window.
    pub fn clear(&mut self) {
        self.sources.clear();
    }

    /// Applies the entries of one committed transaction (or one persisted record of it).
    pub fn apply(&mut self, txn: &[SourceEntries]) {
        let (max_runs, block_runs) = (self.max_runs, self.block_runs);
        for s in txn {
            let src = self
                .sources
                .entry(s.source.clone())
                .or_insert_with(|| Source {
                    position: None,
                    cover_from: s.prev_position.unwrap_or(0),
                    pairs: BTreeMap::new(),
                });
            if let (Some(have), Some(prev)) = (src.position, s.prev_position)
                && prev > have
            {
                // Transactions between `have` and `prev` are unknown: start over from `prev`.
                tracing::warn!(source = %s.source, have, prev, "offset index: gap in the transaction history; older offsets become too old");
                src.pairs.clear();
                src.cover_from = prev;
            }
            for d in &s.dests {
                let pair = src.pairs.entry(d.dest.clone()).or_default();
                for r in &d.runs {
                    pair.push(*r, block_runs);
                }
                pair.evict(max_runs);
            }
            src.position = Some(
                src.position
                    .map_or(s.next_position, |p| p.max(s.next_position)),
            );
        }
    }

    /// Sets a committed position read from the positions topic: source partitions the index
    /// knows nothing about are covered from there on.
    pub fn set_position(&mut self, source: &TopicPartition, position: i64) {
        match self.sources.get_mut(source) {
            None => {
                self.sources.insert(
                    source.clone(),
                    Source {
                        position: Some(position),
                        cover_from: position,
                        pairs: BTreeMap::new(),
                    },
                );
            }
            Some(s) => {
                if s.position.is_some_and(|p| p < position) {
                    // Committed transactions the index never saw (their records expired from
                    // the index topic while the position did not): older offsets are unknown.
                    s.pairs.clear();
                    s.cover_from = position;
                }
                s.position = Some(position);
            }
        }
    }

    /// Committed position of a source partition, as far as the index knows.
    pub fn position(&self, source: &TopicPartition) -> Option<i64> {
        self.sources.get(source).and_then(|s| s.position)
    }

    /// Destination partitions fed by `source` within the retained window.
    pub fn dest_partitions(&self, source: &TopicPartition) -> Vec<TopicPartition> {
        self.sources
            .get(source)
            .map(|s| s.pairs.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Translates source offset `u` of `source` for every destination partition it feeds.
    ///
    /// The committed position used for end-offset answers is the index's own (updated with the
    /// entries, so the two are always consistent). `dest_end` gives each destination
    /// partition's read_committed end offset (last stable offset); it must have been read
    /// *before* this call: an end offset read later may already include records the answer
    /// would skip. `None` from it yields [`Translation::NotYet`].
    ///
    /// Answers are safe to persist only through the site's transactional producer: a newer
    /// writer of the site fences it, so a stale index cannot commit what it computed.
    /// A negative `u` is read as 0.
    pub fn translate(
        &self,
        source: &TopicPartition,
        u: i64,
        dest_end: impl Fn(&TopicPartition) -> Option<i64>,
    ) -> Vec<(TopicPartition, Translation)> {
        let Some(s) = self.sources.get(source) else {
            return Vec::new();
        };
        let u = u.max(0);
        s.pairs
            .iter()
            .map(|(dest, pair)| {
                let t = if u < s.cover_from || pair.evicted_through.is_some_and(|e| u <= e) {
                    Translation::TooOld
                } else if let Some(d) = pair.first_at_or_after(u) {
                    Translation::Exact(d)
                } else if self.state == WriterState::Live && s.position.is_some_and(|p| p >= u) {
                    dest_end(dest).map_or(Translation::NotYet, Translation::EndOffset)
                } else {
                    Translation::NotYet
                };
                (dest.clone(), t)
            })
            .collect()
    }

    /// True when, within the retained window, `source` feeds exactly one destination partition,
    /// no other source partition of the site feeds that one, and no source offset produced more
    /// than one record. Then every index entry is an exact MM2 offset sync, and MM2's rule for
    /// offsets between syncs (`downstream + 1`) never skips a record. (Dropped records are
    /// allowed: the hub cannot tell them from gaps in the source log, and they keep the rule
    /// exact.)
    pub fn is_one_to_one(&self, source: &TopicPartition) -> bool {
        let Some(s) = self.sources.get(source) else {
            return false;
        };
        let mut pairs = s.pairs.iter();
        let (Some((dest, pair)), None) = (pairs.next(), pairs.next()) else {
            return false;
        };
        !pair.multi()
            && !self
                .sources
                .iter()
                .any(|(tp, o)| tp != source && o.pairs.contains_key(dest))
    }

    /// Counters for logs.
    pub fn stats(&self) -> IndexStats {
        let mut st = IndexStats {
            sources: self.sources.len(),
            ..IndexStats::default()
        };
        for s in self.sources.values() {
            st.pairs += s.pairs.len();
            for p in s.pairs.values() {
                st.runs += p.runs;
                st.bytes += p.bytes();
            }
        }
        st
    }

    /// Marks a commit as in flight (end-offset answers withheld) or finished.
    pub(crate) fn set_committing(&mut self, committing: bool) {
        if self.state != WriterState::Stopped {
            self.state = if committing {
                WriterState::Committing
            } else {
                WriterState::Live
            };
        }
    }

    /// The writer stopped: the index stays valid for what it knows but no longer learns of new
    /// commits, so end-offset answers are withheld from now on.
    pub(crate) fn mark_stopped(&mut self) {
        self.state = WriterState::Stopped;
    }
}

// ---------------------------------------------------------------------------------------------
// Persisted format.

/// Encodes the entries of one transaction into index records of at most about
/// `max_record_bytes` each (a pair with many runs is split over several records; applying them
/// in order is the same as applying the whole).
///
/// Byte layout, version 1 (varints are unsigned LEB128; `str` = varint length + UTF-8):
///
/// ```text
/// record  = version:u8 (=1)  source_count:varint  source*
/// source  = topic:str  partition:varint
///           prev_position_plus_1:varint   (0 = nothing committed before: covered from 0)
///           next_position:varint
///           dest_count:varint  dest*
/// dest    = topic:str  partition:varint
///           run_count:varint (>= 1)
///           first_src:varint  first_dst:varint  first_len_minus_1:varint
///           item*                          (run_count - 1 of them)
/// item    = x:varint (up to 128 bits)      x = src_delta << 2 | len_flag << 1 | dst_flag
///           [dst_delta_minus_2:varint]     when dst_flag
///           [len_minus_2:varint]           when len_flag
/// ```
///
/// A run maps `len` consecutive source offsets from `src` to consecutive destination offsets
/// from `dst`. Items are relative to the previous run's last source and destination offsets:
/// `src_delta >= 0` (0 = several records from one source offset), `dst_delta >= 1` (1 when the
/// flag is clear), `len >= 1` (1 when the flag is clear). A filtered record with a source gap
/// below 32 costs one byte; an unfiltered stretch costs one item per transaction.
pub fn encode(txn: &[SourceEntries], max_record_bytes: usize) -> Vec<Vec<u8>> {
    let max = max_record_bytes.max(1024);
    let segment_max = max / 4;
    // (source index, encoded dest segment or None for a source without records)
    let mut items: Vec<(usize, Option<Vec<u8>>)> = Vec::new();
    for (i, s) in txn.iter().enumerate() {
        if s.dests.iter().all(|d| d.runs.is_empty()) {
            items.push((i, None));
        }
        for d in &s.dests {
            let mut runs = &d.runs[..];
            while !runs.is_empty() {
                let (seg, used) = encode_segment(&d.dest, runs, segment_max);
                runs = &runs[used..];
                items.push((i, Some(seg)));
            }
        }
    }
    let headers: Vec<Vec<u8>> = txn.iter().map(source_header).collect();
    let mut out = Vec::new();
    let mut current: Vec<(usize, Vec<&[u8]>)> = Vec::new();
    let mut size = 1 + 10;
    for (i, seg) in &items {
        let seg_len = seg.as_ref().map_or(0, Vec::len);
        let new_source = current.last().is_none_or(|(j, _)| j != i);
        let add = seg_len
            + if new_source {
                headers[*i].len() + 10
            } else {
                0
            };
        if !current.is_empty() && size + add > max {
            out.push(serialize(&current, &headers));
            current.clear();
            size = 1 + 10;
        }
        if current.last().is_none_or(|(j, _)| j != i) {
            size += headers[*i].len() + 10;
            current.push((*i, Vec::new()));
        }
        if let Some(seg) = seg {
            size += seg.len();
            current.last_mut().expect("pushed above").1.push(seg);
        }
    }
    if !current.is_empty() {
        out.push(serialize(&current, &headers));
    }
    out
}

fn source_header(s: &SourceEntries) -> Vec<u8> {
    let mut b = Vec::with_capacity(s.source.topic.len() + 24);
    put_str(&mut b, &s.source.topic);
    put_uvarint(&mut b, s.source.partition.max(0) as u64);
    put_uvarint(&mut b, s.prev_position.map_or(0, |p| p.max(0) as u64 + 1));
    put_uvarint(&mut b, s.next_position.max(0) as u64);
    b
}

fn serialize(current: &[(usize, Vec<&[u8]>)], headers: &[Vec<u8>]) -> Vec<u8> {
    let len = current
        .iter()
        .map(|(i, segs)| headers[*i].len() + 10 + segs.iter().map(|s| s.len()).sum::<usize>())
        .sum::<usize>();
    let mut b = Vec::with_capacity(len + 11);
    b.push(FORMAT_VERSION);
    put_uvarint(&mut b, current.len() as u64);
    for (i, segs) in current {
        b.extend_from_slice(&headers[*i]);
        put_uvarint(&mut b, segs.len() as u64);
        for s in segs {
            b.extend_from_slice(s);
        }
    }
    b
}

/// Encodes a prefix of `runs` (at least one run, then until about `max_bytes`); returns the
/// bytes and how many runs they hold.
fn encode_segment(dest: &TopicPartition, runs: &[Run], max_bytes: usize) -> (Vec<u8>, usize) {
    let mut body = Vec::new();
    let first = runs[0];
    put_uvarint(&mut body, first.src as u64);
    put_uvarint(&mut body, first.dst as u64);
    put_uvarint(&mut body, first.len - 1);
    let mut prev = (first.last_src(), first.last_dst());
    let mut used = 1;
    for r in &runs[1..] {
        if body.len() >= max_bytes {
            break;
        }
        put_item(&mut body, prev, r);
        prev = (r.last_src(), r.last_dst());
        used += 1;
    }
    let mut seg = Vec::with_capacity(body.len() + dest.topic.len() + 16);
    put_str(&mut seg, &dest.topic);
    put_uvarint(&mut seg, dest.partition.max(0) as u64);
    put_uvarint(&mut seg, used as u64);
    seg.extend_from_slice(&body);
    (seg, used)
}

/// Decodes one index record; never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Vec<SourceEntries>, IndexDecodeError> {
    let Some((&version, rest)) = bytes.split_first() else {
        return Err(IndexDecodeError::Empty);
    };
    if version != FORMAT_VERSION {
        return Err(IndexDecodeError::UnknownVersion { version });
    }
    let mut cur = Reader::new(rest);
    let sources = cur.uvarint("source_count")?;
    let mut out = Vec::new();
    for _ in 0..sources {
        let topic = cur.str("source topic")?;
        let partition = cur.i32("source partition")?;
        let prev_position = match cur.uvarint("prev_position")? {
            0 => None,
            p => Some(to_i64(p - 1, "prev_position")?),
        };
        let next_position = to_i64(cur.uvarint("next_position")?, "next_position")?;
        let source = TopicPartition::new(topic, partition);
        if prev_position.is_some_and(|p| p > next_position) {
            return Err(IndexDecodeError::Invalid(format!(
                "{source}: position moved backwards from {prev_position:?} to {next_position}"
            )));
        }
        let dest_count = cur.uvarint("dest_count")?;
        let mut dests = Vec::new();
        for _ in 0..dest_count {
            let topic = cur.str("dest topic")?;
            let partition = cur.i32("dest partition")?;
            let dest = TopicPartition::new(topic, partition);
            let run_count = cur.uvarint("run_count")?;
            if run_count == 0 {
                return Err(IndexDecodeError::Invalid(format!(
                    "{source} -> {dest}: no runs"
                )));
            }
            let src = to_i64(cur.uvarint("first_src")?, "first_src")?;
            let dst = to_i64(cur.uvarint("first_dst")?, "first_dst")?;
            let len = cur
                .uvarint("first_len")?
                .checked_add(1)
                .ok_or(IndexDecodeError::Invalid("run length overflows".into()))?;
            let first = checked_run(src, dst, len)?;
            let mut runs = vec![first];
            let mut prev = (first.last_src(), first.last_dst());
            for _ in 1..run_count {
                let r = get_item(&mut cur, prev)?;
                prev = (r.last_src(), r.last_dst());
                runs.push(r);
            }
            let (lo, hi) = (runs[0].src, prev.0);
            if prev_position.is_some_and(|p| lo < p) || hi >= next_position {
                return Err(IndexDecodeError::Invalid(format!(
                    "{source} -> {dest}: source offsets {lo}..={hi} outside the transaction's range {prev_position:?}..{next_position}"
                )));
            }
            dests.push(DestRuns { dest, runs });
        }
        out.push(SourceEntries {
            source,
            prev_position,
            next_position,
            dests,
        });
    }
    if cur.rest() != 0 {
        return Err(IndexDecodeError::TrailingBytes(cur.rest()));
    }
    Ok(out)
}

fn to_i64(v: u64, field: &'static str) -> Result<i64, IndexDecodeError> {
    i64::try_from(v).map_err(|_| IndexDecodeError::Invalid(format!("{field} {v} exceeds i64")))
}

fn checked_run(src: i64, dst: i64, len: u64) -> Result<Run, IndexDecodeError> {
    let ok = i64::try_from(len - 1)
        .ok()
        .is_some_and(|l| src.checked_add(l).is_some() && dst.checked_add(l).is_some());
    if ok {
        Ok(Run { src, dst, len })
    } else {
        Err(IndexDecodeError::Invalid(format!(
            "run of {len} offsets from {src} -> {dst} overflows"
        )))
    }
}

fn put_item(buf: &mut Vec<u8>, prev: (i64, i64), r: &Run) {
    let src_delta = (r.src - prev.0) as u128;
    let dst_delta = (r.dst - prev.1) as u64;
    let dst_flag = u128::from(dst_delta != 1);
    let len_flag = u128::from(r.len != 1);
    put_uvarint128(buf, src_delta << 2 | len_flag << 1 | dst_flag);
    if dst_delta != 1 {
        put_uvarint(buf, dst_delta - 2);
    }
    if r.len != 1 {
        put_uvarint(buf, r.len - 2);
    }
}

fn get_item(cur: &mut Reader<'_>, prev: (i64, i64)) -> Result<Run, IndexDecodeError> {
    let x = cur.uvarint128("run item")?;
    let src_delta = i64::try_from(x >> 2)
        .map_err(|_| IndexDecodeError::Invalid("source delta exceeds i64".into()))?;
    let dst_delta = if x & 1 != 0 {
        cur.uvarint("dst_delta")?.checked_add(2)
    } else {
        Some(1)
    };
    let len = if x & 2 != 0 {
        cur.uvarint("run length")?.checked_add(2)
    } else {
        Some(1)
    };
    let src = prev.0.checked_add(src_delta);
    let dst = dst_delta
        .and_then(|d| i64::try_from(d).ok())
        .and_then(|d| prev.1.checked_add(d));
    match (src, dst, len) {
        (Some(src), Some(dst), Some(len)) => checked_run(src, dst, len),
        _ => Err(IndexDecodeError::Invalid("run offsets overflow".into())),
    }
}

fn put_uvarint(buf: &mut Vec<u8>, v: u64) {
    put_uvarint128(buf, u128::from(v));
}

fn put_uvarint128(buf: &mut Vec<u8>, mut v: u128) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_uvarint(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn rest(&self) -> usize {
        self.data.len() - self.pos
    }

    fn uvarint128(&mut self, field: &'static str) -> Result<u128, IndexDecodeError> {
        let mut v: u128 = 0;
        for i in 0..19 {
            let b = *self
                .data
                .get(self.pos)
                .ok_or(IndexDecodeError::Truncated { field })?;
            self.pos += 1;
            // The 19th byte may only carry the top 2 bits of a u128.
            if i == 18 && b > 0x03 {
                break;
            }
            v |= u128::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(IndexDecodeError::BadVarint { field })
    }

    fn uvarint(&mut self, field: &'static str) -> Result<u64, IndexDecodeError> {
        u64::try_from(self.uvarint128(field)?).map_err(|_| IndexDecodeError::BadVarint { field })
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, IndexDecodeError> {
        let v = self.uvarint(field)?;
        i32::try_from(v).map_err(|_| IndexDecodeError::Invalid(format!("{field} {v} exceeds i32")))
    }

    fn str(&mut self, field: &'static str) -> Result<String, IndexDecodeError> {
        let len = self.uvarint(field)?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| self.pos.checked_add(l))
            .filter(|&e| e <= self.data.len())
            .ok_or(IndexDecodeError::Truncated { field })?;
        let s = std::str::from_utf8(&self.data[self.pos..end])
            .map_err(|_| IndexDecodeError::Invalid(format!("{field} is not UTF-8")))?;
        self.pos = end;
        Ok(s.to_owned())
    }
}

#[cfg(test)]
mod tests;
