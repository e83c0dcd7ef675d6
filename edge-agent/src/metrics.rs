//! The agent's Prometheus metrics: every name, unit and label is declared here, and served on
//! `[metrics] listen` at `/metrics`.
//!
//! Without `[metrics] listen` no recorder is installed and every update is a no-op. Handles taken
//! before [`install`] stay no-ops, so the binary installs first and runs the agent after.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use er_protocol::TopicPartition;
use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};

/// Records read from the edge cluster (read again after a reconnect counts again).
pub const RECORDS_READ: &str = "er_agent_records_read_total";
/// Records sent to the hub, by source topic (`topic`).
pub const RECORDS_SENT: &str = "er_agent_records_sent_total";
/// Compressed batch bytes sent to the hub.
pub const BYTES_SENT: &str = "er_agent_bytes_sent_total";
/// Batches sent to the hub.
pub const BATCHES_SENT: &str = "er_agent_batches_sent_total";
/// Batches the hub acknowledged as committed.
pub const BATCHES_ACKED: &str = "er_agent_batches_acked_total";
/// 1 while a session with the hub is established (welcomed), else 0.
pub const LINK_UP: &str = "er_agent_link_up";
/// QUIC connections established.
pub const CONNECTS: &str = "er_agent_connects_total";
/// Connections established after the first one.
pub const RECONNECTS: &str = "er_agent_reconnects_total";
/// Redirects received from hubs that do not serve this site.
pub const REDIRECTS: &str = "er_agent_redirects_total";
/// Connection attempts the hub never answered (link or hub host down).
pub const PROBES_UNANSWERED: &str = "er_agent_connect_probes_unanswered_total";
/// Latest round-trip time to the hub.
pub const RTT_SECONDS: &str = "er_agent_rtt_seconds";
/// Compressed bytes sent and not yet acknowledged.
pub const INFLIGHT_BYTES: &str = "er_agent_inflight_bytes";
/// Records given to a plugin (`route`, `plugin`).
pub const PLUGIN_RECORDS_IN: &str = "er_agent_plugin_records_in_total";
/// Records a plugin kept or produced (`route`, `plugin`).
pub const PLUGIN_RECORDS_OUT: &str = "er_agent_plugin_records_out_total";
/// Records a plugin dropped (`route`, `plugin`).
pub const PLUGIN_RECORDS_DROPPED: &str = "er_agent_plugin_records_dropped_total";
/// Failed plugin calls and records (`route`, `plugin`).
pub const PLUGIN_ERRORS: &str = "er_agent_plugin_errors_total";
/// Time spent in plugin calls (`route`, `plugin`). Monotone, exposed as a gauge because the
/// `metrics` facade has only integer counters.
pub const PLUGIN_SECONDS: &str = "er_agent_plugin_seconds_total";
/// Times a route stopped on a plugin failure (`route`).
pub const ROUTE_STOPS: &str = "er_agent_route_stops_total";
/// Partitions the hub stopped at a record it cannot write (`topic`); each waits for the next
/// connection.
pub const PARTITIONS_STOPPED: &str = "er_agent_partitions_stopped_total";
/// Heartbeat records written to the edge cluster.
pub const HEARTBEATS_SENT: &str = "er_agent_heartbeats_sent_total";
/// Consumer-group offset reports sent to the hub.
pub const GROUP_REPORTS_SENT: &str = "er_agent_group_reports_sent_total";
/// Edge high watermark minus the position the hub last acknowledged (`topic`, `partition`).
pub const REPLICATION_LAG_RECORDS: &str = "er_agent_replication_lag_records";
/// Records edge retention deleted before the hub committed them (`topic`, `partition`).
pub const RETENTION_GAP_RECORDS: &str = "er_agent_retention_gap_records_total";
/// Retention gaps found (a run of lost records in one partition; one that grows counts once).
pub const RETENTION_GAPS: &str = "er_agent_retention_gaps_total";
/// Time a batch waited for `hub.max_bytes_per_sec` although the in-flight budget allowed it.
/// Monotone, exposed as a gauge because the `metrics` facade has only integer counters.
pub const RATE_LIMIT_WAIT_SECONDS: &str = "er_agent_rate_limit_wait_seconds_total";
/// The configured `hub.max_bytes_per_sec` (absent when unlimited).
pub const RATE_LIMIT_BYTES_PER_SECOND: &str = "er_agent_rate_limit_bytes_per_second";
/// notAfter of the agent's own client certificate, Unix seconds (alert well before it is near).
pub const CERTIFICATE_EXPIRY: &str = "er_agent_certificate_expiry_timestamp_seconds";
/// Edge topics the include patterns select but the agent never replicates (`reason`:
/// `from_destination`, `from_site`, `internal`); each topic counts once per process.
pub const TOPICS_SKIPPED: &str = "er_agent_topics_skipped_total";
/// Configuration reloads (SIGHUP) by `result`: `applied` or `refused` (invalid; the running
/// configuration stayed).
pub const CONFIG_RELOADS: &str = "er_agent_config_reloads_total";
/// Central records written into the edge cluster by downlink transactions.
pub const DOWNLINK_RECORDS: &str = "er_agent_downlink_records_total";
/// Downlink batch payload bytes committed into the edge cluster.
pub const DOWNLINK_BYTES: &str = "er_agent_downlink_bytes_total";
/// Downlink transactions committed at the edge.
pub const DOWNLINK_TRANSACTIONS: &str = "er_agent_downlink_transactions_total";
/// Always 1; the `version` label carries the agent's version.
pub const BUILD_INFO: &str = "er_build_info";

/// How often plugin counters are published.
pub const PLUGIN_PUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// How often edge watermarks are fetched for the replication lag.
pub const LAG_INTERVAL: Duration = Duration::from_secs(5);

pub use er_net::metrics::MetricsError;

/// The HTTP endpoints of this process once [`install`] ran; [`crate::run`] registers the
/// readiness and status answers there (`crate::health`).
static ENDPOINTS: OnceLock<Arc<er_net::status::Endpoints>> = OnceLock::new();

/// Installs the Prometheus recorder with an HTTP server on `addr` (`/metrics`, `/healthz`,
/// `/readyz`, `/status`) and publishes build info. Call it once per process, inside a tokio
/// runtime, before the agent runs.
pub fn install(addr: SocketAddr) -> Result<(), MetricsError> {
    let endpoints = er_net::metrics::serve_prometheus(addr, &[])?;
    let _ = ENDPOINTS.set(endpoints);
    describe();
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!(LINK_UP).set(0.0);
    // Served from the start: a report goes only when a group's offsets moved, so an agent
    // whose groups never move would otherwise never show the counter its alerts watch.
    counter!(GROUP_REPORTS_SENT).increment(0);
    Ok(())
}

/// Publishes [`CERTIFICATE_EXPIRY`] from the certificate file the agent presents. An unreadable
/// file is logged (the QUIC client setup has already read it, so this is rare).
pub fn set_certificate_expiry(cert: &std::path::Path) {
    match er_net::certificate_not_after(cert) {
        Ok(not_after) => {
            let at = unix_seconds(not_after);
            gauge!(CERTIFICATE_EXPIRY).set(at);
            CERTIFICATE_NOT_AFTER.store(at as i64, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the client certificate's expiry"),
    }
}

/// notAfter of the agent's certificate as last published, Unix seconds; `i64::MIN` until then.
static CERTIFICATE_NOT_AFTER: AtomicI64 = AtomicI64::new(i64::MIN);
/// Records lost to edge retention since the process started (for `/status`).
static RETENTION_GAP_RECORDS_NOW: AtomicU64 = AtomicU64::new(0);

/// notAfter of the agent's certificate, Unix seconds, once [`set_certificate_expiry`] read it.
pub fn certificate_not_after() -> Option<i64> {
    Some(CERTIFICATE_NOT_AFTER.load(Ordering::Relaxed)).filter(|t| *t != i64::MIN)
}

/// Records lost to edge retention since the process started, over all partitions.
pub fn retention_gap_records() -> u64 {
    RETENTION_GAP_RECORDS_NOW.load(Ordering::Relaxed)
}

fn unix_seconds(t: std::time::SystemTime) -> f64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// The endpoints [`install`] started, if it ran.
pub fn endpoints() -> Option<&'static er_net::status::Endpoints> {
    ENDPOINTS.get().map(|e| &**e)
}

fn describe() {
    describe_link_and_records();
    describe_plugins_and_health();
}

/// The certificate, the records and batches sent, and the link to the hub.
fn describe_link_and_records() {
    describe_gauge!(
        CERTIFICATE_EXPIRY,
        Unit::Seconds,
        "notAfter of the agent's client certificate, Unix seconds."
    );
    describe_counter!(RECORDS_READ, "Records read from the edge cluster.");
    describe_counter!(RECORDS_SENT, "Records sent to the hub, by source topic.");
    describe_counter!(
        BYTES_SENT,
        Unit::Bytes,
        "Compressed batch bytes sent to the hub."
    );
    describe_counter!(BATCHES_SENT, "Batches sent to the hub.");
    describe_counter!(BATCHES_ACKED, "Batches the hub acknowledged as committed.");
    describe_gauge!(LINK_UP, "1 while a session with the hub is established.");
    describe_counter!(CONNECTS, "Connections to the hub established.");
    describe_counter!(RECONNECTS, "Connections established after the first one.");
    describe_counter!(
        REDIRECTS,
        "Redirects received from hubs that do not serve this site."
    );
    describe_counter!(
        PROBES_UNANSWERED,
        "Connection attempts the hub never answered (link or hub host down)."
    );
    describe_gauge!(
        RTT_SECONDS,
        Unit::Seconds,
        "Latest round-trip time to the hub."
    );
    describe_gauge!(
        INFLIGHT_BYTES,
        Unit::Bytes,
        "Compressed bytes sent and not yet acknowledged."
    );
}

/// Plugins, routes, heartbeats and group reports, lag and losses, limits, build and reloads.
fn describe_plugins_and_health() {
    describe_counter!(PLUGIN_RECORDS_IN, "Records given to a plugin.");
    describe_counter!(PLUGIN_RECORDS_OUT, "Records a plugin kept or produced.");
    describe_counter!(PLUGIN_RECORDS_DROPPED, "Records a plugin dropped.");
    describe_counter!(PLUGIN_ERRORS, "Failed plugin calls and records.");
    describe_gauge!(
        PLUGIN_SECONDS,
        Unit::Seconds,
        "Time spent in plugin calls (monotone)."
    );
    describe_counter!(ROUTE_STOPS, "Times a route stopped on a plugin failure.");
    describe_counter!(
        PARTITIONS_STOPPED,
        "Partitions the hub stopped at a record it cannot write; each waits for the next connection."
    );
    describe_counter!(HEARTBEATS_SENT, "Heartbeats written to the edge cluster.");
    describe_counter!(GROUP_REPORTS_SENT, "Consumer-group offset reports sent.");
    describe_counter!(
        DOWNLINK_RECORDS,
        "Central records written into the edge cluster by downlink transactions."
    );
    describe_counter!(
        DOWNLINK_BYTES,
        "Downlink batch payload bytes committed into the edge cluster."
    );
    describe_counter!(
        DOWNLINK_TRANSACTIONS,
        "Downlink transactions committed at the edge."
    );
    describe_gauge!(
        REPLICATION_LAG_RECORDS,
        "Edge high watermark minus the last position the hub committed."
    );
    describe_counter!(
        RETENTION_GAP_RECORDS,
        "Records edge retention deleted before the hub committed them (lost)."
    );
    describe_counter!(
        RETENTION_GAPS,
        "Retention gaps found (runs of lost records in one partition)."
    );
    describe_gauge!(
        RATE_LIMIT_WAIT_SECONDS,
        Unit::Seconds,
        "Time a batch waited for the rate limit (monotone)."
    );
    describe_gauge!(
        RATE_LIMIT_BYTES_PER_SECOND,
        Unit::Bytes,
        "Configured cap of compressed batch bytes sent per second."
    );
    describe_counter!(
        TOPICS_SKIPPED,
        "Selected edge topics never replicated (loops, internal names), by reason."
    );
    describe_gauge!(BUILD_INFO, "Build information; always 1.");
    describe_counter!(
        CONFIG_RELOADS,
        "Configuration reloads (SIGHUP) by result: applied, or refused (the running configuration stayed)."
    );
}

/// Publishes the configured rate limit, if any.
pub fn rate_limit(bytes_per_sec: Option<u64>) {
    if let Some(rate) = bytes_per_sec {
        gauge!(RATE_LIMIT_BYTES_PER_SECOND).set(rate as f64);
    }
}

/// Counts a configuration reload, applied or refused.
pub fn config_reloaded(applied: bool) {
    let result = if applied { "applied" } else { "refused" };
    counter!(CONFIG_RELOADS, "result" => result).increment(1);
}

/// Publishes the cumulative plugin counters of every route (from `Pipeline::stats`).
pub fn publish_plugin_stats(routes: &[(String, Vec<er_plugin_host::PluginStats>)]) {
    for (route, plugins) in routes {
        for (name, s) in plugin_labels(plugins).into_iter().zip(plugins) {
            let labels = [("route", route.clone()), ("plugin", name)];
            counter!(PLUGIN_RECORDS_IN, &labels).absolute(s.records_in);
            counter!(PLUGIN_RECORDS_OUT, &labels).absolute(s.records_out);
            counter!(PLUGIN_RECORDS_DROPPED, &labels).absolute(s.records_dropped);
            counter!(PLUGIN_ERRORS, &labels).absolute(s.errors);
            gauge!(PLUGIN_SECONDS, &labels).set(s.time_ns as f64 / 1e9);
        }
    }
}

/// The `plugin` label of each plugin of a chain: the file stem, with `#<position>` appended
/// when a chain holds the same file name twice.
pub fn plugin_labels(plugins: &[er_plugin_host::PluginStats]) -> Vec<String> {
    let stems: Vec<String> = plugins
        .iter()
        .map(|p| {
            p.plugin
                .file_stem()
                .map_or_else(|| "plugin".to_owned(), |s| s.to_string_lossy().into_owned())
        })
        .collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for s in &stems {
        *seen.entry(s).or_default() += 1;
    }
    stems
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if seen[s.as_str()] > 1 {
                format!("{s}#{i}")
            } else {
                s.clone()
            }
        })
        .collect()
}

/// Records behind the hub on one partition: the high watermark minus the acknowledged position
/// (the low watermark when nothing was acknowledged yet, as reading starts there).
pub fn lag_records(low: i64, high: i64, acked: Option<i64>) -> i64 {
    let from = acked.unwrap_or(low).max(low);
    (high - from).max(0)
}

/// The position the hub committed per replicated partition (from Welcome, then acks), read by
/// the lag publisher. Kept across sessions, so the lag keeps growing while the link is down.
#[derive(Debug, Default)]
pub struct LagTracker {
    acked: Mutex<HashMap<TopicPartition, Option<i64>>>,
    /// The lag of each partition as last published, for `/status`.
    lag: Mutex<HashMap<TopicPartition, i64>>,
}

impl LagTracker {
    /// A partition is replicated, from `position` (the hub's) or the beginning.
    pub fn track(&self, tp: &TopicPartition, position: Option<i64>) {
        let mut a = self.acked.lock().unwrap_or_else(PoisonError::into_inner);
        let e = a.entry(tp.clone()).or_insert(position);
        if position.is_some() {
            *e = position;
        }
    }

    /// The hub committed `tp` up to `next_offset`.
    pub fn acked(&self, tp: &TopicPartition, next_offset: i64) {
        let mut a = self.acked.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = a.get_mut(tp) {
            *e = Some(next_offset);
        }
    }

    /// Every tracked partition with its committed position, if known.
    pub fn snapshot(&self) -> Vec<(TopicPartition, Option<i64>)> {
        let a = self.acked.lock().unwrap_or_else(PoisonError::into_inner);
        a.iter().map(|(tp, o)| (tp.clone(), *o)).collect()
    }

    /// Publishes the lag of `tp`: the gauge, and the value `/status` shows.
    pub fn publish_lag(&self, tp: &TopicPartition, lag: i64) {
        set_lag(tp, lag);
        self.lag
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tp.clone(), lag);
    }

    /// Every tracked partition with its committed position and its last published lag.
    pub fn snapshot_with_lag(&self) -> Vec<(TopicPartition, Option<i64>, Option<i64>)> {
        let lag = self.lag.lock().unwrap_or_else(PoisonError::into_inner);
        self.snapshot()
            .into_iter()
            .map(|(tp, acked)| {
                let l = lag.get(&tp).copied();
                (tp, acked, l)
            })
            .collect()
    }
}

/// Sets the replication lag gauge of one partition.
pub fn set_lag(tp: &TopicPartition, lag: i64) {
    gauge!(
        REPLICATION_LAG_RECORDS,
        "topic" => tp.topic.clone(),
        "partition" => tp.partition.to_string()
    )
    .set(lag as f64);
}

/// What [`RetentionGaps::record`] learned about a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapNews {
    /// No gap of this partition was counted before, or it ended before this one starts.
    pub new_gap: bool,
    /// Records of this gap not counted before.
    pub new_records: i64,
}

/// Retention gaps counted so far, per partition: the end (exclusive) of the latest one. A gap is
/// found again on every session until the hub commits a record past it (a link that fails during
/// the catch-up, a partition with nothing after the gap), and must be counted once.
#[derive(Debug, Default)]
pub struct RetentionGaps {
    counted_until: Mutex<HashMap<TopicPartition, i64>>,
}

impl RetentionGaps {
    /// The ledger of this process: the counters it guards are process-wide too, and sessions
    /// come and go.
    pub fn global() -> &'static RetentionGaps {
        static GLOBAL: LazyLock<RetentionGaps> = LazyLock::new(RetentionGaps::default);
        &GLOBAL
    }

    /// Records that offsets `[from, to)` of `tp` are gone and says what is new about it.
    pub fn record(&self, tp: &TopicPartition, from: i64, to: i64) -> GapNews {
        let mut c = self
            .counted_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let until = c.get(tp).copied();
        let start = until.map_or(from, |u| u.max(from));
        let news = GapNews {
            new_gap: until.is_none_or(|u| u <= from),
            new_records: (to - start).max(0),
        };
        if news.new_records > 0 {
            c.insert(tp.clone(), to);
        }
        news
    }
}

/// Counts a retention gap of `tp` (see [`RetentionGaps::record`]).
pub fn retention_gap(tp: &TopicPartition, news: GapNews) {
    if news.new_gap {
        counter!(RETENTION_GAPS).increment(1);
    }
    RETENTION_GAP_RECORDS_NOW.fetch_add(news.new_records.max(0) as u64, Ordering::Relaxed);
    counter!(
        RETENTION_GAP_RECORDS,
        "topic" => tp.topic.clone(),
        "partition" => tp.partition.to_string()
    )
    .increment(news.new_records as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(path: &str) -> er_plugin_host::PluginStats {
        er_plugin_host::PluginStats {
            plugin: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn plugin_labels_are_file_stems_made_unique_within_a_chain() {
        let labels = plugin_labels(&[
            stats("/p/filter.wasm"),
            stats("/q/rename.wasm"),
            stats("/r/filter.wasm"),
        ]);
        assert_eq!(labels, ["filter#0", "rename", "filter#2"]);
    }

    #[test]
    fn lag_tracker_keeps_the_latest_committed_position() {
        let t = LagTracker::default();
        let a = TopicPartition::new("a", 0);
        let b = TopicPartition::new("b", 1);
        t.track(&a, None);
        t.track(&b, Some(5));
        t.acked(&a, 10);
        t.acked(&TopicPartition::new("untracked", 0), 3);
        t.track(&b, None);
        let mut s = t.snapshot();
        s.sort();
        assert_eq!(s, [(a.clone(), Some(10)), (b.clone(), Some(5))]);
        t.publish_lag(&a, 7);
        let mut s = t.snapshot_with_lag();
        s.sort();
        assert_eq!(s, [(a, Some(10), Some(7)), (b, Some(5), None)]);
    }

    #[test]
    fn retention_gaps_count_each_lost_record_once() {
        let g = RetentionGaps::default();
        let a = TopicPartition::new("a", 0);
        let news = |new_gap, new_records| GapNews {
            new_gap,
            new_records,
        };
        assert_eq!(g.record(&a, 100, 150), news(true, 50), "first sight");
        assert_eq!(g.record(&a, 100, 150), news(false, 0), "found again");
        assert_eq!(
            g.record(&a, 100, 180),
            news(false, 30),
            "grew while the hub stayed behind it"
        );
        assert_eq!(
            g.record(&a, 120, 180),
            news(false, 0),
            "inside the known one"
        );
        assert_eq!(g.record(&a, 180, 200), news(true, 20), "a later gap");
        assert_eq!(
            g.record(&TopicPartition::new("a", 1), 100, 150),
            news(true, 50),
            "partitions are apart"
        );
    }

    #[test]
    fn lag_counts_from_the_acknowledged_position_or_the_log_start() {
        assert_eq!(lag_records(0, 100, Some(40)), 60);
        assert_eq!(
            lag_records(10, 100, None),
            90,
            "nothing acked: from the start"
        );
        assert_eq!(
            lag_records(50, 100, Some(20)),
            50,
            "retention moved past it"
        );
        assert_eq!(lag_records(0, 100, Some(100)), 0);
        assert_eq!(lag_records(0, 100, Some(120)), 0, "never negative");
    }
}
