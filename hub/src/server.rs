//! The QUIC server: accepts sites, runs one session per connected site, drives the protocol.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use er_protocol::{Channel, ErrorCode, Frame, HubConn, HubEvent, TopicPartition};
use tokio::sync::{Mutex, mpsc, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::checkpoints::{CheckpointSettings, Checkpointer, GroupTable, Round};
use crate::config::Validated;
use crate::kafka::TopicManager;
use crate::sink::{self, Completion, SiteWriter, WriteError, WriteJob, WriterSettings};
use er_net::wire::{FrameReader, FrameWriter, StreamError};

/// QUIC application close codes the hub uses.
pub mod close_code {
    /// Orderly shutdown.
    pub const SHUTDOWN: u32 = 0;
    /// The peer broke the protocol.
    pub const PROTOCOL: u32 = 1;
    /// The certificate does not name a valid site.
    pub const UNAUTHORIZED: u32 = 2;
    /// The central cluster or the hub failed; the agent should reconnect and resume.
    pub const INTERNAL: u32 = 3;
    /// A newer connection of the same site replaced this one.
    pub const SUPERSEDED: u32 = 4;
    /// The site's certificate expired (or is not valid yet): at resumption or during a session.
    pub const CERT_EXPIRED: u32 = 5;
    /// A CRL revokes the site's certificate: at resumption or during a session.
    pub const REVOKED: u32 = 6;
}

/// How long the writers of a site whose session ended are kept for its return.
pub const PARK_TTL: Duration = Duration::from_secs(300);
/// How long a new connection of a site waits for the session it replaces to end and hand over
/// its writers.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);

/// A site's writers (one per cluster) and checkpointers, alive for as long as a session uses
/// them and then parked for [`PARK_TTL`].
struct SiteState {
    writers: Vec<SiteWriter>,
    checkpointers: Arc<std::sync::Mutex<Vec<Checkpointer>>>,
}

struct Parked {
    state: SiteState,
    since: Instant,
}

/// A connected site's session: its id, connection, and a flag raised once it ended and parked
/// its writers.
type SessionEntry = (u64, quinn::Connection, watch::Receiver<bool>);

/// State shared by all sessions of one hub process.
pub struct Hub {
    config: Validated,
    topics: Vec<Arc<TopicManager>>,
    sessions: Mutex<HashMap<String, SessionEntry>>,
    /// Writers of sites whose session ended: a site that reconnects to this hub within
    /// [`PARK_TTL`] resumes without fencing, re-reading positions or rebuilding its offset index
    /// (seconds on a real cluster). Safe because a writer's in-memory positions are exactly what
    /// it committed; if another hub took the site over meanwhile, this writer is fenced, its
    /// first write fails, and the next session starts afresh (no duplicate: fenced writes never
    /// commit).
    parked: std::sync::Mutex<HashMap<String, Parked>>,
    next_session: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("hub_id", &self.config.raw.hub_id)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Prepares clients for every configured cluster.
    pub fn new(config: Validated) -> anyhow::Result<Arc<Self>> {
        let topics = config
            .raw
            .clusters
            .iter()
            .map(TopicManager::new)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Self {
            config,
            topics,
            sessions: Mutex::new(HashMap::new()),
            parked: std::sync::Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
        }))
    }

    /// Accepts connections until `shutdown` turns true.
    pub async fn serve(
        self: Arc<Self>,
        endpoint: quinn::Endpoint,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        info!(listen = %endpoint.local_addr()?, hub_id = %self.config.raw.hub_id, "hub listening");
        let mut sweep = tokio::time::interval(Duration::from_secs(30));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = sweep.tick() => self.expire_parked(),
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let hub = self.clone();
                    tokio::spawn(async move { hub.handle_incoming(incoming).await });
                }
                _ = shutdown.changed() => break,
            }
        }
        info!("hub shutting down");
        endpoint.close(close_code::SHUTDOWN.into(), b"hub shutting down");
        endpoint.wait_idle().await;
        Ok(())
    }

    async fn handle_incoming(self: Arc<Self>, incoming: quinn::Incoming) {
        let remote = incoming.remote_address();
        let connecting = match incoming.accept() {
            Ok(c) => c,
            Err(e) => {
                warn!(%remote, error = %e, "refused connection");
                return;
            }
        };
        // A server's conversion to 0.5-RTT always succeeds; `handshake` resolves when the
        // handshake is over, successful or not.
        let (conn, handshake) = match connecting.into_0rtt() {
            Ok(pair) => pair,
            Err(_) => unreachable!("quinn converts every incoming connection to 0.5-RTT"),
        };
        // A site resuming a TLS session is authenticated at once: its certificate comes from the
        // session and the PSK binder proves the session's secret. A full handshake names the
        // site only at its end.
        let resumed = conn.peer_identity().is_some();
        let mut handshake = Some(handshake);
        if !resumed && !finish_handshake(&conn, &mut handshake).await {
            let reason = crate::admission::handshake_refused(&conn);
            warn!(%remote, reason, error = ?conn.close_reason(), "refused connection: TLS handshake failed (client certificate missing, revoked, expired or not issued by the configured CA?)");
            return;
        }
        let policy = self.config.identity.clone();
        let Some(identity) = crate::admission::admit(&conn, &policy, remote) else {
            return;
        };
        let site = identity.alias.clone();
        crate::admission::spawn_watcher(conn.clone(), policy, identity);
        let span = info_span!("site", site = %site, %remote);
        // The hello of a resumed session may be 0-RTT data, which anyone on the path can replay:
        // until the handshake is over, the hub only reads (see `greet`).
        let greeted = match self
            .greet(&conn, &site, resumed)
            .instrument(span.clone())
            .await
        {
            Ok(g) => g,
            Err(end) => {
                let _enter = span.enter();
                report_end(&conn, end);
                return;
            }
        };
        if !finish_handshake(&conn, &mut handshake).await {
            let _enter = span.enter();
            info!(reason = ?conn.close_reason(), "a resumed connection did not finish its handshake (lost, or a replayed hello); nothing was changed");
            return;
        }
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        crate::metrics::session_started();
        let (ended_tx, ended_rx) = watch::channel(false);
        let replaced = {
            let mut sessions = self.sessions.lock().await;
            let replaced = sessions.insert(site.clone(), (id, conn.clone(), ended_rx));
            crate::metrics::set_sites_connected(sessions.len());
            replaced
        };
        if let Some((_, old, mut old_ended)) = replaced {
            info!(%site, "a new connection of the site replaces the old one");
            old.close(
                close_code::SUPERSEDED.into(),
                b"superseded by a newer connection",
            );
            // Let the old session finish its queued transactions and park its writers, so this
            // one can take them over instead of fencing them.
            if tokio::time::timeout(HANDOVER_WAIT, old_ended.wait_for(|ended| *ended))
                .await
                .is_err()
            {
                warn!(%site, wait_ms = HANDOVER_WAIT.as_millis() as u64, "the replaced session did not end in time; starting fresh writers (they fence the old ones)");
            }
        }
        let mut state = None;
        let result = self
            .clone()
            .run_session(conn.clone(), site.clone(), greeted, &mut state)
            .instrument(span.clone())
            .await;
        let _enter = span.enter();
        match result {
            Ok(()) => info!("site disconnected"),
            Err(end) => report_end(&conn, end),
        }
        let mut sessions = self.sessions.lock().await;
        if sessions.get(&site).is_some_and(|(sid, _, _)| *sid == id) {
            sessions.remove(&site);
        }
        crate::metrics::set_sites_connected(sessions.len());
        if let Some(state) = state {
            self.park(&site, state);
        }
        drop(sessions);
        let _ = ended_tx.send(true);
    }

    /// Keeps a site's writers for its return, unless one of them stopped (then they are dropped:
    /// the next session must fence and re-read).
    fn park(&self, site: &str, state: SiteState) {
        if !state.writers.iter().all(SiteWriter::is_running) {
            info!(%site, "a writer of the site stopped; the next session starts fresh writers");
            drop_off_executor(state);
            return;
        }
        debug!(%site, keep_s = PARK_TTL.as_secs(), "parking the site's writers for its return");
        let old = self
            .parked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                site.to_owned(),
                Parked {
                    state,
                    since: Instant::now(),
                },
            );
        if let Some(old) = old {
            drop_off_executor(old.state);
        }
    }

    /// Drops parked writers older than [`PARK_TTL`].
    fn expire_parked(&self) {
        let expired: Vec<(String, Parked)> = {
            let mut parked = self
                .parked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let old: Vec<String> = parked
                .iter()
                .filter(|(_, p)| p.since.elapsed() >= PARK_TTL)
                .map(|(s, _)| s.clone())
                .collect();
            old.into_iter()
                .filter_map(|s| parked.remove(&s).map(|p| (s, p)))
                .collect()
        };
        for (site, p) in expired {
            info!(%site, idle_s = p.since.elapsed().as_secs(), "closing the writers of a site that did not come back");
            drop_off_executor(p.state);
        }
    }

    /// The site's writers and its committed positions: the parked writers if the site was here
    /// recently and they are healthy (positions from their memory, after their queued
    /// transactions), else fresh ones (fencing, positions and offset index read from Kafka).
    /// Checkpointers come along only with parked writers; fresh ones are started after Welcome.
    async fn acquire_site(
        &self,
        site: &str,
    ) -> Result<
        (
            Vec<SiteWriter>,
            Option<Arc<std::sync::Mutex<Vec<Checkpointer>>>>,
            Vec<er_protocol::Position>,
        ),
        String,
    > {
        let parked = self
            .parked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(site);
        if let Some(p) = parked {
            let mut positions = Vec::new();
            let mut healthy = true;
            for (i, w) in p.state.writers.iter().enumerate() {
                match w.positions().await {
                    Some(ps) => positions.extend(self.routed_here(site, i, ps)),
                    None => {
                        healthy = false;
                        break;
                    }
                }
            }
            if healthy {
                info!(
                    parked_ms = p.since.elapsed().as_millis() as u64,
                    "resuming on the site's parked writers (positions from memory, no fencing)"
                );
                crate::metrics::writers_reused();
                return Ok((p.state.writers, Some(p.state.checkpointers), positions));
            }
            info!("a parked writer of the site stopped; starting fresh writers");
            drop_off_executor(p.state);
        }
        let (writers, positions) = self.start_writers(site).await?;
        Ok((writers, None, positions))
    }

    /// Reads the site's hello and, when it can be answered without changing anything, answers
    /// it at once: a resumed session (0.5-RTT) of a site that has no live session here and has
    /// parked writers gets its welcome with their positions, one round trip earlier. Taking the
    /// writers over, fencing and replacing a live session wait for the end of the handshake,
    /// which a replayed hello never reaches.
    async fn greet(
        &self,
        conn: &quinn::Connection,
        site: &str,
        resumed: bool,
    ) -> Result<Greeted, SessionEnd> {
        let cfg = &self.config;
        let (ctl_send, ctl_recv) = conn
            .accept_bi()
            .await
            .map_err(|e| SessionEnd::Link(e.to_string()))?;
        let mut ctl_reader = FrameReader::new(ctl_recv, er_net::wire::CONTROL_FRAME_MAX_BYTES);
        let mut writers = StreamWriters {
            control: FrameWriter::new(ctl_send),
            partitions: HashMap::new(),
        };
        let mut proto = HubConn::new(
            er_protocol::HubConfig {
                hub_id: cfg.raw.hub_id.clone(),
                max_batch_bytes: cfg.raw.limits.max_batch_bytes,
                max_uncompressed_bytes: cfg.raw.limits.max_uncompressed_bytes,
            },
            site.to_owned(),
            Instant::now(),
        );
        let first = ctl_reader
            .next()
            .await
            .map_err(SessionEnd::from_stream)?
            .ok_or_else(|| SessionEnd::Link("control stream closed before hello".into()))?;
        proto
            .handle_frame(Instant::now(), &Channel::Control, first)
            .map_err(|e| SessionEnd::Protocol(e.to_string()))?;
        let mut hello_ok = false;
        while let Some(ev) = proto.poll_event() {
            if let HubEvent::Hello {
                agent_version,
                site_claim,
                version,
            } = ev
            {
                if !site_claim.is_empty() && site_claim != site {
                    warn!(site_claim = %er_net::Untrusted(&site_claim), "agent claims another site name; the certificate decides");
                }
                info!(agent_version = %er_net::Untrusted(&agent_version), version, resumed, "hello");
                hello_ok = true;
            }
        }
        if !hello_ok {
            // The state machine queued an Error frame (e.g. version mismatch): deliver it.
            writers.flush(&mut proto).await?;
            return Err(SessionEnd::Protocol("handshake refused".into()));
        }
        let mut early = None;
        let live = self.sessions.lock().await.contains_key(site);
        if resumed
            && !live
            && let Some(positions) = self.peek_parked(site).await
        {
            info!(
                positions = positions.len(),
                "welcoming site in 0.5-RTT (resumed TLS session, positions of its parked writers)"
            );
            proto
                .welcome(positions.clone(), self.heartbeat_target(site))
                .map_err(|e| SessionEnd::Protocol(e.to_string()))?;
            writers.flush(&mut proto).await?;
            crate::metrics::early_welcome();
            early = Some(positions);
        }
        Ok(Greeted {
            ctl_reader,
            writers,
            proto,
            early,
        })
    }

    /// The positions the site's parked writers would resume from, without taking them. `None`
    /// when nothing is parked or a writer cannot answer at once.
    async fn peek_parked(&self, site: &str) -> Option<Vec<er_protocol::Position>> {
        let asks: Vec<_> = {
            let parked = self
                .parked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let p = parked.get(site)?;
            p.state
                .writers
                .iter()
                .map(SiteWriter::request_positions)
                .collect::<Option<_>>()?
        };
        let mut positions = Vec::new();
        for (i, ask) in asks.into_iter().enumerate() {
            positions.extend(self.routed_here(site, i, ask.await.ok()?));
        }
        Some(positions)
    }

    /// The positions cluster `cluster` holds for partitions the site's routes send to it; the
    /// others are stale (a route changed) and ignored.
    fn routed_here(
        &self,
        site: &str,
        cluster: usize,
        mut positions: Vec<er_protocol::Position>,
    ) -> Vec<er_protocol::Position> {
        positions.retain(|pos| self.config.cluster_for(site, &pos.tp.topic) == cluster);
        positions
    }

    /// Largest frame a site may send: a batch of the configured limit plus room for its header.
    fn max_frame(&self) -> u32 {
        self.config
            .raw
            .limits
            .max_batch_bytes
            .saturating_add(64 * 1024)
    }

    /// The alias of the cluster that receives the site's heartbeats.
    fn heartbeat_target(&self, site: &str) -> String {
        let cfg = &self.config;
        cfg.raw.clusters[cfg.cluster_for(site, er_protocol::HEARTBEATS_TOPIC)]
            .alias
            .clone()
    }

    async fn run_session(
        self: Arc<Self>,
        conn: quinn::Connection,
        site: String,
        greeted: Greeted,
        state: &mut Option<SiteState>,
    ) -> Result<(), SessionEnd> {
        let cfg = &self.config;
        let max_frame = self.max_frame();
        let Greeted {
            ctl_reader,
            mut writers,
            mut proto,
            early,
        } = greeted;
        let (completions_tx, mut completions) = mpsc::unbounded_channel::<Completion>();
        let (site_writers, checkpointers, positions) = self
            .acquire_site(&site)
            .await
            .map_err(SessionEnd::Internal)?;
        match early {
            // Another connection of the site used the writers between the early welcome and
            // the end of this handshake: the agent would resume from stale positions.
            Some(sent) if !same_positions(&sent, &positions) => {
                match checkpointers {
                    Some(checkpointers) => {
                        *state = Some(SiteState {
                            writers: site_writers,
                            checkpointers,
                        })
                    }
                    None => drop_off_executor(site_writers),
                }
                return Err(SessionEnd::Internal(
                    "the site's positions moved after its 0.5-RTT welcome; reconnect and resume"
                        .into(),
                ));
            }
            Some(_) => {}
            None => {
                info!(positions = positions.len(), "welcoming site");
                proto
                    .welcome(positions, self.heartbeat_target(&site))
                    .map_err(|e| SessionEnd::Protocol(e.to_string()))?;
                writers.flush(&mut proto).await?;
            }
        }

        let checkpointers = match checkpointers {
            Some(c) => c,
            None => self
                .start_checkpointers(&site, &site_writers)
                .await
                .map_err(SessionEnd::Internal)?,
        };
        let site_writers = &state
            .insert(SiteState {
                writers: site_writers,
                checkpointers: checkpointers.clone(),
            })
            .writers;
        let mut group_table = GroupTable::default();
        let mut checkpoint_tick =
            tokio::time::interval(Duration::from_millis(cfg.raw.checkpoints.interval_ms));
        checkpoint_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (round_tx, mut rounds) = mpsc::channel::<Result<Round, String>>(1);
        let mut round_busy = false;

        let site_metrics = crate::metrics::site(&site);
        let mut status_tick = tokio::time::interval_at(
            tokio::time::Instant::now() + crate::metrics::STATUS_INTERVAL,
            crate::metrics::STATUS_INTERVAL,
        );
        let mut index_tick = tokio::time::interval(crate::metrics::INDEX_GAUGE_INTERVAL);
        index_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let (in_tx, mut inbound) = mpsc::channel::<Inbound>(256);
        spawn_reader(ctl_reader, None, in_tx.clone());
        loop {
            tokio::select! {
                _ = status_tick.tick() => {
                    info!(site = %site, lag_seconds = site_metrics.lag_seconds(), records = site_metrics.records(), checkpoints = site_metrics.checkpoints(), "site status");
                }
                _ = index_tick.tick() => {
                    for (i, w) in site_writers.iter().enumerate() {
                        let runs = w.offset_index().read().unwrap_or_else(std::sync::PoisonError::into_inner).stats().runs;
                        crate::metrics::set_offset_index_entries(&site, &cfg.raw.clusters[i].alias, runs);
                    }
                }
                _ = checkpoint_tick.tick(), if !round_busy && !group_table.is_empty() => {
                    round_busy = true;
                    let cps = checkpointers.clone();
                    let table = group_table.clone();
                    let tx = round_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let mut total = Round::default();
                        let mut result = Ok(());
                        for c in cps.lock().expect("checkpointers lock").iter_mut() {
                            match c.run_once(&table) {
                                Ok(r) => {
                                    total.checkpoints += r.checkpoints;
                                    total.offset_syncs += r.offset_syncs;
                                    total.group_commits += r.group_commits;
                                    total.pending += r.pending;
                                }
                                Err(e) => result = Err(e.to_string()),
                            }
                        }
                        let _ = tx.blocking_send(result.map(|()| total));
                    });
                }
                r = rounds.recv() => {
                    round_busy = false;
                    match r {
                        Some(Ok(r)) if r.checkpoints + r.offset_syncs + r.group_commits > 0 => {
                            site_metrics.checkpoint_round(r.checkpoints, r.offset_syncs);
                            debug!(checkpoints = r.checkpoints, offset_syncs = r.offset_syncs, group_commits = r.group_commits, pending = r.pending, "checkpoint round");
                        }
                        Some(Ok(_)) | None => {}
                        Some(Err(e)) => warn!(error = %e, "checkpoint round failed; retrying next interval"),
                    }
                }
                stream = conn.accept_bi() => {
                    let (send, recv) = stream.map_err(|e| SessionEnd::Link(e.to_string()))?;
                    spawn_reader(FrameReader::new(recv, max_frame), Some(send), in_tx.clone());
                }
                msg = inbound.recv() => {
                    let Some(msg) = msg else { return Ok(()) };
                    match msg {
                        Inbound::Frame { channel, frame, send } => {
                            if let (Channel::Partition(tp), Some(send)) = (&channel, send) {
                                writers.partitions.insert(tp.clone(), FrameWriter::new(send));
                            }
                            proto.handle_frame(Instant::now(), &channel, frame).map_err(|e| SessionEnd::Protocol(e.to_string()))?;
                            while let Some(ev) = proto.poll_event() {
                                match ev {
                                    HubEvent::Batch(batch) => {
                                        let cluster = cfg.cluster_for(&site, &batch.header.tp.topic);
                                        debug!(tp = %batch.header.tp, seq = batch.header.seq, records = batch.header.record_count, "batch");
                                        site_metrics.batch_received(batch.payload.len());
                                        site_writers[cluster].submit(WriteJob { batch, reply: completions_tx.clone() }).await.map_err(|e| SessionEnd::Internal(e.to_string()))?;
                                    }
                                    HubEvent::GroupOffsets(groups) => {
                                        debug!(groups = groups.len(), "group offsets reported");
                                        group_table.update(groups);
                                    }
                                    _ => {}
                                }
                            }
                        }
                        Inbound::Closed { channel, error } => match error {
                            Some(StreamError::Decode(e)) => {
                                proto.reject(ErrorCode::Protocol, format!("malformed frame on {channel:?}: {e}"));
                                writers.flush(&mut proto).await?;
                                return Err(SessionEnd::Protocol(format!("malformed frame on {channel:?}: {e}")));
                            }
                            Some(e) => return Err(SessionEnd::from_stream(e)),
                            None if matches!(channel, Channel::Control) => return Ok(()),
                            None => {}
                        },
                    }
                }
                done = completions.recv() => {
                    let Some(done) = done else { return Ok(()) };
                    match done.result {
                        Ok(()) => proto.ack(&done.tp, done.seq, done.next_offset).map_err(|e| SessionEnd::Protocol(e.to_string()))?,
                        Err(e) => {
                            let code = match e { WriteError::BadBatch { .. } => ErrorCode::BadBatch, _ => ErrorCode::Internal };
                            proto.reject(code, e.to_string());
                            writers.flush(&mut proto).await?;
                            return Err(match e { WriteError::BadBatch { .. } => SessionEnd::Protocol(e.to_string()), _ => SessionEnd::Internal(e.to_string()) });
                        }
                    }
                }
                closed = conn.closed() => return Err(SessionEnd::Link(closed.to_string())),
            }
            writers.flush(&mut proto).await?;
        }
    }

    /// One checkpointer per cluster for this site, on the writers' offset indexes.
    async fn start_checkpointers(
        &self,
        site: &str,
        writers: &[SiteWriter],
    ) -> Result<Arc<std::sync::Mutex<Vec<Checkpointer>>>, String> {
        let cfg = &self.config;
        let mut out = Vec::new();
        for (i, cluster) in cfg.raw.clusters.iter().enumerate() {
            let settings = CheckpointSettings {
                site: site.to_owned(),
                sync_group_offsets: cfg.raw.checkpoints.sync_group_offsets,
                offset_syncs: cfg.raw.checkpoints.offset_syncs,
            };
            let cluster = cluster.clone();
            let topics = self.topics[i].clone();
            let index = writers[i].offset_index().clone();
            let rt = tokio::runtime::Handle::current();
            let c = tokio::task::spawn_blocking(move || {
                Checkpointer::start(&rt, &cluster, &topics, index, settings)
            })
            .await
            .map_err(|e| format!("checkpointer start panicked: {e}"))?
            .map_err(|e| e.to_string())?;
            out.push(c);
        }
        Ok(Arc::new(std::sync::Mutex::new(out)))
    }

    /// One writer per cluster for this site; returns them with the merged committed positions.
    async fn start_writers(
        &self,
        site: &str,
    ) -> Result<(Vec<SiteWriter>, Vec<er_protocol::Position>), String> {
        let cfg = &self.config;
        let mut tasks = Vec::new();
        for (i, cluster) in cfg.raw.clusters.iter().enumerate() {
            let settings = WriterSettings::new(site, cfg);
            let cluster = cluster.clone();
            let topics = self.topics[i].clone();
            let rt = tokio::runtime::Handle::current();
            tasks.push(tokio::task::spawn_blocking(move || {
                sink::start(rt, &cluster, topics, settings)
            }));
        }
        let mut writers = Vec::new();
        let mut positions = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            let (w, p) = t
                .await
                .map_err(|e| format!("writer start panicked: {e}"))?
                .map_err(|e| e.to_string())?;
            positions.extend(self.routed_here(site, i, p));
            writers.push(w);
        }
        Ok((writers, positions))
    }
}

/// Why a session ended.
#[derive(Debug)]
enum SessionEnd {
    Protocol(String),
    Internal(String),
    Link(String),
}

impl SessionEnd {
    fn from_stream(e: StreamError) -> Self {
        match e {
            StreamError::Decode(d) => SessionEnd::Protocol(format!("malformed frame: {d}")),
            StreamError::Truncated(_) => SessionEnd::Protocol(e.to_string()),
            other => SessionEnd::Link(other.to_string()),
        }
    }
}

enum Inbound {
    Frame {
        channel: Channel,
        frame: Frame,
        /// The send half of a partition stream, handed over with its first frame.
        send: Option<quinn::SendStream>,
    },
    Closed {
        channel: Channel,
        error: Option<StreamError>,
    },
}

/// Reads one stream's frames into the session. A partition stream is identified by its first
/// frame, which must be a batch.
fn spawn_reader(
    mut reader: FrameReader,
    mut send: Option<quinn::SendStream>,
    tx: mpsc::Sender<Inbound>,
) {
    let mut channel = if send.is_none() {
        Some(Channel::Control)
    } else {
        None
    };
    tokio::spawn(async move {
        loop {
            match reader.next().await {
                Ok(Some(frame)) => {
                    let ch = match &channel {
                        Some(c) => c.clone(),
                        None => {
                            let c = match &frame {
                                Frame::Batch(b) => Channel::Partition(b.header.tp.clone()),
                                // Anything else opening a data stream is a protocol error the
                                // state machine reports; use a placeholder channel for it.
                                _ => Channel::Partition(TopicPartition {
                                    topic: String::new(),
                                    partition: -1,
                                }),
                            };
                            channel = Some(c.clone());
                            c
                        }
                    };
                    if tx
                        .send(Inbound::Frame {
                            channel: ch,
                            frame,
                            send: send.take(),
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) => {
                    let _ = tx
                        .send(Inbound::Closed {
                            channel: channel.unwrap_or(Channel::Control),
                            error: None,
                        })
                        .await;
                    return;
                }
                Err(e) => {
                    let _ = tx
                        .send(Inbound::Closed {
                            channel: channel.unwrap_or(Channel::Control),
                            error: Some(e),
                        })
                        .await;
                    return;
                }
            }
        }
    });
}

struct StreamWriters {
    control: FrameWriter,
    partitions: HashMap<TopicPartition, FrameWriter>,
}

impl StreamWriters {
    async fn flush(&mut self, proto: &mut HubConn) -> Result<(), SessionEnd> {
        while let Some((channel, frame)) = proto.poll_transmit() {
            let w = match &channel {
                Channel::Control => &mut self.control,
                Channel::Partition(tp) => match self.partitions.get_mut(tp) {
                    Some(w) => w,
                    None => {
                        return Err(SessionEnd::Protocol(format!(
                            "no stream for {tp} to send {} on",
                            frame.kind()
                        )));
                    }
                },
            };
            w.write(&frame).await.map_err(SessionEnd::from_stream)?;
        }
        Ok(())
    }
}

/// The connection of a site up to its hello (see [`Hub::greet`]).
struct Greeted {
    ctl_reader: FrameReader,
    writers: StreamWriters,
    proto: HubConn,
    /// The positions an early (0.5-RTT) welcome gave the agent.
    early: Option<Vec<er_protocol::Position>>,
}

/// Waits for the end of the handshake (once); false if it failed.
async fn finish_handshake(
    conn: &quinn::Connection,
    handshake: &mut Option<quinn::ZeroRttAccepted>,
) -> bool {
    if let Some(h) = handshake.take() {
        h.await;
    }
    conn.close_reason().is_none()
}

/// Logs why a session ended and closes its connection with the matching code.
fn report_end(conn: &quinn::Connection, end: SessionEnd) {
    match end {
        SessionEnd::Protocol(m) => {
            warn!(error = %m, "closing connection: protocol violation");
            conn.close(close_code::PROTOCOL.into(), m.as_bytes());
        }
        SessionEnd::Internal(m) => {
            warn!(error = %m, "closing connection; the site will resume from committed positions");
            conn.close(close_code::INTERNAL.into(), m.as_bytes());
        }
        SessionEnd::Link(m) => info!(reason = %m, "site link lost"),
    }
}

/// The same positions, in any order.
fn same_positions(a: &[er_protocol::Position], b: &[er_protocol::Position]) -> bool {
    let key = |ps: &[er_protocol::Position]| {
        let mut v: Vec<_> = ps
            .iter()
            .map(|p| (p.tp.topic.clone(), p.tp.partition, p.next_offset))
            .collect();
        v.sort();
        v
    };
    a.len() == b.len() && key(a) == key(b)
}

/// Drops a site's writers and checkpointers (or just writers) on a blocking thread: their Kafka
/// clients may wait on the network while closing.
fn drop_off_executor<T: Send + 'static>(state: T) {
    tokio::task::spawn_blocking(move || drop(state));
}
