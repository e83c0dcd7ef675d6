//! The results table (markdown), the JSON file and the run's context.

use std::fmt::Write as _;

use serde::Serialize;

use crate::lag::{self, LagSeries};
use crate::run::{Metrics, Outcome, ScenarioResult, Settings};
use crate::scenario::System;

/// Everything one invocation found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Start time, RFC 3339.
    pub started: String,
    /// `git describe`-ish: commit and whether the tree was dirty.
    pub commit: String,
    /// CPU model and count.
    pub machine: String,
    /// Kafka release of brokers and MM2.
    pub kafka: String,
    /// Build profile of er-bench, agent and hub.
    pub profile: String,
    /// The command line.
    pub command: String,
    /// Where the brokers came from.
    pub brokers: String,
    /// Shared settings.
    pub settings: Settings,
    /// Per scenario.
    pub scenarios: Vec<ScenarioResult>,
}

/// Higher is better, lower is better, or a text-only row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Higher,
    Lower,
    Text,
}

/// A row's number from a run's metrics.
type ValueFn = Box<dyn Fn(&Metrics) -> Option<f64>>;
/// A text-only row's content.
type TextFn = Box<dyn Fn(&Metrics) -> String>;

struct Row {
    name: String,
    kind: Kind,
    value: ValueFn,
    text: Option<TextFn>,
}

/// A number with a sensible precision: thousands grouped for large ones, 3 significant digits
/// for small ones.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "?".into();
    }
    if v.abs() >= 1000.0 {
        let s = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn rows(s: &ScenarioResult, settings: &Settings) -> Vec<Row> {
    let mut v = vec![
        Row {
            name: "throughput, records/s".into(),
            kind: Kind::Higher,
            value: Box::new(|m| Some(m.records_per_s)),
            text: None,
        },
        Row {
            name: "throughput, MB/s".into(),
            kind: Kind::Higher,
            value: Box::new(|m| Some(m.mb_per_s)),
            text: None,
        },
    ];
    if s.workload.hot_headers {
        v.push(Row {
            name: "kept records/s".into(),
            kind: Kind::Higher,
            value: Box::new(|m| Some(m.kept_records_per_s)),
            text: None,
        });
    }
    v.extend([
        Row {
            name: "CPU s / M records".into(),
            kind: Kind::Lower,
            value: Box::new(|m| Some(m.cpu_s_per_m)),
            text: None,
        },
        Row {
            name: "CPU s / M records, per process".into(),
            kind: Kind::Text,
            value: Box::new(|_| None),
            text: Some(Box::new(|m| {
                m.processes
                    .iter()
                    .map(|p| format!("{} {}", p.label, num(p.cpu_s_per_m)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })),
        },
        Row {
            name: "peak RSS, MiB".into(),
            kind: Kind::Lower,
            value: Box::new(|m| Some(m.processes.iter().map(|p| p.peak_rss_mib).sum())),
            text: None,
        },
        Row {
            name: "peak RSS MiB, per process".into(),
            kind: Kind::Text,
            value: Box::new(|_| None),
            text: Some(Box::new(|m| {
                m.processes
                    .iter()
                    .map(|p| format!("{} {}", p.label, num(p.peak_rss_mib)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })),
        },
        Row {
            name: "link bytes / record".into(),
            kind: Kind::Lower,
            value: Box::new(|m| m.link_bytes_per_record),
            text: None,
        },
        Row {
            name: format!("latency p50, ms (at {} rec/s)", settings.latency.rate),
            kind: Kind::Lower,
            value: Box::new(|m| m.latency.map(|l| l.p50_ms)),
            text: None,
        },
        Row {
            name: format!("latency p99, ms (at {} rec/s)", settings.latency.rate),
            kind: Kind::Lower,
            value: Box::new(|m| m.latency.map(|l| l.p99_ms)),
            text: None,
        },
        Row {
            name: "heartbeat latency p50, ms (ours: replicated MM2 heartbeats)".into(),
            kind: Kind::Lower,
            value: Box::new(|m| m.latency.and_then(|l| l.heartbeat_p50_ms)),
            text: None,
        },
        Row {
            name: "measured window, s".into(),
            kind: Kind::Lower,
            value: Box::new(|m| Some(m.window_s)),
            text: None,
        },
        Row {
            name: "start-up (process start → window), s".into(),
            kind: Kind::Text,
            value: Box::new(|m| Some(m.startup_s)),
            text: None,
        },
    ]);
    v
}

fn cell(o: Option<&Outcome>, row: &Row) -> (String, Option<f64>) {
    match o {
        None => ("—".into(), None),
        Some(Outcome::Failed { .. }) => ("FAILED".into(), None),
        Some(Outcome::NotApplicable { .. }) => ("n/a".into(), None),
        Some(Outcome::Measured(m)) => {
            if let Some(t) = &row.text {
                return (t(m), None);
            }
            match (row.value)(m) {
                Some(v) => (num(v), Some(v)),
                None => ("n/a".into(), None),
            }
        }
    }
}

fn ratio(ours: Option<f64>, other: Option<f64>, kind: Kind) -> String {
    match (ours, other, kind) {
        (_, _, Kind::Text) => "".into(),
        (Some(a), Some(b), _) if b > 0.0 && a.is_finite() && b.is_finite() => {
            format!("{:.2}x", a / b)
        }
        _ => "—".into(),
    }
}

/// The markdown table: one row per scenario and metric, columns ours / MM2 / baseline and the
/// ratios ours/MM2 and ours/baseline.
pub fn table(report: &Report) -> String {
    let mut t = String::from(
        "| scenario | metric | ours | MM2 | baseline | ours/MM2 | ours/baseline |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    for s in &report.scenarios {
        for row in rows(s, &report.settings) {
            let (o, ov) = cell(s.outcome(System::Ours), &row);
            let (m, mv) = cell(s.outcome(System::Mm2), &row);
            let (b, bv) = cell(s.outcome(System::Baseline), &row);
            let _ = writeln!(
                t,
                "| {} | {} | {o} | {m} | {b} | {} | {} |",
                s.name,
                row.name,
                ratio(ov, mv, row.kind),
                ratio(ov, bv, row.kind)
            );
        }
    }
    t
}

/// The whole markdown file: context, table, notes, column meanings.
pub fn markdown(report: &Report) -> String {
    let mut md = format!("# er-bench results, {}\n\n", report.started);
    let _ = writeln!(
        md,
        "commit {} · {} build · Kafka {} · {} · brokers: {}\n\n`{}`\n",
        report.commit, report.profile, report.kafka, report.machine, report.brokers, report.command
    );
    md.push_str(&table(report));
    md.push_str(&lag_section(report));
    md.push_str("\n## Notes\n\n");
    for s in &report.scenarios {
        let w = &s.workload;
        let _ = writeln!(
            md,
            "- **{}** ({}): {} records of {} B ({:?} payload, {} keys), {} topic(s) x {} partitions, preloaded with {} compression in {:.1} s.",
            s.name,
            s.about,
            w.records,
            w.value_bytes,
            w.payload,
            w.keys,
            w.topics,
            w.partitions,
            w.source_compression,
            s.preload_s
        );
        for n in &s.notes {
            let _ = writeln!(md, "  - {n}");
        }
        for (sys, o) in &s.systems {
            match o {
                Outcome::Failed { reason } => {
                    let _ = writeln!(md, "  - {} FAILED: {}", sys.label(), one_line(reason, 600));
                }
                Outcome::NotApplicable { reason } => {
                    let _ = writeln!(md, "  - {} n/a: {reason}", sys.label());
                }
                Outcome::Measured(m) => {
                    if let Some(e) = &m.latency_error {
                        let _ =
                            writeln!(md, "  - {} latency n/a: {}", sys.label(), one_line(e, 300));
                    }
                    if m.link_bytes.is_none() {
                        let _ = writeln!(md, "  - {} link bytes {}", sys.label(), m.link_note);
                    }
                }
            }
        }
    }
    md.push_str(COLUMNS);
    md
}

fn one_line(s: &str, max: usize) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max).collect::<String>())
    } else {
        s
    }
}

const COLUMNS: &str = "
## How each row is measured

Every run replicates the preloaded topics into fresh destination topics and is checked while it
runs: a read_committed consumer on the central cluster counts every destination partition and
folds key, value, headers and timestamp of each record, in order, into a digest that must equal
the digest of what the preloader wrote (after the scenario's filter or transform). A missing,
extra, reordered or altered record marks the cell FAILED and no number is reported.

- **throughput**: source records (and source key+value bytes, MB = 10^6 B) divided by the
  measured window: from the moment data starts crossing the replication link (64 KiB beyond
  what crossed at start-up, read from the counting proxies every 5 ms) or the first record
  landing at the destination, whichever is earlier, to the last expected record read at the
  destination. Start-up (JVM, topic creation, group join, transactional init) is excluded and
  shown separately; a replicator that holds records back before its first commit is not
  flattered, since the window opens when it starts reading.
- **kept records/s**: the same window, records the destination holds (filter scenarios).
- **CPU s / M records**: utime+stime from `/proc/<pid>/stat` of the replicator processes (ours:
  agent + hub; MM2: its JVM; baseline: the `er-bench pipe` process), sampled every 100 ms,
  over the measured window (rounded out to the samples), per million source records.
- **peak RSS**: the larger of VmRSS sampled every 100 ms and VmHWM at the end, per process;
  the sum over the system's processes.
- **link bytes / record**: bytes crossing the replication link in both directions from process
  start to the last arrival, per source record. Ours: UDP payload through a counting relay
  between agent and hub (QUIC, TLS, acks included). MM2 and baseline: TCP payload between the
  process and the edge broker through a counting proxy that the edge broker advertises as a
  second listener (fetches, metadata, MM2's offset syncs included); both sit at the central side.
- **latency**: a producer at the edge sends records at a fixed rate with the send time in a
  header; a consumer at the destination takes arrival − send (one clock). Measured after the
  bulk copy, with the replicator idle and caught up.
- **ratios**: ours divided by the other system, for every numeric row (throughput: higher is
  better; CPU, memory, bytes, latency: lower is better).
";

/// Links to the lag charts that were drawn, with when each system's first, half and last
/// records arrived; empty when there is none.
fn lag_section(report: &Report) -> String {
    let mut md = String::new();
    for s in &report.scenarios {
        let Some(file) = &s.lag_chart else {
            continue;
        };
        if md.is_empty() {
            let _ = write!(
                md,
                "\n## Replication lag over time\n\nRecords the destination still lacks, from each \
                 system's start to its last arrival, sampled every {} ms from the check \
                 consumer's count (read_committed: ours counts committed transactions only). The \
                 source is preloaded, so every line starts at the full count.\n",
                lag::INTERVAL.as_millis()
            );
        }
        let _ = writeln!(
            md,
            "\n### {}\n\n![replication lag in {}]({file})\n",
            s.name, s.name
        );
        for (sys, o) in &s.systems {
            if let Outcome::Measured(m) = o {
                let _ = writeln!(
                    md,
                    "- {}: first record at {:.1} s, {}",
                    sys.label(),
                    m.first_arrival_s,
                    m.lag.summary()
                );
            }
        }
    }
    md
}

/// Each measured system's lag series in one scenario, in column order.
pub fn lag_series(s: &ScenarioResult) -> Vec<(System, &LagSeries)> {
    s.systems
        .iter()
        .filter_map(|(sys, o)| match o {
            Outcome::Measured(m) if !m.lag.points.is_empty() => Some((*sys, &m.lag)),
            _ => None,
        })
        .collect()
}

/// The title of a scenario's lag chart.
pub fn lag_title(started: &str, s: &ScenarioResult) -> String {
    let w = &s.workload;
    let kept = lag_series(s).first().map_or(w.records, |(_, l)| l.expected);
    let kept = if kept == w.records {
        String::new()
    } else {
        format!(", {} kept", num(kept as f64))
    };
    format!(
        "{}: replication lag ({} records preloaded, {} partitions{kept}), er-bench {started}",
        s.name,
        num(w.records as f64),
        w.partitions
    )
}

/// `(scenario, system, MB/s, CPU s/M)` of every measured run, for the chart.
pub fn chart_points(report: &Report) -> Vec<crate::chart::Point> {
    let mut out = Vec::new();
    for s in &report.scenarios {
        for (sys, o) in &s.systems {
            if let Outcome::Measured(m) = o {
                out.push((s.name.clone(), *sys, m.mb_per_s, m.cpu_s_per_m));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Workload;
    use crate::scenario::{LatencyPlan, Payload};

    fn scenario(name: &str, records: u64, systems: Vec<(System, Outcome)>) -> ScenarioResult {
        ScenarioResult {
            name: name.into(),
            about: String::new(),
            workload: Workload {
                records,
                value_bytes: 1024,
                partitions: 8,
                topics: 1,
                keys: 10,
                payload: Payload::Json,
                hot_headers: false,
                source_compression: "zstd".into(),
            },
            preload_s: 1.0,
            systems,
            notes: Vec::new(),
            lag_chart: None,
        }
    }

    fn measured(
        expected: u64,
        first_arrival_s: f64,
        samples: &[(f64, u64)],
        last_s: f64,
    ) -> Outcome {
        let mut lag = LagSeries::new(expected, lag::INTERVAL);
        for &(t, arrived) in samples {
            lag.push(t, arrived);
        }
        lag.finish(last_s);
        Outcome::Measured(Box::new(Metrics {
            first_arrival_s,
            lag,
            ..Metrics::default()
        }))
    }

    fn report(scenarios: Vec<ScenarioResult>) -> Report {
        Report {
            started: "2026-11-26T02:49:29Z".into(),
            commit: "abc".into(),
            machine: "2 cores".into(),
            kafka: "4.3.1".into(),
            profile: "release".into(),
            command: "er-bench".into(),
            brokers: "local".into(),
            settings: Settings {
                records: None,
                quick: false,
                value_bytes: None,
                partitions: None,
                topics: 1,
                keys: 10,
                payload: None,
                source_compression: "zstd".into(),
                systems: vec![System::Ours, System::Mm2, System::Baseline],
                latency: LatencyPlan {
                    rate: 1000,
                    duration: std::time::Duration::from_secs(1),
                },
                link_proxy: true,
                wan_rtt: std::time::Duration::ZERO,
                wan_mbit: 50.0,
                stall_timeout: std::time::Duration::from_secs(1),
                keep_topics: false,
                agent_extra: String::new(),
                mm2_heap: "2G".into(),
            },
            scenarios,
        }
    }

    #[test]
    fn markdown_links_each_drawn_lag_chart_with_its_timings() {
        let mut one_k = scenario(
            "1k",
            1000,
            vec![
                (
                    System::Ours,
                    measured(1000, 1.2, &[(0.0, 0), (1.5, 600)], 2.0),
                ),
                (
                    System::Mm2,
                    Outcome::Failed {
                        reason: "stalled".into(),
                    },
                ),
                (
                    System::Baseline,
                    measured(1000, 0.3, &[(0.0, 0), (0.5, 100), (1.0, 700)], 1.3),
                ),
            ],
        );
        one_k.lag_chart = Some("20261126T024929Z-lag-1k.svg".into());
        // Drawn for nothing: no chart, no section.
        let filter = scenario(
            "filter10",
            1000,
            vec![(System::Ours, measured(100, 1.0, &[], 2.0))],
        );
        let md = markdown(&report(vec![one_k.clone(), filter.clone()]));
        assert!(md.contains("## Replication lag over time"), "{md}");
        assert!(
            md.contains("![replication lag in 1k](20261126T024929Z-lag-1k.svg)"),
            "{md}"
        );
        assert!(
            md.contains("- ours: first record at 1.2 s, half by 1.5 s, all by 2.0 s\n"),
            "{md}"
        );
        assert!(
            md.contains("- baseline: first record at 0.3 s, half by 1.0 s, all by 1.3 s\n"),
            "{md}"
        );
        assert!(!md.contains("- MM2: first record"), "{md}");
        assert!(!md.contains("lag in filter10"), "{md}");
        // Only the measured systems are charted; a filter's kept count is in the title.
        let lines = lag_series(&one_k);
        assert_eq!(
            lines.iter().map(|l| l.0).collect::<Vec<_>>(),
            [System::Ours, System::Baseline]
        );
        assert_eq!(
            lag_title("T", &filter),
            "filter10: replication lag (1,000 records preloaded, 8 partitions, 100 kept), er-bench T"
        );
        let md = markdown(&report(vec![filter]));
        assert!(!md.contains("Replication lag"), "{md}");
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(1234567.8), "1,234,568");
        assert_eq!(num(999.4), "999");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(0.0123), "0.01");
        assert_eq!(num(f64::NAN), "?");
        assert_eq!(ratio(Some(2.0), Some(1.0), Kind::Higher), "2.00x");
        assert_eq!(ratio(Some(2.0), None, Kind::Lower), "—");
        assert_eq!(ratio(Some(2.0), Some(1.0), Kind::Text), "");
    }
}
