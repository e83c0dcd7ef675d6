//! The agent's configuration: `agent.toml` read into its serde [`schema`], checked table by
//! table in [`validate`] and handed to the rest of the agent as typed [`Settings`] (durations as
//! [`Duration`], choices as enums, patterns compiled, paths absolute). Nothing outside this module
//! reads the serde structs.

mod schema;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;

pub use er_service::config::ConfigError;
pub use schema::IsolationLevel;

use crate::hubs::HubAddress;
use crate::routes::Routes;

/// A validated agent configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The site name the agent announces, if configured; the hub trusts only the certificate
    /// and logs a warning when the two differ.
    pub site: Option<String>,
    /// The edge Kafka cluster.
    pub kafka: KafkaSettings,
    /// Which local topics are replicated and what is reported of them.
    pub topics: TopicSettings,
    /// The link to the hub.
    pub hub: HubSettings,
    /// Batching and in-flight limits.
    pub batching: BatchSettings,
    /// The heartbeat interval, when MM2 heartbeats are on.
    pub heartbeats: Option<Duration>,
    /// Which edge consumer groups are reported, and how often.
    pub groups: GroupSettings,
    /// Central topics taken down from the hub, unless `[downlink] enabled = false`.
    pub downlink: Option<DownlinkSettings>,
    /// The plugin sandbox.
    pub plugins: PluginSettings,
    /// Plugin chains and priorities by topic.
    pub routes: Routes,
    /// Address of the Prometheus endpoint, if any.
    pub metrics_listen: Option<SocketAddr>,
}

/// `[downlink]`: how the agent takes central topics down into the edge cluster.
#[derive(Debug, Clone)]
pub struct DownlinkSettings {
    /// Edge consumer group holding the committed downlink positions.
    pub group: String,
    /// Bytes received and not yet committed before the agent ends the session.
    pub max_pending_bytes: u64,
}

/// `[kafka]`: the edge cluster.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Bootstrap servers, comma separated `host:port`.
    pub bootstrap_servers: String,
    /// Which records of transactional producers are read.
    pub isolation_level: IsolationLevel,
    /// Extra librdkafka consumer properties.
    pub properties: BTreeMap<String, String>,
}

/// `[topics]`: topic selection and what is reported of the selected topics.
#[derive(Debug, Clone)]
pub struct TopicSettings {
    include: Vec<Regex>,
    exclude: Vec<Regex>,
    /// How often the agent looks for new topics and partitions.
    pub refresh_interval: Duration,
    /// Report topics' partition counts and configs to the hub.
    pub sync_metadata: bool,
    /// Report topics again this often even when nothing changed.
    pub metadata_interval: Duration,
    /// Report topics' literal ACL bindings to the hub.
    pub sync_acls: bool,
}

/// `[hub]`: where the hub is and how to prove who we are.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// The hub addresses, in the order they are tried (at least one, no duplicates).
    pub addresses: Vec<HubAddress>,
    /// The name checked against every hub's certificate, if configured (see
    /// [`HubSettings::server_name_for`]).
    pub server_name: Option<String>,
    /// CA, client certificate and key, absolute paths.
    pub tls: er_net::TlsFiles,
    /// A connection attempt gives up after this long.
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles per failure, with jitter.
    pub reconnect_backoff_min: Duration,
    /// Cap of the reconnect delay.
    pub reconnect_backoff_max: Duration,
    /// Most compressed batch bytes sent per second, if limited.
    pub max_bytes_per_sec: Option<u64>,
    /// While no hub answers at all, a fresh attempt goes out about this often.
    pub probe_interval: Duration,
}

impl HubSettings {
    /// The name a hub's certificate must carry when dialling `hub`: `hub.server_name` if set,
    /// else the host part of the address.
    pub fn server_name_for<'a>(&'a self, hub: &'a HubAddress) -> &'a str {
        self.server_name.as_deref().unwrap_or(&hub.host)
    }
}

/// `[batching]`: how records are grouped and how much may wait for acks.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    /// A batch is sent when it holds this many records.
    pub max_records: usize,
    /// A batch is sent when its encoded records reach this many bytes.
    pub max_bytes: usize,
    /// A batch is sent at the latest this long after its first record.
    pub linger: Duration,
    /// Compression codec of batches.
    pub codec: er_protocol::Codec,
    /// zstd level.
    pub zstd_level: i32,
    /// Compressed bytes per source partition sent but not yet acknowledged.
    pub max_inflight_bytes_per_partition: u64,
    /// Compressed bytes over the whole link sent but not yet acknowledged.
    pub max_inflight_bytes_total: u64,
    /// KiB of edge records the session's consumers read ahead, all lanes together.
    pub prefetch_kbytes: usize,
}

/// `[groups]`: edge consumer groups whose committed offsets are reported.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    include: Vec<Regex>,
    exclude: Vec<Regex>,
    /// Interval of group offset reports, when on.
    pub interval: Option<Duration>,
}

impl GroupSettings {
    /// Whether the patterns select an edge consumer group for reporting.
    pub fn wants(&self, group: &str) -> bool {
        self.include.iter().any(|r| r.is_match(group))
            && !self.exclude.iter().any(|r| r.is_match(group))
    }
}

/// `[plugins]`: the sandbox shared by every route.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// Sandbox limits for the plugin host.
    pub host: er_plugin_host::HostConfig,
    /// How long a route stopped by a plugin failure waits before it tries again.
    pub stopped_route_retry: Duration,
    /// Hub-distributed plugins, when a route names one.
    pub hub: Option<HubPluginSettings>,
}

/// Where hub-distributed plugins live and whose signatures they need.
#[derive(Debug, Clone)]
pub struct HubPluginSettings {
    /// Their directory (`<name>.wasm` and `<name>.version` each).
    pub dir: PathBuf,
    /// Keys a plugin's signature must verify with (one is enough).
    pub trusted: Vec<[u8; er_net::signing::PUBLIC_KEY_BYTES]>,
    /// The names routes use.
    pub names: std::collections::BTreeSet<String>,
}

impl HubPluginSettings {
    /// The component file of plugin `name`.
    pub fn wasm(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.wasm"))
    }

    /// The file holding the version of plugin `name` installed.
    pub fn version_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.version"))
    }
}

impl Settings {
    /// Whether a local topic is replicated. The heartbeats topic always is while heartbeats
    /// are on (as in MirrorMaker 2).
    pub fn wants_topic(&self, topic: &str) -> bool {
        if topic == er_protocol::HEARTBEATS_TOPIC && self.heartbeats.is_some() {
            return true;
        }
        !er_protocol::is_internal_topic(topic)
            && self.topics.include.iter().any(|r| r.is_match(topic))
            && !self.topics.exclude.iter().any(|r| r.is_match(topic))
    }

    /// Whether `topic`'s partition count and configs are reported to the hub: reporting is
    /// on and no plugin chain takes the topic (its records may go to other topics).
    pub fn reports_metadata(&self, topic: &str) -> bool {
        self.topics.sync_metadata && self.routes.route_for(topic).is_none()
    }

    /// Whether `topic`'s ACL bindings are reported to the hub: reporting is on and no plugin
    /// chain takes the topic (its records may land in topics of other names).
    pub fn reports_acls(&self, topic: &str) -> bool {
        self.topics.sync_acls && self.routes.route_for(topic).is_none()
    }
}

/// Reads, parses and validates an agent config file.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    parse(path, &er_service::config::read(path)?)
}

/// Parses and validates config text; `path` is used for messages and to resolve relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Settings, ConfigError> {
    let raw: schema::AgentConfig = er_service::config::from_toml(path, text)?;
    validate::settings(er_service::config::Checks::new(path), raw)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::routes::Priority;

    fn example_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        er_net::devcerts::generate(&dir.path().join("certs"), &[], &["plant-7".into()], false)
            .unwrap();
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/config/agent.toml");
        std::fs::copy(example, dir.path().join("agent.toml")).unwrap();
        dir
    }

    /// The example config beside dev certificates: the directory (dropping it deletes them), the
    /// config's path and its text.
    fn example() -> (tempfile::TempDir, PathBuf, String) {
        let dir = example_dir();
        let path = dir.path().join("agent.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        (dir, path, text)
    }

    #[test]
    fn downlinks_can_be_refused_and_their_settings_are_checked() {
        let (_dir, path, text) = example();
        let off = text.replacen(
            "enabled = true                        # false",
            "enabled = false # false",
            1,
        );
        assert!(parse(&path, &off).unwrap().downlink.is_none());
        for (from, to, field) in [
            (
                "group = \"edge-replicator-downlink\"",
                "group = \" \"",
                "downlink.group",
            ),
            (
                "max_pending_bytes = 67108864",
                "max_pending_bytes = 10",
                "downlink.max_pending_bytes",
            ),
        ] {
            assert!(text.contains(from), "{from}");
            let e = parse(&path, &text.replacen(from, to, 1))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn the_example_config_is_valid_and_selects_as_documented() {
        let dir = example_dir();
        let v = load(&dir.path().join("agent.toml")).unwrap();
        assert!(v.wants_topic("sensors.temp"));
        assert!(v.wants_topic("alarms"));
        assert!(!v.wants_topic("sensors.debug"), "exclude wins");
        assert!(!v.wants_topic("alarms2"), "whole-name match");
        assert!(
            !v.wants_topic("sensors.x.internal"),
            "internal topics never"
        );
        assert_eq!(
            v.hub.addresses,
            [crate::hubs::HubAddress {
                host: "hub.example.com".into(),
                port: 4433
            }]
        );
        assert_eq!(v.hub.server_name.as_deref(), Some("hub.example.com"));
        assert_eq!(v.routes.route_for("sensors.temp"), Some(0));
        assert_eq!(
            v.routes.route_for("alarms"),
            None,
            "its route has no plugins"
        );
        assert_eq!(v.hub.max_bytes_per_sec, None, "unlimited unless set");
        assert_eq!(
            v.batching.prefetch_kbytes, 16384,
            "half the in-flight budget, at most 16 MiB, by default"
        );
        let d = v.downlink.as_ref().expect("downlinks taken");
        assert_eq!(d.group, "edge-replicator-downlink");
        let r = &v.routes[0];
        assert_eq!(r.name, "hot-sensors");
        assert_eq!(
            r.policy,
            er_plugin_host::ErrorPolicy::DeadLetter {
                topic: "sensors-dlq".into()
            }
        );
        assert_eq!(r.plugins.len(), 2);
        assert!(r.plugins[0].path.is_absolute());
        assert!(r.plugins[0].path.ends_with("filter.wasm"));
        assert_eq!(
            r.plugins[0].config,
            vec![
                ("condition".to_owned(), "temperature > 30".to_owned()),
                ("on_missing".to_owned(), "drop".to_owned())
            ]
        );
    }

    #[test]
    fn plugin_output_limits_default_and_routes_override_them() {
        let (_dir, path, good) = example();
        let v = parse(&path, &good).unwrap();
        let defaults = er_plugin_host::OutputLimits {
            max_outputs_per_input: 100,
            max_bytes_per_input: er_plugin_host::DEFAULT_MAX_OUTPUT_BYTES_PER_INPUT,
            max_bytes_per_batch: er_plugin_host::DEFAULT_MAX_OUTPUT_BYTES_PER_BATCH,
        };
        assert_eq!(v.routes[0].output_limits, defaults);
        let host = v.plugins.host.clone();
        assert_eq!(
            er_plugin_host::OutputLimits::from(&host),
            defaults,
            "the host's defaults are the [plugins] settings"
        );
        let text = good
            .replace(
                "max_outputs_per_input = 100",
                "max_outputs_per_input = 100\nmax_output_bytes_per_batch = 5000000",
            )
            .replace(
                "on_error = \"dead-letter\"",
                "on_error = \"dead-letter\"\nmax_output_bytes_per_input = 1000",
            );
        let v = parse(&path, &text).unwrap();
        assert_eq!(
            v.routes[0].output_limits,
            er_plugin_host::OutputLimits {
                max_bytes_per_input: 1000,
                max_bytes_per_batch: 5_000_000,
                ..defaults
            }
        );
    }

    #[test]
    fn heartbeats_never_take_a_route_and_settings_keep_file_order() {
        let dir = example_dir();
        let path = dir.path().join("agent.toml");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(r#"topics = ["sensors\\..*"]"#, r#"topics = [".*"]"#)
            + r#"
[[routes]]
topics = ["late"]
on_error = "skip"
[[routes.plugins]]
path = "/x/rename.wasm"
config = { "rule.2" = "a => b", "rule.10" = "c => d", "rule.1" = "e => f", n = 3, on = true }
"#;
        let v = parse(&path, &text).unwrap();
        assert_eq!(v.routes.route_for("anything"), Some(0));
        assert_eq!(
            v.routes.route_for("heartbeats"),
            None,
            "internal records bypass plugins"
        );
        assert_eq!(v.routes[2].name, "route-2");
        assert_eq!(v.routes[2].policy, er_plugin_host::ErrorPolicy::Skip);
        let keys: Vec<_> = v.routes[2].plugins[0]
            .config
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(
            keys,
            [
                "rule.2=a => b",
                "rule.10=c => d",
                "rule.1=e => f",
                "n=3",
                "on=true"
            ]
        );
    }

    #[test]
    fn internal_topics_are_never_selected_even_by_catch_all() {
        let (_dir, path, text) = example();
        let text = text.replace(
            r#"include = ["sensors\\..*", "alarms"]"#,
            r#"include = [".*"]"#,
        );
        let v = parse(&path, &text).unwrap();
        for t in [
            "__consumer_offsets",
            "mm2-offset-syncs.x.internal",
            "x.checkpoints.internal",
            "connect-offsets-internal",
        ] {
            assert!(!v.wants_topic(t), "{t}");
        }
        assert!(v.wants_topic("orders"));
    }

    #[test]
    fn each_validation_rule_names_its_field() {
        let (_dir, path, good) = example();
        let cases = [
            (
                good.replace(
                    "bootstrap_servers = \"127.0.0.1:9092\"",
                    "bootstrap_servers = \" \"",
                ),
                "kafka.bootstrap_servers",
            ),
            (
                good.replace(
                    "isolation_level = \"read_committed\"",
                    "isolation_level = \"dirty\"",
                ),
                "kafka.isolation_level",
            ),
            (
                good.replace(r#""alarms"]"#, r#""(alarms"]"#),
                "topics.include[1]",
            ),
            (
                good.replace(r#"exclude = ["sensors\\.debug"]"#, r#"exclude = ["["]"#),
                "topics.exclude[0]",
            ),
            (
                good.replace("refresh_interval_ms = 30000", "refresh_interval_ms = 0"),
                "topics.refresh_interval_ms",
            ),
            (
                good.replace("hub.example.com:4433", "hub.example.com"),
                "hub.address",
            ),
            (
                good.replace("hub.example.com:4433", "hub.example.com:0"),
                "hub.address",
            ),
            (
                good.replace("hub.example.com:4433", "::1:4433"),
                "hub.address",
            ),
            (
                good.replace("certs/ca.pem", "certs/nope.pem"),
                "hub.ca_cert",
            ),
            (
                good.replace("certs/plant-7.pem", "certs/nope.pem"),
                "hub.cert",
            ),
            (
                good.replace("certs/plant-7.key", "certs/nope.key"),
                "hub.key",
            ),
            (
                good.replace(
                    "reconnect_backoff_min_ms = 200",
                    "reconnect_backoff_min_ms = 0",
                ),
                "hub.reconnect_backoff_min_ms",
            ),
            (
                good.replace(
                    "reconnect_backoff_min_ms = 200",
                    "reconnect_backoff_min_ms = 200\nprobe_interval_ms = 0",
                ),
                "hub.probe_interval_ms",
            ),
            (
                good.replace("max_records = 5000", "max_records = 0"),
                "batching.max_records",
            ),
            (
                good.replace("max_bytes = 1048576", "max_bytes = 10"),
                "batching.max_bytes",
            ),
            (
                good.replace("compression = \"zstd\"", "compression = \"lz4\""),
                "batching.compression",
            ),
            (
                good.replace("zstd_level = 3", "zstd_level = 40"),
                "batching.zstd_level",
            ),
            (
                good.replace(
                    "max_inflight_bytes_total = 33554432",
                    "max_inflight_bytes_total = 1",
                ),
                "batching.max_inflight_bytes_total",
            ),
            (
                good.replace(
                    "max_inflight_bytes_per_partition = 4194304",
                    "max_inflight_bytes_per_partition = 0",
                ),
                "batching.max_inflight_bytes_per_partition",
            ),
            (
                good.replace("[batching]", "[batching]\nturbo = true"),
                "turbo",
            ),
            (
                good.replace("memory_limit_mb = 64", "memory_limit_mb = 0"),
                "plugins.memory_limit_mb",
            ),
            (
                good.replace("batch_deadline_ms = 200", "batch_deadline_ms = 0"),
                "plugins.batch_deadline_ms",
            ),
            (
                good.replace("max_outputs_per_input = 100", "max_outputs_per_input = 0"),
                "plugins.max_outputs_per_input",
            ),
            (
                good.replace(
                    "stopped_route_retry_ms = 10000",
                    "stopped_route_retry_ms = 0",
                ),
                "plugins.stopped_route_retry_ms",
            ),
            (
                good.replace(
                    "max_outputs_per_input = 100",
                    "max_outputs_per_input = 100\nmax_output_bytes_per_input = 0",
                ),
                "plugins.max_output_bytes_per_input",
            ),
            (
                good.replace(
                    "max_outputs_per_input = 100",
                    "max_outputs_per_input = 100\nmax_output_bytes_per_batch = 0",
                ),
                "plugins.max_output_bytes_per_batch",
            ),
            (
                good.replace(
                    "on_error = \"dead-letter\"",
                    "on_error = \"dead-letter\"\nmax_output_bytes_per_batch = 0",
                ),
                "routes[0].max_output_bytes_per_batch",
            ),
            (
                good.replace(r#"topics = ["sensors\\..*"]"#, r#"topics = ["(x"]"#),
                "routes[0].topics[0]",
            ),
            (
                good.replace(r#"topics = ["sensors\\..*"]"#, "topics = []"),
                "routes[0].topics",
            ),
            (
                good.replace("on_error = \"dead-letter\"", "on_error = \"ignore\""),
                "routes[0].on_error",
            ),
            (
                good.replace("dead_letter_topic = \"sensors-dlq\"", ""),
                "routes[0].dead_letter_topic",
            ),
            (
                good.replace(
                    "dead_letter_topic = \"sensors-dlq\"",
                    "dead_letter_topic = \"dlq.internal\"",
                ),
                "routes[0].dead_letter_topic",
            ),
            (
                good.replace(
                    "dead_letter_topic = \"sensors-dlq\"",
                    "dead_letter_topic = \"heartbeats\"",
                ),
                "routes[0].dead_letter_topic",
            ),
            (
                good.replace(
                    "dead_letter_topic = \"sensors-dlq\"",
                    "dead_letter_topic = \"connect-offsets\"",
                ),
                "routes[0].dead_letter_topic",
            ),
            (
                good.replace(
                    "dead_letter_topic = \"sensors-dlq\"",
                    "dead_letter_topic = \"bad topic\"",
                ),
                "routes[0].dead_letter_topic",
            ),
            (
                good.replace("on_missing = \"drop\"", "on_missing = { x = 1 }"),
                "routes[0].plugins[0].config.on_missing",
            ),
        ];
        for (text, field) in cases {
            assert_ne!(text, good, "case {field} did not change the config");
            let e = parse(&path, &text).expect_err(field).to_string();
            assert!(e.contains(field), "{field}: {e}");
            assert!(e.contains("agent.toml"), "{field}: {e}");
        }
    }

    #[test]
    fn hub_address_takes_one_address_or_a_list_tried_in_order() {
        let (_dir, path, good) = example();
        let one = "address = \"hub.example.com:4433\"";
        assert!(good.contains(one));
        // The example shows the list form in a comment; it must parse as shown.
        let shown = good
            .lines()
            .find_map(|l| l.strip_prefix("# address = ["))
            .expect("the example documents the list form");
        let v = parse(&path, &good.replace(one, &format!("address = [{shown}"))).unwrap();
        assert_eq!(v.hub.addresses.len(), 3);
        let list = good.replace(
            one,
            r#"address = ["hub-a.example.com:4433", "[2001:db8::7]:4433", "10.0.0.9:5000"]"#,
        );
        let v = parse(&path, &list).unwrap();
        let hubs: Vec<String> = v.hub.addresses.iter().map(|h| h.to_string()).collect();
        assert_eq!(
            hubs,
            [
                "hub-a.example.com:4433",
                "[2001:db8::7]:4433",
                "10.0.0.9:5000"
            ]
        );
        assert_eq!(
            v.hub.server_name_for(&v.hub.addresses[1]),
            "hub.example.com",
            "a configured server_name applies to every hub"
        );
        let unnamed = list.replace("server_name = \"hub.example.com\"", "");
        assert_ne!(unnamed, list);
        let v = parse(&path, &unnamed).unwrap();
        let names: Vec<&str> = v
            .hub
            .addresses
            .iter()
            .map(|h| v.hub.server_name_for(h))
            .collect();
        assert_eq!(
            names,
            ["hub-a.example.com", "2001:db8::7", "10.0.0.9"],
            "else the host of the address dialled"
        );
        let cases = [
            (r#"address = []"#, "hub.address: must list at least one"),
            (
                r#"address = ["hub-a.example.com:4433", "hub-b.example.com:4433", "hub-c.example.com"]"#,
                "hub.address[2]: \"hub-c.example.com\" is not `host:port`",
            ),
            (
                r#"address = ["a.example:1", "::1:4433"]"#,
                "hub.address[1]: \"::1:4433\" is not `host:port` (write IPv6",
            ),
            (
                r#"address = ["a.example:1", "b.example:0"]"#,
                "hub.address[1]: \"b.example:0\": port 0",
            ),
            (
                r#"address = ["a.example:1", "b.example:2", "a.example:1"]"#,
                "hub.address[2]: \"a.example:1\" is listed twice (also hub.address[0])",
            ),
            (
                "address = \"a.example\"",
                "hub.address: \"a.example\" is not",
            ),
        ];
        for (line, message) in cases {
            let text = good.replace(one, line);
            let e = parse(&path, &text).expect_err(line).to_string();
            assert!(e.contains(message), "{line}: {e}");
            assert!(e.contains("agent.toml"), "{line}: {e}");
        }
        for line in [
            "address = 4433",
            "address = [4433]",
            "address = { host = \"h\" }",
        ] {
            let e = parse(&path, &good.replace(one, line))
                .expect_err(line)
                .to_string();
            assert!(
                e.contains("address") && e.contains("\"host:port\" string or a list of them"),
                "{line}: {e}"
            );
        }
    }

    #[test]
    fn range_errors_say_the_value_and_the_range_it_missed() {
        let (_dir, path, good) = example();
        let cases = [
            (
                (
                    "reconnect_backoff_min_ms = 200",
                    "reconnect_backoff_min_ms = 40000",
                ),
                "hub.reconnect_backoff_min_ms: 40000 is not in 1..=reconnect_backoff_max_ms (30000)",
            ),
            (
                ("zstd_level = 3", "zstd_level = 0"),
                "batching.zstd_level: 0 is not in 1..=22",
            ),
            (
                ("max_bytes = 1048576", "max_bytes = 10"),
                "batching.max_bytes: 10 is below the minimum of 1024",
            ),
            (
                (
                    "max_inflight_bytes_total = 33554432",
                    "max_inflight_bytes_total = 1",
                ),
                "batching.max_inflight_bytes_total: 1 is below the minimum of \
                 max_inflight_bytes_per_partition (4194304)",
            ),
            (
                ("# max_bytes_per_sec = 250000", "max_bytes_per_sec = 0"),
                "hub.max_bytes_per_sec: 0 is below the minimum of 1024 (bytes, not bits, per \
                 second; leave it unset for no limit)",
            ),
        ];
        for ((from, to), message) in cases {
            let text = good.replace(from, to);
            assert_ne!(text, good, "{from}");
            let e = parse(&path, &text).expect_err(to).to_string();
            assert!(e.ends_with(&format!("agent.toml\": {message}")), "{e}");
        }
    }

    #[test]
    fn priorities_follow_the_first_matching_route_and_heartbeats_ride_above_all() {
        let dir = example_dir();
        let path = dir.path().join("agent.toml");
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "on_error = \"dead-letter\"",
            "on_error = \"dead-letter\"\npriority = -5",
        ) + "[[routes]]\ntopics = [\"alarms|sensors\\\\.fire\"]\npriority = 99\n";
        let v = parse(&path, &text).unwrap();
        assert_eq!(v.routes.priority_for("alarms"), Priority::Route(10));
        assert_eq!(
            v.routes.priority_for("sensors.fire"),
            Priority::Route(-5),
            "the first matching route decides, as for plugins"
        );
        assert_eq!(v.routes.route_for("sensors.fire"), Some(0));
        assert_eq!(
            v.routes.priority_for("orders"),
            Priority::Route(0),
            "no route"
        );
        assert_eq!(v.routes.priority_for("heartbeats"), Priority::Heartbeats);
        assert_eq!(v.routes.route_for("heartbeats"), None);
        assert!(Priority::Heartbeats > Priority::Route(i32::MAX));
        assert!(Priority::Route(1) > Priority::Route(0));
        assert_eq!(
            v.routes.priorities(),
            [
                Priority::Heartbeats,
                Priority::Route(99),
                Priority::Route(10),
                Priority::Route(0),
                Priority::Route(-5)
            ]
        );
        assert_eq!(
            Priority::Heartbeats.stream_priority(),
            i32::MAX,
            "QUIC sends the heartbeats stream first"
        );
        assert!(Priority::Route(i32::MAX).stream_priority() < i32::MAX);

        let typo = text.replace("priority = 10", "priority = \"high\"");
        let e = parse(&path, &typo)
            .expect_err("a string priority")
            .to_string();
        assert!(e.contains("priority") && e.contains("agent.toml"), "{e}");
    }

    #[test]
    fn the_rate_limit_is_optional_and_has_a_floor() {
        let (_dir, path, good) = example();
        let commented = "# max_bytes_per_sec = 250000";
        assert!(good.contains(commented), "the example documents it");
        let set = good.replace(commented, "max_bytes_per_sec = 250000");
        assert_eq!(
            parse(&path, &set).unwrap().hub.max_bytes_per_sec,
            Some(250_000)
        );
        for (bad, why) in [("0", "zero is not unlimited"), ("1000", "below 1 KiB/s")] {
            let text = good.replace(commented, &format!("max_bytes_per_sec = {bad}"));
            let e = parse(&path, &text).expect_err(why).to_string();
            assert!(
                e.contains("hub.max_bytes_per_sec") && e.contains("agent.toml"),
                "{why}: {e}"
            );
        }
        let negative = good.replace(commented, "max_bytes_per_sec = -1");
        let e = parse(&path, &negative).expect_err("negative").to_string();
        assert!(e.contains("max_bytes_per_sec"), "{e}");
    }

    #[test]
    fn metrics_endpoint_is_optional_and_validated() {
        let (_dir, path, good) = example();
        let v = parse(&path, &good).unwrap();
        assert_eq!(
            v.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap()),
            "the example serves metrics"
        );
        let listen = "listen = \"127.0.0.1:9464\"";
        let absent: String = good
            .lines()
            .filter(|l| !l.starts_with("[metrics]") && !l.starts_with(listen))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_ne!(absent, good);
        assert_eq!(parse(&path, &absent).unwrap().metrics_listen, None);
        let unset = good.replace(listen, "");
        assert_eq!(parse(&path, &unset).unwrap().metrics_listen, None);
        let v6 = good.replace("127.0.0.1:9464", "[::1]:9464");
        assert_eq!(
            parse(&path, &v6).unwrap().metrics_listen,
            Some("[::1]:9464".parse().unwrap())
        );
        for (bad, field) in [
            ("localhost:9464", "metrics.listen"),
            ("127.0.0.1", "metrics.listen"),
            ("127.0.0.1:0", "metrics.listen"),
            ("127.0.0.1:99999", "metrics.listen"),
        ] {
            let text = good.replace("127.0.0.1:9464", bad);
            let e = parse(&path, &text).expect_err(bad).to_string();
            assert!(e.contains(field) && e.contains("agent.toml"), "{bad}: {e}");
        }
        let unknown = good.replace(listen, "port = 9464");
        let e = parse(&path, &unknown)
            .expect_err("unknown field")
            .to_string();
        assert!(e.contains("port"), "{e}");
    }
}
