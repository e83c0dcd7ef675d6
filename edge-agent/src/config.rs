//! The agent's TOML configuration: parsing, defaults and validation in one place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

/// A configuration problem, always naming the file and the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path:?}: cannot read: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML, or not matching the schema (unknown field, wrong type, missing field).
    #[error("config {path:?}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// toml's message, which names the field and line.
        message: String,
    },
    /// A field has a value the agent cannot use.
    #[error("config {path:?}: {field}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Dotted path of the field, e.g. `topics.include[1]`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Top level of `agent.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Optional site name the agent announces; the hub trusts only the certificate and logs a
    /// warning when the two differ.
    #[serde(default)]
    pub site: Option<String>,
    /// The local (edge) Kafka cluster.
    pub kafka: KafkaConfig,
    /// Which local topics are replicated.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// Where the hub is and how to prove who we are.
    pub hub: HubLinkConfig,
    /// Batching and in-flight limits.
    #[serde(default)]
    pub batching: BatchingConfig,
    /// MM2 heartbeats written to the edge `heartbeats` topic (replicated like any topic).
    #[serde(default)]
    pub heartbeats: HeartbeatsConfig,
    /// Edge consumer groups whose committed offsets are reported for checkpoints.
    #[serde(default)]
    pub groups: GroupsConfig,
    /// Limits of the plugin sandbox, shared by every route.
    #[serde(default)]
    pub plugins: PluginLimitsConfig,
    /// Plugin chains by topic. A topic takes the first route whose pattern matches it; topics
    /// matching no route are replicated unchanged. The `heartbeats` topic never takes a route.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The Prometheus endpoint; absent (or `listen` unset) serves none.
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// The Prometheus metrics endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// TCP `ip:port` serving `/metrics`, e.g. `127.0.0.1:9464`; none when unset.
    #[serde(default)]
    pub listen: Option<String>,
}

/// MM2 heartbeats.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatsConfig {
    /// Write heartbeats (and always replicate the `heartbeats` topic).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Milliseconds between heartbeats.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub interval_ms: u64,
}

impl Default for HeartbeatsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: default_heartbeat_interval_ms(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_heartbeat_interval_ms() -> u64 {
    1_000
}

/// Consumer groups reported to the hub (defaults as MirrorMaker 2's `groups` and
/// `groups.exclude`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupsConfig {
    /// Regexes over group ids (whole-name match); a group is reported when one matches.
    #[serde(default = "default_include")]
    pub include: Vec<String>,
    /// Regexes over group ids (whole-name match); a matching group is not reported.
    #[serde(default = "default_groups_exclude")]
    pub exclude: Vec<String>,
    /// Milliseconds between reports; 0 turns group reporting off.
    #[serde(default = "default_groups_interval_ms")]
    pub interval_ms: u64,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self {
            include: default_include(),
            exclude: default_groups_exclude(),
            interval_ms: default_groups_interval_ms(),
        }
    }
}

fn default_groups_exclude() -> Vec<String> {
    vec![
        "console-consumer-.*".to_owned(),
        "connect-.*".to_owned(),
        "__.*".to_owned(),
    ]
}
fn default_groups_interval_ms() -> u64 {
    5_000
}

/// Sandbox limits for every plugin instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginLimitsConfig {
    /// Linear memory cap per plugin instance, in MiB.
    #[serde(default = "default_plugin_memory_mb")]
    pub memory_limit_mb: u64,
    /// CPU deadline of one batch call, in milliseconds.
    #[serde(default = "default_plugin_deadline_ms")]
    pub batch_deadline_ms: u64,
    /// Most records one input record may turn into.
    #[serde(default = "default_plugin_max_outputs")]
    pub max_outputs_per_input: u32,
    /// Most bytes of records one input record may turn into (topic, key, value and headers of
    /// each output, counted also when they alias the input); routes may override it.
    #[serde(default = "default_plugin_max_output_bytes_per_input")]
    pub max_output_bytes_per_input: u64,
    /// Most bytes of records one plugin call may produce by changing records (kept records do
    /// not count); routes may override it.
    #[serde(default = "default_plugin_max_output_bytes_per_batch")]
    pub max_output_bytes_per_batch: u64,
    /// Directory for compiled plugin code (speeds up restarts); none by default.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// How long a route stopped by a plugin failure waits before it tries again, in
    /// milliseconds (a changed plugin file is reloaded first).
    #[serde(default = "default_route_retry_ms")]
    pub stopped_route_retry_ms: u64,
}

impl Default for PluginLimitsConfig {
    fn default() -> Self {
        Self {
            memory_limit_mb: default_plugin_memory_mb(),
            batch_deadline_ms: default_plugin_deadline_ms(),
            max_outputs_per_input: default_plugin_max_outputs(),
            max_output_bytes_per_input: default_plugin_max_output_bytes_per_input(),
            max_output_bytes_per_batch: default_plugin_max_output_bytes_per_batch(),
            cache_dir: None,
            stopped_route_retry_ms: default_route_retry_ms(),
        }
    }
}

fn default_plugin_memory_mb() -> u64 {
    64
}
fn default_plugin_deadline_ms() -> u64 {
    200
}
fn default_plugin_max_outputs() -> u32 {
    100
}
fn default_plugin_max_output_bytes_per_input() -> u64 {
    er_plugin_host::DEFAULT_MAX_OUTPUT_BYTES_PER_INPUT
}
fn default_plugin_max_output_bytes_per_batch() -> u64 {
    er_plugin_host::DEFAULT_MAX_OUTPUT_BYTES_PER_BATCH
}
fn default_route_retry_ms() -> u64 {
    10_000
}

/// One route: which topics it takes and the plugins applied to them, in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name in logs and metrics; defaults to `route-<index>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Regexes over source topic names (whole-name match).
    pub topics: Vec<String>,
    /// What a plugin failure does: `stop` (default: the route's partitions wait, nothing is
    /// lost), `skip` (the failing record is left out) or `dead-letter` (it goes to
    /// `dead_letter_topic` with the error in headers).
    #[serde(default = "default_on_error")]
    pub on_error: String,
    /// Topic for `on_error = "dead-letter"`; the hub's replication policy applies to it.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// When the link is the bottleneck (`hub.max_bytes_per_sec` or the in-flight budget),
    /// batches of higher-priority routes are sent first; topics matching no route have 0, the
    /// heartbeats topic is above every route.
    #[serde(default)]
    pub priority: i32,
    /// The chain, applied in order; none replicates the route's topics unchanged (a route
    /// that only sets a priority).
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    /// This route's `plugins.max_output_bytes_per_input`; absent takes that default.
    #[serde(default)]
    pub max_output_bytes_per_input: Option<u64>,
    /// This route's `plugins.max_output_bytes_per_batch`; absent takes that default.
    #[serde(default)]
    pub max_output_bytes_per_batch: Option<u64>,
}

fn default_on_error() -> String {
    "stop".to_owned()
}

/// One plugin of a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The `.wasm` component, relative to the config file.
    pub path: PathBuf,
    /// Settings passed to the plugin's `init`, in file order. A list value passes the key once
    /// per element (for repeatable settings such as the filter's `condition`).
    #[serde(default)]
    pub config: toml::Table,
}

/// The edge Kafka cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated `host:port`.
    pub bootstrap_servers: String,
    /// `read_committed` (default: aborted transactions are not replicated) or `read_uncommitted`.
    #[serde(default = "default_isolation")]
    pub isolation_level: String,
    /// Extra librdkafka consumer properties.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_isolation() -> String {
    "read_committed".to_owned()
}

/// Topic selection. Internal topics (`*.internal`, `*-internal`, `__*`) are never replicated,
/// whatever these patterns say.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Regexes over topic names (whole-name match); a topic is replicated when one matches.
    #[serde(default = "default_include")]
    pub include: Vec<String>,
    /// Regexes over topic names (whole-name match); a matching topic is skipped.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// How often the agent looks for new topics and partitions, in milliseconds.
    #[serde(default = "default_refresh_interval_ms")]
    pub refresh_interval_ms: u64,
    /// Report each replicated topic's partition count and configs to the hub, which creates
    /// its remote topic at once (also when empty), grows it and keeps its configs in step
    /// (the hub's `topic_sync` decides what it applies). Topics whose route has plugins are
    /// not reported: their records may land anywhere.
    #[serde(default = "default_true")]
    pub sync_metadata: bool,
    /// Besides at every change discovery sees, the agent reports its topics again this
    /// often (milliseconds), so a central change to a synced config is undone (MM2's
    /// `sync.topic.configs.interval.seconds`).
    #[serde(default = "default_metadata_interval_ms")]
    pub metadata_interval_ms: u64,
    /// Report the literal ACL bindings of replicated topics to the hub, with their metadata
    /// (MM2's `sync.topic.acls.enabled`; the hub's `acl_sync` decides what it creates). Needs
    /// DESCRIBE on the edge cluster; an edge without an authorizer has none to report.
    #[serde(default = "default_true")]
    pub sync_acls: bool,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            include: default_include(),
            exclude: Vec::new(),
            refresh_interval_ms: default_refresh_interval_ms(),
            sync_metadata: true,
            metadata_interval_ms: default_metadata_interval_ms(),
            sync_acls: true,
        }
    }
}

fn default_metadata_interval_ms() -> u64 {
    600_000
}

fn default_include() -> Vec<String> {
    vec![".*".to_owned()]
}
fn default_refresh_interval_ms() -> u64 {
    30_000
}

/// `hub.address`: one `host:port` or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a \"host:port\" string or a list of them")]
pub enum HubAddressConfig {
    /// One address.
    One(String),
    /// Several, tried in order.
    Many(Vec<String>),
}

impl HubAddressConfig {
    /// Every address with the name of its field (`hub.address` or `hub.address[i]`).
    fn fields(&self) -> Vec<(String, &str)> {
        match self {
            HubAddressConfig::One(a) => vec![("hub.address".to_owned(), a.as_str())],
            HubAddressConfig::Many(list) => list
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("hub.address[{i}]"), a.as_str()))
                .collect(),
        }
    }
}

/// The link to the hub.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubLinkConfig {
    /// `host:port` of the hub's QUIC (UDP) listener, or a list of them tried in order; a name
    /// stands for every address it resolves to (IPv6 and IPv4).
    pub address: HubAddressConfig,
    /// Name the hub's certificate must carry; defaults to the host part of the address being
    /// dialled.
    #[serde(default)]
    pub server_name: Option<String>,
    /// CA certificate the hub's certificate must chain to (PEM).
    pub ca_cert: PathBuf,
    /// This site's client certificate (PEM); its CN is the site alias.
    pub cert: PathBuf,
    /// This site's private key (PEM).
    pub key: PathBuf,
    /// Give up a connection attempt after this many milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// First reconnect delay in milliseconds; doubles per failure, with jitter.
    #[serde(default = "default_backoff_min_ms")]
    pub reconnect_backoff_min_ms: u64,
    /// Cap of the reconnect delay in milliseconds.
    #[serde(default = "default_backoff_max_ms")]
    pub reconnect_backoff_max_ms: u64,
    /// Most compressed batch bytes sent to the hub per second, averaged by a token bucket that
    /// holds one batch (`batching.max_bytes`) of burst; unlimited when unset.
    #[serde(default)]
    pub max_bytes_per_sec: Option<u64>,
    /// While the hub does not answer at all (link down, hub host unreachable), a fresh
    /// connection attempt (one ~1.2 KB UDP packet) goes out about this often, so a link that
    /// comes back is used within about this long. Failures after the hub answered back off
    /// exponentially instead (`reconnect_backoff_*`): probing a dead link costs the hub nothing.
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
}

fn default_probe_interval_ms() -> u64 {
    500
}

fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_backoff_min_ms() -> u64 {
    200
}
fn default_backoff_max_ms() -> u64 {
    30_000
}

/// How records are grouped and how much may wait for acks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    /// A batch is sent when it holds this many records.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// A batch is sent when its encoded records reach this many bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// A batch is sent at the latest this many milliseconds after its first record.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// `zstd` (default) or `none`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// zstd level (1 fastest .. 19 smallest).
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// Compressed bytes per source partition sent but not yet acknowledged by the hub.
    #[serde(default = "default_inflight_partition")]
    pub max_inflight_bytes_per_partition: u64,
    /// Compressed bytes over the whole link sent but not yet acknowledged.
    #[serde(default = "default_inflight_total")]
    pub max_inflight_bytes_total: u64,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            max_records: default_max_records(),
            max_bytes: default_max_bytes(),
            linger_ms: default_linger_ms(),
            compression: default_compression(),
            zstd_level: default_zstd_level(),
            max_inflight_bytes_per_partition: default_inflight_partition(),
            max_inflight_bytes_total: default_inflight_total(),
        }
    }
}

fn default_max_records() -> usize {
    5_000
}
fn default_max_bytes() -> usize {
    1024 * 1024
}
fn default_linger_ms() -> u64 {
    20
}
fn default_compression() -> String {
    "zstd".to_owned()
}
fn default_zstd_level() -> i32 {
    3
}
fn default_inflight_partition() -> u64 {
    4 * 1024 * 1024
}
fn default_inflight_total() -> u64 {
    32 * 1024 * 1024
}

/// The order in which ready batches take the link when it is the bottleneck: higher first.
/// The heartbeats topic rides above every route, so a saturated link never delays the
/// heartbeats that replication lag and failover are measured by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// A route's `priority` (0 for topics matching no route).
    Route(i32),
    /// The heartbeats topic.
    Heartbeats,
}

impl Priority {
    /// The QUIC stream priority of a partition's stream (quinn sends higher first).
    pub fn stream_priority(self) -> i32 {
        match self {
            Priority::Route(p) => p.min(i32::MAX - 1),
            Priority::Heartbeats => i32::MAX,
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Priority::Route(p) => write!(f, "{p}"),
            Priority::Heartbeats => f.write_str("heartbeats"),
        }
    }
}

/// A validated configuration with compiled regexes and parsed durations.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The raw configuration (certificate paths made absolute).
    pub raw: AgentConfig,
    /// Whole-name include matchers.
    pub include: Vec<Regex>,
    /// Whole-name exclude matchers.
    pub exclude: Vec<Regex>,
    /// The hub addresses, in the order they are tried (at least one, no duplicates).
    pub hub_addresses: Vec<crate::hubs::HubAddress>,
    /// `hub.server_name`: the name checked against every hub's certificate, if configured
    /// (see [`Validated::server_name_for`]).
    pub server_name: Option<String>,
    /// Compression codec of batches.
    pub codec: er_protocol::Codec,
    /// Routes with compiled matchers and plugin settings.
    pub routes: Vec<Route>,
    /// Whole-name matchers of reported consumer groups.
    pub groups_include: Vec<Regex>,
    /// Whole-name matchers of consumer groups never reported.
    pub groups_exclude: Vec<Regex>,
    /// Address of the Prometheus endpoint, if any.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name in logs.
    pub name: String,
    /// Whole-name topic matchers.
    pub topics: Vec<Regex>,
    /// Sending order of its topics' batches when the link is the bottleneck (higher first).
    pub priority: i32,
    /// The chain's plugins with their settings, paths made absolute.
    pub plugins: Vec<er_plugin_host::PluginSpec>,
    /// What a plugin failure does.
    pub policy: er_plugin_host::ErrorPolicy,
    /// What one plugin of the chain may produce.
    pub output_limits: er_plugin_host::OutputLimits,
}

impl Validated {
    /// Whether a local topic is replicated. The heartbeats topic always is while heartbeats
    /// are on (as in MirrorMaker 2).
    pub fn wants_topic(&self, topic: &str) -> bool {
        if topic == er_protocol::HEARTBEATS_TOPIC && self.raw.heartbeats.enabled {
            return true;
        }
        !er_protocol::is_internal_topic(topic)
            && self.include.iter().any(|r| r.is_match(topic))
            && !self.exclude.iter().any(|r| r.is_match(topic))
    }

    /// Whether an edge consumer group's offsets are reported. The agent's own group never is.
    pub fn wants_group(&self, group: &str) -> bool {
        group != crate::source::AGENT_GROUP_ID
            && self.groups_include.iter().any(|r| r.is_match(group))
            && !self.groups_exclude.iter().any(|r| r.is_match(group))
    }

    /// Interval of heartbeats.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.raw.heartbeats.interval_ms)
    }

    /// Interval of group offset reports, if on.
    pub fn groups_interval(&self) -> Option<Duration> {
        (self.raw.groups.interval_ms > 0)
            .then(|| Duration::from_millis(self.raw.groups.interval_ms))
    }

    /// Interval of topic discovery.
    pub fn refresh_interval(&self) -> Duration {
        Duration::from_millis(self.raw.topics.refresh_interval_ms)
    }

    /// How often the topics are reported to the hub even when nothing changed.
    pub fn metadata_interval(&self) -> Duration {
        Duration::from_millis(self.raw.topics.metadata_interval_ms)
    }

    /// Whether `topic`'s partition count and configs are reported to the hub: reporting is
    /// on and no plugin chain takes the topic (its records may go to other topics).
    pub fn reports_metadata(&self, topic: &str) -> bool {
        self.raw.topics.sync_metadata && self.route_for(topic).is_none()
    }

    /// Whether `topic`'s ACL bindings are reported to the hub: reporting is on and no plugin
    /// chain takes the topic (its records may land in topics of other names).
    pub fn reports_acls(&self, topic: &str) -> bool {
        self.raw.topics.sync_acls && self.route_for(topic).is_none()
    }

    /// Linger of batches.
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.raw.batching.linger_ms)
    }

    /// Index of the route whose plugin chain a source topic takes, if any: the first route
    /// matching it, unless that route has no plugins. The heartbeats topic never takes one:
    /// internal records never reach a plugin.
    pub fn route_for(&self, topic: &str) -> Option<usize> {
        self.matching_route(topic)
            .filter(|&i| !self.routes[i].plugins.is_empty())
    }

    fn matching_route(&self, topic: &str) -> Option<usize> {
        if topic == er_protocol::HEARTBEATS_TOPIC {
            return None;
        }
        self.routes
            .iter()
            .position(|r| r.topics.iter().any(|re| re.is_match(topic)))
    }

    /// The sending priority of a source topic's batches: the heartbeats topic's is above every
    /// route's, a topic matching no route has 0.
    pub fn priority_for(&self, topic: &str) -> Priority {
        if topic == er_protocol::HEARTBEATS_TOPIC {
            return Priority::Heartbeats;
        }
        Priority::Route(
            self.matching_route(topic)
                .map_or(0, |i| self.routes[i].priority),
        )
    }

    /// Every priority a replicated topic can have, highest first.
    pub fn priorities(&self) -> Vec<Priority> {
        let mut all: Vec<Priority> = self
            .routes
            .iter()
            .map(|r| Priority::Route(r.priority))
            .chain([Priority::Route(0), Priority::Heartbeats])
            .collect();
        all.sort_unstable_by(|a, b| b.cmp(a));
        all.dedup();
        all
    }

    /// The name a hub's certificate must carry when dialling `hub`: `hub.server_name` if set,
    /// else the host part of the address.
    pub fn server_name_for<'a>(&'a self, hub: &'a crate::hubs::HubAddress) -> &'a str {
        self.server_name.as_deref().unwrap_or(&hub.host)
    }

    /// The cap of compressed batch bytes sent per second, if any.
    pub fn max_bytes_per_sec(&self) -> Option<u64> {
        self.raw.hub.max_bytes_per_sec
    }

    /// Sandbox limits for the plugin host.
    pub fn host_config(&self) -> er_plugin_host::HostConfig {
        let p = &self.raw.plugins;
        let plugins: usize = self.routes.iter().map(|r| r.plugins.len()).sum();
        er_plugin_host::HostConfig {
            memory_limit_bytes: (p.memory_limit_mb as usize) << 20,
            batch_deadline: Duration::from_millis(p.batch_deadline_ms),
            max_outputs_per_input: p.max_outputs_per_input,
            max_output_bytes_per_input: p.max_output_bytes_per_input,
            max_output_bytes_per_batch: p.max_output_bytes_per_batch,
            cache_dir: p.cache_dir.clone(),
            // Every plugin holds a slot, a reload briefly two; a new session's reader reuses them.
            max_instances: (plugins as u32 * 2 + 2).max(4),
        }
    }
}

/// Lowest accepted `hub.max_bytes_per_sec`: below it a typical batch would take minutes, most
/// likely a unit mistake.
const MIN_BYTES_PER_SEC: u64 = 1024;

/// Reads, parses and validates an agent config file.
pub fn load(path: &Path) -> Result<Validated, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Splits `host:port` (IPv6 literals in brackets) into host and port.
pub fn split_host_port(address: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| format!("{address:?} is not `[ipv6]:port`"))?;
        (h, p)
    } else {
        address
            .rsplit_once(':')
            .ok_or_else(|| format!("{address:?} is not `host:port`"))?
    };
    if host.is_empty() || host.contains(':') && !address.starts_with('[') {
        return Err(format!(
            "{address:?} is not `host:port` (write IPv6 addresses as `[addr]:port`)"
        ));
    }
    if host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(format!(
            "{address:?}: {host:?} is not a host name or IP address"
        ));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{address:?}: port {port:?} is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(format!("{address:?}: port 0 cannot be connected to"));
    }
    Ok((host.to_owned(), port))
}

/// Flattens a plugin's settings table into `init`'s key/value list, in file order. Strings,
/// numbers and booleans pass as text; a list passes its key once per element. On error, returns
/// the key and the problem.
fn plugin_settings(table: &toml::Table) -> Result<Vec<(String, String)>, (String, String)> {
    fn scalar(key: &str, v: &toml::Value) -> Result<String, (String, String)> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            other => Err((
                key.to_owned(),
                format!(
                    "a {} is not a plugin setting (use a string, number, boolean or a list of them)",
                    other.type_str()
                ),
            )),
        }
    }
    let mut out = Vec::with_capacity(table.len());
    for (k, v) in table {
        match v {
            toml::Value::Array(items) => {
                for item in items {
                    out.push((k.clone(), scalar(k, item)?));
                }
            }
            v => out.push((k.clone(), scalar(k, v)?)),
        }
    }
    Ok(out)
}

/// Parses and validates config text; `path` is used for messages and to resolve relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Validated, ConfigError> {
    let mut raw: AgentConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let invalid = |field: &str, message: String| ConfigError::Invalid {
        path: path.to_owned(),
        field: field.to_owned(),
        message,
    };
    let base = path.parent().unwrap_or(Path::new("."));
    for (field, file) in [
        ("hub.ca_cert", &mut raw.hub.ca_cert),
        ("hub.cert", &mut raw.hub.cert),
        ("hub.key", &mut raw.hub.key),
    ] {
        if file.is_relative() {
            *file = base.join(&*file);
        }
        if !file.is_file() {
            return Err(invalid(field, format!("no such file {file:?}")));
        }
    }
    if raw.kafka.bootstrap_servers.trim().is_empty() {
        return Err(invalid(
            "kafka.bootstrap_servers",
            "must not be empty".into(),
        ));
    }
    if !matches!(
        raw.kafka.isolation_level.as_str(),
        "read_committed" | "read_uncommitted"
    ) {
        return Err(invalid(
            "kafka.isolation_level",
            format!(
                "{:?} is not one of \"read_committed\", \"read_uncommitted\"",
                raw.kafka.isolation_level
            ),
        ));
    }
    let compile = |field: &str, pats: &[String]| -> Result<Vec<Regex>, ConfigError> {
        pats.iter()
            .enumerate()
            .map(|(i, p)| {
                Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                    invalid(
                        &format!("{field}[{i}]"),
                        format!("invalid regex {p:?}: {e}"),
                    )
                })
            })
            .collect()
    };
    let include = compile("topics.include", &raw.topics.include)?;
    let exclude = compile("topics.exclude", &raw.topics.exclude)?;
    let check = Ranges { path };
    check.at_least(
        "topics.refresh_interval_ms",
        raw.topics.refresh_interval_ms,
        Fixed(1),
    )?;
    check.at_least(
        "topics.metadata_interval_ms",
        raw.topics.metadata_interval_ms,
        Fixed(1000),
    )?;
    let address_fields = raw.hub.address.fields();
    if address_fields.is_empty() {
        return Err(invalid(
            "hub.address",
            "must list at least one `host:port`".into(),
        ));
    }
    let mut hub_addresses: Vec<crate::hubs::HubAddress> = Vec::with_capacity(address_fields.len());
    for (field, text) in address_fields {
        let hub = crate::hubs::HubAddress::parse(text).map_err(|m| invalid(&field, m))?;
        if let Some(j) = hub_addresses.iter().position(|h| *h == hub) {
            return Err(invalid(
                &field,
                format!("{text:?} is listed twice (also hub.address[{j}])"),
            ));
        }
        hub_addresses.push(hub);
    }
    let server_name = raw.hub.server_name.clone();
    if server_name.as_deref().is_some_and(str::is_empty) {
        return Err(invalid("hub.server_name", "must not be empty".into()));
    }
    let h = &raw.hub;
    check.within(
        "hub.reconnect_backoff_min_ms",
        h.reconnect_backoff_min_ms,
        Fixed(1),
        Field("reconnect_backoff_max_ms", h.reconnect_backoff_max_ms),
    )?;
    check.within(
        "hub.probe_interval_ms",
        h.probe_interval_ms,
        Fixed(1),
        Field("connect_timeout_ms", h.connect_timeout_ms),
    )?;
    if let Some(rate) = h.max_bytes_per_sec {
        check
            .at_least("hub.max_bytes_per_sec", rate, Fixed(MIN_BYTES_PER_SEC))
            .map_err(|e| e.explained("bytes, not bits, per second; leave it unset for no limit"))?;
    }
    let b = &raw.batching;
    check.at_least("batching.max_records", b.max_records, Fixed(1))?;
    check.at_least("batching.max_bytes", b.max_bytes, Fixed(1024))?;
    let codec = match b.compression.as_str() {
        "zstd" => er_protocol::Codec::Zstd,
        "none" => er_protocol::Codec::None,
        other => {
            return Err(invalid(
                "batching.compression",
                format!("{other:?} is not one of \"zstd\", \"none\""),
            ));
        }
    };
    check.within("batching.zstd_level", b.zstd_level, Fixed(1), Fixed(22))?;
    check.at_least(
        "batching.max_inflight_bytes_per_partition",
        b.max_inflight_bytes_per_partition,
        Fixed(1),
    )?;
    check.at_least(
        "batching.max_inflight_bytes_total",
        b.max_inflight_bytes_total,
        Field(
            "max_inflight_bytes_per_partition",
            b.max_inflight_bytes_per_partition,
        ),
    )?;
    check.at_least(
        "heartbeats.interval_ms",
        raw.heartbeats.interval_ms,
        Fixed(1),
    )?;
    let groups_include = compile("groups.include", &raw.groups.include)?;
    let groups_exclude = compile("groups.exclude", &raw.groups.exclude)?;
    let p = &raw.plugins;
    check.within(
        "plugins.memory_limit_mb",
        p.memory_limit_mb,
        Fixed(1),
        Fixed(4096),
    )?;
    check.at_least("plugins.batch_deadline_ms", p.batch_deadline_ms, Fixed(1))?;
    check.at_least(
        "plugins.max_outputs_per_input",
        p.max_outputs_per_input,
        Fixed(1),
    )?;
    check.at_least(
        "plugins.max_output_bytes_per_input",
        p.max_output_bytes_per_input,
        Fixed(1),
    )?;
    check.at_least(
        "plugins.max_output_bytes_per_batch",
        p.max_output_bytes_per_batch,
        Fixed(1),
    )?;
    check.at_least(
        "plugins.stopped_route_retry_ms",
        p.stopped_route_retry_ms,
        Fixed(1),
    )?;
    if let Some(dir) = &mut raw.plugins.cache_dir
        && dir.is_relative()
    {
        *dir = base.join(&*dir);
    }
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.iter_mut().enumerate() {
        let field = |f: &str| format!("routes[{i}].{f}");
        let name = r.name.clone().unwrap_or_else(|| format!("route-{i}"));
        if r.topics.is_empty() {
            return Err(invalid(
                &field("topics"),
                "must list at least one regex".into(),
            ));
        }
        let topics = compile(&field("topics"), &r.topics)?;
        let policy = match (r.on_error.as_str(), &r.dead_letter_topic) {
            ("stop", None) => er_plugin_host::ErrorPolicy::Stop,
            ("skip", None) => er_plugin_host::ErrorPolicy::Skip,
            ("dead-letter", Some(t)) => {
                er_protocol::validate_topic_name(t)
                    .map_err(|e| invalid(&field("dead_letter_topic"), e.to_string()))?;
                if er_protocol::is_internal_topic(t) {
                    return Err(invalid(
                        &field("dead_letter_topic"),
                        format!("{t:?} is an internal topic name and would never be replicated"),
                    ));
                }
                if er_protocol::policy::PROTECTED_TOPICS.contains(&t.as_str()) {
                    return Err(invalid(
                        &field("dead_letter_topic"),
                        format!(
                            "{t:?} belongs to MM2 heartbeats, Kafka Connect or Schema Registry; failed records must not land there"
                        ),
                    ));
                }
                er_plugin_host::ErrorPolicy::DeadLetter { topic: t.clone() }
            }
            ("dead-letter", None) => {
                return Err(invalid(
                    &field("dead_letter_topic"),
                    "is required with on_error = \"dead-letter\"".into(),
                ));
            }
            ("stop" | "skip", Some(_)) => {
                return Err(invalid(
                    &field("dead_letter_topic"),
                    "is only used with on_error = \"dead-letter\"".into(),
                ));
            }
            (other, _) => {
                return Err(invalid(
                    &field("on_error"),
                    format!("{other:?} is not one of \"stop\", \"skip\", \"dead-letter\""),
                ));
            }
        };
        let mut plugins = Vec::with_capacity(r.plugins.len());
        for (j, pc) in r.plugins.iter_mut().enumerate() {
            if pc.path.is_relative() {
                pc.path = base.join(&pc.path);
            }
            let config = plugin_settings(&pc.config)
                .map_err(|(key, m)| invalid(&field(&format!("plugins[{j}].config.{key}")), m))?;
            plugins.push(er_plugin_host::PluginSpec {
                path: pc.path.clone(),
                config,
            });
        }
        let mut output_limits = er_plugin_host::OutputLimits {
            max_outputs_per_input: raw.plugins.max_outputs_per_input,
            max_bytes_per_input: raw.plugins.max_output_bytes_per_input,
            max_bytes_per_batch: raw.plugins.max_output_bytes_per_batch,
        };
        if let Some(n) = r.max_output_bytes_per_input {
            check.at_least(&field("max_output_bytes_per_input"), n, Fixed(1))?;
            output_limits.max_bytes_per_input = n;
        }
        if let Some(n) = r.max_output_bytes_per_batch {
            check.at_least(&field("max_output_bytes_per_batch"), n, Fixed(1))?;
            output_limits.max_bytes_per_batch = n;
        }
        routes.push(Route {
            name,
            topics,
            priority: r.priority,
            plugins,
            policy,
            output_limits,
        });
    }
    let metrics_listen = raw
        .metrics
        .listen
        .as_deref()
        .map(parse_metrics_listen)
        .transpose()
        .map_err(|m| invalid("metrics.listen", m))?;
    Ok(Validated {
        raw,
        include,
        exclude,
        hub_addresses,
        server_name,
        codec,
        routes,
        groups_include,
        groups_exclude,
        metrics_listen,
    })
}

/// An end of a numeric field's allowed range: a fixed number, or the value of another field of
/// the same table (named in the message, so the user knows which of the two to change).
#[derive(Debug, Clone, Copy)]
enum End<T> {
    Fixed(T),
    Field(&'static str, T),
}
use End::{Field, Fixed};

impl<T: Copy> End<T> {
    fn value(self) -> T {
        match self {
            Fixed(v) | Field(_, v) => v,
        }
    }
}

impl<T: std::fmt::Display> std::fmt::Display for End<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fixed(v) => write!(f, "{v}"),
            Field(name, v) => write!(f, "{name} ({v})"),
        }
    }
}

/// The range checks of numeric fields: each error names the file and the field, and says the
/// value and the range it missed.
#[derive(Debug, Clone, Copy)]
struct Ranges<'a> {
    path: &'a Path,
}

impl Ranges<'_> {
    /// `field` holds `value`, which must be at least `min`.
    fn at_least<T>(self, field: &str, value: T, min: End<T>) -> Result<(), ConfigError>
    where
        T: PartialOrd + Copy + std::fmt::Display,
    {
        if value >= min.value() {
            return Ok(());
        }
        Err(self.invalid(field, format!("{value} is below the minimum of {min}")))
    }

    /// `field` holds `value`, which must lie in `min..=max`.
    fn within<T>(self, field: &str, value: T, min: End<T>, max: End<T>) -> Result<(), ConfigError>
    where
        T: PartialOrd + Copy + std::fmt::Display,
    {
        if value >= min.value() && value <= max.value() {
            return Ok(());
        }
        Err(self.invalid(field, format!("{value} is not in {min}..={max}")))
    }

    fn invalid(self, field: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            field: field.to_owned(),
            message,
        }
    }
}

impl ConfigError {
    /// The same error with `why` added to its message in parentheses.
    fn explained(self, why: &str) -> ConfigError {
        match self {
            ConfigError::Invalid {
                path,
                field,
                message,
            } => ConfigError::Invalid {
                path,
                field,
                message: format!("{message} ({why})"),
            },
            other => other,
        }
    }
}

/// Parses the metrics endpoint address: an `ip:port` socket address with a port other than 0.
pub fn parse_metrics_listen(listen: &str) -> Result<std::net::SocketAddr, String> {
    let addr: std::net::SocketAddr = listen.parse().map_err(|e| {
        format!("{listen:?} is not an `ip:port` socket address (e.g. \"127.0.0.1:9464\"): {e}")
    })?;
    if addr.port() == 0 {
        return Err(format!(
            "{listen:?}: port 0 would pick a random port that no scraper knows"
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            v.hub_addresses,
            [crate::hubs::HubAddress {
                host: "hub.example.com".into(),
                port: 4433
            }]
        );
        assert_eq!(v.server_name.as_deref(), Some("hub.example.com"));
        assert_eq!(v.route_for("sensors.temp"), Some(0));
        assert_eq!(v.route_for("alarms"), None, "its route has no plugins");
        assert_eq!(v.max_bytes_per_sec(), None, "unlimited unless set");
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
        let host = v.host_config();
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
        assert_eq!(v.route_for("anything"), Some(0));
        assert_eq!(
            v.route_for("heartbeats"),
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
        assert_eq!(v.hub_addresses.len(), 3);
        let list = good.replace(
            one,
            r#"address = ["hub-a.example.com:4433", "[2001:db8::7]:4433", "10.0.0.9:5000"]"#,
        );
        let v = parse(&path, &list).unwrap();
        let hubs: Vec<String> = v.hub_addresses.iter().map(|h| h.to_string()).collect();
        assert_eq!(
            hubs,
            [
                "hub-a.example.com:4433",
                "[2001:db8::7]:4433",
                "10.0.0.9:5000"
            ]
        );
        assert_eq!(
            v.server_name_for(&v.hub_addresses[1]),
            "hub.example.com",
            "a configured server_name applies to every hub"
        );
        let unnamed = list.replace("server_name = \"hub.example.com\"", "");
        assert_ne!(unnamed, list);
        let v = parse(&path, &unnamed).unwrap();
        let names: Vec<&str> = v
            .hub_addresses
            .iter()
            .map(|h| v.server_name_for(h))
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
        assert_eq!(v.priority_for("alarms"), Priority::Route(10));
        assert_eq!(
            v.priority_for("sensors.fire"),
            Priority::Route(-5),
            "the first matching route decides, as for plugins"
        );
        assert_eq!(v.route_for("sensors.fire"), Some(0));
        assert_eq!(v.priority_for("orders"), Priority::Route(0), "no route");
        assert_eq!(v.priority_for("heartbeats"), Priority::Heartbeats);
        assert_eq!(v.route_for("heartbeats"), None);
        assert!(Priority::Heartbeats > Priority::Route(i32::MAX));
        assert!(Priority::Route(1) > Priority::Route(0));
        assert_eq!(
            v.priorities(),
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
            parse(&path, &set).unwrap().max_bytes_per_sec(),
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

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("[::1]:4433").unwrap(), ("::1".into(), 4433));
        assert_eq!(
            split_host_port("10.0.0.1:1").unwrap(),
            ("10.0.0.1".into(), 1)
        );
        for bad in [
            "",
            ":4433",
            "host",
            "host:",
            "host:99999",
            "a b:1",
            "::1:4433",
        ] {
            assert!(split_host_port(bad).is_err(), "{bad}");
        }
    }
}
