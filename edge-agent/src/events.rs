//! The agent's telemetry as events, after vector's `internal_events`: each thing worth counting is
//! a struct whose `emit` updates its log line, its metric and its [`Stats`] counter together, so
//! the three cannot drift apart and a call site says once what happened. Metric names are in
//! [`crate::metrics`]; `Stats` is what `/status` and the quickstart read without an endpoint.
//!
//! The per-record count of records read stays a pre-registered counter in `source.rs` (hot path).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::metrics::{counter, gauge};
use er_protocol::TopicPartition;
use tracing::{debug, error, info};

use crate::Stats;
use crate::metrics as m;

/// The hub answered a connection attempt (after the handshake, or with a 0-RTT hello).
#[derive(Debug)]
pub struct Connected<'a> {
    /// The configured or redirected hub entry.
    pub hub: &'a str,
    /// Its address.
    pub addr: SocketAddr,
    /// Whether the hello went as 0-RTT data.
    pub zero_rtt: bool,
}

impl Connected<'_> {
    /// Counts a connect (a reconnect after the first) and logs it.
    pub fn emit(self, stats: &Stats) {
        let before = stats.connects.fetch_add(1, Ordering::Relaxed);
        counter!(m::CONNECTS).increment(1);
        if before > 0 {
            counter!(m::RECONNECTS).increment(1);
        }
        info!(hub = self.hub, addr = %self.addr, zero_rtt = self.zero_rtt, "connected to hub");
    }
}

/// The hub welcomed the session: records flow.
#[derive(Debug)]
pub struct LinkUp;

impl LinkUp {
    /// Marks the link up in the gauge and in the health state.
    pub fn emit(self, stats: &Stats) {
        gauge!(m::LINK_UP).set(1.0);
        stats.link.up();
    }
}

/// A session ended, however it ended: nothing is in flight any more.
#[derive(Debug)]
pub struct SessionEnded;

impl SessionEnded {
    /// Zeroes the link and in-flight gauges (the health state says why in its own step).
    pub fn emit(self) {
        gauge!(m::LINK_UP).set(0.0);
        gauge!(m::INFLIGHT_BYTES).set(0.0);
    }
}

/// A hub that does not serve this site sent the agent elsewhere.
#[derive(Debug)]
pub struct Redirected<'a> {
    /// The hub entry that redirected.
    pub hub: &'a str,
    /// Its address.
    pub addr: SocketAddr,
    /// Where it sent the agent.
    pub to: &'a [String],
    /// Why, in the hub's words.
    pub reason: &'a str,
}

impl Redirected<'_> {
    /// Counts and logs the redirect.
    pub fn emit(self, stats: &Stats) {
        stats.redirects.fetch_add(1, Ordering::Relaxed);
        counter!(m::REDIRECTS).increment(1);
        info!(hub = self.hub, addr = %self.addr, to = ?self.to, reason = self.reason, "the hub sent us to other hubs");
    }
}

/// A connection attempt got no answer at all (the summary log line is the caller's: it is
/// rate-limited over many probes).
#[derive(Debug)]
pub struct ProbeUnanswered;

impl ProbeUnanswered {
    /// Counts the probe.
    pub fn emit(self) {
        counter!(m::PROBES_UNANSWERED).increment(1);
    }
}

/// A batch went to the hub.
#[derive(Debug)]
pub struct BatchSent<'a> {
    /// Its source partition.
    pub tp: &'a TopicPartition,
    /// Its sequence number.
    pub seq: u64,
    /// Records in it.
    pub records: u64,
    /// Its encoded (compressed) bytes.
    pub bytes: u64,
}

impl BatchSent<'_> {
    /// Counts the batch, its records (by topic) and bytes.
    pub fn emit(self, stats: &Stats) {
        debug!(tp = %self.tp, seq = self.seq, records = self.records, bytes = self.bytes, "sending batch");
        stats
            .records_sent
            .fetch_add(self.records, Ordering::Relaxed);
        stats.bytes_sent.fetch_add(self.bytes, Ordering::Relaxed);
        counter!(m::RECORDS_SENT, "topic" => self.tp.topic.clone()).increment(self.records);
        counter!(m::BYTES_SENT).increment(self.bytes);
        counter!(m::BATCHES_SENT).increment(1);
    }
}

/// The hub committed a batch.
#[derive(Debug)]
pub struct BatchAcked<'a> {
    /// Its source partition.
    pub tp: &'a TopicPartition,
    /// Its sequence number.
    pub seq: u64,
    /// The source offset the partition resumes at.
    pub next_offset: i64,
}

impl BatchAcked<'_> {
    /// Counts the ack.
    pub fn emit(self, stats: &Stats) {
        debug!(tp = %self.tp, seq = self.seq, next_offset = self.next_offset, "acked");
        stats.batches_acked.fetch_add(1, Ordering::Relaxed);
        counter!(m::BATCHES_ACKED).increment(1);
    }
}

/// The hub stopped a partition at a record it cannot write.
#[derive(Debug)]
pub struct PartitionStopped<'a> {
    /// The partition.
    pub tp: &'a TopicPartition,
    /// The batch it stopped in.
    pub seq: u64,
    /// The offset of the record it cannot write.
    pub offset: i64,
    /// Why, in the hub's words.
    pub reason: &'a str,
}

impl PartitionStopped<'_> {
    /// Counts (by topic) and logs the stop.
    pub fn emit(self) {
        error!(tp = %self.tp, seq = self.seq, offset = self.offset, reason = self.reason, "the hub stopped the partition at a record it cannot write; it is read again from there on the next connection");
        counter!(m::PARTITIONS_STOPPED, "topic" => self.tp.topic.clone()).increment(1);
    }
}

/// A round-trip time sample of the QUIC connection.
#[derive(Debug)]
pub struct RttSampled(pub Duration);

impl RttSampled {
    /// Sets the RTT gauge and the health state's RTT.
    pub fn emit(self, stats: &Stats) {
        let Self(rtt) = self;
        debug!(rtt_ms = rtt.as_secs_f64() * 1e3, "rtt");
        gauge!(m::RTT_SECONDS).set(rtt.as_secs_f64());
        stats.link.rtt(rtt);
    }
}

/// Time the lanes waited for the rate limit's tokens.
#[derive(Debug)]
pub struct RateLimitWaited(pub Duration);

impl RateLimitWaited {
    /// Adds the wait to its total.
    pub fn emit(self) {
        gauge!(m::RATE_LIMIT_WAIT_SECONDS).increment(self.0.as_secs_f64());
    }
}

/// The edge consumer-group offsets went to the hub.
#[derive(Debug)]
pub struct GroupReportSent;

impl GroupReportSent {
    /// Counts the report.
    pub fn emit(self, stats: &Stats) {
        stats.group_reports_sent.fetch_add(1, Ordering::Relaxed);
        counter!(m::GROUP_REPORTS_SENT).increment(1);
    }
}

/// A downlink transaction committed central records (and their positions) at the edge.
#[derive(Debug)]
pub struct DownlinkCommitted {
    /// Records written.
    pub records: u64,
    /// Payload bytes of the batches it held.
    pub bytes: u64,
}

impl DownlinkCommitted {
    /// Counts the transaction, its records and bytes.
    pub fn emit(self) {
        counter!(m::DOWNLINK_TRANSACTIONS).increment(1);
        counter!(m::DOWNLINK_RECORDS).increment(self.records);
        counter!(m::DOWNLINK_BYTES).increment(self.bytes);
    }
}

/// A heartbeat record was written to the edge cluster.
#[derive(Debug)]
pub struct HeartbeatSent;

impl HeartbeatSent {
    /// Counts the heartbeat.
    pub fn emit(self, stats: &Stats) {
        stats.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
        counter!(m::HEARTBEATS_SENT).increment(1);
    }
}

/// A route's plugin chain ran over a partition's held records.
#[derive(Debug)]
pub struct ChainRan {
    /// Source records that produced no output.
    pub dropped: u64,
    /// Records a plugin failed (skipped or dead-lettered by the policy).
    pub failed: u64,
}

impl ChainRan {
    /// Counts what the chain dropped and failed (the plugin metrics are published from the
    /// plugins' own counters, see [`crate::metrics::publish_plugin_stats`]).
    pub fn emit(self, stats: &Stats) {
        stats
            .records_dropped_by_plugins
            .fetch_add(self.dropped, Ordering::Relaxed);
        stats
            .plugin_record_failures
            .fetch_add(self.failed, Ordering::Relaxed);
    }
}

/// A route stopped on a plugin failure (policy `stop`); its partition waits and retries.
#[derive(Debug)]
pub struct RouteStopped<'a> {
    /// The route.
    pub route: &'a str,
    /// What failed.
    pub error: &'a crate::routes::chain::RouteStopped,
    /// When the partition retries.
    pub retry: Duration,
}

impl RouteStopped<'_> {
    /// Counts (by route) and logs the stop.
    pub fn emit(self, stats: &Stats) {
        stats.route_stops.fetch_add(1, Ordering::Relaxed);
        counter!(m::ROUTE_STOPS, "route" => self.route.to_owned()).increment(1);
        error!(
            error = %self.error,
            retry_in_ms = self.retry.as_millis() as u64,
            "route stopped by a plugin failure; its partition waits (nothing is lost) and retries"
        );
    }
}

/// A topic the patterns select is not replicated, because replicating it would loop or it is
/// internal (said once per topic: the caller remembers which it said).
#[derive(Debug)]
pub struct TopicSkipped<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The `reason` label.
    pub reason: &'static str,
}

impl TopicSkipped<'_> {
    /// Counts (by reason) and logs the skip.
    pub fn emit(self) {
        info!(
            topic = self.topic,
            reason = self.reason,
            "topic not replicated: its name says it came from a destination cluster or from this site (replicating it would loop), or it is internal under the replication policy"
        );
        counter!(m::TOPICS_SKIPPED, "reason" => self.reason).increment(1);
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
    fn one_emit_updates_the_metric_and_the_stats_together() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let stats = Stats::default();
        let tp = TopicPartition::new("orders", 2);
        ::metrics::with_local_recorder(&recorder, || {
            for _ in 0..2 {
                Connected {
                    hub: "hub.example.com:7000",
                    addr: "127.0.0.1:7000".parse().unwrap(),
                    zero_rtt: false,
                }
                .emit(&stats);
            }
            BatchSent {
                tp: &tp,
                seq: 0,
                records: 10,
                bytes: 300,
            }
            .emit(&stats);
            BatchAcked {
                tp: &tp,
                seq: 0,
                next_offset: 10,
            }
            .emit(&stats);
            RttSampled(Duration::from_millis(25)).emit(&stats);
            LinkUp.emit(&stats);
            HeartbeatSent.emit(&stats);
            GroupReportSent.emit(&stats);
        });
        let text = handle.render();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
        for (series, stat) in [
            (m::CONNECTS.to_owned(), load(&stats.connects)),
            (
                format!("{}{{topic=\"orders\"}}", m::RECORDS_SENT),
                load(&stats.records_sent),
            ),
            (m::BYTES_SENT.to_owned(), load(&stats.bytes_sent)),
            (m::BATCHES_ACKED.to_owned(), load(&stats.batches_acked)),
            (m::HEARTBEATS_SENT.to_owned(), load(&stats.heartbeats_sent)),
            (
                m::GROUP_REPORTS_SENT.to_owned(),
                load(&stats.group_reports_sent),
            ),
        ] {
            assert_eq!(sample(&text, &series), Some(stat), "{series} in\n{text}");
        }
        assert_eq!(load(&stats.connects), 2.0);
        assert_eq!(load(&stats.records_sent), 10.0);
        assert_eq!(sample(&text, m::RECONNECTS), Some(1.0), "{text}");
        assert_eq!(sample(&text, m::BATCHES_SENT), Some(1.0), "{text}");
        assert_eq!(sample(&text, m::LINK_UP), Some(1.0), "{text}");
        assert_eq!(sample(&text, m::RTT_SECONDS), Some(0.025), "{text}");
        let link = stats.link.snapshot();
        assert_eq!(link.rtt_ms, Some(25.0));
        assert_eq!(link.state, crate::health::LinkState::Up);
    }
}
