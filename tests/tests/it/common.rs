//! Small helpers shared by several test modules of this binary.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use er_protocol::TopicPartition;
use er_tests::client::{self, NewRecord};
use er_tests::{delivery, unique_name};
use rand::Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// `TopicPartition::new`, short for tables of partitions.
pub fn tp(topic: &str, partition: i32) -> TopicPartition {
    TopicPartition::new(topic, partition)
}

/// Runs blocking `f` (a JVM, a synchronous rdkafka call) off the test's runtime. Panics if `f`
/// panicked.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

/// Record `seq` of partition `partition`: key = the sequence number, value = the sequence
/// number followed by `pad` random (incompressible) bytes.
pub fn record(partition: i32, seq: i64, pad: usize) -> NewRecord {
    let mut value = format!("{seq:012}").into_bytes();
    let start = value.len();
    value.resize(start + pad, 0);
    rand::rng().fill(&mut value[start..]);
    NewRecord::new(seq.to_string(), value).partition(partition)
}

/// Produces sequence numbers `seqs` to `partition` and checks they landed at offsets equal to
/// their sequence numbers (fresh topic, no transactions), so expectations can name offsets.
pub async fn produce_seqs(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    partition: i32,
    seqs: std::ops::Range<i64>,
    pad: usize,
) -> anyhow::Result<()> {
    let recs: Vec<NewRecord> = seqs.clone().map(|s| record(partition, s, pad)).collect();
    let at = client::send_all(producer, topic, &recs).await?;
    let want: Vec<(i32, i64)> = seqs.map(|s| (partition, s)).collect();
    anyhow::ensure!(
        at == want,
        "records of {topic}/{partition} not at their offsets"
    );
    Ok(())
}

/// Sequence numbers (record keys) per partition of `topic`, read_committed from the beginning,
/// once at least `expected` records are there, every partition was read to its end and nothing
/// more arrived for [`client::SETTLE`] (so a duplicate committed just after the last expected
/// record shows too), or at the timeout. Keeps only the keys: the values may be large.
pub async fn read_seqs(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> anyhow::Result<delivery::Seqs> {
    let deadline = Instant::now() + timeout;
    while client::partition_ids(bootstrap, topic).await.is_err() {
        if Instant::now() > deadline {
            return Ok(BTreeMap::new());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ids = client::partition_ids(bootstrap, topic).await?;
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = client::config(&bootstrap)
            .set("group.id", unique_name("outage-reader"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for &p in &ids {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        c.assign(&tpl)?;
        let mut at_end: BTreeMap<i32, bool> = ids.iter().map(|&p| (p, false)).collect();
        let mut out: BTreeMap<i32, Vec<i64>> = ids.iter().map(|&p| (p, Vec::new())).collect();
        let mut total = 0;
        // Once the count is reached at the end of every partition: the end of the settle
        // period, restarted by any record that still arrives.
        let mut settle_until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if total >= expected && at_end.values().all(|&e| e) {
                let until = *settle_until.get_or_insert(now + client::SETTLE);
                if now >= until.min(deadline + client::SETTLE) {
                    break;
                }
            } else if now >= deadline {
                break;
            }
            match c.poll(Duration::from_millis(200)) {
                None => {}
                Some(Ok(m)) => {
                    let key = std::str::from_utf8(m.key().unwrap_or_default())?;
                    out.entry(m.partition()).or_default().push(key.parse()?);
                    at_end.insert(m.partition(), false);
                    settle_until = None;
                    total += 1;
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p, true);
                }
                Some(Err(e)) => return Err(e.into()),
            }
        }
        Ok(out)
    })
    .await?
}

/// The keys (`k<n>`: n) of `topic`'s records in partition order, read_committed, once
/// `expected` are there (or at the timeout: what was there).
pub async fn read_seqs_by_key(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<i64>> {
    let deadline = Instant::now() + timeout;
    while client::partition_ids(bootstrap, topic).await.is_err() {
        if Instant::now() > deadline {
            return Ok(Vec::new());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let left = deadline.saturating_duration_since(Instant::now());
    let records = client::consume_all(bootstrap, topic, expected, left).await?;
    Ok(records
        .iter()
        .filter_map(|r| {
            let key = std::str::from_utf8(r.key.as_deref()?).ok()?;
            key.strip_prefix('k')?.parse().ok()
        })
        .collect())
}
