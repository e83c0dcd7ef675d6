//! The MirrorMaker 2 compatibility oracle: Apache Kafka's own MM2 classes, run in a JVM.
//!
//! `tools/mm2-oracle` is a small Maven project (Java 17) over `connect-mirror-client`,
//! `connect-mirror` and `kafka-clients` of the Kafka release the test brokers run (its
//! `kafka.version` must equal `tools/kafka/pom.xml`'s). Its CLI (`java -jar mm2-oracle.jar help`)
//! calls `RemoteClusterUtils.translateOffsets` and `Heartbeat` / `Checkpoint` /
//! `OffsetSync.deserializeRecord`, printing one JSON object per line.
//!
//! ```no_run
//! use er_tests::oracle::{self, Kind};
//! let fields = oracle::decode_checkpoint(b"...", b"...")?; // one JVM per call
//! let many = oracle::decode_batch(&[(Kind::Heartbeat, vec![], vec![])])?; // one JVM for all
//! let offsets = oracle::translate_offsets("127.0.0.1:9092", "site-a", "my-group")?;
//! let rows = oracle::read_checkpoints("127.0.0.1:9092", "site-a.checkpoints.internal")?;
//! # let _ = (fields, many, offsets, rows);
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Decoded records carry Kafka's field names (`consumerGroupId`, `topic`, `partition`,
//! `upstreamOffset`, `downstreamOffset`, `metadata`, `sourceClusterAlias`, `targetClusterAlias`,
//! `timestamp`) plus `kafkaKey` / `kafkaValue`: Kafka's own serialization of the decoded record in
//! lowercase hex, to compare byte for byte with what was decoded.
//!
//! The JVM runs without `-ea`, as MirrorMaker 2 does in production; [`Jvm::ASSERTIONS`] runs it
//! with assertions enabled (Kafka's deserializers check the value version with a Java `assert`).
//!
//! The jar is built once per machine by Maven (`-o` first, then online) into
//! `<cache>/mm2-oracle/<hash of the POM and sources>/` (`mm2-oracle.jar` + `lib/`), where `<cache>`
//! is [`crate::kafka::cache_dir`]. Concurrent test processes serialize on a lock file and the
//! result is moved into place atomically, so a crash never leaves a half-built oracle behind.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

/// The oracle's sources, embedded at compile time: they define the cache key and are written out
/// to build the jar (so the build never touches the clone).
const SOURCES: [(&str, &str); 3] = [
    ("pom.xml", include_str!("../../tools/mm2-oracle/pom.xml")),
    (
        "src/main/java/invalid/example/edgereplicator/oracle/Main.java",
        include_str!(
            "../../tools/mm2-oracle/src/main/java/invalid/example/edgereplicator/oracle/Main.java"
        ),
    ),
    (
        "src/main/java/org/apache/kafka/connect/mirror/OracleAccess.java",
        include_str!(
            "../../tools/mm2-oracle/src/main/java/org/apache/kafka/connect/mirror/OracleAccess.java"
        ),
    ),
];

/// Jar file name inside the build directory (`<finalName>` in the POM).
const JAR: &str = "mm2-oracle.jar";

/// Marker written last into a complete build directory; holds the cache key.
const MARKER: &str = ".complete";

/// Timeout handed to `translateOffsets` and `read-checkpoints`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Kind of MM2 record to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `org.apache.kafka.connect.mirror.Heartbeat`.
    Heartbeat,
    /// `org.apache.kafka.connect.mirror.Checkpoint`.
    Checkpoint,
    /// `org.apache.kafka.connect.mirror.OffsetSync`.
    OffsetSync,
}

impl Kind {
    fn cli_name(self) -> &'static str {
        match self {
            Kind::Heartbeat => "heartbeat",
            Kind::Checkpoint => "checkpoint",
            Kind::OffsetSync => "offset-sync",
        }
    }
}

/// A translated offset as `RemoteClusterUtils.translateOffsets` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translated {
    /// Offset on the target cluster (`OffsetAndMetadata.offset()`).
    pub offset: i64,
    /// Commit metadata (`OffsetAndMetadata.metadata()`).
    pub metadata: String,
}

/// What `translateOffsets` returned for one group: by target-side (topic, partition).
pub type Translation = BTreeMap<(String, i32), Translated>;

/// How the oracle's JVM runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Jvm {
    /// Run with `-ea` (Java assertions enabled in Kafka's classes). MirrorMaker 2 runs without.
    pub assertions: bool,
}

impl Jvm {
    /// As MirrorMaker 2 runs in production: assertions disabled.
    pub const PRODUCTION: Jvm = Jvm { assertions: false };
    /// With `-ea`: Kafka's `assert version == 0` checks fire.
    pub const ASSERTIONS: Jvm = Jvm { assertions: true };

    /// Runs the oracle with `args` (and `stdin`), returns its stdout. Fails with its stderr if it
    /// exits non-zero.
    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<String> {
        let dir = ensure_jar()?;
        let mut cmd = Command::new(java());
        if self.assertions {
            cmd.arg("-ea");
        }
        cmd.arg("-jar")
            .arg(dir.join(JAR))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .context("spawning java for the MM2 oracle (is a JRE 17+ installed?)")?;
        // Feed stdin from a thread: the oracle answers line by line, so its stdout must be drained
        // while we write.
        let feeder = match (stdin, child.stdin.take()) {
            (Some(input), Some(mut pipe)) => {
                let input = input.to_vec();
                Some(std::thread::spawn(move || pipe.write_all(&input)))
            }
            _ => None,
        };
        let out = child
            .wait_with_output()
            .context("waiting for the MM2 oracle")?;
        if let Some(feeder) = feeder {
            // A write error (broken pipe) only matters if the oracle also failed, reported below.
            let _ = feeder.join();
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!(
                "mm2-oracle {} failed ({}): {}",
                args.first().unwrap_or(&""),
                out.status,
                stderr.trim()
            );
        }
        String::from_utf8(out.stdout).context("mm2-oracle wrote non-UTF-8 output")
    }

    /// `{"kafka": <version>, "commitId": .., "assertions": <bool>}` of the oracle's Kafka classes.
    pub fn version(&self) -> Result<Value> {
        one_line(&self.run(&["version"], None)?)
    }

    /// Decodes one record with Kafka's class for `kind` (one JVM). Kafka's exception is the error.
    pub fn decode(&self, kind: Kind, key: &[u8], value: &[u8]) -> Result<Value> {
        let command = format!("decode-{}", kind.cli_name());
        one_line(&self.run(&[&command, &hex(key), &hex(value)], None)?)
    }

    /// Decodes many records in one JVM. Per record: the decoded fields, or Kafka's exception as
    /// text (e.g. `"java.lang.AssertionError"`, `"org.apache.kafka.common.protocol.types.
    /// SchemaException: Error reading field 'metadata': ..."`).
    pub fn decode_batch(
        &self,
        records: &[(Kind, Vec<u8>, Vec<u8>)],
    ) -> Result<Vec<Result<Value, String>>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut input = String::new();
        for (kind, key, value) in records {
            writeln!(input, "{}\t{}\t{}", kind.cli_name(), hex(key), hex(value))
                .expect("writing to a String");
        }
        let out = self.run(&["decode-batch"], Some(input.as_bytes()))?;
        let lines = json_lines(&out)?;
        ensure!(
            lines.len() == records.len(),
            "mm2-oracle decode-batch answered {} lines for {} records",
            lines.len(),
            records.len()
        );
        lines.into_iter().map(outcome).collect()
    }
}

/// Decodes a heartbeat with `Heartbeat.deserializeRecord` (see [`Jvm::decode`]).
pub fn decode_heartbeat(key: &[u8], value: &[u8]) -> Result<Value> {
    Jvm::PRODUCTION.decode(Kind::Heartbeat, key, value)
}

/// Decodes a checkpoint with `Checkpoint.deserializeRecord` (see [`Jvm::decode`]).
pub fn decode_checkpoint(key: &[u8], value: &[u8]) -> Result<Value> {
    Jvm::PRODUCTION.decode(Kind::Checkpoint, key, value)
}

/// Decodes an offset sync with `OffsetSync.deserializeRecord` (see [`Jvm::decode`]).
pub fn decode_offset_sync(key: &[u8], value: &[u8]) -> Result<Value> {
    Jvm::PRODUCTION.decode(Kind::OffsetSync, key, value)
}

/// Decodes many records in one JVM (see [`Jvm::decode_batch`]).
pub fn decode_batch(records: &[(Kind, Vec<u8>, Vec<u8>)]) -> Result<Vec<Result<Value, String>>> {
    Jvm::PRODUCTION.decode_batch(records)
}

/// `RemoteClusterUtils.translateOffsets({bootstrap.servers}, site, group, 30 s)` on the cluster
/// at `bootstrap`: reads `<site>.checkpoints.internal` (default replication policy) and returns the
/// downstream offset of the group's latest checkpoint per target-side topic partition.
pub fn translate_offsets(
    bootstrap: &str,
    site: &str,
    group: &str,
) -> Result<BTreeMap<(String, i32), i64>> {
    Ok(translate(bootstrap, site, group, DEFAULT_TIMEOUT, &[])?
        .into_iter()
        .map(|(tp, t)| (tp, t.offset))
        .collect())
}

/// [`translate_offsets`] with the metadata, a timeout and extra `MirrorClientConfig` properties
/// (e.g. `("replication.policy.separator", "_")`).
pub fn translate(
    bootstrap: &str,
    site: &str,
    group: &str,
    timeout: Duration,
    properties: &[(&str, &str)],
) -> Result<Translation> {
    Ok(
        translate_groups(bootstrap, site, &[group], timeout, properties)?
            .remove(group)
            .unwrap_or_default(),
    )
}

/// [`translate`] for several groups in one JVM (`translateOffsets` once per group), by group.
/// Groups without any translated offset map to an empty map.
pub fn translate_groups(
    bootstrap: &str,
    site: &str,
    groups: &[&str],
    timeout: Duration,
    properties: &[(&str, &str)],
) -> Result<BTreeMap<String, Translation>> {
    ensure!(
        !groups.is_empty(),
        "translate_groups needs at least one group"
    );
    let timeout_ms = timeout.as_millis().max(1).to_string();
    let props: Vec<String> = properties.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut args = vec![
        "translate",
        "--bootstrap",
        bootstrap,
        "--source-alias",
        site,
        "--timeout-ms",
        &timeout_ms,
    ];
    for g in groups {
        args.extend(["--group", g]);
    }
    for p in &props {
        args.extend(["--property", p.as_str()]);
    }
    let mut out: BTreeMap<String, Translation> = groups
        .iter()
        .map(|g| ((*g).to_owned(), BTreeMap::new()))
        .collect();
    for line in json_lines(&Jvm::PRODUCTION.run(&args, None)?)? {
        let group = str_field(&line, "group")?;
        let topic = str_field(&line, "topic")?.to_owned();
        let partition = i32::try_from(i64_field(&line, "partition")?)?;
        let offset = i64_field(&line, "offset")?;
        let metadata = str_field(&line, "metadata")?.to_owned();
        out.get_mut(group)
            .with_context(|| format!("mm2-oracle translated an unasked group: {line}"))?
            .insert((topic, partition), Translated { offset, metadata });
    }
    Ok(out)
}

/// Every record of `topic` from the beginning to the end offsets, in (partition, offset) order,
/// decoded by `Checkpoint.deserializeRecord`: `{"recordPartition", "recordOffset", "ok": true,
/// <fields>}` or `{"recordPartition", "recordOffset", "ok": false, "error": <Kafka's exception>}`.
pub fn read_checkpoints(bootstrap: &str, topic: &str) -> Result<Vec<Value>> {
    let timeout_ms = DEFAULT_TIMEOUT.as_millis().to_string();
    let out = Jvm::PRODUCTION.run(
        &[
            "read-checkpoints",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--timeout-ms",
            &timeout_ms,
        ],
        None,
    )?;
    json_lines(&out)
}

/// The `kafka.version` the oracle is built against (from `tools/mm2-oracle/pom.xml`).
pub fn kafka_version() -> &'static str {
    pom_property(SOURCES[0].1, "kafka.version").expect("kafka.version in tools/mm2-oracle/pom.xml")
}

/// Builds the oracle unless this exact version of it is cached; returns the directory holding
/// `mm2-oracle.jar` and `lib/`. Idempotent; safe against concurrent threads and processes.
pub fn ensure_jar() -> Result<PathBuf> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ensure!(
        kafka_version() == crate::kafka::kafka_version(),
        "tools/mm2-oracle/pom.xml has kafka.version {} but the harness runs Kafka {} \
         (tools/kafka/pom.xml): make them equal",
        kafka_version(),
        crate::kafka::kafka_version()
    );
    let key = cache_key();
    let root = crate::kafka::cache_dir().join("mm2-oracle");
    let dir = root.join(&key);
    if is_complete(&dir, &key) {
        return Ok(dir);
    }
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    // Other test processes wait here instead of building the same jar in parallel.
    let lock_path = root.join(".lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    if is_complete(&dir, &key) {
        return Ok(dir);
    }
    let tmp = root.join(format!(
        "build.tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = build(&tmp, &dir, &key);
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    Ok(dir)
}

fn build(tmp: &Path, dir: &Path, key: &str) -> Result<()> {
    for (path, text) in SOURCES {
        let file = tmp.join(path);
        std::fs::create_dir_all(file.parent().expect("source files have a parent"))?;
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    }
    eprintln!(
        "er-tests: building the MM2 oracle (Kafka {}) with Maven into {} ...",
        kafka_version(),
        dir.display()
    );
    let mvn = |offline: bool| -> Result<std::process::Output> {
        let mut cmd = Command::new("mvn");
        cmd.args(["-q", "-B"]);
        if offline {
            cmd.arg("-o");
        }
        cmd.arg("-f")
            .arg(tmp.join("pom.xml"))
            .arg("package")
            .current_dir(tmp)
            .output()
            .context("running `mvn` (is Maven installed? scripts/setup.sh installs it)")
    };
    let mut out = mvn(true)?;
    if !out.status.success() {
        // Not everything is in the local Maven repository yet: resolve online.
        out = mvn(false)?;
    }
    if !out.status.success() {
        bail!(
            "mvn package of the MM2 oracle failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let target = tmp.join("target");
    let staged = tmp.join("dist");
    std::fs::create_dir_all(&staged)?;
    std::fs::rename(target.join(JAR), staged.join(JAR))
        .with_context(|| format!("mvn built no {} in {}", JAR, target.display()))?;
    std::fs::rename(target.join("lib"), staged.join("lib"))
        .with_context(|| format!("mvn copied no lib/ into {}", target.display()))?;
    std::fs::write(staged.join(MARKER), key)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("removing incomplete {}", dir.display()))?;
    }
    std::fs::rename(&staged, dir)
        .with_context(|| format!("moving oracle into {}", dir.display()))?;
    eprintln!("er-tests: MM2 oracle ready in {}", dir.display());
    Ok(())
}

fn is_complete(dir: &Path, key: &str) -> bool {
    std::fs::read_to_string(dir.join(MARKER)).is_ok_and(|k| k == key) && dir.join(JAR).is_file()
}

/// FNV-1a (64 bit) over the embedded sources: stable across Rust releases, unlike `DefaultHasher`.
fn cache_key() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (path, text) in SOURCES {
        for b in path.bytes().chain([0]).chain(text.bytes()).chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn pom_property<'a>(pom: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = pom.find(&open)? + open.len();
    let len = pom[start..].find(&format!("</{name}>"))?;
    Some(pom[start..start + len].trim())
}

/// `$JAVA_HOME/bin/java` if present, else `java` from `PATH` (as the broker harness does).
fn java() -> PathBuf {
    match std::env::var_os("JAVA_HOME").filter(|h| !h.is_empty()) {
        Some(home) if Path::new(&home).join("bin/java").exists() => {
            Path::new(&home).join("bin/java")
        }
        _ => PathBuf::from("java"),
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        write!(s, "{b:02x}").expect("writing to a String");
    }
    s
}

fn json_lines(out: &str) -> Result<Vec<Value>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("mm2-oracle printed {l:?}")))
        .collect()
}

fn one_line(out: &str) -> Result<Value> {
    let mut lines = json_lines(out)?;
    ensure!(
        lines.len() == 1,
        "mm2-oracle printed {} lines, expected one",
        lines.len()
    );
    Ok(lines.remove(0))
}

/// `{"ok": true, ...}` -> the fields without `ok`; `{"ok": false, "error": e}` -> `Err(e)`.
fn outcome(mut line: Value) -> Result<Result<Value, String>> {
    let Some(obj) = line.as_object_mut() else {
        bail!("mm2-oracle printed a non-object {line}");
    };
    match obj.remove("ok") {
        Some(Value::Bool(true)) => Ok(Ok(line)),
        Some(Value::Bool(false)) => Ok(Err(obj
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("(no error message)")
            .to_owned())),
        _ => bail!("mm2-oracle line without \"ok\": {line}"),
    }
}

fn str_field<'a>(v: &'a Value, name: &str) -> Result<&'a str> {
    v.get(name)
        .and_then(Value::as_str)
        .with_context(|| format!("no string {name:?} in {v}"))
}

fn i64_field(v: &Value, name: &str) -> Result<i64> {
    v.get(name)
        .and_then(Value::as_i64)
        .with_context(|| format!("no integer {name:?} in {v}"))
}
