//! Runs the real `hub` and `edge-agent` binaries for end-to-end tests: configs, PKI, processes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Directory holding the workspace's built binaries (`target/<profile>`), building them once.
/// `ER_BIN_DIR` points at prebuilt `hub` and `edge-agent` binaries instead (no build).
pub fn bin_dir() -> anyhow::Result<&'static Path> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("ER_BIN_DIR") {
            return Ok(PathBuf::from(dir));
        }
        // Test executables live in target/<profile>/deps.
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .ok_or("test executable has no target directory")?
            .to_owned();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "--quiet", "-p", "edge-agent", "-p", "er-hub"]);
        if release {
            cmd.arg("--release");
        }
        if let Some(target) = dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        let status = cmd
            .status()
            .map_err(|e| format!("running cargo build: {e}"))?;
        if !status.success() {
            return Err(format!(
                "cargo build of edge-agent and hub failed: {status}"
            ));
        }
        Ok(dir)
    })
    .as_deref()
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Path of a built binary (`edge-agent` or `hub`).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    Ok(bin_dir()?.join(name))
}

/// A free UDP port on 127.0.0.1 (bound and released; the tiny race is acceptable in tests).
pub fn free_udp_port() -> anyhow::Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?.port())
}

/// A dev PKI in a temporary directory.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, a hub certificate for localhost/127.0.0.1 and one certificate per site.
    pub fn new(sites: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let sites: Vec<String> = sites.iter().map(|s| s.to_string()).collect();
        er_net::devcerts::generate(
            dir.path(),
            &["localhost".to_owned(), "127.0.0.1".to_owned()],
            &sites,
            false,
        )?;
        Ok(Self { dir })
    }

    /// Uses PEM files already in `dir` (e.g. a mix of two PKIs for refusal tests).
    pub fn from_dir(dir: tempfile::TempDir) -> Self {
        Self { dir }
    }

    /// Directory of the PEM files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A PEM file of this PKI, e.g. `ca.pem`, `hub.key`, `site1.pem`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A child process of ours, killed on drop, with its stderr in a log file.
#[derive(Debug)]
pub struct Proc {
    name: String,
    cmd: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Starts `bin args...`, logging to `log` (appended, so restarts keep history).
    pub fn start(name: &str, bin: &Path, args: &[&str], log: &Path) -> anyhow::Result<Self> {
        let mut p = Self {
            name: name.to_owned(),
            cmd: std::iter::once(bin.display().to_string())
                .chain(args.iter().map(|a| a.to_string()))
                .collect(),
            log: log.to_owned(),
            child: None,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening log {:?}", self.log))?;
        let child = Command::new(&self.cmd[0])
            .args(&self.cmd[1..])
            .env(
                "RUST_LOG",
                std::env::var("ER_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM and wait for the exit (SIGKILL after 20 s).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let pid = c.id() as i32;
        // SAFETY-free: the kill(1) command sends SIGTERM without unsafe code.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    /// Starts the same command again.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Everything the process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "{} did not log {needle:?} within {timeout:?}; log:\n{}",
            self.name,
            tail(&self.log_text(), 40)
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What a failed test shows of a process log: its first warnings and errors (at most 40; the
/// cause of a stall is often long before the tail), then the last `n` lines.
pub fn digest(text: &str, n: usize) -> String {
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .take(40)
        .collect();
    if warnings.is_empty() {
        return tail(text, n);
    }
    format!(
        "(warnings and errors)\n{}\n(last {n} lines)\n{}",
        warnings.join("\n"),
        tail(text, n)
    )
}

/// What a failed test shows of its processes: each one's log path and [`digest`] (the first
/// warnings and errors, then the last 40 lines).
pub fn logs(procs: &[&Proc]) -> String {
    procs
        .iter()
        .map(|p| format!("--- {:?}\n{}", p.log_path(), digest(&p.log_text(), 40)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The path of the example plugin `name` (`plugins/examples`, e.g. `"filter"`), the examples
/// built once per test process.
pub fn example_plugin(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        er_plugin_host::build::build_examples().expect("building the example plugins")
    })
    .join(format!("{name}.wasm"))
}

/// `key = value` TOML pairs of string `properties`, joined by `separator` (`", "` for an
/// inline table, `"\n"` for a table's lines). Keys are quoted: librdkafka's hold dots.
pub fn toml_pairs(properties: &[(String, String)], separator: &str) -> String {
    properties
        .iter()
        .map(|(k, v)| format!("{k:?} = {v:?}"))
        .collect::<Vec<_>>()
        .join(separator)
}

/// A central cluster as the hub config names it.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Alias.
    pub alias: String,
    /// Bootstrap servers.
    pub bootstrap: String,
}

/// Everything needed to write a hub.toml.
#[derive(Debug, Clone)]
pub struct HubSetup {
    /// Hub id.
    pub hub_id: String,
    /// Group id (transactional ids derive from it).
    pub group_id: String,
    /// UDP port to listen on (127.0.0.1).
    pub port: u16,
    /// Central clusters; the first is the default.
    pub clusters: Vec<Cluster>,
    /// `(topic regex, cluster alias)` routes.
    pub routes: Vec<(String, String)>,
    /// Extra librdkafka properties (`[[clusters]] properties`) by cluster alias, e.g. a SASL
    /// login for a secured central cluster. Kept out of [`Cluster`] so its literals stay valid.
    pub cluster_properties: BTreeMap<String, Vec<(String, String)>>,
    /// Extra TOML appended verbatim.
    pub extra: String,
}

impl HubSetup {
    /// A hub on a free port writing to one cluster aliased `central`.
    pub fn new(central: &str) -> anyhow::Result<Self> {
        Ok(Self {
            hub_id: crate::unique_name("hub"),
            group_id: crate::unique_name("grp"),
            port: free_udp_port()?,
            clusters: vec![Cluster {
                alias: "central".into(),
                bootstrap: central.into(),
            }],
            routes: Vec::new(),
            cluster_properties: BTreeMap::new(),
            extra: String::new(),
        })
    }

    /// The hub.toml text.
    pub fn toml(&self, pki: &Pki) -> String {
        let mut s = format!(
            "hub_id = {:?}\ngroup_id = {:?}\nlisten = \"127.0.0.1:{}\"\n\n[tls]\nca_cert = {:?}\ncert = {:?}\nkey = {:?}\n\n",
            self.hub_id,
            self.group_id,
            self.port,
            pki.file("ca.pem"),
            pki.file("hub.pem"),
            pki.file("hub.key"),
        );
        for c in &self.clusters {
            let _ = write!(
                s,
                "[[clusters]]\nalias = {:?}\nbootstrap_servers = {:?}\nreplication_factor = 1\n",
                c.alias, c.bootstrap
            );
            if let Some(properties) = self.cluster_properties.get(&c.alias) {
                let _ = writeln!(s, "properties = {{ {} }}", toml_pairs(properties, ", "));
            }
            s.push('\n');
        }
        for (topics, cluster) in &self.routes {
            let _ = write!(
                s,
                "[[routes]]\ntopics = {topics:?}\ncluster = {cluster:?}\n\n"
            );
        }
        s.push_str(&self.extra);
        s
    }

    /// Where [`HubSetup::start`] writes the config in `dir`.
    pub fn config_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.toml", self.hub_id))
    }

    /// Writes the config into `dir` and starts the hub binary.
    pub fn start(&self, pki: &Pki, dir: &Path) -> anyhow::Result<Proc> {
        let cfg = self.config_path(dir);
        std::fs::write(&cfg, self.toml(pki))?;
        let p = Proc::start(
            &self.hub_id,
            &bin("hub")?,
            &["--config", cfg.to_str().expect("utf-8 path")],
            &dir.join(format!("{}.log", self.hub_id)),
        )?;
        p.wait_for_log("hub ready", Duration::from_secs(30))?;
        Ok(p)
    }
}

/// Everything needed to write an agent.toml.
#[derive(Debug, Clone)]
pub struct AgentSetup {
    /// Site alias (the certificate's CN; also the claim).
    pub site: String,
    /// Edge bootstrap servers.
    pub edge: String,
    /// Extra TOML lines inside the `[kafka]` table (e.g. `isolation_level = "read_uncommitted"`).
    pub kafka_extra: String,
    /// Hub UDP port on 127.0.0.1.
    pub hub_port: u16,
    /// More hubs (UDP ports on 127.0.0.1) the agent tries after `hub_port`, in order.
    pub more_hub_ports: Vec<u16>,
    /// Extra TOML lines inside the `[hub]` table (e.g. `max_bytes_per_sec = 200000`).
    pub hub_extra: String,
    /// Include regexes.
    pub include: Vec<String>,
    /// Discovery interval.
    pub refresh_interval_ms: u64,
    /// Extra TOML lines inside the `[topics]` table (e.g. `metadata_interval_ms = 1000`).
    pub topics_extra: String,
    /// Records per batch.
    pub max_records: usize,
    /// Extra TOML appended verbatim (after the `[batching]` table).
    pub extra: String,
    /// Certificate name in the PKI (defaults to the site).
    pub cert_name: Option<String>,
}

impl AgentSetup {
    /// An agent of `site` replicating topics matching `include` to the hub on `hub_port`.
    pub fn new(site: &str, edge: &str, hub_port: u16, include: &str) -> Self {
        Self {
            site: site.to_owned(),
            edge: edge.to_owned(),
            kafka_extra: String::new(),
            hub_port,
            more_hub_ports: Vec::new(),
            hub_extra: String::new(),
            include: vec![include.to_owned()],
            refresh_interval_ms: 2_000,
            topics_extra: String::new(),
            max_records: 2_000,
            extra: std::env::var("ER_AGENT_EXTRA_TOML").unwrap_or_default(),
            cert_name: None,
        }
    }

    /// The agent.toml text.
    pub fn toml(&self, pki: &Pki) -> String {
        let cert = self.cert_name.as_deref().unwrap_or(&self.site);
        let address = if self.more_hub_ports.is_empty() {
            format!("\"127.0.0.1:{}\"", self.hub_port)
        } else {
            let all: Vec<String> = std::iter::once(self.hub_port)
                .chain(self.more_hub_ports.iter().copied())
                .map(|p| format!("127.0.0.1:{p}"))
                .collect();
            format!("{all:?}")
        };
        format!(
            "site = {:?}\n\n[kafka]\nbootstrap_servers = {:?}\n{}\n[topics]\ninclude = {:?}\nrefresh_interval_ms = {}\n{}\n[hub]\naddress = {}\nserver_name = \"localhost\"\nca_cert = {:?}\ncert = {:?}\nkey = {:?}\nreconnect_backoff_min_ms = 100\nreconnect_backoff_max_ms = 2000\n{}\n[batching]\nmax_records = {}\nlinger_ms = 10\n{}",
            self.site,
            self.edge,
            self.kafka_extra,
            self.include,
            self.refresh_interval_ms,
            self.topics_extra,
            address,
            pki.file("ca.pem"),
            pki.file(&format!("{cert}.pem")),
            pki.file(&format!("{cert}.key")),
            self.hub_extra,
            self.max_records,
            self.extra,
        )
    }

    /// Where [`AgentSetup::start`] writes the config in `dir`.
    pub fn config_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("agent-{}.toml", self.site))
    }

    /// Writes the config into `dir` and starts the agent binary.
    pub fn start(&self, pki: &Pki, dir: &Path) -> anyhow::Result<Proc> {
        let cfg = self.config_path(dir);
        std::fs::write(&cfg, self.toml(pki))?;
        Proc::start(
            &format!("agent-{}", self.site),
            &bin("edge-agent")?,
            &["--config", cfg.to_str().expect("utf-8 path")],
            &dir.join(format!("agent-{}.log", self.site)),
        )
    }
}
