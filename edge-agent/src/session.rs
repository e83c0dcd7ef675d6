//! One connection's lifetime: handshake, resume from the hub's positions, read, batch, send, ack.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use er_net::wire::{FrameReader, FrameWriter, StreamError};
use er_protocol::{AgentConn, AgentEvent, Batch, Channel, Frame, GroupOffsets, TopicPartition};
use rdkafka::Offset;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::config::Settings;
use crate::groups::GroupReader;
use crate::heartbeat::Aliases;
use crate::metrics as m;
use crate::pacing::{self, Next, Room, TokenBucket};
use crate::pipeline::SharedPipeline;
use crate::routes::Priority;
use crate::source::{self, Discovery, TopicSet};
use crate::{Stats, events};

/// Room for a frame header around the largest batch.
const FRAME_OVERHEAD: u32 = 64 * 1024;

/// Finished batches the readers of one session may hand over before they block, shared by the
/// route lanes (at least 2 each); the heartbeats lane has as many of its own (they are tiny).
const LANE_BATCHES: usize = 8;

/// Prefetch of the heartbeats lane's consumer, in KiB: heartbeats are a few hundred bytes a
/// second; `batching.prefetch_bytes` goes to the route lanes.
const HEARTBEATS_PREFETCH_KBYTES: usize = 1024;

/// How one attempt at a hub ended: its connection, and the session over it if one began.
#[derive(Debug)]
pub enum SessionOutcome {
    /// Shutdown was requested.
    Shutdown,
    /// Not a single packet came back within this wait: the link or the hub host is down, probe
    /// again.
    NoAnswer(Duration),
    /// The hub answered but no session came of it (or the attempt failed before sending).
    Failed(anyhow::Error),
    /// The hub does not serve this site and sent us to other hubs instead of welcoming us.
    Redirected {
        /// `host:port` of the hubs to try, best first (as the hub sent them, not yet parsed).
        addresses: Vec<String>,
        /// The hub's reason.
        reason: String,
    },
    /// The hub welcomed us, then the session failed (resets the reconnect backoff).
    Ended(anyhow::Error),
}

/// A connection that resumed a TLS session and is still handshaking: its hello goes out as
/// 0-RTT data, and the session waits for the handshake before anything else.
pub struct Early {
    /// Resolves when the handshake is over: true if the hub took the 0-RTT data.
    pub accepted: quinn::ZeroRttAccepted,
    /// How long to wait for any answer before giving up (see `answer_wait` in lib.rs).
    pub answer_wait: Duration,
    /// How long the whole handshake may take once the hub answered.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for Early {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Early")
            .field("answer_wait", &self.answer_wait)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

enum Inbound {
    Frame(Channel, Frame),
    Closed(Channel, Option<StreamError>),
}

/// What sessions of one agent process share.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Topic discovery client.
    pub discovery: Arc<Discovery>,
    /// Loaded plugin routes.
    pub pipeline: SharedPipeline,
    /// Consumer-group offset reader, when group reporting is on.
    pub groups: Option<Arc<std::sync::Mutex<GroupReader>>>,
    /// Published on every Welcome for the heartbeat writer.
    pub aliases: watch::Sender<Option<Aliases>>,
    /// Committed positions for the replication lag metric, when metrics are served.
    pub lag: Option<Arc<crate::metrics::LagTracker>>,
    /// Plugins the hub distributes, when routes name any.
    pub hub_plugins: Option<Arc<crate::hub_plugins::HubPlugins>>,
}

/// How often the agent sends its own figures (edge lag, retention gaps, plugin failures) to
/// the hub's status; the lag itself is measured every [`crate::metrics::LAG_INTERVAL`].
pub const SITE_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Most offsets in one GroupOffsets frame.
const GROUP_FRAME_POSITIONS: usize = 4096;

/// Runs one session over a connection: an established one, or one still handshaking after
/// resuming a TLS session (`early`). `answered(zero_rtt)` is called once the hub answered.
pub async fn run(
    cfg: &Settings,
    shared: Shared,
    conn: quinn::Connection,
    early: Option<Early>,
    answered: &mut (dyn FnMut(bool) + Send),
    stats: Arc<Stats>,
    shutdown: &mut watch::Receiver<bool>,
) -> SessionOutcome {
    let mut s = Session {
        cfg,
        discovery: shared.discovery.clone(),
        pipeline: shared.pipeline.clone(),
        shared,
        conn,
        stats,
        welcomed: false,
        proto: new_proto(cfg),
        streams: HashMap::new(),
        lanes: Vec::new(),
        bucket: None,
        tokens_at: None,
        rate_wait_since: None,
        inbound: mpsc::channel(1024),
        guard: None,
        site: String::new(),
        downlink: None,
    };
    let control = match s.hello(early, answered).await {
        Ok(Hello::Sent(control)) => control,
        Ok(Hello::NoAnswer(waited)) => return SessionOutcome::NoAnswer(waited),
        Err(error) => return SessionOutcome::Failed(error),
    };
    match s.run(control, shutdown).await {
        Ok(outcome) => outcome,
        Err(error) if s.welcomed => SessionOutcome::Ended(error),
        Err(error) => SessionOutcome::Failed(error),
    }
}

/// How the hello went.
enum Hello {
    /// It went out on this control stream.
    Sent(FrameWriter),
    /// A 0-RTT attempt got no answer at all within this wait.
    NoAnswer(Duration),
}

/// The protocol state of a new session; its hello is the first frame it transmits.
fn new_proto(cfg: &Settings) -> AgentConn {
    AgentConn::new(
        er_protocol::AgentConnConfig {
            agent_version: format!("edge-agent/{}", env!("CARGO_PKG_VERSION")),
            site_claim: cfg.site.clone().unwrap_or_default(),
            ping_interval: Duration::from_secs(5),
            welcome_timeout: Duration::from_secs(90),
            max_inflight_bytes_per_partition: cfg.batching.max_inflight_bytes_per_partition,
            max_inflight_bytes_total: cfg.batching.max_inflight_bytes_total,
        },
        Instant::now(),
    )
}

struct Session<'a> {
    cfg: &'a Settings,
    discovery: Arc<Discovery>,
    pipeline: SharedPipeline,
    shared: Shared,
    conn: quinn::Connection,
    stats: Arc<Stats>,
    welcomed: bool,
    proto: AgentConn,
    streams: HashMap<TopicPartition, mpsc::UnboundedSender<Frame>>,
    /// One per priority with replicated partitions, highest first.
    lanes: Vec<Lane>,
    /// `hub.max_bytes_per_sec`, once welcomed.
    bucket: Option<TokenBucket>,
    /// When the rate limit lets the waiting batch go.
    tokens_at: Option<Instant>,
    /// Since when a batch the budget allows waits for the rate limit (counted into
    /// [`m::RATE_LIMIT_WAIT_SECONDS`]).
    rate_wait_since: Option<Instant>,
    inbound: (mpsc::Sender<Inbound>, mpsc::Receiver<Inbound>),
    /// Loop prevention by topic name, from the welcome on.
    guard: Option<source::LoopGuard>,
    /// The site's alias, from the welcome on.
    site: String,
    /// The writer of what the hub sends down, once an offer was taken.
    downlink: Option<crate::downlink::Downlink>,
}

/// The partitions of one priority: their reader thread with its own consumer, so a backlog of
/// lower-priority records never stands in front of these in a prefetch queue or a channel, the
/// bounded channel of its finished batches, and the batch taken from it that waits for the link.
struct Lane {
    priority: Priority,
    cmds: std::sync::mpsc::Sender<source::ReaderCmd>,
    batches: mpsc::Receiver<anyhow::Result<Batch>>,
    /// Waiting for in-flight budget or the rate limit; while set, the lane takes no more
    /// batches, so its reader blocks and stops polling Kafka.
    head: Option<Batch>,
}

/// What the welcome told: who we are to the hub, where to resume, how large a batch may be.
struct Welcome {
    site: String,
    positions: Vec<er_protocol::Position>,
    max_batch_bytes: u32,
}

/// The state of a welcomed session besides the protocol's: what discovery found, where each
/// partition resumes, and the report timers.
struct Replicating {
    /// The welcome's resume positions.
    positions: HashMap<TopicPartition, i64>,
    limits: source::BatchLimits,
    /// The topics (and partition counts) handed to the readers so far.
    known: TopicSet,
    topics: mpsc::Receiver<anyhow::Result<Discovered>>,
    _discovery: AbortOnDrop,
    groups_tx: mpsc::Sender<anyhow::Result<Vec<GroupOffsets>>>,
    groups: mpsc::Receiver<anyhow::Result<Vec<GroupOffsets>>>,
    groups_tick: tokio::time::Interval,
    /// A group read is running (one at a time).
    groups_busy: bool,
    /// What this connection reported of each group.
    groups_reported: crate::groups::Reported,
    report_tick: tokio::time::Interval,
}

impl Replicating {
    /// Whether a group report is due to be read: reporting is on, none is running, and there
    /// are topics to report for.
    fn may_read_groups(&self, shared: &Shared) -> bool {
        shared.groups.is_some() && !self.groups_busy && !self.known.is_empty()
    }
}

impl Session<'_> {
    /// Opens the control stream and sends the hello. On a resumed connection the hello is
    /// 0-RTT data (replaying it changes nothing at the hub); this then waits for the handshake
    /// and says hello again if the hub refused the early data.
    async fn hello(
        &mut self,
        early: Option<Early>,
        answered: &mut (dyn FnMut(bool) + Send),
    ) -> anyhow::Result<Hello> {
        let opened = self.open_control().await;
        let Some(mut early) = early else {
            return opened.map(|(control, _)| Hello::Sent(control));
        };
        let Some(accepted) = self.handshake_done(&mut early).await? else {
            return Ok(Hello::NoAnswer(early.answer_wait));
        };
        if let Some(reason) = self.conn.close_reason() {
            bail!("connecting to the hub: {reason}");
        }
        answered(true);
        match opened {
            Ok((control, _)) if accepted => {
                debug!("the hub took the 0-RTT hello");
                Ok(Hello::Sent(control))
            }
            Ok((control, reader)) => self.hello_after_refusal(control, reader).await,
            // The handshake ended, refusing the early data, between opening the stream and
            // writing the hello: nothing went out, and the stream's handles are gone.
            Err(e) if !accepted => {
                debug!(
                    error = format!("{e:#}"),
                    "the 0-RTT control stream was refused before the hello went out"
                );
                self.hello_again().await.map(Hello::Sent)
            }
            Err(e) => Err(e),
        }
    }

    /// Waits for the handshake: `Some(true)` if the hub took the early data, `None` if it did
    /// not answer within `answer_wait`, an error if it answered but the handshake took longer
    /// than the connect timeout.
    async fn handshake_done(&self, early: &mut Early) -> anyhow::Result<Option<bool>> {
        match tokio::time::timeout(early.answer_wait, &mut early.accepted).await {
            Ok(accepted) => Ok(Some(accepted)),
            Err(_) if self.conn.handshake_data().is_none() => Ok(None),
            // The hub answered; let the handshake finish within the connect timeout.
            Err(_) => tokio::time::timeout(
                early.connect_timeout.saturating_sub(early.answer_wait),
                &mut early.accepted,
            )
            .await
            .map(Some)
            .map_err(|_| {
                anyhow!(
                    "handshake with the hub not done within {:?}",
                    early.connect_timeout
                )
            }),
        }
    }

    /// The hub refused the early data after the control stream was opened and its hello
    /// written: finds out whether that stream was one of the refused ones, and if so says hello
    /// again on a new one.
    async fn hello_after_refusal(
        &mut self,
        control: FrameWriter,
        reader: tokio::task::JoinHandle<()>,
    ) -> anyhow::Result<Hello> {
        // A control stream opened only after the handshake ended (this task ran late, the link
        // is fast) carried no early data: its hello went out as ordinary data and is answered on
        // it. Only a stream opened during the handshake was refused, and its reader says so as
        // soon as the handshake ends. Saying hello again on a live stream would finish it (the
        // hub then ends the connection) and count as a failed attempt.
        match tokio::time::timeout(Duration::from_secs(1), self.inbound.1.recv()).await {
            Ok(Some(Inbound::Closed(
                Channel::Control,
                Some(StreamError::Read(quinn::ReadError::ZeroRttRejected)),
            ))) => {}
            Ok(m) => {
                debug!(
                    "the control stream opened after the handshake; its hello was not early data"
                );
                self.handle_inbound(m)?;
                return Ok(Hello::Sent(control));
            }
            Err(_) => {
                debug!(
                    "the control stream opened after the handshake; its hello was not early data"
                );
                return Ok(Hello::Sent(control));
            }
        }
        // The rejected stream's handles must be gone first: quinn numbers the streams afresh
        // after a rejection, and dropping an old handle unregisters the waker of the new
        // stream with the same id (the welcome would then never be read). Its reader ended with
        // `ZeroRttRejected` above.
        drop(control);
        tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .context("the rejected 0-RTT control stream's reader did not end")?
            .context("the rejected 0-RTT control stream's reader failed")?;
        self.hello_again().await.map(Hello::Sent)
    }

    /// After the hub refused the early data (restarted, or another hub: it no longer knows the
    /// TLS session, and the early hello never reached it): starts over on the now established
    /// connection.
    async fn hello_again(&mut self) -> anyhow::Result<FrameWriter> {
        info!("the hub refused the 0-RTT hello; saying hello again");
        self.proto = new_proto(self.cfg);
        self.inbound = mpsc::channel(1024);
        Ok(self.open_control().await?.0)
    }

    /// Opens the control stream, sends what the protocol queued (the hello) and starts its
    /// reader. Returns the stream's writer and its reader task.
    async fn open_control(&mut self) -> anyhow::Result<(FrameWriter, tokio::task::JoinHandle<()>)> {
        let (send, recv) = self
            .conn
            .open_bi()
            .await
            .context("opening the control stream")?;
        // Pings, group reports and the handshake never queue behind batch data on a narrow link.
        send.set_priority(i32::MAX)
            .context("prioritising the control stream")?;
        let mut control = FrameWriter::new(send);
        // Written before the reader starts: if this fails (a 0-RTT stream the hub refused
        // meanwhile), no handle of the stream outlives this call.
        self.flush(&mut control).await?;
        let reader = spawn_stream_reader(
            FrameReader::new(recv, FRAME_OVERHEAD * 2),
            Channel::Control,
            self.inbound.0.clone(),
        );
        Ok((control, reader))
    }

    /// The session after the hello: the welcome, then replication until shutdown, a redirect
    /// or an error.
    async fn run(
        &mut self,
        mut control: FrameWriter,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<SessionOutcome> {
        let welcome = match self.await_welcome(&mut control, shutdown).await? {
            ControlFlow::Continue(welcome) => welcome,
            ControlFlow::Break(outcome) => return Ok(outcome),
        };
        let mut r = self.start_replicating(welcome);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    self.conn.close(0u32.into(), b"agent shutting down");
                    return Ok(SessionOutcome::Shutdown);
                }
                m = self.inbound.1.recv() => self.handle_inbound(m)?,
                reply = downlink_reply(&mut self.downlink) => self.on_downlink(reply)?,
                stream = self.conn.accept_uni() => self.on_uni_stream(stream)?,
                t = r.topics.recv() => {
                    self.on_topics(&mut r, t.ok_or_else(|| anyhow!("topic discovery stopped"))??)?;
                }
                // A lane whose batch waits for the link takes no more: its reader blocks and
                // stops polling Kafka.
                (lane, b) = next_batch(&mut self.lanes) => {
                    self.on_batch(lane, b.ok_or_else(|| anyhow!("edge reader stopped"))??);
                }
                _ = sleep_until(self.tokens_at) => {}
                _ = r.groups_tick.tick(), if r.may_read_groups(&self.shared) => {
                    self.read_groups(&mut r);
                }
                g = r.groups.recv() => {
                    r.groups_busy = false;
                    let read = g.ok_or_else(|| anyhow!("group reader stopped"))?;
                    self.on_groups(&mut r.groups_reported, read)?;
                }
                _ = r.report_tick.tick() => self.report()?,
                _ = sleep_until(self.proto.poll_timeout()) => self.proto.handle_timeout(Instant::now()),
                closed = self.conn.closed() => bail!("connection lost: {closed}"),
            }
            while let Some(ev) = self.proto.poll_event() {
                self.handle_event(ev)?;
            }
            self.pump()?;
            self.flush(&mut control).await?;
            ::metrics::gauge!(m::INFLIGHT_BYTES).set(self.proto.inflight_bytes() as f64);
        }
    }

    /// Waits for the welcome and its resume positions (`hello` may have handled the hub's
    /// answer already: the events are looked at first). Breaks with the session's outcome on
    /// a redirect or shutdown.
    async fn await_welcome(
        &mut self,
        control: &mut FrameWriter,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<ControlFlow<SessionOutcome, Welcome>> {
        loop {
            let mut welcome = None;
            while let Some(ev) = self.proto.poll_event() {
                match ev {
                    AgentEvent::Welcomed {
                        site,
                        hub_id,
                        positions,
                        max_batch_bytes,
                        heartbeat_target,
                    } => {
                        info!(%site, %hub_id, positions = positions.len(), %heartbeat_target, "welcomed by hub");
                        // The hub names one destination cluster and not its replication
                        // policy yet: the guard assumes MM2's default policy.
                        self.guard = Some(source::LoopGuard::new(
                            er_protocol::ReplicationPolicy::default(),
                            site.clone(),
                            vec![heartbeat_target.clone()],
                        ));
                        self.site = site.clone();
                        self.shared.aliases.send_replace(Some(Aliases {
                            site: site.clone(),
                            target: heartbeat_target,
                        }));
                        welcome = Some(Welcome {
                            site,
                            positions,
                            max_batch_bytes,
                        });
                    }
                    AgentEvent::Redirected { addresses, reason } => {
                        return Ok(ControlFlow::Break(SessionOutcome::Redirected {
                            addresses,
                            reason,
                        }));
                    }
                    other => self.handle_event(other)?,
                }
            }
            self.flush(control).await?;
            if let Some(w) = welcome {
                self.welcomed = true;
                events::LinkUp.emit(&self.stats);
                return Ok(ControlFlow::Continue(w));
            }
            let deadline = self.proto.poll_timeout();
            tokio::select! {
                m = self.inbound.1.recv() => self.handle_inbound(m)?,
                _ = sleep_until(deadline) => self.proto.handle_timeout(Instant::now()),
                _ = shutdown.changed() => return Ok(ControlFlow::Break(SessionOutcome::Shutdown)),
            }
        }
    }

    /// Sizes batches to the hub's limit, sets up the rate limit and starts topic discovery and
    /// the report timers.
    fn start_replicating(&mut self, welcome: Welcome) -> Replicating {
        let Welcome {
            site,
            positions,
            max_batch_bytes,
        } = welcome;
        // Batches are measured before compression; keep a margin for incompressible data.
        let hub_cap = (max_batch_bytes as usize)
            .saturating_sub(FRAME_OVERHEAD as usize)
            .max(1024);
        if self.cfg.batching.max_bytes > hub_cap / 2 {
            warn!(
                agent_max_bytes = self.cfg.batching.max_bytes,
                hub_max_batch_bytes = max_batch_bytes,
                "batching.max_bytes is larger than half of what the hub accepts in a batch; batches are capped at half the hub's limit (the other half is room for one large record)"
            );
        }
        // A batch closes once it holds `max_batch` bytes, so it is at most `max_batch` plus
        // one record: records over `hub_cap - max_batch` are sent as poison stubs (the hub
        // writes them to the site's dead letters), never as a batch the hub refuses on every
        // reconnect. Half the hub's limit each keeps both useful.
        let max_batch = self.cfg.batching.max_bytes.min(hub_cap / 2);
        let limits = source::BatchLimits {
            max_records: self.cfg.batching.max_records,
            max_bytes: max_batch,
            max_record_bytes: hub_cap - max_batch,
            linger: self.cfg.batching.linger,
            codec: self.cfg.batching.codec,
            zstd_level: self.cfg.batching.zstd_level,
        };
        m::rate_limit(self.cfg.hub.max_bytes_per_sec);
        self.bucket = self
            .cfg
            .hub
            .max_bytes_per_sec
            .map(|rate| TokenBucket::new(rate, max_batch as u64, Instant::now()));
        let guard = self.guard.clone().expect("set by the welcome");
        let (topics_tx, topics) = mpsc::channel(1);
        let discovery = spawn_discovery(self.cfg.clone(), self.discovery.clone(), guard, topics_tx);
        info!(%site, "replicating");
        let (groups_tx, groups) = mpsc::channel(1);
        let every = |d: Duration| {
            let mut t = tokio::time::interval(d);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        };
        Replicating {
            positions: positions
                .into_iter()
                .map(|p| (p.tp, p.next_offset))
                .collect(),
            limits,
            known: TopicSet::new(),
            topics,
            _discovery: AbortOnDrop(discovery),
            groups_tx,
            groups,
            groups_tick: every(
                self.cfg
                    .groups
                    .interval
                    .unwrap_or(Duration::from_secs(3600)),
            ),
            groups_busy: false,
            groups_reported: crate::groups::Reported::default(),
            report_tick: every(SITE_REPORT_INTERVAL),
        }
    }

    /// Discovery's latest view: topic metadata and ACLs go to the hub, new partitions to the
    /// reader of their priority's lane, from the hub's position (the beginning without one).
    fn on_topics(&mut self, r: &mut Replicating, d: Discovered) -> anyhow::Result<()> {
        let Discovered {
            set,
            metadata,
            acls,
        } = d;
        if let Some(m) = metadata {
            let n = m.len();
            if self.proto.send_topic_metadata(m, METADATA_FRAME_BYTES)? {
                debug!(topics = n, "topic metadata reported to the hub");
            }
        }
        if let Some(a) = acls {
            let n = a.len();
            if self.proto.send_topic_acls(a, METADATA_FRAME_BYTES)? {
                debug!(bindings = n, "topic ACLs reported to the hub");
            }
        }
        let mut by_priority: BTreeMap<Priority, Vec<source::StartPartition>> = BTreeMap::new();
        for (tp, partition_count) in source::partitions(&set) {
            if r.known.get(&tp.topic).is_some_and(|n| tp.partition < *n) {
                continue;
            }
            let position = r.positions.get(&tp).copied();
            let offset = position.map_or(Offset::Beginning, Offset::Offset);
            info!(%tp, ?offset, "replicating partition");
            if let Some(lag) = &self.shared.lag {
                lag.track(&tp, position);
            }
            by_priority
                .entry(self.cfg.routes.priority_for(&tp.topic))
                .or_default()
                .push(source::StartPartition {
                    tp,
                    partition_count,
                    offset,
                });
        }
        for (priority, list) in by_priority {
            let lane = self.lane(priority, &r.limits)?;
            lane.cmds
                .send(source::ReaderCmd::Add(list))
                .map_err(|_| anyhow!("edge reader stopped"))?;
        }
        r.known = set;
        Ok(())
    }

    /// A lane's next batch waits for the link, unless the hub stopped its partition meanwhile
    /// (read before the stop: never sent on this connection).
    fn on_batch(&mut self, lane: usize, batch: Batch) {
        if !self.proto.is_stopped(&batch.header.tp) {
            self.lanes[lane].head = Some(batch);
        }
    }

    /// Reads the edge groups' committed offsets off the executor; the answer arrives on
    /// `r.groups`.
    fn read_groups(&self, r: &mut Replicating) {
        r.groups_busy = true;
        let reader = self
            .shared
            .groups
            .clone()
            .expect("checked by may_read_groups");
        let topics = r.known.clone();
        let tx = r.groups_tx.clone();
        tokio::task::spawn_blocking(move || {
            let read = reader
                .lock()
                .expect("group reader lock")
                .read(&topics, Duration::from_secs(10));
            let _ = tx.blocking_send(read);
        });
    }

    /// Sends the groups whose offsets moved since this connection reported them.
    fn on_groups(
        &mut self,
        reported: &mut crate::groups::Reported,
        read: anyhow::Result<Vec<GroupOffsets>>,
    ) -> anyhow::Result<()> {
        match read.map(|groups| reported.changed(groups)) {
            Ok(groups) if groups.is_empty() => {}
            Ok(groups) => {
                debug!(groups = groups.len(), "reporting consumer-group offsets");
                for frame in crate::groups::chunk(groups, GROUP_FRAME_POSITIONS) {
                    self.proto
                        .send_group_offsets(frame)
                        .context("reporting group offsets")?;
                }
                events::GroupReportSent.emit(&self.stats);
            }
            Err(e) => warn!(
                error = format!("{e:#}"),
                "reading edge consumer-group offsets failed"
            ),
        }
        Ok(())
    }

    fn handle_inbound(&mut self, m: Option<Inbound>) -> anyhow::Result<()> {
        match m.ok_or_else(|| anyhow!("all streams closed"))? {
            Inbound::Frame(ch, f) => self
                .proto
                .handle_frame(Instant::now(), &ch, f)
                .context("hub broke the protocol"),
            Inbound::Closed(ch, Some(e)) => Err(anyhow!("stream {ch:?} failed: {e}")),
            Inbound::Closed(Channel::Control, None) => bail!("hub closed the control stream"),
            Inbound::Closed(_, None) => Ok(()),
        }
    }

    /// The agent's own figures and, with hub plugins, what each version ran.
    fn report(&mut self) -> anyhow::Result<()> {
        let report = self.site_report();
        self.proto
            .send_site_report(report)
            .context("reporting to the hub")?;
        if let Some(p) = &self.shared.hub_plugins {
            let runs = p.report(&self.pipeline);
            self.proto
                .report_plugins(crate::hub_plugins::platform(), runs)
                .context("reporting plugins to the hub")?;
        }
        Ok(())
    }

    /// What only the agent knows, for the hub's status. The lag is known when the agent
    /// measures it (with `[metrics] listen`) and at least one partition's lag was measured.
    fn site_report(&self) -> er_protocol::SiteReport {
        let lag_records = self.shared.lag.as_ref().and_then(|l| {
            let lags: Vec<i64> = l
                .snapshot_with_lag()
                .into_iter()
                .filter_map(|(_, _, lag)| lag)
                .collect();
            (!lags.is_empty()).then(|| lags.iter().sum())
        });
        er_protocol::SiteReport {
            lag_records,
            retention_gap_records: crate::metrics::retention_gap_records(),
            plugin_errors: self.stats.plugin_record_failures.load(Ordering::Relaxed),
            route_stops: self.stats.route_stops.load(Ordering::Relaxed),
        }
    }

    fn handle_event(&mut self, ev: AgentEvent) -> anyhow::Result<()> {
        match ev {
            AgentEvent::Acked {
                tp,
                seq,
                next_offset,
            } => {
                events::BatchAcked {
                    tp: &tp,
                    seq,
                    next_offset,
                }
                .emit(&self.stats);
                if let Some(lag) = &self.shared.lag {
                    lag.acked(&tp, next_offset);
                }
                Ok(())
            }
            AgentEvent::Stopped {
                tp,
                seq,
                offset,
                reason,
            } => {
                events::PartitionStopped {
                    tp: &tp,
                    seq,
                    offset,
                    reason: &reason,
                }
                .emit();
                let priority = self.cfg.routes.priority_for(&tp.topic);
                if let Some(lane) = self.lanes.iter_mut().find(|l| l.priority == priority) {
                    if lane.head.as_ref().is_some_and(|b| b.header.tp == tp) {
                        lane.head = None;
                    }
                    // The reader may be gone already: then the session ends anyway.
                    let _ = lane.cmds.send(source::ReaderCmd::Stop(tp));
                }
                Ok(())
            }
            AgentEvent::RttSample(rtt) => {
                events::RttSampled(rtt).emit(&self.stats);
                Ok(())
            }
            AgentEvent::GoAway { reason } => bail!("hub is going away: {reason}"),
            AgentEvent::HubError { code, message } => bail!("hub refused: {code:?}: {message}"),
            AgentEvent::TimedOut { what } => bail!("timed out waiting for {what}"),
            AgentEvent::Welcomed { .. } => bail!("second welcome on one connection"),
            AgentEvent::DownlinkOffer(topics) => self.on_downlink_offer(topics),
            AgentEvent::PluginOffer(offer) => {
                self.on_plugin_offer(offer);
                Ok(())
            }
            AgentEvent::DownlinkBatch(batch) => self
                .downlink
                .as_mut()
                .ok_or_else(|| anyhow!("downlink batch of {} without a downlink", batch.header.tp))?
                .write(batch),
            // The protocol refuses a redirect after the welcome; the handshake handles it.
            AgentEvent::Redirected { .. } => bail!("redirect after the welcome"),
        }
    }

    /// The lane of `priority`, started with its reader and consumer when it is the first
    /// partition of that priority.
    fn lane(
        &mut self,
        priority: Priority,
        limits: &source::BatchLimits,
    ) -> anyhow::Result<&mut Lane> {
        let at = match self.lanes.binary_search_by(|l| priority.cmp(&l.priority)) {
            Ok(at) => at,
            Err(at) => {
                // Each lane prefetches and queues on its own; together they stay within the
                // session's budgets, so more priorities do not mean more memory.
                let (prefetch_kbytes, queued_batches) = match priority {
                    Priority::Heartbeats => (HEARTBEATS_PREFETCH_KBYTES, LANE_BATCHES),
                    Priority::Route(_) => {
                        let route_lanes = self
                            .cfg
                            .routes
                            .priorities()
                            .iter()
                            .filter(|p| matches!(p, Priority::Route(_)))
                            .count()
                            .max(1);
                        (
                            self.cfg.batching.prefetch_kbytes / route_lanes,
                            (LANE_BATCHES / route_lanes).max(2),
                        )
                    }
                };
                let consumer = crate::kafka::consumer(&self.cfg.kafka, prefetch_kbytes)
                    .context("creating the edge consumer")?;
                let (batch_tx, batches) = mpsc::channel(queued_batches);
                let (cmds, cmd_rx) = std::sync::mpsc::channel();
                source::spawn_kafka_reader(
                    consumer,
                    limits.clone(),
                    source::Routing {
                        cfg: self.cfg.clone(),
                        pipeline: self.pipeline.clone(),
                        stats: self.stats.clone(),
                    },
                    cmd_rx,
                    batch_tx,
                );
                debug!(%priority, prefetch_kbytes, queued_batches, "reading a new priority lane");
                self.lanes.insert(
                    at,
                    Lane {
                        priority,
                        cmds,
                        batches,
                        head: None,
                    },
                );
                at
            }
        };
        Ok(&mut self.lanes[at])
    }

    /// Sends waiting batches, highest priority first, while the in-flight budget and the rate
    /// limit allow; remembers when the rate limit lets the next one go.
    fn pump(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        loop {
            let proto = &self.proto;
            let next = pacing::next(
                self.lanes.iter().map(|l| {
                    l.head
                        .as_ref()
                        .map(|b| (&b.header.tp, b.payload.len() as u64))
                }),
                |tp, bytes| {
                    if proto.can_send(tp, bytes) {
                        Room::Yes
                    } else if proto.link_has_room(bytes) {
                        Room::PartitionFull
                    } else {
                        Room::LinkFull
                    }
                },
                self.bucket.as_mut(),
                now,
            );
            let tokens_at = match next {
                Next::Send(lane) => {
                    let batch = self.lanes[lane].head.take().expect("the picked lane waits");
                    self.send(batch)?;
                    continue;
                }
                Next::AwaitTokens(at) => Some(at),
                Next::AwaitAcks | Next::Idle => None,
            };
            if let Some(since) = self.rate_wait_since.take() {
                events::RateLimitWaited(now - since).emit();
            }
            self.rate_wait_since = tokens_at.map(|_| now);
            self.tokens_at = tokens_at;
            return Ok(());
        }
    }

    fn send(&mut self, batch: Batch) -> anyhow::Result<()> {
        events::BatchSent {
            tp: &batch.header.tp,
            seq: batch.header.seq,
            records: batch.header.record_count as u64,
            bytes: batch.payload.len() as u64,
        }
        .emit(&self.stats);
        self.proto.send_batch(batch).context("sending a batch")
    }

    /// Takes what the hub offers to send down (what the loop guard allows), or nothing when
    /// `[downlink]` is off: the writer thread (started by the first offer) prepares the topics
    /// and answers with the positions to start from.
    fn on_downlink_offer(&mut self, topics: Vec<er_protocol::TopicMetadata>) -> anyhow::Result<()> {
        if topics.is_empty() {
            return Ok(());
        }
        let (Some(settings), Some(guard)) = (&self.cfg.downlink, &self.guard) else {
            info!(
                topics = topics.len(),
                "the hub offers downlink topics; [downlink] is off, taking none"
            );
            return Ok(self.proto.start_downlinks(Vec::new())?);
        };
        let topics = crate::downlink::accepted(topics, guard);
        if topics.is_empty() {
            return Ok(self.proto.start_downlinks(Vec::new())?);
        }
        info!(topics = topics.len(), "taking downlink topics");
        match &mut self.downlink {
            Some(downlink) => downlink.prepare(topics),
            None => {
                let downlink =
                    crate::downlink::Downlink::start(&self.cfg.kafka, settings, &self.site)?;
                self.downlink.insert(downlink).prepare(topics)
            }
        }
    }

    /// A plugin the hub wants the site to run: checked and installed off the executor.
    fn on_plugin_offer(&self, offer: er_protocol::PluginOffer) {
        match &self.shared.hub_plugins {
            Some(p) => {
                crate::hub_plugins::install_in_background(p.clone(), self.pipeline.clone(), offer);
            }
            None => {
                info!(plugin = %offer.name, version = offer.version, "the hub offered a plugin; no route uses hub plugins");
            }
        }
    }

    /// The downlink writer's answer: where to start, what committed, or its failure.
    fn on_downlink(&mut self, reply: Option<crate::downlink::Reply>) -> anyhow::Result<()> {
        use crate::downlink::Reply;
        match reply.ok_or_else(|| anyhow!("the downlink writer stopped"))? {
            Reply::Started(positions) => Ok(self.proto.start_downlinks(positions)?),
            Reply::Committed { positions, bytes } => {
                if let Some(d) = self.downlink.as_mut() {
                    d.committed(bytes);
                }
                for (tp, next_offset) in positions {
                    self.proto.ack_downlink(tp, next_offset)?;
                }
                Ok(())
            }
            Reply::Failed(e) => Err(e.context("the downlink writer failed")),
        }
    }

    /// The hub opened a stream down (its downlink data, or a plugin offer): its frames join the
    /// others. The transport lets the hub have a few open at once.
    fn on_uni_stream(
        &mut self,
        stream: Result<quinn::RecvStream, quinn::ConnectionError>,
    ) -> anyhow::Result<()> {
        let recv = stream.context("accepting a stream from the hub")?;
        spawn_stream_reader(
            FrameReader::new(recv, er_protocol::DEFAULT_MAX_FRAME_BYTES),
            Channel::Downlink,
            self.inbound.0.clone(),
        );
        Ok(())
    }

    /// Writes queued frames: control frames inline, batches to their partition's stream task.
    async fn flush(&mut self, control: &mut FrameWriter) -> anyhow::Result<()> {
        while let Some((ch, frame)) = self.proto.poll_transmit() {
            match ch {
                Channel::Control => control
                    .write(&frame)
                    .await
                    .context("writing to the control stream")?,
                Channel::Partition(tp) => {
                    if !self.streams.contains_key(&tp) {
                        let (send, recv) = self
                            .conn
                            .open_bi()
                            .await
                            .with_context(|| format!("opening the stream of {tp}"))?;
                        // Batches already handed to QUIC still go in priority order when the
                        // link itself is narrower than the rate limit.
                        send.set_priority(
                            self.cfg.routes.priority_for(&tp.topic).stream_priority(),
                        )
                        .with_context(|| format!("prioritising the stream of {tp}"))?;
                        let (tx, rx) = mpsc::unbounded_channel();
                        spawn_stream_writer(
                            FrameWriter::new(send),
                            rx,
                            Channel::Partition(tp.clone()),
                            self.inbound.0.clone(),
                        );
                        spawn_stream_reader(
                            FrameReader::new(recv, FRAME_OVERHEAD),
                            Channel::Partition(tp.clone()),
                            self.inbound.0.clone(),
                        );
                        self.streams.insert(tp.clone(), tx);
                    }
                    self.streams[&tp]
                        .send(frame)
                        .map_err(|_| anyhow!("stream of {tp} is gone"))?;
                }
                Channel::Downlink => bail!("the agent sends nothing on the downlink stream"),
            }
        }
        Ok(())
    }
}

/// The next batch of the highest-priority lane that has none waiting, with the lane's index
/// (`None`: that lane's reader stopped).
fn next_batch(
    lanes: &mut [Lane],
) -> impl Future<Output = (usize, Option<anyhow::Result<Batch>>)> + '_ {
    std::future::poll_fn(move |cx| {
        for (i, lane) in lanes.iter_mut().enumerate() {
            if lane.head.is_none()
                && let Poll::Ready(b) = lane.batches.poll_recv(cx)
            {
                return Poll::Ready((i, b));
            }
        }
        Poll::Pending
    })
}

/// The next answer of the downlink writer, if there is one (never otherwise).
async fn downlink_reply(
    downlink: &mut Option<crate::downlink::Downlink>,
) -> Option<crate::downlink::Reply> {
    match downlink {
        Some(d) => d.replies.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Largest TopicMetadata frame the agent sends: well under any frame limit a hub sets (a
/// batch's), and a topic at the protocol's caps (128 configs of 4 KiB) fits.
const METADATA_FRAME_BYTES: usize = 1024 * 1024;

/// What discovery found: the selected topics and, when it changed or is due again, what
/// the hub should know of them.
struct Discovered {
    set: TopicSet,
    metadata: Option<Vec<er_protocol::TopicMetadata>>,
    acls: Option<Vec<er_protocol::TopicAcl>>,
}

/// Looks for selected topics (minus those `guard` refuses) now and then every refresh
/// interval; sends each result that differs from the last, and the topics' metadata and ACL
/// bindings when they changed or `topics.metadata_interval_ms` passed.
fn spawn_discovery(
    cfg: Settings,
    discovery: Arc<Discovery>,
    guard: source::LoopGuard,
    tx: mpsc::Sender<anyhow::Result<Discovered>>,
) -> tokio::task::JoinHandle<()> {
    let guard = Arc::new(guard);
    tokio::spawn(async move {
        let mut last: Option<TopicSet> = None;
        let mut last_metadata: Option<(Vec<er_protocol::TopicMetadata>, Instant)> = None;
        let mut last_acls: Option<(Vec<er_protocol::TopicAcl>, Instant)> = None;
        loop {
            let d = discovery.clone();
            let c = cfg.clone();
            let g = guard.clone();
            let res =
                tokio::task::spawn_blocking(move || d.topics(&c, &g, Duration::from_secs(10)))
                    .await
                    .expect("discovery panicked");
            match res {
                Ok(set) => {
                    let metadata = if cfg.topics.sync_metadata {
                        let m = discovery
                            .topic_metadata(&cfg, &set, Duration::from_secs(10))
                            .await;
                        let due = last_metadata.as_ref().is_none_or(|(old, at)| {
                            *old != m || at.elapsed() >= cfg.topics.metadata_interval
                        });
                        due.then(|| {
                            last_metadata = Some((m.clone(), Instant::now()));
                            m
                        })
                    } else {
                        None
                    };
                    let acls = if cfg.topics.sync_acls {
                        let (d, c, s) = (discovery.clone(), cfg.clone(), set.clone());
                        let listed = tokio::task::spawn_blocking(move || {
                            d.topic_acls(&c, &s, Duration::from_secs(10))
                        })
                        .await
                        .expect("listing ACLs panicked");
                        listed
                            .filter(|a| {
                                last_acls.as_ref().is_none_or(|(old, at)| {
                                    old != a || at.elapsed() >= cfg.topics.metadata_interval
                                })
                            })
                            .inspect(|a| last_acls = Some((a.clone(), Instant::now())))
                    } else {
                        None
                    };
                    if last.as_ref() != Some(&set) || metadata.is_some() || acls.is_some() {
                        last = Some(set.clone());
                        if tx
                            .send(Ok(Discovered {
                                set,
                                metadata,
                                acls,
                            }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                Err(e) if last.is_none() => {
                    let _ = tx
                        .send(Err(anyhow!(e).context("listing topics of the edge cluster")))
                        .await;
                    return;
                }
                Err(e) => warn!(error = %e, "topic discovery failed; keeping the known topics"),
            }
            tokio::time::sleep(cfg.topics.refresh_interval).await;
        }
    })
}

/// Forwards the frames of one QUIC stream to the session, then how the stream ended.
fn spawn_stream_reader(
    mut reader: FrameReader,
    channel: Channel,
    tx: mpsc::Sender<Inbound>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match reader.next().await {
                Ok(Some(f)) => {
                    if tx.send(Inbound::Frame(channel.clone(), f)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    let _ = tx.send(Inbound::Closed(channel, None)).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Inbound::Closed(channel, Some(e))).await;
                    return;
                }
            }
        }
    })
}

/// Writes the frames queued for one QUIC stream; a write error reaches the session as the
/// stream's end.
fn spawn_stream_writer(
    mut writer: FrameWriter,
    mut rx: mpsc::UnboundedReceiver<Frame>,
    channel: Channel,
    tx: mpsc::Sender<Inbound>,
) {
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if let Err(e) = writer.write(&f).await {
                let _ = tx.send(Inbound::Closed(channel, Some(e))).await;
                return;
            }
        }
        writer.finish();
    });
}
