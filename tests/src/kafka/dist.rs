//! Where the Kafka jars come from: `tools/kafka/pom.xml` resolved by Maven into a cache outside the
//! clone, `${ER_CACHE_DIR:-$HOME/.cache/edge-replicator}/kafka-<version>/libs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

/// The POM, embedded at compile time: it pins the Kafka version in one place (`kafka.version`).
const POM: &str = include_str!("../../../tools/kafka/pom.xml");

/// Name of the marker file written into `libs/` once a resolution is complete. It holds the POM
/// text it was resolved from, so a changed POM triggers a fresh resolution.
const MARKER: &str = ".complete";

/// The text of `tools/kafka/pom.xml` this crate was built with.
pub(crate) fn pom() -> &'static str {
    POM
}

/// The Kafka version pinned in `tools/kafka/pom.xml`.
pub fn kafka_version() -> &'static str {
    let start = POM
        .find("<kafka.version>")
        .expect("kafka.version in pom.xml")
        + "<kafka.version>".len();
    let len = POM[start..]
        .find("</kafka.version>")
        .expect("</kafka.version> in pom.xml");
    POM[start..start + len].trim()
}

/// `${ER_CACHE_DIR:-$HOME/.cache/edge-replicator}` (the system temp dir if there is no `$HOME`).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ER_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache").join("edge-replicator"),
        None => std::env::temp_dir().join("edge-replicator"),
    }
}

/// `<cache>/kafka-<version>/libs` (may not exist yet: see [`ensure_libs`]).
pub fn libs_dir() -> PathBuf {
    cache_dir()
        .join(format!("kafka-{}", kafka_version()))
        .join("libs")
}

/// Java class path covering every resolved jar (`<libs>/*`), resolving them first if needed.
/// Also what MirrorMaker 2 (`org.apache.kafka.connect.mirror.MirrorMaker`) runs with.
pub fn classpath() -> Result<String> {
    Ok(format!("{}/*", ensure_libs()?.display()))
}

fn is_complete(libs: &Path) -> bool {
    std::fs::read_to_string(libs.join(MARKER)).is_ok_and(|pom| pom == POM)
}

/// Resolves the jars with Maven unless a complete resolution of this exact POM is cached.
/// Idempotent and safe against concurrent callers (threads and processes): each resolves into a
/// private temp dir and renames it into place. Returns the `libs` directory.
pub fn ensure_libs() -> Result<PathBuf> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let libs = libs_dir();
    if is_complete(&libs) {
        return Ok(libs);
    }
    let root = libs.parent().expect("libs has a parent").to_path_buf();
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let pom = root.join("pom.xml");
    std::fs::write(&pom, POM).with_context(|| format!("writing {}", pom.display()))?;
    let tmp = root.join(format!(
        "libs.tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    eprintln!(
        "er-tests: resolving Apache Kafka {} jars with Maven into {} ...",
        kafka_version(),
        libs.display()
    );
    let out = Command::new("mvn")
        .args(["-q", "-B", "-f"])
        .arg(&pom)
        .arg("dependency:copy-dependencies")
        .arg(format!("-DoutputDirectory={}", tmp.display()))
        .output()
        .context("running `mvn` (is Maven installed? scripts/setup.sh installs it)")?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!(
            "mvn dependency:copy-dependencies failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let jars = std::fs::read_dir(&tmp)
        .with_context(|| format!("reading {}", tmp.display()))?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".jar"))
        })
        .count();
    if jars == 0 {
        bail!("mvn resolved no jars into {}", tmp.display());
    }
    std::fs::write(tmp.join(MARKER), POM)?;
    if is_complete(&libs) {
        // Another process won the race.
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok(libs);
    }
    if libs.exists() {
        std::fs::remove_dir_all(&libs)
            .with_context(|| format!("removing stale {}", libs.display()))?;
    }
    if let Err(e) = std::fs::rename(&tmp, &libs) {
        let _ = std::fs::remove_dir_all(&tmp);
        if !is_complete(&libs) {
            return Err(e).with_context(|| format!("moving jars into {}", libs.display()));
        }
    }
    eprintln!("er-tests: {jars} jars in {}", libs.display());
    Ok(libs)
}
