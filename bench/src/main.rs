//! `er-bench`: edge-replicator against MirrorMaker 2 and a plain rdkafka pipe, on the same real
//! brokers and the same preloaded records, every run checked record by record.
//!
//! ```text
//! cargo run --release -p er-bench -- [--scenario NAME|all] [--records N] [--quick]
//! cargo run --release -p er-bench -- fleet --sites 0,40,200 [--rate R] [--duration S] [--restart-hub]
//! ```
//! See bench/README.md for the flags, the columns and how each is measured.

mod brokers;
mod chart;
mod check;
mod compare;
mod data;
mod fleet;
mod lag;
mod latency;
mod mm2;
mod ours;
mod pipe;
mod procs;
mod report;
mod run;
mod scenario;
mod shaper;
mod tcp_proxy;
mod udp_relay;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::report::Report;
use crate::run::{Bench, Settings};
use crate::scenario::{LatencyPlan, Payload, System};

/// Benchmarks edge-replicator against MirrorMaker 2 and a plain rdkafka pipe.
#[derive(Debug, Parser)]
#[command(name = "er-bench", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// One hub and N simulated sites: hub threads, memory, central connections and CPU per
    /// connected site, the reconnect storm after a hub restart, every record checked exactly
    /// once (see bench/README.md, "Fleet").
    Fleet(fleet::FleetArgs),
    /// The baseline pipe (started by er-bench itself).
    #[command(hide = true)]
    Pipe(pipe::PipeArgs),
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Scenarios (comma-separated or repeated): all, 1k, 100b, 10k, filter10, json-transform,
    /// wan (needs --wan).
    #[arg(long, default_value = "all")]
    scenario: Vec<String>,
    /// Records per scenario (default: the scenario's own count).
    #[arg(long)]
    records: Option<u64>,
    /// Small record counts and a short latency phase: a smoke test of a few minutes.
    #[arg(long)]
    quick: bool,
    /// Value size in bytes (default: the scenario's).
    #[arg(long)]
    value_bytes: Option<usize>,
    /// Partitions per source topic (default: the scenario's).
    #[arg(long)]
    partitions: Option<i32>,
    /// Source topics per scenario.
    #[arg(long, default_value_t = 1)]
    topics: u32,
    /// Distinct record keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Payload kind (default json: compressible sensor-style JSON).
    #[arg(long, value_enum)]
    payload: Option<Payload>,
    /// Compression of the preloading producer (what a fetch from the edge carries).
    #[arg(long, default_value = "zstd")]
    source_compression: String,
    /// Systems to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ours,mm2,baseline"
    )]
    systems: Vec<System>,
    /// Latency phase: records per second.
    #[arg(long)]
    latency_rate: Option<u32>,
    /// Latency phase: seconds.
    #[arg(long)]
    latency_secs: Option<u64>,
    /// No counting proxies on the links (link bytes become n/a).
    #[arg(long)]
    direct: bool,
    /// Enable the `wan` scenario (and include it in `all`).
    #[arg(long)]
    wan: bool,
    /// WAN round-trip time, ms.
    #[arg(long, default_value_t = 100)]
    wan_rtt_ms: u64,
    /// WAN rate each way, Mbit/s.
    #[arg(long, default_value_t = 50.0)]
    wan_mbit: f64,
    /// Fail a run when nothing new arrived for this long (start-up included).
    #[arg(long, default_value_t = 180)]
    stall_timeout_secs: u64,
    /// Directory holding prebuilt `edge-agent` and `hub` (default: build them next to er-bench).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Directory of the example plugins (default: plugins/examples/target/wasm32-wasip2/release).
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// Where results go (default: bench/results).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Keep the topics of each scenario.
    #[arg(long)]
    keep_topics: bool,
    /// Keep configs and logs of every process even when all runs pass.
    #[arg(long)]
    keep_logs: bool,
    /// TOML appended to every agent config (after [batching]), e.g. batching overrides.
    #[arg(long, default_value = "")]
    agent_extra: String,
    /// MirrorMaker 2's JVM heap.
    #[arg(long, default_value = "2G")]
    mm2_heap: String,
    /// Runs the scenarios and systems of this earlier results file again (with its record
    /// counts, latency phase and WAN setting) and prints what got worse; exits with status 3
    /// when something did.
    #[arg(long, value_name = "RESULTS.json")]
    compare: Option<PathBuf>,
    /// With --compare: how much worse (percent) a figure may get before it is a regression.
    #[arg(long, default_value_t = 10.0)]
    regression_pct: f64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Pipe(args)) => return pipe::run(&args),
        Some(Cmd::Fleet(args)) => return fleet::run(args),
        None => {}
    }
    bench(cli.bench)
}

fn git_commit(workspace: &std::path::Path) -> String {
    // For a build from an exported tree (no .git): say which commit it was.
    if let Ok(c) = std::env::var("ER_BENCH_COMMIT") {
        return c;
    }
    let out = |args: &[&str]| {
        Command::new("git")
            .current_dir(workspace)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let head = out(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        out(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{head} (+ uncommitted changes)")
    } else {
        head
    }
}

/// The 1-minute load average (other work on the machine skews every number).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cores} cores ({model}), load {:.2} at start",
        load_average()
    )
}

/// Takes the scenarios, systems and workload of a previous run for `--compare`.
fn repeat(a: &mut BenchArgs, previous: &compare::Previous) -> Result<()> {
    a.scenario = previous.scenarios.clone();
    a.wan |= previous.scenarios.iter().any(|s| s == "wan");
    a.systems = previous
        .systems
        .iter()
        .map(|s| {
            <System as clap::ValueEnum>::from_str(s, true)
                .map_err(|e| anyhow::anyhow!("{}: system {s:?}: {e}", previous.path))
        })
        .collect::<Result<_>>()?;
    let settings = &previous.settings;
    a.records = settings["records"].as_u64();
    a.quick = settings["quick"].as_bool().unwrap_or(false);
    a.latency_rate = settings["latency"]["rate"].as_u64().map(|r| r as u32);
    a.latency_secs = settings["latency"]["duration"].as_f64().map(|d| d as u64);
    Ok(())
}

fn bench(mut a: BenchArgs) -> Result<()> {
    let previous = a.compare.as_deref().map(compare::load).transpose()?;
    if let Some(p) = &previous {
        repeat(&mut a, p)?;
        eprintln!(
            "[er-bench] comparing with {} (commit {}): scenarios {}, systems {}",
            p.path,
            p.commit,
            p.scenarios.join(","),
            p.systems.join(",")
        );
    }
    let workspace = run::workspace_root();
    let scenarios = scenario::select(&a.scenario, a.wan)?;
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp = started.replace([':', '-'], "");
    let out_dir = a
        .out_dir
        .clone()
        .unwrap_or_else(|| workspace.join("bench/results"));
    std::fs::create_dir_all(&out_dir)?;
    let settings = Settings {
        records: a.records,
        quick: a.quick,
        value_bytes: a.value_bytes,
        partitions: a.partitions,
        topics: a.topics,
        keys: a.keys,
        payload: a.payload,
        source_compression: a.source_compression.clone(),
        systems: a.systems.clone(),
        latency: LatencyPlan {
            rate: a.latency_rate.unwrap_or(if a.quick { 500 } else { 1000 }),
            duration: Duration::from_secs(a.latency_secs.unwrap_or(if a.quick { 2 } else { 10 })),
        },
        link_proxy: !a.direct,
        wan_rtt: Duration::from_millis(a.wan_rtt_ms),
        wan_mbit: a.wan_mbit,
        stall_timeout: Duration::from_secs(a.stall_timeout_secs),
        keep_topics: a.keep_topics,
        agent_extra: a.agent_extra.clone(),
        mm2_heap: a.mm2_heap.clone(),
    };
    let (bins, release) = if settings.systems.contains(&System::Ours) {
        ours::binaries(a.bin_dir.as_deref(), &workspace)?
    } else {
        (PathBuf::new(), true)
    };
    let self_release = !cfg!(debug_assertions);
    if !(release && self_release) {
        eprintln!("[er-bench] WARNING: not a release build; numbers are not comparable");
    }
    let classpath = if settings.systems.contains(&System::Mm2) {
        er_tests::kafka::classpath().context("resolving the Kafka jars for MM2")?
    } else {
        String::new()
    };
    let work = std::env::temp_dir().join(format!("er-bench-{stamp}"));
    std::fs::create_dir_all(&work)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let brokers = brokers::Brokers::start(!a.direct)?;
    let run_id = format!("{:04x}", rand::random::<u16>());
    let broker_note = if brokers.attached {
        format!("attached ({}, {})", brokers.edge, brokers.central)
    } else {
        "started by er-bench (single-node KRaft, 512 MiB heap each)".to_owned()
    };
    let b = Bench {
        settings: settings.clone(),
        brokers,
        rt,
        bins,
        work: work.clone(),
        run_id,
        plugin_dir: a
            .plugin_dir
            .clone()
            .unwrap_or_else(|| scenario::plugin_dir(&workspace)),
        classpath,
    };
    let mut report = Report {
        started: started.clone(),
        commit: git_commit(&workspace),
        machine: machine(),
        kafka: er_tests::kafka::kafka_version().to_owned(),
        profile: if release && self_release {
            "release"
        } else {
            "debug"
        }
        .to_owned(),
        command: std::iter::once("er-bench".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        brokers: broker_note,
        settings,
        scenarios: Vec::new(),
    };
    for s in &scenarios {
        match b.run_scenario(s) {
            Ok(r) => report.scenarios.push(r),
            Err(e) => {
                eprintln!("[er-bench] {}: scenario aborted: {e:#}", s.name);
                report.scenarios.push(run::ScenarioResult {
                    name: s.name.to_owned(),
                    about: s.about.to_owned(),
                    workload: data::Workload {
                        records: 0,
                        value_bytes: s.value_bytes,
                        partitions: s.partitions,
                        topics: 0,
                        keys: 0,
                        payload: Payload::Json,
                        hot_headers: false,
                        source_compression: String::new(),
                    },
                    preload_s: 0.0,
                    systems: Vec::new(),
                    notes: vec![format!("scenario aborted: {e:#}")],
                    lag_chart: None,
                });
            }
        }
    }
    report.machine = format!("{}, {:.2} at end", report.machine, load_average());
    let md_path = out_dir.join(format!("{stamp}.md"));
    let json_path = out_dir.join(format!("{stamp}.json"));
    let svg_path = out_dir.join(format!("{stamp}.svg"));
    // Charts first: the markdown and JSON name the lag charts that were drawn.
    let mut lag_paths = Vec::new();
    for s in &mut report.scenarios {
        let name = format!("{stamp}-lag-{}.svg", s.name);
        let path = out_dir.join(&name);
        let lines = report::lag_series(s);
        if lines.is_empty() {
            continue;
        }
        match chart::draw_lag(&path, &report::lag_title(&started, s), &lines) {
            Ok(()) => {
                s.lag_chart = Some(name);
                lag_paths.push(path.display().to_string());
            }
            Err(e) => eprintln!("[er-bench] {}: lag chart not drawn: {e:#}", s.name),
        }
    }
    if let Err(e) = chart::draw(
        &svg_path,
        &format!("er-bench {started}: ours vs MM2 vs baseline"),
        &report::chart_points(&report),
    ) {
        eprintln!("[er-bench] chart not drawn: {e:#}");
    }
    let comparison = match &previous {
        Some(p) => {
            let rows = compare::compare(p, &serde_json::to_value(&report)?, a.regression_pct);
            Some((compare::markdown(p, &rows, a.regression_pct), rows))
        }
        None => None,
    };
    let mut md = report::markdown(&report);
    if let Some((section, _)) = &comparison {
        md.push('\n');
        md.push_str(section);
    }
    std::fs::write(&md_path, md)?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;
    println!("{}", report::table(&report));
    if let Some((section, _)) = &comparison {
        println!("{section}");
    }
    let any_failed = report.scenarios.iter().any(|s| {
        s.systems
            .iter()
            .any(|(_, o)| matches!(o, run::Outcome::Failed { .. }))
    });
    eprintln!(
        "[er-bench] wrote {}, {}, {}{}",
        md_path.display(),
        json_path.display(),
        svg_path.display(),
        lag_paths
            .iter()
            .map(|p| format!(", {p}"))
            .collect::<String>()
    );
    if any_failed || a.keep_logs {
        eprintln!("[er-bench] configs and logs kept in {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    drop(b);
    if let Some((_, rows)) = comparison
        && rows.iter().any(|r| r.regression)
    {
        std::process::exit(3);
    }
    Ok(())
}
