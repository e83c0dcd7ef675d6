//! Error types of the wire codec, the record encoding and the connection state machines.

use crate::frame::TopicPartition;

/// Why bytes received from the peer could not be turned into frames or records.
///
/// Every variant is fatal for the stream it came from: the driver should close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The 4-byte length prefix was 0: a frame needs at least its type byte.
    #[error("frame length prefix is 0: a frame needs at least its type byte")]
    EmptyFrame,
    /// The length prefix announced more bytes than the decoder's limit.
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced length (type byte + body).
        len: u32,
        /// The decoder's `max_frame_bytes`.
        max: u32,
    },
    /// The frame type byte names no known frame.
    #[error("unknown frame type {frame_type:#04x}")]
    UnknownFrameType {
        /// The type byte received.
        frame_type: u8,
    },
    /// The frame body ended before a field was complete.
    #[error("{frame} frame truncated: body ends inside field `{field}`")]
    Truncated {
        /// Frame kind.
        frame: &'static str,
        /// Field that could not be read.
        field: &'static str,
    },
    /// Bytes were left after the last field of a frame.
    #[error("{frame} frame has {count} trailing bytes after its last field")]
    TrailingBytes {
        /// Frame kind.
        frame: &'static str,
        /// Number of unread bytes.
        count: usize,
    },
    /// A count or string length was above the protocol's cap for that field.
    #[error("{frame} frame: field `{field}` is {len}, more than the limit of {max}")]
    OverLimit {
        /// Frame kind.
        frame: &'static str,
        /// Offending field (`addresses.count`, `addresses`, `reason`, `agent_version`, ...).
        field: &'static str,
        /// Count or length in bytes received.
        len: usize,
        /// The protocol's cap.
        max: usize,
    },
    /// A string field was not valid UTF-8.
    #[error("{frame} frame: field `{field}` is not valid UTF-8")]
    InvalidUtf8 {
        /// Frame kind.
        frame: &'static str,
        /// Offending field.
        field: &'static str,
    },
    /// A field that must not be negative was.
    #[error("{frame} frame: field `{field}` is negative ({value})")]
    Negative {
        /// Frame kind.
        frame: &'static str,
        /// Offending field.
        field: &'static str,
        /// Value received.
        value: i64,
    },
    /// A field's value breaks the protocol's rules for it.
    #[error("{frame} frame: field `{field}` {reason}")]
    InvalidField {
        /// Frame kind.
        frame: &'static str,
        /// Offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A batch header's next_offset was below its first_offset.
    #[error("{frame} frame: next_offset {next_offset} is below first_offset {first_offset}")]
    OffsetsReversed {
        /// Frame kind.
        frame: &'static str,
        /// Received first_offset.
        first_offset: i64,
        /// Received next_offset.
        next_offset: i64,
    },
    /// A batch header's partition was not below its partition_count.
    #[error("Batch frame: partition {partition} is not below partition_count {partition_count}")]
    PartitionOutOfRange {
        /// Received partition.
        partition: i32,
        /// Received partition_count.
        partition_count: i32,
    },
    /// A batch header named a codec this version does not know.
    #[error("Batch frame: unknown codec {codec}")]
    UnknownCodec {
        /// The codec byte received.
        codec: u8,
    },
    /// A batch declared more uncompressed bytes than the receiver allows.
    #[error("batch uncompressed_len {uncompressed_len} exceeds the limit of {max} bytes")]
    UncompressedTooLarge {
        /// Declared uncompressed length.
        uncompressed_len: u32,
        /// Receiver's limit.
        max: u32,
    },
    /// The decompressed (or raw) payload length differs from the declared uncompressed_len.
    #[error("batch payload decodes to {actual} bytes but uncompressed_len says {declared}")]
    UncompressedLenMismatch {
        /// Declared uncompressed length.
        declared: u32,
        /// Actual length.
        actual: usize,
    },
    /// The zstd payload could not be decompressed.
    #[error("batch payload is not a valid zstd frame: {message}")]
    Decompress {
        /// zstd's error text.
        message: String,
    },
    /// A record ended before one of its fields was complete.
    #[error("record {index}: payload ends inside field `{field}`")]
    RecordTruncated {
        /// Index of the record within the batch.
        index: u32,
        /// Field that could not be read.
        field: &'static str,
    },
    /// A varint was longer than 10 bytes or overflowed its type.
    #[error("record {index}: field `{field}` is a malformed or overflowing varint")]
    BadVarint {
        /// Index of the record within the batch.
        index: u32,
        /// Offending field.
        field: &'static str,
    },
    /// A record's flags byte had reserved bits set or an invalid timestamp type.
    #[error("record {index}: invalid flags byte {flags:#04x}")]
    InvalidRecordFlags {
        /// Index of the record within the batch.
        index: u32,
        /// The flags byte received.
        flags: u8,
    },
    /// A header's value-present byte was neither 0 nor 1.
    #[error("record {index}: header value-present byte is {value}, expected 0 or 1")]
    InvalidHeaderFlag {
        /// Index of the record within the batch.
        index: u32,
        /// The byte received.
        value: u8,
    },
    /// A record string field (header key, topic override) was not valid UTF-8.
    #[error("record {index}: field `{field}` is not valid UTF-8")]
    RecordInvalidUtf8 {
        /// Index of the record within the batch.
        index: u32,
        /// Offending field.
        field: &'static str,
    },
    /// A record's partition override does not fit a non-negative i32.
    #[error("record {index}: partition override {value} is out of range 0..=2147483647")]
    PartitionOverrideOutOfRange {
        /// Index of the record within the batch.
        index: u32,
        /// Value received.
        value: u64,
    },
    /// A record's offset fell outside the batch's [first_offset, next_offset).
    #[error(
        "record {index}: offset {offset} is outside the batch range [{first_offset}, {next_offset})"
    )]
    RecordOffsetOutOfRange {
        /// Index of the record within the batch.
        index: u32,
        /// Decoded offset (saturated at i64::MAX).
        offset: i64,
        /// Batch first_offset.
        first_offset: i64,
        /// Batch next_offset.
        next_offset: i64,
    },
    /// A record's offset was below the previous record's.
    #[error("record {index}: offset {offset} is below the previous record's offset {previous}")]
    RecordOffsetDecreasing {
        /// Index of the record within the batch.
        index: u32,
        /// Decoded offset.
        offset: i64,
        /// Previous record's offset.
        previous: i64,
    },
    /// The payload held fewer records than the header's record_count.
    #[error("batch declares {declared} records but the payload holds only {actual}")]
    RecordCountMismatch {
        /// Header's record_count.
        declared: u32,
        /// Records found.
        actual: u32,
    },
    /// Bytes were left after the last declared record.
    #[error("batch payload has {count} trailing bytes after its {records} declared records")]
    RecordTrailingBytes {
        /// Number of unread bytes.
        count: usize,
        /// Header's record_count.
        records: u32,
    },
}

/// Why a frame or batch could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string is longer than its u16 length prefix allows.
    #[error(
        "{frame} frame: field `{field}` is {len} bytes, more than the 65535 a u16 length allows"
    )]
    StringTooLong {
        /// Frame kind.
        frame: &'static str,
        /// Offending field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A list or string is longer than the protocol's cap for that field.
    #[error("{frame} frame: field `{field}` is {len}, more than the limit of {max}")]
    OverLimit {
        /// Frame kind.
        frame: &'static str,
        /// Offending field (`addresses` for their count, `addresses[]` for one, `reason`).
        field: &'static str,
        /// Its count or length in bytes.
        len: usize,
        /// The protocol's cap.
        max: usize,
    },
    /// A field's value breaks the protocol's rules for it.
    #[error("{frame} frame: field `{field}` {reason}")]
    InvalidField {
        /// Frame kind.
        frame: &'static str,
        /// Offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The encoded frame exceeds the given limit.
    #[error("{frame} frame encodes to {len} bytes, more than the limit of {max}")]
    FrameTooLarge {
        /// Frame kind.
        frame: &'static str,
        /// Encoded length (type byte + body).
        len: usize,
        /// The limit.
        max: u32,
    },
    /// A pushed record had a negative offset.
    #[error("record {index}: offset {offset} is negative")]
    NegativeOffset {
        /// Index of the record within the batch.
        index: u32,
        /// The offset pushed.
        offset: i64,
    },
    /// A pushed record's offset was below the previous record's.
    #[error("record {index}: offset {offset} is below the previous record's offset {previous}")]
    OffsetDecreasing {
        /// Index of the record within the batch.
        index: u32,
        /// The offset pushed.
        offset: i64,
        /// The previous record's offset.
        previous: i64,
    },
    /// A pushed record had a negative partition override.
    #[error("record {index}: partition override {partition} is negative")]
    NegativePartition {
        /// Index of the record within the batch.
        index: u32,
        /// The partition pushed.
        partition: i32,
    },
    /// A batch would hold more than u32::MAX records or bytes.
    #[error("batch too large: {what} exceeds u32::MAX")]
    BatchTooLarge {
        /// Which count overflowed.
        what: &'static str,
    },
    /// `set_next_offset` was given a position before the end of the pushed records.
    #[error("next_offset {next_offset} is below last record offset {last_offset} + 1")]
    NextOffsetTooSmall {
        /// Value given to set_next_offset.
        next_offset: i64,
        /// Offset of the last pushed record.
        last_offset: i64,
    },
    /// An empty batch needs `set_next_offset` with a non-negative position.
    #[error("empty batch needs set_next_offset with a non-negative position, got {next_offset:?}")]
    EmptyBatchWithoutPosition {
        /// Value given to set_next_offset, if any.
        next_offset: Option<i64>,
    },
    /// A builder was created for an invalid partition.
    #[error(
        "partition {partition} of {partition_count} is invalid: need 0 <= partition < partition_count"
    )]
    InvalidPartition {
        /// Partition given.
        partition: i32,
        /// Partition count given.
        partition_count: i32,
    },
    /// zstd refused to compress.
    #[error("zstd compression (level {level}) failed: {message}")]
    Compress {
        /// Level asked for.
        level: i32,
        /// zstd's error text.
        message: String,
    },
}

/// A violation of the connection protocol, by the peer or by the local caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A frame arrived that the connection's state does not allow.
    #[error("unexpected {frame} frame while {state}")]
    UnexpectedFrame {
        /// Frame kind received.
        frame: &'static str,
        /// State of the connection.
        state: &'static str,
    },
    /// A frame arrived on the wrong channel.
    #[error("{frame} frame arrived on the {got} channel, expected the {expected} channel")]
    WrongChannel {
        /// Frame kind received.
        frame: &'static str,
        /// Channel it should have used.
        expected: String,
        /// Channel it used.
        got: String,
    },
    /// A local call was made in a state that does not allow it.
    #[error("{call} called while {state}")]
    InvalidCall {
        /// Method called.
        call: &'static str,
        /// State of the connection.
        state: &'static str,
    },
    /// No protocol version is spoken by both sides.
    #[error(
        "no common protocol version: peer speaks {peer_min}..={peer_max}, we speak {local_min}..={local_max}"
    )]
    VersionMismatch {
        /// Peer's lowest version.
        peer_min: u16,
        /// Peer's highest version.
        peer_max: u16,
        /// Our lowest version.
        local_min: u16,
        /// Our highest version.
        local_max: u16,
    },
    /// An ack did not match the oldest unacknowledged batch of its partition.
    #[error(
        "ack for {tp} seq {seq} next_offset {next_offset} does not match the oldest unacked batch {expected:?} (seq, next_offset)"
    )]
    AckMismatch {
        /// Partition of the ack.
        tp: TopicPartition,
        /// Ack's seq.
        seq: u64,
        /// Ack's next_offset.
        next_offset: i64,
        /// Oldest unacked batch (seq, next_offset), if any.
        expected: Option<(u64, i64)>,
    },
    /// A batch's seq was not the next one for its partition.
    #[error("batch for {tp} has seq {seq}, expected {expected}")]
    OutOfOrderBatch {
        /// Batch partition.
        tp: TopicPartition,
        /// Batch seq.
        seq: u64,
        /// Expected seq (exact on the agent, a lower bound on the hub).
        expected: u64,
    },
    /// A batch's first_offset was before the partition's current position.
    #[error(
        "batch for {tp} starts at offset {first_offset}, before the partition's position {expected}"
    )]
    OffsetRegression {
        /// Batch partition.
        tp: TopicPartition,
        /// Batch first_offset.
        first_offset: i64,
        /// Position the partition is at.
        expected: i64,
    },
    /// A batch of a partition the hub stopped on this connection.
    #[error(
        "partition {tp} was stopped by the hub on this connection; its batches wait for the next one"
    )]
    PartitionStopped {
        /// The partition.
        tp: TopicPartition,
    },
    /// A batch's payload or uncompressed length exceeds the negotiated limit.
    #[error("batch for {tp}: {what} is {len} bytes, more than the limit of {max}")]
    BatchTooLarge {
        /// Batch partition.
        tp: TopicPartition,
        /// "payload" or "uncompressed_len".
        what: &'static str,
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A batch's header is inconsistent (e.g. next_offset below first_offset).
    #[error("batch for {tp} is invalid: {reason}")]
    InvalidBatch {
        /// Batch partition.
        tp: TopicPartition,
        /// What is wrong.
        reason: &'static str,
    },
    /// Sending the batch would exceed the in-flight budget (check `can_send` first).
    #[error(
        "batch of {bytes} bytes for {tp} exceeds the in-flight budget ({partition_inflight} in flight for the partition, {total_inflight} in total)"
    )]
    BudgetExceeded {
        /// Batch partition.
        tp: TopicPartition,
        /// Batch payload size.
        bytes: u64,
        /// Bytes in flight for the partition.
        partition_inflight: u64,
        /// Bytes in flight in total.
        total_inflight: u64,
    },
    /// A position in Welcome (or given to `welcome`) is invalid.
    #[error("position for {tp}: {reason}")]
    InvalidPosition {
        /// Partition of the position.
        tp: TopicPartition,
        /// What is wrong.
        reason: &'static str,
    },
    /// The Welcome's version was outside the range the agent offered.
    #[error("hub chose version {version}, outside the offered {min}..={max}")]
    WelcomeVersion {
        /// Version chosen by the hub.
        version: u16,
        /// Lowest offered.
        min: u16,
        /// Highest offered.
        max: u16,
    },
    /// A redirect (received, or given to `redirect`) breaks the protocol's rules for it.
    #[error("redirect: {field}: {reason}")]
    InvalidRedirect {
        /// The field at fault, e.g. `addresses[2]`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Topic metadata given to `send_topic_metadata` breaks the protocol's caps.
    #[error("topic metadata of {topic:?}: `{field}` {reason}")]
    InvalidTopicMetadata {
        /// The topic.
        topic: String,
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An ACL binding given to `send_topic_acls` breaks the protocol's caps.
    #[error("ACL binding on {topic:?}: `{field}` {reason}")]
    InvalidTopicAcl {
        /// The topic.
        topic: String,
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A downlink frame (or call) breaks the downlink rules (see [`crate::downlink`]).
    #[error("downlink {what}: {reason}")]
    Downlink {
        /// What was at fault, e.g. `batch of central.cmd/0`.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A Pong answered a Ping that was never sent.
    #[error("pong with nonce {nonce} answers no ping sent (last nonce sent: {last_sent:?})")]
    UnexpectedPong {
        /// Nonce received.
        nonce: u64,
        /// Last nonce sent, if any.
        last_sent: Option<u64>,
    },
    /// The connection is closed (error, timeout or rejection); nothing more can happen on it.
    #[error("connection is closed: {reason}")]
    Closed {
        /// Why it closed.
        reason: &'static str,
    },
}

impl ProtocolError {
    /// The error code to send the peer when this error ends the connection.
    pub fn code(&self) -> crate::frame::ErrorCode {
        use crate::frame::ErrorCode;
        match self {
            ProtocolError::VersionMismatch { .. } | ProtocolError::WelcomeVersion { .. } => {
                ErrorCode::VersionMismatch
            }
            ProtocolError::BatchTooLarge { .. } | ProtocolError::InvalidBatch { .. } => {
                ErrorCode::BadBatch
            }
            _ => ErrorCode::Protocol,
        }
    }
}
