//! The hub's telemetry as events, as the agent's (after vector's `internal_events`): each thing
//! worth counting is a struct whose `emit` writes its log line, updates its metric and the site's
//! figures ([`SiteMetrics`], what `/status` and the console read) together, so the three cannot
//! drift apart and a call site says once what happened.
//!
//! Metric names and the per-site handles are in [`crate::metrics`]; gauges that publish a state
//! (sites connected, shards owned, buffered bytes, offset index runs) are set there, and so are
//! the histograms a commit feeds per batch.

use std::net::SocketAddr;
use std::time::Duration;

use ::metrics::{counter, gauge, histogram};
use tracing::{debug, info, warn};

use crate::metrics::{self as m, SiteMetrics};

/// Why the hub refused a connection: the `reason` label of [`m::CONNECTIONS_REFUSED`] and what
/// the log line says.
#[derive(Debug)]
pub enum Refused<'a> {
    /// `limits.max_handshakes` handshakes were under way (the agent backs off and tries again).
    HandshakesBusy {
        /// The limit.
        max: usize,
    },
    /// The hub holds `limits.max_connections`.
    HubFull {
        /// The limit.
        max: usize,
    },
    /// The site holds `limits.max_connections_per_site` connections already.
    SiteFull {
        /// Its connections.
        held: usize,
        /// The limit.
        max: usize,
    },
    /// The TLS handshake failed (the verifier refused the certificate, or the client gave up).
    Handshake {
        /// The label [`er_net::handshake_refusal_reason`] gives.
        reason: &'static str,
        /// How the connection closed.
        error: Option<&'a quinn::ConnectionError>,
    },
    /// The certificate does not admit the connection (expired, revoked, not allowed...).
    Admission(&'a er_net::AdmissionError),
    /// No hello within `limits.hello_timeout_ms` of the handshake (the session's end is
    /// logged by its caller).
    NoHello,
}

impl Refused<'_> {
    /// The metric's `reason` label (one of [`m::REFUSAL_REASONS`]).
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::HandshakesBusy { .. } => "handshakes_busy",
            Refused::HubFull { .. } => "hub_full",
            Refused::SiteFull { .. } => "too_many_connections",
            Refused::Handshake { reason, .. } => reason,
            Refused::Admission(e) => e.reason(),
            Refused::NoHello => "no_hello",
        }
    }
}

/// A connection attempt was refused.
#[derive(Debug)]
pub struct ConnectionRefused<'a> {
    /// Where it came from.
    pub remote: SocketAddr,
    /// Why.
    pub why: Refused<'a>,
}

impl ConnectionRefused<'_> {
    /// Counts the refusal by reason and logs it: quietly for the load limits (a storm refuses
    /// thousands), as a warning for what an operator must look at.
    pub fn emit(self) {
        let reason = self.why.reason();
        debug_assert!(m::REFUSAL_REASONS.contains(&reason), "{reason}");
        counter!(m::CONNECTIONS_REFUSED, "reason" => reason).increment(1);
        let remote = self.remote;
        match self.why {
            Refused::HandshakesBusy { max } => {
                debug!(%remote, max, "refused connection for now: limits.max_handshakes under way")
            }
            Refused::HubFull { max } => {
                debug!(%remote, max, "refused connection: the hub holds limits.max_connections")
            }
            Refused::SiteFull { held, max } => warn!(
                %remote,
                held,
                max,
                "refused connection: the site holds limits.max_connections_per_site connections already"
            ),
            Refused::Handshake { reason, error } => warn!(
                %remote,
                reason,
                ?error,
                "refused connection: TLS handshake failed (client certificate missing, revoked, expired or not issued by the configured CA?)"
            ),
            Refused::Admission(e) => warn!(%remote, reason, error = %e, "refused connection"),
            Refused::NoHello => {
                debug!(%remote, "refused connection: no hello within limits.hello_timeout_ms")
            }
        }
    }
}

/// A connection attempt was asked to prove its address first (a QUIC Retry).
#[derive(Debug)]
pub struct RetrySent;

impl RetrySent {
    /// Counts the Retry.
    pub fn emit(self) {
        counter!(m::QUIC_RETRIES).increment(1);
    }
}

/// A site's session started (it was welcomed, or is about to be).
#[derive(Debug)]
pub struct SessionStarted;

impl SessionStarted {
    /// Counts the session.
    pub fn emit(self) {
        counter!(m::SESSIONS).increment(1);
    }
}

/// A site whose shard another hub owns was sent there.
#[derive(Debug)]
pub struct Redirected<'a> {
    /// The site's shard.
    pub shard: u32,
    /// The hub that owns it.
    pub owner: &'a str,
    /// Where the site was sent.
    pub addresses: &'a [String],
}

impl Redirected<'_> {
    /// Counts and logs the redirect.
    pub fn emit(self) {
        counter!(m::REDIRECTS).increment(1);
        info!(shard = self.shard, owner = %self.owner, addresses = ?self.addresses, "site belongs to another hub; redirecting");
    }
}

/// A resuming site was welcomed in 0.5-RTT, with the positions in memory.
#[derive(Debug)]
pub struct EarlyWelcome {
    /// Positions in the welcome.
    pub positions: usize,
}

impl EarlyWelcome {
    /// Counts and logs the welcome.
    pub fn emit(self) {
        counter!(m::EARLY_WELCOMES).increment(1);
        info!(
            positions = self.positions,
            "welcoming site in 0.5-RTT (resumed TLS session, positions in memory)"
        );
    }
}

/// A batch arrived from a site.
#[derive(Debug)]
pub struct BatchReceived<'a> {
    /// The site's figures.
    pub site: &'a SiteMetrics,
    /// Its source partition.
    pub tp: &'a er_protocol::TopicPartition,
    /// Its sequence number.
    pub seq: u64,
    /// Records in it (as the site says).
    pub records: u32,
    /// Its compressed bytes.
    pub bytes: usize,
}

impl BatchReceived<'_> {
    /// Counts the batch's bytes for the site.
    pub fn emit(self) {
        debug!(tp = %self.tp, seq = self.seq, records = self.records, "batch");
        self.site.batch_received(self.bytes);
    }
}

/// Phases of one transaction: begin + produce, flush + delivery reports, index + commit.
#[derive(Debug, Clone, Copy, Default)]
pub struct TxnTiming {
    /// Producing its records.
    pub produce: Duration,
    /// Flushing them.
    pub flush: Duration,
    /// Committing.
    pub commit: Duration,
}

/// A writer's transaction committed.
#[derive(Debug)]
pub struct TransactionCommitted<'a> {
    /// The central cluster.
    pub cluster: &'a str,
    /// The writer.
    pub writer: usize,
    /// Batches in it.
    pub batches: usize,
    /// Records it wrote to their destinations.
    pub records: u64,
    /// Begin to commit.
    pub elapsed: Duration,
    /// Where the time went.
    pub timing: TxnTiming,
    /// Each site's share: its figures, records written to their topics and batches.
    pub sites: &'a [(&'a SiteMetrics, u64, usize)],
}

impl TransactionCommitted<'_> {
    /// Records the duration, counts each site's records and batches, logs the commit.
    pub fn emit(self) {
        histogram!(m::TRANSACTION_SECONDS).record(self.elapsed.as_secs_f64());
        for (site, records, batches) in self.sites {
            site.committed(*records, *batches);
        }
        let t = self.timing;
        debug!(
            cluster = %self.cluster,
            writer = self.writer,
            batches = self.batches,
            records = self.records,
            elapsed_ms = self.elapsed.as_millis() as u64,
            produce_ms = t.produce.as_millis() as u64,
            flush_ms = t.flush.as_millis() as u64,
            commit_ms = t.commit.as_millis() as u64,
            "transaction committed"
        );
    }
}

/// A writer's transaction failed or was aborted: nothing of it is visible.
#[derive(Debug)]
pub struct TransactionFailed<'a> {
    /// The central cluster.
    pub cluster: &'a str,
    /// The writer.
    pub writer: usize,
    /// Batches in it.
    pub batches: usize,
    /// The sites with batches in it (each once).
    pub sites: &'a [&'a SiteMetrics],
    /// What failed.
    pub error: &'a crate::sink::WriteError,
}

impl TransactionFailed<'_> {
    /// Counts the failure for each site in it and logs it.
    pub fn emit(self) {
        for site in self.sites {
            site.transaction_failed();
        }
        warn!(
            cluster = %self.cluster,
            writer = self.writer,
            batches = self.batches,
            sites = self.sites.len(),
            error = %self.error,
            "transaction failed; nothing of it is visible"
        );
    }
}

/// Records of one batch went to the site's dead-letter topic instead of their destination
/// (logged once per batch: a topic that cannot be created sends every record of it there).
#[derive(Debug)]
pub struct PoisonRecords<'a> {
    /// The site's figures.
    pub site: &'a SiteMetrics,
    /// The central cluster.
    pub cluster: &'a str,
    /// How many.
    pub records: u64,
    /// Offset of the first.
    pub first_offset: i64,
    /// Where the first should have gone.
    pub destination: &'a str,
    /// Why it could not.
    pub reason: &'a str,
}

impl PoisonRecords<'_> {
    /// Counts the records for the site and logs the first.
    pub fn emit(self) {
        self.site.poison_records(self.records);
        warn!(
            site = %self.site.alias(),
            cluster = self.cluster,
            records = self.records,
            first_offset = self.first_offset,
            destination = self.destination,
            reason = self.reason,
            "poison records: written to the site's dead-letter topic instead (er_hub_poison_records_total)"
        );
    }
}

/// Newly owned shards were read from Kafka and their sites installed.
#[derive(Debug)]
pub struct ShardsLoaded {
    /// Shards this hub has loaded now.
    pub shards: usize,
    /// How long the load took.
    pub elapsed: Duration,
}

impl ShardsLoaded {
    /// Counts the load and its time, logs it.
    pub fn emit(self) {
        counter!(m::SHARD_LOADS).increment(1);
        gauge!(m::SHARD_LOAD_SECONDS).increment(self.elapsed.as_secs_f64());
        info!(
            shards = self.shards,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "owned shards loaded"
        );
    }
}

/// A checkpoint round did something for a site on a cluster.
#[derive(Debug)]
pub struct CheckpointRound<'a> {
    /// The site's figures.
    pub site: &'a SiteMetrics,
    /// The central cluster.
    pub cluster: &'a str,
    /// What the round did.
    pub round: &'a crate::checkpoints::Round,
}

impl CheckpointRound<'_> {
    /// Counts the checkpoints and offset syncs written for the site, logs the round.
    pub fn emit(self) {
        let r = self.round;
        self.site.checkpoint_round(r.checkpoints, r.offset_syncs);
        debug!(site = %self.site.alias(), cluster = self.cluster, checkpoints = r.checkpoints, offset_syncs = r.offset_syncs, group_commits = r.group_commits, groups_active = r.groups_active, pending = r.pending, "checkpoint round");
    }
}

/// The hub wrote a heartbeat of a quiet site to a cluster for it.
#[derive(Debug)]
pub struct HeartbeatRelayed<'a> {
    /// The site.
    pub site: &'a str,
    /// The central cluster.
    pub cluster: &'a str,
}

impl HeartbeatRelayed<'_> {
    /// Counts the heartbeat by cluster.
    pub fn emit(self) {
        counter!(m::HEARTBEATS_RELAYED, "cluster" => self.cluster.to_owned()).increment(1);
        debug!(
            site = self.site,
            cluster = self.cluster,
            "heartbeat relayed"
        );
    }
}

/// A downlink batch went down to a site.
#[derive(Debug)]
pub struct DownlinkSent<'a> {
    /// The site.
    pub site: &'a str,
    /// Records in the batch.
    pub records: u32,
    /// Its payload bytes.
    pub bytes: u64,
}

impl DownlinkSent<'_> {
    /// Counts the batch's records and bytes.
    pub fn emit(self) {
        counter!(m::DOWNLINK_RECORDS_SENT).increment(self.records.into());
        counter!(m::DOWNLINK_BYTES_SENT).increment(self.bytes);
        debug!(
            site = self.site,
            records = self.records,
            bytes = self.bytes,
            "downlink batch sent"
        );
    }
}

/// Remote topics were created (at discovery, from a site's topic report).
#[derive(Debug)]
pub struct TopicsCreated<'a> {
    /// The site.
    pub site: &'a str,
    /// The central cluster.
    pub cluster: &'a str,
    /// How many.
    pub created: usize,
}

impl TopicsCreated<'_> {
    /// Counts the topics for the site.
    pub fn emit(self) {
        if self.created == 0 {
            return;
        }
        counter!(m::TOPICS_CREATED, "site" => self.site.to_owned()).increment(self.created as u64);
        info!(
            site = self.site,
            cluster = self.cluster,
            created = self.created,
            "remote topics created from the site's report"
        );
    }
}

/// A remote topic's configs were changed to follow its edge topic.
#[derive(Debug)]
pub struct TopicConfigsChanged<'a, T: std::fmt::Debug> {
    /// The site.
    pub site: &'a str,
    /// The central cluster.
    pub cluster: &'a str,
    /// The remote topic.
    pub topic: &'a str,
    /// The changes.
    pub changes: &'a [T],
}

impl<T: std::fmt::Debug> TopicConfigsChanged<'_, T> {
    /// Counts the changes for the site and logs them.
    pub fn emit(self) {
        counter!(m::TOPIC_CONFIG_CHANGES, "site" => self.site.to_owned())
            .increment(self.changes.len() as u64);
        info!(site = self.site, cluster = self.cluster, topic = self.topic, changes = ?self.changes, "remote topic configs synced from the edge");
    }
}

/// ACL bindings were created on a site's remote topics.
#[derive(Debug)]
pub struct TopicAclsCreated<'a> {
    /// The site.
    pub site: &'a str,
    /// The central cluster.
    pub cluster: &'a str,
    /// How many.
    pub bindings: usize,
}

impl TopicAclsCreated<'_> {
    /// Counts the bindings for the site and logs them.
    pub fn emit(self) {
        if self.bindings == 0 {
            return;
        }
        counter!(m::TOPIC_ACLS_CREATED, "site" => self.site.to_owned())
            .increment(self.bindings as u64);
        info!(
            site = self.site,
            cluster = self.cluster,
            bindings = self.bindings,
            "remote topic ACLs synced from the edge"
        );
    }
}

/// A site reported its edge ACL bindings; the hub kept some.
#[derive(Debug)]
pub struct TopicAclsReported<'a> {
    /// The site.
    pub site: &'a str,
    /// Bindings reported.
    pub reported: usize,
    /// Bindings kept (to be created).
    pub admitted: usize,
    /// Bindings refused (outside what `acl_sync` lets a site grant).
    pub refused: usize,
    /// Bindings beyond `acl_sync.max_per_site`.
    pub over_limit: usize,
    /// That limit.
    pub max: usize,
}

impl TopicAclsReported<'_> {
    /// Counts the refused bindings for the site; warns when the site reports too many.
    pub fn emit(self) {
        let refused = self.refused + self.over_limit;
        if refused > 0 {
            counter!(m::TOPIC_ACLS_REFUSED, "site" => self.site.to_owned())
                .increment(refused as u64);
        }
        if self.over_limit > 0 {
            warn!(
                over = self.over_limit,
                max = self.max,
                "the site reports more ACL bindings than acl_sync.max_per_site; the rest are not created"
            );
        }
        debug!(
            reported = self.reported,
            admitted = self.admitted,
            refused = self.refused,
            "topic ACLs reported"
        );
    }
}

/// A site's report for the topic syncer was dropped at its full queue (the agent sends it
/// again).
#[derive(Debug)]
pub struct TopicReportDropped {
    /// What the report held: "topics" or "ACLs".
    pub of: &'static str,
}

impl TopicReportDropped {
    /// Counts and logs the drop.
    pub fn emit(self) {
        counter!(m::TOPIC_REPORTS_DROPPED).increment(1);
        warn!(
            of = self.of,
            "the topic syncer's queue is full; this report of the site's {} is dropped (the agent sends it again)",
            self.of
        );
    }
}

#[cfg(test)]
mod tests {
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    /// The value of the sample `series` (name and labels as rendered) in Prometheus text.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn one_emit_updates_the_metric_and_the_site_figures_together() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let site = ::metrics::with_local_recorder(&recorder, || {
            let site = SiteMetrics::new("store-7");
            let sites = [(&*site, 40, 2), (&*site, 2, 1)];
            TransactionCommitted {
                cluster: "central",
                writer: 0,
                batches: 3,
                records: 42,
                elapsed: Duration::from_millis(30),
                timing: TxnTiming::default(),
                sites: &sites,
            }
            .emit();
            TransactionFailed {
                cluster: "central",
                writer: 1,
                batches: 1,
                sites: &[&site],
                error: &crate::sink::WriteError::SessionFailed,
            }
            .emit();
            PoisonRecords {
                site: &site,
                cluster: "central",
                records: 3,
                first_offset: 17,
                destination: "store-7.orders",
                reason: "record too large",
            }
            .emit();
            CheckpointRound {
                site: &site,
                cluster: "central",
                round: &crate::checkpoints::Round {
                    checkpoints: 5,
                    offset_syncs: 2,
                    ..Default::default()
                },
            }
            .emit();
            for why in [
                Refused::HubFull { max: 1 },
                Refused::HubFull { max: 1 },
                Refused::NoHello,
            ] {
                ConnectionRefused {
                    remote: "127.0.0.1:4000".parse().unwrap(),
                    why,
                }
                .emit();
            }
            site
        });
        let text = handle.render();
        let snap = site.snapshot(m::now_ms());
        let label = "{site=\"store-7\"}";
        for (name, figure) in [
            (m::RECORDS_WRITTEN, snap.records),
            (m::BATCHES_COMMITTED, 3),
            (m::TRANSACTIONS_FAILED, snap.transactions_failed),
            (m::POISON_RECORDS, snap.poison_records),
            (m::CHECKPOINTS_WRITTEN, site.checkpoints()),
            (m::OFFSET_SYNCS_WRITTEN, 2),
        ] {
            let series = format!("{name}{label}");
            assert_eq!(
                sample(&text, &series),
                Some(figure as f64),
                "{series} in\n{text}"
            );
        }
        assert_eq!(snap.records, 42);
        assert_eq!(snap.transactions_failed, 1);
        assert_eq!(snap.poison_records, 3);
        assert_eq!(site.checkpoints(), 5);
        assert!(snap.last_commit_ms.is_some() && snap.last_failure_ms.is_some());
        assert_eq!(
            sample(
                &text,
                &format!("{}{{reason=\"hub_full\"}}", m::CONNECTIONS_REFUSED)
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                &format!("{}{{reason=\"no_hello\"}}", m::CONNECTIONS_REFUSED)
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, &format!("{}_count", m::TRANSACTION_SECONDS)),
            Some(1.0),
            "{text}"
        );
    }
}
