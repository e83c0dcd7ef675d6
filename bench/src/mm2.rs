//! MirrorMaker 2 of the same Kafka release, in dedicated mode
//! (`org.apache.kafka.connect.mirror.MirrorMaker`), launched the way `connect-mirror-maker.sh`
//! launches it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::procs::Child;

/// One MM2 flow `alias -> central`.
#[derive(Debug, Clone)]
pub struct Mm2Setup {
    /// Source cluster alias (unique per run: MM2 keeps its progress in topics named after it,
    /// so a reused alias would resume instead of copying).
    pub alias: String,
    /// Source bootstrap servers as MM2 sees them (through the counting proxy when there is one).
    pub edge: String,
    /// Target bootstrap servers.
    pub central: String,
    /// Topic names to mirror (each a whole-name regex).
    pub topics: Vec<String>,
    /// `tasks.max`.
    pub tasks: u32,
    /// Extra `<alias>->central.`-prefixed connector properties (SMTs).
    pub flow_props: Vec<(String, String)>,
    /// JVM max heap (`connect-mirror-maker.sh` uses 2G).
    pub heap: String,
}

impl Mm2Setup {
    /// The mm2.properties text.
    pub fn properties(&self) -> String {
        let a = &self.alias;
        let mut s = String::new();
        let mut line = |k: &str, v: &str| {
            let _ = writeln!(s, "{k} = {v}");
        };
        line("clusters", &format!("{a}, central"));
        line(&format!("{a}.bootstrap.servers"), &self.edge);
        line("central.bootstrap.servers", &self.central);
        line(&format!("{a}->central.enabled"), "true");
        line(&format!("central->{a}.enabled"), "false");
        line(&format!("{a}->central.topics"), &self.topics.join(", "));
        line("tasks.max", &self.tasks.to_string());
        // Single-node clusters: every topic MM2 creates gets replication factor 1.
        for k in [
            "replication.factor",
            "checkpoints.topic.replication.factor",
            "heartbeats.topic.replication.factor",
            "offset-syncs.topic.replication.factor",
            "offset.storage.replication.factor",
            "status.storage.replication.factor",
            "config.storage.replication.factor",
        ] {
            line(k, "1");
        }
        // Only the data path is compared: no group offset sync, no config or ACL sync.
        // Heartbeats, checkpoints and offset syncs stay on as in a default deployment.
        line("sync.group.offsets.enabled", "false");
        line("sync.topic.configs.enabled", "false");
        line("sync.topic.acls.enabled", "false");
        line("emit.heartbeats.enabled", "true");
        line("emit.checkpoints.enabled", "true");
        // The producer writing to central: batches like ours and the baseline's, same codec.
        line("central.producer.linger.ms", "10");
        line("central.producer.batch.size", "262144");
        line("central.producer.compression.type", "zstd");
        for (k, v) in &self.flow_props {
            line(&format!("{a}->central.{k}"), v);
        }
        s
    }

    /// Writes the config and a log4j2 config into `dir` and starts the JVM.
    pub fn start(&self, dir: &Path, classpath: &str) -> Result<Child> {
        let props = dir.join(format!("mm2-{}.properties", self.alias));
        std::fs::write(&props, self.properties())?;
        let log = dir.join(format!("mm2-{}.log", self.alias));
        let log4j = dir.join(format!("mm2-{}-log4j2.properties", self.alias));
        std::fs::write(
            &log4j,
            format!(
                "status = warn\n\
                 appender.file.type = File\n\
                 appender.file.name = FILE\n\
                 appender.file.fileName = {}\n\
                 appender.file.append = true\n\
                 appender.file.layout.type = PatternLayout\n\
                 appender.file.layout.pattern = [%d] %p %m (%c)%n\n\
                 rootLogger.level = INFO\n\
                 rootLogger.appenderRef.file.ref = FILE\n",
                log.display()
            ),
        )?;
        // The JVM options of kafka-run-class.sh / connect-mirror-maker.sh.
        let args: Vec<String> = [
            "-Xms256M".to_owned(),
            format!("-Xmx{}", self.heap),
            "-server".into(),
            "-XX:+UseG1GC".into(),
            "-XX:MaxGCPauseMillis=20".into(),
            "-XX:InitiatingHeapOccupancyPercent=35".into(),
            "-XX:+ExplicitGCInvokesConcurrent".into(),
            "-XX:MaxInlineLevel=15".into(),
            "-Djava.awt.headless=true".into(),
            format!("-Dlog4j2.configurationFile={}", log4j.display()),
            "-cp".into(),
            classpath.to_owned(),
            "org.apache.kafka.connect.mirror.MirrorMaker".into(),
            props.display().to_string(),
            // Only the herder that writes to central: no reverse-direction heartbeat flow.
            "--clusters".into(),
            "central".into(),
        ]
        .into();
        Child::spawn(
            "mm2",
            &java(),
            &args,
            &[],
            &dir.join(format!("mm2-{}.stdout", self.alias)),
        )
        .map(|c| c.with_log(log))
    }
}

/// `$JAVA_HOME/bin/java` or `java` from the PATH.
fn java() -> PathBuf {
    match std::env::var_os("JAVA_HOME").filter(|h| !h.is_empty()) {
        Some(home) if Path::new(&home).join("bin/java").exists() => {
            Path::new(&home).join("bin/java")
        }
        _ => PathBuf::from("java"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_name_the_flow_and_its_smts() {
        let s = Mm2Setup {
            alias: "edge_ab_1k".into(),
            edge: "127.0.0.1:1".into(),
            central: "127.0.0.1:2".into(),
            topics: vec!["a-t0".into(), "a-lat".into()],
            tasks: 8,
            flow_props: vec![("transforms".into(), "keepHot".into())],
            heap: "2G".into(),
        }
        .properties();
        for want in [
            "clusters = edge_ab_1k, central",
            "edge_ab_1k->central.enabled = true",
            "edge_ab_1k->central.topics = a-t0, a-lat",
            "tasks.max = 8",
            "offset.storage.replication.factor = 1",
            "sync.group.offsets.enabled = false",
            "edge_ab_1k->central.transforms = keepHot",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
    }
}
