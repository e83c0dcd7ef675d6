//! Kafka messages as batch records: what the agent reads at the edge and the hub reads for
//! downlinks go into an `er_protocol` batch the same way, borrowing the message's bytes.

use er_protocol::{BatchBuilder, RecordRef, TimestampType};
use rdkafka::message::{BorrowedMessage, Headers, Message};

/// Kafka's timestamp of a message, as the batch encoding spells it.
pub fn timestamp_of(m: &BorrowedMessage<'_>) -> (TimestampType, i64) {
    match m.timestamp() {
        rdkafka::Timestamp::NotAvailable => (TimestampType::NotAvailable, -1),
        rdkafka::Timestamp::CreateTime(t) => (TimestampType::CreateTime, t),
        rdkafka::Timestamp::LogAppendTime(t) => (TimestampType::LogAppendTime, t),
    }
}

/// Appends one Kafka message to a batch: offset, timestamp, key, value and headers.
pub fn push_message(builder: &mut BatchBuilder, m: &BorrowedMessage<'_>) {
    let (timestamp_type, timestamp) = timestamp_of(m);
    let rec = RecordRef {
        offset: m.offset(),
        timestamp,
        timestamp_type,
        key: m.key(),
        value: m.payload(),
        headers: &[],
        topic: None,
        partition: None,
    };
    match m.headers() {
        None => builder.push(&rec),
        Some(h) => builder.push_with_headers(
            &rec,
            (0..h.count()).map(|i| {
                let h = h.get(i);
                (h.key, h.value)
            }),
        ),
    }
}
