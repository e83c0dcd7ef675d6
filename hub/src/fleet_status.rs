//! The fleet at a glance: the per-site rows of the hub's `/status` and the detail of
//! `/status/<site>` (serde types, so the schema is the code and `hub status` reads what the hub
//! writes), their health verdicts and worst-first order, and the plain-text table `hub status`
//! prints. Pure: built from the registry's plain data, no I/O.
//!
//! Schema stability: fields are only ever added; a field that is unknown is `null`, never
//! missing. README, "Health and status endpoints", documents every field.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::metrics::{AgentFigures, Sample, SiteSnapshot};
use crate::sites::Site;

/// A transaction failure this recent makes the writer state `failing`.
pub const FAILING_WINDOW_MS: i64 = 60_000;
/// Batches with the writers and no commit for this long make the writer state `stuck`.
pub const STUCK_AFTER_MS: i64 = 60_000;
/// Heartbeats older than this (link up) are a warning: the site's records do not flow.
pub const HEARTBEAT_STALE_SECONDS: f64 = 60.0;
/// Replication lag above this is a warning (the `ErReplicationLagHigh` alert's threshold).
pub const LAG_WARNING_SECONDS: f64 = 300.0;
/// A site certificate expiring within this many days is a warning; within
/// [`CERT_CRITICAL_DAYS`], critical (the alerts' thresholds).
pub const CERT_WARNING_DAYS: f64 = 14.0;
/// See [`CERT_WARNING_DAYS`].
pub const CERT_CRITICAL_DAYS: f64 = 2.0;

/// How bad a site looks, worst last (so `max` is the worst).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Nothing to do.
    Ok,
    /// Look at it soon.
    Warning,
    /// Data is at risk or not flowing.
    Critical,
}

/// What the hub's writers are doing for a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriterState {
    /// No batch of the site with the writers.
    Idle,
    /// Batches with the writers, committing.
    Writing,
    /// A transaction carrying the site failed within the last minute.
    Failing,
    /// Batches with the writers and no commit for a minute or more.
    Stuck,
}

/// Whether the site has a session on this hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// A live session.
    Up,
    /// No session (the site's shard is here; it is not connected).
    Down,
}

/// One site in the hub's `/status` (`sites`, worst first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteRow {
    /// Site alias (from its certificate).
    pub site: String,
    /// Verdict over the fields below.
    pub health: Health,
    /// Why the verdict is not `ok`, one short phrase each.
    pub problems: Vec<String>,
    /// Session or not.
    pub link: LinkState,
    /// Seconds since the session started (up) or ended (down; `null` if it never connected
    /// since the hub started).
    pub link_for_seconds: Option<f64>,
    /// The agent's address as the hub sees it (up only).
    pub remote: Option<String>,
    /// QUIC's smoothed round-trip time, milliseconds (up only).
    pub rtt_ms: Option<f64>,
    /// Records committed per second over the last 10 to 30 s.
    pub records_per_second: Option<f64>,
    /// Records committed since the hub started.
    pub records_written: u64,
    /// Records behind at the edge (edge high watermarks minus committed positions, summed),
    /// as the agent last reported (`null` also when the agent does not measure it: it does
    /// with `[metrics] listen`).
    pub lag_records: Option<i64>,
    /// Hub time at commit minus the newest committed heartbeat's timestamp, seconds.
    pub lag_seconds: Option<f64>,
    /// Timestamp of the newest committed MM2 heartbeat (the site's clock), epoch ms.
    pub last_heartbeat_ms: Option<i64>,
    /// Seconds since that heartbeat committed (the hub's clock).
    pub last_heartbeat_age_seconds: Option<f64>,
    /// Records edge retention deleted before replication, as the agent last reported.
    pub retention_gap_records: Option<u64>,
    /// Records set aside in `er-dead-letter.<site>.internal` since the hub started.
    pub poison_records: u64,
    /// Partitions stopped at a record the hub cannot write, in the current session
    /// (`replication.on_unwritable = "stop"`).
    pub stopped_partitions: usize,
    /// Failed plugin calls and records, as the agent last reported.
    pub plugin_errors: Option<u64>,
    /// Routes stopped by a plugin failure, as the agent last reported.
    pub route_stops: Option<u64>,
    /// Seconds since the agent's latest report (`null`: none since the hub started).
    pub agent_report_age_seconds: Option<f64>,
    /// notAfter of the certificate the site last connected with, Unix seconds.
    pub certificate_not_after: Option<i64>,
    /// Days until then (negative: expired).
    pub certificate_expires_in_days: Option<f64>,
    /// What the writers do for the site.
    pub writer: WriterState,
    /// Batches of the site with the writers now.
    pub inflight_batches: usize,
    /// Failed transactions carrying the site since the hub started.
    pub transactions_failed: u64,
    /// Seconds since the site's latest commit.
    pub last_commit_age_seconds: Option<f64>,
}

/// The hub's `/status` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HubStatus {
    /// This hub's id.
    pub hub_id: String,
    /// Software version.
    pub version: String,
    /// UDP address of the QUIC endpoint, once bound.
    pub listen: Option<String>,
    /// Shutting down.
    pub stopping: bool,
    /// Sites with a session.
    pub sites_connected: u64,
    /// Hub time of this document, epoch ms.
    pub generated_ms: i64,
    /// Whether the fleet (writers, shards) started; `sites` is empty until then.
    pub fleet_started: bool,
    /// Every site of the shards this hub owns, worst first.
    pub sites: Vec<SiteRow>,
}

/// `/status/<site>`: the row and its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteDetail {
    /// The site's row, as in `/status`.
    #[serde(flatten)]
    pub row: SiteRow,
    /// Seconds between samples.
    pub history_interval_seconds: f64,
    /// Samples, oldest first: committed records, lag seconds, lag records.
    pub history: Vec<Sample>,
}

fn age_seconds(now_ms: i64, at_ms: Option<i64>) -> Option<f64> {
    at_ms.map(|t| (now_ms - t).max(0) as f64 / 1e3)
}

/// A site's row from its plain data at hub time `now_ms`.
pub fn site_row(site: &Site, now_ms: i64) -> SiteRow {
    let snap = site.metrics.snapshot(now_ms);
    let link = site.link();
    row(&site.alias, &snap, link, site.inflight(), now_ms)
}

/// The row for a site with these figures (`link`: remote address, RTT, session start in epoch
/// ms, when up).
pub fn row(
    alias: &str,
    snap: &SiteSnapshot,
    link: Option<(std::net::SocketAddr, std::time::Duration, i64)>,
    inflight: usize,
    now_ms: i64,
) -> SiteRow {
    let writer = if snap
        .last_failure_ms
        .is_some_and(|t| now_ms - t < FAILING_WINDOW_MS)
    {
        WriterState::Failing
    } else if inflight > 0 {
        // Stuck only when something was waiting all along: a commit within the window, or a
        // session that started within it (its first batch may take a while), is progress.
        let last_progress = snap.last_commit_ms.max(link.map(|l| l.2));
        if last_progress.is_none_or(|t| now_ms - t >= STUCK_AFTER_MS) {
            WriterState::Stuck
        } else {
            WriterState::Writing
        }
    } else {
        WriterState::Idle
    };
    let agent: Option<(i64, AgentFigures)> = snap.agent;
    let cert_days = snap
        .certificate_not_after_s
        .map(|t| (t as f64 - now_ms as f64 / 1e3) / 86_400.0);
    let mut r = SiteRow {
        site: alias.to_owned(),
        health: Health::Ok,
        problems: Vec::new(),
        link: if link.is_some() {
            LinkState::Up
        } else {
            LinkState::Down
        },
        link_for_seconds: match link {
            Some((_, _, started)) => age_seconds(now_ms, Some(started)),
            None => age_seconds(now_ms, snap.disconnected_ms),
        },
        remote: link.map(|l| l.0.to_string()),
        rtt_ms: link.map(|l| l.1.as_secs_f64() * 1e3),
        records_per_second: snap.records_per_second,
        records_written: snap.records,
        lag_records: agent.and_then(|a| a.1.lag_records),
        lag_seconds: snap.lag_seconds,
        last_heartbeat_ms: snap.heartbeat_ms,
        last_heartbeat_age_seconds: age_seconds(now_ms, snap.heartbeat_committed_ms),
        retention_gap_records: agent.map(|a| a.1.retention_gap_records),
        poison_records: snap.poison_records,
        stopped_partitions: snap.stopped_partitions,
        plugin_errors: agent.map(|a| a.1.plugin_errors),
        route_stops: agent.map(|a| a.1.route_stops),
        agent_report_age_seconds: age_seconds(now_ms, agent.map(|a| a.0)),
        certificate_not_after: snap.certificate_not_after_s,
        certificate_expires_in_days: cert_days,
        writer,
        inflight_batches: inflight,
        transactions_failed: snap.transactions_failed,
        last_commit_age_seconds: age_seconds(now_ms, snap.last_commit_ms),
    };
    judge(&mut r);
    r
}

/// Sets `health` and `problems` from the row's figures (the alerts' thresholds).
fn judge(r: &mut SiteRow) {
    let mut problems: Vec<(Health, String)> = Vec::new();
    let mut add = |h: Health, p: String| problems.push((h, p));
    if r.link == LinkState::Down {
        add(Health::Critical, "link down".into());
    }
    match r.writer {
        WriterState::Failing => add(Health::Critical, "writer failing".into()),
        WriterState::Stuck => add(Health::Critical, "writer stuck".into()),
        WriterState::Idle | WriterState::Writing => {}
    }
    if let Some(g) = r.retention_gap_records.filter(|g| *g > 0) {
        add(
            Health::Critical,
            format!("{g} records lost to edge retention"),
        );
    }
    if let Some(d) = r.certificate_expires_in_days {
        if d < CERT_CRITICAL_DAYS {
            add(
                Health::Critical,
                format!("certificate expires in {d:.1} days"),
            );
        } else if d < CERT_WARNING_DAYS {
            add(
                Health::Warning,
                format!("certificate expires in {d:.0} days"),
            );
        }
    }
    if let Some(l) = r.lag_seconds.filter(|l| *l > LAG_WARNING_SECONDS) {
        add(Health::Warning, format!("lag {}", human_seconds(l)));
    }
    if r.link == LinkState::Up
        && r.last_heartbeat_age_seconds
            .is_some_and(|a| a > HEARTBEAT_STALE_SECONDS)
    {
        add(Health::Warning, "no heartbeat for over a minute".into());
    }
    if r.stopped_partitions > 0 {
        add(
            Health::Critical,
            format!(
                "{} partitions stopped at a record the hub cannot write",
                r.stopped_partitions
            ),
        );
    }
    if r.poison_records > 0 {
        add(
            Health::Warning,
            format!("{} poison records", r.poison_records),
        );
    }
    if let Some(s) = r.route_stops.filter(|s| *s > 0) {
        add(Health::Warning, format!("{s} plugin route stops"));
    }
    if let Some(e) = r.plugin_errors.filter(|e| *e > 0) {
        add(Health::Warning, format!("{e} plugin errors"));
    }
    r.health = problems.iter().map(|p| p.0).max().unwrap_or(Health::Ok);
    r.problems = problems.into_iter().map(|p| p.1).collect();
}

/// Sorts rows worst first: health, then lag in seconds, then lag in records, then alias.
pub fn sort_worst_first(rows: &mut [SiteRow]) {
    rows.sort_by(|a, b| {
        b.health
            .cmp(&a.health)
            .then_with(|| {
                b.lag_seconds
                    .unwrap_or(f64::NEG_INFINITY)
                    .total_cmp(&a.lag_seconds.unwrap_or(f64::NEG_INFINITY))
            })
            .then_with(|| b.lag_records.cmp(&a.lag_records))
            .then_with(|| a.site.cmp(&b.site))
    });
}

/// `90 s`, `12 min`, `3.5 h`, `2.0 d`.
pub fn human_seconds(s: f64) -> String {
    let a = s.abs();
    if a < 120.0 {
        format!("{s:.0} s")
    } else if a < 7_200.0 {
        format!("{:.0} min", s / 60.0)
    } else if a < 172_800.0 {
        format!("{:.1} h", s / 3_600.0)
    } else {
        format!("{:.1} d", s / 86_400.0)
    }
}

fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| "-".to_owned(), f)
}

/// A site's cells in the `hub status` table.
fn table_row(r: &SiteRow) -> [String; 12] {
    [
        r.site.clone(),
        format!("{:?}", r.health).to_lowercase(),
        match (r.link, r.link_for_seconds) {
            (LinkState::Up, _) => "up".into(),
            (LinkState::Down, Some(t)) => format!("down {}", human_seconds(t)),
            (LinkState::Down, None) => "down".into(),
        },
        opt(r.rtt_ms, |v| format!("{v:.1}ms")),
        opt(r.records_per_second, |v| format!("{v:.1}")),
        opt(r.lag_records, |v| v.to_string()),
        opt(r.lag_seconds, |v| format!("{v:.1}")),
        opt(r.last_heartbeat_age_seconds, |v| {
            format!("{} ago", human_seconds(v))
        }),
        opt(r.retention_gap_records, |v| v.to_string()),
        r.poison_records.to_string(),
        opt(r.certificate_expires_in_days, |d| format!("{d:.0}d")),
        format!("{:?}", r.writer).to_lowercase(),
    ]
}

/// The table `hub status` prints: a header line about the hub, then one row per site in the
/// document's order (worst first), then the problems of the sites that have any.
pub fn render_table(s: &HubStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "hub {} (v{}) listening on {}{}: {} sites, {} connected",
        s.hub_id,
        s.version,
        s.listen.as_deref().unwrap_or("-"),
        if s.stopping { ", STOPPING" } else { "" },
        s.sites.len(),
        s.sites_connected
    );
    if !s.fleet_started {
        out.push_str("the fleet has not started yet (central cluster unreachable?): no sites\n");
        return out;
    }
    if s.sites.is_empty() {
        out.push_str("no sites in the shards this hub owns\n");
        return out;
    }
    let header = [
        "SITE",
        "HEALTH",
        "LINK",
        "RTT",
        "REC/S",
        "LAG",
        "LAG(S)",
        "HEARTBEAT",
        "GAP",
        "POISON",
        "CERT",
        "WRITER",
    ];
    let rows: Vec<[String; 12]> = s.sites.iter().map(table_row).collect();
    er_net::status_client::text_table(&header, &rows, "", &mut out);
    let troubled: Vec<&SiteRow> = s.sites.iter().filter(|r| !r.problems.is_empty()).collect();
    if !troubled.is_empty() {
        out.push('\n');
        for r in troubled {
            let _ = writeln!(out, "{}: {}", r.site, r.problems.join("; "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const NOW: i64 = 1_800_000_000_000;

    fn snap() -> SiteSnapshot {
        SiteSnapshot {
            records: 1_000,
            records_per_second: Some(12.5),
            lag_seconds: Some(0.4),
            poison_records: 0,
            stopped_partitions: 0,
            transactions_failed: 0,
            last_commit_ms: Some(NOW - 1_000),
            last_failure_ms: None,
            heartbeat_ms: Some(NOW - 1_500),
            heartbeat_committed_ms: Some(NOW - 1_000),
            certificate_not_after_s: Some(NOW / 1000 + 90 * 86_400),
            disconnected_ms: None,
            agent: Some((
                NOW - 2_000,
                AgentFigures {
                    lag_records: Some(3),
                    ..Default::default()
                },
            )),
            history: Vec::new(),
        }
    }

    fn up() -> Option<(std::net::SocketAddr, Duration, i64)> {
        Some((
            "10.0.0.7:50000".parse().unwrap(),
            Duration::from_micros(1_500),
            NOW - 60_000,
        ))
    }

    #[test]
    fn a_healthy_site_is_ok_and_each_figure_past_its_threshold_says_why() {
        let r = row("plant-1", &snap(), up(), 0, NOW);
        assert_eq!((r.health, r.problems.len()), (Health::Ok, 0), "{r:?}");
        assert_eq!(r.writer, WriterState::Idle);
        assert_eq!(r.rtt_ms, Some(1.5));
        assert_eq!(r.lag_records, Some(3));
        assert_eq!(r.last_heartbeat_age_seconds, Some(1.0));

        type Case = (
            &'static str,
            fn(&mut SiteSnapshot),
            usize,
            bool,
            Health,
            &'static str,
        );
        let cases: &[Case] = &[
            ("down", |_| {}, 0, false, Health::Critical, "link down"),
            (
                "failing",
                |s| s.last_failure_ms = Some(NOW - 5_000),
                0,
                true,
                Health::Critical,
                "writer failing",
            ),
            (
                "stuck",
                |s| s.last_commit_ms = Some(NOW - 120_000),
                2,
                true,
                Health::Critical,
                "writer stuck",
            ),
            (
                "gap",
                |s| s.agent.as_mut().unwrap().1.retention_gap_records = 40,
                0,
                true,
                Health::Critical,
                "40 records lost to edge retention",
            ),
            (
                "cert soon",
                |s| s.certificate_not_after_s = Some(NOW / 1000 + 86_400),
                0,
                true,
                Health::Critical,
                "certificate expires in 1.0 days",
            ),
            (
                "cert",
                |s| s.certificate_not_after_s = Some(NOW / 1000 + 10 * 86_400),
                0,
                true,
                Health::Warning,
                "certificate expires in 10 days",
            ),
            (
                "lag",
                |s| s.lag_seconds = Some(900.0),
                0,
                true,
                Health::Warning,
                "lag 15 min",
            ),
            (
                "heartbeat",
                |s| s.heartbeat_committed_ms = Some(NOW - 90_000),
                0,
                true,
                Health::Warning,
                "no heartbeat for over a minute",
            ),
            (
                "poison",
                |s| s.poison_records = 2,
                0,
                true,
                Health::Warning,
                "2 poison records",
            ),
            (
                "stopped",
                |s| s.stopped_partitions = 1,
                0,
                true,
                Health::Critical,
                "1 partitions stopped at a record the hub cannot write",
            ),
            (
                "plugin",
                |s| s.agent.as_mut().unwrap().1.plugin_errors = 7,
                0,
                true,
                Health::Warning,
                "7 plugin errors",
            ),
            (
                "stops",
                |s| s.agent.as_mut().unwrap().1.route_stops = 1,
                0,
                true,
                Health::Warning,
                "1 plugin route stops",
            ),
        ];
        for (name, change, inflight, is_up, health, problem) in cases {
            let mut s = snap();
            change(&mut s);
            let r = row(
                "plant-1",
                &s,
                if *is_up { up() } else { None },
                *inflight,
                NOW,
            );
            assert_eq!(r.health, *health, "{name}: {r:?}");
            assert_eq!(r.problems, [problem.to_string()], "{name}");
        }
        let r = row("plant-1", &snap(), up(), 2, NOW);
        assert_eq!((r.writer, r.health), (WriterState::Writing, Health::Ok));
    }

    #[test]
    fn rows_sort_worst_first_then_by_lag() {
        let mut late = snap();
        late.lag_seconds = Some(30.0);
        let mut rows = vec![
            row("a-ok", &snap(), up(), 0, NOW),
            row("b-down", &snap(), None, 0, NOW),
            row("c-late", &late, up(), 0, NOW),
        ];
        sort_worst_first(&mut rows);
        let order: Vec<&str> = rows.iter().map(|r| r.site.as_str()).collect();
        assert_eq!(order, ["b-down", "c-late", "a-ok"]);
    }

    #[test]
    fn the_table_has_a_row_per_site_in_order_and_lists_problems() {
        let mut rows = vec![
            row("plant-1", &snap(), up(), 0, NOW),
            row("plant-2", &snap(), None, 0, NOW),
        ];
        sort_worst_first(&mut rows);
        let status = HubStatus {
            hub_id: "hub-1".into(),
            version: "0.1.0".into(),
            listen: Some("0.0.0.0:4433".into()),
            stopping: false,
            sites_connected: 1,
            generated_ms: NOW,
            fleet_started: true,
            sites: rows,
        };
        let text = render_table(&status);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "hub hub-1 (v0.1.0) listening on 0.0.0.0:4433: 2 sites, 1 connected"
        );
        assert!(
            lines[1].starts_with("SITE     HEALTH    LINK  RTT"),
            "{text}"
        );
        assert!(lines[2].starts_with("plant-2  critical  down"), "{text}");
        assert!(
            lines[3].starts_with("plant-1  ok        up    1.5ms  12.5   3    0.4"),
            "{text}"
        );
        assert_eq!(lines[5], "plant-2: link down", "{text}");
        // The JSON round trip `hub status --json` and the table rely on.
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<HubStatus>(&json).unwrap(), status);
    }
}
