//! Compact encoding of the records inside a batch: build on the agent, decode on the hub.
//!
//! Record layout (all varints LEB128, unsigned unless noted):
//! `flags u8` (bit 0 key present, bit 1 value present, bits 2-3 timestamp type,
//! bit 4 topic override, bit 5 partition override, bits 6-7 zero),
//! `offset delta` from the batch's first_offset (non-decreasing within a batch),
//! `timestamp` (zigzag), `key` and `value` (varint length + bytes, when present),
//! `header count`, per header `key` (varint length + UTF-8), `value present u8`, `value`
//! (varint length + bytes, when present), then the topic override (varint length + UTF-8) and
//! the partition override (varint), when flagged.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::frame::{Batch, BatchHeader, Codec, TopicPartition};

const FLAG_KEY: u8 = 1;
const FLAG_VALUE: u8 = 1 << 1;
const TS_SHIFT: u8 = 2;
const TS_MASK: u8 = 0b11 << TS_SHIFT;
const FLAG_TOPIC: u8 = 1 << 4;
const FLAG_PARTITION: u8 = 1 << 5;
const FLAG_RESERVED: u8 = 0b1100_0000;

/// Kafka's timestamp type of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimestampType {
    /// No timestamp (pre-0.10 message format).
    NotAvailable,
    /// Set by the producer.
    CreateTime,
    /// Set by the broker on append.
    LogAppendTime,
}

impl TimestampType {
    fn bits(self) -> u8 {
        match self {
            TimestampType::NotAvailable => 0,
            TimestampType::CreateTime => 1,
            TimestampType::LogAppendTime => 2,
        }
    }

    fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0 => Some(TimestampType::NotAvailable),
            1 => Some(TimestampType::CreateTime),
            2 => Some(TimestampType::LogAppendTime),
            _ => None,
        }
    }
}

/// A record to encode, borrowing its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Source offset (several output records may share one).
    pub offset: i64,
    /// Timestamp in epoch milliseconds.
    pub timestamp: i64,
    /// Kind of timestamp.
    pub timestamp_type: TimestampType,
    /// Key; `None` is Kafka's null key, distinct from an empty one.
    pub key: Option<&'a [u8]>,
    /// Value; `None` is a tombstone, distinct from an empty value.
    pub value: Option<&'a [u8]>,
    /// Headers in order, repeats allowed.
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
    /// Destination topic override set by a plugin.
    pub topic: Option<&'a str>,
    /// Destination partition override set by a plugin.
    pub partition: Option<i32>,
}

/// Accumulates records of one source partition into a [`Batch`].
///
/// Encoding appends into one reusable buffer without allocating per record. Invalid records
/// (negative or decreasing offsets, negative partition overrides) do not panic: the first such
/// error is kept and returned by [`finish`](Self::finish).
pub struct BatchBuilder {
    tp: TopicPartition,
    partition_count: i32,
    buf: BytesMut,
    count: u32,
    first_offset: Option<i64>,
    last_offset: Option<i64>,
    next_offset: Option<i64>,
    error: Option<EncodeError>,
    compressor: Option<(i32, zstd::bulk::Compressor<'static>)>,
    /// Batches still to be sent uncompressed without trying, after one that compression did
    /// not make smaller (see [`BatchBuilder::finish_and_reset`]).
    skip_compression: u32,
    /// Largest encoded record pushed as is; a larger one becomes a [`POISON_REASON_HEADER`] stub.
    max_record_bytes: usize,
}

/// The only header of a stub record an agent sends in place of a record it can never send (one
/// larger than the hub takes in a batch): no value, the key when at most
/// [`POISON_KEY_MAX_BYTES`], this header saying why. The hub writes such a stub to the site's
/// dead letters, never to the destination. Reserved: an edge record with no value whose only
/// header has this name is taken for a stub.
pub const POISON_REASON_HEADER: &str = "er.poison.reason";

/// Largest key a poison stub keeps.
pub const POISON_KEY_MAX_BYTES: usize = 64 * 1024;

/// Batches of a partition sent uncompressed without trying after one that compression did not
/// make smaller; then compression is tried again, in case the data changed.
pub const SKIP_AFTER_NO_GAIN: u32 = 15;

/// Smallest batch (encoded bytes) whose failure to compress makes the next ones skip trying.
pub const JUDGE_COMPRESSION_BYTES: usize = 4096;

/// Whether `compressed` bytes are worth sending instead of `raw` ones: at least 1/32 fewer (a
/// smaller gain costs the hub a decompression for next to nothing).
fn gains(compressed: usize, raw: usize) -> bool {
    compressed < raw - raw / 32
}

impl fmt::Debug for BatchBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchBuilder")
            .field("tp", &self.tp)
            .field("partition_count", &self.partition_count)
            .field("encoded_bytes", &self.buf.len())
            .field("count", &self.count)
            .field("first_offset", &self.first_offset)
            .field("last_offset", &self.last_offset)
            .field("next_offset", &self.next_offset)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl BatchBuilder {
    /// An empty builder for records of `tp`, a partition of a topic with `partition_count`
    /// partitions.
    pub fn new(tp: TopicPartition, partition_count: i32) -> Self {
        let mut b = Self {
            tp,
            partition_count,
            buf: BytesMut::new(),
            count: 0,
            first_offset: None,
            last_offset: None,
            next_offset: None,
            error: None,
            compressor: None,
            skip_compression: 0,
            max_record_bytes: usize::MAX,
        };
        b.check_partition();
        b
    }

    /// Records whose encoding is larger than `bytes` are pushed as poison stubs (see
    /// [`POISON_REASON_HEADER`]): the agent sets the hub's batch limit here, so one record can
    /// never make a batch the hub refuses again and again.
    pub fn with_max_record_bytes(mut self, bytes: usize) -> Self {
        self.max_record_bytes = bytes;
        self
    }

    fn check_partition(&mut self) {
        if self.tp.partition < 0 || self.tp.partition >= self.partition_count {
            self.error = Some(EncodeError::InvalidPartition {
                partition: self.tp.partition,
                partition_count: self.partition_count,
            });
        }
    }

    /// Empties the builder for a new batch (possibly of another partition), keeping its buffer
    /// and compression context.
    pub fn reset(&mut self, tp: TopicPartition, partition_count: i32) {
        self.tp = tp;
        self.partition_count = partition_count;
        self.clear();
        self.check_partition();
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
        self.first_offset = None;
        self.last_offset = None;
        self.next_offset = None;
        self.error = None;
    }

    /// Partition the builder collects records for.
    pub fn tp(&self) -> &TopicPartition {
        &self.tp
    }

    /// Number of records pushed.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of encoded records so far (before compression).
    pub fn encoded_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Appends one record, using `r.headers`.
    pub fn push(&mut self, r: &RecordRef<'_>) {
        self.push_with_headers(r, r.headers.iter().copied());
    }

    /// Appends one record with headers from an iterator instead of `r.headers`, so borrowed
    /// headers (e.g. rdkafka's `BorrowedHeaders`, via `(0..h.count()).map(|i| ...)`) need no
    /// intermediate collection.
    pub fn push_with_headers<'h, H>(&mut self, r: &RecordRef<'_>, headers: H)
    where
        H: IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
        H::IntoIter: ExactSizeIterator,
    {
        if self.error.is_some() {
            return;
        }
        let index = self.count;
        if r.offset < 0 {
            self.error = Some(EncodeError::NegativeOffset {
                index,
                offset: r.offset,
            });
            return;
        }
        if let Some(previous) = self.last_offset
            && r.offset < previous
        {
            self.error = Some(EncodeError::OffsetDecreasing {
                index,
                offset: r.offset,
                previous,
            });
            return;
        }
        if let Some(p) = r.partition
            && p < 0
        {
            self.error = Some(EncodeError::NegativePartition {
                index,
                partition: p,
            });
            return;
        }
        let Some(count) = self.count.checked_add(1) else {
            self.error = Some(EncodeError::BatchTooLarge {
                what: "record count",
            });
            return;
        };
        let first = *self.first_offset.get_or_insert(r.offset);
        let start = self.buf.len();

        let mut flags = r.timestamp_type.bits() << TS_SHIFT;
        if r.key.is_some() {
            flags |= FLAG_KEY;
        }
        if r.value.is_some() {
            flags |= FLAG_VALUE;
        }
        if r.topic.is_some() {
            flags |= FLAG_TOPIC;
        }
        if r.partition.is_some() {
            flags |= FLAG_PARTITION;
        }
        let buf = &mut self.buf;
        buf.put_u8(flags);
        // Both non-negative and offset >= first, so the difference cannot overflow.
        put_uvarint(buf, (r.offset - first) as u64);
        put_uvarint(buf, zigzag(r.timestamp));
        if let Some(k) = r.key {
            put_bytes(buf, k);
        }
        if let Some(v) = r.value {
            put_bytes(buf, v);
        }
        let headers = headers.into_iter();
        put_uvarint(buf, headers.len() as u64);
        for (k, v) in headers {
            put_bytes(buf, k.as_bytes());
            match v {
                Some(v) => {
                    buf.put_u8(1);
                    put_bytes(buf, v);
                }
                None => buf.put_u8(0),
            }
        }
        if let Some(t) = r.topic {
            put_bytes(buf, t.as_bytes());
        }
        if let Some(p) = r.partition {
            put_uvarint(buf, p as u64);
        }
        let size = buf.len() - start;
        if size > self.max_record_bytes {
            buf.truncate(start);
            if self.count == 0 {
                self.first_offset = None;
            }
            let reason = format!(
                "record of {size} bytes (encoded) is larger than the {} bytes the hub takes in one batch (hub limits.max_batch_bytes)",
                self.max_record_bytes
            );
            let stub = RecordRef {
                key: r.key.filter(|k| k.len() <= POISON_KEY_MAX_BYTES),
                value: None,
                headers: &[],
                ..*r
            };
            let max = std::mem::replace(&mut self.max_record_bytes, usize::MAX);
            self.push_with_headers(&stub, [(POISON_REASON_HEADER, Some(reason.as_bytes()))]);
            self.max_record_bytes = max;
            return;
        }
        self.count = count;
        self.last_offset = Some(r.offset);
    }

    /// Sets the source position after this batch. It may exceed the last record's offset + 1
    /// when records were filtered out or offsets have gaps; it defaults to last offset + 1.
    pub fn set_next_offset(&mut self, next: i64) {
        self.next_offset = Some(next);
    }

    /// Builds the batch, compressing with `codec` (zstd at `zstd_level`) where that makes it
    /// at least 1/32 smaller; the header names the codec the payload has. After a batch of at
    /// least [`JUDGE_COMPRESSION_BYTES`] that zstd did not shrink, the next
    /// [`SKIP_AFTER_NO_GAIN`] batches of the builder go uncompressed without trying.
    pub fn finish(mut self, seq: u64, codec: Codec, zstd_level: i32) -> Result<Batch, EncodeError> {
        self.finish_and_reset(seq, codec, zstd_level)
    }

    /// Builds the batch like [`finish`](Self::finish) and leaves the builder empty for the same
    /// partition, keeping its buffer capacity and zstd context. The builder is emptied on error
    /// too.
    pub fn finish_and_reset(
        &mut self,
        seq: u64,
        codec: Codec,
        zstd_level: i32,
    ) -> Result<Batch, EncodeError> {
        let result = self.build(seq, codec, zstd_level);
        self.clear();
        self.check_partition();
        result
    }

    fn build(&mut self, seq: u64, codec: Codec, zstd_level: i32) -> Result<Batch, EncodeError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let (first_offset, next_offset) = match (self.first_offset, self.last_offset) {
            (Some(first), Some(last)) => {
                let min_next = last.saturating_add(1);
                let next = self.next_offset.unwrap_or(min_next);
                if next < min_next {
                    return Err(EncodeError::NextOffsetTooSmall {
                        next_offset: next,
                        last_offset: last,
                    });
                }
                (first, next)
            }
            _ => match self.next_offset {
                Some(next) if next >= 0 => (next, next),
                other => {
                    return Err(EncodeError::EmptyBatchWithoutPosition { next_offset: other });
                }
            },
        };
        let uncompressed_len =
            u32::try_from(self.buf.len()).map_err(|_| EncodeError::BatchTooLarge {
                what: "encoded records",
            })?;
        let (codec, payload) = match codec {
            Codec::None => (Codec::None, self.buf.split().freeze()),
            Codec::Zstd if self.buf.is_empty() => (Codec::None, self.buf.split().freeze()),
            Codec::Zstd if self.skip_compression > 0 => {
                self.skip_compression -= 1;
                (Codec::None, self.buf.split().freeze())
            }
            Codec::Zstd => {
                let compress_err = |e: std::io::Error| EncodeError::Compress {
                    level: zstd_level,
                    message: e.to_string(),
                };
                let compressor = match &mut self.compressor {
                    Some((level, c)) => {
                        if *level != zstd_level {
                            c.set_compression_level(zstd_level).map_err(compress_err)?;
                            *level = zstd_level;
                        }
                        c
                    }
                    slot @ None => {
                        let c = zstd::bulk::Compressor::new(zstd_level).map_err(compress_err)?;
                        &mut slot.insert((zstd_level, c)).1
                    }
                };
                let compressed = compressor.compress(&self.buf).map_err(compress_err)?;
                if gains(compressed.len(), self.buf.len()) {
                    (Codec::Zstd, Bytes::from(compressed))
                } else {
                    // Already compressed or encrypted data: the raw bytes are as small, and
                    // the next batches of this partition likely alike, so they skip the work.
                    // A small batch says little about the data (zstd's frame costs more than
                    // it saves on a few bytes): it goes raw and leaves the next ones to try.
                    if self.buf.len() >= JUDGE_COMPRESSION_BYTES {
                        self.skip_compression = SKIP_AFTER_NO_GAIN;
                    }
                    (Codec::None, self.buf.split().freeze())
                }
            }
        };
        Ok(Batch {
            header: BatchHeader {
                seq,
                tp: self.tp.clone(),
                partition_count: self.partition_count,
                first_offset,
                next_offset,
                record_count: self.count,
                codec,
                uncompressed_len,
            },
            payload,
        })
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_uvarint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    put_uvarint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

impl Batch {
    /// Decompresses the payload once (refusing an `uncompressed_len` above `max_uncompressed`)
    /// and validates every record: count, offsets within `[first_offset, next_offset)` and
    /// non-decreasing, field encodings, no trailing bytes.
    pub fn decode_records(&self, max_uncompressed: u32) -> Result<DecodedRecords, DecodeError> {
        let h = &self.header;
        if h.uncompressed_len > max_uncompressed {
            return Err(DecodeError::UncompressedTooLarge {
                uncompressed_len: h.uncompressed_len,
                max: max_uncompressed,
            });
        }
        let data = match h.codec {
            Codec::None => self.payload.clone(),
            Codec::Zstd => {
                let v = zstd::bulk::decompress(&self.payload, h.uncompressed_len as usize)
                    .map_err(|e| DecodeError::Decompress {
                        message: e.to_string(),
                    })?;
                Bytes::from(v)
            }
        };
        if data.len() != h.uncompressed_len as usize {
            return Err(DecodeError::UncompressedLenMismatch {
                declared: h.uncompressed_len,
                actual: data.len(),
            });
        }
        let records = DecodedRecords {
            data,
            first_offset: h.first_offset,
            next_offset: h.next_offset,
            count: h.record_count,
        };
        let rest = {
            let mut it = records.iter();
            for r in &mut it {
                r?;
            }
            it.data.len() - it.pos
        };
        if rest != 0 {
            return Err(DecodeError::RecordTrailingBytes {
                count: rest,
                records: h.record_count,
            });
        }
        Ok(records)
    }
}

/// The validated, decompressed records of one batch.
#[derive(Clone, Debug)]
pub struct DecodedRecords {
    data: Bytes,
    first_offset: i64,
    next_offset: i64,
    count: u32,
}

impl DecodedRecords {
    /// Iterates the records in order, borrowing from the decompressed buffer.
    pub fn iter(&self) -> RecordIter<'_> {
        RecordIter {
            data: &self.data,
            pos: 0,
            index: 0,
            count: self.count,
            first_offset: self.first_offset,
            next_offset: self.next_offset,
            previous: None,
            failed: false,
        }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl<'a> IntoIterator for &'a DecodedRecords {
    type Item = Result<RecordView<'a>, DecodeError>;
    type IntoIter = RecordIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// A decoded record borrowing from its [`DecodedRecords`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Source offset.
    pub offset: i64,
    /// Timestamp in epoch milliseconds.
    pub timestamp: i64,
    /// Kind of timestamp.
    pub timestamp_type: TimestampType,
    /// Key (`None` = null).
    pub key: Option<&'a [u8]>,
    /// Value (`None` = null).
    pub value: Option<&'a [u8]>,
    /// Headers in order, decoded lazily.
    pub headers: Headers<'a>,
    /// Destination topic override.
    pub topic: Option<&'a str>,
    /// Destination partition override.
    pub partition: Option<i32>,
}

/// A record's headers, decoded lazily from already-validated bytes (no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Headers<'a> {
    raw: &'a [u8],
    count: u32,
}

impl<'a> RecordView<'a> {
    /// Why the agent sent this record as a poison stub (see [`POISON_REASON_HEADER`]), if it
    /// is one: no value and that header alone.
    pub fn poison_reason(&self) -> Option<&'a [u8]> {
        if self.value.is_some() || self.headers.len() != 1 {
            return None;
        }
        match self.headers.iter().next() {
            Some((name, Some(reason))) if name == POISON_REASON_HEADER => Some(reason),
            _ => None,
        }
    }
}

impl<'a> Headers<'a> {
    /// Number of headers.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when there is no header.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Iterates `(key, value)` pairs in order.
    pub fn iter(&self) -> HeadersIter<'a> {
        HeadersIter {
            cur: Cursor {
                data: self.raw,
                pos: 0,
                index: 0,
            },
            left: self.count,
        }
    }

    /// Collects the headers into a Vec.
    pub fn to_vec(&self) -> Vec<(&'a str, Option<&'a [u8]>)> {
        self.iter().collect()
    }
}

impl fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for Headers<'a> {
    type Item = (&'a str, Option<&'a [u8]>);
    type IntoIter = HeadersIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a> IntoIterator for &Headers<'a> {
    type Item = (&'a str, Option<&'a [u8]>);
    type IntoIter = HeadersIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator over a record's headers.
#[derive(Clone, Debug)]
pub struct HeadersIter<'a> {
    cur: Cursor<'a>,
    left: u32,
}

impl<'a> Iterator for HeadersIter<'a> {
    type Item = (&'a str, Option<&'a [u8]>);
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        // The bytes were validated when the batch was decoded; stop quietly if not.
        match self.cur.header() {
            Ok(h) => {
                self.left -= 1;
                Some(h)
            }
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for HeadersIter<'_> {}

/// Iterator over the records of a [`DecodedRecords`]; stops after the first error.
#[derive(Clone, Debug)]
pub struct RecordIter<'a> {
    data: &'a [u8],
    pos: usize,
    index: u32,
    count: u32,
    first_offset: i64,
    next_offset: i64,
    previous: Option<i64>,
    failed: bool,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordView<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.index >= self.count {
            return None;
        }
        let mut cur = Cursor {
            data: self.data,
            pos: self.pos,
            index: self.index,
        };
        match self.parse(&mut cur) {
            Ok(r) => {
                self.pos = cur.pos;
                self.index += 1;
                self.previous = Some(r.offset);
                Some(Ok(r))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.failed {
            (0, Some(0))
        } else {
            (0, Some((self.count - self.index) as usize))
        }
    }
}

impl<'a> RecordIter<'a> {
    fn parse(&self, cur: &mut Cursor<'a>) -> Result<RecordView<'a>, DecodeError> {
        let index = self.index;
        if cur.pos >= cur.data.len() {
            return Err(DecodeError::RecordCountMismatch {
                declared: self.count,
                actual: index,
            });
        }
        let flags = cur.u8("flags")?;
        let ts_type = TimestampType::from_bits((flags & TS_MASK) >> TS_SHIFT);
        let Some(timestamp_type) = ts_type.filter(|_| flags & FLAG_RESERVED == 0) else {
            return Err(DecodeError::InvalidRecordFlags { index, flags });
        };
        let delta = cur.uvarint("offset_delta")?;
        let offset = i64::try_from(delta)
            .ok()
            .and_then(|d| self.first_offset.checked_add(d))
            .unwrap_or(i64::MAX);
        if offset >= self.next_offset {
            return Err(DecodeError::RecordOffsetOutOfRange {
                index,
                offset,
                first_offset: self.first_offset,
                next_offset: self.next_offset,
            });
        }
        if let Some(previous) = self.previous
            && offset < previous
        {
            return Err(DecodeError::RecordOffsetDecreasing {
                index,
                offset,
                previous,
            });
        }
        let timestamp = unzigzag(cur.uvarint("timestamp")?);
        let key = if flags & FLAG_KEY != 0 {
            Some(cur.bytes("key")?)
        } else {
            None
        };
        let value = if flags & FLAG_VALUE != 0 {
            Some(cur.bytes("value")?)
        } else {
            None
        };
        let header_count = cur.uvarint("header_count")?;
        let header_count = u32::try_from(header_count).map_err(|_| DecodeError::BadVarint {
            index,
            field: "header_count",
        })?;
        let headers_start = cur.pos;
        for _ in 0..header_count {
            cur.header()?;
        }
        let headers = Headers {
            raw: &cur.data[headers_start..cur.pos],
            count: header_count,
        };
        let topic = if flags & FLAG_TOPIC != 0 {
            Some(cur.str("topic")?)
        } else {
            None
        };
        let partition = if flags & FLAG_PARTITION != 0 {
            let v = cur.uvarint("partition")?;
            Some(
                i32::try_from(v)
                    .map_err(|_| DecodeError::PartitionOverrideOutOfRange { index, value: v })?,
            )
        } else {
            None
        };
        Ok(RecordView {
            offset,
            timestamp,
            timestamp_type,
            key,
            value,
            headers,
            topic,
            partition,
        })
    }
}

#[derive(Clone, Debug)]
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    index: u32,
}

impl<'a> Cursor<'a> {
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let b = *self
            .data
            .get(self.pos)
            .ok_or(DecodeError::RecordTruncated {
                index: self.index,
                field,
            })?;
        self.pos += 1;
        Ok(b)
    }

    fn uvarint(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8(field)?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                break;
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::BadVarint {
            index: self.index,
            field,
        })
    }

    fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.uvarint(field)?;
        let truncated = DecodeError::RecordTruncated {
            index: self.index,
            field,
        };
        let len = usize::try_from(len).map_err(|_| truncated.clone())?;
        let end = self.pos.checked_add(len).ok_or(truncated.clone())?;
        let b = self.data.get(self.pos..end).ok_or(truncated)?;
        self.pos = end;
        Ok(b)
    }

    fn str(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let b = self.bytes(field)?;
        std::str::from_utf8(b).map_err(|_| DecodeError::RecordInvalidUtf8 {
            index: self.index,
            field,
        })
    }

    fn header(&mut self) -> Result<(&'a str, Option<&'a [u8]>), DecodeError> {
        let k = self.str("header_key")?;
        let v = match self.u8("header_value_present")? {
            0 => None,
            1 => Some(self.bytes("header_value")?),
            value => {
                return Err(DecodeError::InvalidHeaderFlag {
                    index: self.index,
                    value,
                });
            }
        };
        Ok((k, v))
    }
}
