//! Central-cluster plumbing: client configs, topic creation, and reading a shard's positions and offset index.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use er_protocol::{Position, TopicPartition};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::ClusterConfig;
use crate::offsets::{self, OffsetIndex};

/// How long metadata and admin calls may take before the hub gives up on them.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long asking a topic's configs may take (the answer has a safe default).
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a topic's `max.message.bytes` is trusted before it is asked again.
pub const LIMITS_TTL: Duration = Duration::from_secs(30);

pub use er_kafka_admin::AlterResults;

/// Kafka's default `max.message.bytes`.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;

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
    /// The group's internal topics do not have the layout this hub expects.
    #[error("cluster {cluster:?}: {message}")]
    Layout {
        /// Alias of the cluster.
        cluster: String,
        /// What does not match.
        message: String,
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

impl KafkaOpError {
    /// Wraps a client error of `cluster` while doing `what`: for `map_err`.
    pub fn kafka(cluster: &str, what: &str) -> impl FnOnce(KafkaError) -> Self + use<> {
        let (cluster, what) = (cluster.to_owned(), what.to_owned());
        move |source| KafkaOpError::Kafka {
            cluster,
            what,
            source: Box::new(source),
        }
    }
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
    /// `max.message.bytes` per topic and when it was learnt: asked again after
    /// [`LIMITS_TTL`], so an operator raising a topic's limit unblocks its records.
    max_bytes: Mutex<HashMap<String, (usize, std::time::Instant)>>,
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
        let err = |what: &str| KafkaOpError::kafka(&cluster.alias, what);
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
            max_bytes: Mutex::new(HashMap::new()),
        }))
    }

    /// The cluster's `topic_configs`: set on every remote topic it creates.
    pub fn remote_topic_configs(&self) -> Vec<(&str, &str)> {
        self.cluster
            .topic_configs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Alias of the cluster this manager serves.
    pub fn alias(&self) -> &str {
        &self.cluster.alias
    }

    fn err(&self, what: impl Into<String>) -> impl FnOnce(KafkaError) -> KafkaOpError {
        KafkaOpError::kafka(&self.cluster.alias, &what.into())
    }

    /// The partition count of `topic`, `None` when it does not exist.
    pub fn partition_count(&self, topic: &str) -> Result<Option<i32>, KafkaOpError> {
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

    /// The topic's `max.message.bytes` (the largest record batch the broker accepts for it),
    /// asked once per topic and [`LIMITS_TTL`]. Blocking.
    pub fn max_message_bytes(
        &self,
        rt: &tokio::runtime::Handle,
        topic: &str,
    ) -> Result<usize, KafkaOpError> {
        if let Some(n) = self
            .max_bytes
            .lock()
            .expect("limits cache poisoned")
            .get(topic)
            .filter(|(_, at)| at.elapsed() < LIMITS_TTL)
        {
            return Ok(n.0);
        }
        let res = rt.block_on(self.admin.describe_configs(
            [&rdkafka::admin::ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(DESCRIBE_TIMEOUT)),
        ));
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                // A cluster that cannot describe topic configs (librdkafka's mock cluster, an
                // ACL without DescribeConfigs) gets Kafka's default limit: a record above it is
                // set aside rather than stalling its partition.
                tracing::warn!(cluster = %self.cluster.alias, topic, error = %e, default = DEFAULT_MAX_MESSAGE_BYTES, "cannot read the topic's max.message.bytes; assuming Kafka's default");
                Vec::new()
            }
        };
        let n = res
            .into_iter()
            .next()
            .and_then(|r| r.ok())
            .and_then(|c| {
                c.get("max.message.bytes")
                    .and_then(|e| e.value.as_deref())
                    .and_then(|v| v.parse::<usize>().ok())
            })
            // Kafka's default when the broker does not say.
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        self.max_bytes
            .lock()
            .expect("limits cache poisoned")
            .insert(topic.to_owned(), (n, std::time::Instant::now()));
        Ok(n)
    }

    /// Whether `topic` is known to exist with at least `partitions` partitions.
    pub fn is_known(&self, topic: &str, partitions: i32) -> bool {
        self.known
            .lock()
            .expect("topic cache poisoned")
            .get(topic)
            .is_some_and(|n| *n >= partitions)
    }

    /// An existing topic of the cluster that `topic` (not existing itself) collides with in
    /// Kafka's eyes: Kafka treats `.` and `_` as the same character in topic names and refuses
    /// to create a topic whose name differs from an existing one only there. One metadata
    /// request; ask only for a topic about to be created. Blocking.
    pub fn collision(&self, topic: &str) -> Result<Option<String>, KafkaOpError> {
        let existing = self.all_partition_counts()?;
        if existing.contains_key(topic) {
            return Ok(None);
        }
        let key = collision_key(topic);
        Ok(existing.into_keys().find(|t| collision_key(t) == key))
    }

    /// Creates the missing topics of `wanted` in one request and waits until the metadata
    /// shows them: a storm of new sites costs one CreateTopics and a few listings, not one of
    /// each per site. Returns the topics this call created (empty, with the partitions asked
    /// for). Topics that exist with too few partitions are left to [`TopicManager::ensure`].
    /// Blocking.
    ///
    /// The wait matters: a transaction that writes to a topic the broker has not applied yet
    /// fails (`UnknownTopicOrPartition`), and a broker creating thousands of topics at once
    /// takes tens of seconds. Each listing holds every topic of the cluster, so the looks back
    /// off from 100 ms to 2 s.
    pub fn ensure_many(
        &self,
        rt: &tokio::runtime::Handle,
        wanted: &[(String, i32)],
        configs: &[(&str, &str)],
    ) -> Result<std::collections::HashSet<String>, KafkaOpError> {
        let started = Instant::now();
        let mut created = std::collections::HashSet::new();
        let mut missing: Vec<&(String, i32)> = wanted
            .iter()
            .filter(|(t, n)| !self.is_known(t, *n))
            .collect();
        if missing.is_empty() {
            return Ok(created);
        }
        self.learn(&self.all_partition_counts()?, &mut missing);
        if missing.is_empty() {
            return Ok(created);
        }
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|(t, n)| {
                let mut nt = NewTopic::new(
                    t,
                    *n,
                    TopicReplication::Fixed(self.cluster.replication_factor),
                );
                for (k, v) in configs {
                    nt = nt.set(k, v);
                }
                nt
            })
            .collect();
        tracing::info!(cluster = %self.cluster.alias, topics = new.len(), "creating topics");
        {
            let mut limits = self.max_bytes.lock().expect("limits cache poisoned");
            for (t, _) in &missing {
                limits.insert(
                    t.clone(),
                    (DEFAULT_MAX_MESSAGE_BYTES, std::time::Instant::now()),
                );
            }
        }
        let res = rt
            .block_on(self.admin.create_topics(&new, &AdminOptions::new()))
            .map_err(self.err(format!("creating {} topics", new.len())))?;
        for r in res {
            match r {
                Ok(topic) => {
                    created.insert(topic);
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    // This topic's batches meet the error again in their writer.
                    tracing::warn!(cluster = %self.cluster.alias, topic, error = %code, "cannot create topic");
                    missing.retain(|(t, _)| *t != topic);
                }
            }
        }
        let mut pause = Duration::from_millis(100);
        while !missing.is_empty() {
            if started.elapsed() > ADMIN_TIMEOUT {
                return Err(KafkaOpError::Timeout {
                    cluster: self.cluster.alias.clone(),
                    what: format!("waiting for {} created topics", missing.len()),
                    waited: started.elapsed(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(2));
            self.learn(&self.all_partition_counts()?, &mut missing);
        }
        Ok(created)
    }

    /// Remembers the partition counts of `existing` and drops the topics it holds from `missing`.
    fn learn(&self, existing: &HashMap<String, i32>, missing: &mut Vec<&(String, i32)>) {
        let mut known = self.known.lock().expect("topic cache poisoned");
        for (t, n) in existing {
            known.insert(t.clone(), *n);
        }
        missing.retain(|(t, _)| !existing.contains_key(t));
    }

    /// Creates the missing topics of `specs` (name, partitions, configs) in one request, adds
    /// partitions to those with fewer, and waits until the metadata shows them. Returns the
    /// names that existed before (their configs are the caller's to compare). Blocking.
    pub fn create_or_grow(
        &self,
        rt: &tokio::runtime::Handle,
        specs: &[crate::topic_sync::Wanted],
    ) -> Result<Vec<String>, KafkaOpError> {
        let existing = self.all_partition_counts()?;
        {
            let mut known = self.known.lock().expect("topic cache poisoned");
            for (t, n) in &existing {
                known.insert(t.clone(), *n);
            }
        }
        let (old, new): (Vec<_>, Vec<_>) =
            specs.iter().partition(|w| existing.contains_key(&w.topic));
        for w in &old {
            if existing
                .get(&w.topic)
                .is_some_and(|have| *have < w.partitions)
            {
                self.ensure(rt, &w.topic, w.partitions, &[])?;
            }
        }
        if !new.is_empty() {
            let topics: Vec<NewTopic<'_>> = new
                .iter()
                .map(|w| {
                    let mut nt = NewTopic::new(
                        &w.topic,
                        w.partitions,
                        TopicReplication::Fixed(self.cluster.replication_factor),
                    );
                    for (k, v) in &w.configs {
                        nt = nt.set(k, v);
                    }
                    nt
                })
                .collect();
            tracing::info!(cluster = %self.cluster.alias, topics = topics.len(), "creating remote topics at discovery");
            let res = rt
                .block_on(self.admin.create_topics(&topics, &AdminOptions::new()))
                .map_err(self.err(format!("creating {} topics", topics.len())))?;
            let mut wait: Vec<&str> = Vec::new();
            for r in res {
                match r {
                    Ok(t) => {
                        if let Some(w) = new.iter().find(|w| w.topic == t) {
                            wait.push(&w.topic);
                        }
                    }
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code)) => {
                        // Its records meet the same refusal in their writer, which sets them aside.
                        tracing::warn!(cluster = %self.cluster.alias, topic, error = %code, "cannot create remote topic");
                    }
                }
            }
            let started = Instant::now();
            while !wait.is_empty() {
                let now = self.all_partition_counts()?;
                wait.retain(|t| !now.contains_key(*t));
                if wait.is_empty() {
                    let mut known = self.known.lock().expect("topic cache poisoned");
                    known.extend(now);
                    break;
                }
                if started.elapsed() > ADMIN_TIMEOUT {
                    return Err(KafkaOpError::Timeout {
                        cluster: self.cluster.alias.clone(),
                        what: format!("waiting for {} created topics", wait.len()),
                        waited: started.elapsed(),
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(old.into_iter().map(|w| w.topic.clone()).collect())
    }

    /// The configs of `topics` as the cluster describes them (one request). Blocking.
    pub fn describe_topic_configs(
        &self,
        rt: &tokio::runtime::Handle,
        topics: &[String],
    ) -> Result<HashMap<String, Vec<crate::topic_sync::Current>>, KafkaOpError> {
        let specs: Vec<_> = topics
            .iter()
            .map(|t| rdkafka::admin::ResourceSpecifier::Topic(t))
            .collect();
        let res = rt
            .block_on(self.admin.describe_configs(
                &specs,
                &AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT)),
            ))
            .map_err(self.err(format!("describing the configs of {} topics", topics.len())))?;
        let mut out = HashMap::new();
        for (topic, r) in topics.iter().zip(res) {
            match r {
                Ok(c) => {
                    let entries = c
                        .entries
                        .into_iter()
                        .map(|e| crate::topic_sync::Current {
                            on_topic: e.source == rdkafka::admin::ConfigSource::DynamicTopic,
                            name: e.name,
                            value: e.value,
                        })
                        .collect();
                    out.insert(topic.clone(), entries);
                }
                Err(code) => {
                    tracing::warn!(cluster = %self.cluster.alias, topic, error = %code, "cannot describe the remote topic's configs");
                }
            }
        }
        Ok(out)
    }

    /// Applies `changes` per topic with Kafka's IncrementalAlterConfigs (KIP-339: only the
    /// named configs change, never a replace of the topic's set). One request; each topic's
    /// result. Blocking.
    pub fn incremental_alter_topic_configs(
        &self,
        changes: &[(String, Vec<crate::topic_sync::ConfigOp>)],
    ) -> Result<AlterResults, KafkaOpError> {
        er_kafka_admin::incremental_alter_topic_configs(&self.admin, changes, ADMIN_TIMEOUT)
            .map_err(|e| KafkaOpError::Layout {
                cluster: self.cluster.alias.clone(),
                message: e.to_string(),
            })
    }

    /// Creates ACL bindings (CreateAcls; one that exists already is no error). One request;
    /// each binding's result, in order. Blocking.
    pub fn create_topic_acls(
        &self,
        acls: &[er_kafka_admin::TopicAcl],
    ) -> Result<Vec<Result<(), String>>, KafkaOpError> {
        er_kafka_admin::create_topic_acls(&self.admin, acls, ADMIN_TIMEOUT).map_err(|e| {
            KafkaOpError::Layout {
                cluster: self.cluster.alias.clone(),
                message: e.to_string(),
            }
        })
    }

    /// Every topic of the cluster with its partition count (one metadata request).
    fn all_partition_counts(&self) -> Result<HashMap<String, i32>, KafkaOpError> {
        let md = self
            .meta
            .fetch_metadata(None, ADMIN_TIMEOUT)
            .map_err(self.err("metadata of all topics"))?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
            .collect())
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
        if self.is_known(topic, partitions) {
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
                    // A topic the hub creates takes the broker's default limit: no need to ask.
                    self.max_bytes
                        .lock()
                        .expect("limits cache poisoned")
                        .insert(
                            topic.to_owned(),
                            (DEFAULT_MAX_MESSAGE_BYTES, std::time::Instant::now()),
                        );
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

/// A topic name as Kafka compares names for collisions: `.` and `_` are one character.
pub fn collision_key(topic: &str) -> String {
    topic.replace('.', "_")
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
    KafkaOpError::kafka(&cluster.alias, &format!("{what} {topic:?}"))
}

/// A read_committed reader of partition 0 of `topic` from its beginning, reporting EOF.
pub(crate) fn committed_reader(
    cluster: &ClusterConfig,
    group: String,
    topic: &str,
) -> Result<BaseConsumer<QuietEof>, KafkaOpError> {
    committed_reader_of(cluster, group, &[topic])
}

/// A read_committed reader assigned to partition 0 of each of `topics`, from the beginning,
/// reporting each end reached.
pub(crate) fn committed_reader_of(
    cluster: &ClusterConfig,
    group: String,
    topics: &[&str],
) -> Result<BaseConsumer<QuietEof>, KafkaOpError> {
    let topic = topics.first().copied().unwrap_or_default();
    let consumer: BaseConsumer<QuietEof> = client_config(cluster)
        // Required by librdkafka for assign(); nothing is committed.
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create_with_context(QuietEof)
        .map_err(kafka_err(cluster, "creating a reader for", topic))?;
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        tpl.add_partition_offset(t, 0, Offset::Beginning)
            .map_err(kafka_err(cluster, "assigning", t))?;
    }
    consumer
        .assign(&tpl)
        .map_err(kafka_err(cluster, "assigning", topic))?;
    Ok(consumer)
}

/// What reading shards from one cluster found.
#[derive(Debug, Default)]
pub struct ShardRead {
    /// Committed positions per site.
    pub positions: HashMap<String, Vec<Position>>,
    /// Offset index per site.
    pub indexes: HashMap<String, OffsetIndex>,
}

/// What reading the offset index of some shards read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebuildStats {
    /// Position records read.
    pub positions: u64,
    /// Index records read.
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Records that could not be decoded (each one restarts its site's index after it).
    pub unreadable: u64,
    /// The time budget ran out; the indexes were emptied.
    pub timed_out: bool,
}

/// How often a long read logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Creates the group's internal topics on a cluster (or checks them): the shards topic, the
/// positions topic (compacted) and the offset index topic (`retention_ms`), each with exactly
/// `shards` partitions, and the hubs topic (one partition, compacted) on the coordination
/// cluster. Blocking.
pub fn setup_group_topics(
    rt: &tokio::runtime::Handle,
    topics: &TopicManager,
    group: &str,
    shards: u32,
    retention_ms: u64,
    coordination: bool,
) -> Result<(), KafkaOpError> {
    let retention = retention_ms.to_string();
    let n = shards as i32;
    let wanted: [(String, Vec<(&str, &str)>); 3] = [
        (
            crate::shards::shards_topic(group),
            vec![("cleanup.policy", "compact")],
        ),
        (
            crate::shards::positions_topic(group),
            vec![("cleanup.policy", "compact")],
        ),
        (
            crate::shards::offset_index_topic(group),
            vec![("cleanup.policy", "delete"), ("retention.ms", &retention)],
        ),
    ];
    for (topic, configs) in &wanted {
        topics.ensure(rt, topic, n, configs)?;
        let have = topics.partition_count(topic)?.unwrap_or(0);
        if have != n {
            return Err(KafkaOpError::Layout {
                cluster: topics.alias().to_owned(),
                message: format!(
                    "topic {topic:?} has {have} partitions but fleet.shards = {shards}: every hub of group {group:?} must use the shard count the group started with"
                ),
            });
        }
    }
    if coordination {
        topics.ensure(
            rt,
            &crate::shards::hubs_topic(group),
            1,
            &[("cleanup.policy", "compact")],
        )?;
    }
    Ok(())
}

/// Reads `partitions` of `topic` read_committed from the beginning to their ends, handing
/// every record to `each`. Returns false when `stop_at` passed first (what was read was
/// handed over). Blocking.
fn read_partitions_to_end(
    cluster: &ClusterConfig,
    group: &str,
    topic: &str,
    partitions: &std::collections::BTreeSet<crate::shards::Shard>,
    stop_at: Instant,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> Result<(), KafkaOpError>,
) -> Result<bool, KafkaOpError> {
    let consumer: BaseConsumer<QuietEof> = client_config(cluster)
        // Required by librdkafka for assign(); nothing is committed.
        .set("group.id", format!("{group}-shard-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create_with_context(QuietEof)
        .map_err(kafka_err(cluster, "creating a reader for", topic))?;
    // Transactions still open after that belong to a dead or fenced owner (never committed:
    // their producer's successor aborts them) and are read past, as before.
    let settle_by = stop_at.min(Instant::now() + MARKER_WAIT);
    no_open_transactions(cluster, group, topic, partitions, &consumer, settle_by)?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, *p as i32, Offset::Beginning)
            .map_err(kafka_err(cluster, "assigning", topic))?;
    }
    consumer
        .assign(&tpl)
        .map_err(kafka_err(cluster, "assigning", topic))?;
    let mut open: std::collections::BTreeSet<i32> = partitions.iter().map(|p| *p as i32).collect();
    while !open.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => each(&m)?,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => return Err(kafka_err(cluster, "reading", topic)(e)),
        }
        if Instant::now() > stop_at {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The end offset of each of `partitions`, asked in one ListOffsets request per partition
/// leader (`fetch_watermarks` costs two round trips per partition): the high watermark for a
/// read_uncommitted `client`, the last stable offset for a read_committed one (librdkafka asks
/// with the client's `isolation.level`). A partition whose answer is an error (unknown, leader
/// moving) is left out of the map; the caller decides what a missing end means.
pub fn end_offsets<'a, C: rdkafka::consumer::ConsumerContext>(
    client: &BaseConsumer<C>,
    partitions: impl IntoIterator<Item = (&'a str, i32)>,
    timeout: Duration,
) -> Result<HashMap<(String, i32), i64>, KafkaError> {
    let mut ask = TopicPartitionList::new();
    for (topic, partition) in partitions {
        // Timestamp -1 (`Offset::End`) asks for the latest offset.
        ask.add_partition_offset(topic, partition, Offset::End)?;
    }
    if ask.count() == 0 {
        return Ok(HashMap::new());
    }
    let answer = client.offsets_for_times(ask, timeout)?;
    Ok(answer
        .elements()
        .iter()
        .filter(|e| e.error().is_ok())
        .filter_map(|e| match e.offset() {
            Offset::Offset(end) if end >= 0 => Some(((e.topic().to_owned(), e.partition()), end)),
            _ => None,
        })
        .collect())
}

/// How long a shard read waits for transactions open on its partitions to end: long enough
/// for the markers of a transaction whose commit is under way to land, not for a dead owner's
/// open transaction (only its producer's successor or `transaction.timeout.ms` ends that).
const MARKER_WAIT: Duration = Duration::from_secs(3);

/// Waits until no transaction that was open when it was called is open on `partitions` of
/// `topic` any more: the last stable offset (what `committed`, a read_committed client, is
/// told) has reached the high watermark a read_uncommitted client was told at the start.
/// `false` at `stop_at`.
///
/// A read_committed reader's end is the last stable offset, so without this wait a shard read
/// while the previous owner's committed transaction still has its markers on the way (the
/// coordinator writes them partition by partition; the group offsets that `await_stable` waits
/// for may be settled first) stops before that transaction's positions: the site would resume
/// from an older position and its last batch would be written twice.
fn no_open_transactions(
    cluster: &ClusterConfig,
    group: &str,
    topic: &str,
    partitions: &std::collections::BTreeSet<crate::shards::Shard>,
    committed: &BaseConsumer<QuietEof>,
    stop_at: Instant,
) -> Result<bool, KafkaOpError> {
    let uncommitted: BaseConsumer<QuietEof> = client_config(cluster)
        .set("group.id", format!("{group}-shard-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create_with_context(QuietEof)
        .map_err(kafka_err(cluster, "creating a watermark client for", topic))?;
    let wait = || {
        stop_at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(500))
    };
    // Transactions opened after this look (other sites of a shard keep writing to it while one
    // site's state is read again) begin past these marks and are not waited for.
    let all: Vec<(&str, i32)> = partitions.iter().map(|p| (topic, *p as i32)).collect();
    let high = end_offsets(&uncommitted, all.iter().copied(), wait()).map_err(kafka_err(
        cluster,
        "reading the high watermarks of",
        topic,
    ))?;
    let mut open: Vec<(i32, i64)> = Vec::with_capacity(all.len());
    for &(t, p) in &all {
        // An end the broker would not tell (leader moving) fails the read, which is tried again.
        let end = high.get(&(t.to_owned(), p)).copied().ok_or_else(|| {
            kafka_err(cluster, "reading the high watermark of", topic)(KafkaError::OffsetFetch(
                RDKafkaErrorCode::UnknownPartition,
            ))
        })?;
        open.push((p, end));
    }
    loop {
        let stable =
            end_offsets(committed, open.iter().map(|&(p, _)| (topic, p)), wait()).map_err(
                kafka_err(cluster, "reading the last stable offsets of", topic),
            )?;
        let still: Vec<(i32, i64)> = open
            .iter()
            .copied()
            .filter(|&(p, high)| stable.get(&(topic.to_owned(), p)).is_none_or(|&s| s < high))
            .collect();
        if still.is_empty() {
            return Ok(true);
        }
        if Instant::now() >= stop_at {
            tracing::info!(cluster = %cluster.alias, topic, partitions = ?still, "transactions still open on shard partitions (a dead owner's, to be aborted); reading the committed ones");
            return Ok(false);
        }
        tracing::debug!(cluster = %cluster.alias, topic, partitions = ?still, "waiting for open transactions on shard partitions");
        open = still;
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads the committed positions and the offset index of every site of `shards` on this
/// cluster: partition `shard` of the group's positions and offset index topics, read_committed,
/// to their ends. Call it only after the shards' pending transactions settled
/// ([`crate::membership::Membership::await_stable`]).
///
/// Never leaves a wrong index behind: an unreadable index record (e.g. of a newer format
/// version) empties its site's index read before it, and running out of `timeout` empties
/// every index (positions are still read in full); offsets committed before then translate as
/// "too old".
pub fn read_shards(
    cluster: &ClusterConfig,
    group: &str,
    shards: &std::collections::BTreeSet<crate::shards::Shard>,
    max_index_entries: usize,
    timeout: Duration,
) -> Result<(HashMap<crate::shards::Shard, ShardRead>, RebuildStats), KafkaOpError> {
    let mut out: HashMap<crate::shards::Shard, ShardRead> =
        shards.iter().map(|s| (*s, ShardRead::default())).collect();
    let mut stats = RebuildStats::default();
    if shards.is_empty() {
        return Ok((out, stats));
    }
    let started = Instant::now();
    let positions = read_positions(cluster, group, shards, started, &mut stats)?;
    let reader = IndexReader {
        cluster,
        group,
        shards,
        max_index_entries,
        started,
    };
    if !reader.read(started + timeout, &mut out, &mut stats)? {
        tracing::warn!(cluster = %cluster.alias, shards = shards.len(), records = stats.records, waited_ms = timeout.as_millis() as u64, "reading the offset index took too long: starting with empty indexes (older offsets translate as too old)");
        for r in out.values_mut() {
            r.indexes.clear();
        }
        stats.timed_out = true;
    }
    for ((shard, site), map) in positions {
        let mut v: Vec<Position> = map
            .into_iter()
            .map(|(tp, next_offset)| Position { tp, next_offset })
            .collect();
        v.sort_by(|a, b| a.tp.cmp(&b.tp));
        out.entry(shard).or_default().positions.insert(site, v);
    }
    tracing::info!(cluster = %cluster.alias, shards = shards.len(), positions = stats.positions, index_records = stats.records, index_bytes = stats.bytes, unreadable = stats.unreadable, elapsed_ms = started.elapsed().as_millis() as u64, "shards read");
    Ok((out, stats))
}

/// Committed positions by (shard, site).
type SitePositions = HashMap<(crate::shards::Shard, String), HashMap<TopicPartition, i64>>;

/// The committed positions of every site of `shards`, by (shard, site); all of them within
/// [`ADMIN_TIMEOUT`] of `started` or an error.
fn read_positions(
    cluster: &ClusterConfig,
    group: &str,
    shards: &std::collections::BTreeSet<crate::shards::Shard>,
    started: Instant,
    stats: &mut RebuildStats,
) -> Result<SitePositions, KafkaOpError> {
    let ptopic = crate::shards::positions_topic(group);
    let mut positions = SitePositions::new();
    let complete = read_partitions_to_end(
        cluster,
        group,
        &ptopic,
        shards,
        started + ADMIN_TIMEOUT,
        |m| {
            stats.positions += 1;
            let (site, pos) =
                crate::shards::decode_position(m.key().unwrap_or(&[]), m.payload().unwrap_or(&[]))
                    .map_err(|e| KafkaOpError::BadPosition {
                        cluster: cluster.alias.clone(),
                        topic: ptopic.clone(),
                        offset: m.offset(),
                        message: e.to_string(),
                    })?;
            positions
                .entry((m.partition() as crate::shards::Shard, site))
                .or_default()
                .insert(pos.tp, pos.next_offset);
            Ok(())
        },
    )?;
    if !complete {
        return Err(KafkaOpError::Timeout {
            cluster: cluster.alias.clone(),
            what: format!("reading positions of shards {shards:?} from {ptopic:?}"),
            waited: started.elapsed(),
        });
    }
    Ok(positions)
}

/// Rebuilds the offset indexes of the sites of `shards` from the offset index topic.
struct IndexReader<'a> {
    cluster: &'a ClusterConfig,
    group: &'a str,
    shards: &'a std::collections::BTreeSet<crate::shards::Shard>,
    max_index_entries: usize,
    started: Instant,
}

impl IndexReader<'_> {
    /// Applies every index record to its site's index in `out`, logging progress; whether it
    /// read to the end before `deadline`. An unreadable record clears the site's index so far.
    fn read(
        &self,
        deadline: Instant,
        out: &mut HashMap<crate::shards::Shard, ShardRead>,
        stats: &mut RebuildStats,
    ) -> Result<bool, KafkaOpError> {
        let (cluster, shards) = (self.cluster, self.shards);
        let itopic = crate::shards::offset_index_topic(self.group);
        let mut next_log = Instant::now() + PROGRESS_EVERY;
        read_partitions_to_end(cluster, self.group, &itopic, shards, deadline, |m| {
            let payload = m.payload().unwrap_or(&[]);
            stats.records += 1;
            stats.bytes += payload.len() as u64;
            let site = String::from_utf8_lossy(m.key().unwrap_or(&[])).into_owned();
            let index = out
                .entry(m.partition() as crate::shards::Shard)
                .or_default()
                .indexes
                .entry(site.clone())
                .or_insert_with(|| OffsetIndex::new(self.max_index_entries));
            match offsets::decode(payload) {
                Ok(entries) => index.apply(&entries),
                Err(e) => {
                    stats.unreadable += 1;
                    tracing::error!(cluster = %cluster.alias, site, topic = %itopic, partition = m.partition(), offset = m.offset(), error = %e, "unreadable offset index record: forgetting the site's index before it (older offsets translate as too old)");
                    index.clear();
                }
            }
            let now = Instant::now();
            if now >= next_log {
                next_log = now + PROGRESS_EVERY;
                tracing::info!(cluster = %cluster.alias, shards = shards.len(), index_records = stats.records, index_bytes = stats.bytes, elapsed_ms = now.duration_since(self.started).as_millis() as u64, "reading the offset index");
            }
            Ok(())
        })
    }
}

/// How long a producer's report server sleeps when no delivery report was ready.
const REPORT_POLL_PAUSE: Duration = Duration::from_millis(20);

/// A plain (non-transactional) producer whose delivery reports a thread of its own serves,
/// in place of rust-rdkafka's `ThreadedProducer`: that one calls `poll(100 ms)`, which serves
/// events until the 100 ms are over and passes the last sub-millisecond remainder to
/// librdkafka as a zero timeout, so it spins up to a millisecond in `clock_gettime` every
/// 100 ms: a point of a core per producer, at idle (perf, 1,000 sites). This one polls
/// without waiting and sleeps [`REPORT_POLL_PAUSE`] when nothing was ready.
pub struct PolledProducer<C: ProducerContext + 'static = DefaultProducerContext> {
    producer: Arc<BaseProducer<C>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<C: ProducerContext> std::fmt::Debug for PolledProducer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolledProducer").finish_non_exhaustive()
    }
}

impl PolledProducer {
    /// Creates the producer of `config` and its report thread, named `name`.
    pub fn new(config: &ClientConfig, name: &str) -> KafkaResult<Self> {
        Self::with_context(config, DefaultProducerContext, name)
    }
}

impl<C: ProducerContext + 'static> PolledProducer<C> {
    /// Creates the producer of `config` with `context` (which gets the delivery reports) and
    /// its report thread, named `name`.
    pub fn with_context(config: &ClientConfig, context: C, name: &str) -> KafkaResult<Self> {
        let producer: Arc<BaseProducer<C>> = Arc::new(config.create_with_context(context)?);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn({
            let (producer, stop) = (producer.clone(), stop.clone());
            move || {
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    serve_reports(&*producer, REPORT_POLL_PAUSE);
                }
            }
        });
        let thread = thread.map_err(|e| {
            KafkaError::ClientCreation(format!("cannot start the thread {name:?}: {e}"))
        })?;
        Ok(Self {
            producer,
            stop,
            thread: Some(thread),
        })
    }
}

impl<C: ProducerContext> std::ops::Deref for PolledProducer<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &Self::Target {
        &self.producer
    }
}

impl<C: ProducerContext> Drop for PolledProducer<C> {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves a ready delivery report of `producer`, or sleeps `pause` when there is none.
/// rust-rdkafka's `poll(t)` serves events until `t` is over and passes the last
/// sub-millisecond remainder to librdkafka as a zero timeout, so a short `poll` is a busy
/// loop: `poll(1 ms)` cost a writer most of a core in `clock_gettime` (perf).
pub fn serve_reports<C, P>(producer: &BaseProducer<C, P>, pause: Duration)
where
    C: ProducerContext<P>,
    P: rdkafka::producer::Partitioner,
{
    let before = producer.in_flight_count();
    producer.poll(Duration::ZERO);
    if producer.in_flight_count() == before {
        std::thread::sleep(pause);
    }
}
