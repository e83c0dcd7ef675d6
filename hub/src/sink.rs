//! The transactional sink: per central cluster, a fixed pool of writers shared by every site.
//!
//! A (site, source partition) always goes to the same writer (hash of both), so its batches
//! commit in order; a busy site's partitions spread over the pool, and many idle sites share
//! it. A writer groups what is queued (up to `max_transaction_bytes`, from any sites) into one
//! Kafka transaction holding the records, the new position of every source partition in it
//! (`er-positions.<group>.internal`, partition = the site's shard), the offset index entries
//! (`er-offset-index.<group>.internal`) and, for every shard it touches, an offset commit of the
//! hubs' group (`send_offsets_to_transaction` with the member's generation): a hub that lost
//! the shard fails that commit and the transaction aborts (KIP-447 fencing). Each batch is
//! acked only after the commit that holds it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use er_protocol::{Batch, DecodedRecords, ReplicationPolicy, TimestampType, TopicPartition};
use rdkafka::ClientContext;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::config::{ClusterConfig, Validated};
use crate::events::TxnTiming;
use crate::kafka::{KafkaOpError, TopicManager, client_config};
use crate::membership::Membership;
use crate::metrics::SiteMetrics;
use crate::offsets::{self, EntriesBuilder};
use crate::shards::{Shard, offset_index_topic, position_key, position_value, positions_topic};
use crate::sites::Site;

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
/// Timeout of `send_offsets_to_transaction` (the shards' fence), and how much longer the writer
/// waits for it before it gives the producer up: librdkafka can overrun it (see `send_fence`).
const FENCE_TIMEOUT: Duration = Duration::from_secs(30);
const FENCE_GRACE: Duration = Duration::from_secs(5);
/// How long a writer waits for a rebalance to end before refusing what it holds.
const OWNERSHIP_WAIT: Duration = Duration::from_secs(30);
/// Pause before a writer whose producer failed creates a new one.
const RESTART_PAUSE: Duration = Duration::from_secs(1);
/// Largest `limits.max_partitions_per_topic`: a source topic with more partitions is never replicated.
pub const MAX_SOURCE_PARTITIONS: i32 = 10_000;

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
    /// This hub does not own the site's shard (any more) on the cluster.
    #[error(
        "cluster {cluster:?}: this hub does not own shard {shard} (moved to another hub, or a rebalance is under way)"
    )]
    NotOwner {
        /// The cluster alias.
        cluster: String,
        /// The site's shard.
        shard: Shard,
    },
    /// The group coordinator fenced this hub's transaction: the group's generation moved on,
    /// because the shards moved to another hub or this hub rejoined the group.
    #[error(
        "cluster {cluster:?}: transaction fenced by the group coordinator (the shards moved, or this hub rejoined the group): {message}"
    )]
    Fenced {
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
    /// An earlier batch of the same session failed: this one would leave a gap.
    #[error("an earlier batch of this session failed; refused")]
    SessionFailed,
    /// The writer stopped (shut down).
    #[error("writer stopped")]
    Stopped,
}

/// A writer's queue: unbounded in batches, bounded in bytes by its budget.
#[derive(Debug)]
struct Queue {
    tx: mpsc::UnboundedSender<Queued>,
    /// The preparer taking from this queue, once it runs: woken by each batch, so that a
    /// lingering or holding preparer sleeps its whole wait and still sees a batch at once.
    preparer: Arc<std::sync::OnceLock<std::thread::Thread>>,
    budget: Arc<Semaphore>,
    /// The budget's size, in bytes.
    size: u32,
}

impl Queue {
    fn new(tx: mpsc::UnboundedSender<Queued>, bytes: u32) -> Self {
        let size = bytes.max(1);
        Self {
            tx,
            preparer: Arc::default(),
            budget: Arc::new(Semaphore::new(size as usize)),
            size,
        }
    }

    /// Waits until the site's share of the queues and then this queue's budget have room for
    /// a batch of `len` bytes, and takes both. A batch costs at least a little (many empty
    /// batches are not free) and at most a whole budget (a batch larger than it waits for an
    /// empty queue).
    async fn reserve(
        &self,
        site: &Site,
        len: usize,
    ) -> Result<Reserved, tokio::sync::AcquireError> {
        let cost = u32::try_from(len)
            .unwrap_or(u32::MAX)
            .saturating_add(QUEUED_JOB_OVERHEAD);
        let site = site.reserve_queue(cost).await?;
        let queue = self
            .budget
            .clone()
            .acquire_many_owned(cost.min(self.size))
            .await?;
        Ok(Reserved {
            _queue: queue,
            _site: site,
        })
    }
}

/// A queued batch's share of its queue's and its site's byte budgets, returned on drop.
#[derive(Debug)]
struct Reserved {
    _queue: OwnedSemaphorePermit,
    _site: OwnedSemaphorePermit,
}

/// A queued batch with its share of the byte budgets.
type Queued = (WriteJob, Reserved);

/// What a queued batch costs beyond its payload (its header and bookkeeping, roughly).
const QUEUED_JOB_OVERHEAD: u32 = 256;

/// A batch handed to a writer, with the channel its outcome is reported on after commit.
#[derive(Debug)]
pub struct WriteJob {
    /// The site (from its certificate).
    pub site: Arc<Site>,
    /// The session the batch came in, so that a failure refuses the session's later batches.
    pub session: u64,
    /// The batch as received from the agent.
    pub batch: Batch,
    /// A record that can never be written stops the partition there (`replication.
    /// on_unwritable = "stop"`, and the agent understands Stopped) instead of going to the
    /// site's dead letters.
    pub stop_on_unwritable: bool,
    /// Receives the outcome after the transaction holding the batch committed or failed.
    /// Outcomes of one source partition arrive in submission order.
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
    /// Ok once committed (or dropped unwritten, for a stopped partition).
    pub result: Result<Written, WriteError>,
}

/// What became of a batch that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Committed whole.
    Committed,
    /// Committed up to the record at `offset`, which can never be written; the partition is
    /// stopped there for the rest of the session (`replication.on_unwritable = "stop"`).
    Stopped {
        /// Source offset of the record: the committed position.
        offset: i64,
        /// Why it cannot be written.
        reason: String,
    },
    /// Not written: its partition stopped at an earlier batch of the session.
    Dropped,
}

impl WriteJob {
    fn complete(self, result: Result<Written, WriteError>) {
        if result.is_err() {
            self.site.fail_session(self.session);
        }
        let h = self.batch.header;
        // The session may be gone already; then nobody waits for the outcome.
        let _ = self.reply.send(Completion {
            tp: h.tp,
            seq: h.seq,
            next_offset: h.next_offset,
            result,
        });
        self.site.batch_done();
    }
}

/// What the writers of one cluster need besides the cluster.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// The hubs' group (names internal topics and transactional ids).
    pub group_id: String,
    /// This hub's id (part of its writers' transactional ids).
    pub hub_id: String,
    /// Remote topic naming.
    pub policy: ReplicationPolicy,
    /// `replication.identity_allow`: (sites, topics) under the identity policy.
    pub identity_allow: Arc<Vec<(regex::Regex, regex::Regex)>>,
    /// Upper bound of uncompressed batch bytes.
    pub max_uncompressed_bytes: u32,
    /// Largest partition count a site may claim for a source topic (the hub creates that many).
    pub max_partitions_per_topic: i32,
    /// Distinct topics (source topics and the topics plugins route records to) a site may
    /// write: `limits.max_topics_per_site`.
    pub max_topics_per_site: usize,
    /// Bytes of records grouped into one transaction.
    pub max_transaction_bytes: u64,
    /// Memory budget of each writer's queue, in batch bytes.
    pub queue_bytes: u32,
    /// Writers in the pool.
    pub writers: usize,
    /// How long a writer collects batches before it begins a transaction
    /// (`fleet.transaction_linger_ms`).
    pub linger: Duration,
    /// How transactions of heartbeats alone are paced (`fleet.heartbeat_*`).
    pub heartbeat_pacing: HeartbeatPacing,
}

impl WriterSettings {
    /// Settings from the hub configuration.
    pub fn new(cfg: &Validated) -> Self {
        let l = &cfg.raw.limits;
        Self {
            group_id: cfg.raw.group_id.clone(),
            hub_id: cfg.raw.hub_id.clone(),
            policy: cfg.policy.clone(),
            identity_allow: cfg.identity_allow.clone(),
            max_uncompressed_bytes: l.max_uncompressed_bytes,
            max_partitions_per_topic: l.max_partitions_per_topic,
            max_topics_per_site: l.max_topics_per_site,
            max_transaction_bytes: l.max_transaction_bytes,
            queue_bytes: l.writer_queue_bytes,
            writers: cfg.writers_per_cluster,
            linger: Duration::from_millis(cfg.raw.fleet.transaction_linger_ms),
            heartbeat_pacing: HeartbeatPacing {
                partitions_per_second: cfg.raw.fleet.heartbeat_partitions_per_second,
                max_delay: Duration::from_millis(cfg.raw.fleet.heartbeat_max_delay_ms),
            },
        }
    }
}

/// The transactional.id of writer `index` of `hub` on `cluster`: stable across restarts of the
/// hub, so a restarted hub fences its own previous incarnation. Zombie hubs are fenced by the
/// group generation, not by this id (KIP-447).
pub fn transactional_id(group: &str, hub: &str, cluster: &str, index: usize) -> String {
    format!("{group}-{hub}-{cluster}-{index}")
}

/// The writers of one cluster.
#[derive(Debug)]
pub struct WriterPool {
    queues: Vec<Queue>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Writers whose first `init_transactions` ended (well or not).
    initialised: Arc<Initialised>,
}

/// Counts writers whose first attempt to initialise transactions ended.
///
/// Initialising a transactional id fences its previous incarnation and waits until that
/// incarnation's last transaction is complete: a commit under way has its markers written, an
/// open transaction is aborted. A hub restarted with the same id must let that happen before it
/// reads its shards' positions, or it reads them short of a commit still under way (its
/// markers can take seconds) and the sites resend, and the hub writes, their last batch again.
#[derive(Debug, Default)]
struct Initialised {
    count: Mutex<usize>,
    changed: std::sync::Condvar,
}

impl Initialised {
    fn one_more(&self) {
        *self
            .count
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
        self.changed.notify_all();
    }

    /// Waits until `n` writers are counted, at most `timeout`; whether they are.
    fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let count = self
            .count
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (count, _) = self
            .changed
            .wait_timeout_while(count, timeout, |c| *c < n)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *count >= n
    }
}

impl WriterPool {
    /// Starts `settings.writers` writer threads for the cluster at `cluster_index` (each
    /// creates its producer and initialises transactions on its own thread). `membership` is
    /// the hub's member of the group on this cluster (it fences the writers' transactions);
    /// `coordination` the one on the coordination cluster (its ownership decides whether a
    /// site's state in memory is current).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        rt: tokio::runtime::Handle,
        cluster_index: usize,
        cluster: &ClusterConfig,
        topics: Arc<TopicManager>,
        membership: Arc<Membership>,
        coordination: Arc<Membership>,
        settings: WriterSettings,
    ) -> Self {
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        let initialised = Arc::new(Initialised::default());
        for i in 0..settings.writers.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let queue = Queue::new(tx, settings.queue_bytes);
            let preparer = Preparer {
                rt: rt.clone(),
                cluster: cluster.clone(),
                topics: topics.clone(),
                settings: settings.clone(),
                dest_cache: HashMap::new(),
                collided: HashMap::new(),
                woken_by: queue.preparer.clone(),
            };
            let w = Writer {
                rt: rt.clone(),
                index: i,
                cluster_index,
                cluster: cluster.clone(),
                topics: topics.clone(),
                membership: membership.clone(),
                coordination: coordination.clone(),
                positions_topic: positions_topic(&settings.group_id),
                index_topic: offset_index_topic(&settings.group_id),
                txn_id: transactional_id(&settings.group_id, &settings.hub_id, &cluster.alias, i),
                producer: None,
                restart: std::cell::Cell::new(false),
                timing: TxnTiming::default(),
            };
            queues.push(queue);
            let ready = initialised.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("writer-{}-{i}", cluster.alias))
                    .spawn(move || w.run(rx, preparer, &ready))
                    .expect("spawning a writer thread"),
            );
        }
        Self {
            queues,
            threads,
            initialised,
        }
    }

    /// Waits (blocking, at most `timeout`) until every writer's first attempt to initialise
    /// transactions ended, so that no transaction of this hub's previous incarnation is still
    /// under way; whether they all did. Read shards only after this (see [`Initialised`]).
    pub fn wait_initialised(&self, timeout: Duration) -> bool {
        self.initialised.wait_for(self.queues.len(), timeout)
    }

    /// The writer of a source partition of a site.
    fn writer_for(&self, site: &str, tp: &TopicPartition) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        site.hash(&mut h);
        tp.hash(&mut h);
        (h.finish() % self.queues.len() as u64) as usize
    }

    /// Queues a batch; waits while its writer's byte budget is spent (backpressure to the
    /// link). The budget comes back when the batch's transaction ends.
    pub async fn submit(&self, job: WriteJob) -> Result<(), WriteError> {
        let q = &self.queues[self.writer_for(&job.site.alias, &job.batch.header.tp)];
        job.site.batch_started();
        let permit = match q.reserve(&job.site, job.batch.payload.len()).await {
            Ok(p) => p,
            Err(_) => {
                job.complete(Err(WriteError::Stopped));
                return Err(WriteError::Stopped);
            }
        };
        match q.tx.send((job, permit)) {
            Ok(()) => {
                if let Some(t) = q.preparer.get() {
                    t.unpark();
                }
                Ok(())
            }
            Err(mpsc::error::SendError((job, _))) => {
                job.complete(Err(WriteError::Stopped));
                Err(WriteError::Stopped)
            }
        }
    }

    /// Number of writers.
    pub fn len(&self) -> usize {
        self.queues.len()
    }

    /// Whether the pool has no writers (never: at least one is started).
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }
}

impl Drop for WriterPool {
    fn drop(&mut self) {
        // Closing the queues ends each thread after its current transaction; do not block the
        // caller (possibly the executor) waiting for them.
        self.queues.clear();
        self.threads.clear();
    }
}

/// A job whose records were decoded and checked before any transaction began, so that one
/// site's bad batch never aborts a transaction carrying other sites' data.
struct Prepared {
    job: WriteJob,
    records: DecodedRecords,
    /// Where each record goes, in record order (destinations resolved and created); only
    /// the records before the stop when the partition stops.
    dests: Vec<Dest>,
    /// The source offset the partition stops at, and why (`replication.on_unwritable`).
    stopped: Option<(i64, String)>,
}

/// A job's records, checked, before their destinations are known to exist.
struct Checked {
    records: DecodedRecords,
    /// The distinct remote topics the records are meant for.
    topics: Vec<Target>,
    /// Per record, in record order: an index into `topics`, the partition, the size.
    records_at: Vec<RecordAt>,
}

/// A remote topic records of a batch are meant for.
#[derive(Debug, Clone)]
struct Target {
    /// Its name (for a refused one: the name it would have, for the dead-letter headers).
    name: String,
    /// Why no record can ever be written there (a name Kafka refuses, a topic the site may not
    /// write, a '.'/'_' collision): its records go to the site's dead-letter topic, value kept.
    refused: Option<String>,
}

struct RecordAt {
    topic: usize,
    partition: i32,
    size: usize,
    /// The agent sent a stub in place of a record it could never send, saying why (its
    /// text, cut to [`POISON_REASON_MAX_BYTES`]).
    poison: Option<String>,
}

/// Longest reason of an agent's poison stub the hub keeps (the text is the site's).
const POISON_REASON_MAX_BYTES: usize = 512;

/// The remote topic of a site's `logical` topic, or why the site may not send it. Under the
/// identity policy the site writes a shared namespace: only topics `identity_allow` lists for
/// it, never a protected or internal one.
pub(crate) fn remote_topic(
    policy: &ReplicationPolicy,
    identity_allow: &[(regex::Regex, regex::Regex)],
    site: &str,
    logical: &str,
) -> Result<String, String> {
    er_protocol::validate_topic_name(logical).map_err(|e| e.to_string())?;
    if policy.is_internal_topic(logical) {
        return Err(format!(
            "topic {logical:?} is internal and is never replicated"
        ));
    }
    let dest = policy.remote_topic(site, logical);
    er_protocol::validate_topic_name(&dest).map_err(|e| e.to_string())?;
    // Under the identity policy a topic keeps its name, except MM2 heartbeats, which stay
    // prefixed with the site: those are in the site's own namespace and need no listing.
    if matches!(policy, ReplicationPolicy::Identity) && dest == logical {
        if crate::config::PROTECTED_TOPICS.contains(&dest.as_str())
            || er_protocol::is_internal_topic(&dest)
        {
            return Err(format!(
                "topic {dest:?} is protected (internal, Kafka Connect, Schema Registry or heartbeats): no site writes it under the identity policy"
            ));
        }
        if !identity_allow
            .iter()
            .any(|(sites, topics)| sites.is_match(site) && topics.is_match(&dest))
        {
            return Err(format!(
                "topic {dest:?} is not in replication.identity_allow for site {site:?} (the identity policy writes only listed topics)"
            ));
        }
    }
    Ok(dest)
}

/// Completes a job the writer refuses, saying so when the site sent something bad.
fn refuse(cluster: &str, job: WriteJob, e: WriteError) {
    if let WriteError::BadBatch { .. } = &e {
        tracing::warn!(site = %job.site.alias, cluster, error = %e, "refusing a bad batch");
    }
    job.complete(Err(e));
}

/// Where one record goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dest {
    /// Its remote topic and partition.
    Topic(String, i32),
    /// The site's dead-letter topic: the record can never be written where it belongs (it is
    /// larger than the destination accepts, or the destination cannot or may not exist). Its
    /// source coordinates go there instead, with its key, and its value and headers when they
    /// fit, so one poison record (or topic) never stalls its partition.
    DeadLetter {
        /// The remote topic it was meant for.
        topic: String,
        /// Why it cannot go there.
        reason: String,
        /// Whether the record's value and headers go along (it fits the dead-letter topic).
        whole: bool,
    },
}

/// Under `replication.on_unwritable = "stop"`: finds the first record bound for the dead
/// letters and cuts `dests` before the first record of its source offset (records of one
/// offset, a plugin's outputs, are committed all or none, so the partition resumes at it
/// whole). Returns that offset and why its record cannot be written.
fn stop_at_first_unwritable(
    records: &DecodedRecords,
    dests: &mut Vec<Dest>,
) -> Option<(i64, String)> {
    let at = dests
        .iter()
        .position(|d| matches!(d, Dest::DeadLetter { .. }))?;
    let Dest::DeadLetter { topic, reason, .. } = &dests[at] else {
        unreachable!("found above")
    };
    let reason = format!("record for {topic:?}: {reason}");
    // Records decoded once in `check` already: they decode again.
    let offsets: Vec<i64> = records
        .iter()
        .take(at + 1)
        .map(|r| r.map_or(i64::MAX, |r| r.offset))
        .collect();
    let offset = offsets[at];
    let cut = offsets.partition_point(|o| *o < offset);
    dests.truncate(cut);
    Some((offset, reason))
}

/// Creates `site`'s dead-letter topic on `cluster` when it does not exist yet.
fn ensure_dead_letter_topic(
    topics: &TopicManager,
    rt: &tokio::runtime::Handle,
    cluster: &str,
    site: &str,
) -> Result<(), WriteError> {
    topics
        .ensure(rt, &dead_letter_topic(site), 1, &[])
        .map_err(|e| WriteError::Kafka {
            cluster: cluster.to_owned(),
            message: format!("creating the dead-letter topic of site {site:?}: {e}"),
        })
}

/// One record on its way to the dead letters: where it came from, where it was meant to go,
/// and why it cannot.
struct DeadLetter<'a> {
    source: &'a TopicPartition,
    destination: &'a str,
    reason: &'a str,
    whole: bool,
}

/// The dead letters of one batch, logged once per batch (a topic that cannot be created sends
/// every record of it there; one warning per record would flood the log).
#[derive(Default)]
struct DeadLetters {
    /// Count, first offset, destination and reason of the first one.
    seen: Option<(u64, i64, String, String)>,
}

impl DeadLetters {
    fn note(&mut self, rec: &er_protocol::RecordView<'_>, letter: &DeadLetter<'_>) {
        match &mut self.seen {
            Some((n, ..)) => *n += 1,
            None => {
                self.seen = Some((
                    1,
                    rec.offset,
                    letter.destination.to_owned(),
                    letter.reason.to_owned(),
                ));
            }
        }
    }

    fn emit(self, site: &SiteMetrics, cluster: &str) {
        if let Some((records, first_offset, destination, reason)) = self.seen {
            crate::events::PoisonRecords {
                site,
                cluster,
                records,
                first_offset,
                destination: &destination,
                reason: &reason,
            }
            .emit();
        }
    }
}

/// The offset index entries of each site in a transaction: every sent record's source offset
/// and the destination offset its delivery report gave (`offsets`, in sending order).
fn index_entries(
    log: &TxnLog,
    offsets: &[i64],
) -> Result<Vec<Vec<offsets::SourceEntries>>, String> {
    let mut builders: Vec<EntriesBuilder> = log
        .sites
        .iter()
        .map(|_| EntriesBuilder::default())
        .collect();
    let ids: Vec<Vec<usize>> = log
        .sites
        .iter()
        .zip(&mut builders)
        .map(|(st, b)| {
            st.sources
                .iter()
                .map(|(tp, prev, next)| b.source(tp, *prev, *next))
                .collect()
        })
        .collect();
    for (&(site, source, dest, src), &dst) in log.sent.iter().zip(offsets) {
        let (s, d) = (site as usize, dest as usize);
        builders[s].record(ids[s][source as usize], &log.sites[s].dests[d], src, dst)?;
    }
    Ok(builders.into_iter().map(EntriesBuilder::finish).collect())
}

/// Bytes a record's encoding may add to its key, value and headers inside a record batch
/// (lengths, varints, attributes, the batch header): the margin kept under the broker's limit.
const RECORD_OVERHEAD: usize = 1024;

/// The dead-letter topic of a site on a central cluster: records the hub cannot write where
/// they belong, with their source coordinates (never replicated: it ends in `.internal`).
pub fn dead_letter_topic(site: &str) -> String {
    format!("er-dead-letter.{site}.internal")
}

/// Header names of a dead-letter record.
pub mod dead_letter_header {
    /// Source topic at the edge.
    pub const TOPIC: &str = "er.source.topic";
    /// Source partition (decimal).
    pub const PARTITION: &str = "er.source.partition";
    /// Source offset (decimal).
    pub const OFFSET: &str = "er.source.offset";
    /// The remote topic it was meant for.
    pub const DESTINATION: &str = "er.destination.topic";
    /// Why it was not written there.
    pub const REASON: &str = "er.reason";
    /// Size of the original value in bytes (the value itself is kept only when the whole
    /// record fits the dead-letter topic; the record's own headers then follow these).
    pub const VALUE_BYTES: &str = "er.value.bytes";
}

/// Per site in one transaction: the source partitions it moved and the offset index entries.
struct SiteTxn {
    site: Arc<Site>,
    /// Source partitions with their position before and after the transaction.
    sources: Vec<(TopicPartition, Option<i64>, i64)>,
    /// Destination partitions written.
    dests: Vec<TopicPartition>,
}

/// What one transaction sent, in send order, to build offset index entries from.
#[derive(Default)]
struct TxnLog {
    sites: Vec<SiteTxn>,
    /// Per record sent: (site id, source id, dest id, source offset).
    sent: Vec<(u32, u32, u32, i64)>,
}

struct Writer {
    rt: tokio::runtime::Handle,
    index: usize,
    cluster_index: usize,
    cluster: ClusterConfig,
    topics: Arc<TopicManager>,
    membership: Arc<Membership>,
    coordination: Arc<Membership>,
    positions_topic: String,
    index_topic: String,
    txn_id: String,
    /// Shared only with a watched call that may outlive its timeout ([`Writer::send_fence`]).
    producer: Option<Arc<TxProducer>>,
    /// The producer hit a fatal error: the next transaction starts a new one.
    restart: std::cell::Cell<bool>,
    timing: TxnTiming,
}

/// One transaction's worth of prepared batches, with their share of the queue's budget.
struct PreparedTxn {
    prepared: Vec<Prepared>,
    permits: Vec<Reserved>,
}

/// The first stage of a writer: takes what queued (up to `max_transaction_bytes`), decodes and
/// checks it, and resolves (creating if need be) every record's destination.
struct Preparer {
    rt: tokio::runtime::Handle,
    cluster: ClusterConfig,
    topics: Arc<TopicManager>,
    settings: WriterSettings,
    /// (site, logical topic) -> remote topic, validated.
    dest_cache: HashMap<(String, String), Target>,
    /// Remote topics found colliding with an existing topic, with the refusal and when it was
    /// found: their batches skip creating and looking again (a metadata request each) until
    /// [`COLLISION_RECHECK`] passed, in case the other topic was deleted.
    collided: HashMap<String, (String, Instant)>,
    /// Where the queue finds this preparer's thread to wake it.
    woken_by: Arc<std::sync::OnceLock<std::thread::Thread>>,
}

/// The longest a preparer waiting for its busy writer sleeps: a safety net, since the writer
/// wakes it when its transaction ends and the queue when a batch comes.
const BUSY_STEP: Duration = Duration::from_millis(50);

/// What a preparer does when no batch is queued.
#[derive(Debug, PartialEq, Eq)]
enum Collect {
    /// Wait this long for more (woken by each batch): the transaction linger, or a hold of
    /// heartbeats, is not over.
    Linger(Duration),
    /// Wait at most this long (or until woken) for more: the writer could not take a
    /// transaction now anyway.
    AwaitWriter(Duration),
    /// Prepare what was collected and hand it over.
    Prepare,
}

/// The rule of a preparer whose queue is empty, with `linger_left` of its linger and its
/// writer busy or not: a transaction is handed over only when its writer can start it, so
/// that what arrives in the meantime joins it.
fn when_empty(linger_left: Duration, writer_busy: bool) -> Collect {
    if !linger_left.is_zero() {
        Collect::Linger(linger_left)
    } else if writer_busy {
        Collect::AwaitWriter(BUSY_STEP)
    } else {
        Collect::Prepare
    }
}

/// How a writer paces transactions that carry heartbeats and nothing else.
///
/// Each partition a transaction writes costs a produce request, and librdkafka answers each
/// one by walking every partition the producer knows: with 1,000 sites, heartbeats committed
/// as they come (1,000 partitions a second) cost the hub half a core of walks. Held for a
/// while, the heartbeats of many rounds share one request per partition. The hold after a
/// heartbeat-only transaction is what its partitions cost at `partitions_per_second`, so a few
/// sites never wait, and a fleet settles at that many partitions a second per writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatPacing {
    /// The partitions per second heartbeat-only transactions may write, per writer; 0: no hold.
    pub partitions_per_second: u32,
    /// The longest hold.
    pub max_delay: Duration,
}

impl HeartbeatPacing {
    /// How long after a heartbeat-only transaction that wrote `partitions` partitions the next
    /// one waits.
    fn hold_after(&self, partitions: usize) -> Duration {
        if self.partitions_per_second == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(partitions as f64 / f64::from(self.partitions_per_second))
            .min(self.max_delay)
    }
}

/// Whether a batch holds nothing but the site's heartbeats (the edge `heartbeats` topic).
fn heartbeats_only(job: &WriteJob) -> bool {
    job.batch.header.tp.topic == er_protocol::HEARTBEATS_TOPIC
}

/// The partitions a transaction of `jobs` writes: each source partition's destination (one
/// for a heartbeats batch) and each shard's position and offset index partitions.
fn partitions_written(jobs: &[WriteJob]) -> usize {
    let sources: HashSet<(&str, &TopicPartition)> = jobs
        .iter()
        .map(|j| (j.site.alias.as_str(), &j.batch.header.tp))
        .collect();
    let shards: HashSet<Shard> = jobs.iter().map(|j| j.site.shard).collect();
    sources.len() + 2 * shards.len()
}

/// Transactions handed from a preparer to its writer and not yet ended. While there is one,
/// the writer could not take another, so the preparer keeps collecting: a batch that arrives
/// during a transaction goes into the next one, not into the one after it (which a
/// transaction prepared early would be).
#[derive(Default)]
struct Handoff {
    pending: std::sync::atomic::AtomicUsize,
}

impl Handoff {
    fn writer_busy(&self) -> bool {
        self.pending.load(std::sync::atomic::Ordering::Acquire) > 0
    }

    fn handed(&self) {
        self.pending
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn ended(&self) {
        self.pending
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// How long a '.'/'_' collision is taken as known before the topic list is read again.
const COLLISION_RECHECK: Duration = Duration::from_secs(60);

impl Preparer {
    fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Queued>,
        out: std::sync::mpsc::SyncSender<PreparedTxn>,
        handoff: &Handoff,
    ) {
        let _ = self.woken_by.set(std::thread::current());
        // When the next transaction of heartbeats alone may begin.
        let mut heartbeats_until = Instant::now();
        while let Some((first, permit)) = rx.blocking_recv() {
            let linger_until = Instant::now() + self.settings.linger;
            let mut bytes = u64::from(first.batch.header.uncompressed_len);
            let mut only_heartbeats = heartbeats_only(&first);
            let mut jobs = vec![first];
            let mut permits = vec![permit];
            while bytes < self.settings.max_transaction_bytes {
                match rx.try_recv() {
                    Ok((j, p)) => {
                        bytes += u64::from(j.batch.header.uncompressed_len);
                        only_heartbeats &= heartbeats_only(&j);
                        jobs.push(j);
                        permits.push(p);
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {
                        let until = if only_heartbeats {
                            linger_until.max(heartbeats_until)
                        } else {
                            linger_until
                        };
                        let left = until.saturating_duration_since(Instant::now());
                        match when_empty(left, handoff.writer_busy()) {
                            // Woken early by the next batch.
                            Collect::Linger(d) => std::thread::park_timeout(d),
                            // Woken early by the writer when its transaction ends.
                            Collect::AwaitWriter(d) => std::thread::park_timeout(d),
                            Collect::Prepare => break,
                        }
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            }
            if only_heartbeats {
                let hold = self
                    .settings
                    .heartbeat_pacing
                    .hold_after(partitions_written(&jobs));
                heartbeats_until = Instant::now() + hold;
            }
            let prepared = self.prepare(jobs);
            if prepared.is_empty() {
                continue;
            }
            handoff.handed();
            if let Err(std::sync::mpsc::SendError(txn)) =
                out.send(PreparedTxn { prepared, permits })
            {
                handoff.ended();
                for p in txn.prepared {
                    p.job.complete(Err(WriteError::Stopped));
                }
                break;
            }
        }
    }

    /// Decodes and checks each job, then creates the destination topics all of them lack in
    /// one request (a storm of new sites costs one round trip per writer batch, not one per
    /// site), then resolves each record's destination. Refuses jobs of failed sessions and jobs
    /// that are bad, without touching the others.
    fn prepare(&mut self, jobs: Vec<WriteJob>) -> Vec<Prepared> {
        let mut checked = Vec::with_capacity(jobs.len());
        for job in jobs {
            if job.site.session_failed(job.session) {
                job.complete(Err(WriteError::SessionFailed));
                continue;
            }
            if job.site.is_stopped(job.session, &job.batch.header.tp) {
                job.complete(Ok(Written::Dropped));
                continue;
            }
            match self.check(&job) {
                Ok(c) => checked.push((job, c)),
                Err(e) => refuse(&self.cluster.alias, job, e),
            }
        }
        let mut wanted: HashMap<&str, i32> = HashMap::new();
        for (job, c) in &checked {
            let partitions = job.batch.header.partition_count;
            for t in c.topics.iter().filter(|t| t.refused.is_none()) {
                if !self.topics.is_known(&t.name, partitions) {
                    let n = wanted.entry(&t.name).or_default();
                    *n = (*n).max(partitions);
                }
            }
        }
        if !wanted.is_empty() {
            let wanted: Vec<(String, i32)> =
                wanted.into_iter().map(|(t, n)| (t.to_owned(), n)).collect();
            let configs = self.topics.remote_topic_configs();
            if let Err(e) = self.topics.ensure_many(&self.rt, &wanted, &configs) {
                // Each job's topics are tried once more, alone, and fail there with the error.
                tracing::warn!(cluster = %self.cluster.alias, topics = wanted.len(), error = %e, "cannot create destination topics in one request");
            }
        }
        let mut out = Vec::with_capacity(checked.len());
        for (job, c) in checked {
            // An earlier job of this round may have stopped the partition.
            if job.site.is_stopped(job.session, &job.batch.header.tp) {
                job.complete(Ok(Written::Dropped));
                continue;
            }
            match self.resolve(&job, c.topics, c.records_at) {
                Ok(mut dests) => {
                    let stopped = if job.stop_on_unwritable {
                        stop_at_first_unwritable(&c.records, &mut dests)
                    } else {
                        None
                    };
                    if stopped.is_some() {
                        job.site.stop_partition(job.session, &job.batch.header.tp);
                    }
                    out.push(Prepared {
                        job,
                        records: c.records,
                        dests,
                        stopped,
                    });
                }
                Err(e) => refuse(&self.cluster.alias, job, e),
            }
        }
        out
    }

    /// Decodes the job's records and checks everything the site sent that needs no broker:
    /// topic names, partitions, the decoded records.
    fn check(&mut self, job: &WriteJob) -> Result<Checked, WriteError> {
        let h = &job.batch.header;
        let bad = |message: String| WriteError::BadBatch {
            tp: h.tp.clone(),
            message,
        };
        // The source topic is checked even when the batch holds no record: it names a position.
        er_protocol::validate_topic_name(&h.tp.topic).map_err(|e| bad(e.to_string()))?;
        if self.settings.policy.is_internal_topic(&h.tp.topic) {
            return Err(bad(format!(
                "topic {:?} is internal and is never replicated",
                h.tp.topic
            )));
        }
        let max_partitions = self.settings.max_partitions_per_topic;
        if !(1..=max_partitions).contains(&h.partition_count)
            || !(0..h.partition_count).contains(&h.tp.partition)
        {
            return Err(bad(format!(
                "partition {} of a topic with {} partitions (at most {max_partitions}: limits.max_partitions_per_topic)",
                h.tp.partition, h.partition_count
            )));
        }
        let records = job
            .batch
            .decode_records(self.settings.max_uncompressed_bytes)
            .map_err(|e| bad(e.to_string()))?;
        // The declared count is the agent's word: reserve by what is reasonable.
        let mut records_at = Vec::with_capacity((h.record_count as usize).min(4096));
        let mut topics: Vec<Target> = Vec::new();
        let mut last: Option<(&str, usize)> = None;
        for rec in records.iter() {
            let rec = rec.map_err(|e| bad(e.to_string()))?;
            let partition = rec.partition.unwrap_or(h.tp.partition);
            if !(0..h.partition_count).contains(&partition) {
                return Err(bad(format!(
                    "destination partition {partition} outside the source's {} partitions",
                    h.partition_count
                )));
            }
            let logical = rec.topic.unwrap_or(&h.tp.topic);
            let topic = match last {
                Some((l, i)) if l == logical => i,
                _ => {
                    let target = self.admitted_dest_topic(&job.site, logical);
                    match topics.iter().position(|t| t.name == target.name) {
                        Some(i) => i,
                        None => {
                            topics.push(target);
                            topics.len() - 1
                        }
                    }
                }
            };
            last = Some((logical, topic));
            let size = rec.key.map_or(0, <[u8]>::len)
                + rec.value.map_or(0, <[u8]>::len)
                + rec
                    .headers
                    .iter()
                    .map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len))
                    .sum::<usize>();
            let poison = rec.poison_reason().map(|r| {
                let r = &r[..r.len().min(POISON_REASON_MAX_BYTES)];
                String::from_utf8_lossy(r).into_owned()
            });
            records_at.push(RecordAt {
                topic,
                partition,
                size,
                poison,
            });
        }
        Ok(Checked {
            records,
            topics,
            records_at,
        })
    }

    /// Makes sure the job's destination topics exist (created by [`Writer::prepare`] already,
    /// unless that failed or a topic needs more partitions) and sends each record where it
    /// belongs: its topic, or the dead letters when the topic cannot take it.
    fn resolve(
        &mut self,
        job: &WriteJob,
        mut topics: Vec<Target>,
        records_at: Vec<RecordAt>,
    ) -> Result<Vec<Dest>, WriteError> {
        let h = &job.batch.header;
        let kafka = |e: String| WriteError::Kafka {
            cluster: self.cluster.alias.clone(),
            message: format!("destination of {}: {e}", h.tp),
        };
        let mut limits = Vec::with_capacity(topics.len());
        for t in &mut topics {
            let unknown = t.refused.is_none() && !self.topics.is_known(&t.name, 1);
            if unknown
                && let Some(other) = self
                    .topics
                    .collision(&t.name)
                    .map_err(|e| kafka(e.to_string()))?
            {
                let reason = format!(
                    "the topic collides with the existing topic {other:?} on cluster {:?} (Kafka treats '.' and '_' alike in topic names, so it cannot be created); rename the source topic or route it elsewhere",
                    self.cluster.alias
                );
                self.collided
                    .insert(t.name.clone(), (reason.clone(), Instant::now()));
                t.refused = Some(reason);
            }
            if t.refused.is_some() {
                limits.push(0);
                continue;
            }
            let configs = self.topics.remote_topic_configs();
            self.topics
                .ensure(&self.rt, &t.name, h.partition_count, &configs)
                .map_err(|e| kafka(e.to_string()))?;
            limits.push(self.record_limit(&t.name)?);
        }
        let dead_letter_limit = if topics.iter().any(|t| t.refused.is_some()) {
            ensure_dead_letter_topic(&self.topics, &self.rt, &self.cluster.alias, &job.site.alias)?;
            self.record_limit(&dead_letter_topic(&job.site.alias))?
        } else {
            0
        };
        Ok(records_at
            .into_iter()
            .map(|r| {
                let (t, limit) = (&topics[r.topic], limits[r.topic]);
                if let Some(why) = r.poison {
                    return Dest::DeadLetter {
                        topic: t.name.clone(),
                        reason: format!("the agent could not send it: {why}"),
                        whole: false,
                    };
                }
                match &t.refused {
                    Some(reason) => Dest::DeadLetter {
                        topic: t.name.clone(),
                        reason: reason.clone(),
                        whole: r.size <= dead_letter_limit,
                    },
                    None if r.size > limit => Dest::DeadLetter {
                        topic: t.name.clone(),
                        reason: format!(
                            "record of {} bytes is larger than the {limit} bytes the destination accepts",
                            r.size
                        ),
                        whole: false,
                    },
                    None => Dest::Topic(t.name.clone(), r.partition),
                }
            })
            .collect())
    }

    /// The largest record (key, value and headers) `topic` takes: the topic's and the
    /// producer's `max.message.bytes`, less the batch overhead.
    fn record_limit(&self, topic: &str) -> Result<usize, WriteError> {
        let topic_max = self
            .topics
            .max_message_bytes(&self.rt, topic)
            .map_err(|e| WriteError::Kafka {
                cluster: self.cluster.alias.clone(),
                message: e.to_string(),
            })?;
        Ok(topic_max
            .min(self.message_max_bytes())
            .saturating_sub(RECORD_OVERHEAD))
    }

    /// The producer's `message.max.bytes` (the cluster's `properties` may raise it).
    fn message_max_bytes(&self) -> usize {
        self.cluster
            .properties
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000)
    }

    /// [`Writer::dest_topic`], once `logical` counts among the site's topics: a topic beyond
    /// `limits.max_topics_per_site` (a plugin may route records to any name) is refused, so
    /// its records go to the dead letters and the topic is never created. The refusal is not
    /// cached: the site's count is the hub's, and the limit may be raised.
    fn admitted_dest_topic(&mut self, site: &Site, logical: &str) -> Target {
        // A name Kafka refuses is neither counted nor cached (a site could send any number).
        if er_protocol::validate_topic_name(logical).is_err() {
            let shown = er_net::Untrusted(logical).to_string();
            return Target {
                refused: Some(format!(
                    "topic name \"{shown}\" is not one Kafka takes (1..=249 bytes of [a-zA-Z0-9._-], not '.' or '..')"
                )),
                name: shown,
            };
        }
        let max = self.settings.max_topics_per_site;
        if !site.admit_topic(logical, max) {
            return Target {
                name: self.settings.policy.remote_topic(&site.alias, logical),
                refused: Some(format!(
                    "the site already writes {max} topics (limits.max_topics_per_site); records routed to one more go to the dead letters"
                )),
            };
        }
        self.dest_topic(&site.alias, logical)
    }

    /// The remote topic of `logical` for `site`, validated (not created): refused when the
    /// name is one Kafka does not take or the site may not write.
    fn dest_topic(&mut self, site: &str, logical: &str) -> Target {
        let key = (site.to_owned(), logical.to_owned());
        if let Some(t) = self.dest_cache.get(&key) {
            let mut t = t.clone();
            if t.refused.is_none()
                && let Some((reason, found)) = self.collided.get(&t.name)
            {
                if found.elapsed() < COLLISION_RECHECK {
                    t.refused = Some(reason.clone());
                } else {
                    self.collided.remove(&t.name);
                }
            }
            return t;
        }
        let target = match remote_topic(
            &self.settings.policy,
            &self.settings.identity_allow,
            site,
            logical,
        ) {
            Ok(name) => Target {
                name,
                refused: None,
            },
            Err(reason) => Target {
                name: self.settings.policy.remote_topic(site, logical),
                refused: Some(reason),
            },
        };
        self.dest_cache.insert(key, target.clone());
        target
    }
}

impl Writer {
    fn alias(&self) -> &str {
        &self.cluster.alias
    }

    /// Runs the writer's transactions on this thread and their preparation (collecting,
    /// decoding, checking, topic creation) on a second one, so that the next transaction is
    /// being prepared while the current one produces and commits.
    fn run(mut self, rx: mpsc::UnboundedReceiver<Queued>, preparer: Preparer, ready: &Initialised) {
        // At once, not at the first batch: see `Initialised`.
        if let Err(e) = self.ensure_producer() {
            tracing::warn!(cluster = %self.cluster.alias, writer = self.index, error = %e, "cannot initialise transactions yet; retried at the first batch");
        }
        ready.one_more();
        let (tx, prepared) = std::sync::mpsc::sync_channel::<PreparedTxn>(1);
        let name = format!("prepare-{}-{}", self.cluster.alias, self.index);
        let handoff = Arc::new(Handoff::default());
        let stage = {
            let handoff = handoff.clone();
            std::thread::Builder::new()
                .name(name)
                .spawn(move || preparer.run(rx, tx, &handoff))
                .expect("spawning a preparer thread")
        };
        loop {
            match prepared.recv_timeout(IDLE_POLL) {
                Ok(txn) => {
                    self.write(txn.prepared);
                    // The queue's budget covers the batches' bytes until their transaction ended.
                    drop(txn.permits);
                    handoff.ended();
                    stage.thread().unpark();
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(p) = &self.producer {
                        p.poll(Duration::ZERO);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = stage.join();
        tracing::debug!(cluster = %self.cluster.alias, writer = self.index, "writer stopped");
    }

    /// Writes what can be written of `prepared` in one transaction and completes every job.
    fn write(&mut self, prepared: Vec<Prepared>) {
        let Some((prepared, permit)) = self.admit(prepared) else {
            return;
        };
        let started = Instant::now();
        let result = self.transaction(&prepared, permit.group.as_ref());
        drop(permit);
        if self.restart.take() {
            self.producer = None;
        }
        self.report(&prepared, &result, started.elapsed());
        let outcome = result.map(|_| ());
        for p in prepared {
            let written = match p.stopped {
                Some((offset, reason)) => Written::Stopped { offset, reason },
                None => Written::Committed,
            };
            p.job.complete(outcome.clone().map(|()| written));
        }
    }

    /// The jobs that may go into a transaction now, with the permit to run it: jobs of a
    /// session that failed meanwhile, or of a shard or site state this hub no longer holds,
    /// are completed with their error here; without a producer or a permit, all are.
    fn admit(
        &mut self,
        prepared: Vec<Prepared>,
    ) -> Option<(Vec<Prepared>, crate::membership::TxnPermit)> {
        // A session may have failed while its batch was being prepared.
        let (prepared, refused): (Vec<_>, Vec<_>) = prepared
            .into_iter()
            .partition(|p| !p.job.site.session_failed(p.job.session));
        for p in refused {
            p.job.complete(Err(WriteError::SessionFailed));
        }
        if prepared.is_empty() {
            return None;
        }
        if let Err(e) = self.ensure_producer() {
            tracing::warn!(cluster = %self.alias(), writer = self.index, error = %e, "writer has no producer");
            std::thread::sleep(RESTART_PAUSE);
            for p in prepared {
                p.job.complete(Err(WriteError::Kafka {
                    cluster: self.cluster.alias.clone(),
                    message: e.to_string(),
                }));
            }
            return None;
        }
        let Some(permit) = self.membership.begin(OWNERSHIP_WAIT) else {
            for p in prepared {
                let shard = p.job.site.shard;
                p.job.complete(Err(self.not_owner(shard)));
            }
            return None;
        };
        // Jobs whose shard the rebalance took away are refused before anything is produced,
        // and so are jobs of a site whose state is not current: read before the shard was
        // last gained, or already replaced by a new read (a session of a hub that was paused
        // past its group session, say, whose batches arrive after it joined again).
        let coordination = self.coordination.ownership();
        let (prepared, moved): (Vec<_>, Vec<_>) = prepared.into_iter().partition(|p| {
            permit.ownership.owns(p.job.site.shard) && p.job.site.is_current(&coordination)
        });
        for p in moved {
            let shard = p.job.site.shard;
            p.job.complete(Err(self.not_owner(shard)));
        }
        (!prepared.is_empty()).then_some((prepared, permit))
    }

    /// The transaction's events: committed (with each site's share) or failed.
    fn report(&self, prepared: &[Prepared], result: &Result<u64, WriteError>, elapsed: Duration) {
        match result {
            Ok(records) => {
                let mut per_site: HashMap<&str, (&SiteMetrics, u64, usize)> = HashMap::new();
                for p in prepared {
                    let e = per_site.entry(p.job.site.alias.as_str()).or_insert((
                        &p.job.site.metrics,
                        0,
                        0,
                    ));
                    e.1 += p
                        .dests
                        .iter()
                        .filter(|d| matches!(d, Dest::Topic(..)))
                        .count() as u64;
                    e.2 += 1;
                }
                let sites: Vec<_> = per_site.into_values().collect();
                crate::events::TransactionCommitted {
                    cluster: &self.cluster.alias,
                    writer: self.index,
                    batches: prepared.len(),
                    records: *records,
                    elapsed,
                    timing: self.timing,
                    sites: &sites,
                }
                .emit();
            }
            Err(e) => {
                let mut sites: HashMap<&str, &SiteMetrics> = HashMap::new();
                for p in prepared {
                    sites.insert(p.job.site.alias.as_str(), &p.job.site.metrics);
                }
                let sites: Vec<&SiteMetrics> = sites.into_values().collect();
                crate::events::TransactionFailed {
                    cluster: &self.cluster.alias,
                    writer: self.index,
                    batches: prepared.len(),
                    sites: &sites,
                    error: e,
                }
                .emit();
            }
        }
    }

    fn not_owner(&self, shard: Shard) -> WriteError {
        WriteError::NotOwner {
            cluster: self.cluster.alias.clone(),
            shard,
        }
    }

    /// Creates the producer if there is none (first use, or after a fatal error): this fences
    /// any transaction a previous incarnation of this writer left open.
    fn ensure_producer(&mut self) -> Result<(), KafkaOpError> {
        if self.producer.is_some() {
            return Ok(());
        }
        let kerr = |what: &'static str| KafkaOpError::kafka(&self.cluster.alias, what);
        let producer: TxProducer = client_config(&self.cluster)
            .set("transactional.id", &self.txn_id)
            .set("enable.idempotence", "true")
            .set(
                "transaction.timeout.ms",
                self.cluster.transaction_timeout_ms.to_string(),
            )
            .set("linger.ms", "5")
            // A transaction begun right after the previous commit gets CONCURRENT_TRANSACTIONS
            // until the coordinator has written the markers (tens of ms); librdkafka retries
            // that after `retry.backoff.ms`, 100 ms by default, which floored every transaction
            // at 200-300 ms (KAFKA-5477: the Java client uses 20 ms for this retry).
            .set("retry.backoff.ms", "10")
            .set("batch.size", "1048576")
            .set("queue.buffering.max.kbytes", "65536")
            .create_with_context(Deliveries::default())
            .map_err(kerr("creating a transactional producer"))?;
        producer
            .init_transactions(TXN_TIMEOUT)
            .map_err(kerr("initialising transactions"))?;
        tracing::info!(cluster = %self.cluster.alias, writer = self.index, transactional_id = %self.txn_id, "writer ready");
        self.producer = Some(Arc::new(producer));
        Ok(())
    }

    fn producer(&self) -> &TxProducer {
        self.producer
            .as_deref()
            .expect("a transaction runs only with a producer")
    }

    fn txn_error(&self, what: &str, e: KafkaError) -> WriteError {
        let code = match &e {
            KafkaError::Transaction(r) => Some((r.code(), r.is_fatal())),
            _ => None,
        };
        let message = format!("{what}: {e}");
        let fenced = matches!(
            code,
            Some((
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::IllegalGeneration
                    | RDKafkaErrorCode::UnknownMemberId
                    | RDKafkaErrorCode::FencedInstanceId
                    | RDKafkaErrorCode::RebalanceInProgress,
                _
            ))
        );
        if code.is_some_and(|(_, fatal)| fatal) {
            // A fatal producer error: the producer is unusable; the next transaction starts a
            // new one (init_transactions fences whatever this one left open).
            tracing::warn!(cluster = %self.cluster.alias, writer = self.index, error = %message, "fatal producer error; starting a new producer");
            self.restart.set(true);
        }
        if fenced {
            WriteError::Fenced {
                cluster: self.cluster.alias.clone(),
                message,
            }
        } else {
            WriteError::Kafka {
                cluster: self.cluster.alias.clone(),
                message,
            }
        }
    }

    /// Writes all prepared jobs, their positions, their offset index entries and the shards'
    /// fencing offsets in one transaction; returns the records written. Sites learn the new
    /// positions and index entries after the commit.
    /// Runs one transaction of `prepared`, fenced with `group`: the group metadata of the
    /// ownership the transaction began under.
    fn transaction(
        &mut self,
        prepared: &[Prepared],
        group: Option<&Arc<ConsumerGroupMetadata>>,
    ) -> Result<u64, WriteError> {
        // Tracked records: those going to their destination (dead letters are not indexed).
        let records: usize = prepared
            .iter()
            .flat_map(|p| &p.dests)
            .filter(|d| matches!(d, Dest::Topic(..)))
            .count();
        if records >= UNTRACKED {
            return Err(WriteError::Kafka {
                cluster: self.cluster.alias.clone(),
                message: format!("{records} records are too many for one transaction"),
            });
        }
        if let Err(e) = self.producer().begin_transaction() {
            return Err(self.txn_error("begin", e));
        }
        let generation = self.producer().context().begin(records);
        self.timing = TxnTiming::default();
        let producing = Instant::now();
        let result = self.produce_all(prepared, generation).and_then(|log| {
            self.timing.produce = producing.elapsed();
            self.index_and_commit(prepared, log, generation, group)
        });
        if result.is_err() {
            self.abort();
        } else {
            self.record_heartbeats(prepared);
            crate::metrics::batches_committed_after(self.alias(), replication_latencies(prepared));
        }
        result
    }

    fn record_heartbeats(&self, prepared: &[Prepared]) {
        let mut by_site: HashMap<&str, Vec<&Prepared>> = HashMap::new();
        for p in prepared {
            by_site
                .entry(p.job.site.alias.as_str())
                .or_default()
                .push(p);
        }
        for (site, ps) in by_site {
            if let Some(ts) = crate::metrics::newest_heartbeat_ms(
                site,
                ps.iter().map(|p| (&p.job.batch.header.tp, &p.records)),
            ) {
                ps[0]
                    .job
                    .site
                    .metrics
                    .heartbeat_committed(ts, crate::metrics::now_ms());
            }
        }
    }

    fn produce_all(
        &mut self,
        prepared: &[Prepared],
        generation: u32,
    ) -> Result<TxnLog, WriteError> {
        let mut log = TxnLog::default();
        let mut site_ids: HashMap<&str, u32> = HashMap::new();
        let mut source_ids: HashMap<(u32, &TopicPartition), u32> = HashMap::new();
        let mut dest_ids: HashMap<(u32, &str, i32), u32> = HashMap::new();
        for p in prepared {
            let h = &p.job.batch.header;
            let site = &p.job.site;
            let mut dead = DeadLetters::default();
            let sid = *site_ids.entry(site.alias.as_str()).or_insert_with(|| {
                log.sites.push(SiteTxn {
                    site: site.clone(),
                    sources: Vec::new(),
                    dests: Vec::new(),
                });
                (log.sites.len() - 1) as u32
            });
            let st = &mut log.sites[sid as usize];
            let src = *source_ids.entry((sid, &h.tp)).or_insert_with(|| {
                let prev = site.clusters[self.cluster_index].position(&h.tp);
                st.sources.push((h.tp.clone(), prev, h.next_offset));
                (st.sources.len() - 1) as u32
            });
            st.sources[src as usize].2 = p.stopped.as_ref().map_or(h.next_offset, |s| s.0);
            for (rec, dest) in p.records.iter().zip(&p.dests) {
                let rec = rec.map_err(|e| WriteError::BadBatch {
                    tp: h.tp.clone(),
                    message: e.to_string(),
                })?;
                let (topic, partition) = match dest {
                    Dest::Topic(topic, partition) => (topic, partition),
                    Dest::DeadLetter {
                        topic,
                        reason,
                        whole,
                    } => {
                        let letter = DeadLetter {
                            source: &h.tp,
                            destination: topic,
                            reason,
                            whole: *whole,
                        };
                        self.dead_letter(site, &rec, &letter, generation)?;
                        dead.note(&rec, &letter);
                        continue;
                    }
                };
                let st = &mut log.sites[sid as usize];
                let did = *dest_ids
                    .entry((sid, topic.as_str(), *partition))
                    .or_insert_with(|| {
                        st.dests
                            .push(TopicPartition::new(topic.clone(), *partition));
                        (st.dests.len() - 1) as u32
                    });
                let id = opaque(generation, log.sent.len());
                self.send_copy(&rec, topic, *partition, id)?;
                log.sent.push((sid, src, did, rec.offset));
            }
            dead.emit(&site.metrics, self.alias());
        }
        self.send_positions(&log, generation)?;
        Ok(log)
    }

    /// Sends the copy of `rec` to its destination partition: key, value, headers and the
    /// source's timestamp as they were; `id` tracks its delivery report.
    fn send_copy(
        &mut self,
        rec: &er_protocol::RecordView<'_>,
        topic: &str,
        partition: i32,
        id: usize,
    ) -> Result<(), WriteError> {
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
        for (k, v) in rec.headers.iter() {
            headers = headers.insert(Header { key: k, value: v });
        }
        let mut r: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(topic, id)
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
        self.send(r)
    }

    /// Sends the new position of every source partition in the transaction to its site's
    /// shard of the positions topic.
    fn send_positions(&mut self, log: &TxnLog, generation: u32) -> Result<(), WriteError> {
        for st in &log.sites {
            let shard = st.site.shard as i32;
            for (tp, _, next) in &st.sources {
                let key = position_key(&st.site.alias, tp).map_err(|e| WriteError::BadBatch {
                    tp: tp.clone(),
                    message: e.to_string(),
                })?;
                let value = position_value(*next);
                let r: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(
                    &self.positions_topic,
                    opaque(generation, UNTRACKED),
                )
                .partition(shard)
                .key(key.as_slice())
                .payload(&value[..]);
                self.send(r)?;
            }
        }
        Ok(())
    }

    /// Writes a record that cannot go where it belongs into the site's dead-letter topic: its
    /// source coordinates and key (when small enough), and its value and headers when the letter
    /// says the whole record fits.
    fn dead_letter(
        &self,
        site: &Site,
        rec: &er_protocol::RecordView<'_>,
        letter: &DeadLetter<'_>,
        generation: u32,
    ) -> Result<(), WriteError> {
        use dead_letter_header as dl;
        let topic = dead_letter_topic(&site.alias);
        ensure_dead_letter_topic(&self.topics, &self.rt, &self.cluster.alias, &site.alias)?;
        let (partition, offset) = (letter.source.partition.to_string(), rec.offset.to_string());
        let value_bytes = rec.value.map_or(0, <[u8]>::len).to_string();
        let mut headers = OwnedHeaders::new_with_capacity(6 + rec.headers.len())
            .insert(header(dl::TOPIC, &letter.source.topic))
            .insert(header(dl::PARTITION, &partition))
            .insert(header(dl::OFFSET, &offset))
            .insert(header(dl::DESTINATION, letter.destination))
            .insert(header(dl::REASON, letter.reason))
            .insert(header(dl::VALUE_BYTES, &value_bytes));
        if letter.whole {
            for (k, v) in rec.headers.iter() {
                headers = headers.insert(Header { key: k, value: v });
            }
        }
        let mut r: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(&topic, opaque(generation, UNTRACKED))
                .partition(0)
                .headers(headers);
        if let Some(k) = rec.key.filter(|k| letter.whole || k.len() <= 64 * 1024) {
            r = r.key(k);
        }
        if let Some(v) = rec.value.filter(|_| letter.whole) {
            r = r.payload(v);
        }
        if letter.whole && rec.timestamp_type != TimestampType::NotAvailable {
            r = r.timestamp(rec.timestamp);
        }
        self.send(r)
    }

    /// Flushes the records, writes their index entries and the shards' fencing offsets into
    /// the transaction, commits, then applies positions and entries to the sites.
    fn index_and_commit(
        &mut self,
        prepared: &[Prepared],
        log: TxnLog,
        generation: u32,
        group: Option<&Arc<ConsumerGroupMetadata>>,
    ) -> Result<u64, WriteError> {
        let started = Instant::now();
        self.drain(TXN_TIMEOUT)?;
        let failed = |cluster: &str, message: String| WriteError::Kafka {
            cluster: cluster.to_owned(),
            message,
        };
        let offsets = self
            .producer()
            .context()
            .wait(TXN_TIMEOUT)
            .map_err(|m| failed(self.alias(), m))?;
        self.timing.flush = started.elapsed();
        if offsets.len() != log.sent.len() {
            return Err(failed(
                self.alias(),
                format!(
                    "{} delivery reports for {} records",
                    offsets.len(),
                    log.sent.len()
                ),
            ));
        }
        let entries = index_entries(&log, &offsets)
            .map_err(|m| failed(self.alias(), format!("building the offset index: {m}")))?;
        self.send_index(&log, &entries, generation)?;
        // Deliver the index records first: commit_transaction's own flush waits for delivery
        // reports that only our polling serves.
        self.drain(TXN_TIMEOUT)?;
        let marks = self.send_fence(&log, group)?;
        for st in &log.sites {
            st.site.clusters[self.cluster_index]
                .index
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .set_committing(true);
        }
        let committing = Instant::now();
        let committed = self.producer().commit_transaction(TXN_TIMEOUT);
        self.timing.commit = committing.elapsed();
        if let Err(e) = committed {
            // The outcome is unknown (a timeout may still commit): the shards' state must be
            // read again from Kafka before anyone resumes from it.
            for st in &log.sites {
                st.site.clusters[self.cluster_index]
                    .index
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .mark_stopped();
                st.site.mark_stale();
            }
            return Err(self.txn_error("commit", e));
        }
        let _ = prepared;
        self.membership.fences_committed(marks);
        for (st, e) in log.sites.into_iter().zip(entries) {
            let c = &st.site.clusters[self.cluster_index];
            {
                let mut index = c.index.write().unwrap_or_else(PoisonError::into_inner);
                index.apply(&e);
                index.set_committing(false);
            }
            c.committed(st.sources.into_iter().map(|(tp, _, next)| (tp, next)));
        }
        Ok(log.sent.len() as u64)
    }

    /// Sends each site's offset index entries to its shard of the offset index topic.
    fn send_index(
        &self,
        log: &TxnLog,
        entries: &[Vec<offsets::SourceEntries>],
        generation: u32,
    ) -> Result<(), WriteError> {
        for (st, e) in log.sites.iter().zip(entries) {
            for rec in offsets::encode(e, offsets::MAX_RECORD_BYTES) {
                let r =
                    BaseRecord::with_opaque_to(&self.index_topic, opaque(generation, UNTRACKED))
                        .partition(st.site.shard as i32)
                        .key(st.site.alias.as_bytes())
                        .payload(&rec[..]);
                self.send(r)?;
            }
        }
        Ok(())
    }

    /// Adds the fencing offsets of the transaction's shards to it, under the member's
    /// generation `group` from when the transaction began, not now: a transaction that began
    /// before a lost assignment must fail its fence even if this hub has joined again since and
    /// holds the shard anew (its data was built on the old state). The marks to note once it
    /// committed.
    fn send_fence(
        &self,
        log: &TxnLog,
        group: Option<&Arc<ConsumerGroupMetadata>>,
    ) -> Result<Vec<(Shard, String)>, WriteError> {
        let shards: BTreeSet<Shard> = log.sites.iter().map(|s| s.site.shard).collect();
        let (fence, marks) = self.membership.fence_offsets(shards.iter().copied());
        let Some(group) = group else {
            return Err(WriteError::Fenced {
                cluster: self.cluster.alias.clone(),
                message: "not a member of the hubs' group".into(),
            });
        };
        let producer = self
            .producer
            .clone()
            .expect("a transaction runs only with a producer");
        let (group, (tx, rx)) = (Arc::clone(group), std::sync::mpsc::sync_channel(1));
        // librdkafka can wait for the group coordinator past the call's timeout, forever when
        // it cached a coordinator whose broker it dropped (a broker fenced for a while by its
        // controller does this; librdkafka issues 5456 and 5511). The call runs on a thread of
        // its own, so a hang costs this producer, not the writer: past the timeout the writer
        // gives the producer up, and its next one fences whatever the stuck call holds.
        let call = std::thread::Builder::new()
            .name(format!("txn-fence-{}", self.index))
            .spawn(move || {
                let _ =
                    tx.send(producer.send_offsets_to_transaction(&fence, &group, FENCE_TIMEOUT));
            });
        let outcome = match call {
            Ok(_) => rx.recv_timeout(FENCE_TIMEOUT + FENCE_GRACE),
            Err(_) => Err(std::sync::mpsc::RecvTimeoutError::Disconnected),
        };
        match outcome {
            Ok(Ok(())) => Ok(marks),
            Ok(Err(e)) => Err(self.txn_error("committing the shards' fencing offsets", e)),
            Err(_) => {
                crate::metrics::producer_abandoned(&self.cluster.alias);
                tracing::warn!(cluster = %self.cluster.alias, writer = self.index, waited_s = (FENCE_TIMEOUT + FENCE_GRACE).as_secs(), "the producer did not return from committing the shards' fencing offsets; it is given up and a new one started");
                self.restart.set(true);
                Err(WriteError::Kafka {
                    cluster: self.cluster.alias.clone(),
                    message: format!(
                        "committing the shards' fencing offsets did not end within {:?}",
                        FENCE_TIMEOUT + FENCE_GRACE
                    ),
                })
            }
        }
    }

    fn abort(&self) {
        let Some(p) = &self.producer else { return };
        if self.restart.get() {
            return;
        }
        if let Err(e) = p.abort_transaction(Duration::from_secs(30)) {
            tracing::warn!(cluster = %self.cluster.alias, writer = self.index, error = %e, "abort failed; starting a new producer");
            self.restart.set(true);
        }
    }

    /// Waits until every produced record was delivered and its report served. rdkafka's
    /// `flush` polls in fixed 100 ms steps (its `poll` serves events until the timeout, not
    /// until the first one), which made every transaction last a multiple of 100 ms; short
    /// polls return within a millisecond of the last report.
    fn drain(&self, timeout: Duration) -> Result<(), WriteError> {
        let deadline = Instant::now() + timeout;
        while self.producer().in_flight_count() > 0 {
            if Instant::now() >= deadline {
                return Err(WriteError::Kafka {
                    cluster: self.cluster.alias.clone(),
                    message: format!(
                        "{} records still undelivered after {timeout:?}",
                        self.producer().in_flight_count()
                    ),
                });
            }
            self.serve_reports();
        }
        Ok(())
    }

    /// Serves a ready delivery report, or sleeps [`REPORT_PAUSE`] when there is none.
    fn serve_reports(&self) {
        crate::kafka::serve_reports(self.producer(), REPORT_PAUSE);
    }

    fn send(&self, mut r: BaseRecord<'_, [u8], [u8], usize>) -> Result<(), WriteError> {
        let mut refreshed = false;
        loop {
            match self.producer().send(r) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is bounded; wait for deliveries to free room.
                    self.serve_reports();
                    r = back;
                }
                // The topic grew (the hub grew it to follow the edge) after the producer
                // cached its metadata, which it refreshes only every few minutes on its own:
                // ask once for the topic's metadata, which updates the cache, and try again.
                Err((
                    e @ KafkaError::MessageProduction(RDKafkaErrorCode::UnknownPartition),
                    back,
                )) if !refreshed => {
                    refreshed = true;
                    tracing::debug!(cluster = %self.alias(), topic = back.topic, partition = ?back.partition, "partition unknown to the producer; refreshing its metadata");
                    if let Err(m) = self
                        .producer()
                        .client()
                        .fetch_metadata(Some(back.topic), Duration::from_secs(10))
                    {
                        tracing::warn!(cluster = %self.alias(), topic = back.topic, error = %m, "refreshing the producer's metadata failed");
                        return Err(self.txn_error("produce", e));
                    }
                    r = back;
                }
                Err((e, _)) => return Err(self.txn_error("produce", e)),
            }
        }
    }
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

/// Per committed batch that wrote records to their destination: now minus the timestamp of
/// its oldest such record, in seconds, clamped at 0 (an edge clock ahead of the hub's shows in
/// `er_hub_replication_lag_seconds`, not here). Records without a timestamp are left out.
fn replication_latencies(prepared: &[Prepared]) -> impl Iterator<Item = f64> + '_ {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    prepared.iter().filter_map(move |p| {
        p.records
            .iter()
            .zip(&p.dests)
            .filter(|(_, d)| matches!(d, Dest::Topic(..)))
            .filter_map(|(r, _)| r.ok())
            .filter(|r| r.timestamp_type != TimestampType::NotAvailable)
            .map(|r| r.timestamp)
            .min()
            .map(|oldest| (now_ms.saturating_sub(oldest)).max(0) as f64 / 1e3)
    })
}

/// Index of records whose offset is not needed (positions, index records).
const UNTRACKED: usize = u32::MAX as usize;
const _: () = assert!(
    usize::BITS >= 64,
    "delivery opaques pack a generation and an index"
);

/// A header with a text value.
fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a [u8]> {
    Header {
        key,
        value: Some(value.as_bytes()),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preparer_hands_a_transaction_over_only_when_its_writer_can_start_it() {
        // The linger comes first, whatever the writer does.
        let left = Duration::from_millis(3);
        assert_eq!(when_empty(left, false), Collect::Linger(left));
        assert_eq!(
            when_empty(Duration::from_secs(1), true),
            Collect::Linger(Duration::from_secs(1))
        );
        // Then, while the writer is inside a transaction, what arrives joins the next one ...
        assert_eq!(
            when_empty(Duration::ZERO, true),
            Collect::AwaitWriter(BUSY_STEP)
        );
        // ... which is handed over once the writer can start it.
        assert_eq!(when_empty(Duration::ZERO, false), Collect::Prepare);
    }

    /// Heartbeats of `sites` sites (one shard), one a second each, spread over the second,
    /// through a preparer paced by `pacing` for `seconds`: (partitions written per second,
    /// the longest a heartbeat waited).
    fn paced(sites: u64, pacing: HeartbeatPacing, seconds: u64) -> (f64, Duration) {
        let step = Duration::from_millis(1);
        let (mut until, mut pending, mut oldest) = (Duration::ZERO, HashSet::new(), None);
        let (mut written, mut longest) = (0usize, Duration::ZERO);
        for ms in 0..seconds * 1000 {
            let now = step * ms as u32;
            for site in 0..sites {
                // Site `site` beats at `site / sites` of each second.
                if (ms % 1000) == site * 1000 / sites {
                    pending.insert(site);
                    oldest.get_or_insert(now);
                }
            }
            if let Some(first) = oldest.filter(|_| now >= until) {
                let partitions = pending.len() + 2;
                written += partitions;
                longest = longest.max(now - first);
                until = now + pacing.hold_after(partitions);
                pending.clear();
                oldest = None;
            }
        }
        (written as f64 / seconds as f64, longest)
    }

    #[test]
    fn heartbeats_alone_are_held_to_the_partition_budget_and_never_past_the_longest_hold() {
        let pacing = HeartbeatPacing {
            partitions_per_second: 100,
            max_delay: Duration::from_secs(5),
        };
        // A few sites: each heartbeat goes at once.
        let (_, longest) = paced(3, pacing, 30);
        assert_eq!(longest, Duration::ZERO);
        // Hundreds: the writer settles at its budget, heartbeats wait.
        let (rate, longest) = paced(300, pacing, 60);
        assert!((90.0..=110.0).contains(&rate), "{rate} partitions/s");
        assert!(longest > Duration::from_secs(1), "{longest:?}");
        assert!(longest <= pacing.max_delay, "{longest:?}");
        // Unpaced, the same fleet writes three times as many.
        let off = HeartbeatPacing {
            partitions_per_second: 0,
            ..pacing
        };
        let (rate, longest) = paced(300, off, 60);
        assert!(rate > 290.0, "{rate} partitions/s");
        assert!(longest <= Duration::from_millis(1), "{longest:?}");
        // More than the budget holds in the longest hold: that bounds the wait, not the rate.
        let (rate, longest) = paced(1000, pacing, 60);
        assert!(longest <= pacing.max_delay, "{longest:?}");
        assert!((190.0..=215.0).contains(&rate), "{rate} partitions/s");
    }

    #[test]
    fn the_writer_is_busy_from_the_handover_until_the_transaction_ended() {
        let h = Handoff::default();
        assert!(!h.writer_busy());
        h.handed();
        assert!(
            h.writer_busy(),
            "a handed transaction keeps the writer busy"
        );
        h.handed();
        h.ended();
        assert!(h.writer_busy(), "one of two transactions still runs");
        h.ended();
        assert!(!h.writer_busy());
    }

    #[tokio::test]
    async fn a_writer_queue_holds_at_most_its_byte_budget() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let q = Queue::new(tx, 10_000);
        let site = Site::new("a", 0, vec![]);
        let first = q.reserve(&site, 6_000).await.unwrap();
        // 6,256 of 10,000 bytes taken: another 6,000-byte batch waits ...
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), q.reserve(&site, 6_000)).await;
        assert!(waiting.is_err(), "the budget was overdrawn");
        // ... small ones still fit ...
        let small = q.reserve(&site, 100).await.unwrap();
        // ... and it gets in once the first batch's transaction ended.
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), q.reserve(&site, 6_000)).await;
        assert!(second.is_ok());
        drop((small, second));
        // A batch larger than the whole budget takes all of it, once the queue is empty.
        let huge = q.reserve(&site, 1 << 30).await.unwrap();
        assert_eq!(huge._queue.num_permits(), 10_000);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), q.reserve(&site, 0))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn one_site_holds_at_most_its_share_of_the_queues_and_others_still_get_in() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let q = Queue::new(tx, 100_000);
        let busy = Site::new("busy", 0, vec![]).with_queue_budget(10_000);
        let quiet = Site::new("quiet", 0, vec![]).with_queue_budget(10_000);
        let held = q.reserve(&busy, 9_000).await.unwrap();
        // The queue has room, the busy site's share has not.
        let more = tokio::time::timeout(Duration::from_millis(50), q.reserve(&busy, 2_000)).await;
        assert!(more.is_err(), "the busy site overdrew its share");
        let other = tokio::time::timeout(Duration::from_millis(50), q.reserve(&quiet, 2_000)).await;
        assert!(other.is_ok(), "another site waited behind the busy one");
        drop(held);
        let more = tokio::time::timeout(Duration::from_secs(1), q.reserve(&busy, 2_000)).await;
        assert!(
            more.is_ok(),
            "the share came back when the batch's transaction ended"
        );
        // A batch larger than the share waits until none of the site's batches is queued.
        let big = tokio::time::timeout(Duration::from_millis(50), q.reserve(&busy, 50_000)).await;
        assert!(big.is_err());
    }

    #[test]
    fn the_identity_policy_writes_only_allowlisted_unprotected_topics() {
        let allow = vec![(
            crate::config::whole_match("plant-.*").unwrap(),
            crate::config::whole_match("plant-alarms|_schemas|connect-offsets").unwrap(),
        )];
        let id = ReplicationPolicy::Identity;
        assert_eq!(
            remote_topic(&id, &allow, "plant-7", "plant-alarms").as_deref(),
            Ok("plant-alarms")
        );
        let refused = |site: &str, topic: &str| remote_topic(&id, &allow, site, topic).unwrap_err();
        assert!(refused("shop-1", "plant-alarms").contains("not in replication.identity_allow"));
        assert!(refused("plant-7", "orders").contains("not in replication.identity_allow"));
        // Listed or not, Connect's and Schema Registry's topics are never written.
        assert!(refused("plant-7", "_schemas").contains("protected"));
        assert!(refused("plant-7", "connect-offsets").contains("protected"));
        assert!(refused("plant-7", "__consumer_offsets").contains("internal"));
        // MM2 heartbeats stay prefixed with the site (its own namespace): no listing needed.
        assert_eq!(
            remote_topic(&id, &allow, "shop-1", "heartbeats").as_deref(),
            Ok("shop-1.heartbeats")
        );
        // The default policy prefixes: the allowlist does not apply.
        let default = ReplicationPolicy::Default {
            separator: ".".into(),
        };
        assert_eq!(
            remote_topic(&default, &[], "shop-1", "connect-offsets").as_deref(),
            Ok("shop-1.connect-offsets")
        );
    }

    #[test]
    fn shard_reads_wait_for_every_writer_to_have_initialised_once() {
        let ready = Arc::new(Initialised::default());
        assert!(
            ready.wait_for(0, Duration::ZERO),
            "no writer: nothing to wait for"
        );
        assert!(
            !ready.wait_for(2, Duration::from_millis(20)),
            "none initialised yet"
        );
        ready.one_more();
        let other = ready.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            other.one_more();
        });
        assert!(
            ready.wait_for(2, Duration::from_secs(10)),
            "woken by the second"
        );
        t.join().expect("thread");
    }

    #[test]
    fn transactional_ids_belong_to_a_hubs_writers() {
        assert_eq!(
            transactional_id("edge-replicator", "hub-1", "central", 3),
            "edge-replicator-hub-1-central-3"
        );
    }
}
