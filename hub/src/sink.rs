//! Transactional writer of one site into one central cluster: records, positions and their offset index commit together.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use er_protocol::{Batch, Position, ReplicationPolicy, TimestampType, TopicPartition};
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use tokio::sync::{mpsc, oneshot};

use crate::config::{ClusterConfig, Validated};
use crate::kafka::{
    KafkaOpError, TopicManager, client_config, offset_index_topic, positions_topic, read_positions,
    rebuild_offset_index,
};
use crate::offsets::{self, EntriesBuilder, OffsetIndex, SharedOffsetIndex};

/// Polled by the writer thread itself (see [`Writer::drain`]), never by a background thread, so
/// delivery reports are served the moment the writer waits for them.
type TxProducer = BaseProducer<Deliveries>;

/// How often an idle writer serves its producer's events (errors, logs).
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Pause between looks for delivery reports while records are in flight: what a report may
/// wait beyond its arrival.
const REPORT_PAUSE: Duration = Duration::from_micros(200);

/// How long a flush, a commit or waiting for delivery reports may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(60);

/// Default time budget for rebuilding a site's offset index when its writer starts. The agent
/// waits 90 s for its welcome, which also covers fencing and reading positions.
pub const DEFAULT_OFFSET_INDEX_REBUILD_TIMEOUT: Duration = Duration::from_secs(45);

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
    /// Runs kept per (source, destination) partition pair in the offset index.
    pub offset_index_max_entries: usize,
    /// `retention.ms` of the offset index topic, applied when the hub creates it.
    pub offset_index_retention_ms: u64,
    /// Time budget for rebuilding the offset index at start; past it the writer starts with an
    /// empty index (older offsets then answer "too old", never a wrong offset).
    pub offset_index_rebuild_timeout: Duration,
}

impl WriterSettings {
    /// Settings of `site`'s writers from the hub configuration.
    pub fn new(site: &str, cfg: &Validated) -> Self {
        let l = &cfg.raw.limits;
        Self {
            site: site.to_owned(),
            group_id: cfg.raw.group_id.clone(),
            policy: cfg.policy.clone(),
            max_uncompressed_bytes: l.max_uncompressed_bytes,
            max_transaction_bytes: l.max_transaction_bytes,
            queue_batches: l.writer_queue_batches,
            offset_index_max_entries: l.offset_index_max_entries_per_partition,
            offset_index_retention_ms: l.offset_index_retention_ms,
            offset_index_rebuild_timeout: DEFAULT_OFFSET_INDEX_REBUILD_TIMEOUT,
        }
    }
}

/// What a writer thread is asked to do, in queue order.
enum Msg {
    Write(WriteJob),
    /// Report the committed positions once everything queued before is committed (or failed).
    Positions(oneshot::Sender<Vec<Position>>),
}

/// Handle of a running writer thread.
#[derive(Debug)]
pub struct SiteWriter {
    tx: mpsc::Sender<Msg>,
    thread: Option<std::thread::JoinHandle<()>>,
    index: SharedOffsetIndex,
}

impl SiteWriter {
    /// Queues a batch; waits while the writer's queue is full (backpressure to the link).
    pub async fn submit(&self, job: WriteJob) -> Result<(), WriteError> {
        self.tx
            .send(Msg::Write(job))
            .await
            .map_err(|_| WriteError::Stopped)
    }

    /// The committed positions after everything queued so far has committed, straight from the
    /// writer's memory; `None` when the writer stopped (a failed transaction ends it). This is
    /// what lets a site that reconnects to the same hub skip fencing and re-reading positions.
    pub async fn positions(&self) -> Option<Vec<Position>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Positions(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Asks for [`positions`](Self::positions) without waiting for room in the queue (`None`
    /// if it is full or the writer stopped): for a look at a parked writer from code that must
    /// not wait behind a busy one.
    pub fn request_positions(&self) -> Option<oneshot::Receiver<Vec<Position>>> {
        let (tx, rx) = oneshot::channel();
        self.tx.try_send(Msg::Positions(tx)).ok()?;
        Some(rx)
    }

    /// False once the writer thread ended.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }

    /// The site's offset index on this cluster: rebuilt when the writer started, updated after
    /// every commit. It stays readable after the writer stopped, but then withholds end-offset
    /// answers; a new session builds a new one.
    pub fn offset_index(&self) -> &SharedOffsetIndex {
        &self.index
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

/// Delivery reports of the open transaction: the destination offset of every record sent, so
/// the offset index is built from what Kafka assigned rather than from guesses.
///
/// A delivery opaque packs the transaction's generation (high 32 bits) and the record's index
/// in send order (low 32 bits); reports of an older generation (an aborted transaction's purged
/// messages) are ignored.
#[derive(Debug, Default)]
struct Deliveries {
    state: Mutex<DeliveryState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct DeliveryState {
    generation: u32,
    /// Destination offset per record in send order; -1 until delivered.
    offsets: Vec<i64>,
    missing: usize,
    error: Option<String>,
}

/// Index of records whose offset is not needed (positions, index records).
const UNTRACKED: usize = u32::MAX as usize;
const _: () = assert!(
    usize::BITS >= 64,
    "delivery opaques pack a generation and an index"
);

fn opaque(generation: u32, index: usize) -> usize {
    ((generation as usize) << 32) | (index & UNTRACKED)
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (generation, index) = ((opaque >> 32) as u32, opaque & UNTRACKED);
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if st.generation != generation {
            return;
        }
        match result {
            Ok(_) if index == UNTRACKED => {}
            Ok(m) => {
                let offset = m.offset();
                match st.offsets.get_mut(index) {
                    Some(slot) if *slot < 0 && offset >= 0 => {
                        *slot = offset;
                        st.missing -= 1;
                    }
                    _ => {
                        st.error.get_or_insert_with(|| {
                            format!(
                                "unexpected delivery report #{index} for {}/{} at offset {offset}",
                                m.topic(),
                                m.partition()
                            )
                        });
                    }
                }
            }
            Err((e, m)) => {
                st.error.get_or_insert_with(|| {
                    format!("delivery to {}/{} failed: {e}", m.topic(), m.partition())
                });
            }
        }
        drop(st);
        self.changed.notify_all();
    }
}

impl Deliveries {
    /// Starts a transaction of `records` tracked records; returns its generation.
    fn begin(&self, records: usize) -> u32 {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.generation = st.generation.wrapping_add(1);
        st.offsets.clear();
        st.offsets.resize(records, -1);
        st.missing = records;
        st.error = None;
        st.generation
    }

    /// Waits until every tracked record was delivered; returns their offsets in send order.
    /// After a successful flush all reports are in, so this normally returns at once.
    fn wait(&self, timeout: Duration) -> Result<Vec<i64>, String> {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(e) = st.error.take() {
                return Err(e);
            }
            if st.missing == 0 {
                return Ok(std::mem::take(&mut st.offsets));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "{} delivery reports missing after {timeout:?}",
                    st.missing
                ));
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Starts a writer: creates the transactional producer (fencing any older writer of this site),
/// reads the site's committed positions and rebuilds its offset index. Blocking; run it off the
/// executor.
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
        // A transaction begun right after the previous commit gets CONCURRENT_TRANSACTIONS until
        // the coordinator has written the markers (tens of ms); librdkafka retries that after
        // `retry.backoff.ms`, 100 ms by default, which floored every transaction at 200-300 ms
        // and end-to-end latency at seconds under a steady trickle (KAFKA-5477: the Java client
        // uses 20 ms for this retry).
        .set("retry.backoff.ms", "10")
        .set("batch.size", "1048576")
        .set("queue.buffering.max.kbytes", "65536")
        .create_with_context(Deliveries::default())
        .map_err(kerr("creating transactional producer"))?;
    producer
        .init_transactions(Duration::from_secs(60))
        .map_err(kerr("initialising transactions (fencing older writers)"))?;
    let ptopic = positions_topic(&settings.site);
    topics.ensure(&rt, &ptopic, 1, &[("cleanup.policy", "compact")])?;
    let positions = read_positions(cluster, &settings.site)?;
    let itopic = offset_index_topic(&settings.site);
    let retention = settings.offset_index_retention_ms.to_string();
    topics.ensure(
        &rt,
        &itopic,
        1,
        &[("cleanup.policy", "delete"), ("retention.ms", &retention)],
    )?;
    let mut index = OffsetIndex::new(settings.offset_index_max_entries);
    rebuild_offset_index(
        cluster,
        &settings.site,
        &mut index,
        settings.offset_index_rebuild_timeout,
    )?;
    for p in &positions {
        index.set_position(&p.tp, p.next_offset);
    }
    let stats = index.stats();
    let index = index.shared();
    tracing::info!(site = %settings.site, cluster = %cluster.alias, transactional_id = %txn_id, positions = positions.len(), index_pairs = stats.pairs, index_runs = stats.runs, index_bytes = stats.bytes, "site writer ready");
    let (tx, rx) = mpsc::channel(settings.queue_batches);
    let mut w = Writer {
        rt,
        producer,
        topics,
        cluster: cluster.alias.clone(),
        positions_topic: ptopic,
        index_topic: itopic,
        metrics: crate::metrics::site(&settings.site),
        settings,
        dest_cache: HashMap::new(),
        positions: positions
            .iter()
            .map(|p| (p.tp.clone(), p.next_offset))
            .collect(),
        index: index.clone(),
        timing: TxnTiming::default(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("writer-{}-{}", w.settings.site, w.cluster))
        .spawn(move || {
            let _stopped = MarkStopped(w.index.clone());
            w.run(rx)
        })
        .expect("spawning a writer thread");
    Ok((
        SiteWriter {
            tx,
            thread: Some(thread),
            index,
        },
        positions,
    ))
}

/// Marks the index stopped when the writer thread ends, however it ends.
struct MarkStopped(SharedOffsetIndex);

impl Drop for MarkStopped {
    fn drop(&mut self) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .mark_stopped();
    }
}

/// What one transaction sent, in send order, to build its offset index entries from.
#[derive(Default)]
struct TxnLog {
    /// Source partitions with their position before and after the transaction.
    sources: Vec<(TopicPartition, Option<i64>, i64)>,
    /// Destination partitions written.
    dests: Vec<TopicPartition>,
    /// Per record sent: (source id, dest id, source offset).
    sent: Vec<(u32, u32, i64)>,
}

struct Writer {
    rt: tokio::runtime::Handle,
    producer: TxProducer,
    topics: Arc<TopicManager>,
    cluster: String,
    positions_topic: String,
    index_topic: String,
    metrics: Arc<crate::metrics::SiteMetrics>,
    settings: WriterSettings,
    /// Logical topic -> remote topic, validated once.
    dest_cache: HashMap<String, String>,
    /// Committed position per source partition.
    positions: HashMap<TopicPartition, i64>,
    index: SharedOffsetIndex,
    /// Where the last transaction's time went (debug log).
    timing: TxnTiming,
}

/// Phases of one transaction: begin + produce, flush + delivery reports, index + commit.
#[derive(Default)]
struct TxnTiming {
    produce: Duration,
    flush: Duration,
    commit: Duration,
}

impl Writer {
    fn positions_snapshot(&self) -> Vec<Position> {
        self.positions
            .iter()
            .map(|(tp, &next_offset)| Position {
                tp: tp.clone(),
                next_offset,
            })
            .collect()
    }

    fn run(&mut self, mut rx: mpsc::Receiver<Msg>) {
        loop {
            // The timer must be created inside the runtime, hence the async block.
            let next = self
                .rt
                .block_on(async { tokio::time::timeout(IDLE_POLL, rx.recv()).await });
            let msg = match next {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => {
                    self.producer.poll(Duration::ZERO);
                    continue;
                }
            };
            let first = match msg {
                Msg::Write(j) => j,
                Msg::Positions(reply) => {
                    let _ = reply.send(self.positions_snapshot());
                    continue;
                }
            };
            let mut bytes = first.batch.header.uncompressed_len as u64;
            let mut jobs = vec![first];
            // A positions query queued behind these jobs is answered after their commit.
            let mut query = None;
            while bytes < self.settings.max_transaction_bytes {
                match rx.try_recv() {
                    Ok(Msg::Write(j)) => {
                        bytes += j.batch.header.uncompressed_len as u64;
                        jobs.push(j);
                    }
                    Ok(Msg::Positions(reply)) => {
                        query = Some(reply);
                        break;
                    }
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            let result = self.write_transaction(&jobs);
            match &result {
                Ok(records) => {
                    self.metrics
                        .committed(*records, jobs.len(), started.elapsed());
                    let t = &self.timing;
                    tracing::debug!(site = %self.settings.site, cluster = %self.cluster, batches = jobs.len(), records, elapsed_ms = started.elapsed().as_millis() as u64, produce_ms = t.produce.as_millis() as u64, flush_ms = t.flush.as_millis() as u64, commit_ms = t.commit.as_millis() as u64, "transaction committed")
                }
                Err(e) => {
                    self.metrics.transaction_failed();
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
                // the failed transaction would be out of order: refuse it. A positions query
                // gets no answer: this writer's memory is no longer the truth.
                rx.close();
                while let Ok(m) = rx.try_recv() {
                    if let Msg::Write(j) = m {
                        j.complete(Err(WriteError::Stopped));
                    }
                }
                return;
            }
            if let Some(reply) = query {
                let _ = reply.send(self.positions_snapshot());
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

    /// Writes all jobs, their positions and their offset index entries in one transaction;
    /// returns the records written. The in-memory index learns the entries after the commit.
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
        let records: usize = decoded.iter().map(|d| d.len()).sum();
        if records >= UNTRACKED {
            return Err(WriteError::Kafka {
                cluster: self.cluster.clone(),
                message: format!("{records} records are too many for one transaction"),
            });
        }
        self.producer
            .begin_transaction()
            .map_err(|e| self.txn_error("begin", e))?;
        let generation = self.producer.context().begin(records);
        self.timing = TxnTiming::default();
        let producing = Instant::now();
        let result = self
            .produce_all(jobs, &decoded, generation)
            .and_then(|log| {
                self.timing.produce = producing.elapsed();
                self.index_and_commit(log, generation)
            });
        if result.is_err() {
            self.abort();
        } else if let Some(ts) = crate::metrics::newest_heartbeat_ms(
            &self.settings.site,
            jobs.iter().map(|j| &j.batch.header.tp).zip(&decoded),
        ) {
            self.metrics
                .heartbeat_committed(ts, crate::metrics::now_ms());
        }
        result
    }

    /// Flushes the records, writes their index entries into the transaction, commits, then
    /// applies the entries to the in-memory index.
    fn index_and_commit(&mut self, log: TxnLog, generation: u32) -> Result<u64, WriteError> {
        let started = Instant::now();
        self.drain(TXN_TIMEOUT)?;
        let failed = |message: String| WriteError::Kafka {
            cluster: self.cluster.clone(),
            message,
        };
        let offsets = self.producer.context().wait(TXN_TIMEOUT).map_err(failed)?;
        self.timing.flush = started.elapsed();
        if offsets.len() != log.sent.len() {
            return Err(failed(format!(
                "{} delivery reports for {} records",
                offsets.len(),
                log.sent.len()
            )));
        }
        let mut b = EntriesBuilder::default();
        let ids: Vec<usize> = log
            .sources
            .iter()
            .map(|(tp, prev, next)| b.source(tp, *prev, *next))
            .collect();
        for (&(source, dest, src), &dst) in log.sent.iter().zip(&offsets) {
            b.record(ids[source as usize], &log.dests[dest as usize], src, dst)
                .map_err(|m| failed(format!("building the offset index: {m}")))?;
        }
        let entries = b.finish();
        for rec in offsets::encode(&entries, offsets::MAX_RECORD_BYTES) {
            let r = BaseRecord::with_opaque_to(&self.index_topic, opaque(generation, UNTRACKED))
                .partition(0)
                .payload(&rec[..]);
            self.send(r)?;
        }
        // Deliver the index records first: commit_transaction's own flush waits for delivery
        // reports that only our polling serves.
        self.drain(TXN_TIMEOUT)?;
        self.index_mut().set_committing(true);
        let committing = Instant::now();
        let committed = self.producer.commit_transaction(TXN_TIMEOUT);
        self.timing.commit = committing.elapsed();
        if let Err(e) = committed {
            // The outcome is unknown (a timeout may still commit): the writer stops and the
            // index withholds end-offset answers from now on.
            self.index_mut().mark_stopped();
            return Err(self.txn_error("commit", e));
        }
        {
            let mut index = self.index_mut();
            index.apply(&entries);
            index.set_committing(false);
        }
        for (tp, _, next) in log.sources {
            self.positions.insert(tp, next);
        }
        Ok(log.sent.len() as u64)
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, OffsetIndex> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
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
        generation: u32,
    ) -> Result<TxnLog, WriteError> {
        let mut log = TxnLog::default();
        let mut source_ids: HashMap<&TopicPartition, u32> = HashMap::new();
        // Logical topic -> destination partition -> dest id. A destination topic is resolved
        // and created when the first record goes to it, so a topic whose records are all
        // renamed leaves no empty `<site>.<topic>` behind.
        let mut dest_ids: HashMap<&str, HashMap<i32, u32>> = HashMap::new();
        for (job, recs) in jobs.iter().zip(decoded) {
            let h = &job.batch.header;
            let sid = *source_ids.entry(&h.tp).or_insert_with(|| {
                let prev = self.positions.get(&h.tp).copied();
                log.sources.push((h.tp.clone(), prev, h.next_offset));
                (log.sources.len() - 1) as u32
            });
            log.sources[sid as usize].2 = h.next_offset;
            for rec in recs.iter() {
                let rec = rec.map_err(|e| WriteError::BadBatch {
                    tp: h.tp.clone(),
                    message: e.to_string(),
                })?;
                let partition = rec.partition.unwrap_or(h.tp.partition);
                if partition < 0 {
                    return Err(WriteError::BadBatch {
                        tp: h.tp.clone(),
                        message: format!("negative destination partition {partition}"),
                    });
                }
                let logical = rec.topic.unwrap_or(&h.tp.topic);
                let did = match dest_ids.get(logical).and_then(|m| m.get(&partition)) {
                    Some(&d) => d,
                    None => {
                        let topic = self.dest_topic(&h.tp, logical)?;
                        let partitions = h.partition_count.max(partition.saturating_add(1));
                        self.ensure(&h.tp, &topic, partitions)?;
                        let d = log.dests.len() as u32;
                        log.dests.push(TopicPartition::new(topic, partition));
                        dest_ids.entry(logical).or_default().insert(partition, d);
                        d
                    }
                };
                let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
                for (k, v) in rec.headers.iter() {
                    headers = headers.insert(Header { key: k, value: v });
                }
                let id = opaque(generation, log.sent.len());
                let mut r: BaseRecord<'_, [u8], [u8], usize> =
                    BaseRecord::with_opaque_to(&log.dests[did as usize].topic, id)
                        .partition(partition)
                        .headers(headers);
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
                log.sent.push((sid, did, rec.offset));
            }
        }
        for (tp, _, next) in &log.sources {
            let key = crate::kafka::position_key(tp);
            let value = crate::kafka::position_value(*next);
            let r: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(&self.positions_topic, opaque(generation, UNTRACKED))
                    .partition(0)
                    .key(key.as_slice())
                    .payload(&value[..]);
            self.send(r)?;
        }
        Ok(log)
    }

    fn ensure(&self, tp: &TopicPartition, topic: &str, partitions: i32) -> Result<(), WriteError> {
        self.topics
            .ensure(&self.rt, topic, partitions, &[])
            .map_err(|e| WriteError::Kafka {
                cluster: self.cluster.clone(),
                message: format!("destination of {tp}: {e}"),
            })
    }

    /// Waits until every produced record was delivered and its report served. rdkafka's
    /// `flush` polls in fixed 100 ms steps (its `poll` serves events until the timeout, not
    /// until the first one), which made every transaction last a multiple of 100 ms; short
    /// polls return within a millisecond of the last report.
    fn drain(&self, timeout: Duration) -> Result<(), WriteError> {
        let deadline = Instant::now() + timeout;
        while self.producer.in_flight_count() > 0 {
            if Instant::now() >= deadline {
                return Err(WriteError::Kafka {
                    cluster: self.cluster.clone(),
                    message: format!(
                        "{} records still undelivered after {timeout:?}",
                        self.producer.in_flight_count()
                    ),
                });
            }
            self.serve_reports();
        }
        Ok(())
    }

    /// Serves a ready delivery report, or sleeps [`REPORT_PAUSE`] when there is none.
    /// rust-rdkafka's `poll(t)` serves events until `t` is over and passes the last
    /// sub-millisecond remainder to librdkafka as a zero timeout, so a short `poll` is a busy
    /// loop: `poll(1 ms)` here cost the writer most of a core in `clock_gettime` (perf).
    fn serve_reports(&self) {
        let before = self.producer.in_flight_count();
        self.producer.poll(Duration::ZERO);
        if self.producer.in_flight_count() == before {
            std::thread::sleep(REPORT_PAUSE);
        }
    }

    fn send(&self, mut r: BaseRecord<'_, [u8], [u8], usize>) -> Result<(), WriteError> {
        loop {
            match self.producer.send(r) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is bounded; wait for deliveries to free room.
                    self.serve_reports();
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
