//! One scenario: preload once, then replicate with each system into fresh destination topics,
//! check, measure, clean up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;

use crate::brokers::Brokers;
use crate::check::{self, CheckSpec};
use crate::data::{self, Expected, Workload};
use crate::lag::{self, LagSeries};
use crate::latency::{self, Latency};
use crate::mm2::Mm2Setup;
use crate::ours::OursSetup;
use crate::procs::{self, Child, Sampler, Series};
use crate::scenario::{self, LatencyPlan, Payload, Processing, Scenario, System};
use crate::shaper::{LinkCounters, LinkShape};
use crate::tcp_proxy::TcpProxy;

/// Settings from the command line that every scenario shares.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Override of the scenario's record count.
    pub records: Option<u64>,
    /// Small counts for a smoke test.
    pub quick: bool,
    /// Override of the value size.
    pub value_bytes: Option<usize>,
    /// Override of the partition count.
    pub partitions: Option<i32>,
    /// Source topics per scenario.
    pub topics: u32,
    /// Distinct keys.
    pub keys: u64,
    /// Override of the payload kind.
    pub payload: Option<Payload>,
    /// Preload producer compression.
    pub source_compression: String,
    /// Systems to run, in order.
    pub systems: Vec<System>,
    /// Latency phase.
    pub latency: LatencyPlan,
    /// Count link bytes through proxies (MM2 and baseline: TCP proxy to the edge broker; ours:
    /// UDP relay between agent and hub).
    pub link_proxy: bool,
    /// Emulated WAN round trip for the `wan` scenario.
    #[serde(skip)]
    pub wan_rtt: Duration,
    /// Emulated WAN rate for the `wan` scenario, Mbit/s each way.
    pub wan_mbit: f64,
    /// Give up on a run when nothing arrived for this long.
    #[serde(skip)]
    pub stall_timeout: Duration,
    /// Keep topics after each scenario.
    pub keep_topics: bool,
    /// Extra TOML for every agent config.
    pub agent_extra: String,
    /// MM2 JVM heap.
    pub mm2_heap: String,
}

/// Everything a scenario needs.
#[derive(Debug)]
pub struct Bench {
    /// Settings.
    pub settings: Settings,
    /// The clusters.
    pub brokers: Brokers,
    /// Runtime for the proxies and the harness's async helpers.
    pub rt: tokio::runtime::Runtime,
    /// Directory of `edge-agent` and `hub`.
    pub bins: PathBuf,
    /// Configs and logs of every process.
    pub work: PathBuf,
    /// Short random id in every topic name of this invocation.
    pub run_id: String,
    /// Directory of the example plugins.
    pub plugin_dir: PathBuf,
    /// MM2's class path.
    pub classpath: String,
}

/// Resource use of one process during the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct ProcMetrics {
    /// Role.
    pub label: String,
    /// CPU seconds from first to last arrival.
    pub cpu_window_s: f64,
    /// The same per million source records.
    pub cpu_s_per_m: f64,
    /// CPU seconds over the process's life until the end of the latency phase (start-up
    /// included).
    pub cpu_lifetime_s: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mib: f64,
}

/// Measurements of one checked run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Metrics {
    /// From data first crossing the link (or the first arrival, if earlier or unmeasured) to
    /// the last arrival at the destination, seconds.
    pub window_s: f64,
    /// Process start to the start of that window, seconds.
    pub startup_s: f64,
    /// Process start to the first record at the destination, seconds.
    pub first_arrival_s: f64,
    /// Source records.
    pub source_records: u64,
    /// Source records per second over the window.
    pub records_per_s: f64,
    /// Source key+value MB (10^6 bytes) per second over the window.
    pub mb_per_s: f64,
    /// Records the destination holds.
    pub kept_records: u64,
    /// Kept records per second over the window.
    pub kept_records_per_s: f64,
    /// CPU seconds per million source records, all processes of the system.
    pub cpu_s_per_m: f64,
    /// Per process.
    pub processes: Vec<ProcMetrics>,
    /// Bytes over the replication link, both directions, from start to the last arrival.
    pub link_bytes: Option<u64>,
    /// The same per source record.
    pub link_bytes_per_record: Option<f64>,
    /// How the link was measured (or why not).
    pub link_note: String,
    /// Fixed-rate latency.
    pub latency: Option<Latency>,
    /// Why there is no latency.
    pub latency_error: Option<String>,
    /// Records not yet at the destination over time, from the system's start to the last
    /// arrival.
    pub lag: LagSeries,
}

/// How one system fared in one scenario.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Outcome {
    /// Checked and measured.
    Measured(Box<Metrics>),
    /// Ran, but the destination did not hold exactly the expected records (or it crashed).
    Failed {
        /// Why.
        reason: String,
    },
    /// Not comparable or not possible yet.
    NotApplicable {
        /// Why.
        reason: String,
    },
}

/// One scenario's results.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// Scenario name.
    pub name: String,
    /// Description.
    pub about: String,
    /// What was preloaded.
    pub workload: Workload,
    /// Seconds the preload took.
    pub preload_s: f64,
    /// Outcome per system.
    pub systems: Vec<(System, Outcome)>,
    /// Remarks for the report (what MM2's equivalent is, ...).
    pub notes: Vec<String>,
    /// File name of the lag-over-time chart, beside the results files (once drawn).
    pub lag_chart: Option<String>,
}

impl ScenarioResult {
    /// The outcome of `sys`, if it ran.
    pub fn outcome(&self, sys: System) -> Option<&Outcome> {
        self.systems.iter().find(|(s, _)| *s == sys).map(|(_, o)| o)
    }
}

/// A running system, whatever it is.
struct Running {
    /// Processes: role, child.
    children: Vec<(&'static str, Child)>,
    /// The hub/agent pair, when it is ours (its children are in `ours`).
    ours: Option<crate::ours::Ours>,
    tcp: Option<TcpProxy>,
    counters: Option<Arc<LinkCounters>>,
    link_note: String,
}

impl Running {
    fn procs(&self) -> Vec<(&str, &Child)> {
        let mut v: Vec<(&str, &Child)> = self.children.iter().map(|(l, c)| (*l, c)).collect();
        if let Some(o) = &self.ours {
            v.push(("agent", &o.agent));
            v.push(("hub", &o.hub));
        }
        v
    }

    fn stop(&mut self) {
        if let Some(o) = &mut self.ours {
            o.stop();
        }
        for (_, c) in &mut self.children {
            c.stop(Duration::from_secs(5));
        }
        self.tcp = None;
    }
}

fn sanitize(s: &str) -> String {
    s.replace('-', "_")
}

impl Bench {
    /// Topic prefix of a scenario.
    fn prefix(&self, scen: &Scenario) -> String {
        format!("bench-{}-{}", scen.name, self.run_id)
    }

    fn workload(&self, scen: &Scenario) -> Workload {
        let s = &self.settings;
        Workload {
            records: s.records.unwrap_or(if s.quick {
                scen.quick_records
            } else {
                scen.records
            }),
            value_bytes: s.value_bytes.unwrap_or(scen.value_bytes),
            partitions: s.partitions.unwrap_or(scen.partitions),
            topics: s.topics.max(1),
            keys: s.keys,
            payload: s.payload.unwrap_or(Payload::Json),
            hot_headers: scen.processing == Processing::FilterHot,
            source_compression: s.source_compression.clone(),
        }
    }

    fn shape(&self, scen: &Scenario) -> Option<LinkShape> {
        scen.wan
            .then(|| LinkShape::wan(self.settings.wan_rtt, self.settings.wan_mbit))
    }

    /// Runs one scenario with every selected system.
    pub fn run_scenario(&self, scen: &Scenario) -> Result<ScenarioResult> {
        let w = self.workload(scen);
        if scen.processing == Processing::JsonTransform && w.payload != Payload::Json {
            bail!("scenario {} needs --payload json", scen.name);
        }
        let prefix = self.prefix(scen);
        eprintln!(
            "[er-bench] {}: preloading {} records of {} B into {} topic(s) x {} partitions ({:?}, {})",
            scen.name,
            w.records,
            w.value_bytes,
            w.topics,
            w.partitions,
            w.payload,
            w.source_compression
        );
        for t in 0..w.topics {
            self.rt.block_on(er_tests::client::create_topic(
                &self.brokers.edge,
                &Workload::topic(&prefix, t),
                w.partitions,
                &[],
            ))?;
        }
        let base_ts = data::now_ms() - 60_000;
        let (exp, preload) =
            data::preload(&self.brokers.edge, &w, &prefix, scen.processing, base_ts)?;
        eprintln!(
            "[er-bench] {}: preloaded in {:.1} s ({:.0} rec/s); destination must hold {} records",
            scen.name,
            preload.as_secs_f64(),
            w.records as f64 / preload.as_secs_f64(),
            exp.kept_records
        );
        let exp = Arc::new(exp);
        let mut result = ScenarioResult {
            name: scen.name.to_owned(),
            about: scen.about.to_owned(),
            workload: w.clone(),
            preload_s: preload.as_secs_f64(),
            systems: Vec::new(),
            notes: Vec::new(),
            lag_chart: None,
        };
        if let Ok((_, what)) = scenario::mm2_transforms(scen.processing)
            && scen.processing != Processing::None
            && self.settings.systems.contains(&System::Mm2)
        {
            result.notes.push(format!("MM2 side: {what}"));
        }
        if scen.processing == Processing::FilterHot {
            result.notes.push(
                "ours: filter.wasm with condition header:hot == \"1\", before the link; baseline: the same header test in the pipe".into(),
            );
        }
        if scen.processing == Processing::JsonTransform {
            result.notes.push(
                "ours: transform.wasm (drop humidity, rename temp -> temperature); baseline: the same edit with serde_json; checked as canonical JSON".into(),
            );
        }
        if scen.wan {
            result.notes.push(format!(
                "link emulated at {:.0} ms RTT, {} Mbit/s each way (MM2/baseline: TCP proxy to the edge broker; ours: the bench's UDP relay, to be replaced by issue 5's LinkProxy)",
                self.settings.wan_rtt.as_secs_f64() * 1000.0,
                self.settings.wan_mbit
            ));
        }
        let mut cleanup: Vec<String> = vec![prefix.clone()];
        for &sys in &self.settings.systems {
            eprintln!("[er-bench] {}: running {}", scen.name, sys.label());
            let (outcome, marker) = self.run_system(scen, &w, &exp, &prefix, sys);
            cleanup.push(marker);
            match &outcome {
                Outcome::Measured(m) => eprintln!(
                    "[er-bench] {}: {} checked OK: {:.0} rec/s, {:.1} MB/s, {:.2} CPU s/M rec",
                    scen.name,
                    sys.label(),
                    m.records_per_s,
                    m.mb_per_s,
                    m.cpu_s_per_m
                ),
                Outcome::Failed { reason } => {
                    eprintln!("[er-bench] {}: {} FAILED: {reason}", scen.name, sys.label())
                }
                Outcome::NotApplicable { reason } => {
                    eprintln!("[er-bench] {}: {} n/a: {reason}", scen.name, sys.label())
                }
            }
            result.systems.push((sys, outcome));
        }
        if !self.settings.keep_topics {
            self.cleanup(&cleanup);
        }
        Ok(result)
    }

    /// Deletes every topic whose name contains one of `markers`, on both clusters.
    fn cleanup(&self, markers: &[String]) {
        for b in [&self.brokers.edge, &self.brokers.central] {
            let Ok(topics) = self.rt.block_on(er_tests::client::list_topics(b)) else {
                continue;
            };
            let doomed: Vec<&str> = topics
                .iter()
                .filter(|t| markers.iter().any(|m| t.contains(m.as_str())))
                .map(String::as_str)
                .collect();
            if !doomed.is_empty() {
                let _ = self
                    .rt
                    .block_on(er_tests::client::delete_topics(b, &doomed));
            }
        }
    }

    /// Runs one system; returns its outcome and the marker of the topics it made.
    fn run_system(
        &self,
        scen: &Scenario,
        w: &Workload,
        exp: &Arc<Expected>,
        prefix: &str,
        sys: System,
    ) -> (Outcome, String) {
        let marker = match sys {
            System::Ours => format!("er-{}-{}", self.run_id, scen.name),
            System::Mm2 => format!("edge_{}_{}", self.run_id, sanitize(scen.name)),
            System::Baseline => format!("base_{}_{}", self.run_id, sanitize(scen.name)),
        };
        let outcome = match self.try_run_system(scen, w, exp, prefix, sys, &marker) {
            Ok(o) => o,
            Err(e) => Outcome::Failed {
                reason: format!("{e:#}"),
            },
        };
        (outcome, marker)
    }

    /// The edge address for a client on the far side of the link (MM2, baseline), with the
    /// proxy that counts (and maybe shapes) it.
    fn far_edge(&self, shape: Option<LinkShape>) -> Result<(String, Option<TcpProxy>, String)> {
        match self.brokers.far {
            Some(far) if self.settings.link_proxy => {
                let upstream: SocketAddr = ([127, 0, 0, 1], far.listen_port).into();
                let proxy =
                    self.rt
                        .block_on(TcpProxy::start(far.advertised_port, upstream, shape))?;
                Ok((
                    proxy.addr().to_string(),
                    Some(proxy),
                    "TCP payload bytes between this process and the edge broker (counting proxy the broker advertises)".into(),
                ))
            }
            _ => {
                if shape.is_some() {
                    bail!(
                        "the WAN link needs the edge broker's far-side listener (brokers started by er-bench, no --direct)"
                    );
                }
                Ok((
                    self.brokers.edge.clone(),
                    None,
                    if self.brokers.attached {
                        "n/a: attached brokers have no far-side listener".into()
                    } else {
                        "n/a: --direct".into()
                    },
                ))
            }
        }
    }

    fn try_run_system(
        &self,
        scen: &Scenario,
        w: &Workload,
        exp: &Arc<Expected>,
        prefix: &str,
        sys: System,
        marker: &str,
    ) -> Result<Outcome> {
        let sources: Vec<String> = (0..w.topics).map(|t| Workload::topic(prefix, t)).collect();
        let lat_src = format!("{prefix}-lat-{}", sanitize(&sys.label().to_lowercase()));
        let shape = self.shape(scen);
        let parts = w.partitions;
        let mut running = match sys {
            System::Ours => {
                let routes = match scenario::agent_routes(scen.processing, prefix, &self.plugin_dir)
                {
                    None => String::new(),
                    Some(r) => {
                        let dir = &self.plugin_dir;
                        let wasm = if scen.processing == Processing::FilterHot {
                            "filter.wasm"
                        } else {
                            "transform.wasm"
                        };
                        if !dir.join(wasm).exists() {
                            return Ok(Outcome::NotApplicable {
                                reason: format!(
                                    "{} missing: run plugins/build.sh",
                                    dir.join(wasm).display()
                                ),
                            });
                        }
                        r
                    }
                };
                self.lat_topic(&lat_src, parts)?;
                let setup = OursSetup {
                    site: marker.to_owned(),
                    edge: self.brokers.edge.clone(),
                    central: self.brokers.central.clone(),
                    include: vec![format!("{prefix}-t[0-9]+"), lat_src.clone()],
                    agent_extra: format!("{}\n{routes}", self.settings.agent_extra),
                    relay: (self.settings.link_proxy || shape.is_some()).then_some(shape),
                };
                // The relay's sockets and tasks live on the bench's runtime.
                let _rt = self.rt.enter();
                let ours = setup.start(&self.bins, &self.work)?;
                let counters = ours.relay.as_ref().map(|r| r.counters().clone());
                Running {
                    children: Vec::new(),
                    ours: Some(ours),
                    tcp: None,
                    counters,
                    link_note: if self.settings.link_proxy || shape.is_some() {
                        "UDP payload bytes between agent and hub (counting relay)".into()
                    } else {
                        "n/a: --direct".into()
                    },
                }
            }
            System::Mm2 => {
                let props = match scenario::mm2_transforms(scen.processing) {
                    Ok((p, _)) => p,
                    Err(why) => {
                        return Ok(Outcome::NotApplicable {
                            reason: why.to_owned(),
                        });
                    }
                };
                self.lat_topic(&lat_src, parts)?;
                let (edge, tcp, link_note) = self.far_edge(shape)?;
                let mut topics = sources.clone();
                topics.push(lat_src.clone());
                let setup = Mm2Setup {
                    alias: marker.to_owned(),
                    edge,
                    central: self.brokers.central.clone(),
                    topics,
                    tasks: (w.partitions as u32) * w.topics,
                    flow_props: props,
                    heap: self.settings.mm2_heap.clone(),
                };
                let child = setup.start(&self.work, &self.classpath)?;
                Running {
                    children: vec![("mm2", child)],
                    ours: None,
                    counters: tcp.as_ref().map(|t| t.counters().clone()),
                    tcp,
                    link_note,
                }
            }
            System::Baseline => {
                self.lat_topic(&lat_src, parts)?;
                let mut maps = Vec::new();
                for s in sources.iter().chain(std::iter::once(&lat_src)) {
                    let d = format!("{marker}.{s}");
                    self.rt.block_on(er_tests::client::create_topic(
                        &self.brokers.central,
                        &d,
                        parts,
                        &[],
                    ))?;
                    maps.push(format!("{s}={d}"));
                }
                let (edge, tcp, link_note) = self.far_edge(shape)?;
                let mut args = vec![
                    "pipe".to_owned(),
                    "--from".into(),
                    edge,
                    "--to".into(),
                    self.brokers.central.clone(),
                    "--partitions".into(),
                    parts.to_string(),
                ];
                for m in maps {
                    args.push("--map".into());
                    args.push(m);
                }
                match scen.processing {
                    Processing::None => {}
                    Processing::FilterHot => {
                        args.push("--keep-header".into());
                        args.push("hot=1".into());
                    }
                    Processing::JsonTransform => args.push("--json-transform".into()),
                }
                let exe = std::env::current_exe()?;
                let child = Child::spawn(
                    "pipe",
                    &exe,
                    &args,
                    &[],
                    &self.work.join(format!("pipe-{marker}.log")),
                )?;
                Running {
                    children: vec![("pipe", child)],
                    ours: None,
                    counters: tcp.as_ref().map(|t| t.counters().clone()),
                    tcp,
                    link_note,
                }
            }
        };
        let started = Instant::now();
        // Our agent's heartbeats are replicated like its topics; MM2's are written on the target
        // by its heartbeat connector, not replicated (no `<source>.heartbeats` in one flow).
        let heartbeats =
            (sys == System::Ours).then(|| format!("{marker}.{}", er_protocol::HEARTBEATS_TOPIC));
        let result = self.measure(
            scen,
            w,
            exp,
            &sources,
            &lat_src,
            marker,
            heartbeats.as_deref(),
            &running,
            started,
        );
        running.stop();
        match result {
            Ok(m) => Ok(Outcome::Measured(Box::new(m))),
            Err(e) => {
                let reason = format!("{e:#}");
                if sys == System::Ours
                    && scen.processing != Processing::None
                    && let Some(o) = &running.ours
                {
                    let log = o.agent.log_text();
                    if log.contains("routes") && log.contains("unknown field") {
                        return Ok(Outcome::NotApplicable {
                            reason: "agent has no routes yet".into(),
                        });
                    }
                }
                Ok(Outcome::Failed { reason })
            }
        }
    }

    /// Creates a run's latency source topic with one warm-up record per partition.
    fn lat_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        self.rt.block_on(er_tests::client::create_topic(
            &self.brokers.edge,
            topic,
            partitions,
            &[],
        ))?;
        data::warm_up(&self.brokers.edge, topic, partitions)
    }

    #[allow(clippy::too_many_arguments)]
    fn measure(
        &self,
        scen: &Scenario,
        w: &Workload,
        exp: &Arc<Expected>,
        sources: &[String],
        lat_src: &str,
        marker: &str,
        heartbeats: Option<&str>,
        running: &Running,
        started: Instant,
    ) -> Result<Metrics> {
        let procs = running.procs();
        let sampler = Sampler::start(&procs.iter().map(|(l, c)| (*l, c.pid())).collect::<Vec<_>>());
        // A process that exits ends the run at once, with its log.
        let abort = Arc::new(AtomicBool::new(false));
        let watched: Vec<u32> = procs.iter().map(|(_, c)| c.pid()).collect();
        let stop_watch = Arc::new(AtomicBool::new(false));
        let watchdog = {
            let (abort, stop, watched) = (abort.clone(), stop_watch.clone(), watched.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if watched.iter().any(|pid| !procs::alive(*pid)) {
                        abort.store(true, Ordering::Relaxed);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let reason_logs: Vec<(String, u32, Vec<PathBuf>)> = procs
            .iter()
            .map(|(l, c)| ((*l).to_owned(), c.pid(), c.log_paths().to_vec()))
            .collect();
        let abort_reason: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || {
            reason_logs
                .iter()
                .filter(|(_, pid, _)| !procs::alive(*pid))
                .map(|(l, _, logs)| format!("{l} exited; log tail:\n{}", tail_of(logs, 15)))
                .collect::<Vec<_>>()
                .join("\n")
        });
        // The window opens when data starts crossing the link: a replicator that holds records
        // back (ours commits them in transactions of up to 32 MiB) must not look faster for it.
        let link_start: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
        let link_watch = running.counters.clone().map(|c| {
            let (stop, link_start) = (stop_watch.clone(), link_start.clone());
            std::thread::spawn(move || {
                let base = c.total();
                while !stop.load(Ordering::Relaxed) {
                    if c.total() >= base + LINK_START_BYTES {
                        *link_start.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(Instant::now());
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        });
        let dest = |t: &str| format!("{marker}.{t}");
        let progress = Arc::new(AtomicU64::new(0));
        let lag_sampler =
            lag::Sampler::start(started, exp.kept_records, lag::INTERVAL, progress.clone());
        let spec = CheckSpec {
            bootstrap: self.brokers.central.clone(),
            topics: sources.iter().map(|s| dest(s)).collect(),
            partitions: w.partitions,
            canonical_json: scen.processing == Processing::JsonTransform,
            stall_timeout: self.settings.stall_timeout,
            progress,
        };
        let outcome = check::spawn(spec, exp.clone(), abort.clone(), abort_reason)
            .join()
            .map_err(|_| anyhow::anyhow!("check thread panicked"))?;
        let link_bytes = running.counters.as_ref().map(|c| c.total());
        let mut lag = lag_sampler.finish();
        if let Some(f) = outcome.failure {
            stop_watch.store(true, Ordering::Relaxed);
            let _ = watchdog.join();
            let _ = sampler.finish();
            bail!(
                "{f} ({} of {} records arrived; logs in {})",
                outcome.records,
                exp.kept_records,
                self.work.display()
            );
        }
        let first_arrival = outcome.first.context("no first arrival")?;
        let last = outcome.last.context("no last arrival")?;
        let first = link_start
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map_or(first_arrival, |t| t.min(first_arrival));
        lag.finish(last.duration_since(started).as_secs_f64());
        // Fixed-rate latency, once the warm-up records show the destination topic is there.
        let lat_dest = dest(lat_src);
        let latency =
            wait_for_records(&self.brokers.central, &lat_dest, w.partitions).and_then(|()| {
                latency::measure(
                    &self.brokers.edge,
                    &self.brokers.central,
                    lat_src,
                    &lat_dest,
                    heartbeats,
                    w.partitions,
                    w,
                    self.settings.latency,
                )
            });
        stop_watch.store(true, Ordering::Relaxed);
        let _ = watchdog.join();
        if let Some(t) = link_watch {
            let _ = t.join();
        }
        let series = sampler.finish();
        let window = last.duration_since(first).as_secs_f64().max(1e-3);
        let per_m = 1e6 / exp.source_records as f64;
        let processes: Vec<ProcMetrics> = series
            .iter()
            .map(|s: &Series| {
                let cpu = s.cpu_between(first, last).unwrap_or(f64::NAN);
                ProcMetrics {
                    label: s.label.clone(),
                    cpu_window_s: cpu,
                    cpu_s_per_m: cpu * per_m,
                    cpu_lifetime_s: s.cpu_lifetime(),
                    peak_rss_mib: s.peak_rss_mib(),
                }
            })
            .collect();
        let (latency, latency_error) = match latency {
            Ok(l) if l.received == l.sent => (Some(l), None),
            Ok(l) => (
                None,
                Some(format!(
                    "only {} of {} latency records arrived",
                    l.received, l.sent
                )),
            ),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        Ok(Metrics {
            window_s: window,
            startup_s: first.duration_since(started).as_secs_f64(),
            first_arrival_s: first_arrival.duration_since(started).as_secs_f64(),
            source_records: exp.source_records,
            records_per_s: exp.source_records as f64 / window,
            mb_per_s: exp.source_bytes as f64 / window / 1e6,
            kept_records: exp.kept_records,
            kept_records_per_s: exp.kept_records as f64 / window,
            cpu_s_per_m: processes.iter().map(|p| p.cpu_s_per_m).sum(),
            processes,
            link_bytes,
            link_bytes_per_record: link_bytes.map(|b| b as f64 / exp.source_records as f64),
            link_note: running.link_note.clone(),
            latency,
            latency_error,
            lag,
        })
    }
}

/// Link bytes beyond those at start that mark data flowing (handshakes, metadata and warm-up
/// records stay below it).
const LINK_START_BYTES: u64 = 64 * 1024;

fn tail_of(logs: &[PathBuf], n: usize) -> String {
    let text: String = logs
        .iter()
        .map(|l| std::fs::read_to_string(l).unwrap_or_default())
        .collect();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits (up to 60 s) until every partition of `topic` holds something.
fn wait_for_records(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = (0..partitions).all(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(2))
                .is_ok_and(|(_, h)| h > 0)
        });
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("latency topic {topic} did not fill within 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_owned()
}
