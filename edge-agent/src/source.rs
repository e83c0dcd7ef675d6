//! The edge Kafka side: topic discovery and the consumer that reads replicated partitions.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use er_protocol::{Batch, BatchBuilder, TopicPartition};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use er_plugin_host::OutBatch;

use crate::Stats;
use crate::config::Settings;
use crate::pipeline::SharedPipeline;
use crate::routes::chain::{ChainInput, ChainOutput, Pending, Shape, run_chain};

/// Partition counts of the replicated topics, by topic name.
pub type TopicSet = BTreeMap<String, i32>;

/// Why discovery leaves out a topic the config selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// Its name says it came from a central cluster the site writes to (`central.x`):
    /// replicating it back would loop.
    FromDestination,
    /// Its name says it already came from this site (`<site>.x`): a two-way flow would
    /// bring it back and forth.
    FromSite,
    /// Internal under the replication policy's separator (MM2 >= 3.1), e.g. `x_internal`
    /// with separator `_`.
    Internal,
}

impl SkipReason {
    /// The `reason` label of [`crate::metrics::TOPICS_SKIPPED`].
    pub fn label(self) -> &'static str {
        match self {
            SkipReason::FromDestination => "from_destination",
            SkipReason::FromSite => "from_site",
            SkipReason::Internal => "internal",
        }
    }
}

/// Loop prevention: which selected topics must not be replicated, judged by their names under
/// the replication policy, as MM2's `MirrorSourceConnector.shouldReplicateTopic` does
/// (internal topics and cycles), with this site and every known destination cluster as the
/// aliases a cycle would pass through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopGuard {
    policy: er_protocol::ReplicationPolicy,
    site: String,
    destinations: Vec<String>,
}

impl LoopGuard {
    /// A guard for `site` writing to the central clusters `destinations` under `policy`.
    pub fn new(
        policy: er_protocol::ReplicationPolicy,
        site: impl Into<String>,
        destinations: Vec<String>,
    ) -> Self {
        Self {
            policy,
            site: site.into(),
            destinations,
        }
    }

    /// Why `topic` must not be replicated, if it must not. The heartbeats topic of this site
    /// (`heartbeats`) has no source and always passes.
    pub fn check(&self, topic: &str) -> Option<SkipReason> {
        if self.policy.is_internal_topic(topic) {
            return Some(SkipReason::Internal);
        }
        let chain = self.policy.source_chain(topic);
        if chain.iter().any(|a| self.destinations.contains(a)) {
            Some(SkipReason::FromDestination)
        } else if chain.contains(&self.site) {
            Some(SkipReason::FromSite)
        } else {
            None
        }
    }
}

/// Lists the local topics the config selects (blocking: run off the executor).
pub struct Discovery {
    client: BaseConsumer,
    admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    /// Whether describing configs failed once (logged once per process).
    describe_failed: std::sync::atomic::AtomicBool,
    /// Whether listing ACLs failed once (logged once per process).
    acls_failed: std::sync::atomic::AtomicBool,
    /// Topics already reported as skipped (logged and counted once per process).
    skipped: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").finish_non_exhaustive()
    }
}

impl Discovery {
    /// Creates the metadata client (no broker round trip yet).
    pub fn new(cfg: &Settings) -> Result<Self, KafkaError> {
        Ok(Self {
            client: crate::kafka::base_config(&cfg.kafka).create()?,
            admin: crate::kafka::base_config(&cfg.kafka).create()?,
            describe_failed: Default::default(),
            acls_failed: Default::default(),
            skipped: Default::default(),
        })
    }

    /// The partition count and configs of each topic of `set` that `cfg` reports to the hub.
    /// Configs are those set on the topic or by the edge brokers' dynamic settings (MM2 sends
    /// the same): neither Kafka's defaults nor static broker settings, nothing read-only or
    /// sensitive. When the edge cluster cannot describe configs, topics go without them.
    pub async fn topic_metadata(
        &self,
        cfg: &Settings,
        set: &TopicSet,
        timeout: Duration,
    ) -> Vec<er_protocol::TopicMetadata> {
        use rdkafka::admin::{AdminOptions, ConfigSource, ResourceSpecifier};
        let topics: Vec<(&String, i32)> = set
            .iter()
            .filter(|(t, _)| cfg.reports_metadata(t))
            .map(|(t, n)| (t, *n))
            .collect();
        if topics.is_empty() {
            return Vec::new();
        }
        let specs: Vec<_> = topics
            .iter()
            .map(|(t, _)| ResourceSpecifier::Topic(t))
            .collect();
        let described = self
            .admin
            .describe_configs(&specs, &AdminOptions::new().request_timeout(Some(timeout)))
            .await
            .inspect_err(|e| {
                if !self.describe_failed.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot describe the edge topics' configs; reporting their partition counts only (logged once)");
                }
            })
            .unwrap_or_default();
        let mut described = described.into_iter();
        topics
            .into_iter()
            .map(|(topic, partitions)| {
                let configs = match described.next() {
                    Some(Ok(c)) => c
                        .entries
                        .into_iter()
                        .filter(|e| {
                            matches!(
                                e.source,
                                ConfigSource::DynamicTopic
                                    | ConfigSource::DynamicBroker
                                    | ConfigSource::DynamicDefaultBroker
                            ) && !e.is_read_only
                                && !e.is_sensitive
                                && e.name.len() <= er_protocol::MAX_CONFIG_NAME_BYTES
                        })
                        .filter_map(|e| {
                            let v = e.value?;
                            (v.len() <= er_protocol::MAX_CONFIG_VALUE_BYTES).then_some((e.name, v))
                        })
                        .take(er_protocol::MAX_TOPIC_CONFIGS)
                        .collect(),
                    Some(Err(code)) => {
                        tracing::warn!(topic = %topic, error = %code, "cannot describe the edge topic's configs");
                        Vec::new()
                    }
                    None => Vec::new(),
                };
                er_protocol::TopicMetadata {
                    topic: topic.clone(),
                    partitions,
                    configs,
                }
            })
            .collect()
    }

    /// The ACL bindings of the topics of `set` that `cfg` reports, as MM2 syncs them (see
    /// [`mm2_topic_acls`]); `None` when they cannot be listed (an edge without an authorizer,
    /// or a principal without DESCRIBE on the cluster: logged once). Blocking.
    pub fn topic_acls(
        &self,
        cfg: &Settings,
        set: &TopicSet,
        timeout: Duration,
    ) -> Option<Vec<er_protocol::TopicAcl>> {
        match er_kafka_admin::describe_topic_acls(&self.admin, timeout) {
            Ok(all) => Some(mm2_topic_acls(all, |t| {
                set.contains_key(t) && cfg.reports_acls(t)
            })),
            Err(e) => {
                if !self
                    .acls_failed
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    if e.is_security_disabled() {
                        tracing::info!(
                            "the edge cluster has no authorizer: no topic ACLs to sync (logged once)"
                        );
                    } else {
                        tracing::warn!(error = %e, "cannot list the edge topics' ACLs; none are synced (logged once)");
                    }
                }
                None
            }
        }
    }

    /// Fetches metadata and returns the selected topics with their partition counts, minus
    /// those `guard` refuses (each logged at info and counted the first time).
    pub fn topics(
        &self,
        cfg: &Settings,
        guard: &LoopGuard,
        timeout: Duration,
    ) -> Result<TopicSet, KafkaError> {
        let md = self.client.fetch_metadata(None, timeout)?;
        Ok(select_topics(
            cfg,
            guard,
            md.topics()
                .iter()
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                .map(|t| (t.name(), t.partitions().len() as i32)),
            |topic, reason| self.skipped(topic, reason),
        ))
    }

    fn skipped(&self, topic: &str, reason: SkipReason) {
        let mut seen = self.skipped.lock().unwrap_or_else(|e| e.into_inner());
        if seen.insert(topic.to_owned()) {
            crate::events::TopicSkipped {
                topic,
                reason: reason.label(),
            }
            .emit();
        }
    }

    /// Low and high watermarks of a partition (blocking: run off the executor).
    pub fn watermarks(
        &self,
        tp: &TopicPartition,
        timeout: Duration,
    ) -> Result<(i64, i64), KafkaError> {
        self.client
            .fetch_watermarks(&tp.topic, tp.partition, timeout)
    }
}

/// The topics of `listed` (name, partition count) that the config selects and `guard` lets
/// through; `skipped` hears of each one the guard refuses.
pub fn select_topics<'a>(
    cfg: &Settings,
    guard: &LoopGuard,
    listed: impl IntoIterator<Item = (&'a str, i32)>,
    mut skipped: impl FnMut(&str, SkipReason),
) -> TopicSet {
    listed
        .into_iter()
        .filter(|(name, _)| cfg.wants_topic(name))
        .filter(|(name, _)| match guard.check(name) {
            // The site's own heartbeats topic is always replicated (MM2 does the same).
            _ if *name == er_protocol::HEARTBEATS_TOPIC => true,
            Some(reason) => {
                skipped(name, reason);
                false
            }
            None => true,
        })
        .map(|(name, n)| (name.to_owned(), n))
        .collect()
}

/// How long a watermark request to the edge cluster may take.
const WATERMARKS_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a reader looks whether the consumer's position of an idle partition moved past
/// the records it handed out (transaction markers, aborted records). Such a partition then
/// sends a batch without records after the linger, unless records come first.
pub const POSITION_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// A partition to start reading, with the position to read from.
#[derive(Debug, Clone)]
pub struct StartPartition {
    /// The partition.
    pub tp: TopicPartition,
    /// Partition count of its topic (sent with every batch so the hub can create the topic).
    pub partition_count: i32,
    /// Where to start: the hub's position, or the beginning.
    pub offset: Offset,
}

/// Commands from the session to its reader thread.
#[derive(Debug)]
pub enum ReaderCmd {
    /// Start reading these partitions too.
    Add(Vec<StartPartition>),
    /// Stop reading this partition (the hub stopped it) and forget what is held of it.
    Stop(TopicPartition),
}

/// Batch shape settings for the reader.
#[derive(Debug, Clone)]
pub struct BatchLimits {
    /// Records per batch.
    pub max_records: usize,
    /// Encoded bytes per batch.
    pub max_bytes: usize,
    /// Largest encoded record sent as is; a larger one goes as a poison stub
    /// (`er_protocol::POISON_REASON_HEADER`), which the hub writes to the site's dead letters.
    pub max_record_bytes: usize,
    /// Longest wait after a batch's first record.
    pub linger: Duration,
    /// Compression.
    pub codec: er_protocol::Codec,
    /// zstd level.
    pub zstd_level: i32,
}

struct ReadPart {
    /// Where reading continues: after the last record handed out (or the start position).
    resume: Offset,
    /// `next_offset` of the last batch handed to the session (at first, the start position):
    /// the position the hub commits once everything sent is acked.
    sent: Option<i64>,
    /// Whether librdkafka's position of this partition may move `sent` past records it never
    /// handed out (control records, aborted transactions). False after a stopped route rewound
    /// the partition, until a record of the new assignment was read: until then the position
    /// may still be the one from before the rewind.
    trust_position: bool,
    partition_count: i32,
    builder: BatchBuilder,
    opened: Option<Instant>,
    next_seq: u64,
    /// The route (index into the pipeline) this partition's topic takes.
    route: Option<usize>,
    /// Records of a routed partition waiting for the chain.
    pending: Pending,
    /// The route stopped on a plugin failure: unassigned until this time, then retried from
    /// `resume`.
    stopped_until: Option<Instant>,
}

impl ReadPart {
    /// The consumer's position `position` if it lies past everything handed out and sent: the
    /// offsets in between were never handed out, so they are control records (transaction
    /// markers) or records of aborted transactions (under read_committed), and a batch with
    /// this `next_offset` moves the hub's committed position over them.
    fn skipped_to(&self, position: Option<i64>) -> Option<i64> {
        if !self.trust_position || self.stopped_until.is_some() {
            return None;
        }
        let covered = match self.resume {
            Offset::Offset(o) => self.sent.map_or(o, |s| s.max(o)),
            _ => self.sent.unwrap_or(-1),
        };
        position.filter(|p| *p > covered)
    }

    fn held(&self) -> (usize, usize) {
        match self.route {
            Some(_) => (self.pending.len(), self.pending.bytes()),
            None => (self.builder.len(), self.builder.encoded_bytes()),
        }
    }
}

/// What the reader needs to apply plugin routes.
#[derive(Debug, Clone)]
pub struct Routing {
    /// The config (its routes decide which topic takes which chain).
    pub cfg: Settings,
    /// The loaded chains, shared with later sessions.
    pub pipeline: SharedPipeline,
    /// Counters.
    pub stats: Arc<Stats>,
}

/// Reads assigned partitions on a dedicated thread (librdkafka's poll blocks), runs routed
/// partitions through their plugin chain, and hands finished, compressed batches to the session.
/// The batch channel is bounded: when the session stops taking batches the thread stops polling,
/// so librdkafka's bounded prefetch is the only other buffer.
pub fn spawn_kafka_reader(
    consumer: BaseConsumer,
    limits: BatchLimits,
    routing: Routing,
    cmds: std::sync::mpsc::Receiver<ReaderCmd>,
    out: tokio::sync::mpsc::Sender<anyhow::Result<Batch>>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("edge-reader".into())
        .spawn(move || {
            let mut r = Reader {
                consumer,
                limits,
                routing,
                parts: HashMap::new(),
                out,
                scratch: OutBatch::new(),
                records_read: ::metrics::counter!(crate::metrics::RECORDS_READ),
                positions_checked: Instant::now(),
            };
            if let Err(e) = r.run(&cmds) {
                let _ = r.out.blocking_send(Err(e));
            }
        })
        .expect("spawning the reader thread")
}

struct Reader {
    consumer: BaseConsumer,
    limits: BatchLimits,
    routing: Routing,
    parts: HashMap<TopicPartition, ReadPart>,
    out: tokio::sync::mpsc::Sender<anyhow::Result<Batch>>,
    /// Reused output buffer of plugin chains.
    scratch: OutBatch,
    records_read: ::metrics::Counter,
    /// When idle partitions were last checked for a position past their records.
    positions_checked: Instant,
}

/// The session is gone: stop quietly.
struct Closed;

impl Reader {
    fn run(&mut self, cmds: &std::sync::mpsc::Receiver<ReaderCmd>) -> anyhow::Result<()> {
        loop {
            if self.apply_commands(cmds)?.is_err() {
                return Ok(());
            }
            self.retry_stopped_routes()?;
            match self.consumer.poll(self.poll_wait()) {
                None => {}
                Some(Ok(m)) => {
                    let full = hold(
                        &mut self.parts,
                        &self.limits,
                        &self.routing.stats,
                        &self.records_read,
                        &m,
                    );
                    // More records follow: the position does not matter yet.
                    if let Some(tp) = full
                        && self.seal(&tp, None)?.is_err()
                    {
                        return Ok(());
                    }
                }
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                    // A fetch position fell out of the log (the error does not say which
                    // partition): retention overtook the reader, e.g. while it waited for acks.
                    let tps: Vec<TopicPartition> = self.parts.keys().cloned().collect();
                    self.skip_retention_gaps(&tps);
                    self.assign()?;
                }
                Some(Err(e)) => {
                    // librdkafka retries broker and transport errors itself; report, go on.
                    tracing::warn!(error = %e, "edge consumer error");
                }
            }
            if self.seal_lingered()?.is_err() {
                return Ok(());
            }
        }
    }

    /// Applies the session's commands waiting for the reader; `Err(Closed)` once the session
    /// dropped its end.
    fn apply_commands(
        &mut self,
        cmds: &std::sync::mpsc::Receiver<ReaderCmd>,
    ) -> anyhow::Result<Result<(), Closed>> {
        loop {
            match cmds.try_recv() {
                Ok(ReaderCmd::Add(list)) => self.add(list)?,
                Ok(ReaderCmd::Stop(tp)) => {
                    if self.parts.remove(&tp).is_some() {
                        self.assign()?;
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(Ok(())),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return Ok(Err(Closed)),
            }
        }
    }

    /// How long the next poll may wait: until the oldest open batch's linger ends, at most
    /// 100 ms.
    fn poll_wait(&self) -> Duration {
        let now = Instant::now();
        let wait = self
            .parts
            .values()
            .filter_map(|p| p.opened)
            .min()
            .map_or(Duration::from_millis(100), |o| {
                (o + self.limits.linger).saturating_duration_since(now)
            })
            .min(Duration::from_millis(100));
        // Whole milliseconds: rust-rdkafka passes a sub-millisecond remainder to librdkafka
        // as a zero timeout and polls again until the time is over, a busy loop that cost
        // the reader a tenth of the machine's CPU in `clock_gettime` (perf). A batch is
        // sealed at most a millisecond past its linger.
        Duration::from_millis(wait.as_micros().div_ceil(1000) as u64)
    }

    /// Seals every batch whose linger is over, at the consumer's position; now and then
    /// opens batches for idle partitions whose position moved past their records.
    fn seal_lingered(&mut self) -> anyhow::Result<Result<(), Closed>> {
        let now = Instant::now();
        if now >= self.positions_checked + POSITION_CHECK_INTERVAL {
            self.positions_checked = now;
            self.open_skipped(now);
        }
        let due: Vec<TopicPartition> = self
            .parts
            .iter()
            .filter(|(_, p)| p.opened.is_some_and(|o| now >= o + self.limits.linger))
            .map(|(tp, _)| tp.clone())
            .collect();
        if due.is_empty() {
            return Ok(Ok(()));
        }
        let positions = self.positions();
        for tp in due {
            let position = positions.get(&tp).copied();
            if self.seal(&tp, position)?.is_err() {
                return Ok(Err(Closed));
            }
        }
        Ok(Ok(()))
    }

    /// The consumer's positions of the assigned partitions that have one: the offset after
    /// the last record or control record librdkafka handed out (aborted records skipped under
    /// read_committed included), so it can lie past the last record this reader saw.
    fn positions(&self) -> HashMap<TopicPartition, i64> {
        match self.consumer.position() {
            Ok(tpl) => tpl
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) if o >= 0 => {
                        Some((TopicPartition::new(e.topic(), e.partition()), o))
                    }
                    _ => None,
                })
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "edge consumer positions unknown");
                HashMap::new()
            }
        }
    }

    /// Opens a batch (starts its linger) for every idle partition whose consumer position
    /// moved past what it handed out, e.g. over the commit marker that ends a transaction: the
    /// batch is sealed at linger expiry with that position, with the records that arrived
    /// meanwhile or none. Without it the hub's position would stay before the marker, and a
    /// consumer group caught up to the end of the topic (whose committed offset is past the
    /// marker) would never get a checkpoint.
    fn open_skipped(&mut self, now: Instant) {
        if self.parts.values().all(|p| p.opened.is_some()) {
            return;
        }
        let positions = self.positions();
        for (tp, part) in &mut self.parts {
            if part.opened.is_none()
                && let Some(to) = part.skipped_to(positions.get(tp).copied())
            {
                tracing::debug!(%tp, sent = ?part.sent, position = to, "position moved past control or aborted records");
                part.opened = Some(now);
            }
        }
    }

    fn add(&mut self, list: Vec<StartPartition>) -> anyhow::Result<()> {
        let added: Vec<TopicPartition> = list.iter().map(|s| s.tp.clone()).collect();
        for s in list {
            let route = self.routing.cfg.routes.route_for(&s.tp.topic);
            if let Some(r) = route {
                tracing::info!(tp = %s.tp, route = %self.routing.cfg.routes[r].name, "partition takes a plugin route");
            }
            let sent = match s.offset {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            self.parts.insert(
                s.tp.clone(),
                ReadPart {
                    resume: s.offset,
                    sent,
                    trust_position: true,
                    partition_count: s.partition_count,
                    builder: BatchBuilder::new(s.tp, s.partition_count)
                        .with_max_record_bytes(self.limits.max_record_bytes),
                    opened: None,
                    next_seq: 0,
                    route,
                    pending: Pending::default(),
                    stopped_until: None,
                },
            );
        }
        self.skip_retention_gaps(&added);
        self.assign()
    }

    /// Moves partitions whose position lies before the log start (edge retention deleted
    /// records the hub never committed) to the log start, the earliest record still there, and
    /// reports the gap loudly: those records are lost. Checked when partitions are assigned and
    /// again when librdkafka finds a fetch position out of range. A partition whose watermarks
    /// cannot be read keeps its position: if that is out of range, librdkafka says so and this
    /// runs again.
    fn skip_retention_gaps(&mut self, tps: &[TopicPartition]) {
        for tp in tps {
            let Some(part) = self.parts.get_mut(tp) else {
                continue;
            };
            let Offset::Offset(position) = part.resume else {
                continue;
            };
            if part.stopped_until.is_some() {
                continue;
            }
            let (low, high) = match self.consumer.fetch_watermarks(
                &tp.topic,
                tp.partition,
                WATERMARKS_TIMEOUT,
            ) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(%tp, position, error = %e, "edge watermarks unknown; cannot check for a retention gap");
                    continue;
                }
            };
            if position < low {
                let news = crate::metrics::RetentionGaps::global().record(tp, position, low);
                if news.new_records > 0 {
                    crate::metrics::retention_gap(tp, news);
                    tracing::error!(
                        topic = %tp.topic,
                        partition = tp.partition,
                        missing_from = position,
                        missing_until = low,
                        missing_records = low - position,
                        "records lost: edge retention deleted offsets [missing_from, missing_until) before they were replicated; continuing from the earliest offset still there"
                    );
                } else {
                    tracing::warn!(%tp, missing_from = position, missing_until = low, "the hub's position is still before a retention gap already reported; continuing from the earliest offset");
                }
                part.resume = Offset::Offset(low);
            } else if position > high {
                // The hub committed more than the partition now holds: the edge topic was
                // recreated or truncated. Read all of it, as a new partition.
                tracing::error!(%tp, position, log_end = high, "the hub's position is past the end of the edge partition (topic recreated or truncated?); reading it from the beginning");
                part.resume = Offset::Beginning;
            }
        }
    }

    /// A plain assign of every partition not stopped, each where reading stopped. Records
    /// prefetched but not yet handed out are fetched again.
    fn assign(&mut self) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (tp, p) in &self.parts {
            if p.stopped_until.is_none() {
                tpl.add_partition_offset(&tp.topic, tp.partition, p.resume)
                    .with_context(|| format!("assigning {tp}"))?;
            }
        }
        self.consumer
            .assign(&tpl)
            .context("assigning partitions of the edge cluster")
    }

    /// Puts partitions of stopped routes back when their retry time has come, after checking
    /// their plugin files (a fixed plugin is picked up here).
    fn retry_stopped_routes(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        let due: Vec<TopicPartition> = self
            .parts
            .iter()
            .filter(|(_, p)| p.stopped_until.is_some_and(|t| now >= t))
            .map(|(tp, _)| tp.clone())
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        {
            let mut pipeline = self.routing.pipeline.lock().expect("pipeline lock");
            for tp in &due {
                let p = self.parts.get_mut(tp).expect("due partition exists");
                p.stopped_until = None;
                if let Some(r) = p.route {
                    pipeline.route(r).force_reload_check();
                }
                tracing::info!(%tp, resume = ?p.resume, "retrying a stopped route");
            }
        }
        self.assign()
    }

    /// Finishes the open batch of `tp` (through its route's chain, if any) and hands it over
    /// (blocking while the session is busy). `position` is the consumer's position of `tp`
    /// when known: a batch ends there if that lies past its records (see
    /// [`ReadPart::skipped_to`]), and one without records is sent just for that. The outer
    /// error is fatal for the session; the inner one means the session is gone.
    fn seal(
        &mut self,
        tp: &TopicPartition,
        position: Option<i64>,
    ) -> anyhow::Result<Result<(), Closed>> {
        let part = self.parts.get_mut(tp).expect("sealed partition exists");
        part.opened = None;
        let skipped_to = part.skipped_to(position);
        let held = match part.route {
            Some(_) => !part.pending.is_empty(),
            None => !part.builder.is_empty(),
        };
        if !held && skipped_to.is_none() {
            return Ok(Ok(()));
        }
        match part.route.filter(|_| held) {
            Some(route) => self.seal_through_chain(tp, route, skipped_to),
            None => Ok(self.seal_as_read(tp, skipped_to)),
        }
    }

    /// Sends the records of `tp` as read (no route, or none held: a batch that only moves the
    /// position to `skipped_to`).
    fn seal_as_read(&mut self, tp: &TopicPartition, skipped_to: Option<i64>) -> Result<(), Closed> {
        let part = self.parts.get_mut(tp).expect("sealed partition exists");
        if let Some(next) = skipped_to {
            part.builder.set_next_offset(next);
        }
        let batch = part
            .builder
            .finish_and_reset(part.next_seq, self.limits.codec, self.limits.zstd_level)
            .with_context(|| format!("encoding a batch of {tp}"));
        part.next_seq += 1;
        if let Ok(b) = &batch {
            part.sent = Some(b.header.next_offset);
        }
        self.out.blocking_send(batch).map_err(|_| Closed)
    }

    /// Runs the held records of `tp` through its route's chain and sends what comes out; a
    /// chain that stops (the route's error policy) leaves the records to be read again.
    fn seal_through_chain(
        &mut self,
        tp: &TopicPartition,
        route: usize,
        skipped_to: Option<i64>,
    ) -> anyhow::Result<Result<(), Closed>> {
        let part = self.parts.get_mut(tp).expect("sealed partition exists");
        let shape = Shape {
            max_records: self.limits.max_records,
            max_bytes: self.limits.max_bytes,
            codec: self.limits.codec,
            zstd_level: self.limits.zstd_level,
            max_source_bytes: self.limits.max_record_bytes,
        };
        let result = {
            let mut pipeline = self.routing.pipeline.lock().expect("pipeline lock");
            let rt = pipeline.route(route);
            rt.maybe_reload();
            run_chain(
                rt,
                ChainInput {
                    tp,
                    partition_count: part.partition_count,
                    pending: &part.pending,
                    skipped_to,
                },
                ChainOutput {
                    scratch: &mut self.scratch,
                    builder: &mut part.builder,
                    next_seq: &mut part.next_seq,
                },
                shape,
            )
        };
        let (batches, run) = match result {
            Ok(ran) => ran,
            Err(stopped) => {
                self.stop_route(tp, route, &stopped)?;
                return Ok(Ok(()));
            }
        };
        part.pending.clear();
        if let Some(last) = batches.last() {
            part.sent = Some(last.header.next_offset);
        }
        crate::events::ChainRan {
            dropped: run.dropped,
            failed: run.failed,
        }
        .emit(&self.routing.stats);
        for b in batches {
            if self.out.blocking_send(Ok(b)).is_err() {
                return Ok(Err(Closed));
            }
        }
        Ok(Ok(()))
    }

    /// The route of `tp` stopped at a record: forget what is held, read again from that
    /// record after the retry interval.
    fn stop_route(
        &mut self,
        tp: &TopicPartition,
        route: usize,
        stopped: &crate::routes::chain::RouteStopped,
    ) -> anyhow::Result<()> {
        let retry = self.routing.cfg.plugins.stopped_route_retry;
        crate::events::RouteStopped {
            route: &self.routing.cfg.routes[route].name,
            error: stopped,
            retry,
        }
        .emit(&self.routing.stats);
        let part = self.parts.get_mut(tp).expect("sealed partition exists");
        part.resume = Offset::Offset(stopped.first);
        // Until a record of the new assignment arrives, the consumer's position may still be
        // the one past the held records.
        part.trust_position = false;
        part.pending.clear();
        part.builder.reset(tp.clone(), part.partition_count);
        part.stopped_until = Some(Instant::now() + retry);
        self.assign()
    }
}

/// Takes one record into its partition's open batch (held for the route's chain, or encoded
/// as read); the partition when that batch is full. Records of partitions no longer read, or
/// waiting on a stopped route, are skipped: they are read again.
fn hold(
    parts: &mut HashMap<TopicPartition, ReadPart>,
    limits: &BatchLimits,
    stats: &Stats,
    records_read: &::metrics::Counter,
    m: &rdkafka::message::BorrowedMessage<'_>,
) -> Option<TopicPartition> {
    let tp = TopicPartition::new(m.topic(), m.partition());
    let part = parts.get_mut(&tp)?;
    if part.stopped_until.is_some() {
        // Fetched before the route stopped; it is read again on retry.
        return None;
    }
    stats.records_read.fetch_add(1, Ordering::Relaxed);
    records_read.increment(1);
    match part.route {
        Some(_) => part.pending.push(m),
        None => crate::kafka::push_message(&mut part.builder, m),
    }
    part.resume = Offset::Offset(m.offset() + 1);
    part.trust_position = true;
    part.opened.get_or_insert_with(Instant::now);
    let (records, bytes) = part.held();
    (records >= limits.max_records || bytes >= limits.max_bytes).then_some(tp)
}

/// All partitions of a topic set.
pub fn partitions(topics: &TopicSet) -> impl Iterator<Item = (TopicPartition, i32)> + '_ {
    topics
        .iter()
        .flat_map(|(t, n)| (0..*n).map(move |p| (TopicPartition::new(t.clone(), p), *n)))
}

/// The bindings MM2 syncs (`MirrorSourceConnector.syncTopicAcls`): literal ones on topics
/// `replicated` keeps, except ALLOW WRITE (only the replicator writes remote topics), with
/// ALLOW ALL narrowed to READ; sorted, each once, within the protocol's caps.
pub fn mm2_topic_acls(
    all: Vec<er_kafka_admin::TopicAcl>,
    replicated: impl Fn(&str) -> bool,
) -> Vec<er_protocol::TopicAcl> {
    use er_kafka_admin::{AclOperation, AclPermission, PatternType};
    let mut out: Vec<er_protocol::TopicAcl> = all
        .into_iter()
        .filter(|a| a.pattern == PatternType::Literal && replicated(&a.topic))
        .filter(|a| !(a.permission == AclPermission::Allow && a.operation == AclOperation::Write))
        .filter(|a| {
            (1..=er_protocol::MAX_ACL_PRINCIPAL_BYTES).contains(&a.principal.len())
                && (1..=er_protocol::MAX_ACL_HOST_BYTES).contains(&a.host.len())
                && (2..=12).contains(&a.operation.code())
        })
        .map(|a| {
            let operation = match (a.permission, a.operation) {
                (AclPermission::Allow, AclOperation::All) => AclOperation::Read,
                (_, op) => op,
            };
            er_protocol::TopicAcl {
                topic: a.topic,
                principal: a.principal,
                host: a.host,
                operation: operation.code(),
                permission: a.permission.code(),
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use er_protocol::ReplicationPolicy;

    fn config(extra: &str) -> (tempfile::TempDir, Settings) {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "site.pem", "site.key"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let path = dir.path().join("agent.toml");
        let cfg = crate::config::parse(
            &path,
            &format!(
                "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n[hub]\naddress = \"h:1\"\n\
                 ca_cert = \"ca.pem\"\ncert = \"site.pem\"\nkey = \"site.key\"\n{extra}"
            ),
        )
        .unwrap();
        (dir, cfg)
    }

    /// Discovery replicates neither topics that came from a destination cluster or from this
    /// site (at any hop of their name), nor internal ones, and reports each with its reason;
    /// everything else the patterns select passes, the heartbeats topic included.
    #[test]
    fn discovery_leaves_out_loops_and_reports_why() {
        let (_dir, cfg) = config("[topics]\ninclude = [\".*\"]\nexclude = [\"excluded\"]\n");
        let guard = LoopGuard::new(
            ReplicationPolicy::default(),
            "plant-7",
            vec!["central".into(), "central2".into()],
        );
        let listed = [
            ("orders", 3),
            ("sensors.temp", 1),
            ("plant-8.orders", 1),
            ("heartbeats", 1),
            ("central.orders", 2),
            ("central2.heartbeats", 1),
            ("plant-8.central.orders", 1),
            ("plant-7.orders", 1),
            ("central.plant-7.orders", 1),
            ("excluded", 1),
            ("__consumer_offsets", 50),
            ("plant-7.checkpoints.internal", 1),
        ];
        let mut skipped = Vec::new();
        let got = select_topics(&cfg, &guard, listed, |t, r| skipped.push((t.to_owned(), r)));
        assert_eq!(
            got.keys().map(String::as_str).collect::<Vec<_>>(),
            ["heartbeats", "orders", "plant-8.orders", "sensors.temp"]
        );
        assert_eq!(got["orders"], 3);
        skipped.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            skipped,
            [
                ("central.orders".to_owned(), SkipReason::FromDestination),
                (
                    "central.plant-7.orders".to_owned(),
                    SkipReason::FromDestination
                ),
                (
                    "central2.heartbeats".to_owned(),
                    SkipReason::FromDestination
                ),
                ("plant-7.orders".to_owned(), SkipReason::FromSite),
                (
                    "plant-8.central.orders".to_owned(),
                    SkipReason::FromDestination
                ),
            ],
            "internal and excluded topics are not selected in the first place"
        );
    }

    /// With a custom separator, names are read with it: `central_orders` loops,
    /// `central.orders` is an ordinary topic, and `<x>_internal` is internal (MM2 >= 3.1).
    #[test]
    fn the_guard_reads_names_with_the_policys_separator() {
        let guard = LoopGuard::new(
            ReplicationPolicy::Default {
                separator: "_".into(),
            },
            "plant-7",
            vec!["central".into()],
        );
        assert_eq!(
            guard.check("central_orders"),
            Some(SkipReason::FromDestination)
        );
        assert_eq!(guard.check("central.orders"), None);
        assert_eq!(guard.check("orders_internal"), Some(SkipReason::Internal));
        assert_eq!(guard.check("plant-7_x"), Some(SkipReason::FromSite));
        assert_eq!(guard.check("heartbeats"), None);
        let identity = LoopGuard::new(
            ReplicationPolicy::Identity,
            "plant-7",
            vec!["central".into()],
        );
        assert_eq!(
            identity.check("central.orders"),
            None,
            "identity names carry no source"
        );
        assert_eq!(
            identity.check("central.heartbeats"),
            Some(SkipReason::FromDestination)
        );
    }

    #[test]
    fn acls_are_synced_as_mm2_does() {
        use er_kafka_admin::{AclOperation as Op, AclPermission as Perm, PatternType, TopicAcl};
        let acl = |topic: &str, pattern, principal: &str, operation, permission| TopicAcl {
            topic: topic.into(),
            pattern,
            principal: principal.into(),
            host: "*".into(),
            operation,
            permission,
        };
        let got = mm2_topic_acls(
            vec![
                acl("t", PatternType::Literal, "User:a", Op::Read, Perm::Allow),
                acl("t", PatternType::Literal, "User:b", Op::Write, Perm::Allow),
                acl("t", PatternType::Literal, "User:c", Op::All, Perm::Allow),
                acl("t", PatternType::Literal, "User:d", Op::Write, Perm::Deny),
                acl("t", PatternType::Prefixed, "User:e", Op::Read, Perm::Allow),
                acl("u", PatternType::Literal, "User:f", Op::Read, Perm::Allow),
                acl("t", PatternType::Literal, "User:c", Op::Read, Perm::Allow),
            ],
            |t| t == "t",
        );
        let got: Vec<(&str, u8, u8)> = got
            .iter()
            .map(|a| (a.principal.as_str(), a.operation, a.permission))
            .collect();
        // READ 3, WRITE 4; ALLOW 3, DENY 2. ALL narrowed to READ, and then the same as c's
        // own READ binding: once.
        assert_eq!(got, [("User:a", 3, 3), ("User:c", 3, 3), ("User:d", 4, 2)]);
    }
}
