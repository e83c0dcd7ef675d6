//! The agent's `/readyz` and `/status` answers: edge Kafka reachable (a metadata request cached
//! for [`EDGE_CHECK_TTL`]) and the hub session up or probing; the link, its RTT and the lag of
//! every replicated partition.
//!
//! A hub that does not answer is not the agent's fault (the link is down and the agent probes,
//! which is its job), so probing counts as ready; a hub that answers and refuses the session
//! (certificate, protocol, a session that keeps failing) does not.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use er_net::status::{CachedCheck, Check, Endpoints};
use serde::Serialize;

use crate::Stats;
use crate::config::Validated;
use crate::metrics::LagTracker;
use crate::source::Discovery;

/// How long an edge metadata answer counts for readiness.
pub const EDGE_CHECK_TTL: Duration = Duration::from_secs(5);
/// How long one edge metadata request may take.
pub const EDGE_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// What the link to the hub is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// No connection attempt finished yet.
    #[default]
    Starting,
    /// Welcomed by the hub: replicating.
    Up,
    /// The hub does not answer at all (link or hub host down); fresh attempts go out.
    Probing,
    /// The hub answered, but the connection or session failed; reconnecting with backoff.
    Failing,
}

#[derive(Debug, Default)]
struct Link {
    state: LinkState,
    since: Option<Instant>,
    rtt: Option<Duration>,
    last_error: Option<String>,
}

/// The link's state as the agent's connect loop and session report it (kept in [`Stats`]).
#[derive(Debug, Default)]
pub struct LinkHealth {
    link: Mutex<Link>,
}

/// A copy of the link's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkSnapshot {
    /// What the link does.
    pub state: LinkState,
    /// Seconds in this state.
    pub for_seconds: Option<f64>,
    /// The latest RTT sample, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Why the last session or connection failed.
    pub last_error: Option<String>,
}

impl LinkHealth {
    fn set(&self, state: LinkState, error: Option<String>) {
        let mut l = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        if l.state != state || l.since.is_none() {
            l.state = state;
            l.since = Some(Instant::now());
        }
        if error.is_some() {
            l.last_error = error;
        }
    }

    /// The hub welcomed a session.
    pub fn up(&self) {
        self.set(LinkState::Up, None);
    }

    /// A connection attempt got no answer at all.
    pub fn probing(&self) {
        self.set(LinkState::Probing, None);
    }

    /// A connection or session failed after the hub answered.
    pub fn failing(&self, error: String) {
        self.set(LinkState::Failing, Some(error));
    }

    /// A round-trip time sample.
    pub fn rtt(&self, rtt: Duration) {
        self.link.lock().unwrap_or_else(PoisonError::into_inner).rtt = Some(rtt);
    }

    /// The state now.
    pub fn snapshot(&self) -> LinkSnapshot {
        let l = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        LinkSnapshot {
            state: l.state,
            for_seconds: l.since.map(|s| s.elapsed().as_secs_f64()),
            rtt_ms: l.rtt.map(|r| r.as_secs_f64() * 1e3),
            last_error: l.last_error.clone(),
        }
    }

    /// The `hub-session` readiness check: ready while up or probing.
    pub fn check(&self) -> Check {
        let s = self.snapshot();
        let secs = s.for_seconds.unwrap_or(0.0);
        match s.state {
            LinkState::Up => Check::new("hub-session", true, format!("up for {secs:.0} s")),
            LinkState::Probing => Check::new(
                "hub-session",
                true,
                format!("hub silent for {secs:.0} s; probing"),
            ),
            LinkState::Starting => Check::new("hub-session", false, "connecting"),
            LinkState::Failing => Check::new(
                "hub-session",
                false,
                format!(
                    "failing for {secs:.0} s: {}",
                    s.last_error.as_deref().unwrap_or("unknown error")
                ),
            ),
        }
    }
}

/// One replicated partition in `/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionStatus {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Priority lane (`routes[].priority`, or `heartbeats`).
    pub lane: String,
    /// Next offset the hub committed, if any.
    pub committed_offset: Option<i64>,
    /// Edge high watermark minus the committed position, as of the latest lag round.
    pub lag_records: Option<i64>,
}

/// The `/status` document: link, counters and per-partition lag, worst lag first.
pub fn status(cfg: &Validated, stats: &Stats, lag: Option<&LagTracker>) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let mut partitions: Vec<PartitionStatus> = lag
        .map(|l| {
            l.snapshot_with_lag()
                .into_iter()
                .map(|(tp, committed_offset, lag_records)| PartitionStatus {
                    lane: cfg.priority_for(&tp.topic).to_string(),
                    topic: tp.topic,
                    partition: tp.partition,
                    committed_offset,
                    lag_records,
                })
                .collect()
        })
        .unwrap_or_default();
    partitions.sort_by(|a, b| {
        b.lag_records
            .cmp(&a.lag_records)
            .then_with(|| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)))
    });
    serde_json::json!({
        "site": cfg.raw.site,
        "hub": cfg.hub_addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "version": env!("CARGO_PKG_VERSION"),
        "link": stats.link.snapshot(),
        "counters": {
            "records_read": stats.records_read.load(Relaxed),
            "records_sent": stats.records_sent.load(Relaxed),
            "bytes_sent": stats.bytes_sent.load(Relaxed),
            "batches_acked": stats.batches_acked.load(Relaxed),
            "connects": stats.connects.load(Relaxed),
            "records_dropped_by_plugins": stats.records_dropped_by_plugins.load(Relaxed),
            "plugin_record_failures": stats.plugin_record_failures.load(Relaxed),
            "route_stops": stats.route_stops.load(Relaxed),
            "heartbeats_sent": stats.heartbeats_sent.load(Relaxed),
            "group_reports_sent": stats.group_reports_sent.load(Relaxed),
        },
        "partitions": partitions,
    })
}

/// Answers `/readyz` (`edge-kafka`, `hub-session`) and `/status` on `endpoints` from now on.
pub fn register(
    endpoints: &Endpoints,
    cfg: &Validated,
    stats: Arc<Stats>,
    discovery: Arc<Discovery>,
    lag: Option<Arc<LagTracker>>,
) {
    let probe_cfg = cfg.clone();
    // The probe only needs the metadata round trip; a guard with no destinations refuses no
    // more than the session's own does.
    let guard = crate::source::LoopGuard::new(
        er_protocol::ReplicationPolicy::default(),
        cfg.raw.site.clone().unwrap_or_default(),
        Vec::new(),
    );
    let edge = CachedCheck::new("edge-kafka", EDGE_CHECK_TTL, move || {
        discovery
            .topics(&probe_cfg, &guard, EDGE_CHECK_TIMEOUT)
            .map(|t| format!("{} topics selected", t.len()))
            .map_err(|e| {
                format!(
                    "edge cluster {}: metadata request failed: {e}",
                    probe_cfg.raw.kafka.bootstrap_servers
                )
            })
    });
    let s = stats.clone();
    endpoints.set_readiness(move || vec![edge.check(), s.link.check()]);
    let cfg = cfg.clone();
    endpoints.set_status(move || status(&cfg, &stats, lag.as_deref()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_while_up_or_probing_not_while_starting_or_failing() {
        let h = LinkHealth::default();
        let c = h.check();
        assert!(!c.ok && c.detail == "connecting", "{c:?}");
        h.probing();
        assert!(h.check().ok, "a silent hub is the link's fault");
        h.up();
        h.rtt(Duration::from_millis(12));
        let c = h.check();
        assert!(c.ok && c.detail.starts_with("up for"), "{c:?}");
        assert_eq!(h.snapshot().rtt_ms, Some(12.0));
        h.failing("hub refused: certificate unknown".into());
        let c = h.check();
        assert!(!c.ok && c.detail.contains("certificate unknown"), "{c:?}");
        h.up();
        let s = h.snapshot();
        assert_eq!(s.state, LinkState::Up);
        assert_eq!(
            s.last_error.as_deref(),
            Some("hub refused: certificate unknown"),
            "the last error stays visible after recovery"
        );
    }

    #[test]
    fn state_time_counts_from_the_change_not_from_each_report() {
        let h = LinkHealth::default();
        h.probing();
        std::thread::sleep(Duration::from_millis(30));
        h.probing();
        assert!(h.snapshot().for_seconds.unwrap() >= 0.03);
    }
}
