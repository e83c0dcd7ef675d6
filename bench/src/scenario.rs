//! The scenarios: what is preloaded, what each system does to it, which systems take part.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};

/// What a record's value looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Payload {
    /// Sensor-style JSON objects padded with words from a small vocabulary (compresses ~3-5x).
    Json,
    /// Random bytes (does not compress).
    Random,
}

/// The processing step a scenario asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Processing {
    /// Copy everything.
    None,
    /// Keep records carrying header `hot` = `1` (the preloader sets it on 10% of records).
    FilterHot,
    /// Drop JSON field `humidity`, rename `temp` to `temperature`.
    JsonTransform,
}

/// A named scenario with its defaults (flags override them).
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Name on the command line and in the report.
    pub name: &'static str,
    /// Value size in bytes.
    pub value_bytes: usize,
    /// Partitions per topic.
    pub partitions: i32,
    /// Records in a full run.
    pub records: u64,
    /// Records with `--quick`.
    pub quick_records: u64,
    /// Processing step.
    pub processing: Processing,
    /// Replicate over the emulated WAN link.
    pub wan: bool,
    /// One line for the report.
    pub about: &'static str,
}

/// Every scenario, in report order. `wan` runs only with `--wan`.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "1k",
        value_bytes: 1024,
        partitions: 8,
        records: 500_000,
        quick_records: 20_000,
        processing: Processing::None,
        wan: false,
        about: "1 KiB JSON values, 8 partitions, plain copy",
    },
    Scenario {
        name: "100b",
        value_bytes: 100,
        partitions: 8,
        records: 2_000_000,
        quick_records: 50_000,
        processing: Processing::None,
        wan: false,
        about: "100 B JSON values, 8 partitions, plain copy",
    },
    Scenario {
        name: "10k",
        value_bytes: 10_240,
        partitions: 8,
        records: 50_000,
        quick_records: 2_000,
        processing: Processing::None,
        wan: false,
        about: "10 KiB JSON values, 8 partitions, plain copy",
    },
    Scenario {
        name: "filter10",
        value_bytes: 1024,
        partitions: 8,
        records: 500_000,
        quick_records: 20_000,
        processing: Processing::FilterHot,
        wan: false,
        about: "1 KiB JSON values, keep the 10% with header hot=1",
    },
    Scenario {
        name: "json-transform",
        value_bytes: 1024,
        partitions: 8,
        records: 500_000,
        quick_records: 20_000,
        processing: Processing::JsonTransform,
        wan: false,
        about: "1 KiB JSON values, drop one field and rename another",
    },
    Scenario {
        name: "wan",
        value_bytes: 1024,
        partitions: 8,
        records: 200_000,
        quick_records: 10_000,
        processing: Processing::FilterHot,
        wan: true,
        about: "filter10 over an emulated WAN link (delay + rate)",
    },
];

/// Looks up scenarios by name; `all` is every scenario except `wan` unless `with_wan`.
pub fn select(names: &[String], with_wan: bool) -> Result<Vec<Scenario>> {
    let mut out: Vec<Scenario> = Vec::new();
    for n in names.iter().flat_map(|n| n.split(',')).map(str::trim) {
        if n == "all" {
            for s in SCENARIOS {
                if (with_wan || !s.wan) && !out.iter().any(|o| o.name == s.name) {
                    out.push(*s);
                }
            }
            continue;
        }
        match SCENARIOS.iter().find(|s| s.name == n) {
            Some(s) if s.wan && !with_wan => bail!(
                "scenario wan needs --wan (our side uses the bench's own UDP relay until the issue-5 LinkProxy lands)"
            ),
            Some(s) => {
                if !out.iter().any(|o| o.name == s.name) {
                    out.push(*s);
                }
            }
            None => bail!(
                "unknown scenario {n:?}; known: all, {}",
                SCENARIOS
                    .iter()
                    .map(|s| s.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    Ok(out)
}

/// The three systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// edge-agent + hub.
    Ours,
    /// MirrorMaker 2, dedicated mode.
    Mm2,
    /// A plain rdkafka consume -> produce pipe (er-bench's own `pipe` subcommand).
    Baseline,
}

impl System {
    /// Column name.
    pub fn label(self) -> &'static str {
        match self {
            System::Ours => "ours",
            System::Mm2 => "MM2",
            System::Baseline => "baseline",
        }
    }
}

/// Paths of the example plugins (built by `plugins/build.sh`).
pub fn plugin_dir(workspace: &Path) -> PathBuf {
    workspace.join("plugins/examples/target/wasm32-wasip2/release")
}

/// The agent route TOML for a processing step (`None` for a plain copy), matching the source
/// topics `prefix-.*`.
pub fn agent_routes(processing: Processing, prefix: &str, plugins: &Path) -> Option<String> {
    let (plugin, config) = match processing {
        Processing::None => return None,
        Processing::FilterHot => ("filter.wasm", "condition = 'header:hot == \"1\"'\n"),
        Processing::JsonTransform => (
            "transform.wasm",
            "drop = \"humidity\"\n\"rename.temp\" = \"temperature\"\n",
        ),
    };
    Some(format!(
        "\n[[routes]]\ntopics = [{:?}]\non_error = \"skip\"\n\n[[routes.plugins]]\npath = {:?}\n\n[routes.plugins.config]\n{config}",
        format!("{prefix}-.*"),
        plugins.join(plugin),
    ))
}

/// Connector properties and what they amount to.
pub type Mm2Transforms = (Vec<(String, String)>, &'static str);

/// MM2's nearest equivalent of a processing step, as `<flow>.`-relative properties plus a
/// description for the report; `Err` with the reason when MM2 has none.
pub fn mm2_transforms(processing: Processing) -> Result<Mm2Transforms, &'static str> {
    match processing {
        Processing::None => Ok((Vec::new(), "plain copy")),
        Processing::FilterHot => Ok((
            [
                ("transforms", "keepHot"),
                (
                    "transforms.keepHot.type",
                    "org.apache.kafka.connect.transforms.Filter",
                ),
                ("transforms.keepHot.predicate", "hasHot"),
                // Filter drops what the predicate matches: negated, it drops records WITHOUT `hot`.
                ("transforms.keepHot.negate", "true"),
                ("predicates", "hasHot"),
                (
                    "predicates.hasHot.type",
                    "org.apache.kafka.connect.transforms.predicates.HasHeaderKey",
                ),
                ("predicates.hasHot.name", "hot"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            "Filter SMT + negated HasHeaderKey(hot), after the link; only the kept 10% carry the header, so this equals our header:hot == \"1\"",
        )),
        Processing::JsonTransform => Err(
            "MM2 copies values as raw bytes; its field SMTs (ReplaceField) need structured values",
        ),
    }
}

/// Fixed-rate latency phase settings.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LatencyPlan {
    /// Records per second.
    pub rate: u32,
    /// How long to send.
    #[serde(with = "secs")]
    pub duration: Duration,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_skips_wan_unless_asked() {
        let all = select(&["all".into()], false).unwrap();
        assert!(all.iter().all(|s| !s.wan));
        assert_eq!(all.len(), SCENARIOS.len() - 1);
        assert!(select(&["wan".into()], false).is_err());
        assert_eq!(select(&["1k,wan".into()], true).unwrap().len(), 2);
        assert!(select(&["nope".into()], false).is_err());
    }

    #[test]
    fn routes_parse_as_toml() {
        for p in [Processing::FilterHot, Processing::JsonTransform] {
            let t = agent_routes(p, "bench-x", Path::new("/p")).unwrap();
            let v: toml::Table = toml::from_str(&t).unwrap();
            let route = &v["routes"][0];
            assert_eq!(route["topics"][0].as_str(), Some("bench-x-.*"));
            assert!(route["plugins"][0]["config"].as_table().is_some());
        }
        let f = agent_routes(Processing::FilterHot, "b", Path::new("/p")).unwrap();
        let v: toml::Table = toml::from_str(&f).unwrap();
        assert_eq!(
            v["routes"][0]["plugins"][0]["config"]["condition"].as_str(),
            Some("header:hot == \"1\"")
        );
    }
}
