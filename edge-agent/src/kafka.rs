//! The edge Kafka client: client settings, the session consumers (which never commit: the hub
//! keeps the positions) and the conversion of Kafka messages into batch records.

use er_protocol::{BatchBuilder, RecordRef, TimestampType};
use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};

use crate::config::KafkaSettings;

/// A client configuration for the edge cluster: its bootstrap servers and the extra
/// properties of `[kafka.properties]`.
pub fn base_config(cfg: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap_servers);
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

/// The agent consumer's group id. librdkafka wants one even for a consumer with explicit
/// assignments; it is never used for commits or rebalancing, and never reported to the hub.
pub const AGENT_GROUP_ID: &str = "edge-replicator-agent";

/// Records prefetched by the consumers of one session, in KiB, shared by its priority lanes.
pub const PREFETCH_KBYTES: usize = 16 * 1024;

/// Creates a consumer of one session that prefetches at most `prefetch_kbytes` KiB (at least
/// 1024). It never commits: the hub keeps the positions.
pub fn consumer(cfg: &KafkaSettings, prefetch_kbytes: usize) -> Result<BaseConsumer, KafkaError> {
    let prefetch_kbytes = prefetch_kbytes.max(1024);
    base_config(cfg)
        .set("group.id", AGENT_GROUP_ID)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // An out-of-range position is reported rather than silently reset: it is how records
        // that edge retention deleted before they were replicated show up (see
        // `Reader::skip_retention_gaps`). New partitions start at `Offset::Beginning`.
        .set("auto.offset.reset", "error")
        .set("isolation.level", cfg.isolation_level.as_librdkafka())
        // Bounds the records prefetched in memory (with the in-flight limits, the agent's memory).
        .set("queued.max.messages.kbytes", prefetch_kbytes.to_string())
        .set("fetch.max.bytes", (prefetch_kbytes * 1024).to_string())
        .set("enable.partition.eof", "false")
        .create()
}

/// Kafka's timestamp of a message, as the batch encoding spells it.
pub fn timestamp_of(m: &rdkafka::message::BorrowedMessage<'_>) -> (TimestampType, i64) {
    match m.timestamp() {
        rdkafka::Timestamp::NotAvailable => (TimestampType::NotAvailable, -1),
        rdkafka::Timestamp::CreateTime(t) => (TimestampType::CreateTime, t),
        rdkafka::Timestamp::LogAppendTime(t) => (TimestampType::LogAppendTime, t),
    }
}

/// Appends one Kafka message to a batch, borrowing its bytes.
pub fn push_message(builder: &mut BatchBuilder, m: &rdkafka::message::BorrowedMessage<'_>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// librdkafka checks its settings when a client is created (no broker needed): every
    /// prefetch a priority lane can get must pass, the smallest included.
    #[test]
    fn consumers_accept_every_prefetch_a_lane_gets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.pem"), "").unwrap();
        let cfg = crate::config::parse(
            &dir.path().join("agent.toml"),
            "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n[hub]\naddress = \"h:1\"\n\
             ca_cert = \"x.pem\"\ncert = \"x.pem\"\nkey = \"x.pem\"\n",
        )
        .unwrap();
        for kbytes in [0, 1024, PREFETCH_KBYTES / 3, PREFETCH_KBYTES] {
            consumer(&cfg.kafka, kbytes).unwrap_or_else(|e| panic!("{kbytes} KiB: {e}"));
        }
    }
}
