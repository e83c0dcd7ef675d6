//! `er-bench fleet`: what one hub costs per connected site. Real brokers, the real hub binary,
//! N simulated sites in this process (er_tests::fleet); hub threads, resident memory, TCP
//! connections to the central cluster and CPU while the sites trickle and while they idle,
//! optionally the reconnect storm after a hub restart, then every record checked exactly once.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use er_tests::fleet::{self, Fleet, FleetConfig};
use er_tests::replicator::{HubSetup, Pki};
use serde::Serialize;

use crate::procs::{Child, Sampler};

/// Source topic of every simulated site (central: `<site>.events`).
const TOPIC: &str = "events";

/// How the hub goes down for the reconnect storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartSignal {
    /// SIGKILL: a crash; sites notice when their QUIC idle timeout (10 s) expires.
    Kill,
    /// SIGTERM: a clean stop; the hub closes every connection, sites notice at once.
    Term,
}

/// Flags of `er-bench fleet`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct FleetArgs {
    /// Fleet sizes to measure, comma-separated; each gets a fresh hub on the same brokers,
    /// e.g. `0,40,200,1000`.
    #[arg(long, value_delimiter = ',', default_value = "40")]
    pub sites: Vec<usize>,
    /// Records per second per site during the trickle window.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Seconds of each measuring window (trickle, then idle).
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// After the idle window, stop the hub and start it again on the same port: measures the
    /// reconnect storm (time until every site is welcomed again and acked).
    #[arg(long)]
    pub restart_hub: bool,
    /// How the hub goes down for `--restart-hub`.
    #[arg(long, value_enum, default_value = "kill")]
    pub restart_signal: RestartSignal,
    /// Partitions of each site's source topic.
    #[arg(long, default_value_t = 2)]
    pub partitions: i32,
    /// Bytes per record value.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Milliseconds between a site's MM2 heartbeats; 0: none.
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// Milliseconds between a site's consumer-group reports; 0: none.
    #[arg(long, default_value_t = 5000)]
    pub group_ms: u64,
    /// UDP sockets (quinn endpoints) the simulated sites share.
    #[arg(long, default_value_t = 4)]
    pub endpoints: usize,
    /// Longest wait for every site to be welcomed and flowing (at start and after a restart),
    /// and for the final drain.
    #[arg(long, default_value_t = 300)]
    pub welcome_timeout_secs: u64,
    /// TOML appended to the hub config, e.g. $'[fleet]\nshards = 64' once the hub has them.
    #[arg(long, default_value = "")]
    pub hub_extra: String,
    /// Directory holding a prebuilt `hub` (default: build it next to er-bench).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Where results go (default: bench/results).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Keep configs and logs even when every run passes.
    #[arg(long)]
    pub keep_logs: bool,
}

/// Resources of the hub process at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Snapshot {
    /// Entries of /proc/<pid>/task.
    pub threads: usize,
    /// VmRSS, MiB.
    pub rss_mib: f64,
    /// Established TCP connections to the central broker's port.
    pub tcp_central: usize,
    /// All TCP sockets of the process (any state, any peer).
    pub tcp_total: usize,
}

/// The reconnect storm after a hub restart.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Storm {
    /// How the hub went down.
    pub signal: Option<RestartSignal>,
    /// From the stop signal until the new hub logged "hub ready".
    pub down_s: f64,
    /// From "hub ready" until every site was welcomed again.
    pub all_welcomed_s: f64,
    /// From "hub ready" until every site was welcomed again and had an ack.
    pub all_flowing_s: f64,
    /// The hub right after the storm.
    pub after: Snapshot,
}

/// The exactly-once verdict in numbers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    /// Records the sites produced.
    pub expected: u64,
    /// Records read back at read_committed.
    pub read: u64,
    /// Sites whose records all arrived exactly once, in order.
    pub sites_exact: usize,
    /// Produced, never read.
    pub missing: u64,
    /// Extra copies.
    pub duplicated: u64,
    /// Read before a lower offset of the same partition.
    pub out_of_order: u64,
    /// Read, never produced.
    pub unexpected: u64,
    /// Seconds the read took.
    pub read_s: f64,
    /// Faults of the first sites at fault.
    pub faults: String,
}

/// One fleet size measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetRun {
    /// Simulated sites.
    pub sites: usize,
    /// The hub started, before any site connected.
    pub base: Snapshot,
    /// From the fleet's start until every site was welcomed.
    pub all_welcomed_s: Option<f64>,
    /// From the fleet's start until every site was welcomed and had an ack.
    pub all_flowing_s: Option<f64>,
    /// At the end of the trickle window.
    pub trickle: Snapshot,
    /// Hub CPU during the trickle window, % of one core.
    pub trickle_cpu_pct: Option<f64>,
    /// Records of all sites the hub acked per second during the trickle window (the
    /// fleet's aggregate copy rate when `--rate` asks for more than the hub keeps up with).
    pub trickle_acked_per_s: Option<f64>,
    /// At the end of the idle window (heartbeats and group reports only).
    pub idle: Snapshot,
    /// Hub CPU during the idle window, % of one core.
    pub idle_cpu_pct: f64,
    /// Highest VmHWM seen, MiB.
    pub peak_rss_mib: f64,
    /// With --restart-hub.
    pub storm: Option<Storm>,
    /// Data records produced over the run (all of them once the run drained).
    pub records: u64,
    /// Heartbeats produced over the run.
    pub heartbeats: u64,
    /// GroupOffsets reports sent.
    pub group_reports: u64,
    /// Site failures by kind (refusals, lost links, unanswered probes).
    pub failures: BTreeMap<String, u64>,
    /// The exactly-once check, when the run got that far.
    pub check: Option<Verdict>,
    /// Why the run stopped early, if it did.
    pub error: Option<String>,
}

impl FleetRun {
    /// Extra threads per site over the hub with none.
    fn threads_per_site(&self) -> Option<f64> {
        (self.sites > 0)
            .then(|| (self.idle.threads as f64 - self.base.threads as f64) / self.sites as f64)
    }

    /// Extra resident KiB per site over the hub with none.
    fn rss_kib_per_site(&self) -> Option<f64> {
        (self.sites > 0)
            .then(|| (self.idle.rss_mib - self.base.rss_mib) * 1024.0 / self.sites as f64)
    }

    /// Idle CPU per site, % of a core (all of the idle CPU, including the hub's own).
    fn idle_cpu_per_site(&self) -> Option<f64> {
        (self.sites > 0).then(|| self.idle_cpu_pct / self.sites as f64)
    }
}

/// Everything one `er-bench fleet` writes.
#[derive(Debug, Serialize)]
pub struct FleetReport {
    /// Start time (RFC 3339).
    pub started: String,
    /// Commit measured.
    pub commit: String,
    /// CPU, cores, load.
    pub machine: String,
    /// Kafka version of the brokers.
    pub kafka: String,
    /// release or debug.
    pub profile: String,
    /// The command line.
    pub command: String,
    /// The flags.
    pub settings: FleetArgs,
    /// One per fleet size.
    pub runs: Vec<FleetRun>,
}

/// Runs `er-bench fleet`.
pub fn run(a: FleetArgs) -> Result<()> {
    if a.sites.is_empty() {
        bail!("--sites: give at least one fleet size");
    }
    let workspace = crate::run::workspace_root();
    let (bins, release) = hub_binary(a.bin_dir.as_deref(), &workspace)?;
    let self_release = !cfg!(debug_assertions);
    if !(release && self_release) {
        eprintln!("[er-bench] WARNING: not a release build; numbers are not comparable");
    }
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp = started.replace([':', '-'], "");
    let out_dir = a
        .out_dir
        .clone()
        .unwrap_or_else(|| workspace.join("bench/results"));
    std::fs::create_dir_all(&out_dir)?;
    let work = std::env::temp_dir().join(format!("er-bench-fleet-{stamp}"));
    std::fs::create_dir_all(&work)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let brokers = crate::brokers::Brokers::start(false)?;
    let central_port = port_of(&brokers.central)?;
    // Certificates of every fleet, issued once.
    let prefix = format!("fl{:04x}", rand::random::<u16>());
    // Names of their own per fleet size: the brokers keep every run's topics and positions.
    let names: Vec<Vec<String>> = a
        .sites
        .iter()
        .enumerate()
        .map(|(i, &n)| fleet::site_names(&format!("{prefix}-r{i}"), n))
        .collect();
    let all_sites: Vec<String> = names.iter().flatten().cloned().collect();
    let most = all_sites.len();
    let pki_dir = tempfile::Builder::new()
        .prefix("pki")
        .tempdir_in(&work)
        .context("creating the PKI directory")?;
    let issued = Instant::now();
    fleet::issue_certs(pki_dir.path(), &all_sites)?;
    eprintln!(
        "[er-bench] fleet: {most} site certificates issued in {:.1} s",
        issued.elapsed().as_secs_f64()
    );
    let pki = Pki::from_dir(pki_dir);
    let mut report = FleetReport {
        started: started.clone(),
        commit: crate::git_commit(&workspace),
        machine: crate::machine(),
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
        settings: a.clone(),
        runs: Vec::new(),
    };
    let mut failed = false;
    for (i, &n) in a.sites.iter().enumerate() {
        let rig = Rig {
            args: &a,
            bins: &bins,
            central: &brokers.central,
            central_port,
            pki: &pki,
            dir: work.join(format!("run{i}-{n}-sites")),
        };
        eprintln!("[er-bench] fleet: {n} sites");
        let mut run = FleetRun {
            sites: n,
            ..FleetRun::default()
        };
        if let Err(e) = rt.block_on(rig.measure(&names[i], &mut run)) {
            eprintln!("[er-bench] fleet of {n}: {e:#}");
            run.error = Some(format!("{e:#}"));
            failed = true;
        }
        if run.check.as_ref().is_some_and(|c| c.sites_exact != n) {
            failed = true;
        }
        eprintln!("{}", table(std::slice::from_ref(&run)));
        report.runs.push(run);
    }
    report.machine = format!("{}, {:.2} at end", report.machine, crate::load_average());
    let json_path = out_dir.join(format!("{stamp}-fleet.json"));
    let md_path = out_dir.join(format!("{stamp}-fleet.md"));
    let svg_path = out_dir.join(format!("{stamp}-fleet.svg"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;
    std::fs::write(&md_path, markdown(&report))?;
    let points: Vec<crate::chart::FleetPoint> = report
        .runs
        .iter()
        .filter_map(|r| {
            Some(crate::chart::FleetPoint {
                sites: r.sites,
                threads_per_site: r.threads_per_site()?,
                rss_kib_per_site: r.rss_kib_per_site()?,
                idle_cpu_pct_per_site: r.idle_cpu_per_site()?,
            })
        })
        .collect();
    let chart = if points.is_empty() {
        String::new()
    } else {
        match crate::chart::draw_fleet(
            &svg_path,
            &format!("er-bench fleet {started}: hub cost per connected site"),
            &points,
        ) {
            Ok(()) => format!(", {}", svg_path.display()),
            Err(e) => {
                eprintln!("[er-bench] fleet chart not drawn: {e:#}");
                String::new()
            }
        }
    };
    println!("{}", table(&report.runs));
    eprintln!(
        "[er-bench] wrote {}, {}{chart}",
        json_path.display(),
        md_path.display()
    );
    if failed || a.keep_logs {
        eprintln!("[er-bench] configs and logs kept in {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    if failed {
        bail!("a fleet run failed or was not exactly once (see above)");
    }
    Ok(())
}

/// What one fleet size needs.
struct Rig<'a> {
    args: &'a FleetArgs,
    bins: &'a Path,
    central: &'a str,
    central_port: u16,
    pki: &'a Pki,
    dir: PathBuf,
}

impl Rig<'_> {
    fn start_hub(&self, setup: &HubSetup, log: &str) -> Result<Child> {
        let cfg = self.dir.join("hub.toml");
        std::fs::write(&cfg, setup.toml(self.pki))?;
        let env = [(
            "RUST_LOG",
            std::env::var("ER_BENCH_LOG").unwrap_or_else(|_| "info".into()),
        )];
        let mut hub = Child::spawn(
            "hub",
            &self.bins.join("hub"),
            &["--config".into(), cfg.display().to_string()],
            &env,
            &self.dir.join(log),
        )?;
        hub.wait_for_log("hub ready", Duration::from_secs(60))?;
        Ok(hub)
    }

    fn snapshot(&self, hub: &Child) -> Snapshot {
        snapshot(hub.pid(), self.central_port)
    }

    /// Measures one fleet size into `run` (filled as far as it got on error).
    async fn measure(&self, sites: &[String], run: &mut FleetRun) -> Result<()> {
        let a = self.args;
        std::fs::create_dir_all(&self.dir)?;
        let mut setup = HubSetup::new(self.central)?;
        setup.extra = a.hub_extra.clone();
        let mut hub = self.start_hub(&setup, "hub.log")?;
        run.base = self.snapshot(&hub);
        let window = Duration::from_secs(a.duration);
        let wait = Duration::from_secs(a.welcome_timeout_secs);
        if sites.is_empty() {
            let sampler = Sampler::start(&[("hub", hub.pid())]);
            let t = Instant::now();
            tokio::time::sleep(window).await;
            run.idle_cpu_pct = cpu_pct(&sampler.finish()[0], t, Instant::now());
            run.idle = self.snapshot(&hub);
            run.trickle = run.idle;
            hub.stop(Duration::from_secs(10));
            return Ok(());
        }
        let hub_addr: SocketAddr = ([127, 0, 0, 1], setup.port).into();
        let mut cfg = FleetConfig::new(hub_addr, self.pki.dir(), sites.to_vec());
        cfg.topic = TOPIC.into();
        cfg.partitions = a.partitions;
        cfg.rate_per_site = a.rate;
        cfg.value_bytes = a.value_bytes;
        cfg.heartbeat_interval =
            (a.heartbeat_ms > 0).then(|| Duration::from_millis(a.heartbeat_ms));
        cfg.group_interval = (a.group_ms > 0).then(|| Duration::from_millis(a.group_ms));
        cfg.endpoints = a.endpoints;
        let sampler = Sampler::start(&[("hub", hub.pid())]);
        let t0 = Instant::now();
        let fleet = Fleet::start(cfg).await?;
        let result = self
            .phases(&fleet, &setup, &mut hub, t0, window, wait, run)
            .await;
        let status = fleet.status();
        run.records = status.records_generated;
        run.heartbeats = status.heartbeats;
        run.group_reports = status.group_reports;
        run.failures = fleet.errors();
        let series = sampler.finish();
        run.peak_rss_mib = series.first().map_or(0.0, |s| s.peak_rss_mib());
        if let Err(e) = result {
            if run.idle.threads == 0 {
                // What the hub holds when it could not serve the fleet.
                run.idle = self.snapshot(&hub);
            }
            drop(fleet);
            hub.stop(Duration::from_secs(10));
            return Err(e);
        }
        fleet
            .drain(wait)
            .await
            .context("draining (every record acked)")?;
        let outcomes = fleet.stop().await;
        hub.stop(Duration::from_secs(10));
        let check =
            fleet::check_exactly_once(self.central, TOPIC, &outcomes, Duration::from_secs(300))
                .await?;
        run.records = check.records_expected;
        run.heartbeats = outcomes.iter().map(|o| o.heartbeats.max(0) as u64).sum();
        let (missing, duplicated, out_of_order, unexpected) = check.totals();
        run.check = Some(Verdict {
            expected: check.records_expected,
            read: check.records_read,
            sites_exact: check.sites.iter().filter(|s| s.is_exact()).count(),
            missing,
            duplicated,
            out_of_order,
            unexpected,
            read_s: check.read_s,
            faults: if check.is_exact() {
                String::new()
            } else {
                check.summary()
            },
        });
        Ok(())
    }

    /// Welcome, trickle window, idle window, and the storm.
    #[allow(clippy::too_many_arguments)]
    async fn phases(
        &self,
        fleet: &Fleet,
        setup: &HubSetup,
        hub: &mut Child,
        t0: Instant,
        window: Duration,
        wait: Duration,
        run: &mut FleetRun,
    ) -> Result<()> {
        let a = self.args;
        let n = fleet.status().sites;
        fleet
            .wait_until("every site welcomed", wait, |s| s.ever_welcomed == s.sites)
            .await?;
        run.all_welcomed_s = Some(t0.elapsed().as_secs_f64());
        fleet.wait_flowing_since(t0, wait).await?;
        run.all_flowing_s = Some(t0.elapsed().as_secs_f64());
        eprintln!(
            "[er-bench] fleet: {n} sites welcomed in {:.1} s, flowing in {:.1} s",
            run.all_welcomed_s.unwrap_or_default(),
            run.all_flowing_s.unwrap_or_default()
        );

        let sampler = Sampler::start(&[("hub", hub.pid())]);
        let t1 = Instant::now();
        let acked = fleet.status().records_acked;
        tokio::time::sleep(window).await;
        let t2 = Instant::now();
        let acked = fleet.status().records_acked.saturating_sub(acked);
        run.trickle_acked_per_s = Some(acked as f64 / (t2 - t1).as_secs_f64());
        run.trickle = self.snapshot(hub);
        fleet.set_rate(0.0);
        // What was in flight settles before the idle window starts.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let t3 = Instant::now();
        tokio::time::sleep(window).await;
        let t4 = Instant::now();
        run.idle = self.snapshot(hub);
        let series = sampler.finish();
        run.trickle_cpu_pct = Some(cpu_pct(&series[0], t1, t2));
        run.idle_cpu_pct = cpu_pct(&series[0], t3, t4);
        fleet.set_rate(a.rate);

        if a.restart_hub {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let down = Instant::now();
            // The waits below block; the sites keep running on the other worker.
            tokio::task::block_in_place(|| -> Result<()> {
                match a.restart_signal {
                    RestartSignal::Kill => hub.kill(),
                    RestartSignal::Term => hub.stop(Duration::from_secs(30)),
                }
                *hub = self.start_hub(setup, "hub-restarted.log")?;
                Ok(())
            })?;
            let listening = Instant::now();
            // Counted from the stop: a site may be welcomed before "hub ready" is seen.
            fleet
                .wait_until("every site welcomed again", wait, |_| {
                    fleet.welcomed_since(down) == n
                })
                .await?;
            let all_welcomed = listening.elapsed();
            fleet.wait_flowing_since(down, wait).await?;
            let all_flowing = listening.elapsed();
            run.storm = Some(Storm {
                signal: Some(a.restart_signal),
                down_s: (listening - down).as_secs_f64(),
                all_welcomed_s: all_welcomed.as_secs_f64(),
                all_flowing_s: all_flowing.as_secs_f64(),
                after: self.snapshot(hub),
            });
            eprintln!(
                "[er-bench] fleet: after the restart every site welcomed in {:.1} s, flowing in {:.1} s",
                all_welcomed.as_secs_f64(),
                all_flowing.as_secs_f64()
            );
            // Some traffic on the new hub before the drain.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        Ok(())
    }
}

/// Hub CPU between `from` and `to` as % of one core.
fn cpu_pct(series: &crate::procs::Series, from: Instant, to: Instant) -> f64 {
    let secs = (to - from).as_secs_f64().max(1e-3);
    series.cpu_between(from, to).unwrap_or(0.0) / secs * 100.0
}

/// The port of a `host:port` bootstrap address (its first server).
fn port_of(bootstrap: &str) -> Result<u16> {
    bootstrap
        .split(',')
        .next()
        .and_then(|s| s.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in bootstrap {bootstrap:?}"))
}

/// Threads, resident memory and TCP sockets of `pid` (zeros once it is gone).
pub fn snapshot(pid: u32, central_port: u16) -> Snapshot {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let inodes: HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let (mut tcp_central, mut tcp_total) = (0, 0);
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for (inode, remote_port, established) in text.lines().skip(1).filter_map(tcp_line) {
            if inodes.contains(&inode) {
                tcp_total += 1;
                if established && remote_port == central_port {
                    tcp_central += 1;
                }
            }
        }
    }
    Snapshot {
        threads,
        rss_mib: rss_kib as f64 / 1024.0,
        tcp_central,
        tcp_total,
    }
}

/// `(inode, remote port, established)` of a /proc/net/tcp line.
fn tcp_line(line: &str) -> Option<(u64, u16, bool)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let remote_port = u16::from_str_radix(f.get(2)?.rsplit(':').next()?, 16).ok()?;
    let established = *f.get(3)? == "01";
    let inode = f.get(9)?.parse().ok()?;
    Some((inode, remote_port, established))
}

/// Directory of `hub`: `--bin-dir`, or built now next to this executable with its profile.
fn hub_binary(bin_dir: Option<&Path>, workspace: &Path) -> Result<(PathBuf, bool)> {
    if let Some(d) = bin_dir {
        if !d.join("hub").exists() {
            bail!("--bin-dir {}: no hub binary", d.display());
        }
        return Ok((d.to_owned(), true));
    }
    let exe = std::env::current_exe().context("locating er-bench")?;
    let dir = exe
        .parent()
        .context("er-bench has no parent directory")?
        .to_owned();
    let release = dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace)
        .args(["build", "--quiet", "-p", "er-hub"]);
    if release {
        cmd.arg("--release");
    }
    if let Some(target) = dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    eprintln!(
        "[er-bench] building the hub ({})",
        if release { "release" } else { "debug" }
    );
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build -p er-hub failed ({status})");
    }
    Ok((dir, release))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// The results as a markdown table, one row per fleet size.
pub fn table(runs: &[FleetRun]) -> String {
    let mut out = String::from(
        "| sites | hub threads | central TCP | hub RSS MiB | threads/site | RSS KiB/site | CPU idle % | CPU trickle % | acked rec/s trickle | all welcomed s | storm: welcomed / flowing s | records | exactly once |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in runs {
        let storm = r.storm.as_ref().map_or_else(
            || "-".into(),
            |s| format!("{:.1} / {:.1}", s.all_welcomed_s, s.all_flowing_s),
        );
        let check = match (&r.check, &r.error) {
            (_, Some(e)) => format!("not run: {}", e.lines().next().unwrap_or_default()),
            (Some(c), None) if c.sites_exact == r.sites => format!("yes ({} records)", c.read),
            (Some(c), None) => format!(
                "NO: {} missing, {} duplicated, {} out of order, {} unexpected",
                c.missing, c.duplicated, c.out_of_order, c.unexpected
            ),
            (None, None) if r.sites == 0 => "-".into(),
            (None, None) => "not run".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} | {} | {:.1} | {} | {} | {} | {storm} | {} | {check} |\n",
            r.sites,
            r.idle.threads,
            r.idle.tcp_central,
            r.idle.rss_mib,
            opt(r.threads_per_site(), 1),
            opt(r.rss_kib_per_site(), 0),
            r.idle_cpu_pct,
            opt(r.trickle_cpu_pct, 1),
            opt(r.trickle_acked_per_s, 0),
            opt(r.all_welcomed_s, 1),
            r.records,
        ));
    }
    out
}

/// The report as markdown: settings, table, failures.
fn markdown(r: &FleetReport) -> String {
    let s = &r.settings;
    let mut out = format!(
        "# er-bench fleet {}\n\n`{}`\n\ncommit {}, {} build, Kafka {}, {}\n\n\
         Per site: topic with {} partitions, {} record/s of {} B during the trickle window, \
         heartbeats every {} ms, group reports every {} ms; windows of {} s.\n\n",
        r.started,
        r.command,
        r.commit,
        r.profile,
        r.kafka,
        r.machine,
        s.partitions,
        s.rate,
        s.value_bytes,
        s.heartbeat_ms,
        s.group_ms,
        s.duration
    );
    out.push_str(&table(&r.runs));
    for run in &r.runs {
        if !run.failures.is_empty() {
            out.push_str(&format!(
                "\n{} sites, site failures: {:?}\n",
                run.sites, run.failures
            ));
        }
        if let Some(c) = run.check.as_ref().filter(|c| !c.faults.is_empty()) {
            out.push_str(&format!(
                "\n{} sites, faults:\n```\n{}\n```\n",
                run.sites, c.faults
            ));
        }
        if let Some(e) = &run.error {
            out.push_str(&format!("\n{} sites, stopped: {e}\n", run.sites));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_net_tcp_lines() {
        let line = "   3: 0100007F:9C4A 0100007F:2383 01 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(tcp_line(line), Some((123456, 0x2383, true)));
        let listen = "   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0";
        assert_eq!(tcp_line(listen), Some((99, 0, false)));
    }

    #[test]
    fn counts_its_own_threads_and_sockets() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let s = snapshot(std::process::id(), port);
        assert!(s.threads >= 1 && s.rss_mib > 1.0, "{s:?}");
        // The client side is established to `port`; listener and server side are not to it.
        assert_eq!(s.tcp_central, 1, "{s:?}");
        assert!(s.tcp_total >= 3, "{s:?}");
    }

    #[test]
    fn per_site_costs_are_over_the_empty_hub() {
        let run = FleetRun {
            sites: 10,
            base: Snapshot {
                threads: 10,
                rss_mib: 14.0,
                ..Snapshot::default()
            },
            idle: Snapshot {
                threads: 30,
                rss_mib: 24.0,
                ..Snapshot::default()
            },
            idle_cpu_pct: 5.0,
            ..FleetRun::default()
        };
        assert_eq!(run.threads_per_site(), Some(2.0));
        assert_eq!(run.rss_kib_per_site(), Some(1024.0));
        assert_eq!(run.idle_cpu_per_site(), Some(0.5));
        assert!(table(&[run]).contains("| 10 | 30 | 0 | 24 | 2.0 | 1024 | 5.0 |"));
    }
}
