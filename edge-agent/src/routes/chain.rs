//! Records of a routed partition: held (owned) until their batch is sealed, then run through the
//! route's plugin chain and encoded into one or more batches.
//!
//! Every output record carries the source offset of the record it came from. Batches are split
//! only between source records, never between two outputs of one source record, so a batch's
//! `next_offset` always means "every record before it is fully covered": a resume can never
//! replay half of a record's outputs.

use std::ops::Range;

use er_plugin_host::{
    DEAD_LETTER_ERROR_HEADER, DEAD_LETTER_PLUGIN_HEADER, ErrorPolicy, InRecord, OutBatch,
    OutRecordRef,
};
use er_protocol::{Batch, BatchBuilder, RecordRef, TimestampType, TopicPartition};
use rdkafka::message::{Headers, Message};

use crate::pipeline::RouteRuntime;

#[derive(Debug)]
struct Held {
    offset: i64,
    timestamp: i64,
    timestamp_type: TimestampType,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
    headers: Range<usize>,
}

/// Records of one source partition waiting for the plugin chain, in one flat buffer.
#[derive(Debug, Default)]
pub struct Pending {
    data: Vec<u8>,
    keys: String,
    headers: Vec<(Range<usize>, Option<Range<usize>>)>,
    recs: Vec<Held>,
}

impl Pending {
    /// Copies one Kafka message in.
    pub fn push(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) {
        let (timestamp_type, timestamp) = crate::kafka::timestamp_of(m);
        let key = m.key().map(|k| self.copy(k));
        let value = m.payload().map(|v| self.copy(v));
        let start = self.headers.len();
        if let Some(h) = m.headers() {
            for i in 0..h.count() {
                let h = h.get(i);
                let k0 = self.keys.len();
                self.keys.push_str(h.key);
                let v = h.value.map(|v| self.copy(v));
                self.headers.push((k0..self.keys.len(), v));
            }
        }
        self.recs.push(Held {
            offset: m.offset(),
            timestamp,
            timestamp_type,
            key,
            value,
            headers: start..self.headers.len(),
        });
    }

    /// Every held header as (key, value) slices, in order: what [`Pending::in_records`] points
    /// into.
    fn header_views(&self) -> Vec<(&str, Option<&[u8]>)> {
        self.headers
            .iter()
            .map(|(k, v)| {
                (
                    &self.keys[k.clone()],
                    v.as_ref().map(|v| &self.data[v.clone()]),
                )
            })
            .collect()
    }

    /// The held records as the plugin chain takes them.
    fn in_records<'a>(
        &'a self,
        tp: &'a TopicPartition,
        header_views: &'a [(&'a str, Option<&'a [u8]>)],
    ) -> Vec<InRecord<'a>> {
        self.recs
            .iter()
            .map(|r| InRecord {
                topic: &tp.topic,
                partition: tp.partition,
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key.as_ref().map(|k| &self.data[k.clone()]),
                value: r.value.as_ref().map(|v| &self.data[v.clone()]),
                headers: &header_views[r.headers.clone()],
            })
            .collect()
    }

    fn copy(&mut self, b: &[u8]) -> Range<usize> {
        let s = self.data.len();
        self.data.extend_from_slice(b);
        s..self.data.len()
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.recs.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    /// Bytes of keys, values and headers held.
    pub fn bytes(&self) -> usize {
        self.data.len() + self.keys.len()
    }

    /// Offset of the first held record.
    pub fn first_offset(&self) -> Option<i64> {
        self.recs.first().map(|r| r.offset)
    }

    /// Drops everything, keeping the buffers' capacity.
    pub fn clear(&mut self) {
        self.data.clear();
        self.keys.clear();
        self.headers.clear();
        self.recs.clear();
    }
}

/// What one chain run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChainRun {
    /// Source records given to the chain.
    pub records_in: u64,
    /// Records encoded into batches (outputs, dead-letter copies included).
    pub records_out: u64,
    /// Source records that produced no output.
    pub dropped: u64,
    /// Records a plugin failed (skipped or dead-lettered by the policy).
    pub failed: u64,
}

/// Why a routed batch could not be produced; the route stops (nothing is lost: the partition
/// resumes from the first held record).
#[derive(Debug, thiserror::Error)]
#[error("route {route:?}, {tp} offsets {first}..={last}: {message}")]
pub struct RouteStopped {
    /// The route.
    pub route: String,
    /// Source partition.
    pub tp: TopicPartition,
    /// First held offset.
    pub first: i64,
    /// Last held offset.
    pub last: i64,
    /// What went wrong.
    pub message: String,
}

/// What one chain run takes: a routed partition's held records.
#[derive(Debug, Clone, Copy)]
pub struct ChainInput<'a> {
    /// The source partition.
    pub tp: &'a TopicPartition,
    /// Its topic's partition count (outputs must name a partition below it).
    pub partition_count: i32,
    /// The held records.
    pub pending: &'a Pending,
    /// Where the consumer is past the last held record, when it skipped control or aborted
    /// records after it.
    pub skipped_to: Option<i64>,
}

/// Where one chain run's outputs go.
#[derive(Debug)]
pub struct ChainOutput<'a> {
    /// The plugin host's reusable output buffer.
    pub scratch: &'a mut OutBatch,
    /// The partition's batch builder.
    pub builder: &'a mut BatchBuilder,
    /// The partition's next batch sequence number.
    pub next_seq: &'a mut u64,
}

/// Batch shape for [`run_chain`].
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Records per batch.
    pub max_records: usize,
    /// Encoded bytes per batch.
    pub max_bytes: usize,
    /// Compression.
    pub codec: er_protocol::Codec,
    /// zstd level.
    pub zstd_level: i32,
    /// Encoded bytes the outputs of one source record may take together: they travel in one
    /// batch (batches end only between source records), on top of up to `max_bytes` of
    /// earlier records, and the hub takes at most `max_bytes + max_source_bytes` in a batch.
    pub max_source_bytes: usize,
}

/// Encoded bytes of an output record, at most (varint lengths counted at their widest).
fn encoded_bound(r: &OutRecordRef<'_>) -> usize {
    const FIELD: usize = 10;
    1 + 3 * FIELD
        + r.key.map_or(0, |k| k.len() + FIELD)
        + r.value.map_or(0, |v| v.len() + FIELD)
        + r.headers
            .iter()
            .map(|(k, v)| 2 * FIELD + 1 + k.len() + v.map_or(0, <[u8]>::len))
            .sum::<usize>()
        + r.topic.map_or(0, |t| t.len() + FIELD)
}

/// Runs the held records of `tp` through the route's chain and encodes the outputs into batches
/// numbered from `*next_seq` (advanced only on success; on error the builder may hold a partial
/// batch and must be reset). The last batch ends at `skipped_to` when that lies past the last
/// held record (the consumer skipped control or aborted records after it), else just after it. Outputs are checked here (valid, non-internal topic; partition
/// within the source topic's partition count); a bad output counts as a plugin failure under the
/// route's policy.
pub fn run_chain(
    route: &mut RouteRuntime,
    held: ChainInput<'_>,
    into: ChainOutput<'_>,
    shape: Shape,
) -> Result<(Vec<Batch>, ChainRun), RouteStopped> {
    let ChainInput {
        tp,
        partition_count,
        pending,
        skipped_to,
    } = held;
    let ChainOutput {
        scratch: out,
        builder,
        next_seq,
    } = into;
    let (first, last) = match (pending.recs.first(), pending.recs.last()) {
        (Some(f), Some(l)) => (f.offset, l.offset),
        _ => return Ok((Vec::new(), ChainRun::default())),
    };
    let (name, chain) = route.runnable();
    let stopped = |message: String| RouteStopped {
        route: name.to_owned(),
        tp: tp.clone(),
        first,
        last,
        message,
    };
    let header_views = pending.header_views();
    let input = pending.in_records(tp, &header_views);
    let chain = chain.map_err(stopped)?;
    chain
        .process_into(&input, out)
        .map_err(|e| stopped(e.to_string()))?;
    let mut outputs = Outputs {
        route: name,
        tp,
        partition_count,
        policy: chain.policy().clone(),
        pending,
        input: &input,
        source_bytes: source_bytes(out, &input),
        cut: Cutter {
            builder,
            shape,
            seq: *next_seq,
            batches: Vec::new(),
        },
        run: ChainRun {
            records_in: input.len() as u64,
            failed: out.failures().len() as u64,
            ..ChainRun::default()
        },
        produced: vec![false; input.len()],
    };
    let mut headers = Vec::new();
    let mut last_source: Option<u32> = None;
    for r in out.iter(&input) {
        let first_of_source = last_source != Some(r.source_index);
        last_source = Some(r.source_index);
        outputs
            .take(&r, first_of_source, &mut headers)
            .map_err(&stopped)?;
    }
    let Outputs {
        mut cut,
        mut run,
        produced,
        ..
    } = outputs;
    run.dropped = produced.iter().filter(|p| !**p).count() as u64;
    cut.seal(skipped_to.unwrap_or(0).max(last.saturating_add(1)))
        .map_err(|e| stopped(encoding_failed(e)))?;
    *next_seq = cut.seq;
    Ok((cut.batches, run))
}

fn encoding_failed(e: er_protocol::EncodeError) -> String {
    format!("encoding a batch: {e}")
}

/// One chain run's outputs on their way into batches.
struct Outputs<'a, 'b> {
    route: &'a str,
    tp: &'a TopicPartition,
    partition_count: i32,
    policy: ErrorPolicy,
    pending: &'a Pending,
    /// The source records as the chain saw them.
    input: &'a [InRecord<'a>],
    /// Per source record: what its outputs take together (see [`source_bytes`]).
    source_bytes: Vec<usize>,
    cut: Cutter<'b>,
    run: ChainRun,
    /// Per source record: whether anything went into a batch for it.
    produced: Vec<bool>,
}

impl Outputs<'_, '_> {
    /// Takes output `r` (the first of its source record when `first_of_source`) into the batch,
    /// or applies the route's error policy when it is refused. `Err` stops the route.
    fn take<'r>(
        &mut self,
        r: &OutRecordRef<'r>,
        first_of_source: bool,
        headers: &mut Vec<(&'r str, Option<&'r [u8]>)>,
    ) -> Result<(), String> {
        let i = r.source_index as usize;
        let src = &self.pending.recs[i];
        if first_of_source {
            self.cut
                .split_if_full(src.offset)
                .map_err(encoding_failed)?;
        }
        let topic = r.topic.filter(|t| *t != self.tp.topic);
        let room = self.cut.shape.max_source_bytes;
        let too_big = self.source_bytes[i] > room;
        if too_big && !first_of_source {
            // The source record's policy was applied at its first output.
            return Ok(());
        }
        let problem = if too_big {
            Err(too_big_problem(self.source_bytes[i], room))
        } else {
            check_output(topic, r.partition, self.partition_count)
        };
        let written = match problem {
            Ok(()) => {
                push_output(self.cut.builder, src, r, topic, headers);
                true
            }
            Err(problem) => {
                self.run.failed += 1;
                let refused = Refused {
                    route: self.route,
                    tp: self.tp,
                    src,
                    source: &self.input[i],
                    problem,
                };
                refused.apply(&self.policy, self.cut.builder)?
            }
        };
        if written {
            self.run.records_out += 1;
            self.produced[i] = true;
        }
        Ok(())
    }
}

/// Encoded bytes the outputs of each source record take together, at most.
fn source_bytes(out: &OutBatch, input: &[InRecord<'_>]) -> Vec<usize> {
    let mut bytes = vec![0usize; input.len()];
    for r in out.iter(input) {
        bytes[r.source_index as usize] += encoded_bound(&r);
    }
    bytes
}

fn too_big_problem(bytes: usize, room: usize) -> String {
    format!(
        "the outputs of one source record take {bytes} bytes, more than the {room} bytes a batch has room for (hub limits.max_batch_bytes)"
    )
}

/// The batches one chain run cuts: numbered on from the partition's next sequence number, each
/// sealed once it holds a batch's worth (checked only between source records).
struct Cutter<'b> {
    builder: &'b mut BatchBuilder,
    shape: Shape,
    /// Sequence number of the batch being built.
    seq: u64,
    batches: Vec<Batch>,
}

impl Cutter<'_> {
    /// Seals the batch being built when it is full; the next source record starts at
    /// `next_offset`.
    fn split_if_full(&mut self, next_offset: i64) -> Result<(), er_protocol::EncodeError> {
        let b = &self.builder;
        if !b.is_empty()
            && (b.len() >= self.shape.max_records || b.encoded_bytes() >= self.shape.max_bytes)
        {
            self.seal(next_offset)?;
        }
        Ok(())
    }

    /// Seals the batch being built, ending at `next_offset`.
    fn seal(&mut self, next_offset: i64) -> Result<(), er_protocol::EncodeError> {
        self.builder.set_next_offset(next_offset);
        let batch =
            self.builder
                .finish_and_reset(self.seq, self.shape.codec, self.shape.zstd_level)?;
        self.batches.push(batch);
        self.seq += 1;
        Ok(())
    }
}

/// Adds a plugin's output of source record `src` to the batch.
fn push_output<'r>(
    builder: &mut BatchBuilder,
    src: &Held,
    r: &OutRecordRef<'r>,
    topic: Option<&'r str>,
    headers: &mut Vec<(&'r str, Option<&'r [u8]>)>,
) {
    // A timestamp the plugin changed is its own: CreateTime.
    let timestamp_type = if r.kept || r.timestamp == src.timestamp {
        src.timestamp_type
    } else {
        TimestampType::CreateTime
    };
    headers.clear();
    headers.extend(r.headers.iter());
    builder.push(&RecordRef {
        offset: src.offset,
        timestamp: r.timestamp,
        timestamp_type,
        key: r.key,
        value: r.value,
        headers,
        topic,
        partition: r.partition,
    });
}

/// A plugin output the agent refuses (bad destination, or too large), before the route's error
/// policy decides what becomes of its source record.
struct Refused<'a> {
    route: &'a str,
    tp: &'a TopicPartition,
    src: &'a Held,
    /// The source record as the chain saw it.
    source: &'a InRecord<'a>,
    problem: String,
}

impl Refused<'_> {
    /// Applies `policy`: `Ok(true)` when a dead-letter copy of the source record went into the
    /// batch, `Ok(false)` when the record is skipped, `Err` with the message the route stops with.
    fn apply(self, policy: &ErrorPolicy, builder: &mut BatchBuilder) -> Result<bool, String> {
        let Refused {
            route,
            tp,
            src,
            source,
            problem,
        } = self;
        match policy {
            ErrorPolicy::Stop => Err(format!(
                "a plugin produced a bad record for source offset {}: {problem}",
                src.offset
            )),
            ErrorPolicy::Skip => {
                tracing::warn!(route, %tp, offset = src.offset, %problem, "plugin output refused; record skipped");
                Ok(false)
            }
            ErrorPolicy::DeadLetter { topic: dlq } => {
                let message = format!("plugin output refused: {problem}");
                let headers: Vec<_> = source
                    .headers
                    .iter()
                    .copied()
                    .chain([
                        (DEAD_LETTER_ERROR_HEADER, Some(message.as_bytes())),
                        (DEAD_LETTER_PLUGIN_HEADER, Some(route.as_bytes())),
                    ])
                    .collect();
                builder.push(&RecordRef {
                    offset: src.offset,
                    timestamp: src.timestamp,
                    timestamp_type: src.timestamp_type,
                    key: source.key,
                    value: source.value,
                    headers: &headers,
                    topic: Some(dlq),
                    partition: None,
                });
                Ok(true)
            }
        }
    }
}

/// Checks a plugin's output destination.
fn check_output(
    topic: Option<&str>,
    partition: Option<i32>,
    partition_count: i32,
) -> Result<(), String> {
    if let Some(t) = topic {
        er_protocol::validate_topic_name(t).map_err(|e| format!("topic: {e}"))?;
        if er_protocol::is_internal_topic(t) || t == er_protocol::HEARTBEATS_TOPIC {
            return Err(format!(
                "topic {t:?} is reserved for internal records and cannot be written by a plugin"
            ));
        }
    }
    if let Some(p) = partition
        && !(0..partition_count).contains(&p)
    {
        return Err(format!(
            "partition {p} is outside the source topic's partitions 0..{partition_count}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_to_internal_topics_or_foreign_partitions_are_refused() {
        assert!(check_output(None, None, 4).is_ok());
        assert!(check_output(Some("renamed.topic"), Some(3), 4).is_ok());
        for (t, p) in [
            (Some("heartbeats"), None),
            (Some("x.checkpoints.internal"), None),
            (Some("__consumer_offsets"), None),
            (Some("bad topic"), None),
            (Some(""), None),
            (None, Some(4)),
            (None, Some(-1)),
        ] {
            assert!(check_output(t, p, 4).is_err(), "{t:?} {p:?}");
        }
    }
}
