//! The edge Kafka side: topic discovery and the consumer that reads replicated partitions.

use std::collections::BTreeMap;
use std::time::Duration;

use er_protocol::TopicPartition;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;

use crate::config::Validated;

/// Partition counts of the replicated topics, by topic name.
pub type TopicSet = BTreeMap<String, i32>;

fn base_config(cfg: &Validated) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.raw.kafka.bootstrap_servers);
    for (k, v) in &cfg.raw.kafka.properties {
        c.set(k, v);
    }
    c
}

/// Lists the local topics the config selects (blocking: run off the executor).
pub struct Discovery {
    client: BaseConsumer,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").finish_non_exhaustive()
    }
}

impl Discovery {
    /// Creates the metadata client (no broker round trip yet).
    pub fn new(cfg: &Validated) -> Result<Self, KafkaError> {
        Ok(Self {
            client: base_config(cfg).create()?,
        })
    }

    /// Fetches metadata and returns the selected topics with their partition counts.
    pub fn topics(&self, cfg: &Validated, timeout: Duration) -> Result<TopicSet, KafkaError> {
        let md = self.client.fetch_metadata(None, timeout)?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .filter(|t| cfg.wants_topic(t.name()))
            .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
            .collect())
    }
}

/// Creates the consumer of one session. It never commits: the hub keeps the positions.
pub fn consumer(cfg: &Validated) -> Result<StreamConsumer, KafkaError> {
    // No group.id: partitions are assigned explicitly and nothing is committed, and a group
    // would make fetching wait for a group coordinator (slow on a freshly started broker).
    base_config(cfg)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", &cfg.raw.kafka.isolation_level)
        // Bounds the records prefetched in memory (with the in-flight limits, the agent's memory).
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.max.bytes", "16777216")
        .set("enable.partition.eof", "false")
        .create()
}

/// All partitions of a topic set.
pub fn partitions(topics: &TopicSet) -> impl Iterator<Item = (TopicPartition, i32)> + '_ {
    topics
        .iter()
        .flat_map(|(t, n)| (0..*n).map(move |p| (TopicPartition::new(t.clone(), p), *n)))
}
