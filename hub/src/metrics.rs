//! The hub's Prometheus metrics: every name, unit and label is declared here, and served on
//! `[metrics] listen` at `/metrics`. Also the per-site figures of the periodic `site status` log
//! and of `/status`. What happens is counted by [`crate::events`]; the gauges of a state are set
//! here.
//!
//! Without `[metrics] listen` no recorder is installed and every update is a no-op. Handles taken
//! before [`install`] stay no-ops, so the binary installs first and starts the hub after.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use er_protocol::{DecodedRecords, HEARTBEATS_TOPIC, Heartbeat, TopicPartition};
use metrics::{
    Counter, Gauge, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};

/// Sites with an established session.
pub const SITES_CONNECTED: &str = "er_hub_sites_connected";
/// Sessions accepted (a site identified by its certificate).
pub const SESSIONS: &str = "er_hub_sessions_total";
/// Site shards this hub owns.
pub const SHARDS_OWNED: &str = "er_hub_shards_owned";
/// Loads of newly owned shards (positions and offset index read from Kafka).
pub const SHARD_LOADS: &str = "er_hub_shard_loads_total";
/// Time to load newly owned shards.
pub const SHARD_LOAD_SECONDS: &str = "er_hub_shard_load_seconds_total";
/// Records written to a site's dead-letter topic instead of their destination.
pub const POISON_RECORDS: &str = "er_hub_poison_records_total";
/// Partitions of a site stopped at a record the hub can never write
/// (`replication.on_unwritable = "stop"`), in its current session: an alarm.
pub const STOPPED_PARTITIONS: &str = "er_hub_stopped_partitions";
/// Sites sent to another hub of the group.
pub const REDIRECTS: &str = "er_hub_redirects_total";
/// Welcomes sent in 0.5-RTT to a site resuming its TLS session (one round trip saved).
pub const EARLY_WELCOMES: &str = "er_hub_early_welcomes_total";
/// Records committed to a central cluster (`site`).
pub const RECORDS_WRITTEN: &str = "er_hub_records_written_total";
/// Compressed batch bytes received from a site (`site`).
pub const BYTES_RECEIVED: &str = "er_hub_bytes_received_total";
/// Batches committed and acknowledged (`site`).
pub const BATCHES_COMMITTED: &str = "er_hub_batches_committed_total";
/// Duration of a site writer's transaction, from begin to commit (histogram).
pub const TRANSACTION_SECONDS: &str = "er_hub_transaction_seconds";
/// Commit time minus the record timestamp of the oldest record of each committed batch
/// (histogram, `cluster`): end-to-end replication latency, MM2's `replication-latency-ms`.
pub const REPLICATION_LATENCY_SECONDS: &str = "er_hub_replication_latency_seconds";
/// Transactions that failed or were aborted (`site`).
pub const TRANSACTIONS_FAILED: &str = "er_hub_transactions_failed_total";
/// Transactional producers a writer gave up because a call did not return within its timeout
/// (`cluster`); each one may leave a thread and its connections behind.
pub const PRODUCERS_ABANDONED: &str = "er_hub_producers_abandoned_total";
/// MM2 checkpoints written (`site`).
pub const CHECKPOINTS_WRITTEN: &str = "er_hub_checkpoints_written_total";
/// MM2 offset syncs written (`site`).
pub const OFFSET_SYNCS_WRITTEN: &str = "er_hub_offset_syncs_written_total";
/// Hub time at commit minus the timestamp of the newest MM2 heartbeat committed (`site`).
/// Negative when the site's clock runs ahead of the hub's.
pub const REPLICATION_LAG_SECONDS: &str = "er_hub_replication_lag_seconds";
/// Runs of consecutive offsets held in a site's offset index on a cluster (`site`, `cluster`).
pub const OFFSET_INDEX_ENTRIES: &str = "er_hub_offset_index_entries";
/// notAfter of the hub's own server certificate, Unix seconds.
pub const CERTIFICATE_EXPIRY: &str = "er_hub_certificate_expiry_timestamp_seconds";
/// notAfter of the certificate a site last connected with, Unix seconds (`site`).
pub const SITE_CERTIFICATE_EXPIRY: &str = "er_hub_site_certificate_expiry_timestamp_seconds";
/// Connections refused before a session started (`reason`, one of
/// [`REFUSAL_REASONS`]).
pub const CONNECTIONS_REFUSED: &str = "er_hub_connections_refused_total";
/// Every `reason` label of [`CONNECTIONS_REFUSED`]: the admission checks
/// ([`er_net::AdmissionError::reason`]) and the TLS handshake failures
/// ([`er_net::handshake_refusal_reason`]).
pub const REFUSAL_REASONS: &[&str] = &[
    "no_certificate",
    "bad_identity",
    "bad_certificate",
    "expired",
    "not_yet_valid",
    "revoked",
    "not_allowed",
    "handshake",
    "too_many_connections",
    "hub_full",
    "handshakes_busy",
    "no_hello",
];
/// Bytes of frames read from sites and not yet handed to the writers, hub-wide (bounded by
/// `limits.inbound_bytes`).
pub const INBOUND_BUFFERED_BYTES: &str = "er_hub_inbound_buffered_bytes";
/// Connection attempts asked for a QUIC Retry (address validation) while many handshakes
/// were under way.
pub const QUIC_RETRIES: &str = "er_hub_quic_retries_total";
/// Remote topics created at discovery from the topics a site reported (`topic_sync`).
pub const TOPICS_CREATED: &str = "er_hub_topics_created_total";
/// Remote topic configs set or removed to follow the edge (`topic_sync`).
pub const TOPIC_CONFIG_CHANGES: &str = "er_hub_topic_config_changes_total";
/// Topic reports of sites dropped because the topic syncer's queue was full.
pub const TOPIC_REPORTS_DROPPED: &str = "er_hub_topic_reports_dropped_total";
/// Heartbeats the hub wrote on a destination cluster other than the one the site's
/// `heartbeats` topic is replicated to ([`crate::heartbeats`]).
pub const HEARTBEATS_RELAYED: &str = "er_hub_heartbeats_relayed_total";
/// Central records sent down to sites (`[[downlinks]]`), before the edge committed them.
pub const DOWNLINK_RECORDS_SENT: &str = "er_hub_downlink_records_sent_total";
/// Downlink batch payload bytes sent to sites (compressed, as on the link).
pub const DOWNLINK_BYTES_SENT: &str = "er_hub_downlink_bytes_sent_total";
/// ACL bindings created on remote topics to follow the edge's (`acl_sync`).
pub const TOPIC_ACLS_CREATED: &str = "er_hub_topic_acls_created_total";
/// Edge ACL bindings a site reported that the hub does not create (`acl_sync` rules).
pub const TOPIC_ACLS_REFUSED: &str = "er_hub_topic_acls_refused_total";
/// Always 1; the `version` label carries the hub's version.
pub const BUILD_INFO: &str = "er_build_info";

/// Bucket bounds of [`TRANSACTION_SECONDS`]: a few milliseconds on an idle cluster up to the
/// 60 s transaction timeout.
pub const TRANSACTION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Bucket bounds of [`REPLICATION_LATENCY_SECONDS`]: a few milliseconds on a good link up to
/// an hour of backlog (older records fall in `+Inf`).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// How often each session logs its `site status` line.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(30);
/// How often the offset index gauges are refreshed.
pub const INDEX_GAUGE_INTERVAL: Duration = Duration::from_secs(5);

pub use er_net::metrics::MetricsError;

/// Installs the Prometheus recorder with an HTTP server on `addr` (`/metrics`, `/healthz`,
/// `/readyz`, `/status`) and publishes build info; the returned endpoints take the readiness and
/// status callbacks (`crate::health`). Call it once per process, inside a tokio runtime, before
/// the hub starts.
pub fn install(addr: SocketAddr) -> Result<Arc<er_net::status::Endpoints>, MetricsError> {
    let endpoints = er_net::metrics::serve_prometheus(
        addr,
        &[
            (TRANSACTION_SECONDS, TRANSACTION_BUCKETS),
            (REPLICATION_LATENCY_SECONDS, LATENCY_BUCKETS),
        ],
    )?;
    describe();
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!(SITES_CONNECTED).set(0.0);
    for reason in REFUSAL_REASONS {
        counter!(CONNECTIONS_REFUSED, "reason" => *reason).absolute(0);
    }
    Ok(endpoints)
}

fn describe() {
    describe_sessions();
    describe_writes_and_checkpoints();
}

/// Certificates, connections, sessions, shards and the inbound budget.
fn describe_sessions() {
    describe_gauge!(
        CERTIFICATE_EXPIRY,
        Unit::Seconds,
        "notAfter of the hub's server certificate, Unix seconds."
    );
    describe_gauge!(
        SITE_CERTIFICATE_EXPIRY,
        Unit::Seconds,
        "notAfter of the certificate a site last connected with, Unix seconds."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections refused before a session started, by reason."
    );
    describe_gauge!(SITES_CONNECTED, "Sites with an established session.");
    describe_counter!(SESSIONS, "Site sessions accepted.");
    describe_gauge!(SHARDS_OWNED, "Site shards this hub owns in its group.");
    describe_counter!(
        SHARD_LOADS,
        "Loads of newly owned shards (positions and offset index read from Kafka)."
    );
    describe_gauge!(
        SHARD_LOAD_SECONDS,
        Unit::Seconds,
        "Time spent loading newly owned shards; monotone."
    );
    describe_gauge!(
        STOPPED_PARTITIONS,
        "Partitions of a site stopped at a record the hub can never write (replication.on_unwritable = stop); an alarm."
    );
    describe_counter!(
        REDIRECTS,
        "Sites sent to the hub of the group that owns their shard."
    );
    describe_counter!(
        EARLY_WELCOMES,
        "Welcomes sent in 0.5-RTT to a site resuming its TLS session."
    );
}

/// Records, batches, transactions, checkpoints, lag, topics and ACLs synced.
fn describe_writes_and_checkpoints() {
    describe_counter!(RECORDS_WRITTEN, "Records committed to a central cluster.");
    describe_counter!(
        BYTES_RECEIVED,
        Unit::Bytes,
        "Compressed batch bytes received from a site."
    );
    describe_counter!(BATCHES_COMMITTED, "Batches committed and acknowledged.");
    describe_histogram!(
        TRANSACTION_SECONDS,
        Unit::Seconds,
        "Duration of a site writer's transaction, begin to commit."
    );
    describe_counter!(TRANSACTIONS_FAILED, "Transactions that failed or aborted.");
    describe_counter!(
        PRODUCERS_ABANDONED,
        "Transactional producers given up because a call overran its timeout."
    );
    describe_histogram!(
        REPLICATION_LATENCY_SECONDS,
        Unit::Seconds,
        "Commit time minus the timestamp of the oldest record of each committed batch (the edge clock; clamped at 0)."
    );
    describe_counter!(CHECKPOINTS_WRITTEN, "MM2 checkpoints written.");
    describe_counter!(
        TOPIC_ACLS_CREATED,
        "ACL bindings created on remote topics to follow the edge's (acl_sync)."
    );
    describe_counter!(
        TOPIC_ACLS_REFUSED,
        "Edge ACL bindings a site reported that the hub does not create: not ALLOW READ/DESCRIBE, a principal acl_sync.principals refuses, no topic of the site's own, or over acl_sync.max_per_site."
    );
    describe_counter!(
        HEARTBEATS_RELAYED,
        "MM2 heartbeats written on a destination cluster other than the one a site's heartbeats topic replicates to."
    );
    describe_counter!(OFFSET_SYNCS_WRITTEN, "MM2 offset syncs written.");
    describe_counter!(
        DOWNLINK_RECORDS_SENT,
        "Central records sent down to sites by [[downlinks]] (the edge commits them in its own transactions)."
    );
    describe_counter!(
        DOWNLINK_BYTES_SENT,
        "Downlink batch payload bytes sent to sites, compressed as on the link."
    );
    describe_gauge!(
        REPLICATION_LAG_SECONDS,
        Unit::Seconds,
        "Hub time at commit minus the newest committed MM2 heartbeat's timestamp."
    );
    describe_gauge!(
        OFFSET_INDEX_ENTRIES,
        "Runs of consecutive offsets held in a site's offset index."
    );
    describe_gauge!(BUILD_INFO, "Build information; always 1.");
    describe_gauge!(
        INBOUND_BUFFERED_BYTES,
        Unit::Bytes,
        "Bytes of frames read from sites and not yet handed to the writers (limits.inbound_bytes bounds them)."
    );
    describe_counter!(
        QUIC_RETRIES,
        "Connection attempts asked for a QUIC Retry while many handshakes were under way."
    );
    describe_counter!(
        TOPICS_CREATED,
        "Remote topics created at discovery from the topics a site reported."
    );
    describe_counter!(
        TOPIC_CONFIG_CHANGES,
        "Remote topic configs set or removed to follow the edge."
    );
    describe_counter!(
        TOPIC_REPORTS_DROPPED,
        "Topic reports of sites dropped because the topic syncer's queue was full."
    );
}

/// Metric handles and status figures of one site, shared by its sessions and writers.
#[derive(Debug)]
pub struct SiteMetrics {
    site: String,
    records_written: Counter,
    bytes_received: Counter,
    batches_committed: Counter,
    transactions_failed: Counter,
    poison_records: Counter,
    stopped_partitions: Gauge,
    checkpoints_written: Counter,
    offset_syncs_written: Counter,
    replication_lag: Gauge,
    /// Records committed since the hub started (status line).
    records: AtomicU64,
    /// Checkpoints written since the hub started (status line).
    checkpoints: AtomicU64,
    /// Latest lag in seconds as f64 bits; NaN until the first heartbeat committed.
    lag_bits: AtomicU64,
    /// What `/status` shows beyond the counters.
    facts: Mutex<SiteFacts>,
}

/// How often a site's figures are sampled for `/status/<site>` (sparklines) and records/s.
pub const HISTORY_INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept per site: 5 minutes at [`HISTORY_INTERVAL`] (60 x 32 bytes per site).
pub const HISTORY_SAMPLES: usize = 60;

/// One sample of a site's figures.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// Hub time of the sample, epoch milliseconds.
    pub at_ms: i64,
    /// Records committed since the hub started.
    pub records: u64,
    /// Replication lag from heartbeats, seconds, if known.
    pub lag_seconds: Option<f64>,
    /// Records behind at the edge as the agent last reported, if it did.
    pub lag_records: Option<i64>,
}

/// What the agent last told the hub about itself (`SiteReport` frames).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentFigures {
    /// Records behind at the edge, summed over the replicated partitions, if the agent
    /// measures it.
    pub lag_records: Option<i64>,
    /// Records edge retention deleted before they were replicated, since the agent started.
    pub retention_gap_records: u64,
    /// Failed plugin calls and records, since the agent started.
    pub plugin_errors: u64,
    /// Routes stopped by a plugin failure, since the agent started.
    pub route_stops: u64,
}

/// A site's plain-data status beyond its counters.
#[derive(Debug, Default)]
struct SiteFacts {
    poison_records: u64,
    stopped_partitions: usize,
    transactions_failed: u64,
    last_commit_ms: Option<i64>,
    last_failure_ms: Option<i64>,
    heartbeat_ms: Option<i64>,
    heartbeat_committed_ms: Option<i64>,
    certificate_not_after_s: Option<i64>,
    disconnected_ms: Option<i64>,
    agent: Option<(i64, AgentFigures)>,
    history: std::collections::VecDeque<Sample>,
}

/// A copy of a site's status figures (see [`SiteMetrics::snapshot`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SiteSnapshot {
    /// Records committed since the hub started.
    pub records: u64,
    /// Records per second over the last samples, once two are ten seconds apart or more.
    pub records_per_second: Option<f64>,
    /// Latest replication lag from heartbeats, seconds.
    pub lag_seconds: Option<f64>,
    /// Records written to the dead-letter topic since the hub started.
    pub poison_records: u64,
    /// Partitions stopped at a record that can never be written, in the current session.
    pub stopped_partitions: usize,
    /// Failed transactions carrying the site since the hub started.
    pub transactions_failed: u64,
    /// Hub time of the latest commit, epoch ms.
    pub last_commit_ms: Option<i64>,
    /// Hub time of the latest failed transaction, epoch ms.
    pub last_failure_ms: Option<i64>,
    /// Timestamp of the newest committed heartbeat (the site's clock), epoch ms.
    pub heartbeat_ms: Option<i64>,
    /// Hub time that heartbeat committed, epoch ms.
    pub heartbeat_committed_ms: Option<i64>,
    /// notAfter of the certificate the site last connected with, Unix seconds.
    pub certificate_not_after_s: Option<i64>,
    /// Hub time the site's last session ended, epoch ms.
    pub disconnected_ms: Option<i64>,
    /// The agent's latest report and the hub time it came, epoch ms.
    pub agent: Option<(i64, AgentFigures)>,
    /// Samples, oldest first.
    pub history: Vec<Sample>,
}

/// The metrics of `site`, created on first use and kept for the life of the process (one entry
/// per site that ever connected, which is what the `site` label's cardinality is anyway).
pub fn site(site: &str) -> Arc<SiteMetrics> {
    static SITES: OnceLock<Mutex<HashMap<String, Arc<SiteMetrics>>>> = OnceLock::new();
    let mut sites = SITES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    sites
        .entry(site.to_owned())
        .or_insert_with(|| SiteMetrics::new(site))
        .clone()
}

impl SiteMetrics {
    /// Handles of `site` in the installed recorder; [`site`] keeps one per site for the life
    /// of the process.
    pub(crate) fn new(site: &str) -> Arc<Self> {
        let l = [("site", site.to_owned())];
        Arc::new(SiteMetrics {
            site: site.to_owned(),
            records_written: counter!(RECORDS_WRITTEN, &l),
            bytes_received: counter!(BYTES_RECEIVED, &l),
            batches_committed: counter!(BATCHES_COMMITTED, &l),
            transactions_failed: counter!(TRANSACTIONS_FAILED, &l),
            poison_records: counter!(POISON_RECORDS, &l),
            stopped_partitions: gauge!(STOPPED_PARTITIONS, &l),
            checkpoints_written: counter!(CHECKPOINTS_WRITTEN, &l),
            offset_syncs_written: counter!(OFFSET_SYNCS_WRITTEN, &l),
            replication_lag: gauge!(REPLICATION_LAG_SECONDS, &l),
            records: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            lag_bits: AtomicU64::new(f64::NAN.to_bits()),
            facts: Mutex::new(SiteFacts::default()),
        })
    }

    /// The site's alias.
    pub fn alias(&self) -> &str {
        &self.site
    }

    /// A batch arrived from the site.
    pub fn batch_received(&self, bytes: usize) {
        self.bytes_received.increment(bytes as u64);
    }

    fn facts(&self) -> std::sync::MutexGuard<'_, SiteFacts> {
        self.facts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A transaction committed `batches` batches holding `records` records of the site.
    pub fn committed(&self, records: u64, batches: usize) {
        self.records_written.increment(records);
        self.batches_committed.increment(batches as u64);
        self.records.fetch_add(records, Ordering::Relaxed);
        self.facts().last_commit_ms = Some(now_ms());
    }

    /// A transaction failed (nothing of it is visible).
    pub fn transaction_failed(&self) {
        self.transactions_failed.increment(1);
        let mut f = self.facts();
        f.transactions_failed += 1;
        f.last_failure_ms = Some(now_ms());
    }

    /// `n` records went to the site's dead-letter topic.
    pub fn poison_records(&self, n: u64) {
        self.poison_records.increment(n);
        self.facts().poison_records += n;
    }

    /// `n` partitions of the site are stopped in its current session.
    pub fn stopped_partitions(&self, n: usize) {
        self.stopped_partitions.set(n as f64);
        self.facts().stopped_partitions = n;
    }

    /// The site connected with a certificate valid until `not_after`.
    pub fn certificate(&self, not_after: std::time::SystemTime) {
        self.facts().certificate_not_after_s = Some(unix_seconds(not_after) as i64);
    }

    /// The site's session ended.
    pub fn disconnected(&self) {
        self.facts().disconnected_ms = Some(now_ms());
    }

    /// The agent reported its own figures (a `SiteReport` frame).
    pub fn agent_report(&self, figures: AgentFigures) {
        self.facts().agent = Some((now_ms(), figures));
    }

    /// Takes a sample for the history (every [`HISTORY_INTERVAL`]), keeping the latest
    /// [`HISTORY_SAMPLES`].
    pub fn sample(&self, at_ms: i64) {
        let records = self.records();
        let lag_seconds = self.lag_seconds();
        let mut f = self.facts();
        let lag_records = f.agent.and_then(|(_, a)| a.lag_records);
        if f.history.len() == HISTORY_SAMPLES {
            f.history.pop_front();
        }
        f.history.push_back(Sample {
            at_ms,
            records,
            lag_seconds,
            lag_records,
        });
    }

    /// The site's figures now (`now_ms`: hub time, epoch ms).
    pub fn snapshot(&self, now_ms: i64) -> SiteSnapshot {
        let records = self.records();
        let lag_seconds = self.lag_seconds();
        let f = self.facts();
        SiteSnapshot {
            records,
            records_per_second: records_per_second(&f.history, records, now_ms),
            lag_seconds,
            poison_records: f.poison_records,
            stopped_partitions: f.stopped_partitions,
            transactions_failed: f.transactions_failed,
            last_commit_ms: f.last_commit_ms,
            last_failure_ms: f.last_failure_ms,
            heartbeat_ms: f.heartbeat_ms,
            heartbeat_committed_ms: f.heartbeat_committed_ms,
            certificate_not_after_s: f.certificate_not_after_s,
            disconnected_ms: f.disconnected_ms,
            agent: f.agent,
            history: f.history.iter().copied().collect(),
        }
    }

    /// A checkpoint round wrote these.
    pub fn checkpoint_round(&self, checkpoints: usize, offset_syncs: usize) {
        self.checkpoints_written.increment(checkpoints as u64);
        self.offset_syncs_written.increment(offset_syncs as u64);
        self.checkpoints
            .fetch_add(checkpoints as u64, Ordering::Relaxed);
    }

    /// A heartbeat stamped `heartbeat_ms` (epoch ms, the site's clock) committed at `now_ms`
    /// (the hub's clock).
    pub fn heartbeat_committed(&self, heartbeat_ms: i64, now_ms: i64) {
        let lag = (now_ms - heartbeat_ms) as f64 / 1e3;
        self.replication_lag.set(lag);
        self.lag_bits.store(lag.to_bits(), Ordering::Relaxed);
        let mut f = self.facts();
        f.heartbeat_ms = Some(heartbeat_ms);
        f.heartbeat_committed_ms = Some(now_ms);
        drop(f);
        tracing::debug!(site = %self.site, lag_seconds = lag, "replication lag from heartbeats");
    }

    /// Timestamp (the site's clock, epoch ms) of the newest heartbeat committed, if any.
    pub fn heartbeat_ms(&self) -> Option<i64> {
        self.facts().heartbeat_ms
    }

    /// The latest replication lag in seconds, once a heartbeat committed.
    pub fn lag_seconds(&self) -> Option<f64> {
        Some(f64::from_bits(self.lag_bits.load(Ordering::Relaxed))).filter(|l| !l.is_nan())
    }

    /// Records committed since the hub started.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Checkpoints written since the hub started.
    pub fn checkpoints(&self) -> u64 {
        self.checkpoints.load(Ordering::Relaxed)
    }
}

/// Records per second from the samples to `records` at `now_ms`: over the newest sample at
/// least 10 s old (at most 30 s), so a rate needs some history and follows changes within
/// half a minute. `None` until such a sample exists.
pub fn records_per_second(
    history: &std::collections::VecDeque<Sample>,
    records: u64,
    now_ms: i64,
) -> Option<f64> {
    let base = history
        .iter()
        .rev()
        .find(|s| now_ms - s.at_ms >= 10_000)
        .filter(|s| now_ms - s.at_ms <= 30_000)?;
    let secs = (now_ms - base.at_ms) as f64 / 1e3;
    Some(records.saturating_sub(base.records) as f64 / secs)
}

/// Sets the offset index gauge of a site on a cluster.
pub fn set_offset_index_entries(site: &str, cluster: &str, runs: usize) {
    gauge!(OFFSET_INDEX_ENTRIES, "site" => site.to_owned(), "cluster" => cluster.to_owned())
        .set(runs as f64);
}

/// Replication latencies of the batches one transaction committed to `cluster`, seconds.
pub fn batches_committed_after(cluster: &str, latencies: impl IntoIterator<Item = f64>) {
    let h = histogram!(REPLICATION_LATENCY_SECONDS, "cluster" => cluster.to_owned());
    for l in latencies {
        h.record(l);
    }
}

/// A writer of `cluster` gave its producer up (a call that did not return in time).
pub fn producer_abandoned(cluster: &str) {
    counter!(PRODUCERS_ABANDONED, "cluster" => cluster.to_owned()).increment(1);
}

/// The connected sites count as last set, for `/status` (a gauge cannot be read back).
static SITES_CONNECTED_NOW: AtomicU64 = AtomicU64::new(0);

/// Sets the connected sites gauge.
pub fn set_sites_connected(n: usize) {
    SITES_CONNECTED_NOW.store(n as u64, Ordering::Relaxed);
    gauge!(SITES_CONNECTED).set(n as f64);
}

/// Sites with a session, as last set by [`set_sites_connected`].
pub fn sites_connected() -> u64 {
    SITES_CONNECTED_NOW.load(Ordering::Relaxed)
}

/// Sets the owned shards gauge.
pub fn set_shards_owned(n: usize) {
    gauge!(SHARDS_OWNED).set(n as f64);
}

/// The newest timestamp (epoch ms) of the MM2 heartbeats from `site` among records of the
/// `heartbeats` source topic in these batches; other records (heartbeats of other sources that
/// share the edge topic, undecodable ones) are ignored.
pub fn newest_heartbeat_ms<'a>(
    site: &str,
    batches: impl IntoIterator<Item = (&'a TopicPartition, &'a DecodedRecords)>,
) -> Option<i64> {
    batches
        .into_iter()
        .filter(|(tp, _)| tp.topic == HEARTBEATS_TOPIC)
        .flat_map(|(_, recs)| recs.iter())
        .filter_map(|r| {
            let r = r.ok()?;
            Heartbeat::decode(r.key?, r.value?).ok()
        })
        .filter(|h| h.source_cluster_alias == site)
        .map(|h| h.timestamp)
        .max()
}

/// Milliseconds since the epoch on the hub's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Publishes [`CERTIFICATE_EXPIRY`] from the hub's certificate file.
pub fn set_certificate_expiry(cert: &std::path::Path) {
    match er_net::certificate_not_after(cert) {
        Ok(not_after) => gauge!(CERTIFICATE_EXPIRY).set(unix_seconds(not_after)),
        Err(e) => tracing::warn!(error = %e, "cannot read the hub certificate's expiry"),
    }
}

/// Publishes [`SITE_CERTIFICATE_EXPIRY`] for an admitted site (and keeps it for `/status`).
pub fn set_site_certificate_expiry(site_alias: &str, not_after: std::time::SystemTime) {
    gauge!(SITE_CERTIFICATE_EXPIRY, "site" => site_alias.to_owned()).set(unix_seconds(not_after));
    site(site_alias).certificate(not_after);
}

/// Sets the hub-wide bytes of frames read and not yet handed on.
pub fn set_inbound_buffered_bytes(bytes: u64) {
    gauge!(INBOUND_BUFFERED_BYTES).set(bytes as f64);
}

fn unix_seconds(t: std::time::SystemTime) -> f64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use er_protocol::{BatchBuilder, Codec, RecordRef, TimestampType};

    fn batch(topic: &str, values: &[(Vec<u8>, Vec<u8>)]) -> (TopicPartition, DecodedRecords) {
        let tp = TopicPartition::new(topic, 0);
        let mut b = BatchBuilder::new(tp.clone(), 1);
        for (i, (k, v)) in values.iter().enumerate() {
            b.push(&RecordRef {
                offset: i as i64,
                timestamp: 0,
                timestamp_type: TimestampType::CreateTime,
                key: Some(k),
                value: Some(v),
                headers: &[],
                topic: None,
                partition: None,
            });
        }
        let batch = b.finish_and_reset(0, Codec::None, 1).unwrap();
        let recs = batch.decode_records(1 << 20).unwrap();
        (tp, recs)
    }

    fn hb(ts: i64) -> (Vec<u8>, Vec<u8>) {
        hb_from("plant-7", ts)
    }

    fn hb_from(site: &str, ts: i64) -> (Vec<u8>, Vec<u8>) {
        let h = Heartbeat {
            source_cluster_alias: site.into(),
            target_cluster_alias: "central".into(),
            timestamp: ts,
        };
        (h.encode_key().unwrap(), h.encode_value())
    }

    #[test]
    fn the_newest_heartbeat_of_the_site_in_the_heartbeats_topic_counts() {
        let a = batch(
            "heartbeats",
            &[hb(1_000), hb(3_000), hb_from("other", 5_000), hb(2_000)],
        );
        let b = batch("heartbeats", &[(b"junk".to_vec(), b"junk".to_vec())]);
        let c = batch("sensors", &[hb(9_000)]);
        let all = [&a, &b, &c];
        assert_eq!(
            newest_heartbeat_ms("plant-7", all.iter().map(|(tp, r)| (tp, r))),
            Some(3_000)
        );
        assert_eq!(
            newest_heartbeat_ms("plant-7", [(&c.0, &c.1)]),
            None,
            "other topics"
        );
        assert_eq!(
            newest_heartbeat_ms("plant-7", [(&b.0, &b.1)]),
            None,
            "undecodable"
        );
        assert_eq!(
            newest_heartbeat_ms("other", [(&a.0, &a.1)]),
            Some(5_000),
            "per site"
        );
    }

    #[test]
    fn lag_is_unknown_until_a_heartbeat_commits() {
        let m = site("metrics-unit-test-site");
        assert_eq!(m.lag_seconds(), None);
        m.heartbeat_committed(10_000, 12_500);
        assert_eq!(m.lag_seconds(), Some(2.5));
        m.committed(7, 2);
        m.checkpoint_round(3, 1);
        assert_eq!((m.records(), m.checkpoints()), (7, 3));
    }

    #[test]
    fn records_per_second_needs_a_sample_ten_to_thirty_seconds_old() {
        let m = site("metrics-unit-test-rate");
        m.sample(100_000);
        m.committed(50, 1);
        assert_eq!(
            m.snapshot(105_000).records_per_second,
            None,
            "5 s of history"
        );
        assert_eq!(m.snapshot(110_000).records_per_second, Some(5.0));
        m.sample(110_000);
        m.committed(30, 1);
        assert_eq!(
            m.snapshot(125_000).records_per_second,
            Some(2.0),
            "since the 110 s sample"
        );
        assert_eq!(
            m.snapshot(200_000).records_per_second,
            None,
            "history too old"
        );
        for i in 0..HISTORY_SAMPLES + 5 {
            m.sample(200_000 + i as i64 * 5_000);
        }
        let h = m.snapshot(0).history;
        assert_eq!(h.len(), HISTORY_SAMPLES, "bounded");
        assert_eq!(h.last().unwrap().records, 80);
        m.poison_records(1);
        m.transaction_failed();
        let s = m.snapshot(0);
        assert_eq!((s.poison_records, s.transactions_failed), (1, 1));
        assert!(s.last_failure_ms.is_some());
        assert_eq!(s.agent, None, "no report yet");
        m.agent_report(AgentFigures {
            lag_records: Some(12),
            ..Default::default()
        });
        m.sample(600_000);
        let s = m.snapshot(600_000);
        assert_eq!(s.agent.and_then(|a| a.1.lag_records), Some(12));
        assert_eq!(s.history.last().unwrap().lag_records, Some(12), "sampled");
    }
}
