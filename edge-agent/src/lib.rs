//! The edge agent: reads local Kafka topics and ships them to the hub over QUIC, keeping no state
//! of its own (the hub tells it where to resume on every connect).

pub mod config;
pub mod downlink;
pub mod events;
pub mod groups;
pub mod health;
pub mod heartbeat;
pub mod hub_plugins;
pub mod hubs;
pub mod kafka;
pub mod metrics;
pub mod pacing;
pub mod pipeline;
pub mod routes;
pub mod session;
pub mod source;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Settings;
use crate::session::SessionOutcome;

/// Counters of one agent process (read by the quickstart; the Prometheus metrics in
/// [`metrics`] count the same events).
#[derive(Debug, Default)]
pub struct Stats {
    /// Records put into batches sent to the hub.
    pub records_sent: AtomicU64,
    /// Compressed batch bytes sent to the hub.
    pub bytes_sent: AtomicU64,
    /// Batches the hub acknowledged as committed.
    pub batches_acked: AtomicU64,
    /// Connections established.
    pub connects: AtomicU64,
    /// Redirects received from hubs that do not serve this site.
    pub redirects: AtomicU64,
    /// Records read from the edge cluster (a record read again after a reconnect counts again).
    pub records_read: AtomicU64,
    /// Source records a plugin chain turned into no output.
    pub records_dropped_by_plugins: AtomicU64,
    /// Records a plugin failed, skipped or dead-lettered by the route's policy.
    pub plugin_record_failures: AtomicU64,
    /// Times a route stopped on a plugin failure (policy `stop`).
    pub route_stops: AtomicU64,
    /// Heartbeat records written to the edge cluster.
    pub heartbeats_sent: AtomicU64,
    /// Consumer-group offset reports sent to the hub.
    pub group_reports_sent: AtomicU64,
    /// What the link to the hub is doing (for `/readyz` and `/status`).
    pub link: health::LinkHealth,
    /// The plugin counters of every route as last published (for `/status`).
    pub plugins: std::sync::Mutex<Vec<(String, Vec<er_plugin_host::PluginStats>)>>,
}

/// Capped exponential backoff with full jitter.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff between `min` and `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            attempt: 0,
        }
    }

    /// The next delay: uniformly random in [min, min * 2^attempt], capped at max.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let lo = self.min.as_millis() as u64;
        let hi = (ceiling.as_millis() as u64).max(lo);
        Duration::from_millis(rand::rng().random_range(lo..=hi))
    }

    /// Back to the first delay (after a connection that worked).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Whether the hub answers. Logs one warning when it goes quiet, then a summary a minute, and
/// one line when it answers again (not one line per probe). While it is quiet the session
/// tickets are kept: a probe into a silent link would waste one.
#[derive(Debug)]
struct Unreachable {
    since: Option<Instant>,
    probes: u64,
    last_log: Option<Instant>,
    tickets: er_net::TicketGate,
}

impl Unreachable {
    const SUMMARY_EVERY: Duration = Duration::from_secs(60);

    fn new(tickets: er_net::TicketGate) -> Self {
        Self {
            since: None,
            probes: 0,
            last_log: None,
            tickets,
        }
    }

    fn no_answer(&mut self, waited: Duration) {
        self.tickets.set_open(false);
        let now = Instant::now();
        self.probes += 1;
        events::ProbeUnanswered.emit();
        let since = *self.since.get_or_insert(now);
        if self.last_log.is_none_or(|t| now - t >= Self::SUMMARY_EVERY) {
            self.last_log = Some(now);
            warn!(
                unreachable_for_s = (now - since).as_secs(),
                probes = self.probes,
                probe_wait_ms = waited.as_millis() as u64,
                "hub does not answer; probing until it does"
            );
        }
    }

    fn answered(&mut self) {
        self.tickets.set_open(true);
        if let Some(since) = self.since.take() {
            info!(
                unreachable_for_ms = since.elapsed().as_millis() as u64,
                probes = self.probes,
                "hub answers again"
            );
        }
        self.probes = 0;
        self.last_log = None;
    }
}

/// Runs the agent until `shutdown` turns true, reading its configuration again from `path` on
/// every message of `reload` (SIGHUP in the binary). A new configuration is validated in full
/// first, its plugins compiled included; an invalid one is refused (logged at error naming the
/// file and the field) and the running agent goes on untouched. A valid one ends the running
/// session (its unacknowledged batches are simply sent again: the hub resumes the agent from the
/// committed positions, in 0-RTT when it can) and starts the agent anew with it, so topics,
/// routes, plugins, batching, groups, heartbeats and the hub's address all change without a
/// restart of the process. `metrics.listen` is the one setting that needs a restart.
pub async fn run_reloading(
    path: std::path::PathBuf,
    mut cfg: Settings,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
    mut reload: tokio::sync::mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    loop {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut running = tokio::spawn(run(cfg.clone(), stats.clone(), stop_rx));
        let next = loop {
            tokio::select! {
                ended = &mut running => return ended.context("the agent task failed")?,
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        let _ = stop_tx.send(true);
                        return running.await.context("the agent task failed")?;
                    }
                }
                Some(()) = reload.recv() => {
                    if let Some(new) = validated_reload(&path, &cfg).await {
                        break new;
                    }
                }
            }
        };
        let _ = stop_tx.send(true);
        running.await.context("the agent task failed")??;
        info!(config = %path.display(), "configuration reloaded; the agent resumes with it");
        metrics::config_reloaded(true);
        cfg = next;
    }
}

/// The configuration at `path` if it is valid (plugins compiled), else `None` with the reason
/// logged; `running` is the configuration in force.
async fn validated_reload(path: &std::path::Path, running: &Settings) -> Option<Settings> {
    info!(config = %path.display(), "reloading the configuration");
    let loaded = {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Settings> {
            let cfg = config::load(&path)?;
            pipeline::Pipeline::load(&cfg)?;
            Ok(cfg)
        })
        .await
    };
    match loaded {
        Ok(Ok(new)) => {
            if new.metrics_listen != running.metrics_listen {
                warn!(
                    running = ?running.metrics_listen,
                    configured = ?new.metrics_listen,
                    "metrics.listen changes only with a restart; the endpoint stays where it is"
                );
            }
            Some(new)
        }
        Ok(Err(e)) => {
            tracing::error!(config = %path.display(), error = format!("{e:#}"), "configuration reload refused; the running configuration stays in force");
            metrics::config_reloaded(false);
            None
        }
        Err(e) => {
            tracing::error!(config = %path.display(), error = %e, "configuration reload failed; the running configuration stays in force");
            metrics::config_reloaded(false);
            None
        }
    }
}

/// Runs the agent until `shutdown` turns true: connect, replicate, reconnect with backoff.
///
/// Each pass over the hub candidates ([`hubs::HubList`]) dials them in turn until one welcomes
/// the agent or redirects it; the reconnect backoff applies once a whole pass failed (or after a
/// welcomed session ended), and a pass in which no hub answered at all is followed by the next
/// probe instead.
pub async fn run(
    cfg: Settings,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let tls = &cfg.hub.tls;
    let (endpoint, client_cfg, tickets, ipv6) = client_endpoint(&cfg, tls)?;
    metrics::set_certificate_expiry(&tls.cert);
    let pipeline = pipeline::Pipeline::load(&cfg)?.shared();
    let groups = match cfg.groups.interval {
        Some(_) => Some(Arc::new(std::sync::Mutex::new(groups::GroupReader::new(
            &cfg,
        )?))),
        None => None,
    };
    let discovery =
        Arc::new(source::Discovery::new(&cfg).context("creating the edge metadata client")?);
    let lag = cfg
        .metrics_listen
        .is_some()
        .then(|| Arc::new(metrics::LagTracker::default()));
    if let Some(endpoints) = metrics::endpoints() {
        health::register(
            endpoints,
            &cfg,
            stats.clone(),
            discovery.clone(),
            lag.clone(),
        );
    }
    let (aliases, aliases_rx) = watch::channel(None);
    let shared = session::Shared {
        discovery,
        pipeline,
        groups,
        aliases,
        lag,
        hub_plugins: cfg
            .plugins
            .hub
            .clone()
            .map(|h| Arc::new(hub_plugins::HubPlugins::new(h))),
    };
    let side_tasks = spawn_side_tasks(&cfg, &shared, aliases_rx, &stats, &shutdown);
    let mut link = Link {
        cfg: &cfg,
        endpoint: endpoint.clone(),
        client_cfg,
        ipv6,
        shared,
        stats: stats.clone(),
        unreachable: Unreachable::new(tickets),
        last_rtt: None,
    };
    link.dial_until_shutdown(&mut shutdown).await;
    endpoint.close(0u32.into(), b"agent shutting down");
    endpoint.wait_idle().await;
    for task in side_tasks {
        let _ = task.await;
    }
    info!("agent stopped");
    Ok(())
}

/// Starts what runs beside the link until shutdown: heartbeats (once the hub told the aliases),
/// and with a metrics listener the plugin statistics and the replication lag publishers.
fn spawn_side_tasks(
    cfg: &Settings,
    shared: &session::Shared,
    aliases: watch::Receiver<Option<heartbeat::Aliases>>,
    stats: &Arc<Stats>,
    shutdown: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(interval) = cfg.heartbeats {
        tasks.push(tokio::spawn(heartbeat::run(
            cfg.clone(),
            interval,
            aliases,
            stats.clone(),
            shutdown.clone(),
        )));
    }
    let has_plugins = !shared.pipeline.lock().expect("pipeline lock").is_empty();
    if cfg.metrics_listen.is_some() && has_plugins {
        tasks.push(tokio::spawn(publish_plugin_stats(
            shared.pipeline.clone(),
            stats.clone(),
            shutdown.clone(),
        )));
    }
    if let Some(lag) = &shared.lag {
        tasks.push(tokio::spawn(publish_replication_lag(
            shared.discovery.clone(),
            lag.clone(),
            shutdown.clone(),
        )));
    }
    tasks
}

/// The QUIC client endpoint, and whether it can dial IPv6 addresses. An agent whose hub
/// addresses are all IPv4 literals uses an IPv4 socket; any other gets a dual-stack socket
/// (IPv4 too, as IPv4-mapped addresses), or an IPv4 one where the host has no IPv6.
fn client_endpoint(
    cfg: &Settings,
    tls: &er_net::TlsFiles,
) -> anyhow::Result<(
    quinn::Endpoint,
    quinn::ClientConfig,
    er_net::TicketGate,
    bool,
)> {
    // The hub opens one stream down for downlink data and one per plugin offer: a few at once
    // bound what it can make the agent buffer (each stream at most one frame of 16 MiB ahead).
    let tuning = er_net::TransportTuning {
        max_concurrent_uni_streams: 4,
        ..er_net::TransportTuning::default()
    };
    let v4: SocketAddr = (std::net::Ipv4Addr::UNSPECIFIED, 0).into();
    let v6: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, 0).into();
    if !cfg
        .hub
        .addresses
        .iter()
        .all(hubs::HubAddress::is_ipv4_literal)
    {
        match er_net::client_endpoint_gated(v6, tls, &tuning) {
            Ok((endpoint, config, tickets)) => return Ok((endpoint, config, tickets, true)),
            Err(e) => warn!(error = %e, "no IPv6 socket; dialling IPv4 hub addresses only"),
        }
    }
    let (endpoint, config, tickets) =
        er_net::client_endpoint_gated(v4, tls, &tuning).context("setting up the QUIC client")?;
    Ok((endpoint, config, tickets, false))
}

/// Counts and logs a redirect and parses its addresses; `None` when none is usable.
fn redirect_targets(
    link: &Link<'_>,
    from: &hubs::Candidate,
    addresses: &[String],
    reason: &str,
) -> Option<Vec<hubs::HubAddress>> {
    events::Redirected {
        hub: &from.entry.to_string(),
        addr: from.addr,
        to: addresses,
        reason,
    }
    .emit(&link.stats);
    let targets: Vec<hubs::HubAddress> = addresses
        .iter()
        .filter_map(|a| {
            hubs::HubAddress::parse(a)
                .inspect_err(|e| {
                    warn!(hub = %from.entry, address = %a, error = %e,
                        "ignoring an address the hub redirected us to");
                })
                .ok()
        })
        .collect();
    (!targets.is_empty()).then_some(targets)
}

/// Waits `delay`; true if shutdown was requested meanwhile.
async fn pause(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = shutdown.changed() => true,
    }
}

/// The dialling loop's state: the hub candidates, the reconnect backoff and the current pass.
struct Dialing {
    hubs: hubs::HubList,
    backoff: Backoff,
    pass: Pass,
}

/// What one pass over the hub candidates saw so far.
#[derive(Default)]
struct Pass {
    /// While every attempt of the pass went unanswered: the longest wait.
    silent: Option<Duration>,
    /// The latest failure that was not silence (the hub answered, or resolution failed).
    failure: Option<anyhow::Error>,
}

/// What the dialling loop does next.
enum Step {
    /// Dial the pass's next candidate.
    NextCandidate,
    /// Start a new pass.
    NextPass,
    /// Shutdown was requested.
    Stop,
}

impl Step {
    /// A new pass after a pause, unless shutdown came during it.
    fn after_pause(shutdown_requested: bool) -> Step {
        if shutdown_requested {
            Step::Stop
        } else {
            Step::NextPass
        }
    }
}

/// What every connection attempt of the agent uses.
struct Link<'a> {
    cfg: &'a Settings,
    endpoint: quinn::Endpoint,
    client_cfg: quinn::ClientConfig,
    /// Whether the endpoint can dial IPv6 addresses.
    ipv6: bool,
    shared: session::Shared,
    stats: Arc<Stats>,
    unreachable: Unreachable,
    /// Round-trip time of the last connection, for [`answer_wait`].
    last_rtt: Option<Duration>,
}

impl Link<'_> {
    /// Passes over the hub candidates until shutdown: each dials the candidates in turn until
    /// one welcomes the agent or redirects it.
    async fn dial_until_shutdown(&mut self, shutdown: &mut watch::Receiver<bool>) {
        let mut d = Dialing {
            hubs: hubs::HubList::new(self.cfg.hub.addresses.clone()),
            backoff: Backoff::new(
                self.cfg.hub.reconnect_backoff_min,
                self.cfg.hub.reconnect_backoff_max,
            ),
            pass: Pass::default(),
        };
        while !*shutdown.borrow() {
            d.pass = Pass::default();
            let mut entries = d.hubs.pass();
            let next = 'entries: loop {
                let Some(entry) = entries.next_entry() else {
                    break self.after_pass(&mut d, shutdown).await;
                };
                let candidates = match self.resolve(&entry).await {
                    Ok(addrs) => entries.dial_order(&entry, addrs),
                    Err(e) => {
                        info!(hub = %entry, error = format!("{e:#}"), "hub address not dialled");
                        d.pass.failure = Some(e);
                        continue;
                    }
                };
                for c in candidates {
                    if *shutdown.borrow() {
                        break 'entries Step::Stop;
                    }
                    let started = Instant::now();
                    let outcome = self.attempt(&c, shutdown).await;
                    let step = self
                        .after_attempt(outcome, &c, started, &mut d, shutdown)
                        .await;
                    if !matches!(step, Step::NextCandidate) {
                        break 'entries step;
                    }
                }
            };
            if matches!(next, Step::Stop) {
                return;
            }
        }
    }

    /// What an attempt's outcome means for the pass: go on with the next candidate, start a
    /// new pass (after a welcome, or to follow a redirect), or stop.
    async fn after_attempt(
        &mut self,
        outcome: SessionOutcome,
        c: &hubs::Candidate,
        started: Instant,
        d: &mut Dialing,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Step {
        let Dialing {
            hubs,
            backoff,
            pass,
        } = d;
        match outcome {
            SessionOutcome::Shutdown => Step::Stop,
            SessionOutcome::NoAnswer(waited) => {
                pass.silent = Some(pass.silent.map_or(waited, |s| s.max(waited)));
                Step::NextCandidate
            }
            SessionOutcome::Failed(error) => {
                info!(hub = %c.entry, addr = %c.addr, error = format!("{error:#}"),
                    "connection attempt failed");
                pass.failure = Some(error);
                Step::NextCandidate
            }
            SessionOutcome::Redirected { addresses, reason } => {
                let Some(targets) = redirect_targets(self, c, &addresses, &reason) else {
                    pass.failure = Some(anyhow::anyhow!(
                        "hub {} redirected us to no usable address: {addresses:?}",
                        c.entry
                    ));
                    return Step::NextCandidate;
                };
                match hubs.redirected(targets) {
                    hubs::AfterRedirect::Follow => Step::NextPass,
                    hubs::AfterRedirect::BackOff { in_a_row } => {
                        let delay = backoff.next_delay();
                        warn!(
                            redirects_in_a_row = in_a_row,
                            retry_in_ms = delay.as_millis() as u64,
                            "redirected again and again without a welcome; following after a pause"
                        );
                        Step::after_pause(pause(delay, shutdown).await)
                    }
                }
            }
            SessionOutcome::Ended(error) => {
                hubs.welcomed(c);
                self.stats.link.failing(format!("{error:#}"));
                if started.elapsed() > Duration::from_secs(5) {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                warn!(
                    hub = %c.entry,
                    error = format!("{error:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "link to hub down; will reconnect and resume"
                );
                Step::after_pause(pause(delay, shutdown).await)
            }
        }
    }

    /// After a pass in which no candidate got a welcome or a redirect: probe again soon when
    /// no hub answered at all, else back off.
    async fn after_pass(&self, d: &mut Dialing, shutdown: &mut watch::Receiver<bool>) -> Step {
        let pass = std::mem::take(&mut d.pass);
        if let (None, Some(waited)) = (&pass.failure, pass.silent) {
            self.stats.link.probing();
            return Step::after_pause(probe_pause(waited, shutdown).await);
        }
        let error = pass
            .failure
            .unwrap_or_else(|| anyhow::anyhow!("no hub address to dial"));
        self.stats.link.failing(format!("{error:#}"));
        let delay = d.backoff.next_delay();
        warn!(
            error = format!("{error:#}"),
            retry_in_ms = delay.as_millis() as u64,
            "link to hub down: no hub address worked; will reconnect and resume"
        );
        Step::after_pause(pause(delay, shutdown).await)
    }

    /// Every address `entry` resolves to that the endpoint can dial, in the resolver's order.
    async fn resolve(&self, entry: &hubs::HubAddress) -> anyhow::Result<Vec<SocketAddr>> {
        let timeout = self.cfg.hub.connect_timeout;
        let all: Vec<SocketAddr> = tokio::time::timeout(
            timeout,
            tokio::net::lookup_host((entry.host.as_str(), entry.port)),
        )
        .await
        .with_context(|| format!("resolving hub address {entry}: no answer within {timeout:?}"))?
        .with_context(|| format!("resolving hub address {entry}"))?
        .collect();
        let usable: Vec<SocketAddr> = all
            .iter()
            .copied()
            .filter(|a| self.ipv6 || a.is_ipv4())
            .collect();
        if usable.is_empty() {
            if all.is_empty() {
                anyhow::bail!("hub address {entry} resolved to nothing");
            }
            anyhow::bail!(
                "hub address {entry} resolved to IPv6 addresses only ({all:?}), and the agent has \
                 an IPv4 socket (all configured hub addresses are IPv4 literals)"
            );
        }
        Ok(usable)
    }

    /// Connects to `c` and runs a session over the connection until it ends.
    async fn attempt(
        &mut self,
        c: &hubs::Candidate,
        shutdown: &mut watch::Receiver<bool>,
    ) -> SessionOutcome {
        let cfg = self.cfg;
        let wait = answer_wait(
            cfg.hub.probe_interval,
            cfg.hub.connect_timeout,
            self.last_rtt,
            self.unreachable.probes,
        );
        let server_name = cfg.hub.server_name_for(&c.entry);
        let attempt = match connect(
            &self.endpoint,
            &self.client_cfg,
            cfg,
            c.addr,
            server_name,
            wait,
        )
        .await
        {
            Ok(Ok(attempt)) => attempt,
            Err(Unanswered(waited)) => {
                self.unreachable.no_answer(waited);
                return SessionOutcome::NoAnswer(waited);
            }
            Ok(Err(error)) => {
                self.unreachable.answered();
                return SessionOutcome::Failed(error);
            }
        };
        let (conn, early) = match attempt {
            Attempt::Ready(conn) => (conn, None),
            Attempt::Early(conn, accepted) => (
                conn,
                Some(session::Early {
                    accepted,
                    answer_wait: wait,
                    connect_timeout: cfg.hub.connect_timeout,
                }),
            ),
        };
        let (unreachable, stats) = (&mut self.unreachable, &self.stats);
        let mut answered = |zero_rtt: bool| {
            unreachable.answered();
            events::Connected {
                hub: &c.entry.to_string(),
                addr: conn.remote_address(),
                zero_rtt,
            }
            .emit(stats);
        };
        if early.is_none() {
            answered(false);
        }
        let r = session::run(
            cfg,
            self.shared.clone(),
            conn.clone(),
            early,
            &mut answered,
            self.stats.clone(),
            shutdown,
        )
        .await;
        events::SessionEnded.emit();
        conn.close(0u32.into(), b"session over");
        if let SessionOutcome::NoAnswer(waited) = r {
            self.unreachable.no_answer(waited);
        } else {
            self.last_rtt = Some(conn.rtt());
        }
        r
    }
}

/// Publishes the plugin counters every [`metrics::PLUGIN_PUBLISH_INTERVAL`] until shutdown. The
/// pipeline lock is taken off the executor: the reader thread holds it while a chain runs.
async fn publish_plugin_stats(
    pipeline: pipeline::SharedPipeline,
    agent_stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(metrics::PLUGIN_PUBLISH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let p = pipeline.clone();
        let stats =
            tokio::task::spawn_blocking(move || p.lock().expect("pipeline lock").stats()).await;
        if let Ok(stats) = stats {
            metrics::publish_plugin_stats(&stats);
            *agent_stats
                .plugins
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = stats;
        }
    }
}

/// Publishes the replication lag of every tracked partition every [`metrics::LAG_INTERVAL`]
/// until shutdown, also while the link is down (the lag then grows, which is the point). The
/// watermark requests block, so they run off the executor.
async fn publish_replication_lag(
    discovery: Arc<source::Discovery>,
    lag: Arc<metrics::LagTracker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(metrics::LAG_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let parts = lag.snapshot();
        if parts.is_empty() {
            continue;
        }
        let d = discovery.clone();
        let l = lag.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for (tp, acked) in parts {
                match d.watermarks(&tp, Duration::from_secs(5)) {
                    Ok((low, high)) => l.publish_lag(&tp, metrics::lag_records(low, high, acked)),
                    Err(e) => {
                        tracing::debug!(%tp, error = %e, "edge watermarks unknown; lag not updated")
                    }
                }
            }
        })
        .await;
    }
}

/// Before the next probe of a hub that did not answer: a little jitter, so a fleet does not
/// synchronise. True if shutdown was requested meanwhile.
async fn probe_pause(waited: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    let jitter = waited / 5;
    let delay = Duration::from_millis(rand::rng().random_range(0..=jitter.as_millis() as u64));
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = shutdown.changed() => true,
    }
}

/// A connection attempt the hub answered, or one that resumed a TLS session and sends its
/// hello as 0-RTT data before any answer (the session then waits for the handshake).
enum Attempt {
    Ready(quinn::Connection),
    Early(quinn::Connection, quinn::ZeroRttAccepted),
}

/// Not a single packet came back within this wait: the link or the hub host is down.
#[derive(Debug)]
struct Unanswered(Duration);

/// How long an attempt waits for the hub's first answer before a fresh attempt replaces it:
/// the probe interval, but never less than three round trips of the last connection (a long
/// link must be able to answer), and the full connect timeout before any connection worked.
///
/// After `silent` attempts in a row got no answer the wait grows, up to
/// [`er_net::MAX_ANSWER_WAIT_FACTOR`] times: a hub that restarts under a whole fleet answers its
/// handshakes late, and a wait that never grew had every site abandon its handshake and start
/// another, so the hub spent its time on handshakes nobody waited for (1,000 simulated sites
/// never all got back in). A returning link is still found within that longer wait.
fn answer_wait(
    probe_interval: Duration,
    connect_timeout: Duration,
    last_rtt: Option<Duration>,
    silent: u64,
) -> Duration {
    let Some(rtt) = last_rtt else {
        return connect_timeout;
    };
    let factor = (silent + 1).min(er_net::MAX_ANSWER_WAIT_FACTOR) as u32;
    probe_interval
        .max(rtt.saturating_mul(3))
        .saturating_mul(factor)
        .min(connect_timeout)
}

/// Dials `addr`: a resumed TLS session comes back at once as [`Attempt::Early`] (its
/// handshake finishes while the hello goes out as 0-RTT data), a full handshake once done.
/// `Err` when not a single packet came back within `wait_for_answer`; `Ok(Err)` when the hub
/// answered but the handshake failed or stalled.
async fn connect(
    endpoint: &quinn::Endpoint,
    client_cfg: &quinn::ClientConfig,
    cfg: &Settings,
    addr: SocketAddr,
    server_name: &str,
    wait_for_answer: Duration,
) -> Result<anyhow::Result<Attempt>, Unanswered> {
    let connecting = match endpoint
        .connect_with(client_cfg.clone(), addr, server_name)
        .with_context(|| format!("connecting to {addr} as {server_name:?}"))
    {
        Ok(connecting) => connecting,
        Err(e) => return Ok(Err(e)),
    };
    let mut connecting = match connecting.into_0rtt() {
        Ok((conn, accepted)) => return Ok(Ok(Attempt::Early(conn, accepted))),
        Err(connecting) => connecting,
    };
    let started = Instant::now();
    // QUIC retransmits an unanswered Initial with exponential backoff (1 s, 2 s, 4 s ...), so a
    // link that returns in the middle of a long attempt would wait for the next retransmit.
    // Giving up early and starting afresh keeps the probe cadence flat instead.
    match tokio::time::timeout(wait_for_answer, connecting.handshake_data()).await {
        Err(_) => return Err(Unanswered(wait_for_answer)),
        Ok(Err(e)) => {
            return Ok(Err(
                anyhow::Error::new(e).context(format!("connecting to hub {addr}"))
            ));
        }
        Ok(Ok(_)) => {}
    }
    let timeout = cfg.hub.connect_timeout;
    Ok(
        tokio::time::timeout(timeout.saturating_sub(started.elapsed()), connecting)
            .await
            .with_context(|| {
                format!("connecting to hub {addr}: handshake not done within {timeout:?}")
            })
            .and_then(|connected| connected.with_context(|| format!("connecting to hub {addr}")))
            .map(Attempt::Ready),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_wait_grows_with_unanswered_attempts_up_to_three_probe_intervals() {
        let (probe, full) = (Duration::from_millis(500), Duration::from_secs(10));
        let rtt = Some(Duration::from_millis(1));
        let waits: Vec<Duration> = (0..5).map(|k| answer_wait(probe, full, rtt, k)).collect();
        assert_eq!(
            waits,
            vec![probe, probe * 2, probe * 3, probe * 3, probe * 3],
            "a slow hub gets longer to answer, a silent one is still probed often"
        );
        // Three round trips of a long link, never beyond the connect timeout, and the full
        // timeout before any connection worked.
        assert_eq!(
            answer_wait(probe, full, Some(Duration::from_secs(1)), 0),
            Duration::from_secs(3)
        );
        assert_eq!(
            answer_wait(probe, full, Some(Duration::from_secs(1)), 4),
            Duration::from_secs(9)
        );
        assert_eq!(
            answer_wait(probe, full, Some(Duration::from_secs(2)), 4),
            full
        );
        assert_eq!(answer_wait(probe, full, None, 0), full);
    }

    #[test]
    fn backoff_grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(100) && d <= Duration::from_millis(1000),
                "{d:?}"
            );
        }
        // After many failures the ceiling is the cap: some delay above 500 ms must show up.
        assert!((0..50).any(|_| b.next_delay() > Duration::from_millis(500)));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
