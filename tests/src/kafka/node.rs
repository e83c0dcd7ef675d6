//! One single-node KRaft Kafka cluster (`process.roles=broker,controller`) on loopback.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::{Deserialize, Serialize};

use super::{dist, proc};

/// How to start a [`KafkaNode`]. `Default` is what the tests use.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// JVM max heap, e.g. `"512m"` (env `ER_KAFKA_HEAP` overrides the default, `1g`: every
    /// hub a test starts creates its fleet topics, 64 partitions each, and a central broker kept
    /// up across several suite runs ran out of 512 MiB at about 15,000 partitions).
    pub heap: String,
    /// Extra / overriding `server.properties` entries.
    pub extra_config: Vec<(String, String)>,
    /// How long to wait for the broker to serve before failing with its log (default 60 s,
    /// env `ER_KAFKA_START_TIMEOUT_SECS`).
    pub start_timeout: Duration,
    /// Spawn the JVM in its own session, NOT dying with this process (for `cargo xtask kafka up`).
    /// Use [`KafkaNode::detach`] afterwards to let go of it.
    pub detached: bool,
    /// SASL/PLAIN users (name, password). Empty (the default): a PLAINTEXT client listener and
    /// no authorizer. Otherwise the client listener is SASL_PLAINTEXT with these users, brokers
    /// talk to each other as the first one, and Kafka's `StandardAuthorizer` denies whatever no
    /// ACL allows; the first user is a super user. Names and passwords: `[A-Za-z0-9._-]+`.
    /// Clients connect with [`KafkaNode::sasl_client_properties`].
    pub sasl_users: Vec<(String, String)>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            heap: std::env::var("ER_KAFKA_HEAP").unwrap_or_else(|_| "1g".into()),
            extra_config: Vec::new(),
            start_timeout: Duration::from_secs(
                std::env::var("ER_KAFKA_START_TIMEOUT_SECS")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(60),
            ),
            detached: false,
            sasl_users: Vec::new(),
        }
    }
}

/// Name of the client listener of a node with [`NodeOptions::sasl_users`].
const SASL_LISTENER: &str = "SASL_PLAINTEXT";

/// The `server.properties` entries that put the client listener behind SASL/PLAIN and turn the
/// authorizer on (see [`NodeOptions::sasl_users`]); `None` for a plaintext node.
fn sasl_config(users: &[(String, String)]) -> Result<Option<Vec<(String, String)>>> {
    let Some((admin, admin_password)) = users.first() else {
        return Ok(None);
    };
    for (user, password) in users {
        // Both go unescaped into a JAAS option (`user_<name>="<password>"`) in a properties file.
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        if !plain(user) || !plain(password) {
            bail!(
                "NodeOptions::sasl_users: user {user:?} or its password holds a character \
                 outside [A-Za-z0-9._-]"
            );
        }
    }
    let mut jaas = format!(
        "org.apache.kafka.common.security.plain.PlainLoginModule required \
         username=\"{admin}\" password=\"{admin_password}\""
    );
    for (user, password) in users {
        jaas.push_str(&format!(" user_{user}=\"{password}\""));
    }
    jaas.push(';');
    let listener = SASL_LISTENER.to_ascii_lowercase();
    Ok(Some(vec![
        ("sasl.enabled.mechanisms".into(), "PLAIN".into()),
        (
            "sasl.mechanism.inter.broker.protocol".into(),
            "PLAIN".into(),
        ),
        (
            format!("listener.name.{listener}.plain.sasl.jaas.config"),
            jaas,
        ),
        (
            "authorizer.class.name".into(),
            "org.apache.kafka.metadata.authorizer.StandardAuthorizer".into(),
        ),
        // The controller listener stays PLAINTEXT: the broker reaches the controller (itself)
        // as ANONYMOUS, which must be allowed everything the broker asks of it.
        ("super.users".into(), format!("User:{admin};User:ANONYMOUS")),
        ("allow.everyone.if.no.acl.found".into(), "false".into()),
    ]))
}

/// A running (or stopped) single-node Kafka cluster owned by this process.
///
/// Dropping it stops the broker (SIGTERM, SIGKILL after 15 s) and removes its data dir. If the
/// process dies first, the broker dies with it (`PR_SET_PDEATHSIG`), the `atexit` hook removes
/// the dir on a normal exit, and the next process removes it otherwise.
#[derive(Debug)]
pub struct KafkaNode {
    name: String,
    port: u16,
    controller_port: u16,
    bootstrap: String,
    dir: PathBuf,
    child: Option<Child>,
    opts: NodeOptions,
    /// Remove the dir on drop (false once detached).
    owned: bool,
}

/// A broker left running by [`KafkaNode::detach`] (what `cargo xtask kafka up` records).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DetachedNode {
    pub name: String,
    pub pid: u32,
    /// Start time of `pid` (clock ticks since boot), guards against pid reuse.
    pub pid_start: Option<u64>,
    pub bootstrap: String,
    pub port: u16,
    pub controller_port: u16,
    pub dir: PathBuf,
}

impl DetachedNode {
    /// Whether the broker process is still running.
    pub fn is_alive(&self) -> bool {
        proc::is_alive(self.pid, self.pid_start)
    }

    /// Whether it accepts TCP connections on its bootstrap address.
    pub fn is_serving(&self) -> bool {
        tcp_ok(self.port)
    }

    /// Stops the broker (SIGTERM, SIGKILL after 15 s) and removes its data dir.
    pub fn stop_and_remove(&self) {
        proc::stop_pid(self.pid, self.pid_start, Duration::from_secs(15));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Ports handed out by this process, never handed out twice (another node may not have bound
/// its ports yet).
static USED_PORTS: Mutex<Vec<u16>> = Mutex::new(Vec::new());

fn free_port() -> Result<u16> {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut used = USED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
        if !used.contains(&port) {
            used.push(port);
            return Ok(port);
        }
    }
}

/// Random KRaft cluster id: 16 random bytes, URL-safe base64 without padding (22 chars), not
/// starting with '-' (like `org.apache.kafka.common.Uuid.randomUuid`).
fn random_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    loop {
        let bytes: [u8; 16] = rand::random();
        let mut bits: u32 = 0;
        let mut nbits = 0;
        let mut out = String::with_capacity(22);
        for b in bytes {
            bits = (bits << 8) | u32::from(b);
            nbits += 8;
            while nbits >= 6 {
                nbits -= 6;
                out.push(ALPHABET[((bits >> nbits) & 63) as usize] as char);
            }
        }
        if nbits > 0 {
            out.push(ALPHABET[((bits << (6 - nbits)) & 63) as usize] as char);
        }
        if !out.starts_with('-') {
            return out;
        }
    }
}

fn java() -> PathBuf {
    match std::env::var_os("JAVA_HOME").filter(|h| !h.is_empty()) {
        Some(home) if Path::new(&home).join("bin/java").exists() => {
            Path::new(&home).join("bin/java")
        }
        _ => PathBuf::from("java"),
    }
}

fn tcp_ok(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// Last `n` lines of a (log) file, or a note that it can't be read.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("({} not readable)", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn log_contains_since(path: &Path, offset: u64, needle: &str) -> bool {
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).contains(needle)
}

/// One metadata round trip through librdkafka (with the client `properties`): the broker is
/// registered and answering.
fn metadata_ok(bootstrap: &str, properties: &[(String, String)]) -> bool {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("socket.connection.setup.timeout.ms", "2000");
    for (k, v) in properties {
        config.set(k, v);
    }
    let consumer: BaseConsumer = match config.create() {
        Ok(c) => c,
        Err(_) => return false,
    };
    consumer
        .fetch_metadata(None, Duration::from_secs(3))
        .is_ok_and(|md| !md.brokers().is_empty())
}

const TEMPLATE_MARKER: &str = ".complete";

/// `<cache>/kafka-<version>/format-template`: a data dir formatted by StorageTool with the default
/// node config, built once (its marker holds the POM it was made with).
fn format_template(libs: &Path) -> Result<PathBuf> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let root = libs.parent().context("libs has a parent")?;
    let template = root.join("format-template");
    let complete = |dir: &Path| {
        std::fs::read_to_string(dir.join(TEMPLATE_MARKER)).is_ok_and(|p| p == dist::pom())
    };
    if complete(&template) {
        return Ok(template);
    }
    let tmp = root.join(format!(
        "format-template.tmp-{}-{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xff_ffff
    ));
    std::fs::create_dir_all(tmp.join("data"))?;
    let node = KafkaNode {
        name: "format-template".into(),
        port: 9092,
        controller_port: 9093,
        bootstrap: String::new(),
        dir: tmp.clone(),
        child: None,
        opts: NodeOptions::default(),
        owned: false,
    };
    let made = node
        .write_config()
        .and_then(|()| node.format(libs))
        .and_then(|()| {
            std::fs::write(tmp.join("data").join(TEMPLATE_MARKER), dist::pom())?;
            if template.exists() {
                std::fs::remove_dir_all(&template)?;
            }
            std::fs::rename(tmp.join("data"), &template)?;
            Ok(())
        });
    let _ = std::fs::remove_dir_all(&tmp);
    match made {
        Ok(()) => Ok(template),
        Err(_) if complete(&template) => Ok(template), // another process made it
        Err(e) => Err(e),
    }
}

impl KafkaNode {
    /// Starts a fresh single-node KRaft cluster named `name` (used in its dir name and logs) on
    /// free loopback ports, and waits until it serves metadata. Resolves the jars first if needed.
    /// Blocks for a few seconds (JVM start): fine in async tests too, before anything else runs.
    pub fn start(name: &str) -> Result<KafkaNode> {
        Self::start_with(name, NodeOptions::default())
    }

    /// [`KafkaNode::start`] with options.
    pub fn start_with(name: &str, opts: NodeOptions) -> Result<KafkaNode> {
        let libs = dist::ensure_libs()?;
        static CLEAN: std::sync::Once = std::sync::Once::new();
        CLEAN.call_once(proc::remove_stale_dirs);

        let dir = proc::run_dir().join(format!(
            "{name}-{}-{:06x}",
            std::process::id(),
            rand::random::<u32>() & 0xff_ffff
        ));
        std::fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("creating {}", dir.display()))?;
        proc::add_owner(&dir, std::process::id())?;
        if !opts.detached {
            proc::register_dir(&dir);
        }
        let port = free_port()?;
        let controller_port = free_port()?;
        let mut node = KafkaNode {
            name: name.to_string(),
            port,
            controller_port,
            bootstrap: format!("127.0.0.1:{port}"),
            dir,
            child: None,
            opts,
            owned: true,
        };
        node.write_config()?;
        node.prepare_storage(&libs)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match node.launch(&libs) {
                Ok(()) => return Ok(node),
                Err(e) if attempt < 3 && node.bind_conflict() => {
                    eprintln!("er-tests: {name}: port conflict, retrying on new ports ({e:#})");
                    node.port = free_port()?;
                    node.controller_port = free_port()?;
                    node.bootstrap = format!("127.0.0.1:{}", node.port);
                    node.write_config()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The node's name, as given to [`KafkaNode::start`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Broker port (PLAINTEXT, or SASL_PLAINTEXT with [`NodeOptions::sasl_users`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// KRaft controller port.
    pub fn controller_port(&self) -> u16 {
        self.controller_port
    }

    /// The librdkafka properties that log `user` in on a node with [`NodeOptions::sasl_users`],
    /// to set next to `bootstrap.servers`.
    pub fn sasl_client_properties(user: &str, password: &str) -> Vec<(String, String)> {
        vec![
            ("security.protocol".into(), "SASL_PLAINTEXT".into()),
            ("sasl.mechanisms".into(), "PLAIN".into()),
            ("sasl.username".into(), user.into()),
            ("sasl.password".into(), password.into()),
        ]
    }

    /// The librdkafka properties (besides `bootstrap.servers`) a client needs to reach this
    /// node: none for a plaintext node, the first (super) user's login with
    /// [`NodeOptions::sasl_users`].
    pub fn client_properties(&self) -> Vec<(String, String)> {
        match self.opts.sasl_users.first() {
            Some((user, password)) => Self::sasl_client_properties(user, password),
            None => Vec::new(),
        }
    }

    /// The node's directory: `server.properties`, `data/` (log.dirs), `broker.log`, `stdout.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The broker's log4j log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    /// Pid of the broker JVM while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the JVM is (still) running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Last `n` lines of the broker log (for failure messages).
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_path(), n)
    }

    /// Graceful stop: SIGTERM, wait up to 15 s, then SIGKILL. Keeps the data dir.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        if matches!(child.try_wait(), Ok(None)) {
            proc::signal(pid, libc::SIGTERM);
            // A paused broker (`pause`) handles the SIGTERM only once it runs again.
            proc::signal(pid, libc::SIGCONT);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
        }
        let _ = child.wait();
        proc::unregister_pid(pid);
    }

    /// Freezes the broker (SIGSTOP): connections stay open and nothing answers, as a broker in
    /// a long pause (GC, an overloaded or swapping box) that its controller fences. Undo with
    /// [`KafkaNode::resume`].
    pub fn pause(&self) -> bool {
        self.child
            .as_ref()
            .is_some_and(|c| proc::signal(c.id(), libc::SIGSTOP))
    }

    /// Lets a paused broker run again (SIGCONT).
    pub fn resume(&self) -> bool {
        self.child
            .as_ref()
            .is_some_and(|c| proc::signal(c.id(), libc::SIGCONT))
    }

    /// Hard kill (SIGKILL), as in a crash. Keeps the data dir.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = child.kill();
        let _ = child.wait();
        proc::unregister_pid(child.id());
    }

    /// Starts the broker again on the same ports with the same data (stopping it gracefully
    /// first if it is running). Waits until it serves.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let libs = dist::ensure_libs()?;
        self.launch(&libs)
    }

    /// Lets go of a node started with [`NodeOptions::detached`]: it keeps running after this
    /// process exits, and its dir is kept. Stop it with [`DetachedNode::stop_and_remove`].
    pub fn detach(mut self) -> Result<DetachedNode> {
        if !self.opts.detached {
            bail!(
                "{}: only nodes started with NodeOptions::detached can be detached",
                self.name
            );
        }
        let child = self.child.take().context("node is not running")?;
        let pid = child.id();
        drop(child); // does not kill
        self.owned = false;
        Ok(DetachedNode {
            name: self.name.clone(),
            pid,
            pid_start: proc::start_time(pid),
            bootstrap: self.bootstrap.clone(),
            port: self.port,
            controller_port: self.controller_port,
            dir: self.dir.clone(),
        })
    }

    fn write_config(&self) -> Result<()> {
        let dir = self.dir.display();
        let sasl = sasl_config(&self.opts.sasl_users)?;
        let client = if sasl.is_some() {
            SASL_LISTENER
        } else {
            "PLAINTEXT"
        };
        let mut props = vec![
            ("process.roles".to_string(), "broker,controller".to_string()),
            ("node.id".into(), "1".into()),
            (
                "controller.quorum.voters".into(),
                format!("1@127.0.0.1:{}", self.controller_port),
            ),
            (
                "listeners".into(),
                format!(
                    "{client}://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                    self.port, self.controller_port
                ),
            ),
            (
                "advertised.listeners".into(),
                format!("{client}://127.0.0.1:{}", self.port),
            ),
            ("controller.listener.names".into(), "CONTROLLER".into()),
            ("inter.broker.listener.name".into(), client.into()),
            (
                "listener.security.protocol.map".into(),
                format!("{client}:{client},CONTROLLER:PLAINTEXT"),
            ),
            ("log.dirs".into(), format!("{dir}/data")),
            // Single node: every internal topic has RF 1 (transactions need the txn ones).
            ("offsets.topic.replication.factor".into(), "1".into()),
            ("offsets.topic.num.partitions".into(), "4".into()),
            (
                "transaction.state.log.replication.factor".into(),
                "1".into(),
            ),
            ("transaction.state.log.min.isr".into(), "1".into()),
            ("transaction.state.log.num.partitions".into(), "4".into()),
            (
                "share.coordinator.state.topic.replication.factor".into(),
                "1".into(),
            ),
            ("share.coordinator.state.topic.min.isr".into(), "1".into()),
            ("default.replication.factor".into(), "1".into()),
            ("min.insync.replicas".into(), "1".into()),
            ("group.initial.rebalance.delay.ms".into(), "0".into()),
            ("auto.create.topics.enable".into(), "false".into()),
            ("num.partitions".into(), "1".into()),
            // Data never expires during a test run; segments small enough to keep disk use sane.
            ("log.retention.hours".into(), "168".into()),
            ("log.retention.bytes".into(), "-1".into()),
            ("log.segment.bytes".into(), "67108864".into()),
            ("log.index.size.max.bytes".into(), "1048576".into()),
            // After a SIGKILL the controller waits for the old incarnation's session to expire
            // before the restarted broker may register (default 9 s): shorter for chaos tests,
            // still 10 missed heartbeats.
            ("broker.session.timeout.ms".into(), "5000".into()),
            ("broker.heartbeat.interval.ms".into(), "500".into()),
            // 2-core machine, several brokers: few threads.
            ("num.network.threads".into(), "2".into()),
            ("num.io.threads".into(), "4".into()),
            ("background.threads".into(), "2".into()),
            ("num.recovery.threads.per.data.dir".into(), "1".into()),
            ("num.replica.fetchers".into(), "1".into()),
        ];
        props.extend(sasl.unwrap_or_default());
        for (k, v) in &self.opts.extra_config {
            props.retain(|(pk, _)| pk != k);
            props.push((k.clone(), v.clone()));
        }
        let mut text = format!("# Written by er-tests for node {:?}\n", self.name);
        for (k, v) in props {
            text.push_str(&format!("{k}={v}\n"));
        }
        std::fs::write(self.dir.join("server.properties"), text)?;

        let log4j = format!(
            "status = warn\n\
             appender.file.type = File\n\
             appender.file.name = FILE\n\
             appender.file.fileName = {dir}/broker.log\n\
             appender.file.append = true\n\
             appender.file.layout.type = PatternLayout\n\
             appender.file.layout.pattern = [%d] %p %m (%c)%n\n\
             rootLogger.level = INFO\n\
             rootLogger.appenderRef.file.ref = FILE\n\
             logger.state.name = state.change.logger\n\
             logger.state.level = WARN\n\
             logger.request.name = kafka.request.logger\n\
             logger.request.level = WARN\n"
        );
        std::fs::write(self.dir.join("log4j2.properties"), log4j)?;
        Ok(())
    }

    fn java_command(&self, libs: &Path, log_name: &str) -> Result<Command> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(log_name))
            .with_context(|| format!("opening {log_name}"))?;
        let mut cmd = Command::new(java());
        cmd.arg(format!(
            "-Dlog4j2.configurationFile={}/log4j2.properties",
            self.dir.display()
        ))
        .arg(format!("-Dkafka.logs.dir={}", self.dir.display()))
        .arg("-Djava.awt.headless=true")
        .arg("-cp")
        .arg(format!("{}/*", libs.display()))
        .current_dir(&self.dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
        Ok(cmd)
    }

    fn spawn(&self, mut cmd: Command) -> Result<Child> {
        if self.opts.detached {
            proc::set_detached(&mut cmd);
            let child = cmd
                .spawn()
                .context("spawning java (is a JRE 17+ installed?)")?;
            proc::add_owner(&self.dir, child.id())?;
            Ok(child)
        } else {
            proc::spawn_tied(cmd).context("spawning java (is a JRE 17+ installed?)")
        }
    }

    /// Formats the data dir. With the default config this copies a template formatted once by
    /// `kafka.tools.StorageTool` (cached next to the jars) and gives it a fresh random cluster id
    /// and directory id: one JVM launch less per node, which matters on a busy 2-core machine.
    /// With `extra_config` (which may change what format writes) it runs StorageTool itself.
    fn prepare_storage(&self, libs: &Path) -> Result<()> {
        if self.opts.extra_config.is_empty() {
            match self.format_from_template(libs) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    eprintln!("er-tests: format template unusable ({e:#}); running StorageTool")
                }
            }
        }
        self.format(libs)
    }

    fn format_from_template(&self, libs: &Path) -> Result<()> {
        let template = format_template(libs)?;
        let data = self.dir.join("data");
        for entry in std::fs::read_dir(&template)? {
            let entry = entry?;
            let name = entry.file_name();
            if name == TEMPLATE_MARKER {
                continue;
            }
            if !entry.file_type()?.is_file() {
                bail!("unexpected {name:?} in {}", template.display());
            }
            if name == "meta.properties" {
                let text = std::fs::read_to_string(entry.path())?;
                let (mut cluster, mut directory) = (false, false);
                let mut out = String::new();
                for line in text.lines() {
                    if line.starts_with("cluster.id=") {
                        cluster = true;
                        out.push_str(&format!("cluster.id={}\n", random_cluster_id()));
                    } else if line.starts_with("directory.id=") {
                        directory = true;
                        out.push_str(&format!("directory.id={}\n", random_cluster_id()));
                    } else {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
                if !(cluster && directory) {
                    bail!("template meta.properties lacks cluster.id or directory.id");
                }
                std::fs::write(data.join(&name), out)?;
            } else {
                std::fs::copy(entry.path(), data.join(&name))?;
            }
        }
        Ok(())
    }

    /// `kafka-storage format` with a random cluster id (static quorum: controller.quorum.voters).
    fn format(&self, libs: &Path) -> Result<()> {
        let mut cmd = self.java_command(libs, "format.log")?;
        cmd.args(["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
            .arg("kafka.tools.StorageTool")
            .args(["format", "--ignore-formatted", "-t"])
            .arg(random_cluster_id())
            .arg("-c")
            .arg(self.dir.join("server.properties"));
        let mut child = self.spawn(cmd)?;
        let status = child.wait()?;
        proc::unregister_pid(child.id());
        if !status.success() {
            bail!(
                "Kafka node {:?}: kafka.tools.StorageTool format failed ({status})\n--- last lines of format.log ---\n{}",
                self.name,
                tail(&self.dir.join("format.log"), 40)
            );
        }
        Ok(())
    }

    fn bind_conflict(&self) -> bool {
        let log = tail(&self.log_path(), 200) + &tail(&self.dir.join("stdout.log"), 200);
        log.contains("Address already in use") || log.contains("BindException")
    }

    /// Spawns the broker JVM and waits until it serves; on failure kills it and returns an
    /// error with the end of its logs.
    fn launch(&mut self, libs: &Path) -> Result<()> {
        let log = self.log_path();
        let log_offset = file_len(&log);
        let mut cmd = self.java_command(libs, "stdout.log")?;
        cmd.arg(format!("-Xmx{}", self.opts.heap))
            .args(["-Xms64m", "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError"])
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"));
        let started = Instant::now();
        self.child = Some(self.spawn(cmd)?);
        let deadline = started + self.opts.start_timeout;
        let failure = loop {
            let child = self.child.as_mut().expect("just spawned");
            if let Some(status) = child.try_wait()? {
                let pid = child.id();
                self.child = None;
                proc::unregister_pid(pid);
                break format!("broker exited during startup ({status})");
            }
            if log_contains_since(&log, log_offset, "Kafka Server started")
                && tcp_ok(self.port)
                && metadata_ok(&self.bootstrap, &self.client_properties())
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                break format!("broker not serving after {:?}", self.opts.start_timeout);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        bail!(
            "Kafka node {:?} ({}, dir {}): {failure}\n--- last lines of broker.log ---\n{}\n--- last lines of stdout.log ---\n{}",
            self.name,
            self.bootstrap,
            self.dir.display(),
            tail(&log, 40),
            tail(&self.dir.join("stdout.log"), 20)
        )
    }
}

impl Drop for KafkaNode {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        proc::unregister_dir(&self.dir);
    }
}
