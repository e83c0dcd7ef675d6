//! The edge Kafka side: topic discovery and the consumer that reads replicated partitions.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use er_protocol::{Batch, BatchBuilder, RecordRef, TimestampType, TopicPartition};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use er_plugin_host::OutBatch;

use crate::Stats;
use crate::config::Validated;
use crate::pipeline::SharedPipeline;
use crate::routed::{Pending, Shape, run_chain};

/// Partition counts of the replicated topics, by topic name.
pub type TopicSet = BTreeMap<String, i32>;

pub(crate) fn base_config(cfg: &Validated) -> ClientConfig {
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

/// How long a watermark request to the edge cluster may take.
const WATERMARKS_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent consumer's group id. librdkafka wants one even for a consumer with explicit
/// assignments; it is never used for commits or rebalancing, and never reported to the hub.
pub const AGENT_GROUP_ID: &str = "edge-replicator-agent";

/// Records prefetched by the consumers of one session, in KiB, shared by its priority lanes.
pub const PREFETCH_KBYTES: usize = 16 * 1024;

/// Creates a consumer of one session that prefetches at most `prefetch_kbytes` KiB (at least
/// 1024). It never commits: the hub keeps the positions.
pub fn consumer(cfg: &Validated, prefetch_kbytes: usize) -> Result<BaseConsumer, KafkaError> {
    let prefetch_kbytes = prefetch_kbytes.max(1024);
    base_config(cfg)
        .set("group.id", AGENT_GROUP_ID)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // An out-of-range position is reported rather than silently reset: it is how records
        // that edge retention deleted before they were replicated show up (see
        // `Reader::skip_retention_gaps`). New partitions start at `Offset::Beginning`.
        .set("auto.offset.reset", "error")
        .set("isolation.level", &cfg.raw.kafka.isolation_level)
        // Bounds the records prefetched in memory (with the in-flight limits, the agent's memory).
        .set("queued.max.messages.kbytes", prefetch_kbytes.to_string())
        .set("fetch.max.bytes", (prefetch_kbytes * 1024).to_string())
        .set("enable.partition.eof", "false")
        .create()
}

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
}

/// Batch shape settings for the reader.
#[derive(Debug, Clone)]
pub struct BatchLimits {
    /// Records per batch.
    pub max_records: usize,
    /// Encoded bytes per batch.
    pub max_bytes: usize,
    /// Longest wait after a batch's first record.
    pub linger: Duration,
    /// Compression.
    pub codec: er_protocol::Codec,
    /// zstd level.
    pub zstd_level: i32,
}

struct ReadPart {
    resume: Offset,
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
    pub cfg: Validated,
    /// The loaded chains, shared with later sessions.
    pub pipeline: SharedPipeline,
    /// Counters.
    pub stats: Arc<Stats>,
}

/// Reads assigned partitions on a dedicated thread (librdkafka's poll blocks), runs routed
/// partitions through their plugin chain, and hands finished, compressed batches to the session.
/// The batch channel is bounded: when the session stops taking batches the thread stops polling,
/// so librdkafka's bounded prefetch is the only other buffer.
pub fn spawn_reader(
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
}

/// The session is gone: stop quietly.
struct Closed;

impl Reader {
    fn run(&mut self, cmds: &std::sync::mpsc::Receiver<ReaderCmd>) -> anyhow::Result<()> {
        loop {
            loop {
                match cmds.try_recv() {
                    Ok(ReaderCmd::Add(list)) => self.add(list)?,
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return Ok(()),
                }
            }
            self.retry_stopped_routes()?;
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
            let wait = Duration::from_millis(wait.as_micros().div_ceil(1000) as u64);
            match self.consumer.poll(wait) {
                None => {}
                Some(Ok(m)) => {
                    let tp = TopicPartition::new(m.topic(), m.partition());
                    let Some(part) = self.parts.get_mut(&tp) else {
                        continue;
                    };
                    if part.stopped_until.is_some() {
                        // Fetched before the route stopped; it is read again on retry.
                        continue;
                    }
                    self.routing
                        .stats
                        .records_read
                        .fetch_add(1, Ordering::Relaxed);
                    self.records_read.increment(1);
                    match part.route {
                        Some(_) => part.pending.push(&m),
                        None => push_message(&mut part.builder, &m),
                    }
                    part.resume = Offset::Offset(m.offset() + 1);
                    part.opened.get_or_insert_with(Instant::now);
                    let (records, bytes) = part.held();
                    let full = records >= self.limits.max_records || bytes >= self.limits.max_bytes;
                    if full && self.seal(&tp)?.is_err() {
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
            let now = Instant::now();
            let due: Vec<TopicPartition> = self
                .parts
                .iter()
                .filter(|(_, p)| p.opened.is_some_and(|o| now >= o + self.limits.linger))
                .map(|(tp, _)| tp.clone())
                .collect();
            for tp in due {
                if self.seal(&tp)?.is_err() {
                    return Ok(());
                }
            }
        }
    }

    fn add(&mut self, list: Vec<StartPartition>) -> anyhow::Result<()> {
        let added: Vec<TopicPartition> = list.iter().map(|s| s.tp.clone()).collect();
        for s in list {
            let route = self.routing.cfg.route_for(&s.tp.topic);
            if let Some(r) = route {
                tracing::info!(tp = %s.tp, route = %self.routing.cfg.routes[r].name, "partition takes a plugin route");
            }
            self.parts.insert(
                s.tp.clone(),
                ReadPart {
                    resume: s.offset,
                    partition_count: s.partition_count,
                    builder: BatchBuilder::new(s.tp, s.partition_count),
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
    /// (blocking while the session is busy). The outer error is fatal for the session; the inner
    /// one means the session is gone.
    fn seal(&mut self, tp: &TopicPartition) -> anyhow::Result<Result<(), Closed>> {
        let part = self.parts.get_mut(tp).expect("sealed partition exists");
        part.opened = None;
        let Some(route) = part.route else {
            if part.builder.is_empty() {
                return Ok(Ok(()));
            }
            let batch = part
                .builder
                .finish_and_reset(part.next_seq, self.limits.codec, self.limits.zstd_level)
                .with_context(|| format!("encoding a batch of {tp}"));
            part.next_seq += 1;
            return Ok(self.out.blocking_send(batch).map_err(|_| Closed));
        };
        if part.pending.is_empty() {
            return Ok(Ok(()));
        }
        let shape = Shape {
            max_records: self.limits.max_records,
            max_bytes: self.limits.max_bytes,
            codec: self.limits.codec,
            zstd_level: self.limits.zstd_level,
        };
        let result = {
            let mut pipeline = self.routing.pipeline.lock().expect("pipeline lock");
            let rt = pipeline.route(route);
            rt.maybe_reload();
            run_chain(
                rt,
                tp,
                part.partition_count,
                &part.pending,
                &mut self.scratch,
                &mut part.builder,
                shape,
                &mut part.next_seq,
            )
        };
        let stats = &self.routing.stats;
        match result {
            Ok((batches, run)) => {
                part.pending.clear();
                stats
                    .records_dropped_by_plugins
                    .fetch_add(run.dropped, Ordering::Relaxed);
                stats
                    .plugin_record_failures
                    .fetch_add(run.failed, Ordering::Relaxed);
                for b in batches {
                    if self.out.blocking_send(Ok(b)).is_err() {
                        return Ok(Err(Closed));
                    }
                }
                Ok(Ok(()))
            }
            Err(stopped) => {
                stats.route_stops.fetch_add(1, Ordering::Relaxed);
                ::metrics::counter!(
                    crate::metrics::ROUTE_STOPS,
                    "route" => self.routing.cfg.routes[route].name.clone()
                )
                .increment(1);
                let retry =
                    Duration::from_millis(self.routing.cfg.raw.plugins.stopped_route_retry_ms);
                tracing::error!(
                    error = %stopped,
                    retry_in_ms = retry.as_millis() as u64,
                    "route stopped by a plugin failure; its partition waits (nothing is lost) and retries"
                );
                part.resume = Offset::Offset(stopped.first);
                part.pending.clear();
                part.builder.reset(tp.clone(), part.partition_count);
                part.stopped_until = Some(Instant::now() + retry);
                self.assign()?;
                Ok(Ok(()))
            }
        }
    }
}

/// Kafka's timestamp of a message, as the batch encoding spells it.
pub(crate) fn timestamp_of(m: &rdkafka::message::BorrowedMessage<'_>) -> (TimestampType, i64) {
    match m.timestamp() {
        rdkafka::Timestamp::NotAvailable => (TimestampType::NotAvailable, -1),
        rdkafka::Timestamp::CreateTime(t) => (TimestampType::CreateTime, t),
        rdkafka::Timestamp::LogAppendTime(t) => (TimestampType::LogAppendTime, t),
    }
}

/// Appends one Kafka message to a batch, borrowing its bytes.
fn push_message(builder: &mut BatchBuilder, m: &rdkafka::message::BorrowedMessage<'_>) {
    let (timestamp_type, timestamp) = timestamp_of(m);
    let rec = RecordRef {
        offset: m.offset(),
        timestamp,
        timestamp_type,
        key: m.key(),
        value: m.payload(),
        headers: &[],
        topic: None,
        partition: None,
    };
    match m.headers() {
        None => builder.push(&rec),
        Some(h) => builder.push_with_headers(
            &rec,
            (0..h.count()).map(|i| {
                let h = h.get(i);
                (h.key, h.value)
            }),
        ),
    }
}

/// All partitions of a topic set.
pub fn partitions(topics: &TopicSet) -> impl Iterator<Item = (TopicPartition, i32)> + '_ {
    topics
        .iter()
        .flat_map(|(t, n)| (0..*n).map(move |p| (TopicPartition::new(t.clone(), p), *n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// librdkafka checks its settings when a client is created (no broker needed): every
    /// prefetch a priority lane can get must pass, the smallest included.
    #[test]
    fn consumers_accept_every_prefetch_a_lane_gets() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "site.pem", "site.key"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let path = dir.path().join("agent.toml");
        let cfg = crate::config::parse(
            &path,
            "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n[hub]\naddress = \"h:1\"\n\
             ca_cert = \"ca.pem\"\ncert = \"site.pem\"\nkey = \"site.key\"\n",
        )
        .unwrap();
        for kbytes in [0, 1024, PREFETCH_KBYTES / 3, PREFETCH_KBYTES] {
            consumer(&cfg, kbytes).unwrap_or_else(|e| panic!("{kbytes} KiB: {e}"));
        }
    }
}
