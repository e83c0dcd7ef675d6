//! Transactional writer of one site into one central cluster: records and positions commit together.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use er_protocol::{Batch, Position, ReplicationPolicy, TimestampType, TopicPartition};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tokio::sync::mpsc;

use crate::config::ClusterConfig;
use crate::kafka::{KafkaOpError, TopicManager, client_config, positions_topic, read_positions};

type TxProducer = ThreadedProducer<DefaultProducerContext>;

/// Why a batch was not written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The batch itself is unusable (bad records, forbidden topic); the agent is at fault.
    #[error("bad batch for {tp}: {message}")]
    BadBatch {
        /// Source partition of the batch.
        tp: TopicPartition,
        /// What is wrong.
        message: String,
    },
    /// Another writer with the same transactional.id took over this site (a second hub).
    #[error("writer for site {site:?} on cluster {cluster:?} was fenced by a newer one: {message}")]
    Fenced {
        /// The site.
        site: String,
        /// The cluster alias.
        cluster: String,
        /// Kafka's message.
        message: String,
    },
    /// The central cluster failed the transaction; nothing of it is visible.
    #[error("cluster {cluster:?}: transaction failed: {message}")]
    Kafka {
        /// The cluster alias.
        cluster: String,
        /// What failed.
        message: String,
    },
    /// The writer stopped (shut down or failed earlier).
    #[error("writer stopped")]
    Stopped,
}

/// A batch handed to a writer, with the channel its outcome is reported on after commit.
#[derive(Debug)]
pub struct WriteJob {
    /// The batch as received from the agent.
    pub batch: Batch,
    /// Receives the outcome after the transaction holding the batch committed or failed.
    /// Outcomes arrive in submission order, which keeps acks in order per partition.
    pub reply: mpsc::UnboundedSender<Completion>,
}

/// Outcome of one batch.
#[derive(Debug)]
pub struct Completion {
    /// Source partition of the batch.
    pub tp: TopicPartition,
    /// Sequence number of the batch.
    pub seq: u64,
    /// Position after the batch.
    pub next_offset: i64,
    /// Ok once committed.
    pub result: Result<(), WriteError>,
}

impl WriteJob {
    fn complete(self, result: Result<(), WriteError>) {
        let h = self.batch.header;
        // The session may be gone already; then nobody waits for the outcome.
        let _ = self.reply.send(Completion {
            tp: h.tp,
            seq: h.seq,
            next_offset: h.next_offset,
            result,
        });
    }
}

/// What a writer needs besides its cluster.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Site alias (from the certificate).
    pub site: String,
    /// Group id shared by hubs that can take over each other's sites.
    pub group_id: String,
    /// Remote topic naming.
    pub policy: ReplicationPolicy,
    /// Upper bound of uncompressed batch bytes.
    pub max_uncompressed_bytes: u32,
    /// Bytes of records grouped into one transaction.
    pub max_transaction_bytes: u64,
    /// Queue length in batches.
    pub queue_batches: usize,
}

/// Handle of a running writer thread.
#[derive(Debug)]
pub struct SiteWriter {
    tx: mpsc::Sender<WriteJob>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SiteWriter {
    /// Queues a batch; waits while the writer's queue is full (backpressure to the link).
    pub async fn submit(&self, job: WriteJob) -> Result<(), WriteError> {
        self.tx.send(job).await.map_err(|_| WriteError::Stopped)
    }
}

impl Drop for SiteWriter {
    fn drop(&mut self) {
        // Closing the queue ends the thread after its current transaction; do not block the
        // executor waiting for it.
        drop(self.thread.take());
    }
}

/// The transactional.id of a site's writer on a cluster: identical on every hub of the group, so
/// a hub that takes a site over fences the previous one.
pub fn transactional_id(group_id: &str, site: &str, cluster: &str) -> String {
    format!("{group_id}-{site}-{cluster}")
}

/// Starts a writer: creates the transactional producer (fencing any older writer of this site),
/// then reads the site's committed positions. Blocking; run it off the executor.
pub fn start(
    rt: tokio::runtime::Handle,
    cluster: &ClusterConfig,
    topics: Arc<TopicManager>,
    settings: WriterSettings,
) -> Result<(SiteWriter, Vec<Position>), KafkaOpError> {
    let txn_id = transactional_id(&settings.group_id, &settings.site, &cluster.alias);
    let kerr = |what: &'static str| {
        let cluster = cluster.alias.clone();
        move |source| KafkaOpError::Kafka {
            cluster,
            what: what.to_owned(),
            source: Box::new(source),
        }
    };
    let producer: TxProducer = client_config(cluster)
        .set("transactional.id", &txn_id)
        .set("enable.idempotence", "true")
        .set(
            "transaction.timeout.ms",
            cluster.transaction_timeout_ms.to_string(),
        )
        .set("linger.ms", "5")
        .set("batch.size", "1048576")
        .set("queue.buffering.max.kbytes", "65536")
        .create()
        .map_err(kerr("creating transactional producer"))?;
    producer
        .init_transactions(Duration::from_secs(60))
        .map_err(kerr("initialising transactions (fencing older writers)"))?;
    let ptopic = positions_topic(&settings.site);
    topics.ensure(&rt, &ptopic, 1, &[("cleanup.policy", "compact")])?;
    let positions = read_positions(cluster, &settings.site)?;
    tracing::info!(site = %settings.site, cluster = %cluster.alias, transactional_id = %txn_id, positions = positions.len(), "site writer ready");
    let (tx, rx) = mpsc::channel(settings.queue_batches);
    let mut w = Writer {
        rt,
        producer,
        topics,
        cluster: cluster.alias.clone(),
        positions_topic: ptopic,
        settings,
        dest_cache: HashMap::new(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("writer-{}-{}", w.settings.site, w.cluster))
        .spawn(move || w.run(rx))
        .expect("spawning a writer thread");
    Ok((
        SiteWriter {
            tx,
            thread: Some(thread),
        },
        positions,
    ))
}

struct Writer {
    rt: tokio::runtime::Handle,
    producer: TxProducer,
    topics: Arc<TopicManager>,
    cluster: String,
    positions_topic: String,
    settings: WriterSettings,
    /// Logical topic -> remote topic, validated once.
    dest_cache: HashMap<String, String>,
}

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<WriteJob>) {
        while let Some(first) = rx.blocking_recv() {
            let mut bytes = first.batch.header.uncompressed_len as u64;
            let mut jobs = vec![first];
            while bytes < self.settings.max_transaction_bytes {
                match rx.try_recv() {
                    Ok(j) => {
                        bytes += j.batch.header.uncompressed_len as u64;
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            let result = self.write_transaction(&jobs);
            match &result {
                Ok(records) => {
                    tracing::debug!(site = %self.settings.site, cluster = %self.cluster, batches = jobs.len(), records, elapsed_ms = started.elapsed().as_millis() as u64, "transaction committed")
                }
                Err(e) => {
                    tracing::warn!(site = %self.settings.site, cluster = %self.cluster, batches = jobs.len(), error = %e, "transaction failed; nothing of it is visible")
                }
            }
            let outcome = result.map(|_| ());
            for j in jobs {
                j.complete(outcome.clone());
            }
            if outcome.is_err() {
                // The session is torn down on any failure; the agent reconnects and resumes from
                // the committed positions, so nothing is retried here. What was queued behind
                // the failed transaction would be out of order: refuse it.
                rx.close();
                while let Ok(j) = rx.try_recv() {
                    j.complete(Err(WriteError::Stopped));
                }
                return;
            }
        }
    }

    fn txn_error(&self, what: &str, e: KafkaError) -> WriteError {
        let fenced = matches!(&e, KafkaError::Transaction(r) if r.is_fatal() || r.code() == RDKafkaErrorCode::ProducerFenced || r.code() == RDKafkaErrorCode::InvalidProducerEpoch);
        if fenced {
            WriteError::Fenced {
                site: self.settings.site.clone(),
                cluster: self.cluster.clone(),
                message: format!("{what}: {e}"),
            }
        } else {
            WriteError::Kafka {
                cluster: self.cluster.clone(),
                message: format!("{what}: {e}"),
            }
        }
    }

    /// Writes all jobs and their positions in one transaction; returns the records written.
    fn write_transaction(&mut self, jobs: &[WriteJob]) -> Result<u64, WriteError> {
        let mut decoded = Vec::with_capacity(jobs.len());
        for j in jobs {
            let b = &j.batch;
            let recs = b
                .decode_records(self.settings.max_uncompressed_bytes)
                .map_err(|e| WriteError::BadBatch {
                    tp: b.header.tp.clone(),
                    message: e.to_string(),
                })?;
            decoded.push(recs);
        }
        self.producer
            .begin_transaction()
            .map_err(|e| self.txn_error("begin", e))?;
        match self.produce_all(jobs, &decoded) {
            Ok(n) => {
                let timeout = Duration::from_secs(60);
                if let Err(e) = self.producer.commit_transaction(timeout) {
                    let err = self.txn_error("commit", e);
                    self.abort();
                    return Err(err);
                }
                Ok(n)
            }
            Err(err) => {
                self.abort();
                Err(err)
            }
        }
    }

    fn abort(&self) {
        if let Err(e) = self.producer.abort_transaction(Duration::from_secs(30)) {
            tracing::warn!(site = %self.settings.site, cluster = %self.cluster, error = %e, "abort failed");
        }
    }

    fn dest_topic(
        &mut self,
        source_tp: &TopicPartition,
        logical: &str,
    ) -> Result<String, WriteError> {
        if let Some(d) = self.dest_cache.get(logical) {
            return Ok(d.clone());
        }
        let bad = |message: String| WriteError::BadBatch {
            tp: source_tp.clone(),
            message,
        };
        er_protocol::validate_topic_name(logical).map_err(|e| bad(e.to_string()))?;
        if er_protocol::is_internal_topic(logical) {
            return Err(bad(format!(
                "topic {logical:?} is internal and is never replicated"
            )));
        }
        let dest = self
            .settings
            .policy
            .remote_topic(&self.settings.site, logical);
        er_protocol::validate_topic_name(&dest).map_err(|e| bad(e.to_string()))?;
        self.dest_cache.insert(logical.to_owned(), dest.clone());
        Ok(dest)
    }

    fn produce_all(
        &mut self,
        jobs: &[WriteJob],
        decoded: &[er_protocol::DecodedRecords],
    ) -> Result<u64, WriteError> {
        let mut count = 0u64;
        let mut last_positions: HashMap<&TopicPartition, i64> = HashMap::new();
        for (job, recs) in jobs.iter().zip(decoded) {
            let h = &job.batch.header;
            let default_dest = self.dest_topic(&h.tp, &h.tp.topic)?;
            self.ensure(&h.tp, &default_dest, h.partition_count)?;
            for rec in recs.iter() {
                let rec = rec.map_err(|e| WriteError::BadBatch {
                    tp: h.tp.clone(),
                    message: e.to_string(),
                })?;
                let dest = match rec.topic {
                    Some(t) => {
                        let d = self.dest_topic(&h.tp, t)?;
                        self.ensure(&h.tp, &d, h.partition_count)?;
                        d
                    }
                    None => default_dest.clone(),
                };
                let partition = rec.partition.unwrap_or(h.tp.partition);
                if partition < 0 {
                    return Err(WriteError::BadBatch {
                        tp: h.tp.clone(),
                        message: format!("negative destination partition {partition}"),
                    });
                }
                if partition >= h.partition_count {
                    self.ensure(&h.tp, &dest, partition + 1)?;
                }
                let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
                for (k, v) in rec.headers.iter() {
                    headers = headers.insert(Header { key: k, value: v });
                }
                let mut r: BaseRecord<'_, [u8], [u8]> =
                    BaseRecord::to(&dest).partition(partition).headers(headers);
                if let Some(k) = rec.key {
                    r = r.key(k);
                }
                if let Some(v) = rec.value {
                    r = r.payload(v);
                }
                if rec.timestamp_type != TimestampType::NotAvailable {
                    r = r.timestamp(rec.timestamp);
                }
                self.send(r)?;
                count += 1;
            }
            last_positions.insert(&h.tp, h.next_offset);
        }
        for (tp, next) in last_positions {
            let key = crate::kafka::position_key(tp);
            let value = crate::kafka::position_value(next);
            let r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.positions_topic)
                .partition(0)
                .key(key.as_slice())
                .payload(&value[..]);
            self.send(r)?;
        }
        Ok(count)
    }

    fn ensure(&self, tp: &TopicPartition, topic: &str, partitions: i32) -> Result<(), WriteError> {
        self.topics
            .ensure(&self.rt, topic, partitions, &[])
            .map_err(|e| WriteError::Kafka {
                cluster: self.cluster.clone(),
                message: format!("destination of {tp}: {e}"),
            })
    }

    fn send(&self, mut r: BaseRecord<'_, [u8], [u8]>) -> Result<(), WriteError> {
        loop {
            match self.producer.send(r) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is bounded; wait for deliveries to free room.
                    self.producer.poll(Duration::from_millis(5));
                    r = back;
                }
                Err((e, _)) => return Err(self.txn_error("produce", e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactional_id_is_the_same_on_every_hub_of_a_group() {
        assert_eq!(
            transactional_id("edge-replicator", "plant7", "central"),
            "edge-replicator-plant7-central"
        );
    }
}
