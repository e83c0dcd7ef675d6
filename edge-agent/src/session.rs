//! One connection's lifetime: handshake, resume from the hub's positions, read, batch, send, ack.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use er_net::wire::{FrameReader, FrameWriter, StreamError};
use er_protocol::{AgentConn, AgentEvent, Batch, Channel, Frame, GroupOffsets, TopicPartition};
use rdkafka::Offset;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::Stats;
use crate::config::Validated;
use crate::groups::GroupReader;
use crate::heartbeat::Aliases;
use crate::metrics as m;
use crate::pipeline::SharedPipeline;
use crate::source::{self, Discovery, TopicSet};

/// Room for a frame header around the largest batch.
const FRAME_OVERHEAD: u32 = 64 * 1024;

/// How a session ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Shutdown was requested.
    Shutdown,
}

/// What the caller learns from a failed session.
#[derive(Debug)]
pub struct Failure {
    /// The hub welcomed us before the failure (resets the reconnect backoff).
    pub welcomed: bool,
    /// What went wrong.
    pub error: anyhow::Error,
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
}

/// Most offsets in one GroupOffsets frame.
const GROUP_FRAME_POSITIONS: usize = 4096;

/// Runs one session over an established connection.
pub async fn run(
    cfg: &Validated,
    shared: Shared,
    conn: quinn::Connection,
    stats: Arc<Stats>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Exit, Failure> {
    let mut s = Session {
        cfg,
        discovery: shared.discovery.clone(),
        pipeline: shared.pipeline.clone(),
        shared,
        conn,
        stats,
        welcomed: false,
        proto: AgentConn::new(
            er_protocol::AgentConfig {
                agent_version: format!("edge-agent/{}", env!("CARGO_PKG_VERSION")),
                site_claim: cfg.raw.site.clone().unwrap_or_default(),
                ping_interval: Duration::from_secs(5),
                welcome_timeout: Duration::from_secs(90),
                max_inflight_bytes_per_partition: cfg.raw.batching.max_inflight_bytes_per_partition,
                max_inflight_bytes_total: cfg.raw.batching.max_inflight_bytes_total,
            },
            Instant::now(),
        ),
        streams: HashMap::new(),
        parked: None,
        inbound: mpsc::channel(1024),
    };
    let result = s.run(shutdown).await;
    result.map_err(|error| Failure {
        welcomed: s.welcomed,
        error,
    })
}

struct Session<'a> {
    cfg: &'a Validated,
    discovery: Arc<Discovery>,
    pipeline: SharedPipeline,
    shared: Shared,
    conn: quinn::Connection,
    stats: Arc<Stats>,
    welcomed: bool,
    proto: AgentConn,
    streams: HashMap<TopicPartition, mpsc::UnboundedSender<Frame>>,
    /// A batch waiting for in-flight budget; while set, no more batches are taken.
    parked: Option<Batch>,
    inbound: (mpsc::Sender<Inbound>, mpsc::Receiver<Inbound>),
}

impl Session<'_> {
    async fn run(&mut self, shutdown: &mut watch::Receiver<bool>) -> anyhow::Result<Exit> {
        let (send, recv) = self
            .conn
            .open_bi()
            .await
            .context("opening the control stream")?;
        let mut control = FrameWriter::new(send);
        spawn_reader(
            FrameReader::new(recv, FRAME_OVERHEAD * 2),
            Channel::Control,
            self.inbound.0.clone(),
        );
        self.flush(&mut control).await?;

        // Handshake: wait for the welcome and its resume positions.
        let (site, positions, max_batch_bytes) = loop {
            let deadline = self.proto.poll_timeout();
            tokio::select! {
                m = self.inbound.1.recv() => self.handle_inbound(m)?,
                _ = sleep_until(deadline) => self.proto.handle_timeout(Instant::now()),
                _ = shutdown.changed() => return Ok(Exit::Shutdown),
            }
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
                        self.shared.aliases.send_replace(Some(Aliases {
                            site: site.clone(),
                            target: heartbeat_target,
                        }));
                        welcome = Some((site, positions, max_batch_bytes));
                    }
                    other => self.handle_event(other)?,
                }
            }
            self.flush(&mut control).await?;
            if let Some(w) = welcome {
                break w;
            }
        };
        self.welcomed = true;
        ::metrics::gauge!(m::LINK_UP).set(1.0);
        // Batches are measured before compression; keep a margin for incompressible data.
        let hub_cap = (max_batch_bytes as usize)
            .saturating_sub(FRAME_OVERHEAD as usize)
            .max(1024);
        if self.cfg.raw.batching.max_bytes > hub_cap {
            warn!(
                agent_max_bytes = self.cfg.raw.batching.max_bytes,
                hub_max_batch_bytes = max_batch_bytes,
                "batching.max_bytes is larger than the hub accepts; batches are capped at the hub's limit"
            );
        }
        let max_batch = self.cfg.raw.batching.max_bytes.min(hub_cap);
        let positions: HashMap<TopicPartition, i64> = positions
            .into_iter()
            .map(|p| (p.tp, p.next_offset))
            .collect();

        let (batch_tx, mut batches) = mpsc::channel::<anyhow::Result<Batch>>(8);
        let (cmd_tx, cmd_rx) = std::sync::mpsc::channel();
        let consumer = source::consumer(self.cfg).context("creating the edge consumer")?;
        source::spawn_reader(
            consumer,
            source::BatchLimits {
                max_records: self.cfg.raw.batching.max_records,
                max_bytes: max_batch,
                linger: self.cfg.linger(),
                codec: self.cfg.codec,
                zstd_level: self.cfg.raw.batching.zstd_level,
            },
            source::Routing {
                cfg: self.cfg.clone(),
                pipeline: self.pipeline.clone(),
                stats: self.stats.clone(),
            },
            cmd_rx,
            batch_tx,
        );
        let (topics_tx, mut topics_rx) = mpsc::channel::<anyhow::Result<TopicSet>>(1);
        let discovery_task = spawn_discovery(self.cfg.clone(), self.discovery.clone(), topics_tx);
        let _stop_discovery = AbortOnDrop(discovery_task);
        let mut known = TopicSet::new();
        info!(%site, "replicating");
        let (groups_tx, mut groups_rx) = mpsc::channel::<anyhow::Result<Vec<GroupOffsets>>>(1);
        let mut groups_tick = tokio::time::interval(
            self.cfg
                .groups_interval()
                .unwrap_or(Duration::from_secs(3600)),
        );
        groups_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut groups_busy = false;

        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    self.conn.close(0u32.into(), b"agent shutting down");
                    return Ok(Exit::Shutdown);
                }
                m = self.inbound.1.recv() => self.handle_inbound(m)?,
                t = topics_rx.recv() => {
                    let set = t.ok_or_else(|| anyhow!("topic discovery stopped"))??;
                    let added: Vec<source::StartPartition> = source::partitions(&set)
                        .filter(|(tp, _)| known.get(&tp.topic).is_none_or(|n| tp.partition >= *n))
                        .map(|(tp, partition_count)| {
                            let offset = positions.get(&tp).map_or(Offset::Beginning, |o| Offset::Offset(*o));
                            info!(%tp, ?offset, "replicating partition");
                            if let Some(lag) = &self.shared.lag {
                                lag.track(&tp, positions.get(&tp).copied());
                            }
                            source::StartPartition { tp, partition_count, offset }
                        })
                        .collect();
                    if !added.is_empty() {
                        cmd_tx.send(source::ReaderCmd::Add(added)).map_err(|_| anyhow!("edge reader stopped"))?;
                    }
                    known = set;
                }
                // While a batch waits for in-flight budget, take no more: the reader blocks and
                // stops polling Kafka.
                b = batches.recv(), if self.parked.is_none() => {
                    let batch = b.ok_or_else(|| anyhow!("edge reader stopped"))??;
                    self.offer(batch)?;
                }
                _ = groups_tick.tick(), if self.shared.groups.is_some() && !groups_busy && !known.is_empty() => {
                    groups_busy = true;
                    let reader = self.shared.groups.clone().expect("checked in the guard");
                    let topics = known.clone();
                    let tx = groups_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let r = reader.lock().expect("group reader lock").read(&topics, Duration::from_secs(10));
                        let _ = tx.blocking_send(r);
                    });
                }
                r = groups_rx.recv() => {
                    groups_busy = false;
                    match r.ok_or_else(|| anyhow!("group reader stopped"))? {
                        Ok(groups) => {
                            debug!(groups = groups.len(), "reporting consumer-group offsets");
                            for frame in crate::groups::chunk(groups, GROUP_FRAME_POSITIONS) {
                                self.proto.send_group_offsets(frame).context("reporting group offsets")?;
                            }
                            self.stats.group_reports_sent.fetch_add(1, Ordering::Relaxed);
                            ::metrics::counter!(m::GROUP_REPORTS_SENT).increment(1);
                        }
                        Err(e) => warn!(error = format!("{e:#}"), "reading edge consumer-group offsets failed"),
                    }
                }
                _ = sleep_until(self.proto.poll_timeout()) => self.proto.handle_timeout(Instant::now()),
                closed = self.conn.closed() => bail!("connection lost: {closed}"),
            }
            while let Some(ev) = self.proto.poll_event() {
                self.handle_event(ev)?;
            }
            self.flush(&mut control).await?;
            ::metrics::gauge!(m::INFLIGHT_BYTES).set(self.proto.inflight_bytes() as f64);
        }
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

    fn handle_event(&mut self, ev: AgentEvent) -> anyhow::Result<()> {
        match ev {
            AgentEvent::Acked {
                tp,
                seq,
                next_offset,
            } => {
                debug!(%tp, seq, next_offset, "acked");
                self.stats.batches_acked.fetch_add(1, Ordering::Relaxed);
                ::metrics::counter!(m::BATCHES_ACKED).increment(1);
                if let Some(lag) = &self.shared.lag {
                    lag.acked(&tp, next_offset);
                }
                if let Some(b) = self.parked.take() {
                    self.offer(b)?;
                }
                Ok(())
            }
            AgentEvent::RttSample(rtt) => {
                debug!(rtt_ms = rtt.as_secs_f64() * 1e3, "rtt");
                ::metrics::gauge!(m::RTT_SECONDS).set(rtt.as_secs_f64());
                Ok(())
            }
            AgentEvent::GoAway { reason } => bail!("hub is going away: {reason}"),
            AgentEvent::HubError { code, message } => bail!("hub refused: {code:?}: {message}"),
            AgentEvent::TimedOut { what } => bail!("timed out waiting for {what}"),
            AgentEvent::Welcomed { .. } => bail!("second welcome on one connection"),
        }
    }

    /// Sends a batch now, or parks it until acks free in-flight budget.
    fn offer(&mut self, batch: Batch) -> anyhow::Result<()> {
        if self
            .proto
            .can_send(&batch.header.tp, batch.payload.len() as u64)
        {
            self.send(batch)
        } else {
            self.parked = Some(batch);
            Ok(())
        }
    }

    fn send(&mut self, batch: Batch) -> anyhow::Result<()> {
        debug!(tp = %batch.header.tp, seq = batch.header.seq, records = batch.header.record_count, bytes = batch.payload.len(), "sending batch");
        self.stats
            .records_sent
            .fetch_add(batch.header.record_count as u64, Ordering::Relaxed);
        self.stats
            .bytes_sent
            .fetch_add(batch.payload.len() as u64, Ordering::Relaxed);
        ::metrics::counter!(m::RECORDS_SENT, "topic" => batch.header.tp.topic.clone())
            .increment(batch.header.record_count as u64);
        ::metrics::counter!(m::BYTES_SENT).increment(batch.payload.len() as u64);
        ::metrics::counter!(m::BATCHES_SENT).increment(1);
        self.proto.send_batch(batch).context("sending a batch")
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
                        let (tx, rx) = mpsc::unbounded_channel();
                        spawn_writer(
                            FrameWriter::new(send),
                            rx,
                            Channel::Partition(tp.clone()),
                            self.inbound.0.clone(),
                        );
                        spawn_reader(
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
            }
        }
        Ok(())
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

/// Looks for selected topics now and then every refresh interval; sends each result.
fn spawn_discovery(
    cfg: Validated,
    discovery: Arc<Discovery>,
    tx: mpsc::Sender<anyhow::Result<TopicSet>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<TopicSet> = None;
        loop {
            let d = discovery.clone();
            let c = cfg.clone();
            let res = tokio::task::spawn_blocking(move || d.topics(&c, Duration::from_secs(10)))
                .await
                .expect("discovery panicked");
            match res {
                Ok(set) if last.as_ref() != Some(&set) => {
                    last = Some(set.clone());
                    if tx.send(Ok(set)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) if last.is_none() => {
                    let _ = tx
                        .send(Err(anyhow!(e).context("listing topics of the edge cluster")))
                        .await;
                    return;
                }
                Err(e) => warn!(error = %e, "topic discovery failed; keeping the known topics"),
            }
            tokio::time::sleep(cfg.refresh_interval()).await;
        }
    })
}

fn spawn_reader(mut reader: FrameReader, channel: Channel, tx: mpsc::Sender<Inbound>) {
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
    });
}

fn spawn_writer(
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
