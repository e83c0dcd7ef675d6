//! Central -> edge flows (`[[downlinks]]`): which central topics each site receives, and the
//! hub's side of sending them down the site's connection.
//!
//! Costs do not grow with the sites in threads or broker connections. Per central cluster that
//! downlinks read, one metadata client lists the selected topics (every
//! `downlink.refresh_interval_ms`) and asks their end offsets (every `poll_interval_ms`, one
//! ListOffsets request per leader); `downlink.readers` consumers are shared by every site in
//! turns: a site whose position is behind an end borrows one, assigns its partitions at its own
//! positions, reads up to its window, and gives it back. Per site the hub keeps plain data:
//! positions, the bytes in flight (at most `downlink.window_bytes`, freed by the agent's acks
//! once its edge transaction committed) and a token bucket when the downlink is rate-limited.
//!
//! Exactly once is the agent's: it commits the records with their position in one edge
//! transaction and starts each connection from those positions. The hub only sends in order
//! from where the agent says, and checks the agent never acks what was not sent.
//!
//! Loop prevention, as MirrorMaker 2: a downlinked topic is named `<central alias>.<topic>` at
//! the edge, which the agent never replicates back up, and a central topic that came from the
//! site itself (its name's source chain holds the site's alias) is never sent down to it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use er_net::wire::FrameWriter;
use er_protocol::{
    Batch, BatchBuilder, Codec, Frame, MAX_DOWNLINK_TOPICS, Position, ReplicationPolicy,
    TopicMetadata, TopicPartition,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{debug, info, warn};

use crate::config::{CompiledDownlink, DownlinkConfig, Validated};
use crate::kafka::{KafkaOpError, QuietEof, client_config};

/// Longest a Kafka call of the downlink may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest one site's turn on a reader lasts.
const TURN: Duration = Duration::from_millis(500);

/// zstd level of downlink batches: links cost money, downlink data is small.
const ZSTD_LEVEL: i32 = 3;

/// What the hub knows of one cluster's downlink topics.
#[derive(Debug, Default)]
struct View {
    /// Central topics some downlink of the cluster selects, with their partition counts.
    topics: BTreeMap<String, i32>,
    /// End offset (last stable offset) per partition of those topics.
    ends: HashMap<(String, i32), i64>,
}

/// One central cluster downlinks read from.
struct Source {
    alias: String,
    readers: Mutex<Vec<BaseConsumer<QuietEof>>>,
    permits: Semaphore,
    view: watch::Sender<Arc<View>>,
}

/// The hub's downlinks: routes, the shared readers and what they know of the topics.
pub struct Downlinks {
    routes: Vec<CompiledDownlink>,
    settings: DownlinkConfig,
    policy: ReplicationPolicy,
    /// Per cluster index, the source when a downlink reads it.
    sources: Vec<Option<Arc<Source>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Downlinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downlinks")
            .field("routes", &self.routes.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Downlinks {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

/// A central topic one site receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Its name at the edge.
    pub edge: String,
    /// Its name centrally.
    pub central: String,
    /// The cluster it is read from.
    pub cluster: usize,
    /// Its partition count.
    pub partitions: i32,
    /// Payload bytes per second to the site, if limited.
    pub max_bytes_per_sec: Option<u64>,
}

impl Downlinks {
    /// The downlinks of `config`, `None` when it has none. Creates the readers (no broker
    /// round trip) and starts each cluster's refresher on `rt`.
    pub fn start(
        rt: &tokio::runtime::Handle,
        config: &Validated,
    ) -> Result<Option<Arc<Self>>, KafkaOpError> {
        if config.downlinks.is_empty() {
            return Ok(None);
        }
        let settings = config.raw.downlink.clone();
        let mut sources = vec![None; config.raw.clusters.len()];
        let mut tasks = Vec::new();
        for (i, cluster) in config.raw.clusters.iter().enumerate() {
            if !config.downlinks.iter().any(|d| d.cluster == i) {
                continue;
            }
            let reader = || -> Result<BaseConsumer<QuietEof>, KafkaOpError> {
                client_config(cluster)
                    .set("group.id", format!("{}-downlink", config.raw.group_id))
                    .set("enable.auto.commit", "false")
                    .set("isolation.level", "read_committed")
                    .set("auto.offset.reset", "earliest")
                    .set("fetch.wait.max.ms", "50")
                    // A turn ends as soon as every partition it reads reached its end.
                    .set("enable.partition.eof", "true")
                    .create_with_context(QuietEof)
                    .map_err(KafkaOpError::kafka(
                        &cluster.alias,
                        "creating a downlink reader",
                    ))
            };
            let readers = (0..settings.readers)
                .map(|_| reader())
                .collect::<Result<_, _>>()?;
            let source = Arc::new(Source {
                alias: cluster.alias.clone(),
                readers: Mutex::new(readers),
                permits: Semaphore::new(settings.readers),
                view: watch::Sender::new(Arc::new(View::default())),
            });
            let selects: Vec<_> = config
                .downlinks
                .iter()
                .filter(|d| d.cluster == i)
                .map(|d| d.topics.clone())
                .collect();
            let refresher = Refresher {
                source: source.clone(),
                meta: reader()?,
                selects,
                policy: config.policy.clone(),
                poll: Duration::from_millis(settings.poll_interval_ms),
                refresh: Duration::from_millis(settings.refresh_interval_ms),
            };
            tasks.push(rt.spawn(refresher.run()));
            sources[i] = Some(source);
        }
        info!(
            downlinks = config.downlinks.len(),
            readers = settings.readers,
            "downlinks configured"
        );
        Ok(Some(Arc::new(Self {
            routes: config.downlinks.clone(),
            settings,
            policy: config.policy.clone(),
            sources,
            tasks,
        })))
    }

    /// Waits (at most `wait`) until every source listed its topics once, so a site that
    /// connects right after the hub started is offered them.
    pub async fn loaded(&self, wait: Duration) {
        for source in self.sources.iter().flatten() {
            let mut rx = source.view.subscribe();
            let _ = tokio::time::timeout(wait, rx.wait_for(|v| !v.topics.is_empty())).await;
        }
    }

    /// The central topics `site` receives now, by edge name (`<target>.<topic>`, `target`
    /// being the central alias the site names its heartbeats after): first matching downlink
    /// per topic, never a topic that came from the site, at most [`MAX_DOWNLINK_TOPICS`].
    pub fn plan(&self, site: &str, target: &str) -> Vec<Planned> {
        let mut out: BTreeMap<String, Planned> = BTreeMap::new();
        for (cluster, source) in self.sources.iter().enumerate() {
            let Some(source) = source else { continue };
            let view = source.view.borrow().clone();
            for (central, &partitions) in &view.topics {
                let Some(route) = self.routes.iter().find(|r| {
                    r.cluster == cluster
                        && r.topics.is_match(central)
                        && r.sites.as_ref().is_none_or(|s| s.is_match(site))
                }) else {
                    continue;
                };
                if self.policy.is_cycle(central, site) {
                    continue;
                }
                let edge = format!("{target}.{central}");
                if er_protocol::validate_topic_name(&edge).is_err() || out.contains_key(&edge) {
                    continue;
                }
                if out.len() == MAX_DOWNLINK_TOPICS {
                    warn!(%site, max = MAX_DOWNLINK_TOPICS, "more downlink topics than a connection may carry; the rest wait");
                    break;
                }
                out.insert(
                    edge.clone(),
                    Planned {
                        edge,
                        central: central.clone(),
                        cluster,
                        partitions,
                        max_bytes_per_sec: route.max_bytes_per_sec,
                    },
                );
            }
        }
        out.into_values().collect()
    }

    /// `downlink.refresh_interval_ms`: how often connected sites are offered new topics.
    pub fn refresh_interval(&self) -> Duration {
        Duration::from_millis(self.settings.refresh_interval_ms)
    }
}

/// Lists one cluster's selected topics and asks their end offsets, for every site.
struct Refresher {
    source: Arc<Source>,
    meta: BaseConsumer<QuietEof>,
    selects: Vec<regex::Regex>,
    policy: ReplicationPolicy,
    poll: Duration,
    refresh: Duration,
}

impl Refresher {
    async fn run(self) {
        let me = Arc::new(self);
        let mut listed: Option<(Instant, BTreeMap<String, i32>)> = None;
        let mut failing = false;
        loop {
            let this = me.clone();
            let prior = listed.clone();
            let step = tokio::task::spawn_blocking(move || this.step(prior)).await;
            match step {
                Ok(Ok((topics_at, view))) => {
                    if failing {
                        info!(cluster = %me.source.alias, "downlink topics readable again");
                    }
                    failing = false;
                    listed = Some((topics_at, view.topics.clone()));
                    me.source.view.send_replace(Arc::new(view));
                }
                Ok(Err(e)) if !failing => {
                    failing = true;
                    warn!(cluster = %me.source.alias, error = %e, "reading the downlink topics failed; retrying");
                }
                Ok(Err(_)) => {}
                Err(_) => return,
            }
            tokio::time::sleep(me.poll).await;
        }
    }

    /// Lists the topics when the last list is older than the refresh interval, then asks every
    /// partition's end.
    fn step(
        &self,
        listed: Option<(Instant, BTreeMap<String, i32>)>,
    ) -> Result<(Instant, View), String> {
        let (at, topics) = match listed {
            Some((at, topics)) if at.elapsed() < self.refresh => (at, topics),
            _ => (Instant::now(), self.list()?),
        };
        let ends = crate::kafka::end_offsets(
            &self.meta,
            topics
                .iter()
                .flat_map(|(t, &n)| (0..n).map(move |p| (t.as_str(), p))),
            KAFKA_TIMEOUT,
        )
        .map_err(|e| format!("asking end offsets: {e}"))?;
        Ok((at, View { topics, ends }))
    }

    fn list(&self) -> Result<BTreeMap<String, i32>, String> {
        let meta = self
            .meta
            .fetch_metadata(None, KAFKA_TIMEOUT)
            .map_err(|e| format!("listing topics: {e}"))?;
        Ok(meta
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .filter(|t| !self.policy.is_internal_topic(t.name()) && !t.name().starts_with("__"))
            .filter(|t| self.selects.iter().any(|r| r.is_match(t.name())))
            .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
            .collect())
    }
}

/// One site connection's downlink, as its session sees it: what was offered, and the sender
/// task once the agent started partitions.
pub struct SiteDownlink {
    downlinks: Arc<Downlinks>,
    site: String,
    target: String,
    offered: HashMap<String, Planned>,
    sender: Option<mpsc::UnboundedSender<Msg>>,
}

impl std::fmt::Debug for SiteDownlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteDownlink")
            .field("site", &self.site)
            .field("offered", &self.offered.len())
            .finish_non_exhaustive()
    }
}

/// What the session tells the sender task.
enum Msg {
    Start(Vec<(Planned, Position)>),
    Ack(TopicPartition, i64),
}

impl SiteDownlink {
    /// The downlink of one connection of `site`, whose heartbeats name `target`.
    pub fn new(downlinks: Arc<Downlinks>, site: &str, target: &str) -> Self {
        Self {
            downlinks,
            site: site.to_owned(),
            target: target.to_owned(),
            offered: HashMap::new(),
            sender: None,
        }
    }

    /// How often the connection is offered new topics.
    pub fn refresh_interval(&self) -> Duration {
        self.downlinks.refresh_interval()
    }

    /// The topics to offer now: those not offered on this connection, or grown since.
    pub fn next_offer(&mut self) -> Vec<TopicMetadata> {
        let mut offer = Vec::new();
        for p in self.downlinks.plan(&self.site, &self.target) {
            if self
                .offered
                .get(&p.edge)
                .is_some_and(|o| o.partitions >= p.partitions)
            {
                continue;
            }
            offer.push(TopicMetadata {
                topic: p.edge.clone(),
                partitions: p.partitions,
                configs: Vec::new(),
            });
            self.offered.insert(p.edge.clone(), p);
        }
        offer
    }

    /// The agent started `positions` (checked by the protocol against the offers): starts the
    /// sender task on a new stream the first time. `failed` hears why the task stopped.
    pub async fn start(
        &mut self,
        conn: &quinn::Connection,
        positions: Vec<Position>,
        failed: mpsc::UnboundedSender<String>,
    ) -> Result<(), String> {
        if positions.is_empty() {
            return Ok(());
        }
        let started = positions
            .into_iter()
            .filter_map(|p| Some((self.offered.get(&p.tp.topic)?.clone(), p)))
            .collect();
        if self.sender.is_none() {
            let send = conn
                .open_uni()
                .await
                .map_err(|e| format!("opening the downlink stream: {e}"))?;
            // Below acks and control frames: the down direction never delays the up direction.
            send.set_priority(-1)
                .map_err(|e| format!("prioritising the downlink stream: {e}"))?;
            let (tx, rx) = mpsc::unbounded_channel();
            let sender = Sender {
                downlinks: self.downlinks.clone(),
                site: self.site.clone(),
                stream: FrameWriter::new(send),
                parts: BTreeMap::new(),
                inflight: 0,
                seq: 0,
            };
            tokio::spawn(async move {
                if let Err(e) = sender.run(rx).await {
                    let _ = failed.send(e);
                }
            });
            self.sender = Some(tx);
        }
        let tx = self.sender.as_ref().expect("started above");
        tx.send(Msg::Start(started))
            .map_err(|_| "the downlink sender stopped".to_owned())
    }

    /// The agent's edge committed `tp` up to `next_offset`.
    pub fn ack(&self, tp: TopicPartition, next_offset: i64) -> Result<(), String> {
        match &self.sender {
            Some(tx) => tx
                .send(Msg::Ack(tp, next_offset))
                .map_err(|_| "the downlink sender stopped".to_owned()),
            None => Err(format!("downlink ack of {tp} before anything was sent")),
        }
    }
}

/// One started partition of a site's downlink.
struct Part {
    plan: Planned,
    partition: i32,
    /// Next central offset to send.
    sent: i64,
    /// Batches sent and not acked: (their next offset, payload bytes).
    unacked: VecDeque<(i64, u64)>,
    /// Token bucket of a rate-limited downlink: bytes allowed, and when last refilled.
    tokens: Option<(f64, Instant)>,
}

/// Sends one connection's downlink batches: reads in turns on the shared readers what the
/// site's positions are behind, within its window and rate.
struct Sender {
    downlinks: Arc<Downlinks>,
    site: String,
    stream: FrameWriter,
    parts: BTreeMap<TopicPartition, Part>,
    inflight: u64,
    seq: u64,
}

impl Sender {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) -> Result<(), String> {
        let poll = Duration::from_millis(self.downlinks.settings.poll_interval_ms);
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.on_msg(msg)?,
                    None => return Ok(()),
                },
                _ = tick.tick() => {}
            }
            while let Ok(msg) = rx.try_recv() {
                self.on_msg(msg)?;
            }
            for cluster in 0..self.downlinks.sources.len() {
                self.turn(cluster).await?;
            }
        }
    }

    fn on_msg(&mut self, msg: Msg) -> Result<(), String> {
        match msg {
            Msg::Start(started) => {
                for (plan, p) in started {
                    let tokens = plan.max_bytes_per_sec.map(|_| (0.0, Instant::now()));
                    debug!(site = %self.site, tp = %p.tp, from = p.next_offset, "downlink partition started");
                    self.parts.insert(
                        p.tp.clone(),
                        Part {
                            partition: p.tp.partition,
                            plan,
                            sent: p.next_offset,
                            unacked: VecDeque::new(),
                            tokens,
                        },
                    );
                }
                Ok(())
            }
            Msg::Ack(tp, next_offset) => {
                let Some(part) = self.parts.get_mut(&tp) else {
                    return Err(format!("downlink ack of {tp}, a partition not started"));
                };
                if next_offset > part.sent {
                    return Err(format!(
                        "downlink ack of {tp} at {next_offset}, beyond what was sent ({})",
                        part.sent
                    ));
                }
                while let Some(&(next, bytes)) = part.unacked.front() {
                    if next > next_offset {
                        break;
                    }
                    part.unacked.pop_front();
                    self.inflight -= bytes;
                }
                Ok(())
            }
        }
    }

    /// The partitions of `cluster` whose position is behind the end the hub last saw, that
    /// the rate limit lets go now.
    fn due(&mut self, cluster: usize, view: &View) -> Vec<(TopicPartition, i64)> {
        let now = Instant::now();
        let mut due = Vec::new();
        for (tp, p) in &mut self.parts {
            let behind = view
                .ends
                .get(&(p.plan.central.clone(), p.partition))
                .is_some_and(|&end| end > p.sent);
            if p.plan.cluster == cluster && behind && refill(p, now) > 0.0 {
                due.push((tp.clone(), p.sent));
            }
        }
        due
    }

    /// One turn on a reader of `cluster` for the due partitions, within the window.
    async fn turn(&mut self, cluster: usize) -> Result<(), String> {
        let Some(source) = self.downlinks.sources[cluster].clone() else {
            return Ok(());
        };
        let room = self
            .downlinks
            .settings
            .window_bytes
            .saturating_sub(self.inflight);
        if room < u64::from(self.downlinks.settings.max_batch_bytes) {
            return Ok(());
        }
        let view = source.view.borrow().clone();
        let due = self.due(cluster, &view);
        if due.is_empty() {
            return Ok(());
        }
        let want: Vec<Want> = due
            .into_iter()
            .map(|(tp, from)| {
                let p = &self.parts[&tp];
                Want {
                    central: p.plan.central.clone(),
                    partition: p.partition,
                    partitions: p.plan.partitions,
                    end: view.ends[&(p.plan.central.clone(), p.partition)],
                    edge: tp,
                    from,
                }
            })
            .collect();
        let _permit = source
            .permits
            .acquire()
            .await
            .map_err(|_| "the downlink readers are gone".to_owned())?;
        let reader = source
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
            .ok_or("no free downlink reader under a permit")?;
        let max_batch = self.downlinks.settings.max_batch_bytes as usize;
        let (reader, read) = tokio::task::spawn_blocking(move || {
            let read = read_turn(&reader, &want, room, max_batch);
            (reader, read)
        })
        .await
        .map_err(|e| format!("a downlink read panicked: {e}"))?;
        source
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(reader);
        drop(_permit);
        let batches =
            read.map_err(|e| format!("reading downlink topics on {}: {e}", source.alias))?;
        self.send(batches).await
    }

    /// Writes batches on the downlink stream, waiting for the rate limit where one is set.
    async fn send(&mut self, batches: Vec<Batch>) -> Result<(), String> {
        for mut batch in batches {
            let tp = batch.header.tp.clone();
            let bytes = batch.payload.len() as u64;
            let part = self
                .parts
                .get_mut(&tp)
                .expect("read for a started partition");
            if let (Some(rate), Some((tokens, _))) = (part.plan.max_bytes_per_sec, part.tokens) {
                if tokens < 0.0 {
                    tokio::time::sleep(Duration::from_secs_f64(-tokens / rate as f64)).await;
                }
                let part = self.parts.get_mut(&tp).expect("still started");
                refill(part, Instant::now());
                if let Some((t, _)) = part.tokens.as_mut() {
                    *t -= bytes as f64;
                }
            }
            let part = self.parts.get_mut(&tp).expect("still started");
            batch.header.seq = self.seq;
            self.seq += 1;
            part.sent = batch.header.next_offset;
            part.unacked.push_back((batch.header.next_offset, bytes));
            self.inflight += bytes;
            crate::events::DownlinkSent {
                site: &self.site,
                records: batch.header.record_count,
                bytes,
            }
            .emit();
            self.stream
                .write(&Frame::DownlinkBatch(batch))
                .await
                .map_err(|e| format!("writing the downlink stream: {e}"))?;
        }
        Ok(())
    }
}

/// Adds the tokens earned since the last refill (at most one second's worth); returns the
/// tokens now (infinite when not rate-limited).
fn refill(p: &mut Part, now: Instant) -> f64 {
    let (Some(rate), Some((tokens, at))) = (p.plan.max_bytes_per_sec, p.tokens.as_mut()) else {
        return f64::INFINITY;
    };
    let rate = rate as f64;
    *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
    *at = now;
    *tokens
}

/// One partition to read in a turn.
struct Want {
    edge: TopicPartition,
    central: String,
    partition: i32,
    partitions: i32,
    from: i64,
    end: i64,
}

/// Reads `want` from their positions, one central topic at a time: until each partition
/// reached its end (Kafka says so: the turn ends at once), `budget` bytes were read, or the turn
/// is over. Returns each partition's batches (at most `max_batch` bytes each, before
/// compression), the last one carrying the partition's new position; a partition whose records
/// all lie past transaction markers or were aborted moves on with an empty batch.
fn read_turn(
    reader: &BaseConsumer<QuietEof>,
    want: &[Want],
    budget: u64,
    max_batch: usize,
) -> Result<Vec<Batch>, String> {
    let deadline = Instant::now() + TURN;
    let mut out = Vec::new();
    let mut left = budget;
    let mut topics: Vec<&str> = want.iter().map(|w| w.central.as_str()).collect();
    topics.dedup();
    for topic in topics {
        if left == 0 || Instant::now() >= deadline {
            break;
        }
        let group: Vec<&Want> = want.iter().filter(|w| w.central == topic).collect();
        let mut tpl = TopicPartitionList::new();
        for w in &group {
            tpl.add_partition_offset(topic, w.partition, Offset::Offset(w.from))
                .map_err(|e| format!("assigning {topic}/{}: {e}", w.partition))?;
        }
        reader
            .assign(&tpl)
            .map_err(|e| format!("assigning {topic}: {e}"))?;
        let read = read_topic(reader, &group, &mut left, max_batch, deadline);
        reader
            .unassign()
            .map_err(|e| format!("unassigning {topic}: {e}"))?;
        out.extend(read?);
    }
    Ok(out)
}

/// Reads the assigned partitions of one topic (see [`read_turn`]).
fn read_topic(
    reader: &BaseConsumer<QuietEof>,
    group: &[&Want],
    left: &mut u64,
    max_batch: usize,
    deadline: Instant,
) -> Result<Vec<Batch>, String> {
    let fresh = |w: &Want| BatchBuilder::new(w.edge.clone(), w.partitions);
    let mut builders: Vec<BatchBuilder> = group.iter().map(|w| fresh(w)).collect();
    let mut next: Vec<i64> = group.iter().map(|w| w.from).collect();
    let mut at_end = vec![false; group.len()];
    let mut out = Vec::new();
    while at_end.iter().any(|e| !e) && *left > 0 && Instant::now() < deadline {
        let m = match reader.poll(Duration::from_millis(50)) {
            None => continue,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                // Everything before the end Kafka has now was delivered: at least up to the
                // end the hub saw.
                if let Some(i) = group.iter().position(|w| w.partition == p) {
                    at_end[i] = true;
                    next[i] = next[i].max(group[i].end);
                }
                continue;
            }
            Some(Err(e)) => return Err(format!("reading {}: {e}", group[0].central)),
            Some(Ok(m)) => m,
        };
        let Some(i) = group.iter().position(|w| w.partition == m.partition()) else {
            continue;
        };
        if m.offset() < next[i] {
            continue;
        }
        er_kafka_admin::message::push_message(&mut builders[i], &m);
        next[i] = m.offset() + 1;
        let size = (m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len)) as u64;
        *left = left.saturating_sub(size.max(1));
        if builders[i].encoded_bytes() >= max_batch {
            let full = std::mem::replace(&mut builders[i], fresh(group[i]));
            out.push(finish(full, next[i])?);
        }
    }
    // What is left, and positions that moved without a record (markers, aborted records).
    for (i, w) in group.iter().enumerate() {
        let moved = out
            .iter()
            .rev()
            .find(|b| b.header.tp == w.edge)
            .map_or(w.from, |b| b.header.next_offset);
        if !builders[i].is_empty() || next[i] > moved {
            let builder = std::mem::replace(&mut builders[i], fresh(w));
            out.push(finish(builder, next[i])?);
        }
    }
    Ok(out)
}

fn finish(mut builder: BatchBuilder, next: i64) -> Result<Batch, String> {
    let tp = builder.tp().clone();
    builder.set_next_offset(next);
    builder
        .finish(0, Codec::Zstd, ZSTD_LEVEL)
        .map_err(|e| format!("encoding a downlink batch of {tp}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    /// Downlinks of `commands` and `plant-*` topics to the plant sites, over a view of the
    /// central cluster that `topics` describe (no Kafka).
    fn downlinks(topics: &[(&str, i32)]) -> Arc<Downlinks> {
        let view = View {
            topics: topics.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect(),
            ends: HashMap::new(),
        };
        let source = Arc::new(Source {
            alias: "central".into(),
            readers: Mutex::new(Vec::new()),
            permits: Semaphore::new(1),
            view: watch::Sender::new(Arc::new(view)),
        });
        Arc::new(Downlinks {
            routes: vec![CompiledDownlink {
                topics: Regex::new("^(?:commands|plant-.*)$").unwrap(),
                sites: Some(Regex::new("^(?:plant-.*)$").unwrap()),
                cluster: 0,
                max_bytes_per_sec: Some(4096),
            }],
            settings: DownlinkConfig::default(),
            policy: ReplicationPolicy::default(),
            sources: vec![Some(source)],
            tasks: Vec::new(),
        })
    }

    fn edges(plan: &[Planned]) -> Vec<&str> {
        plan.iter().map(|p| p.edge.as_str()).collect()
    }

    #[test]
    fn a_site_gets_the_selected_topics_but_never_its_own_back() {
        let d = downlinks(&[
            ("commands", 2),
            ("plant-7.alarms", 1),
            ("plant-8.alarms", 1),
            ("other", 4),
        ]);
        let plan = d.plan("plant-7", "central");
        assert_eq!(
            edges(&plan),
            ["central.commands", "central.plant-8.alarms"],
            "its own alarms came from it: sending them back would loop"
        );
        assert_eq!(plan[0].central, "commands");
        assert_eq!(
            (plan[0].partitions, plan[0].max_bytes_per_sec),
            (2, Some(4096))
        );
        assert_eq!(
            edges(&d.plan("plant-8", "hq")),
            ["hq.commands", "hq.plant-7.alarms"]
        );
        assert!(d.plan("depot-1", "central").is_empty(), "not a plant");
    }

    #[test]
    fn a_connection_is_offered_only_new_or_grown_topics() {
        let d = downlinks(&[("commands", 2)]);
        let mut site = SiteDownlink::new(d.clone(), "plant-7", "central");
        let names = |o: Vec<TopicMetadata>| -> Vec<(String, i32)> {
            o.into_iter().map(|t| (t.topic, t.partitions)).collect()
        };
        assert_eq!(names(site.next_offer()), [("central.commands".into(), 2)]);
        assert!(site.next_offer().is_empty(), "nothing new");
        let grown = View {
            topics: [("commands".to_owned(), 3), ("plant-9.x".to_owned(), 1)].into(),
            ends: HashMap::new(),
        };
        d.sources[0]
            .as_ref()
            .unwrap()
            .view
            .send_replace(Arc::new(grown));
        assert_eq!(
            names(site.next_offer()),
            [
                ("central.commands".into(), 3),
                ("central.plant-9.x".into(), 1)
            ]
        );
        assert!(site.next_offer().is_empty());
    }

    #[test]
    fn the_rate_limit_refills_at_its_rate_and_holds_at_most_one_second() {
        let plan = Planned {
            edge: "central.c".into(),
            central: "c".into(),
            cluster: 0,
            partitions: 1,
            max_bytes_per_sec: Some(1000),
        };
        let t0 = Instant::now();
        let mut part = Part {
            plan,
            partition: 0,
            sent: 0,
            unacked: VecDeque::new(),
            tokens: Some((-500.0, t0)),
        };
        assert!(refill(&mut part, t0) < 0.0, "in debt: wait");
        let after = refill(&mut part, t0 + Duration::from_millis(1500));
        assert!(
            (after - 1000.0).abs() < 1e-6,
            "{after}: capped at one second"
        );
        part.plan.max_bytes_per_sec = None;
        assert!(refill(&mut part, t0).is_infinite(), "unlimited");
    }
}
