//! The results table (markdown), the JSON file and the run's context.

use std::fmt::Write as _;

use serde::Serialize;

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
