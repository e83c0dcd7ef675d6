//! The serde schema of `agent.toml`: field names, types and defaults as the file spells them.
//! Nothing outside the config module reads these structs: [`super::validate`] turns them into
//! [`super::Settings`]. README's `agent.toml` table lists exactly these fields (a tidy test
//! checks it).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

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
    /// Central topics the hub sends down to this site.
    #[serde(default)]
    pub downlink: DownlinkConfig,
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

/// `[downlink]`: central topics the hub mirrors down into the edge cluster (`[[downlinks]]` in
/// the hub's config chooses which).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownlinkConfig {
    /// Take what the hub offers; `false` answers every offer with nothing.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Edge consumer group whose committed offsets are the downlink positions (written in the
    /// same transaction as the records).
    #[serde(default = "default_downlink_group")]
    pub group: String,
    /// Downlink bytes received and not yet committed at the edge before the agent ends the
    /// session (the hub keeps far fewer in flight: its `downlink.window_bytes`).
    #[serde(default = "default_downlink_pending_bytes")]
    pub max_pending_bytes: u64,
}

impl Default for DownlinkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            group: default_downlink_group(),
            max_pending_bytes: default_downlink_pending_bytes(),
        }
    }
}

fn default_downlink_group() -> String {
    "edge-replicator-downlink".into()
}
fn default_downlink_pending_bytes() -> u64 {
    64 * 1024 * 1024
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
    /// Ed25519 public keys (64 hex digits) whose signature a hub-distributed plugin must carry.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Where hub-distributed plugins are kept (relative to the config file).
    #[serde(default = "default_hub_plugin_dir")]
    pub hub_dir: PathBuf,
}

fn default_hub_plugin_dir() -> PathBuf {
    PathBuf::from("hub-plugins")
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
            trusted_keys: Vec::new(),
            hub_dir: default_hub_plugin_dir(),
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
    #[serde(default)]
    pub on_error: OnError,
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

/// `routes[].on_error`: what a plugin failure does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// The route's partitions wait; nothing is lost.
    #[default]
    Stop,
    /// The failing record is left out.
    Skip,
    /// The failing record goes to `dead_letter_topic`.
    DeadLetter,
}

/// One plugin of a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The `.wasm` component, relative to the config file (or `hub`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A plugin the hub distributes under this name (`hub plugins push`), instead of `path`.
    #[serde(default)]
    pub hub: Option<String>,
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
    #[serde(default)]
    pub isolation_level: IsolationLevel,
    /// Extra librdkafka consumer properties.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// `kafka.isolation_level`: which records of transactional producers are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IsolationLevel {
    /// Only committed records: aborted transactions are not replicated.
    #[default]
    ReadCommitted,
    /// Every record, aborted transactions included.
    ReadUncommitted,
}

impl IsolationLevel {
    /// librdkafka's `isolation.level` value.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            IsolationLevel::ReadCommitted => "read_committed",
            IsolationLevel::ReadUncommitted => "read_uncommitted",
        }
    }
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
    pub(super) fn fields(&self) -> Vec<(String, &str)> {
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
    #[serde(default)]
    pub compression: Compression,
    /// zstd level (1 fastest .. 19 smallest).
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// Compressed bytes per source partition sent but not yet acknowledged by the hub.
    #[serde(default = "default_inflight_partition")]
    pub max_inflight_bytes_per_partition: u64,
    /// Compressed bytes over the whole link sent but not yet acknowledged.
    #[serde(default = "default_inflight_total")]
    pub max_inflight_bytes_total: u64,
    /// Bytes of edge records read ahead of the batches, all lanes together (librdkafka's
    /// `queued.max.messages.kbytes` and `fetch.max.bytes`); absent: half of
    /// `max_inflight_bytes_total`, between 1 and 16 MiB. More reads faster on a busy edge, less
    /// keeps the agent small.
    #[serde(default)]
    pub prefetch_bytes: Option<u64>,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            max_records: default_max_records(),
            max_bytes: default_max_bytes(),
            linger_ms: default_linger_ms(),
            compression: Compression::default(),
            zstd_level: default_zstd_level(),
            max_inflight_bytes_per_partition: default_inflight_partition(),
            max_inflight_bytes_total: default_inflight_total(),
            prefetch_bytes: None,
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
fn default_zstd_level() -> i32 {
    3
}
fn default_inflight_partition() -> u64 {
    4 * 1024 * 1024
}
fn default_inflight_total() -> u64 {
    32 * 1024 * 1024
}

/// `batching.compression`: the codec of batches on the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd at `batching.zstd_level`.
    #[default]
    Zstd,
    /// Batches go as encoded.
    None,
}
