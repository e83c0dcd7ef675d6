//! Small rdkafka helpers shared by many tests. All async (tokio); the few blocking librdkafka
//! calls run on `spawn_blocking` so they never stall a test's runtime.
//!
//! Conventions: null and empty are distinct (`None` vs `Some(vec![])`) for keys, values and
//! header values, as far as librdkafka keeps them apart (see `tests/tests/it/harness.rs`).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

pub use rdkafka::Timestamp;

/// Timeout for admin / metadata round trips.
const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// A `ClientConfig` with `bootstrap.servers` set (plus nothing else).
pub fn config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// Now as Kafka timestamps count it: milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Commits `offsets` (partition -> next offset to read) of `topic` for consumer group `group`,
/// as an application at the edge would before failing over. Panics if the commit fails.
pub fn commit_group(bootstrap: &str, group: &str, topic: &str, offsets: &BTreeMap<i32, i64>) {
    let c: BaseConsumer = config(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("group client");
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .unwrap();
    }
    c.commit(&tpl, CommitMode::Sync)
        .expect("commit at the edge");
}

/// An admin client for `bootstrap`.
pub fn admin(bootstrap: &str) -> Result<AdminClient<DefaultClientContext>> {
    config(bootstrap).create().context("creating AdminClient")
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!("blocking task failed: {e}"))?
}

/// Creates `name` (replication factor 1) with `partitions` partitions and topic `config`
/// (e.g. `[("cleanup.policy", "compact")]`), then waits until metadata shows every partition
/// with a leader. Fails if the topic exists.
pub async fn create_topic(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    config: &[(&str, &str)],
) -> Result<()> {
    let admin = admin(bootstrap)?;
    let topic = NewTopic {
        name,
        num_partitions: partitions,
        replication: TopicReplication::Fixed(1),
        config: config.to_vec(),
    };
    let opts = AdminOptions::new().operation_timeout(Some(OP_TIMEOUT));
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .context("CreateTopics")?;
    for r in results {
        r.map_err(|(t, code)| anyhow!("creating topic {t} on {bootstrap}: {code}"))?;
    }
    let (bootstrap, name) = (bootstrap.to_string(), name.to_string());
    blocking(move || {
        let consumer: BaseConsumer = self::config(&bootstrap).create()?;
        let deadline = Instant::now() + OP_TIMEOUT;
        loop {
            let md = consumer.fetch_metadata(Some(&name), Duration::from_secs(5))?;
            let ready = md.topics().iter().any(|t| {
                t.name() == name
                    && t.error().is_none()
                    && t.partitions().len() == partitions as usize
                    && t.partitions()
                        .iter()
                        .all(|p| p.leader() >= 0 && p.error().is_none())
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("topic {name} not ready on {bootstrap} after {OP_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
}

/// Deletes topics (errors for missing ones are returned).
pub async fn delete_topics(bootstrap: &str, names: &[&str]) -> Result<()> {
    let admin = admin(bootstrap)?;
    let opts = AdminOptions::new().operation_timeout(Some(OP_TIMEOUT));
    for r in admin
        .delete_topics(names, &opts)
        .await
        .context("DeleteTopics")?
    {
        r.map_err(|(t, code)| anyhow!("deleting topic {t} on {bootstrap}: {code}"))?;
    }
    Ok(())
}

/// Sets `configs` of `topic` (Kafka's AlterConfigs: the topic's other overrides return to the
/// broker's defaults).
pub async fn alter_topic_config(
    bootstrap: &str,
    topic: &str,
    configs: &[(&str, &str)],
) -> Result<()> {
    let admin = admin(bootstrap)?;
    let mut change =
        rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic(topic));
    for (k, v) in configs {
        change = change.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(OP_TIMEOUT));
    for r in admin
        .alter_configs([&change], &opts)
        .await
        .context("AlterConfigs")?
    {
        r.map_err(|(_, code)| anyhow!("altering the config of {topic} on {bootstrap}: {code}"))?;
    }
    Ok(())
}

/// The configs set on `topic` itself (not broker defaults), by name.
pub async fn topic_configs(
    bootstrap: &str,
    topic: &str,
) -> Result<std::collections::BTreeMap<String, String>> {
    let admin = admin(bootstrap)?;
    let opts = AdminOptions::new().request_timeout(Some(OP_TIMEOUT));
    let res = admin
        .describe_configs([&rdkafka::admin::ResourceSpecifier::Topic(topic)], &opts)
        .await
        .context("DescribeConfigs")?;
    let c = res
        .into_iter()
        .next()
        .context("no DescribeConfigs result")?
        .map_err(|code| anyhow!("describing the configs of {topic} on {bootstrap}: {code}"))?;
    Ok(c.entries
        .into_iter()
        .filter(|e| e.source == rdkafka::admin::ConfigSource::DynamicTopic)
        .filter_map(|e| Some((e.name, e.value?)))
        .collect())
}

/// Grows `topic` to `partitions` partitions.
pub async fn create_partitions(bootstrap: &str, topic: &str, partitions: usize) -> Result<()> {
    let admin = admin(bootstrap)?;
    let opts = AdminOptions::new().operation_timeout(Some(OP_TIMEOUT));
    for r in admin
        .create_partitions(
            [&rdkafka::admin::NewPartitions::new(topic, partitions)],
            &opts,
        )
        .await
        .context("CreatePartitions")?
    {
        r.map_err(|(_, code)| anyhow!("adding partitions to {topic} on {bootstrap}: {code}"))?;
    }
    Ok(())
}

/// Deletes the records of `topic` before the given offset of each partition (Kafka's
/// DeleteRecords, what retention does, but exact and now): `(partition, before)`. Returns the
/// new log start offset (low watermark) of each partition, in input order.
pub async fn delete_records(
    bootstrap: &str,
    topic: &str,
    before: &[(i32, i64)],
) -> Result<Vec<(i32, i64)>> {
    let admin = admin(bootstrap)?;
    let mut tpl = TopicPartitionList::new();
    for &(p, o) in before {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))?;
    }
    let opts = AdminOptions::new().operation_timeout(Some(OP_TIMEOUT));
    let result = admin
        .delete_records(&tpl, &opts)
        .await
        .context("DeleteRecords")?;
    before
        .iter()
        .map(|&(p, _)| {
            let e = result
                .find_partition(topic, p)
                .with_context(|| format!("DeleteRecords: no result for {topic}/{p}"))?;
            e.error()
                .with_context(|| format!("deleting records of {topic}/{p} on {bootstrap}"))?;
            match e.offset() {
                Offset::Offset(low) => Ok((p, low)),
                other => bail!("DeleteRecords of {topic}/{p}: low watermark {other:?}"),
            }
        })
        .collect()
}

/// Names of all topics except internal ones (`__consumer_offsets`, `__transaction_state`, ...),
/// sorted.
pub async fn list_topics(bootstrap: &str) -> Result<Vec<String>> {
    let bootstrap = bootstrap.to_string();
    blocking(move || {
        let consumer: BaseConsumer = config(&bootstrap).create()?;
        let md = consumer.fetch_metadata(None, OP_TIMEOUT)?;
        let mut names: Vec<String> = md
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|n| !n.starts_with("__"))
            .collect();
        names.sort();
        Ok(names)
    })
    .await
}

/// The cluster id reported by `bootstrap` (distinct per [`crate::kafka::KafkaNode`]).
pub async fn cluster_id(bootstrap: &str) -> Result<String> {
    let bootstrap = bootstrap.to_string();
    blocking(move || {
        let consumer: BaseConsumer = config(&bootstrap).create()?;
        consumer
            .client()
            .fetch_cluster_id(OP_TIMEOUT)
            .with_context(|| format!("no cluster id from {bootstrap}"))
    })
    .await
}

/// Partition ids of `topic`, sorted.
pub async fn partition_ids(bootstrap: &str, topic: &str) -> Result<Vec<i32>> {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    blocking(move || {
        let consumer: BaseConsumer = config(&bootstrap).create()?;
        let md = consumer.fetch_metadata(Some(&topic), OP_TIMEOUT)?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .context("topic not in metadata")?;
        if let Some(e) = t.error() {
            bail!("metadata for {topic} on {bootstrap}: {e:?}");
        }
        let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        ids.sort_unstable();
        Ok(ids)
    })
    .await
}

/// Low and high watermark of one partition. `high` is the log end offset (includes uncommitted
/// transactional records and control markers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
}

/// Watermarks of every partition of `topic`, by partition.
pub async fn watermarks(bootstrap: &str, topic: &str) -> Result<Vec<Watermarks>> {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    blocking(move || {
        let consumer: BaseConsumer = config(&bootstrap).create()?;
        let md = consumer.fetch_metadata(Some(&topic), OP_TIMEOUT)?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .context("topic not in metadata")?;
        if let Some(e) = t.error() {
            bail!("metadata for {topic}: {e:?}");
        }
        let mut out = Vec::new();
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(&topic, p.id(), OP_TIMEOUT)?;
            out.push(Watermarks {
                partition: p.id(),
                low,
                high,
            });
        }
        out.sort_by_key(|w| w.partition);
        Ok(out)
    })
    .await
}

/// High watermarks (log end offsets) of every partition of `topic`: `(partition, end)`.
pub async fn end_offsets(bootstrap: &str, topic: &str) -> Result<Vec<(i32, i64)>> {
    Ok(watermarks(bootstrap, topic)
        .await?
        .into_iter()
        .map(|w| (w.partition, w.high))
        .collect())
}

/// A record to produce. `None` key / value / header value means null, `Some(vec![])` empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRecord {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// In order; repeated keys allowed.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Create time in ms since the epoch; `None` lets the producer stamp it.
    pub timestamp: Option<i64>,
    /// Explicit partition; `None` uses the default partitioner (by key).
    pub partition: Option<i32>,
}

impl NewRecord {
    /// A record with this key and value (both non-null).
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        NewRecord {
            key: Some(key.into()),
            value: Some(value.into()),
            ..Default::default()
        }
    }

    /// Adds a header (`None` = null value).
    pub fn header(mut self, key: impl Into<String>, value: Option<&[u8]>) -> Self {
        self.headers.push((key.into(), value.map(<[u8]>::to_vec)));
        self
    }

    /// Sets the create timestamp (ms).
    pub fn timestamp(mut self, ms: i64) -> Self {
        self.timestamp = Some(ms);
        self
    }

    /// Sets the partition.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }
}

/// A producer for `bootstrap`: idempotent, `acks=all`, `linger.ms=5`, plus `extra` settings
/// (e.g. `[("transactional.id", "...")]`, `[("compression.type", "zstd")]`).
pub fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> Result<FutureProducer> {
    let mut c = config(bootstrap);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().context("creating producer")
}

/// Sends `records` to `topic` with many in flight (enqueue all, then await the deliveries;
/// waits on the oldest delivery when librdkafka's queue is full). Returns `(partition, offset)`
/// of each record, in input order.
pub async fn send_all(
    producer: &FutureProducer,
    topic: &str,
    records: &[NewRecord],
) -> Result<Vec<(i32, i64)>> {
    let mut results: Vec<Option<(i32, i64)>> = vec![None; records.len()];
    let mut pending = VecDeque::new();
    for (i, r) in records.iter().enumerate() {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(k) = &r.key {
            fr = fr.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            fr = fr.payload(v.as_slice());
        }
        if let Some(ts) = r.timestamp {
            fr = fr.timestamp(ts);
        }
        if let Some(p) = r.partition {
            fr = fr.partition(p);
        }
        loop {
            match producer.send_result(fr) {
                Ok(delivery) => {
                    pending.push_back((i, delivery));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    fr = back;
                    match pending.pop_front() {
                        Some((j, d)) => results[j] = Some(delivered(d.await)?),
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                Err((e, _)) => {
                    return Err(e).with_context(|| format!("enqueueing record {i} to {topic}"));
                }
            }
        }
    }
    for (j, d) in pending {
        results[j] = Some(delivered(d.await)?);
    }
    Ok(results
        .into_iter()
        .map(|r| r.expect("every record delivered"))
        .collect())
}

fn delivered(
    r: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> Result<(i32, i64)> {
    match r {
        Ok(Ok(d)) => Ok((d.partition, d.offset)),
        Ok(Err((e, _))) => Err(e).context("delivery failed"),
        Err(_) => bail!("producer dropped before delivery"),
    }
}

/// Produces `records` to `topic` with a fresh idempotent producer, waits for all deliveries.
pub async fn produce(
    bootstrap: &str,
    topic: &str,
    records: &[NewRecord],
) -> Result<Vec<(i32, i64)>> {
    let p = producer(bootstrap, &[])?;
    send_all(&p, topic, records).await
}

/// A transactional producer with `init_transactions` done.
pub async fn transactional_producer(
    bootstrap: &str,
    transactional_id: &str,
) -> Result<FutureProducer> {
    let p = producer(bootstrap, &[("transactional.id", transactional_id)])?;
    let p2 = p.clone();
    blocking(move || Ok(p2.init_transactions(OP_TIMEOUT)?))
        .await
        .context("init_transactions")?;
    Ok(p)
}

/// Produces `records` in ONE transaction with a fresh transactional producer (unique
/// transactional id), then commits it (`commit = true`) or aborts it. Returns the offsets.
pub async fn produce_transactional(
    bootstrap: &str,
    topic: &str,
    records: &[NewRecord],
    commit: bool,
) -> Result<Vec<(i32, i64)>> {
    let p = transactional_producer(bootstrap, &crate::unique_name("er-tests-tx")).await?;
    p.begin_transaction()?;
    let offsets = send_all(&p, topic, records).await?;
    let p2 = p.clone();
    blocking(move || {
        if commit {
            p2.commit_transaction(OP_TIMEOUT)
                .context("commit_transaction")
        } else {
            p2.abort_transaction(OP_TIMEOUT)
                .context("abort_transaction")
        }
    })
    .await?;
    Ok(offsets)
}

/// A consumed record, owned. `None` = null, `Some(vec![])` = empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Timestamp and its type (`CreateTime` / `LogAppendTime`).
    pub timestamp: Timestamp,
}

impl Record {
    /// The value of the first header named `name`, as text (lossy), if it has one.
    pub fn header_text(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn from_message<M: Message>(m: &M) -> Record {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Record {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp: m.timestamp(),
        }
    }

    /// Timestamp in ms, whatever its type.
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp.to_millis()
    }
}

/// Which records a consumer sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Only committed transactional records (and all non-transactional ones).
    ReadCommitted,
    /// Everything, including open and aborted transactions.
    ReadUncommitted,
}

/// How long a count check keeps reading after it saw the records it expected and reached the end
/// of every partition, so that a duplicate committed just after them is counted too. A replicator
/// that resends a batch after a reconnect commits the copy within a transaction or two (well
/// under a second on loopback); a check that stopped at the expected count would pass with the
/// duplicate in place of a missing record, or with it just behind the end.
pub const SETTLE: Duration = Duration::from_secs(2);

/// When [`consume`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Once at least this many records were read, every partition reached its end and nothing
    /// more arrived for [`SETTLE`] (or at the timeout). So a duplicate shows as one record too
    /// many: compare the length with exactly what you expected.
    Count(usize),
    /// Once every partition reached its end (the last stable offset under read_committed), or
    /// at the timeout.
    End,
}

/// Reads `topic` from the beginning of every partition (assign, no consumer group), until
/// `until` or `timeout`, and returns the records sorted by (partition, offset). Reaching the
/// timeout is not an error: compare the length with what you expected.
pub async fn consume(
    bootstrap: &str,
    topic: &str,
    isolation: Isolation,
    until: Until,
    timeout: Duration,
) -> Result<Vec<Record>> {
    let consumer: StreamConsumer = config(bootstrap)
        .set("group.id", crate::unique_name("er-tests-consume"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set(
            "isolation.level",
            match isolation {
                Isolation::ReadCommitted => "read_committed",
                Isolation::ReadUncommitted => "read_uncommitted",
            },
        )
        .create()
        .context("creating consumer")?;
    let deadline = tokio::time::Instant::now() + timeout;
    let ids = partition_ids(bootstrap, topic).await?;
    let mut tpl = TopicPartitionList::new();
    for &p in &ids {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut at_end = vec![false; ids.len()];
    let mut out = Vec::new();
    // Under `Count`, the end of the settle period once the count was reached at the end of every
    // partition; a record arriving after that restarts it (a topic that keeps growing still ends
    // at the timeout plus one settle period).
    let mut settle_until: Option<tokio::time::Instant> = None;
    loop {
        let all_at_end = at_end.iter().all(|&e| e);
        let wait_until = match until {
            Until::Count(n) if out.len() >= n && all_at_end => (*settle_until
                .get_or_insert_with(|| tokio::time::Instant::now() + SETTLE))
            .min(deadline + SETTLE),
            Until::End if all_at_end => break,
            _ => deadline,
        };
        let msg = match tokio::time::timeout_at(wait_until, consumer.recv()).await {
            Err(_) => break,
            Ok(m) => m,
        };
        match msg {
            Ok(m) => {
                settle_until = None;
                if let Some(i) = ids.iter().position(|&p| p == m.partition()) {
                    at_end[i] = false;
                }
                out.push(Record::from_message(&m));
            }
            Err(KafkaError::PartitionEOF(p)) => {
                if let Some(i) = ids.iter().position(|&id| id == p) {
                    at_end[i] = true;
                }
            }
            Err(e) => return Err(e).context("consuming"),
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}

/// [`consume`] with read_committed until at least `expected` records, the end of every
/// partition and [`SETTLE`] without more (or `timeout`). Returns everything read, duplicates
/// included: assert the exact count.
pub async fn consume_all(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Result<Vec<Record>> {
    consume(
        bootstrap,
        topic,
        Isolation::ReadCommitted,
        Until::Count(expected),
        timeout,
    )
    .await
}

/// [`consume`] with read_committed until the end of every partition (at most `timeout`).
pub async fn consume_to_end(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<Record>> {
    consume(
        bootstrap,
        topic,
        Isolation::ReadCommitted,
        Until::End,
        timeout,
    )
    .await
}

/// Reads `topic` to its end (read_committed) again and again until it holds at least `total`
/// records or `timeout` passed; once it does, waits [`SETTLE`] and reads it once more, so a
/// duplicate committed just after the last expected record is in the result too. Returns what
/// the last read got (a read that fails counts as empty): assert the exact count.
pub async fn wait_for_count(
    bootstrap: &str,
    topic: &str,
    total: usize,
    timeout: Duration,
) -> Vec<Record> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let got = consume_to_end(bootstrap, topic, Duration::from_secs(60))
            .await
            .unwrap_or_default();
        if got.len() >= total {
            tokio::time::sleep(SETTLE).await;
            return consume_to_end(bootstrap, topic, Duration::from_secs(60))
                .await
                .unwrap_or(got);
        }
        if std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
