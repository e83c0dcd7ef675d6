//! Central-cluster plumbing: client configs, topic creation, the per-site positions and offset index topics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use er_protocol::{Position, TopicPartition};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::ClusterConfig;
use crate::offsets::{self, OffsetIndex};

/// How long metadata and admin calls may take before the hub gives up on them.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Name of the compacted topic holding a site's committed source positions on a cluster.
/// It ends in `.internal`, so no replicator (ours or MM2) ever copies it.
pub fn positions_topic(site: &str) -> String {
    format!("er-positions.{site}.internal")
}

/// Name of the topic holding a site's offset index on a cluster (records in the format of
/// [`crate::offsets::encode`], written in the same transactions as the records they index).
/// One partition, `cleanup.policy=delete`; it ends in `.internal`, so it is never replicated.
pub fn offset_index_topic(site: &str) -> String {
    format!("er-offset-index.{site}.internal")
}

/// A failure talking to a central cluster.
#[derive(Debug, thiserror::Error)]
pub enum KafkaOpError {
    /// A Kafka client call failed.
    #[error("cluster {cluster:?}: {what}: {source}")]
    Kafka {
        /// Alias of the cluster.
        cluster: String,
        /// What the hub was doing.
        what: String,
        /// The client error (boxed: librdkafka errors are large).
        source: Box<KafkaError>,
    },
    /// A call did not finish in time.
    #[error("cluster {cluster:?}: {what}: timed out after {waited:?}")]
    Timeout {
        /// Alias of the cluster.
        cluster: String,
        /// What the hub was doing.
        what: String,
        /// How long it waited.
        waited: Duration,
    },
    /// The positions topic holds a record the hub cannot read.
    #[error("cluster {cluster:?}: positions topic {topic:?} offset {offset}: {message}")]
    BadPosition {
        /// Alias of the cluster.
        cluster: String,
        /// The positions topic.
        topic: String,
        /// Offset of the bad record.
        offset: i64,
        /// What is wrong.
        message: String,
    },
}

/// Base librdkafka settings for one cluster: bootstrap servers plus the user's properties.
pub fn client_config(cluster: &ClusterConfig) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &cluster.bootstrap_servers);
    for (k, v) in &cluster.properties {
        cfg.set(k, v);
    }
    // librdkafka's own debug contexts (e.g. `eos,msg,protocol`) for every client, for diagnosing
    // the Kafka side without editing the config; logged through tracing at debug level.
    if let Ok(contexts) = std::env::var("ER_RDKAFKA_DEBUG") {
        cfg.set("debug", contexts);
    }
    cfg
}

/// Creates topics on one cluster on demand and remembers what exists, shared by all sites.
pub struct TopicManager {
    cluster: ClusterConfig,
    admin: AdminClient<DefaultClientContext>,
    meta: BaseConsumer,
    known: Mutex<HashMap<String, i32>>,
}

impl std::fmt::Debug for TopicManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicManager")
            .field("cluster", &self.cluster.alias)
            .finish_non_exhaustive()
    }
}

impl TopicManager {
    /// Connects the admin and metadata clients (lazily; no broker round trip here).
    pub fn new(cluster: &ClusterConfig) -> Result<Arc<Self>, KafkaOpError> {
        let err = |what: &str| {
            let cluster = cluster.alias.clone();
            let what = what.to_owned();
            move |source| KafkaOpError::Kafka {
                cluster,
                what,
                source: Box::new(source),
            }
        };
        let admin = client_config(cluster)
            .create()
            .map_err(err("creating admin client"))?;
        let meta = client_config(cluster)
            .create()
            .map_err(err("creating metadata client"))?;
        Ok(Arc::new(Self {
            cluster: cluster.clone(),
            admin,
            meta,
            known: Mutex::new(HashMap::new()),
        }))
    }

    /// Alias of the cluster this manager serves.
    pub fn alias(&self) -> &str {
        &self.cluster.alias
    }

    fn err(&self, what: impl Into<String>) -> impl FnOnce(KafkaError) -> KafkaOpError + '_ {
        let what = what.into();
        move |source| KafkaOpError::Kafka {
            cluster: self.cluster.alias.clone(),
            what,
            source: Box::new(source),
        }
    }

    fn partition_count(&self, topic: &str) -> Result<Option<i32>, KafkaOpError> {
        let md = self
            .meta
            .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
            .map_err(self.err(format!("metadata of {topic:?}")))?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .filter(|n| *n > 0))
    }

    /// Makes sure `topic` exists with at least `partitions` partitions. Blocking; call it from a
    /// writer thread, never from the async executor.
    pub fn ensure(
        &self,
        rt: &tokio::runtime::Handle,
        topic: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> Result<(), KafkaOpError> {
        if self
            .known
            .lock()
            .expect("topic cache poisoned")
            .get(topic)
            .is_some_and(|n| *n >= partitions)
        {
            return Ok(());
        }
        let started = Instant::now();
        // Metadata lags behind a create or an added partition: ask for each once, then wait.
        let (mut created, mut expanded) = (false, false);
        loop {
            match self.partition_count(topic)? {
                Some(n) if n >= partitions => {
                    self.known
                        .lock()
                        .expect("topic cache poisoned")
                        .insert(topic.to_owned(), n);
                    return Ok(());
                }
                None if created => {}
                Some(_) if expanded => {}
                Some(n) => {
                    expanded = true;
                    tracing::info!(cluster = %self.cluster.alias, topic, from = n, to = partitions, "adding partitions to match the source");
                    let np = NewPartitions::new(topic, partitions as usize);
                    let res = rt
                        .block_on(self.admin.create_partitions([&np], &AdminOptions::new()))
                        .map_err(self.err(format!("adding partitions to {topic:?}")))?;
                    check_admin(res, &self.cluster.alias, topic)?;
                }
                None => {
                    created = true;
                    tracing::info!(cluster = %self.cluster.alias, topic, partitions, "creating topic");
                    let mut nt = NewTopic::new(
                        topic,
                        partitions,
                        TopicReplication::Fixed(self.cluster.replication_factor),
                    );
                    for (k, v) in configs {
                        nt = nt.set(k, v);
                    }
                    let res = rt
                        .block_on(self.admin.create_topics([&nt], &AdminOptions::new()))
                        .map_err(self.err(format!("creating {topic:?}")))?;
                    check_admin(res, &self.cluster.alias, topic)?;
                }
            }
            if started.elapsed() > ADMIN_TIMEOUT {
                return Err(KafkaOpError::Timeout {
                    cluster: self.cluster.alias.clone(),
                    what: format!("waiting for topic {topic:?} with {partitions} partitions"),
                    waited: started.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn check_admin(
    res: Vec<rdkafka::admin::TopicResult>,
    cluster: &str,
    topic: &str,
) -> Result<(), KafkaOpError> {
    for r in res {
        match r {
            Ok(_) => {}
            // Another hub or site writer created it first: fine.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(KafkaOpError::Kafka {
                    cluster: cluster.to_owned(),
                    what: format!("creating or growing {topic:?}"),
                    source: Box::new(KafkaError::AdminOp(code)),
                });
            }
        }
    }
    Ok(())
}

/// Encodes a position record key: topic (i16 length + UTF-8) and partition (i32), big-endian.
pub fn position_key(tp: &TopicPartition) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + tp.topic.len());
    k.extend_from_slice(&(tp.topic.len() as i16).to_be_bytes());
    k.extend_from_slice(tp.topic.as_bytes());
    k.extend_from_slice(&tp.partition.to_be_bytes());
    k
}

/// Encodes a position record value: version (i16 = 0) and the next source offset (i64).
pub fn position_value(next_offset: i64) -> [u8; 10] {
    let mut v = [0u8; 10];
    v[2..].copy_from_slice(&next_offset.to_be_bytes());
    v
}

/// Decodes a position record; errors say what is wrong.
pub fn decode_position(key: &[u8], value: &[u8]) -> Result<Position, String> {
    let len = key
        .get(..2)
        .map(|b| i16::from_be_bytes([b[0], b[1]]))
        .ok_or("key shorter than 2 bytes")?;
    if len < 0 || key.len() != 2 + len as usize + 4 {
        return Err(format!(
            "key of {} bytes does not match topic length {len}",
            key.len()
        ));
    }
    let topic = std::str::from_utf8(&key[2..2 + len as usize])
        .map_err(|e| format!("topic is not UTF-8: {e}"))?;
    let p = &key[2 + len as usize..];
    let partition = i32::from_be_bytes([p[0], p[1], p[2], p[3]]);
    if value.len() != 10 {
        return Err(format!("value of {} bytes, expected 10", value.len()));
    }
    let version = i16::from_be_bytes([value[0], value[1]]);
    if version != 0 {
        return Err(format!("unknown position record version {version}"));
    }
    let mut o = [0u8; 8];
    o.copy_from_slice(&value[2..]);
    Ok(Position {
        tp: TopicPartition {
            topic: topic.to_owned(),
            partition,
        },
        next_offset: i64::from_be_bytes(o),
    })
}

/// Client context that treats reaching the end of a partition as the normal event it is here,
/// instead of logging it as an error.
pub(crate) struct QuietEof;

impl rdkafka::ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_)
                | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            tracing::error!(error = %error, reason, "librdkafka error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEof {}

fn kafka_err(
    cluster: &ClusterConfig,
    what: &str,
    topic: &str,
) -> impl FnOnce(KafkaError) -> KafkaOpError + use<> {
    let cluster = cluster.alias.clone();
    let what = format!("{what} {topic:?}");
    move |source| KafkaOpError::Kafka {
        cluster,
        what,
        source: Box::new(source),
    }
}

/// A read_committed reader of partition 0 of `topic` from its beginning, reporting EOF.
pub(crate) fn committed_reader(
    cluster: &ClusterConfig,
    group: String,
    topic: &str,
) -> Result<BaseConsumer<QuietEof>, KafkaOpError> {
    let consumer: BaseConsumer<QuietEof> = client_config(cluster)
        // Required by librdkafka for assign(); nothing is committed.
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create_with_context(QuietEof)
        .map_err(kafka_err(cluster, "creating a reader for", topic))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .map_err(kafka_err(cluster, "assigning", topic))?;
    consumer
        .assign(&tpl)
        .map_err(kafka_err(cluster, "assigning", topic))?;
    Ok(consumer)
}

/// Reads every committed position of `site` on this cluster (the last value per partition).
/// Call only after the site's transactional producer was initialised, so no older transaction
/// is still open and the read_committed read cannot stall on it.
pub fn read_positions(cluster: &ClusterConfig, site: &str) -> Result<Vec<Position>, KafkaOpError> {
    let topic = positions_topic(site);
    let err = |what: &str| kafka_err(cluster, what, &topic);
    let consumer = committed_reader(cluster, format!("er-hub-positions-{site}"), &topic)?;
    let mut last: HashMap<TopicPartition, i64> = HashMap::new();
    let started = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                let pos = decode_position(m.key().unwrap_or(&[]), m.payload().unwrap_or(&[]))
                    .map_err(|message| KafkaOpError::BadPosition {
                        cluster: cluster.alias.clone(),
                        topic: topic.clone(),
                        offset: m.offset(),
                        message,
                    })?;
                last.insert(pos.tp, pos.next_offset);
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(err("reading")(e)),
        }
        if started.elapsed() > ADMIN_TIMEOUT {
            return Err(KafkaOpError::Timeout {
                cluster: cluster.alias.clone(),
                what: format!("reading positions topic {topic:?}"),
                waited: started.elapsed(),
            });
        }
    }
    let mut out: Vec<Position> = last
        .into_iter()
        .map(|(tp, next_offset)| Position { tp, next_offset })
        .collect();
    out.sort_by(|a, b| a.tp.cmp(&b.tp));
    Ok(out)
}

/// What rebuilding an offset index read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebuildStats {
    /// Index records read.
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Records that could not be decoded (each one restarts the index after it).
    pub unreadable: u64,
    /// The time budget ran out; the index was emptied.
    pub timed_out: bool,
}

/// How often a long rebuild logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Rebuilds `site`'s offset index on this cluster by reading its index topic read_committed
/// from the beginning to the end. Call it, like [`read_positions`], after the site's producer
/// was initialised, then set the positions on the index.
///
/// Never leaves a wrong index behind: an unreadable record (e.g. of a newer format version)
/// empties what was read before it (what follows is not contiguous with it), and running out of
/// `timeout` empties everything; offsets committed before then translate as "too old".
pub fn rebuild_offset_index(
    cluster: &ClusterConfig,
    site: &str,
    index: &mut OffsetIndex,
    timeout: Duration,
) -> Result<RebuildStats, KafkaOpError> {
    let topic = offset_index_topic(site);
    let started = Instant::now();
    let consumer = committed_reader(cluster, format!("er-hub-offset-index-{site}"), &topic)?;
    let (low, high) = consumer
        .fetch_watermarks(&topic, 0, ADMIN_TIMEOUT)
        .map_err(kafka_err(cluster, "reading the end offset of", &topic))?;
    let mut stats = RebuildStats::default();
    if high <= low {
        return Ok(stats);
    }
    tracing::info!(cluster = %cluster.alias, site, topic, from = low, to = high, "rebuilding the offset index");
    let mut next_log = started + PROGRESS_EVERY;
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                let payload = m.payload().unwrap_or(&[]);
                stats.records += 1;
                stats.bytes += payload.len() as u64;
                match offsets::decode(payload) {
                    Ok(entries) => index.apply(&entries),
                    Err(e) => {
                        stats.unreadable += 1;
                        tracing::error!(cluster = %cluster.alias, site, topic, offset = m.offset(), error = %e, "unreadable offset index record: forgetting the index before it (older offsets translate as too old)");
                        index.clear();
                    }
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(kafka_err(cluster, "reading", &topic)(e)),
        }
        let now = Instant::now();
        if now.duration_since(started) > timeout {
            tracing::warn!(cluster = %cluster.alias, site, topic, records = stats.records, to = high, waited_ms = timeout.as_millis() as u64, "rebuilding the offset index took too long: starting with an empty index (older offsets translate as too old)");
            index.clear();
            stats.timed_out = true;
            return Ok(stats);
        }
        if now >= next_log {
            next_log = now + PROGRESS_EVERY;
            let st = index.stats();
            tracing::info!(cluster = %cluster.alias, site, topic, records = stats.records, bytes = stats.bytes, to = high, index_runs = st.runs, elapsed_ms = now.duration_since(started).as_millis() as u64, "rebuilding the offset index");
        }
    }
    let st = index.stats();
    tracing::info!(cluster = %cluster.alias, site, topic, records = stats.records, bytes = stats.bytes, unreadable = stats.unreadable, index_pairs = st.pairs, index_runs = st.runs, index_bytes = st.bytes, elapsed_ms = started.elapsed().as_millis() as u64, "offset index rebuilt");
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_topics_of_a_site_are_never_replicated() {
        for t in [positions_topic("plant-7"), offset_index_topic("plant-7")] {
            assert!(er_protocol::is_internal_topic(&t), "{t}");
            er_protocol::validate_topic_name(&t).unwrap();
        }
        assert_eq!(
            offset_index_topic("plant-7"),
            "er-offset-index.plant-7.internal"
        );
    }

    #[test]
    fn position_record_round_trips_and_rejects_garbage() {
        let tp = TopicPartition {
            topic: "orders".into(),
            partition: 7,
        };
        let k = position_key(&tp);
        assert_eq!(k, b"\x00\x06orders\x00\x00\x00\x07");
        let v = position_value(1234);
        let p = decode_position(&k, &v).unwrap();
        assert_eq!((p.tp, p.next_offset), (tp, 1234));
        assert!(
            decode_position(&k[..3], &v)
                .unwrap_err()
                .contains("does not match")
        );
        let mut bad = v;
        bad[1] = 1;
        assert!(decode_position(&k, &bad).unwrap_err().contains("version 1"));
        assert!(
            decode_position(&k, &v[..9])
                .unwrap_err()
                .contains("expected 10")
        );
    }
}
