//! MirrorMaker 2's internal record formats (heartbeats, checkpoints, offset syncs), byte-exact.
//!
//! Kafka Struct serialization: fields in declared order, INT16/32/64 big-endian, STRING = int16
//! length + UTF-8. Versioned values start with an INT16 version, which must be 0.

use crate::frame::TopicPartition;

/// Why an MM2 record could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mm2Error {
    /// The input ended inside a field.
    #[error("{record} {part}: input ends inside field `{field}`")]
    Truncated {
        /// Record kind.
        record: &'static str,
        /// "key" or "value".
        part: &'static str,
        /// Field being read.
        field: &'static str,
    },
    /// Bytes were left after the last field.
    #[error("{record} {part}: {count} trailing bytes after the last field")]
    TrailingBytes {
        /// Record kind.
        record: &'static str,
        /// "key" or "value".
        part: &'static str,
        /// Unread bytes.
        count: usize,
    },
    /// The value's version is not 0.
    #[error("{record} value: unsupported version {version}, only 0 is known")]
    UnsupportedVersion {
        /// Record kind.
        record: &'static str,
        /// Version read.
        version: i16,
    },
    /// A STRING field had a negative length (Kafka's null, not allowed here).
    #[error("{record} {part}: field `{field}` has negative length {len}")]
    NegativeStringLength {
        /// Record kind.
        record: &'static str,
        /// "key" or "value".
        part: &'static str,
        /// Field.
        field: &'static str,
        /// Length read.
        len: i16,
    },
    /// A STRING field was not valid UTF-8.
    #[error("{record} {part}: field `{field}` is not valid UTF-8")]
    InvalidUtf8 {
        /// Record kind.
        record: &'static str,
        /// "key" or "value".
        part: &'static str,
        /// Field.
        field: &'static str,
    },
    /// A string is too long for Kafka's int16 STRING length.
    #[error("{record}: field `{field}` is {len} bytes, more than the 32767 a STRING allows")]
    StringTooLong {
        /// Record kind.
        record: &'static str,
        /// Field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
}

/// MM2 heartbeat, emitted at the source into `heartbeats` (key and value as in MM2's Heartbeat).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// Source cluster alias (the site).
    pub source_cluster_alias: String,
    /// Target cluster alias.
    pub target_cluster_alias: String,
    /// Epoch milliseconds.
    pub timestamp: i64,
}

/// MM2 checkpoint, written to `<site>.checkpoints.internal` on the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Consumer group id.
    pub consumer_group_id: String,
    /// Target-side topic partition.
    pub topic_partition: TopicPartition,
    /// Committed offset on the source.
    pub upstream_offset: i64,
    /// Translated offset on the target.
    pub downstream_offset: i64,
    /// Commit metadata ("" for none).
    pub metadata: String,
}

/// MM2 offset sync, written to `mm2-offset-syncs.<site>.internal`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetSync {
    /// Source-side topic partition.
    pub topic_partition: TopicPartition,
    /// Source offset.
    pub upstream_offset: i64,
    /// Target offset of the same record.
    pub downstream_offset: i64,
}

struct Writer {
    out: Vec<u8>,
    record: &'static str,
}

impl Writer {
    fn new(record: &'static str) -> Self {
        Self {
            out: Vec::with_capacity(32),
            record,
        }
    }
    fn string(&mut self, field: &'static str, s: &str) -> Result<(), Mm2Error> {
        let len = i16::try_from(s.len()).map_err(|_| Mm2Error::StringTooLong {
            record: self.record,
            field,
            len: s.len(),
        })?;
        self.out.extend_from_slice(&len.to_be_bytes());
        self.out.extend_from_slice(s.as_bytes());
        Ok(())
    }
    fn i16(&mut self, v: i16) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    record: &'static str,
    part: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], record: &'static str, part: &'static str) -> Self {
        Self { buf, record, part }
    }
    fn take<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Mm2Error> {
        let Some((head, tail)) = self.buf.split_first_chunk::<N>() else {
            return Err(Mm2Error::Truncated {
                record: self.record,
                part: self.part,
                field,
            });
        };
        self.buf = tail;
        Ok(*head)
    }
    fn i16(&mut self, field: &'static str) -> Result<i16, Mm2Error> {
        self.take(field).map(i16::from_be_bytes)
    }
    fn i32(&mut self, field: &'static str) -> Result<i32, Mm2Error> {
        self.take(field).map(i32::from_be_bytes)
    }
    fn i64(&mut self, field: &'static str) -> Result<i64, Mm2Error> {
        self.take(field).map(i64::from_be_bytes)
    }
    fn string(&mut self, field: &'static str) -> Result<String, Mm2Error> {
        let len = self.i16(field)?;
        let len = usize::try_from(len).map_err(|_| Mm2Error::NegativeStringLength {
            record: self.record,
            part: self.part,
            field,
            len,
        })?;
        if self.buf.len() < len {
            return Err(Mm2Error::Truncated {
                record: self.record,
                part: self.part,
                field,
            });
        }
        let (s, rest) = self.buf.split_at(len);
        self.buf = rest;
        std::str::from_utf8(s)
            .map(str::to_owned)
            .map_err(|_| Mm2Error::InvalidUtf8 {
                record: self.record,
                part: self.part,
                field,
            })
    }
    fn version(&mut self) -> Result<(), Mm2Error> {
        match self.i16("version")? {
            0 => Ok(()),
            version => Err(Mm2Error::UnsupportedVersion {
                record: self.record,
                version,
            }),
        }
    }
    fn finish(self) -> Result<(), Mm2Error> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Mm2Error::TrailingBytes {
                record: self.record,
                part: self.part,
                count: self.buf.len(),
            })
        }
    }
}

impl Heartbeat {
    /// Key: sourceClusterAlias STRING, targetClusterAlias STRING.
    pub fn encode_key(&self) -> Result<Vec<u8>, Mm2Error> {
        let mut w = Writer::new("Heartbeat");
        w.string("sourceClusterAlias", &self.source_cluster_alias)?;
        w.string("targetClusterAlias", &self.target_cluster_alias)?;
        Ok(w.out)
    }

    /// Value: version INT16 = 0, timestamp INT64.
    pub fn encode_value(&self) -> Vec<u8> {
        let mut w = Writer::new("Heartbeat");
        w.i16(0);
        w.i64(self.timestamp);
        w.out
    }

    /// Decodes a heartbeat record's key and value.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<Self, Mm2Error> {
        let mut k = Reader::new(key, "Heartbeat", "key");
        let source_cluster_alias = k.string("sourceClusterAlias")?;
        let target_cluster_alias = k.string("targetClusterAlias")?;
        k.finish()?;
        let mut v = Reader::new(value, "Heartbeat", "value");
        v.version()?;
        let timestamp = v.i64("timestamp")?;
        v.finish()?;
        Ok(Self {
            source_cluster_alias,
            target_cluster_alias,
            timestamp,
        })
    }
}

impl Checkpoint {
    /// Key: group STRING, topic STRING, partition INT32.
    pub fn encode_key(&self) -> Result<Vec<u8>, Mm2Error> {
        let mut w = Writer::new("Checkpoint");
        w.string("group", &self.consumer_group_id)?;
        w.string("topic", &self.topic_partition.topic)?;
        w.i32(self.topic_partition.partition);
        Ok(w.out)
    }

    /// Value: version INT16 = 0, upstreamOffset INT64, offset INT64, metadata STRING.
    pub fn encode_value(&self) -> Result<Vec<u8>, Mm2Error> {
        let mut w = Writer::new("Checkpoint");
        w.i16(0);
        w.i64(self.upstream_offset);
        w.i64(self.downstream_offset);
        w.string("metadata", &self.metadata)?;
        Ok(w.out)
    }

    /// Decodes a checkpoint record's key and value.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<Self, Mm2Error> {
        let mut k = Reader::new(key, "Checkpoint", "key");
        let consumer_group_id = k.string("group")?;
        let topic = k.string("topic")?;
        let partition = k.i32("partition")?;
        k.finish()?;
        let mut v = Reader::new(value, "Checkpoint", "value");
        v.version()?;
        let upstream_offset = v.i64("upstreamOffset")?;
        let downstream_offset = v.i64("offset")?;
        let metadata = v.string("metadata")?;
        v.finish()?;
        Ok(Self {
            consumer_group_id,
            topic_partition: TopicPartition { topic, partition },
            upstream_offset,
            downstream_offset,
            metadata,
        })
    }
}

impl OffsetSync {
    /// Key: topic STRING, partition INT32.
    pub fn encode_key(&self) -> Result<Vec<u8>, Mm2Error> {
        let mut w = Writer::new("OffsetSync");
        w.string("topic", &self.topic_partition.topic)?;
        w.i32(self.topic_partition.partition);
        Ok(w.out)
    }

    /// Value: upstreamOffset INT64, offset INT64 (no version field).
    pub fn encode_value(&self) -> Vec<u8> {
        let mut w = Writer::new("OffsetSync");
        w.i64(self.upstream_offset);
        w.i64(self.downstream_offset);
        w.out
    }

    /// Decodes an offset-sync record's key and value.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<Self, Mm2Error> {
        let mut k = Reader::new(key, "OffsetSync", "key");
        let topic = k.string("topic")?;
        let partition = k.i32("partition")?;
        k.finish()?;
        let mut v = Reader::new(value, "OffsetSync", "value");
        let upstream_offset = v.i64("upstreamOffset")?;
        let downstream_offset = v.i64("offset")?;
        v.finish()?;
        Ok(Self {
            topic_partition: TopicPartition { topic, partition },
            upstream_offset,
            downstream_offset,
        })
    }
}
