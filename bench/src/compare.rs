//! `er-bench --compare PREVIOUS.json`: runs the previous results file's scenarios and systems
//! again and prints what got worse. Both runs are read as JSON values (not the structs), so a
//! results file written by an older er-bench still compares as long as it has the fields.
//!
//! Absolute numbers move with the machine and the brokers (see bench/README.md), so besides
//! each system's own figures the comparison shows ours/MM2 and ours/baseline within each run:
//! those ratios are what a change of the agent or hub moves, whatever the machine did.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// Which way a figure should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// The figures compared, per (scenario, system): name, JSON path below the system's outcome,
/// and which way is better.
const FIGURES: &[(&str, &[&str], Better)] = &[
    ("records/s", &["records_per_s"], Better::Higher),
    ("kept records/s", &["kept_records_per_s"], Better::Higher),
    ("CPU s per M records", &["cpu_s_per_m"], Better::Lower),
    ("latency p50 ms", &["latency", "p50_ms"], Better::Lower),
    ("latency p99 ms", &["latency", "p99_ms"], Better::Lower),
    (
        "heartbeat latency p50 ms",
        &["latency", "heartbeat_p50_ms"],
        Better::Lower,
    ),
];

/// What the previous run did: its scenarios and systems, in order.
#[derive(Debug, Clone)]
pub struct Previous {
    /// The file it came from.
    pub path: String,
    /// Its commit.
    pub commit: String,
    /// Scenario names.
    pub scenarios: Vec<String>,
    /// System names (`ours`, `mm2`, `baseline`).
    pub systems: Vec<String>,
    /// Its settings (records, latency phase...), as written.
    pub settings: Value,
    /// The whole document.
    doc: Value,
}

/// Reads a results file written by er-bench.
pub fn load(path: &Path) -> Result<Previous> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the results file {}", path.display()))?;
    let doc: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an er-bench results file (JSON)", path.display()))?;
    let scenarios: Vec<String> = doc["scenarios"]
        .as_array()
        .with_context(|| format!("{}: no `scenarios` list", path.display()))?
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect();
    if scenarios.is_empty() {
        anyhow::bail!("{}: no scenario to run again", path.display());
    }
    let systems = doc["settings"]["systems"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(Previous {
        path: path.display().to_string(),
        commit: doc["commit"].as_str().unwrap_or("unknown").to_owned(),
        scenarios,
        systems,
        settings: doc["settings"].clone(),
        doc,
    })
}

/// One figure of one system in one scenario, before and after.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// System name, or a ratio such as `ours/mm2`.
    pub system: String,
    /// The figure.
    pub figure: &'static str,
    /// In the previous run.
    pub before: f64,
    /// In this run.
    pub after: f64,
    /// Worse by more than the threshold.
    pub regression: bool,
}

impl Row {
    /// `after` relative to `before`, in percent (positive: larger now).
    pub fn change_pct(&self) -> f64 {
        (self.after / self.before - 1.0) * 100.0
    }
}

/// The system's measured outcome in a scenario of a results document.
fn outcome<'a>(doc: &'a Value, scenario: &str, system: &str) -> Option<&'a Value> {
    let s = doc["scenarios"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == scenario)?;
    let (_, o) = s["systems"]
        .as_array()?
        .iter()
        .filter_map(|pair| Some((pair.get(0)?, pair.get(1)?)))
        .find(|(name, _)| *name == system)?;
    (o["status"] == "measured").then_some(o)
}

fn figure(o: &Value, path: &[&str]) -> Option<f64> {
    path.iter()
        .try_fold(o, |v, k| v.get(k))
        .and_then(Value::as_f64)
        .filter(|v| v.is_finite() && *v > 0.0)
}

/// Every figure both runs measured, with the ratios of ours to the others in each run;
/// `threshold_pct` is how much worse a figure may get before it counts as a regression.
pub fn compare(previous: &Previous, now: &Value, threshold_pct: f64) -> Vec<Row> {
    let mut rows = Vec::new();
    let worse = |better: Better, before: f64, after: f64| match better {
        Better::Higher => after < before * (1.0 - threshold_pct / 100.0),
        Better::Lower => after > before * (1.0 + threshold_pct / 100.0),
    };
    for scenario in &previous.scenarios {
        for system in &previous.systems {
            let (Some(a), Some(b)) = (
                outcome(&previous.doc, scenario, system),
                outcome(now, scenario, system),
            ) else {
                continue;
            };
            for (name, path, better) in FIGURES {
                if let (Some(before), Some(after)) = (figure(a, path), figure(b, path)) {
                    rows.push(Row {
                        scenario: scenario.clone(),
                        system: system.clone(),
                        figure: name,
                        before,
                        after,
                        regression: worse(*better, before, after),
                    });
                }
            }
        }
        for other in ["mm2", "baseline"] {
            let ratio = |doc: &Value| {
                let ours = figure(outcome(doc, scenario, "ours")?, &["kept_records_per_s"])?;
                Some(ours / figure(outcome(doc, scenario, other)?, &["kept_records_per_s"])?)
            };
            if let (Some(before), Some(after)) = (ratio(&previous.doc), ratio(now)) {
                rows.push(Row {
                    scenario: scenario.clone(),
                    system: format!("ours/{other}"),
                    figure: "kept records/s ratio",
                    before,
                    after,
                    regression: worse(Better::Higher, before, after),
                });
            }
        }
    }
    rows
}

/// The comparison as a markdown section: every row, regressions marked, and a verdict line.
pub fn markdown(previous: &Previous, rows: &[Row], threshold_pct: f64) -> String {
    let mut out = format!(
        "## Compared with {} (commit {})\n\nWorse by more than {threshold_pct}% is marked **regression**. Ratios within one run (ours/mm2, ours/baseline) move least with the machine.\n\n| scenario | system | figure | before | after | change | |\n|---|---|---|---:|---:|---:|---|\n",
        previous.path, previous.commit
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:+.1}% | {} |",
            r.scenario,
            r.system,
            r.figure,
            number(r.before),
            number(r.after),
            r.change_pct(),
            if r.regression { "**regression**" } else { "" }
        );
    }
    let regressions = rows.iter().filter(|r| r.regression).count();
    let _ = writeln!(
        out,
        "\n{}",
        match (rows.is_empty(), regressions) {
            (true, _) => "Nothing to compare: no figure was measured in both runs.".to_owned(),
            (false, 0) => format!("No regression among {} figures.", rows.len()),
            (false, n) => format!("{n} regressions among {} figures.", rows.len()),
        }
    );
    out
}

fn number(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(ours_rate: f64, ours_cpu: f64, mm2_rate: f64, p50: f64) -> Value {
        let measured = |rate: f64, cpu: f64| {
            json!({"status": "measured", "records_per_s": rate, "kept_records_per_s": rate,
                   "cpu_s_per_m": cpu, "latency": {"p50_ms": p50, "p99_ms": p50 * 3.0}})
        };
        json!({
            "commit": "abc1234",
            "settings": {"systems": ["ours", "mm2", "baseline"]},
            "scenarios": [{
                "name": "1k",
                "systems": [
                    ["ours", measured(ours_rate, ours_cpu)],
                    ["mm2", measured(mm2_rate, 20.0)],
                    ["baseline", {"status": "failed", "error": "broker gone"}],
                ],
            }],
        })
    }

    fn previous(doc: Value) -> Previous {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prev.json");
        std::fs::write(&path, doc.to_string()).unwrap();
        load(&path).unwrap()
    }

    #[test]
    fn a_slower_copy_and_more_cpu_are_regressions_and_a_faster_one_is_not() {
        let before = previous(run(40_000.0, 10.0, 20_000.0, 30.0));
        assert_eq!(before.scenarios, ["1k"]);
        assert_eq!(before.systems, ["ours", "mm2", "baseline"]);
        // Ours 20% slower and 30% more CPU; MM2 unchanged; latency 5% worse (within 10%).
        let rows = compare(&before, &run(32_000.0, 13.0, 20_000.0, 31.5), 10.0);
        let get = |system: &str, figure: &str| {
            rows.iter()
                .find(|r| r.system == system && r.figure == figure)
                .unwrap_or_else(|| panic!("{system} {figure} in {rows:?}"))
        };
        assert!(get("ours", "records/s").regression);
        assert!(get("ours", "CPU s per M records").regression);
        assert!(!get("ours", "latency p50 ms").regression);
        assert!(!get("mm2", "records/s").regression);
        let ratio = get("ours/mm2", "kept records/s ratio");
        assert_eq!((ratio.before, ratio.after), (2.0, 1.6));
        assert!(ratio.regression);
        // The failed baseline has no figures and no ratio.
        assert!(rows.iter().all(|r| !r.system.contains("baseline")));
        let md = markdown(&before, &rows, 10.0);
        assert!(
            md.contains("| 1k | ours | records/s | 40000 | 32000 | -20.0% | **regression** |"),
            "{md}"
        );
        assert!(md.contains("4 regressions among"), "{md}");

        let rows = compare(&before, &run(48_000.0, 9.0, 20_000.0, 25.0), 10.0);
        assert!(
            !rows.is_empty() && rows.iter().all(|r| !r.regression),
            "{rows:?}"
        );
        assert!(markdown(&before, &rows, 10.0).contains("No regression among"));
    }

    #[test]
    fn a_committed_results_file_compares_with_itself_without_regression() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/20261126T073804Z.json");
        let p = load(&path).unwrap();
        assert_eq!(p.scenarios.len(), 6, "{:?}", p.scenarios);
        let rows = compare(&p, &p.doc, 10.0);
        // Every scenario has our figures and the two ratios: the paths match what er-bench
        // writes.
        for s in &p.scenarios {
            for other in ["mm2", "baseline"] {
                let measured = outcome(&p.doc, s, other).is_some();
                let ratio = format!("ours/{other}");
                assert_eq!(
                    rows.iter().any(|r| &r.scenario == s && r.system == ratio),
                    measured,
                    "{s} {ratio} in {rows:?}"
                );
            }
            assert!(rows.iter().any(|r| &r.scenario == s && r.system == "ours"));
        }
        // MM2 cannot transform JSON: that scenario has no ours/mm2 ratio.
        assert!(outcome(&p.doc, "json-transform", "mm2").is_none());
        assert!(rows.iter().all(|r| !r.regression && r.change_pct() == 0.0));
    }

    #[test]
    fn a_file_that_is_not_a_results_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.json");
        std::fs::write(&path, "{\"scenarios\": []}").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("notes.json") && e.contains("no scenario"), "{e}");
        std::fs::write(&path, "not json").unwrap();
        let e = format!("{:#}", load(&path).unwrap_err());
        assert!(e.contains("not an er-bench results file"), "{e}");
    }
}
