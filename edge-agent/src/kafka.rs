//! The edge Kafka client: client settings, the session consumers (which never commit: the hub
//! keeps the positions) and the conversion of Kafka messages into batch records.

use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;

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
        // One fetch answer is decompressed whole before the queue limit above is looked at, so
        // an answer as large as the read-ahead overshoots it by the edge's compression ratio
        // (a 55 MiB allocator arena in the 1k bench, zstd JSON). A quarter of it (at least
        // librdkafka's 1 MiB floor, `message.max.bytes`) kept the copy rate and took ~8 MiB off
        // the agent's peak; an eighth took 24 MiB off but a fifth of the rate (BENCHMARKS.md).
        .set(
            "fetch.max.bytes",
            (prefetch_kbytes * 1024 / 4).max(1 << 20).to_string(),
        )
        .set("enable.partition.eof", "false")
        .create()
}

pub use er_kafka_admin::message::{push_message, timestamp_of};
