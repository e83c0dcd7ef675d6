//! A fleet of simulated edge sites in one process, and the check that all they sent reached the
//! central cluster exactly once, in order per partition.
//!
//! Each site has its own client certificate and QUIC connection to the hub and speaks the real
//! protocol through er-protocol's sans-IO [`AgentConn`], driven like edge-agent's session does
//! it, but with no Kafka at the edge: its records are synthetic. A site keeps a simulated edge
//! log per source partition (offsets `0..end`, growing with a trickle of records, also while its
//! link is down) and sends from the position the hub's Welcome gives, so after a reconnect it
//! resends exactly what the hub did not commit. Each record's value names its site, partition
//! and offset ([`encode_value`]); [`check_exactly_once`] reads every `<site>.<topic>` back at
//! read_committed and counts what is missing, doubled or out of order, per site.
//!
//! A site costs one tokio task (its streams are read inside it, writes are inline) and a few
//! KiB; sites share a few quinn endpoints (one UDP socket each) and the caller's runtime.
//!
//! ```no_run
//! # async fn f(hub: std::net::SocketAddr, central: &str) -> anyhow::Result<()> {
//! use er_tests::fleet::{self, Fleet, FleetConfig};
//! let dir = tempfile::tempdir()?;
//! let sites = fleet::site_names("shop", 200);
//! fleet::issue_certs(dir.path(), &sites)?; // ca.pem, hub.pem/.key, <site>.pem/.key
//! let fleet = Fleet::start(FleetConfig::new(hub, dir.path(), sites)).await?;
//! fleet.wait_until("every site welcomed", std::time::Duration::from_secs(60), |s| s.welcomed == s.sites).await?;
//! fleet.drain(std::time::Duration::from_secs(60)).await?;
//! let outcomes = fleet.stop().await;
//! let report = fleet::check_exactly_once(central, "events", &outcomes, std::time::Duration::from_secs(120)).await?;
//! assert!(report.is_exact(), "{}", report.summary());
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use er_net::TransportTuning;
use er_net::devcerts::DevPki;
use er_net::wire::{FrameReader, FrameWriter, StreamError};
use er_protocol::{
    AgentConn, AgentConnConfig, AgentEvent, Batch, BatchBuilder, Channel, Codec, Frame,
    GroupOffsets, HEARTBEATS_TOPIC, Heartbeat, Position, RecordRef, ReplicationPolicy,
    TimestampType, TopicPartition,
};
use futures::StreamExt as _;
use futures::stream::{BoxStream, SelectAll};
use rand::Rng as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::now_ms;

/// Room for a frame header around the largest batch (as the agent keeps).
const FRAME_OVERHEAD: usize = 64 * 1024;

/// Largest frame a simulated site reads (a Welcome listing many positions).
const MAX_READ_FRAME: u32 = er_protocol::DEFAULT_MAX_FRAME_BYTES;

/// Name of the edge consumer group each site reports.
pub const GROUP: &str = "fleet-app";

/// `count` site aliases `<prefix>-0000`, `<prefix>-0001`, ... (valid aliases when `prefix` is).
pub fn site_names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i:04}")).collect()
}

/// Marker listing the sites whose certificates a directory holds.
const SITES_FILE: &str = "fleet-sites.txt";

/// Makes `dir` hold a dev PKI (`ca.pem`, `hub.pem` + `hub.key` for localhost and 127.0.0.1,
/// `<site>.pem` + `<site>.key`) covering `sites`. A directory that already covers them (issued
/// by an earlier call) is kept as it is, so one run issues the certificates of its largest fleet
/// once; otherwise a new CA and all certificates are issued (about a millisecond per site) and
/// written without a sync per file.
pub fn issue_certs(dir: &Path, sites: &[String]) -> anyhow::Result<()> {
    let marker = dir.join(SITES_FILE);
    if let Ok(listed) = std::fs::read_to_string(&marker) {
        let have: std::collections::HashSet<&str> = listed.lines().collect();
        if sites.iter().all(|s| have.contains(s.as_str())) {
            return Ok(());
        }
    }
    let pem = er_net::devcerts::generate_in_memory(
        &["localhost".to_owned(), "127.0.0.1".to_owned()],
        sites,
    )
    .context("issuing the fleet's certificates")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pki = DevPki::new(dir);
    let hub = pki.hub_tls();
    let mut files = vec![
        (pki.ca_cert(), &pem.ca_cert_pem, false),
        (pki.ca_key(), &pem.ca_key_pem, true),
        (hub.cert, &pem.hub_cert_pem, false),
        (hub.key, &pem.hub_key_pem, true),
    ];
    for (alias, cert, key) in &pem.sites {
        let tls = pki.site_tls(alias);
        files.push((tls.cert, cert, false));
        files.push((tls.key, key, true));
    }
    for (path, text, private) in files {
        write_file(&path, text.as_bytes(), private)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    write_file(&marker, sites.join("\n").as_bytes(), false)
        .with_context(|| format!("writing {}", marker.display()))
}

fn write_file(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    options.open(path)?.write_all(bytes)
}

/// The value of the record at `offset` of `site`'s source partition `partition`:
/// `<site>/<partition>/<offset>`, then `|` and padding up to `min_len` bytes.
pub fn encode_value(site: &str, partition: i32, offset: i64, min_len: usize, out: &mut Vec<u8>) {
    out.clear();
    write!(out, "{site}/{partition}/{offset}").expect("writing to a Vec");
    if out.len() < min_len {
        out.push(b'|');
        out.resize(min_len, b'.');
    }
}

/// The site, partition and offset a value from [`encode_value`] names.
pub fn decode_value(value: &[u8]) -> Option<(&str, i32, i64)> {
    let end = value.iter().position(|&b| b == b'|').unwrap_or(value.len());
    let text = std::str::from_utf8(&value[..end]).ok()?;
    let mut parts = text.rsplitn(3, '/');
    let offset = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    let site = parts.next()?;
    Some((site, partition, offset))
}

/// What a simulated fleet does.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The hub's UDP address.
    pub hub: SocketAddr,
    /// A name the hub certificate carries.
    pub server_name: String,
    /// Directory of `ca.pem` and `<site>.pem` + `<site>.key` ([`issue_certs`]).
    pub pki_dir: PathBuf,
    /// The site aliases (each a certificate's CN).
    pub sites: Vec<String>,
    /// Source topic every site replicates (central: `<site>.<topic>`).
    pub topic: String,
    /// Partitions of the source topic.
    pub partitions: i32,
    /// Records per second per site, spread round robin over the partitions; 0 sends only
    /// heartbeats. Changed at run time with [`Fleet::set_rate`].
    pub rate_per_site: f64,
    /// Records a site produces at most (then it only sends heartbeats); `None`: no limit.
    pub max_records_per_site: Option<u64>,
    /// Bytes of each record value (at least its `<site>/<partition>/<offset>`).
    pub value_bytes: usize,
    /// Between two MM2 heartbeats of a site (source topic `heartbeats`); `None`: none.
    pub heartbeat_interval: Option<Duration>,
    /// Between two GroupOffsets reports of a site (group [`GROUP`] at the committed position of
    /// every partition); `None`: none.
    pub group_interval: Option<Duration>,
    /// Quinn endpoints (UDP sockets) the sites share, round robin.
    pub endpoints: usize,
    /// Most records in one batch.
    pub max_batch_records: usize,
    /// How long a connection attempt waits for any answer before a fresh one replaces it, once
    /// the site was welcomed before (until then: `connect_timeout`).
    pub probe_interval: Duration,
    /// How long a handshake may take once the hub answered.
    pub connect_timeout: Duration,
    /// First delay before reconnecting after a failure once the hub answered (doubles up to
    /// `backoff_max`, with full jitter; reset by a welcome).
    pub backoff_min: Duration,
    /// Longest such delay.
    pub backoff_max: Duration,
    /// How long a site waits for the Welcome after its hello.
    pub welcome_timeout: Duration,
    /// QUIC transport settings (as the agent's).
    pub tuning: TransportTuning,
    /// Hub-distributed plugins the sites run, simulated; `None`: none.
    pub plugins: Option<SimPlugins>,
}

/// One hub-distributed plugin every simulated site uses: offers are checked against `trusted`
/// as the agent checks them, and each site reports, every `interval` after its welcome,
/// `records_per_interval` more records through the version it runs, all of them failed for a
/// version in `failing`.
#[derive(Debug, Clone)]
pub struct SimPlugins {
    /// The plugin's name.
    pub name: String,
    /// Keys a signature must verify with.
    pub trusted: Vec<[u8; 32]>,
    /// Versions whose records fail.
    pub failing: std::collections::BTreeSet<u64>,
    /// Records run per interval.
    pub records_per_interval: u64,
    /// Between two reports.
    pub interval: Duration,
}

impl FleetConfig {
    /// `sites` connecting to `hub` with certificates from `pki_dir`: topic `events` with 2
    /// partitions, 1 record/s per site of 100 bytes, a heartbeat a second, a group report every
    /// 5 s, 4 endpoints, the agent's probe and backoff defaults (backoff capped at 5 s).
    pub fn new(hub: SocketAddr, pki_dir: &Path, sites: Vec<String>) -> Self {
        Self {
            hub,
            server_name: "localhost".into(),
            pki_dir: pki_dir.to_owned(),
            sites,
            topic: "events".into(),
            partitions: 2,
            rate_per_site: 1.0,
            max_records_per_site: None,
            value_bytes: 100,
            heartbeat_interval: Some(Duration::from_secs(1)),
            group_interval: Some(Duration::from_secs(5)),
            endpoints: 4,
            max_batch_records: 500,
            probe_interval: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            welcome_timeout: Duration::from_secs(90),
            tuning: TransportTuning::default(),
            plugins: None,
        }
    }
}

/// What the fleet is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Produce and send.
    Run,
    /// Produce nothing more (no records, no heartbeats), send what is left.
    Quiet,
    /// Close the connections and end.
    Stop,
}

/// Counters of one site, read by [`Fleet::status`].
#[derive(Debug, Default)]
struct SiteStats {
    connected: AtomicBool,
    welcomed: AtomicBool,
    welcomes: AtomicU64,
    /// Milliseconds since the fleet's start + 1, 0 for never.
    last_welcome: AtomicU64,
    last_ack: AtomicU64,
    link_losses: AtomicU64,
    generated: AtomicU64,
    acked: AtomicU64,
    unacked: AtomicU64,
    heartbeats: AtomicU64,
    group_reports: AtomicU64,
    /// Welcomes whose position was ahead of the simulated edge log (a hub bug).
    positions_ahead: AtomicU64,
    /// The simulated plugin's version the site runs (0: none).
    plugin_version: AtomicU64,
    /// Plugin offers refused (hash or signature).
    plugin_refusals: AtomicU64,
    /// Every version of the simulated plugin the site ran.
    plugin_history: Mutex<std::collections::BTreeSet<u64>>,
    last_error: Mutex<Option<String>>,
}

#[derive(Debug)]
struct Shared {
    cfg: FleetConfig,
    epoch: Instant,
    phase: watch::Sender<Phase>,
    rate: watch::Sender<f64>,
    stats: Vec<SiteStats>,
    /// Failures by kind, e.g. `hub refused: Overloaded`.
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }

    fn failed(&self, site: usize, kind: &str, detail: String) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind.to_owned())
            .or_default() += 1;
        *self.stats[site]
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(detail);
    }
}

/// The fleet at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetStatus {
    /// Sites simulated.
    pub sites: usize,
    /// Sites with an established QUIC connection.
    pub connected: usize,
    /// Sites welcomed on their current connection.
    pub welcomed: usize,
    /// Sites welcomed at least once.
    pub ever_welcomed: usize,
    /// Welcomes over all sites and connections.
    pub welcomes: u64,
    /// Connections lost after their handshake.
    pub link_losses: u64,
    /// Records produced into the simulated edge logs (not heartbeats).
    pub records_generated: u64,
    /// Of those, records the hub acked.
    pub records_acked: u64,
    /// Records and heartbeats produced and not acked yet.
    pub unacked: u64,
    /// Heartbeats produced.
    pub heartbeats: u64,
    /// GroupOffsets frames sent.
    pub group_reports: u64,
    /// Welcomes with a position ahead of what the site ever produced (should be 0).
    pub positions_ahead: u64,
    /// Per site (in configuration order), the simulated plugin's version it runs (0: none).
    pub plugin_versions: Vec<u64>,
    /// Plugin offers the sites refused (hash or signature).
    pub plugin_refusals: u64,
    /// Per site, every version of the simulated plugin it ran.
    pub plugin_history: Vec<std::collections::BTreeSet<u64>>,
}

/// What one site produced, for [`check_exactly_once`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteOutcome {
    /// Site alias.
    pub site: String,
    /// Per source partition: records produced (offsets `0..end`).
    pub ends: Vec<i64>,
    /// Per source partition: the position the hub acked last.
    pub acked: Vec<i64>,
    /// Heartbeats produced.
    pub heartbeats: i64,
}

/// A running fleet. Dropping it aborts the sites; [`stop`](Self::stop) ends them cleanly.
#[derive(Debug)]
pub struct Fleet {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<SiteOutcome>>,
    endpoints: Vec<quinn::Endpoint>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Fleet {
    /// Loads every site's certificate, binds the endpoints and starts every site (they all
    /// connect at once). Must be called inside a multi-threaded tokio runtime.
    pub async fn start(cfg: FleetConfig) -> anyhow::Result<Self> {
        if cfg.partitions < 1 {
            bail!("fleet: partitions = {}: at least 1", cfg.partitions);
        }
        let configs = {
            let (dir, sites, tuning) = (cfg.pki_dir.clone(), cfg.sites.clone(), cfg.tuning.clone());
            tokio::task::spawn_blocking(move || {
                let pki = DevPki::new(dir);
                sites
                    .iter()
                    .map(|s| {
                        er_net::client_config(&pki.site_tls(s), &tuning)
                            .map(|(config, _tickets)| config)
                            .with_context(|| format!("client config of site {s}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .await
            .context("loading the site certificates panicked")??
        };
        let bind: SocketAddr = if cfg.hub.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let endpoints = (0..cfg.endpoints.max(1))
            .map(|_| er_net::client_only_endpoint(bind))
            .collect::<Result<Vec<_>, _>>()
            .context("binding the fleet's endpoints")?;
        let shared = Arc::new(Shared {
            stats: cfg.sites.iter().map(|_| SiteStats::default()).collect(),
            phase: watch::channel(Phase::Run).0,
            rate: watch::channel(cfg.rate_per_site).0,
            epoch: Instant::now(),
            errors: Mutex::new(BTreeMap::new()),
            cfg,
        });
        let tasks = configs
            .into_iter()
            .enumerate()
            .map(|(i, config)| {
                let site = SimSite::new(shared.clone(), i);
                let endpoint = endpoints[i % endpoints.len()].clone();
                tokio::spawn(site.run(endpoint, config))
            })
            .collect();
        Ok(Self {
            shared,
            tasks,
            endpoints,
        })
    }

    /// Records per second per site from now on (0: heartbeats only).
    pub fn set_rate(&self, per_site: f64) {
        self.shared.rate.send_replace(per_site.max(0.0));
    }

    /// Counters summed over the sites.
    pub fn status(&self) -> FleetStatus {
        let mut s = FleetStatus {
            sites: self.shared.stats.len(),
            ..FleetStatus::default()
        };
        for st in &self.shared.stats {
            s.connected += usize::from(st.connected.load(Ordering::Relaxed));
            s.welcomed += usize::from(st.welcomed.load(Ordering::Relaxed));
            let welcomes = st.welcomes.load(Ordering::Relaxed);
            s.ever_welcomed += usize::from(welcomes > 0);
            s.welcomes += welcomes;
            s.link_losses += st.link_losses.load(Ordering::Relaxed);
            s.records_generated += st.generated.load(Ordering::Relaxed);
            s.records_acked += st.acked.load(Ordering::Relaxed);
            s.unacked += st.unacked.load(Ordering::Relaxed);
            s.heartbeats += st.heartbeats.load(Ordering::Relaxed);
            s.group_reports += st.group_reports.load(Ordering::Relaxed);
            s.positions_ahead += st.positions_ahead.load(Ordering::Relaxed);
            s.plugin_versions
                .push(st.plugin_version.load(Ordering::Relaxed));
            s.plugin_refusals += st.plugin_refusals.load(Ordering::Relaxed);
            s.plugin_history
                .push(st.plugin_history.lock().expect("history lock").clone());
        }
        s
    }

    /// Sites welcomed at or after `since`.
    pub fn welcomed_since(&self, since: Instant) -> usize {
        let since = self.shared.millis(since);
        self.shared
            .stats
            .iter()
            .filter(|st| st.last_welcome.load(Ordering::Relaxed) >= since)
            .count()
    }

    /// Sites welcomed at or after `since` that have had an ack since that welcome: flowing again.
    pub fn flowing_since(&self, since: Instant) -> usize {
        let since = self.shared.millis(since);
        self.shared
            .stats
            .iter()
            .filter(|st| {
                let w = st.last_welcome.load(Ordering::Relaxed);
                w >= since && st.last_ack.load(Ordering::Relaxed) >= w
            })
            .count()
    }

    /// Waits until every site is welcomed at or after `since` and acked since; returns how long
    /// after `since` the last one got there.
    pub async fn wait_flowing_since(
        &self,
        since: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let n = self.shared.stats.len();
        let deadline = Instant::now() + timeout;
        loop {
            if self.flowing_since(since) == n {
                return Ok(since.elapsed());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} of {n} sites flowing {timeout:?} after the start of the wait; {}",
                    self.flowing_since(since),
                    self.diagnosis()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `done(status)` holds (checked every 50 ms); the error names `what`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&FleetStatus) -> bool,
    ) -> anyhow::Result<FleetStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if done(&s) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!(
                    "fleet: not {what} within {timeout:?}: {s:?}; {}",
                    self.diagnosis()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Failures so far by kind, e.g. `link lost` or `hub refused: Overloaded`.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.shared
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Failure counts and the last error of a few sites that are not welcomed.
    pub fn diagnosis(&self) -> String {
        let mut out = format!("failures: {:?}", self.errors());
        let stuck: Vec<String> = self
            .shared
            .stats
            .iter()
            .enumerate()
            .filter(|(_, st)| {
                !st.welcomed.load(Ordering::Relaxed) || st.unacked.load(Ordering::Relaxed) > 0
            })
            .take(5)
            .map(|(i, st)| {
                format!(
                    "{} (welcomed {}, unacked {}, last error {:?})",
                    self.shared.cfg.sites[i],
                    st.welcomed.load(Ordering::Relaxed),
                    st.unacked.load(Ordering::Relaxed),
                    st.last_error.lock().unwrap_or_else(|e| e.into_inner())
                )
            })
            .collect();
        if !stuck.is_empty() {
            let _ = write!(out, "; e.g. {}", stuck.join(", "));
        }
        out
    }

    /// Stops producing (records and heartbeats) and waits until the hub acked everything.
    pub async fn drain(&self, timeout: Duration) -> anyhow::Result<()> {
        self.shared.phase.send_replace(Phase::Quiet);
        self.wait_until("drained (everything acked)", timeout, |s| s.unacked == 0)
            .await
            .map(|_| ())
    }

    /// Closes every connection and returns what each site produced.
    pub async fn stop(mut self) -> Vec<SiteOutcome> {
        self.shared.phase.send_replace(Phase::Stop);
        let mut out = Vec::with_capacity(self.tasks.len());
        for (i, t) in std::mem::take(&mut self.tasks).into_iter().enumerate() {
            match t.await {
                Ok(o) => out.push(o),
                Err(e) => panic!("site {} panicked: {e}", self.shared.cfg.sites[i]),
            }
        }
        for e in &self.endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(5), e.wait_idle()).await;
        }
        out
    }
}

/// One simulated edge partition: offsets `0..end` exist, `sent` is the next to send on the
/// current connection, `acked` the position the hub last confirmed.
#[derive(Debug)]
struct Log {
    tp: TopicPartition,
    partition_count: i32,
    end: i64,
    sent: i64,
    acked: i64,
}

/// Produces records at a rate, from the time elapsed (so a site produces while disconnected,
/// as an edge cluster keeps receiving records while its link is down).
#[derive(Debug)]
struct Trickle {
    rate: f64,
    credit: f64,
    at: Instant,
    produced: u64,
    max: Option<u64>,
}

impl Trickle {
    /// Records due between the last call and `now` (and switches to `rate` from now on).
    fn accrue(&mut self, now: Instant, rate: f64) -> u64 {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.credit += self.rate * dt;
        self.rate = rate;
        let mut n = self.credit.floor();
        self.credit -= n;
        if let Some(max) = self.max {
            n = n.min(max.saturating_sub(self.produced) as f64);
        }
        let n = n as u64;
        self.produced += n;
        n
    }

    /// When the next record is due, checked at most 50 times a second and at least once.
    fn period(&self) -> Duration {
        if self.rate <= 0.0 || self.max.is_some_and(|m| self.produced >= m) {
            return Duration::from_secs(3600);
        }
        Duration::from_secs_f64((1.0 / self.rate).clamp(0.02, 1.0))
    }
}

/// Why a session ended without error.
#[derive(Debug)]
enum End {
    Stop,
}

/// A session failure: its kind (for the counts) and details.
#[derive(Debug)]
struct Failure {
    kind: String,
    error: anyhow::Error,
    welcomed: bool,
}

fn failure(kind: impl Into<String>, error: anyhow::Error) -> Failure {
    Failure {
        kind: kind.into(),
        error,
        welcomed: false,
    }
}

type Inbound = (Channel, Result<Option<Frame>, StreamError>);

/// The frames of one stream, then `Ok(None)` when the peer finished it or an error.
fn frames(reader: FrameReader, channel: Channel) -> BoxStream<'static, Inbound> {
    futures::stream::unfold(Some(reader), move |state| {
        let channel = channel.clone();
        async move {
            let mut reader = state?;
            match reader.next().await {
                Ok(Some(f)) => Some(((channel, Ok(Some(f))), Some(reader))),
                Ok(None) => Some(((channel, Ok(None)), None)),
                Err(e) => Some(((channel, Err(e)), None)),
            }
        }
    })
    .boxed()
}

struct SimSite {
    shared: Arc<Shared>,
    idx: usize,
    alias: String,
    /// Data partitions, then the heartbeats partition when heartbeats are on.
    logs: Vec<Log>,
    trickle: Trickle,
    phase: watch::Receiver<Phase>,
    rate: watch::Receiver<f64>,
    quiet: bool,
    /// Target cluster alias of heartbeats, from the first Welcome.
    heartbeat_target: Option<String>,
    /// The group offsets this connection last reported: as the agent does, a report goes
    /// only when they moved.
    group_reported: Option<Vec<Position>>,
    next_heartbeat: Option<Instant>,
    /// The simulated plugin: version run and its (records, failures) since it started.
    plugin: (u64, u64, u64),
    next_plugin_report: Option<Instant>,
    next_record: Instant,
    value: Vec<u8>,
}

impl SimSite {
    fn new(shared: Arc<Shared>, idx: usize) -> Self {
        let cfg = &shared.cfg;
        let mut logs: Vec<Log> = (0..cfg.partitions)
            .map(|p| Log {
                tp: TopicPartition::new(cfg.topic.clone(), p),
                partition_count: cfg.partitions,
                end: 0,
                sent: 0,
                acked: 0,
            })
            .collect();
        if cfg.heartbeat_interval.is_some() {
            logs.push(Log {
                tp: TopicPartition::new(HEARTBEATS_TOPIC, 0),
                partition_count: 1,
                end: 0,
                sent: 0,
                acked: 0,
            });
        }
        let now = Instant::now();
        let rate = *shared.rate.borrow();
        let trickle = Trickle {
            rate,
            credit: rand::rng().random_range(0.0..1.0),
            at: now,
            produced: 0,
            max: cfg.max_records_per_site,
        };
        // Sites start their ticks at random phases, so a thousand of them do not wake together.
        let next_record = now + trickle.period().mul_f64(rand::rng().random_range(0.0..1.0));
        Self {
            alias: cfg.sites[idx].clone(),
            phase: shared.phase.subscribe(),
            rate: shared.rate.subscribe(),
            shared,
            idx,
            logs,
            trickle,
            quiet: false,
            heartbeat_target: None,
            group_reported: None,
            next_heartbeat: None,
            plugin: (0, 0, 0),
            next_plugin_report: None,
            next_record,
            value: Vec::new(),
        }
    }

    fn stats(&self) -> &SiteStats {
        &self.shared.stats[self.idx]
    }

    async fn run(mut self, endpoint: quinn::Endpoint, config: quinn::ClientConfig) -> SiteOutcome {
        let cfg = self.shared.cfg.clone();
        let mut attempt: u32 = 0;
        // Attempts in a row the hub did not answer (the agent's answer wait grows with them).
        let mut silent: u64 = 0;
        loop {
            if *self.phase.borrow() == Phase::Stop {
                break;
            }
            let connected = self.connect(&endpoint, &config, silent).await;
            silent = match &connected {
                Err(f) if f.kind == "no answer" => silent + 1,
                _ => 0,
            };
            let delay = match connected {
                Ok(conn) => {
                    self.stats().connected.store(true, Ordering::Relaxed);
                    let result = self.session(&conn).await;
                    self.stats().connected.store(false, Ordering::Relaxed);
                    self.stats().welcomed.store(false, Ordering::Relaxed);
                    match result {
                        Ok(End::Stop) => break,
                        Err(f) => {
                            if f.welcomed {
                                attempt = 0;
                                self.stats().link_losses.fetch_add(1, Ordering::Relaxed);
                            }
                            conn.close(0u32.into(), b"fleet site reconnects");
                            self.shared
                                .failed(self.idx, &f.kind, format!("{:#}", f.error));
                            Some(backoff(&cfg, &mut attempt))
                        }
                    }
                }
                // The probe wait already passed: try again at once.
                Err(f) if f.kind == "no answer" => {
                    self.shared
                        .failed(self.idx, &f.kind, format!("{:#}", f.error));
                    None
                }
                Err(f) => {
                    self.shared
                        .failed(self.idx, &f.kind, format!("{:#}", f.error));
                    Some(backoff(&cfg, &mut attempt))
                }
            };
            if let Some(delay) = delay {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = self.phase.wait_for(|p| *p == Phase::Stop) => break,
                }
            }
        }
        let data = self.shared.cfg.partitions as usize;
        SiteOutcome {
            site: self.alias.clone(),
            ends: self.logs[..data].iter().map(|l| l.end).collect(),
            acked: self.logs[..data].iter().map(|l| l.acked).collect(),
            heartbeats: self.logs.get(data).map_or(0, |l| l.end),
        }
    }

    /// A connection to the hub, as the agent makes one: a fresh attempt when the hub does not
    /// answer within the probe interval, then the handshake within the connect timeout.
    async fn connect(
        &self,
        endpoint: &quinn::Endpoint,
        config: &quinn::ClientConfig,
        silent: u64,
    ) -> Result<quinn::Connection, Failure> {
        let cfg = &self.shared.cfg;
        let mut connecting = endpoint
            .connect_with(config.clone(), cfg.hub, &cfg.server_name)
            .map_err(|e| failure("connect refused locally", anyhow!(e)))?;
        // As the agent: the whole connect timeout until a connection ever worked (a busy hub
        // may be slow to answer), then the probe interval, longer after unanswered attempts.
        let answer_wait = if self.stats().welcomes.load(Ordering::Relaxed) == 0 {
            cfg.connect_timeout
        } else {
            let factor = (silent + 1).min(er_net::MAX_ANSWER_WAIT_FACTOR) as u32;
            (cfg.probe_interval * factor).min(cfg.connect_timeout)
        };
        match tokio::time::timeout(answer_wait, connecting.handshake_data()).await {
            Err(_) => {
                return Err(failure(
                    "no answer",
                    anyhow!("no answer from the hub within {answer_wait:?}"),
                ));
            }
            Ok(Err(e)) => return Err(failure("handshake failed", anyhow!(e))),
            Ok(Ok(_)) => {}
        }
        match tokio::time::timeout(cfg.connect_timeout, connecting).await {
            Err(_) => Err(failure(
                "handshake failed",
                anyhow!("handshake not done within {:?}", cfg.connect_timeout),
            )),
            Ok(Err(e)) => Err(failure("handshake failed", anyhow!(e))),
            Ok(Ok(conn)) => Ok(conn),
        }
    }

    /// One connection's life: hello, welcome, then produce, send, ack until the link fails or
    /// the fleet stops.
    async fn session(&mut self, conn: &quinn::Connection) -> Result<End, Failure> {
        let cfg = self.shared.cfg.clone();
        let mut proto = AgentConn::new(
            AgentConnConfig {
                agent_version: "fleetsim".into(),
                site_claim: self.alias.clone(),
                ping_interval: Duration::from_secs(5),
                welcome_timeout: cfg.welcome_timeout,
                max_inflight_bytes_per_partition: 1 << 20,
                max_inflight_bytes_total: 4 << 20,
            },
            Instant::now(),
        );
        let (send, recv) = conn.open_bi().await.map_err(|e| {
            failure(
                "link lost",
                anyhow!(e).context("opening the control stream"),
            )
        })?;
        let mut io = SessionIo {
            conn,
            control: FrameWriter::new(send),
            streams: HashMap::new(),
            inbound: SelectAll::new(),
        };
        io.inbound.push(frames(
            FrameReader::new(recv, MAX_READ_FRAME),
            Channel::Control,
        ));
        if *self.phase.borrow() == Phase::Quiet && !self.quiet {
            // Quiet began while the link was down: what was due until now is in the edge log.
            self.produce(Instant::now());
            self.quiet = true;
        }
        let mut welcomed = false;
        let result = self.drive(&mut proto, &mut io, &mut welcomed).await;
        result.map_err(|mut f| {
            f.welcomed = welcomed;
            f
        })
    }

    async fn drive(
        &mut self,
        proto: &mut AgentConn,
        io: &mut SessionIo<'_>,
        welcomed: &mut bool,
    ) -> Result<End, Failure> {
        let cfg = self.shared.cfg.clone();
        let mut next_group = None;
        io.flush(proto).await?;
        loop {
            let deadline = [
                proto.poll_timeout(),
                (*welcomed && !self.quiet).then_some(self.next_record),
                self.next_heartbeat.filter(|_| *welcomed && !self.quiet),
                next_group.filter(|_| *welcomed),
                self.next_plugin_report.filter(|_| *welcomed),
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                item = io.inbound.next() => {
                    let (channel, frame) = item.ok_or_else(|| failure("link lost", anyhow!("every stream closed")))?;
                    match frame {
                        Ok(Some(f)) => proto
                            .handle_frame(Instant::now(), &channel, f)
                            .map_err(|e| failure("protocol", anyhow!(e).context("the hub broke the protocol")))?,
                        Ok(None) if channel == Channel::Control => {
                            return Err(failure("link lost", anyhow!("the hub closed the control stream")));
                        }
                        Ok(None) => {}
                        Err(e) => return Err(failure("link lost", anyhow!(e).context(format!("reading {channel:?}")))),
                    }
                }
                _ = sleep_until(deadline) => {
                    let now = Instant::now();
                    proto.handle_timeout(now);
                    if *welcomed && !self.quiet {
                        if now >= self.next_record {
                            self.produce(now);
                        }
                        self.heartbeats_due(now);
                    }
                    if *welcomed && self.next_plugin_report.is_some_and(|t| now >= t) {
                        self.report_plugin(proto, now)?;
                    }
                    if *welcomed && next_group.is_some_and(|t| now >= t) {
                        let interval = cfg.group_interval.expect("set only when reports are on");
                        next_group = Some(now + interval);
                        self.report_groups(proto)?;
                    }
                }
                _ = self.rate.changed() => {
                    let rate = *self.rate.borrow_and_update();
                    self.produce_at(Instant::now(), rate);
                }
                _ = self.phase.changed() => {
                    let phase = *self.phase.borrow_and_update();
                    match phase {
                        Phase::Stop => {
                            io.conn.close(0u32.into(), b"fleet stopping");
                            return Ok(End::Stop);
                        }
                        Phase::Quiet => {
                            // Records due until now still count: they are in the edge log.
                            self.produce(Instant::now());
                            self.quiet = true;
                        }
                        Phase::Run => {}
                    }
                }
                stream = io.conn.accept_uni() => {
                    let recv = stream.map_err(|e| failure("link lost", anyhow!(e)))?;
                    io.inbound.push(frames(
                        FrameReader::new(recv, er_protocol::DEFAULT_MAX_FRAME_BYTES),
                        Channel::Downlink,
                    ));
                }
                closed = io.conn.closed() => {
                    return Err(failure("link lost", anyhow!("connection lost: {closed}")));
                }
            }
            while let Some(ev) = proto.poll_event() {
                match ev {
                    AgentEvent::Welcomed {
                        positions,
                        heartbeat_target,
                        ..
                    } => {
                        self.welcome(positions, heartbeat_target);
                        *welcomed = true;
                        next_group = cfg.group_interval.map(|i| {
                            Instant::now() + i.mul_f64(rand::rng().random_range(0.1..1.0))
                        });
                        self.next_plugin_report = cfg.plugins.as_ref().map(|_| Instant::now());
                    }
                    AgentEvent::PluginOffer(offer) => self.take_plugin(&offer),
                    AgentEvent::Acked {
                        tp, next_offset, ..
                    } => {
                        if let Some(log) = self.logs.iter_mut().find(|l| l.tp == tp) {
                            log.acked = next_offset;
                        }
                        let now = self.shared.millis(Instant::now());
                        self.stats().last_ack.store(now, Ordering::Relaxed);
                    }
                    // Simulated sites take nothing down: they never answer an offer.
                    AgentEvent::RttSample(_)
                    | AgentEvent::DownlinkOffer(_)
                    | AgentEvent::DownlinkBatch(_) => {}
                    // Simulated records are small and hubs dead-letter by default: a stop is
                    // a failure of the run.
                    AgentEvent::Stopped {
                        tp, offset, reason, ..
                    } => {
                        return Err(failure(
                            "partition stopped",
                            anyhow!("the hub stopped {tp} at {offset}: {reason}"),
                        ));
                    }
                    AgentEvent::GoAway { reason } => {
                        return Err(failure(
                            "go away",
                            anyhow!("the hub is going away: {reason}"),
                        ));
                    }
                    AgentEvent::HubError { code, message } => {
                        return Err(failure(
                            format!("hub refused: {code:?}"),
                            anyhow!("the hub refused: {code:?}: {message}"),
                        ));
                    }
                    // The simulator talks to one hub; a redirect (several hubs) is counted as a
                    // failed attempt and the site tries again.
                    AgentEvent::Redirected { addresses, reason } => {
                        return Err(failure(
                            "redirected",
                            anyhow!("the hub sent us to {addresses:?}: {reason}"),
                        ));
                    }
                    AgentEvent::TimedOut { what } => {
                        return Err(failure(
                            format!("timed out waiting for {what}"),
                            anyhow!("timed out waiting for {what}"),
                        ));
                    }
                }
            }
            if *welcomed {
                self.pump(proto)?;
            }
            self.publish();
            io.flush(proto).await?;
        }
    }

    /// Resumes every partition where the hub says (from the start when it names none).
    fn welcome(&mut self, positions: Vec<Position>, heartbeat_target: String) {
        let now = Instant::now();
        let at: HashMap<TopicPartition, i64> = positions
            .into_iter()
            .map(|p| (p.tp, p.next_offset))
            .collect();
        for log in &mut self.logs {
            let pos = at.get(&log.tp).copied().unwrap_or(0);
            if pos > log.end {
                self.shared.stats[self.idx]
                    .positions_ahead
                    .fetch_add(1, Ordering::Relaxed);
                log.end = pos;
            }
            log.sent = pos;
            log.acked = pos;
        }
        if self.heartbeat_target.is_none() {
            self.next_heartbeat = self.shared.cfg.heartbeat_interval.map(|i| now + i);
        }
        self.heartbeat_target = Some(heartbeat_target);
        self.group_reported = None;
        let st = self.stats();
        st.welcomed.store(true, Ordering::Relaxed);
        st.welcomes.fetch_add(1, Ordering::Relaxed);
        st.last_welcome
            .store(self.shared.millis(now), Ordering::Relaxed);
        // Records produced while the link was down are in the edge log now.
        self.produce(now);
    }

    fn produce(&mut self, now: Instant) {
        let rate = self.trickle.rate;
        self.produce_at(now, rate);
    }

    /// Appends the records due by `now` round robin over the partitions, then uses `rate`.
    fn produce_at(&mut self, now: Instant, rate: f64) {
        let rate = if self.quiet { 0.0 } else { rate };
        let before = self.trickle.produced;
        let n = self.trickle.accrue(now, rate);
        let partitions = self.shared.cfg.partitions as u64;
        for k in before..before + n {
            self.logs[(k % partitions) as usize].end += 1;
        }
        self.next_record = now + self.trickle.period();
    }

    /// Appends the heartbeats due by `now` (one per interval since the last; a long outage
    /// yields at most 1,000 at once, as an edge box whose clock jumped would).
    fn heartbeats_due(&mut self, now: Instant) {
        let (Some(interval), Some(mut next)) =
            (self.shared.cfg.heartbeat_interval, self.next_heartbeat)
        else {
            return;
        };
        let mut n = 0;
        while next <= now && n < 1000 {
            n += 1;
            next += interval;
        }
        if next <= now {
            next = now + interval;
        }
        self.next_heartbeat = Some(next);
        if let Some(log) = self.logs.get_mut(self.shared.cfg.partitions as usize) {
            log.end += n;
        }
    }

    fn report_groups(&mut self, proto: &mut AgentConn) -> Result<(), Failure> {
        let data = self.shared.cfg.partitions as usize;
        let offsets: Vec<Position> = self.logs[..data]
            .iter()
            .map(|l| Position {
                tp: l.tp.clone(),
                next_offset: l.acked,
            })
            .collect();
        if self.group_reported.as_ref() == Some(&offsets) {
            return Ok(());
        }
        self.group_reported = Some(offsets.clone());
        proto
            .send_group_offsets(vec![GroupOffsets {
                group: GROUP.into(),
                offsets,
            }])
            .map_err(|e| failure("protocol", anyhow!(e).context("reporting group offsets")))?;
        self.stats().group_reports.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Takes a plugin offer the way the agent does: only for the simulated plugin's name, only
    /// when a trusted key signed it.
    fn take_plugin(&mut self, o: &er_protocol::PluginOffer) {
        let Some(p) = &self.shared.cfg.plugins else {
            return;
        };
        if o.name != p.name {
            return;
        }
        let version = o.version;
        let signed = er_net::signing::verify(
            &p.trusted,
            &o.name,
            version,
            &o.sha256,
            &o.signature,
            &o.wasm,
        );
        if signed.is_err() {
            self.stats().plugin_refusals.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.plugin.0 != version {
            self.plugin = (version, 0, 0);
            self.stats()
                .plugin_version
                .store(version, Ordering::Relaxed);
            self.stats()
                .plugin_history
                .lock()
                .expect("history lock")
                .insert(version);
        }
    }

    /// Runs the simulated plugin's records of one interval and reports its counters.
    fn report_plugin(&mut self, proto: &mut AgentConn, now: Instant) -> Result<(), Failure> {
        let Some(p) = self.shared.cfg.plugins.clone() else {
            return Ok(());
        };
        self.next_plugin_report = Some(now + p.interval);
        let (version, records, errors) = &mut self.plugin;
        if *version > 0 {
            *records += p.records_per_interval;
            if p.failing.contains(version) {
                *errors += p.records_per_interval;
            }
        }
        let run = er_protocol::PluginRun {
            name: p.name.clone(),
            version: *version,
            records_in: *records,
            errors: *errors,
            dropped: 0,
        };
        proto
            .report_plugins(
                er_protocol::PluginPlatform {
                    target: "sim-linux".into(),
                    compiler: true,
                },
                vec![run],
            )
            .map_err(|e| failure("protocol", anyhow!(e).context("reporting plugins")))?;
        Ok(())
    }

    /// Sends what the logs hold beyond what was sent, as far as the in-flight budgets allow.
    fn pump(&mut self, proto: &mut AgentConn) -> Result<(), Failure> {
        let cfg = &self.shared.cfg;
        let max_payload = (proto.max_batch_bytes() as usize)
            .saturating_sub(FRAME_OVERHEAD)
            .max(1024);
        let per_record = cfg.value_bytes.max(self.alias.len() + 24) + 24;
        let max_records = cfg.max_batch_records.min(max_payload / per_record).max(1) as i64;
        let data = cfg.partitions as usize;
        for i in 0..self.logs.len() {
            loop {
                let log = &self.logs[i];
                if log.sent >= log.end {
                    break;
                }
                let n = (log.end - log.sent).min(max_records);
                if !proto.can_send(&log.tp, n as u64 * per_record as u64) {
                    break;
                }
                let batch = if i < data {
                    self.data_batch(i, n, proto.next_seq(&self.logs[i].tp))
                } else {
                    self.heartbeat_batch(i, n, proto.next_seq(&self.logs[i].tp))
                }
                .map_err(|e| failure("protocol", e))?;
                if !proto.can_send(&batch.header.tp, batch.payload.len() as u64) {
                    break;
                }
                proto
                    .send_batch(batch)
                    .map_err(|e| failure("protocol", anyhow!(e).context("sending a batch")))?;
                self.logs[i].sent += n;
            }
        }
        Ok(())
    }

    fn data_batch(&mut self, i: usize, n: i64, seq: u64) -> anyhow::Result<Batch> {
        let log = &self.logs[i];
        let mut b = BatchBuilder::new(log.tp.clone(), log.partition_count);
        let now_ms = now_ms();
        for offset in log.sent..log.sent + n {
            encode_value(
                &self.alias,
                log.tp.partition,
                offset,
                self.shared.cfg.value_bytes,
                &mut self.value,
            );
            b.push(&RecordRef {
                offset,
                timestamp: now_ms,
                timestamp_type: TimestampType::CreateTime,
                key: None,
                value: Some(&self.value),
                headers: &[],
                topic: None,
                partition: None,
            });
        }
        b.set_next_offset(log.sent + n);
        b.finish(seq, Codec::None, 0)
            .with_context(|| format!("building a batch of {}", log.tp))
    }

    fn heartbeat_batch(&self, i: usize, n: i64, seq: u64) -> anyhow::Result<Batch> {
        let log = &self.logs[i];
        let hb = Heartbeat {
            source_cluster_alias: self.alias.clone(),
            target_cluster_alias: self.heartbeat_target.clone().unwrap_or_default(),
            timestamp: now_ms(),
        };
        let key = hb.encode_key().context("encoding a heartbeat key")?;
        let value = hb.encode_value();
        let mut b = BatchBuilder::new(log.tp.clone(), log.partition_count);
        for offset in log.sent..log.sent + n {
            b.push(&RecordRef {
                offset,
                timestamp: hb.timestamp,
                timestamp_type: TimestampType::CreateTime,
                key: Some(&key),
                value: Some(&value),
                headers: &[],
                topic: None,
                partition: None,
            });
        }
        b.set_next_offset(log.sent + n);
        b.finish(seq, Codec::None, 0)
            .context("building a heartbeat batch")
    }

    /// Makes the counters match the logs.
    fn publish(&self) {
        let data = self.shared.cfg.partitions as usize;
        let st = self.stats();
        let (generated, acked) = self.logs[..data]
            .iter()
            .fold((0, 0), |(g, a), l| (g + l.end, a + l.acked.min(l.end)));
        let unacked: i64 = self.logs.iter().map(|l| (l.end - l.acked).max(0)).sum();
        st.generated.store(generated as u64, Ordering::Relaxed);
        st.acked.store(acked as u64, Ordering::Relaxed);
        st.unacked.store(unacked as u64, Ordering::Relaxed);
        st.heartbeats.store(
            self.logs.get(data).map_or(0, |l| l.end) as u64,
            Ordering::Relaxed,
        );
    }
}

impl std::fmt::Debug for SimSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimSite")
            .field("alias", &self.alias)
            .field("logs", &self.logs)
            .finish_non_exhaustive()
    }
}

/// The streams of one connection.
struct SessionIo<'a> {
    conn: &'a quinn::Connection,
    control: FrameWriter,
    streams: HashMap<TopicPartition, FrameWriter>,
    inbound: SelectAll<BoxStream<'static, Inbound>>,
}

impl SessionIo<'_> {
    /// Writes the frames the protocol queued: control frames on the control stream, batches on
    /// their partition's stream (opened on first use; its acks are read with the rest).
    async fn flush(&mut self, proto: &mut AgentConn) -> Result<(), Failure> {
        while let Some((channel, frame)) = proto.poll_transmit() {
            let lost = |e: StreamError| failure("link lost", anyhow!(e));
            match channel {
                Channel::Control => self.control.write(&frame).await.map_err(lost)?,
                Channel::Partition(tp) => {
                    if !self.streams.contains_key(&tp) {
                        let (send, recv) = self.conn.open_bi().await.map_err(|e| {
                            failure("link lost", anyhow!(e).context(format!("opening {tp}")))
                        })?;
                        self.inbound.push(frames(
                            FrameReader::new(recv, MAX_READ_FRAME),
                            Channel::Partition(tp.clone()),
                        ));
                        self.streams.insert(tp.clone(), FrameWriter::new(send));
                    }
                    let writer = self.streams.get_mut(&tp).expect("opened above");
                    writer.write(&frame).await.map_err(lost)?;
                }
                Channel::Downlink => unreachable!("an agent sends nothing on the downlink"),
            }
        }
        Ok(())
    }
}

/// Capped exponential backoff with full jitter, as the agent's.
fn backoff(cfg: &FleetConfig, attempt: &mut u32) -> Duration {
    let ceiling = cfg
        .backoff_min
        .saturating_mul(1u32 << (*attempt).min(20))
        .min(cfg.backoff_max);
    *attempt = attempt.saturating_add(1);
    let lo = cfg.backoff_min.as_millis() as u64;
    let hi = (ceiling.as_millis() as u64).max(lo);
    Duration::from_millis(rand::rng().random_range(lo..=hi))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// The central side of one site: what was read against what it produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SiteCheck {
    /// Site alias.
    pub site: String,
    /// Records the site produced.
    pub expected: u64,
    /// Records read from `<site>.<topic>`.
    pub read: u64,
    /// Produced and never read.
    pub missing: u64,
    /// Extra copies read of produced records.
    pub duplicated: u64,
    /// Records read before one of a lower offset of the same partition (first copies only).
    pub out_of_order: u64,
    /// Records read that the site never produced, or that name another site or partition.
    pub unexpected: u64,
    /// One line per partition at fault (see [`crate::delivery::faults`]).
    pub faults: Vec<String>,
}

impl SiteCheck {
    /// Every record exactly once, in order, nothing else.
    pub fn is_exact(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.out_of_order == 0 && self.unexpected == 0
    }
}

/// The result of [`check_exactly_once`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CheckReport {
    /// Per site, in the order of the outcomes.
    pub sites: Vec<SiteCheck>,
    /// Records read over all sites.
    pub records_read: u64,
    /// Records expected over all sites.
    pub records_expected: u64,
    /// Seconds the read took.
    pub read_s: f64,
}

impl CheckReport {
    /// Every site exact.
    pub fn is_exact(&self) -> bool {
        self.sites.iter().all(SiteCheck::is_exact)
    }

    /// Sums over the sites: (missing, duplicated, out of order, unexpected).
    pub fn totals(&self) -> (u64, u64, u64, u64) {
        self.sites.iter().fold((0, 0, 0, 0), |t, s| {
            (
                t.0 + s.missing,
                t.1 + s.duplicated,
                t.2 + s.out_of_order,
                t.3 + s.unexpected,
            )
        })
    }

    /// One line of totals, then the faults of up to 20 sites at fault.
    pub fn summary(&self) -> String {
        let (missing, duplicated, out_of_order, unexpected) = self.totals();
        let bad: Vec<&SiteCheck> = self.sites.iter().filter(|s| !s.is_exact()).collect();
        let mut out = format!(
            "{} sites, {} of {} records read in {:.1} s: {} sites exact, {} at fault; {missing} missing, {duplicated} duplicated, {out_of_order} out of order, {unexpected} unexpected",
            self.sites.len(),
            self.records_read,
            self.records_expected,
            self.read_s,
            self.sites.len() - bad.len(),
            bad.len(),
        );
        for s in bad.iter().take(20) {
            let _ = write!(
                out,
                "\n  {}: expected {}, read {}: {}",
                s.site,
                s.expected,
                s.read,
                s.faults.join("; ")
            );
        }
        if bad.len() > 20 {
            let _ = write!(out, "\n  ... and {} more sites", bad.len() - 20);
        }
        out
    }
}

/// Counts what was read per site and partition against what each site produced.
#[derive(Debug)]
pub struct Tally {
    /// Remote topic -> site index.
    topics: HashMap<String, usize>,
    outcomes: Vec<SiteOutcome>,
    /// Per site, per partition: offsets in the order read.
    read: Vec<BTreeMap<i32, Vec<i64>>>,
    unexpected: Vec<u64>,
}

impl Tally {
    /// Expects what `outcomes` produced of `topic`, remotely named by the default policy
    /// (`<site>.<topic>`).
    pub fn new(topic: &str, outcomes: &[SiteOutcome]) -> Self {
        let policy = ReplicationPolicy::default();
        Self {
            topics: outcomes
                .iter()
                .enumerate()
                .map(|(i, o)| (policy.remote_topic(&o.site, topic), i))
                .collect(),
            outcomes: outcomes.to_vec(),
            read: vec![BTreeMap::new(); outcomes.len()],
            unexpected: vec![0; outcomes.len()],
        }
    }

    /// The remote topics to read.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.topics.keys().map(String::as_str)
    }

    /// Counts one record read from `topic`/`partition`; records of other topics are ignored.
    pub fn record(&mut self, topic: &str, partition: i32, value: Option<&[u8]>) {
        let Some(&i) = self.topics.get(topic) else {
            return;
        };
        match value.and_then(decode_value) {
            Some((site, p, offset)) if site == self.outcomes[i].site && p == partition => {
                self.read[i].entry(partition).or_default().push(offset);
            }
            _ => self.unexpected[i] += 1,
        }
    }

    /// The per-site verdicts.
    pub fn finish(self, read_s: f64) -> CheckReport {
        let mut report = CheckReport {
            read_s,
            ..CheckReport::default()
        };
        for (i, o) in self.outcomes.iter().enumerate() {
            let want: crate::delivery::Seqs = o
                .ends
                .iter()
                .enumerate()
                .map(|(p, &end)| (p as i32, (0..end).collect()))
                .collect();
            let got = &self.read[i];
            let mut s = SiteCheck {
                site: o.site.clone(),
                expected: o.ends.iter().map(|&e| e.max(0) as u64).sum(),
                read: got.values().map(|v| v.len() as u64).sum::<u64>() + self.unexpected[i],
                unexpected: self.unexpected[i],
                ..SiteCheck::default()
            };
            for (p, offsets) in want.iter() {
                let end = offsets.len();
                let mut times = vec![0u32; end];
                let mut highest: Option<i64> = None;
                for &off in got.get(p).map_or(&[][..], Vec::as_slice) {
                    let Some(t) = usize::try_from(off).ok().and_then(|o| times.get_mut(o)) else {
                        s.unexpected += 1;
                        continue;
                    };
                    *t += 1;
                    if *t > 1 {
                        s.duplicated += 1;
                        continue;
                    }
                    if highest.is_some_and(|h| off < h) {
                        s.out_of_order += 1;
                    }
                    highest = Some(highest.map_or(off, |h| h.max(off)));
                }
                s.missing += times.iter().filter(|&&t| t == 0).count() as u64;
            }
            for p in got.keys().filter(|p| !want.contains_key(p)) {
                s.unexpected += got[p].len() as u64;
            }
            if !s.is_exact() {
                s.faults = crate::delivery::faults(got, &want);
                if self.unexpected[i] > 0 {
                    s.faults.push(format!(
                        "{} records not of this site and partition",
                        self.unexpected[i]
                    ));
                }
            }
            report.records_read += s.read;
            report.records_expected += s.expected;
            report.sites.push(s);
        }
        report
    }
}

/// Reads every `<site>.<topic>` of `outcomes` at `central` with read_committed, from the start
/// to the end of every partition, with one consumer assigned all their partitions, and checks
/// that each site's records arrived exactly once, in order per partition. A topic that does not
/// exist counts as all its records missing. Call after [`Fleet::drain`] and [`Fleet::stop`]:
/// nothing may be written meanwhile.
pub async fn check_exactly_once(
    central: &str,
    topic: &str,
    outcomes: &[SiteOutcome],
    timeout: Duration,
) -> anyhow::Result<CheckReport> {
    let mut tally = Tally::new(topic, outcomes);
    let central = central.to_owned();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let consumer: BaseConsumer = crate::client::config(&central)
            .set("group.id", crate::unique_name("fleet-check"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "100")
            .create()
            .context("creating the check's consumer")?;
        let md = consumer
            .fetch_metadata(None, Duration::from_secs(60))
            .with_context(|| format!("metadata of {central}"))?;
        let wanted: std::collections::HashSet<&str> = tally.topics().collect();
        let mut tpl = TopicPartitionList::new();
        for t in md.topics() {
            if wanted.contains(t.name()) {
                for p in t.partitions() {
                    tpl.add_partition_offset(t.name(), p.id(), Offset::Beginning)?;
                }
            }
        }
        let partitions = tpl.count();
        drop(wanted);
        consumer.assign(&tpl).context("assigning the remote topics")?;
        // Nothing is written while checking, so each partition reports its end once.
        let mut at_end = 0;
        let deadline = started + timeout;
        while at_end < partitions {
            if Instant::now() > deadline {
                bail!(
                    "reading {partitions} partitions of {central}: only {at_end} reached their end within {timeout:?}"
                );
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Ok(m)) => tally.record(m.topic(), m.partition(), m.payload()),
                Some(Err(KafkaError::PartitionEOF(_))) => at_end += 1,
                Some(Err(e)) => return Err(anyhow!(e).context("reading the remote topics")),
            }
        }
        Ok(tally.finish(started.elapsed().as_secs_f64()))
    })
    .await
    .context("the check panicked")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_name_site_partition_and_offset_whatever_the_padding() {
        let mut v = Vec::new();
        for (site, p, off, len) in [("shop-1", 0, 0, 0), ("a-b_c", 7, 123_456, 100)] {
            encode_value(site, p, off, len, &mut v);
            assert!(v.len() >= len);
            assert_eq!(decode_value(&v), Some((site, p, off)));
        }
        assert_eq!(decode_value(b"no/such"), None);
        assert_eq!(decode_value(b"s/x/1"), None);
    }

    #[test]
    fn a_trickle_produces_at_its_rate_and_stops_at_its_limit() {
        let t0 = Instant::now();
        let mut t = Trickle {
            rate: 10.0,
            credit: 0.0,
            at: t0,
            produced: 0,
            max: Some(25),
        };
        assert_eq!(t.accrue(t0 + Duration::from_millis(1050), 10.0), 10);
        // The old rate counts until the switch, the new one after it.
        assert_eq!(t.accrue(t0 + Duration::from_millis(2050), 0.0), 10);
        assert_eq!(t.accrue(t0 + Duration::from_secs(60), 0.0), 0);
        t.rate = 100.0;
        assert_eq!(t.accrue(t0 + Duration::from_secs(61), 100.0), 5);
        assert_eq!(t.period(), Duration::from_secs(3600));
    }

    fn outcome(site: &str, ends: &[i64]) -> SiteOutcome {
        SiteOutcome {
            site: site.into(),
            ends: ends.to_vec(),
            acked: ends.to_vec(),
            heartbeats: 0,
        }
    }

    #[test]
    fn the_tally_counts_each_kind_of_fault_per_site() {
        let outcomes = [outcome("s1", &[3, 2]), outcome("s2", &[2, 0])];
        let mut t = Tally::new("t", &outcomes);
        let mut v = Vec::new();
        let mut read = |t: &mut Tally, topic: &str, site: &str, p: i32, off: i64| {
            encode_value(site, p, off, 0, &mut v);
            t.record(topic, p, Some(&v));
        };
        // s1: partition 0 exact, partition 1 doubled and then a missing one.
        for off in 0..3 {
            read(&mut t, "s1.t", "s1", 0, off);
        }
        read(&mut t, "s1.t", "s1", 1, 0);
        read(&mut t, "s1.t", "s1", 1, 0);
        // s2: out of order, then a record of s1 in its topic, an unknown offset, garbage.
        read(&mut t, "s2.t", "s2", 0, 1);
        read(&mut t, "s2.t", "s2", 0, 0);
        read(&mut t, "s2.t", "s1", 0, 2);
        read(&mut t, "s2.t", "s2", 0, 9);
        t.record("s2.t", 0, Some(b"garbage"));
        t.record("other.t", 0, Some(b"ignored"));
        let r = t.finish(0.0);
        let s1 = &r.sites[0];
        assert_eq!(
            (
                s1.expected,
                s1.read,
                s1.missing,
                s1.duplicated,
                s1.out_of_order,
                s1.unexpected
            ),
            (5, 5, 1, 1, 0, 0),
            "{s1:?}"
        );
        assert_eq!(
            s1.faults,
            ["partition 1: read 2 of 2 records; 1 missing (1) 1 duplicated (0 read 2 times)"]
        );
        let s2 = &r.sites[1];
        assert_eq!(
            (
                s2.expected,
                s2.read,
                s2.missing,
                s2.duplicated,
                s2.out_of_order,
                s2.unexpected
            ),
            (2, 5, 0, 0, 1, 3),
            "{s2:?}"
        );
        assert!(!r.is_exact());
        assert_eq!(r.totals(), (1, 1, 1, 3));
        assert!(
            r.summary().contains("0 sites exact, 2 at fault"),
            "{}",
            r.summary()
        );
    }

    #[test]
    fn an_exact_delivery_passes() {
        let outcomes = [outcome("s1", &[2])];
        let mut t = Tally::new("t", &outcomes);
        let mut v = Vec::new();
        for off in 0..2 {
            encode_value("s1", 0, off, 50, &mut v);
            t.record("s1.t", 0, Some(&v));
        }
        let r = t.finish(0.0);
        assert!(r.is_exact(), "{}", r.summary());
        assert_eq!((r.records_read, r.records_expected), (2, 2));
    }

    #[test]
    fn certificates_are_issued_once_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let sites = site_names("fleet", 3);
        issue_certs(dir.path(), &sites).unwrap();
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        issue_certs(dir.path(), &sites[..2]).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("ca.pem")).unwrap(),
            ca,
            "kept"
        );
        let more = site_names("fleet", 4);
        issue_certs(dir.path(), &more).unwrap();
        assert_ne!(
            std::fs::read(dir.path().join("ca.pem")).unwrap(),
            ca,
            "reissued"
        );
        for s in &more {
            let pem = std::fs::read_to_string(dir.path().join(format!("{s}.pem"))).unwrap();
            assert!(pem.contains("BEGIN CERTIFICATE"));
        }
    }
}
