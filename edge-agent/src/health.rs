//! The agent's `/readyz` and `/status` answers: edge Kafka reachable (a metadata request cached
//! for [`EDGE_CHECK_TTL`]) and the hub session up or probing; the link, its RTT, lanes, plugin
//! counters, alarms and the lag of every replicated partition ([`AgentStatus`]), and the text
//! `edge-agent status` prints from it ([`render`]).
//!
//! A hub that does not answer is not the agent's fault (the link is down and the agent probes,
//! which is its job), so probing counts as ready; a hub that answers and refuses the session
//! (certificate, protocol, a session that keeps failing) does not.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use er_net::status::{CachedCheck, Check, Endpoints};
use serde::{Deserialize, Serialize};

use crate::Stats;
use crate::config::Settings;
use crate::metrics::LagTracker;
use crate::source::Discovery;

/// How long an edge metadata answer counts for readiness.
pub const EDGE_CHECK_TTL: Duration = Duration::from_secs(5);
/// How long one edge metadata request may take.
pub const EDGE_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// What the link to the hub is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// One priority lane in `/status`: its partitions and their lag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaneStatus {
    /// The lane (`routes[].priority`, or `heartbeats`).
    pub lane: String,
    /// Partitions read in it.
    pub partitions: usize,
    /// Their lag summed (partitions whose lag is not known yet count 0).
    pub lag_records: i64,
}

/// One plugin of a route in `/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginStatus {
    /// The route.
    pub route: String,
    /// The plugin file.
    pub plugin: String,
    /// Records given to it.
    pub records_in: u64,
    /// Records it kept or produced.
    pub records_out: u64,
    /// Records it dropped.
    pub records_dropped: u64,
    /// Failed calls and records.
    pub errors: u64,
    /// Batch calls.
    pub calls: u64,
    /// Time in calls, milliseconds.
    pub time_ms: f64,
    /// The last error.
    pub last_error: Option<String>,
}

/// The agent's counters in `/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Records read from the edge cluster.
    pub records_read: u64,
    /// Records sent to the hub.
    pub records_sent: u64,
    /// Compressed batch bytes sent.
    pub bytes_sent: u64,
    /// Batches the hub acknowledged as committed.
    pub batches_acked: u64,
    /// Connections established.
    pub connects: u64,
    /// Source records the plugin chains turned into nothing.
    pub records_dropped_by_plugins: u64,
    /// Records a plugin failed (skipped or dead-lettered by the route's policy).
    pub plugin_record_failures: u64,
    /// Routes stopped by a plugin failure.
    pub route_stops: u64,
    /// MM2 heartbeats written.
    pub heartbeats_sent: u64,
    /// Consumer-group offset reports sent.
    pub group_reports_sent: u64,
}

/// The agent's `/status` document. Fields are only ever added; an unknown value is `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Site alias as configured (the certificate decides at the hub).
    pub site: Option<String>,
    /// The configured hub addresses.
    pub hub: Vec<String>,
    /// Software version.
    pub version: String,
    /// The link to the hub.
    pub link: LinkSnapshot,
    /// Counters since the process started.
    pub counters: Counters,
    /// Records lost to edge retention since the process started.
    pub retention_gap_records: u64,
    /// notAfter of the agent's client certificate, Unix seconds.
    pub certificate_not_after: Option<i64>,
    /// Something an operator should look at, one phrase each (empty when all is well).
    pub alarms: Vec<String>,
    /// Priority lanes, highest first.
    pub lanes: Vec<LaneStatus>,
    /// Plugins of every route, in route and chain order.
    pub plugins: Vec<PluginStatus>,
    /// Replicated partitions, worst lag first.
    pub partitions: Vec<PartitionStatus>,
}

/// A certificate expiring within this many days raises an alarm (the alert's threshold).
pub const CERT_ALARM_DAYS: f64 = 14.0;
/// A link that has not been up for this long raises an alarm.
pub const LINK_ALARM_SECONDS: f64 = 60.0;

/// The `/status` document: link, counters, lanes, plugins, alarms and per-partition lag.
pub fn status(cfg: &Settings, stats: &Stats, lag: Option<&LagTracker>) -> AgentStatus {
    let partitions = partition_statuses(cfg, lag);
    let plugins = plugin_statuses(stats);
    let counters = Counters::read(stats);
    let link = stats.link.snapshot();
    let retention_gap_records = crate::metrics::retention_gap_records();
    let certificate_not_after = crate::metrics::certificate_not_after();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    AgentStatus {
        site: cfg.site.clone(),
        hub: cfg.hub.addresses.iter().map(ToString::to_string).collect(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        alarms: alarms(
            &link,
            &counters,
            &plugins,
            retention_gap_records,
            certificate_not_after.map(|t| (t as f64 - now_s) / 86_400.0),
        ),
        lanes: lanes(&partitions),
        link,
        counters,
        retention_gap_records,
        certificate_not_after,
        plugins,
        partitions,
    }
}

/// Replicated partitions with their lane and lag, worst lag first.
fn partition_statuses(cfg: &Settings, lag: Option<&LagTracker>) -> Vec<PartitionStatus> {
    let mut partitions: Vec<PartitionStatus> = lag
        .map(|l| {
            l.snapshot_with_lag()
                .into_iter()
                .map(|(tp, committed_offset, lag_records)| PartitionStatus {
                    lane: cfg.routes.priority_for(&tp.topic).to_string(),
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
    partitions
}

/// Every plugin of every route, in route and chain order.
fn plugin_statuses(stats: &Stats) -> Vec<PluginStatus> {
    stats
        .plugins
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .flat_map(|(route, chain)| {
            crate::metrics::plugin_labels(chain)
                .into_iter()
                .zip(chain)
                .map(move |(name, p)| PluginStatus {
                    route: route.clone(),
                    plugin: name,
                    records_in: p.records_in,
                    records_out: p.records_out,
                    records_dropped: p.records_dropped,
                    errors: p.errors,
                    calls: p.calls,
                    time_ms: p.time_ns as f64 / 1e6,
                    last_error: p.last_error.clone(),
                })
        })
        .collect()
}

impl Counters {
    /// The counters' values now.
    fn read(stats: &Stats) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        Self {
            records_read: stats.records_read.load(Relaxed),
            records_sent: stats.records_sent.load(Relaxed),
            bytes_sent: stats.bytes_sent.load(Relaxed),
            batches_acked: stats.batches_acked.load(Relaxed),
            connects: stats.connects.load(Relaxed),
            records_dropped_by_plugins: stats.records_dropped_by_plugins.load(Relaxed),
            plugin_record_failures: stats.plugin_record_failures.load(Relaxed),
            route_stops: stats.route_stops.load(Relaxed),
            heartbeats_sent: stats.heartbeats_sent.load(Relaxed),
            group_reports_sent: stats.group_reports_sent.load(Relaxed),
        }
    }
}

/// Lanes from the partitions, highest priority first (`heartbeats` above every number).
pub fn lanes(partitions: &[PartitionStatus]) -> Vec<LaneStatus> {
    let mut by_lane: std::collections::BTreeMap<(i64, String), (usize, i64)> = Default::default();
    for p in partitions {
        let rank = p.lane.parse::<i64>().unwrap_or(i64::MAX);
        let e = by_lane.entry((rank, p.lane.clone())).or_default();
        e.0 += 1;
        e.1 += p.lag_records.unwrap_or(0);
    }
    by_lane
        .into_iter()
        .rev()
        .map(|((_, lane), (partitions, lag_records))| LaneStatus {
            lane,
            partitions,
            lag_records,
        })
        .collect()
}

/// What an operator should look at.
pub fn alarms(
    link: &LinkSnapshot,
    counters: &Counters,
    plugins: &[PluginStatus],
    retention_gap_records: u64,
    certificate_expires_in_days: Option<f64>,
) -> Vec<String> {
    let mut out = Vec::new();
    let secs = link.for_seconds.unwrap_or(0.0);
    match link.state {
        LinkState::Up => {}
        LinkState::Probing if secs >= LINK_ALARM_SECONDS => out.push(format!(
            "hub silent for {secs:.0} s (link or hub host down)"
        )),
        LinkState::Failing if secs >= LINK_ALARM_SECONDS => out.push(format!(
            "hub session failing for {secs:.0} s: {}",
            link.last_error.as_deref().unwrap_or("unknown error")
        )),
        LinkState::Starting if secs >= LINK_ALARM_SECONDS => {
            out.push(format!("no hub session after {secs:.0} s"))
        }
        _ => {}
    }
    if retention_gap_records > 0 {
        out.push(format!(
            "{retention_gap_records} records lost to edge retention before replication"
        ));
    }
    if counters.route_stops > 0 {
        out.push(format!(
            "plugin routes stopped {} times (their partitions wait and retry)",
            counters.route_stops
        ));
    }
    for p in plugins.iter().filter(|p| p.errors > 0) {
        out.push(format!(
            "plugin {} of route {}: {} errors{}",
            p.plugin,
            p.route,
            p.errors,
            p.last_error
                .as_deref()
                .map(|e| format!(", last: {e}"))
                .unwrap_or_default()
        ));
    }
    if let Some(d) = certificate_expires_in_days.filter(|d| *d < CERT_ALARM_DAYS) {
        out.push(format!("client certificate expires in {d:.1} days"));
    }
    out
}

fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| "-".to_owned(), f)
}

fn table(header: &[&str], rows: &[Vec<String>], out: &mut String) {
    er_net::status_client::text_table(header, rows, "  ", out);
}

/// What `edge-agent status` prints: the link, alarms, lanes, plugins and partitions.
pub fn render(s: &AgentStatus) -> String {
    let mut out = String::new();
    render_summary(s, &mut out);
    render_alarms(&s.alarms, &mut out);
    render_lanes(&s.lanes, &mut out);
    render_plugins(&s.plugins, &mut out);
    render_partitions(&s.partitions, &mut out);
    out
}

/// The site, link and counters lines.
fn render_summary(s: &AgentStatus, out: &mut String) {
    use std::fmt::Write as _;
    let l = &s.link;
    let _ = writeln!(
        out,
        "site {} (v{}) -> hub {}",
        s.site.as_deref().unwrap_or("-"),
        s.version,
        s.hub.join(", ")
    );
    let _ = writeln!(
        out,
        "link {:?} for {}, RTT {}{}",
        l.state,
        opt(l.for_seconds, |t| format!("{t:.0} s")),
        opt(l.rtt_ms, |r| format!("{r:.1} ms")),
        l.last_error
            .as_deref()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default()
    );
    let c = &s.counters;
    let _ = writeln!(
        out,
        "records read {}, sent {}, batches acked {}, connects {}, heartbeats {}, retention gap {}, certificate {}",
        c.records_read,
        c.records_sent,
        c.batches_acked,
        c.connects,
        c.heartbeats_sent,
        s.retention_gap_records,
        opt(s.certificate_not_after, |t| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            format!("expires in {:.0} days", (t - now) as f64 / 86_400.0)
        })
    );
}

fn render_alarms(alarms: &[String], out: &mut String) {
    use std::fmt::Write as _;
    if alarms.is_empty() {
        out.push_str("alarms: none\n");
    } else {
        out.push_str("alarms:\n");
        for a in alarms {
            let _ = writeln!(out, "  ! {a}");
        }
    }
}

fn render_lanes(lanes: &[LaneStatus], out: &mut String) {
    out.push_str("lanes:\n");
    let rows: Vec<Vec<String>> = lanes
        .iter()
        .map(|l| {
            vec![
                l.lane.clone(),
                l.partitions.to_string(),
                l.lag_records.to_string(),
            ]
        })
        .collect();
    table(&["LANE", "PARTITIONS", "LAG"], &rows, out);
}

fn render_plugins(plugins: &[PluginStatus], out: &mut String) {
    if plugins.is_empty() {
        return;
    }
    out.push_str("plugins:\n");
    let rows: Vec<Vec<String>> = plugins
        .iter()
        .map(|p| {
            vec![
                p.route.clone(),
                p.plugin.clone(),
                p.records_in.to_string(),
                p.records_out.to_string(),
                p.records_dropped.to_string(),
                p.errors.to_string(),
                format!("{:.1}", p.time_ms),
                p.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let header = [
        "ROUTE",
        "PLUGIN",
        "IN",
        "OUT",
        "DROPPED",
        "ERRORS",
        "MS",
        "LAST ERROR",
    ];
    table(&header, &rows, out);
}

fn render_partitions(partitions: &[PartitionStatus], out: &mut String) {
    out.push_str("partitions (worst lag first):\n");
    let rows: Vec<Vec<String>> = partitions
        .iter()
        .map(|p| {
            vec![
                p.topic.clone(),
                p.partition.to_string(),
                p.lane.clone(),
                opt(p.committed_offset, |o| o.to_string()),
                opt(p.lag_records, |o| o.to_string()),
            ]
        })
        .collect();
    table(
        &["TOPIC", "PARTITION", "LANE", "COMMITTED", "LAG"],
        &rows,
        out,
    );
}

/// Answers `/readyz` (`edge-kafka`, `hub-session`) and `/status` on `endpoints` from now on.
pub fn register(
    endpoints: &Endpoints,
    cfg: &Settings,
    stats: Arc<Stats>,
    discovery: Arc<Discovery>,
    lag: Option<Arc<LagTracker>>,
) {
    let probe_cfg = cfg.clone();
    // The probe only needs the metadata round trip; a guard with no destinations refuses no
    // more than the session's own does.
    let guard = crate::source::LoopGuard::new(
        er_protocol::ReplicationPolicy::default(),
        cfg.site.clone().unwrap_or_default(),
        Vec::new(),
    );
    let edge = CachedCheck::new("edge-kafka", EDGE_CHECK_TTL, move || {
        discovery
            .topics(&probe_cfg, &guard, EDGE_CHECK_TIMEOUT)
            .map(|t| format!("{} topics selected", t.len()))
            .map_err(|e| {
                format!(
                    "edge cluster {}: metadata request failed: {e}",
                    probe_cfg.kafka.bootstrap_servers
                )
            })
    });
    let s = stats.clone();
    endpoints.set_readiness(move || vec![edge.check(), s.link.check()]);
    let cfg = cfg.clone();
    endpoints.set_status(move || {
        serde_json::to_value(status(&cfg, &stats, lag.as_deref()))
            .unwrap_or_else(|e| serde_json::json!({ "error": format!("cannot serialize: {e}") }))
    });
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

    fn partition(topic: &str, lane: &str, lag: Option<i64>) -> PartitionStatus {
        PartitionStatus {
            topic: topic.into(),
            partition: 0,
            lane: lane.into(),
            committed_offset: Some(10),
            lag_records: lag,
        }
    }

    #[test]
    fn lanes_sum_their_partitions_highest_priority_first() {
        let p = [
            partition("a", "0", Some(5)),
            partition("b", "10", Some(7)),
            partition("c", "0", None),
            partition("heartbeats", "heartbeats", Some(0)),
        ];
        let l = lanes(&p);
        let got: Vec<(&str, usize, i64)> = l
            .iter()
            .map(|l| (l.lane.as_str(), l.partitions, l.lag_records))
            .collect();
        assert_eq!(got, [("heartbeats", 1, 0), ("10", 1, 7), ("0", 2, 5)]);
    }

    #[test]
    fn alarms_name_each_problem_and_stay_quiet_when_all_is_well() {
        let up = LinkSnapshot {
            state: LinkState::Up,
            for_seconds: Some(600.0),
            rtt_ms: Some(2.0),
            last_error: None,
        };
        let quiet = Counters::default();
        assert!(alarms(&up, &quiet, &[], 0, Some(90.0)).is_empty());
        let failing = LinkSnapshot {
            state: LinkState::Failing,
            last_error: Some("certificate revoked".into()),
            ..up.clone()
        };
        let plugin = PluginStatus {
            route: "orders".into(),
            plugin: "filter".into(),
            records_in: 10,
            records_out: 8,
            records_dropped: 0,
            errors: 2,
            calls: 1,
            time_ms: 0.5,
            last_error: Some("trap".into()),
        };
        let stopped = Counters {
            route_stops: 1,
            ..Counters::default()
        };
        let a = alarms(&failing, &stopped, &[plugin], 40, Some(3.0));
        assert_eq!(
            a,
            [
                "hub session failing for 600 s: certificate revoked",
                "40 records lost to edge retention before replication",
                "plugin routes stopped 1 times (their partitions wait and retry)",
                "plugin filter of route orders: 2 errors, last: trap",
                "client certificate expires in 3.0 days",
            ]
        );
        let fresh = LinkSnapshot {
            state: LinkState::Probing,
            for_seconds: Some(5.0),
            ..up
        };
        assert!(
            alarms(&fresh, &quiet, &[], 0, None).is_empty(),
            "a short outage is no alarm"
        );
    }

    #[test]
    fn the_text_shows_link_alarms_lanes_and_partitions() {
        let s = AgentStatus {
            site: Some("plant-7".into()),
            hub: vec!["10.0.0.1:4433".into()],
            version: "0.1.0".into(),
            link: LinkSnapshot {
                state: LinkState::Up,
                for_seconds: Some(42.0),
                rtt_ms: Some(1.5),
                last_error: None,
            },
            counters: Counters::default(),
            retention_gap_records: 0,
            certificate_not_after: None,
            alarms: vec!["something".into()],
            lanes: lanes(&[partition("orders", "0", Some(3))]),
            plugins: Vec::new(),
            partitions: vec![partition("orders", "0", Some(3))],
        };
        let text = render(&s);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "site plant-7 (v0.1.0) -> hub 10.0.0.1:4433");
        assert_eq!(lines[1], "link Up for 42 s, RTT 1.5 ms");
        assert!(text.contains("alarms:\n  ! something\n"), "{text}");
        assert!(text.contains("  0     1           3\n"), "{text}");
        assert!(
            text.contains("  orders  0          0     10         3\n"),
            "{text}"
        );
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<AgentStatus>(&json).unwrap(), s);
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
