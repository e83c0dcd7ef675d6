//! From an incoming QUIC connection to a running session: the TLS handshake and the site's
//! identity, the hello (answered in 0.5-RTT when that changes nothing), admission to the hub
//! that owns the site's shard (or a redirect), and the handover from the site's previous
//! session.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use er_net::wire::{FrameReader, FrameWriter, InboundBudget};
use er_protocol::{Channel, ErrorCode, HubConn, HubEvent, Position};
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use super::budget::{Arrival, Budgets, ConnectionSlot};
use super::streams::StreamWriters;
use super::{HANDOVER_WAIT, Hub, SessionEnd, close_code, same_positions};
use crate::config::Validated;
use crate::events::{ConnectionRefused, Refused};
use crate::fleet::Owner;
use crate::sites::{SessionSlot, Site};

/// The connection of a site up to its hello (see [`Hub::greet`]).
pub(super) struct Greeted {
    pub(super) ctl_reader: FrameReader,
    pub(super) writers: StreamWriters,
    pub(super) proto: HubConn,
    /// The positions an early (0.5-RTT) welcome gave the agent.
    pub(super) early: Option<Vec<Position>>,
    /// What the connection's frames may hold (connection, site and hub levels).
    pub(super) budget: InboundBudget,
}

/// How long a hub that redirected a site waits for the agent to read the redirect and close.
const REDIRECT_LINGER: Duration = Duration::from_secs(3);

/// How often a site waiting for its shard's owner looks again.
const OWNER_POLL: Duration = Duration::from_millis(200);

/// Accepts connections from the moment the endpoint is bound: the TLS handshake and admission
/// need only the configuration, so a refused site learns why even while the hub's fleet is
/// still starting (its central cluster unreachable, say). An admitted site waits for the fleet
/// up to `fleet.shard_wait_ms`, then is told to connect again.
#[derive(Debug)]
pub struct Listener {
    config: Validated,
    hub: watch::Receiver<Option<Arc<Hub>>>,
    budgets: Arc<Budgets>,
}

/// How often the hub-wide inbound bytes gauge is refreshed.
const BUDGET_GAUGE_INTERVAL: Duration = Duration::from_secs(1);

impl Listener {
    /// A listener whose sessions go to the hub `hub` carries once the fleet started.
    pub fn new(config: Validated, hub: watch::Receiver<Option<Arc<Hub>>>) -> Arc<Self> {
        let budgets = Budgets::new(&config.raw.limits);
        Arc::new(Self {
            config,
            hub,
            budgets,
        })
    }

    /// Accepts connections until `shutdown` turns true.
    pub async fn serve(
        self: Arc<Self>,
        endpoint: quinn::Endpoint,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        info!(listen = %endpoint.local_addr()?, hub_id = %self.config.raw.hub_id, "accepting connections");
        let mut gauge = tokio::time::interval(BUDGET_GAUGE_INTERVAL);
        loop {
            tokio::select! {
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    self.arrive(incoming);
                }
                _ = gauge.tick() => {
                    crate::metrics::set_inbound_buffered_bytes(self.budgets.buffered_bytes());
                }
                _ = shutdown.changed() => break,
            }
        }
        info!("hub shutting down");
        endpoint.close(close_code::SHUTDOWN.into(), b"hub shutting down");
        endpoint.wait_idle().await;
        Ok(())
    }

    /// Handshakes a connection attempt, asks it for a Retry first while many handshakes are
    /// under way, or refuses it while the hub holds `limits.max_connections`.
    fn arrive(self: &Arc<Self>, incoming: quinn::Incoming) {
        match self.budgets.arrival(incoming.remote_address_validated()) {
            Arrival::Accept => {
                let slot = self.budgets.connection();
                let this = self.clone();
                tokio::spawn(async move { this.handle_incoming(incoming, slot).await });
            }
            Arrival::Retry => {
                crate::events::RetrySent.emit();
                if let Err(e) = incoming.retry() {
                    // Only an already validated address cannot be retried; it was accepted.
                    debug!(error = %e, "QUIC retry refused");
                }
            }
            Arrival::Busy => {
                ConnectionRefused {
                    remote: incoming.remote_address(),
                    why: Refused::HandshakesBusy {
                        max: self.config.raw.limits.max_handshakes,
                    },
                }
                .emit();
                incoming.refuse();
            }
            Arrival::Full => {
                ConnectionRefused {
                    remote: incoming.remote_address(),
                    why: Refused::HubFull {
                        max: self.config.raw.limits.max_connections,
                    },
                }
                .emit();
                incoming.refuse();
            }
        }
    }

    async fn handle_incoming(self: Arc<Self>, incoming: quinn::Incoming, mut slot: ConnectionSlot) {
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
            return crate::admission::handshake_refused(&conn, remote);
        }
        slot.handshake_done();
        // Checked for every connection, a resumed TLS session included (resumption does not
        // run the certificate verifier again): validity now, revocation, allowlist.
        let policy = self.config.identity.clone();
        let identity = match crate::admission::admit(&conn, &policy, remote) {
            Ok(identity) => identity,
            Err(refusal) => return refuse(&conn, &mut handshake, refusal).await,
        };
        let site = identity.alias.clone();
        let span = info_span!("site", site = %site, %remote);
        let site_slot = match self.budgets.site(&site) {
            Ok(s) => s,
            Err(held) => {
                let max = self.config.raw.limits.max_connections_per_site;
                span.in_scope(|| {
                    ConnectionRefused {
                        remote,
                        why: Refused::SiteFull { held, max },
                    }
                    .emit()
                });
                let refusal = crate::admission::Refusal {
                    code: super::close_code::TOO_MANY_CONNECTIONS,
                    reason: format!(
                        "the site holds {held} connections already (limits.max_connections_per_site = {max})"
                    ),
                };
                return refuse(&conn, &mut handshake, refusal).await;
            }
        };
        crate::admission::spawn_watcher(conn.clone(), policy, identity);
        // A connection that closes while the fleet starts frees its slots at once.
        let started = tokio::select! {
            hub = self.started_hub().instrument(span.clone()) => hub,
            _ = conn.closed() => return,
        };
        let Some(hub) = started else {
            let _enter = span.enter();
            SessionEnd::NotOwner(
                "the hub's fleet has not started yet (central cluster unreachable?)".into(),
            )
            .report(&conn);
            return;
        };
        hub.handle_admitted(conn, handshake, resumed, site, site_slot.budget.clone())
            .instrument(span)
            .await;
        drop((site_slot, slot));
    }

    /// The hub, once its fleet started; `None` after `fleet.shard_wait_ms` without it.
    async fn started_hub(&self) -> Option<Arc<Hub>> {
        if let Some(hub) = self.hub.borrow().clone() {
            return Some(hub);
        }
        let wait = Duration::from_millis(self.config.raw.fleet.shard_wait_ms);
        info!(
            wait_ms = wait.as_millis() as u64,
            "waiting for the hub's fleet to start"
        );
        let mut rx = self.hub.clone();
        let started = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
        match started {
            Ok(Ok(hub)) => hub.clone(),
            _ => None,
        }
    }
}

impl Hub {
    /// Runs an admitted connection of `site`: its hello, then the session here or a redirect.
    async fn handle_admitted(
        self: Arc<Self>,
        conn: quinn::Connection,
        mut handshake: Option<quinn::ZeroRttAccepted>,
        resumed: bool,
        site: String,
        budget: InboundBudget,
    ) {
        // The hello of a resumed session may be 0-RTT data, which anyone on the path can replay:
        // until the handshake is over, the hub only reads (see `greet`).
        let greeted = match self.greet(&conn, &site, resumed, budget).await {
            Ok(g) => g,
            Err(end) => {
                end.report(&conn);
                return;
            }
        };
        if !finish_handshake(&conn, &mut handshake).await {
            info!(reason = ?conn.close_reason(), "a resumed connection did not finish its handshake (lost, or a replayed hello); nothing was changed");
            return;
        }
        self.admit(conn, site, greeted).await;
    }

    /// Sends the site to its shard's owner, or takes over its previous session here and runs
    /// the new one.
    async fn admit(self: Arc<Self>, conn: quinn::Connection, alias: String, mut greeted: Greeted) {
        let site = match self.site_here(&alias, &mut greeted).await {
            Ok(s) => s,
            Err(end) => {
                let _ = greeted.writers.flush(&mut greeted.proto).await;
                if matches!(end, SessionEnd::Redirected(_)) {
                    // Let the redirect arrive: the agent closes the connection once it read it.
                    greeted.writers.control.finish();
                    let _ = tokio::time::timeout(REDIRECT_LINGER, conn.closed()).await;
                }
                end.report(&conn);
                return;
            }
        };
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        crate::events::SessionStarted.emit();
        let (supersede_tx, supersede_rx) = watch::channel(false);
        let (ended_tx, ended_rx) = watch::channel(false);
        let replaced = site.replace_session(SessionSlot {
            id,
            conn: conn.clone(),
            started_ms: crate::metrics::now_ms(),
            supersede: supersede_tx,
            ended: ended_rx,
        });
        self.publish_connected();
        let result = match self.take_over(&site, replaced).await {
            Ok(()) => {
                self.clone()
                    .run_session(&conn, &site, id, greeted, supersede_rx)
                    .await
            }
            Err(end) => Err(end),
        };
        match result {
            Ok(()) => info!("site disconnected"),
            Err(end) => end.report(&conn),
        }
        site.end_session(id);
        if !site.has_session() {
            site.metrics.disconnected();
        }
        self.publish_connected();
        let _ = ended_tx.send(true);
    }

    fn publish_connected(&self) {
        crate::metrics::set_sites_connected(self.fleet.registry.connected());
    }

    /// The site's state, once this hub owns its shard and has loaded it. A site whose shard
    /// another hub owns is redirected there; while nobody owns it (a rebalance, a dead hub not
    /// yet replaced) the site waits up to `fleet.shard_wait_ms`.
    async fn site_here(&self, alias: &str, greeted: &mut Greeted) -> Result<Arc<Site>, SessionEnd> {
        let registry = &self.fleet.registry;
        let shard = registry.shard_of(alias);
        let wait = Duration::from_millis(self.fleet.config.raw.fleet.shard_wait_ms);
        let deadline = Instant::now() + wait;
        let mut told = false;
        loop {
            match self.fleet.owner_of(shard) {
                Owner::Here => {
                    // A shard gained again is current only once the loader read it again.
                    let ownership = self.fleet.memberships[0].ownership();
                    if let Some(site) = registry
                        .site(alias)
                        .filter(|s| !s.is_stale() && s.is_current(&ownership))
                    {
                        return Ok(site);
                    }
                }
                Owner::Elsewhere { hub_id, addresses } => {
                    crate::events::Redirected {
                        shard,
                        owner: &hub_id,
                        addresses: &addresses,
                    }
                    .emit();
                    let reason =
                        format!("shard {shard} of site {alias:?} is served by hub {hub_id:?}");
                    greeted
                        .proto
                        .redirect(addresses, reason)
                        .map_err(|e| SessionEnd::Internal(format!("cannot redirect: {e}")))?;
                    return Err(SessionEnd::Redirected(hub_id));
                }
                Owner::Unknown => {}
            }
            if !told {
                info!(
                    shard,
                    wait_ms = wait.as_millis() as u64,
                    "waiting for the site's shard to be owned and loaded"
                );
                told = true;
            }
            if Instant::now() >= deadline {
                greeted.proto.reject(
                    ErrorCode::Overloaded,
                    format!("no hub serves shard {shard} of site {alias:?} yet; try again later"),
                );
                return Err(SessionEnd::NotOwner(format!(
                    "shard {shard} not owned by any hub after {wait:?}"
                )));
            }
            tokio::time::sleep(OWNER_POLL).await;
        }
    }

    /// Ends the site's previous session (if any) and waits until every batch it handed to the
    /// writers completed, so the positions in memory are exactly what is committed.
    async fn take_over(
        &self,
        site: &Site,
        replaced: Option<SessionSlot>,
    ) -> Result<(), SessionEnd> {
        if let Some(old) = replaced {
            info!("a new connection of the site replaces the old one");
            let _ = old.supersede.send(true);
            let mut ended = old.ended;
            let done = async { ended.wait_for(|e| *e).await.is_ok() };
            let in_time = tokio::time::timeout(HANDOVER_WAIT, done).await.is_ok();
            if !in_time {
                warn!(
                    wait_ms = HANDOVER_WAIT.as_millis() as u64,
                    "the replaced session did not end in time"
                );
            }
        }
        if !site.drained(HANDOVER_WAIT).await {
            return Err(SessionEnd::Internal(format!(
                "{} batches of the site's previous session are still being written; reconnect",
                site.inflight()
            )));
        }
        if site.is_stale() {
            return Err(SessionEnd::Internal(
                "the site's state is being read again after an uncertain commit; reconnect".into(),
            ));
        }
        site.restart_stopped();
        Ok(())
    }

    /// Reads the site's hello and, when it can be answered without changing anything, answers
    /// it at once (see [`Self::welcome_early`]).
    async fn greet(
        &self,
        conn: &quinn::Connection,
        alias: &str,
        resumed: bool,
        budget: InboundBudget,
    ) -> Result<Greeted, SessionEnd> {
        let (ctl_reader, mut writers, mut proto) = self
            .read_hello(conn, alias, resumed, budget.clone())
            .await?;
        let early = self
            .welcome_early(alias, resumed, &mut proto, &mut writers)
            .await?;
        Ok(Greeted {
            ctl_reader,
            writers,
            proto,
            early,
            budget,
        })
    }

    /// Accepts the control stream and reads the hello on it, within `limits.hello_timeout_ms`.
    async fn read_hello(
        &self,
        conn: &quinn::Connection,
        alias: &str,
        resumed: bool,
        budget: InboundBudget,
    ) -> Result<(FrameReader, StreamWriters, HubConn), SessionEnd> {
        let cfg = &self.fleet.config;
        let hello_timeout = Duration::from_millis(cfg.raw.limits.hello_timeout_ms);
        let no_hello = || {
            ConnectionRefused {
                remote: conn.remote_address(),
                why: Refused::NoHello,
            }
            .emit();
            SessionEnd::Protocol(format!(
                "no hello within {hello_timeout:?} of the handshake (limits.hello_timeout_ms)"
            ))
        };
        let (ctl_send, ctl_recv) = tokio::time::timeout(hello_timeout, conn.accept_bi())
            .await
            .map_err(|_| no_hello())?
            .map_err(|e| SessionEnd::Link(e.to_string()))?;
        let mut ctl_reader =
            FrameReader::with_budget(ctl_recv, er_net::wire::CONTROL_FRAME_MAX_BYTES, budget);
        let mut writers = StreamWriters {
            control: FrameWriter::new(ctl_send),
            partitions: HashMap::new(),
        };
        let mut proto = HubConn::new(
            er_protocol::HubConnConfig {
                hub_id: cfg.raw.hub_id.clone(),
                max_batch_bytes: cfg.raw.limits.max_batch_bytes,
                max_uncompressed_bytes: cfg.raw.limits.max_uncompressed_bytes,
            },
            alias.to_owned(),
            Instant::now(),
        );
        let first = tokio::time::timeout(hello_timeout, ctl_reader.next())
            .await
            .map_err(|_| no_hello())?
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
                if !site_claim.is_empty() && site_claim != alias {
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
        Ok((ctl_reader, writers, proto))
    }

    /// Welcomes a resumed session (0.5-RTT) at once when nothing needs to change first: a site
    /// of an owned, loaded shard that has no live session and no batch being written gets its
    /// welcome with the positions in memory, one round trip earlier. Replacing a live session
    /// waits for the end of the handshake, which a replayed hello never reaches. The positions
    /// sent, if it did.
    async fn welcome_early(
        &self,
        alias: &str,
        resumed: bool,
        proto: &mut HubConn,
        writers: &mut StreamWriters,
    ) -> Result<Option<Vec<Position>>, SessionEnd> {
        let registry = &self.fleet.registry;
        let quiet_site = resumed
            .then(|| registry.site(alias))
            .flatten()
            .filter(|s| !s.has_session() && s.inflight() == 0 && !s.is_stale())
            .filter(|s| s.is_current(&self.fleet.memberships[0].ownership()));
        let Some(site) = quiet_site else {
            return Ok(None);
        };
        if self.fleet.owner_of(site.shard) != Owner::Here {
            return Ok(None);
        }
        let positions = self.welcome_positions(&site);
        crate::events::EarlyWelcome {
            positions: positions.len(),
        }
        .emit();
        proto
            .welcome(positions.clone(), self.heartbeat_target(alias))
            .map_err(|e| SessionEnd::Protocol(e.to_string()))?;
        writers.flush(proto).await?;
        Ok(Some(positions))
    }

    /// The committed positions the site resumes from: on each cluster, those of the partitions
    /// the site's routes send there (the others are stale: a route changed).
    pub(super) fn welcome_positions(&self, site: &Site) -> Vec<Position> {
        let cfg = &self.fleet.config;
        site.positions(|cluster, tp| cfg.cluster_for(&site.alias, &tp.topic) == cluster)
    }

    /// The alias of the cluster that receives the site's heartbeats.
    pub(super) fn heartbeat_target(&self, site: &str) -> String {
        let cfg = &self.fleet.config;
        cfg.raw.clusters[cfg.cluster_for(site, er_protocol::HEARTBEATS_TOPIC)]
            .alias
            .clone()
    }

    /// Welcomes the site with its positions, unless an early welcome already did; then checks
    /// that those positions did not move in between (another connection of the site wrote).
    pub(super) async fn welcome(
        &self,
        site: &Site,
        writers: &mut StreamWriters,
        proto: &mut HubConn,
        early: Option<Vec<Position>>,
    ) -> Result<(), SessionEnd> {
        let positions = self.welcome_positions(site);
        match early {
            Some(sent) if !same_positions(&sent, &positions) => Err(SessionEnd::Internal(
                "the site's positions moved after its 0.5-RTT welcome; reconnect and resume".into(),
            )),
            Some(_) => Ok(()),
            None => {
                info!(positions = positions.len(), "welcoming site");
                proto
                    .welcome(positions, self.heartbeat_target(&site.alias))
                    .map_err(|e| SessionEnd::Protocol(e.to_string()))?;
                writers.flush(proto).await
            }
        }
    }
}

/// How long a refused connection may take to finish its handshake before it is closed.
const REFUSAL_HANDSHAKE_WAIT: Duration = Duration::from_secs(5);

/// Closes a refused connection with its code and reason once its handshake is over: a close
/// sent while a resumed connection is still in its handshake travels as a bare transport
/// error, and the agent would not learn why.
async fn refuse(
    conn: &quinn::Connection,
    handshake: &mut Option<quinn::ZeroRttAccepted>,
    refusal: crate::admission::Refusal,
) {
    let _ = tokio::time::timeout(REFUSAL_HANDSHAKE_WAIT, finish_handshake(conn, handshake)).await;
    conn.close(refusal.code.into(), refusal.reason.as_bytes());
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
