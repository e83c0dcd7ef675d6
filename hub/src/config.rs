//! The hub's TOML configuration: parsing, defaults and validation in one place.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use er_protocol::ReplicationPolicy;
use regex::Regex;
use serde::Deserialize;

pub use er_service::config::{ConfigError, parse_metrics_listen, whole_match};

/// Top level of `hub.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// This hub's name, used in logs and told to agents in the welcome.
    pub hub_id: String,
    /// Name shared by all hubs that serve the same fleet: the Kafka consumer group through which
    /// they divide the site shards, and the name of the hub's internal topics on each central
    /// cluster (`er-positions.<group_id>.internal`, ...). Changing it starts the fleet afresh
    /// (positions are kept per group).
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// UDP address the QUIC server listens on, e.g. `0.0.0.0:4433`.
    pub listen: String,
    /// Certificates: the hub's own, and the CA that site (client) certificates must chain to.
    pub tls: TlsConfig,
    /// How remote topic names are formed.
    #[serde(default)]
    pub replication: ReplicationConfig,
    /// Central clusters by alias; the first is the default destination.
    pub clusters: Vec<ClusterConfig>,
    /// Which cluster a source topic goes to; first match wins, unmatched topics go to the first
    /// cluster.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Limits on what a site may send.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// MM2 checkpoints, offset syncs and group offset sync.
    #[serde(default)]
    pub checkpoints: CheckpointsConfig,
    /// Remote topics shaped after the edge's (as MM2's `sync.topic.configs.*`).
    #[serde(default)]
    pub topic_sync: TopicSyncConfig,
    /// Edge topics' READ ACLs mirrored onto remote topics (as MM2's `sync.topic.acls.*`).
    #[serde(default)]
    pub acl_sync: AclSyncConfig,
    /// The Prometheus endpoint; absent (or `listen` unset) serves none.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Shards, shared writers and how the hubs of `group_id` divide the sites.
    #[serde(default)]
    pub fleet: FleetConfig,
    /// Central topics mirrored down into sites' edge clusters; first match per topic wins.
    #[serde(default)]
    pub downlinks: Vec<DownlinkRouteConfig>,
    /// How the hub reads and sends what `[[downlinks]]` selects.
    #[serde(default)]
    pub downlink: DownlinkConfig,
    /// How canaries of hub-distributed plugins are judged (`hub plugins push --canary`), and
    /// the targets pushes precompile for.
    #[serde(default)]
    pub plugins: PluginsConfig,
}

/// `[plugins]`: when a canary of a hub-distributed plugin is judged, and how far it may be
/// worse than the stable version before it is rolled back.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Records the canary sites must have run through the new version before it is judged.
    #[serde(default = "default_min_records")]
    pub min_records: u64,
    /// How long a canary runs before it is promoted (when it was never worse).
    #[serde(default = "default_canary_seconds")]
    pub canary_seconds: u64,
    /// Rolled back when its share of failed records exceeds the stable version's by more.
    #[serde(default = "default_error_increase")]
    pub max_error_rate_increase: f64,
    /// Rolled back when its share of dropped records exceeds the stable version's by more.
    #[serde(default = "default_drop_increase")]
    pub max_drop_rate_increase: f64,
    /// Agent targets (`<arch>-<os>`, e.g. `aarch64-linux`) every `hub plugins push`
    /// precompiles for, besides those of the compiler-less agents the store has seen.
    #[serde(default)]
    pub targets: Vec<String>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            min_records: default_min_records(),
            canary_seconds: default_canary_seconds(),
            max_error_rate_increase: default_error_increase(),
            max_drop_rate_increase: default_drop_increase(),
            targets: Vec::new(),
        }
    }
}

fn default_min_records() -> u64 {
    1_000
}
fn default_canary_seconds() -> u64 {
    300
}
fn default_error_increase() -> f64 {
    0.01
}
fn default_drop_increase() -> f64 {
    0.05
}

/// `[[downlinks]]`: central topics a set of sites receives (central -> edge).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownlinkRouteConfig {
    /// Regex over central topic names (whole-name match).
    pub topics: String,
    /// Regex over site aliases (whole-name match); all sites when absent.
    #[serde(default)]
    pub sites: Option<String>,
    /// Alias of the central cluster the topics are read from; the first cluster when absent.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Most payload bytes per second this downlink sends one site (unlimited when absent).
    #[serde(default)]
    pub max_bytes_per_sec: Option<u64>,
}

/// `[downlink]`: the hub's side of central -> edge flows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownlinkConfig {
    /// Kafka consumers per central cluster that read downlink topics, shared by all sites
    /// in turns (threads and broker connections do not grow with the sites).
    #[serde(default = "default_downlink_readers")]
    pub readers: usize,
    /// Bytes one site may have sent and not yet acked (committed at the edge).
    #[serde(default = "default_downlink_window_bytes")]
    pub window_bytes: u64,
    /// Largest downlink batch payload before compression, in bytes.
    #[serde(default = "default_downlink_batch_bytes")]
    pub max_batch_bytes: u32,
    /// How often the hub looks at the downlink topics' end offsets (what is new to send).
    #[serde(default = "default_downlink_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// How often the hub lists the central topics (new or grown downlink topics are offered
    /// to connected sites).
    #[serde(default = "default_downlink_refresh_interval_ms")]
    pub refresh_interval_ms: u64,
}

impl Default for DownlinkConfig {
    fn default() -> Self {
        Self {
            readers: default_downlink_readers(),
            window_bytes: default_downlink_window_bytes(),
            max_batch_bytes: default_downlink_batch_bytes(),
            poll_interval_ms: default_downlink_poll_interval_ms(),
            refresh_interval_ms: default_downlink_refresh_interval_ms(),
        }
    }
}

fn default_downlink_readers() -> usize {
    2
}
fn default_downlink_window_bytes() -> u64 {
    4 * 1024 * 1024
}
fn default_downlink_batch_bytes() -> u32 {
    512 * 1024
}
fn default_downlink_poll_interval_ms() -> u64 {
    200
}
fn default_downlink_refresh_interval_ms() -> u64 {
    10_000
}

/// How one hub serves many sites and how hubs share a fleet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Number of site shards. A site belongs to shard `fnv1a32(alias) % shards`; the hubs of a
    /// group divide the shards through Kafka's consumer-group protocol. It is the partition
    /// count of the hub's internal topics, so it is fixed when the first hub of a group starts:
    /// a hub configured differently refuses to start.
    #[serde(default = "default_shards")]
    pub shards: u32,
    /// Transactional writers per central cluster (each one Kafka producer and one thread),
    /// shared by all sites; a site's source partitions spread over them. 0 = the number of CPU
    /// cores.
    #[serde(default)]
    pub writers_per_cluster: usize,
    /// How long a writer that got a batch waits for more before it begins the transaction
    /// (0: at once; a transaction already under way delays the next one anyway). A hub of many
    /// quiet sites (heartbeats, trickles) commits that many fewer, larger transactions, and
    /// each costs CPU per partition the writer's producer ever wrote to; every batch waits up
    /// to this long longer for its ack.
    #[serde(default)]
    pub transaction_linger_ms: u64,
    /// Per writer, how many partitions a transaction of heartbeats alone writes per second,
    /// on average. Every partition a transaction writes costs the writer's producer a produce
    /// request whose answer walks every partition it knows, so 1,000 sites' heartbeats
    /// committed as they come cost a core's half. Past this rate, a writer holds a transaction
    /// of nothing but heartbeats until the last one's partitions are paid for, and the sites'
    /// heartbeats that came meanwhile share their partitions' requests. A few sites never
    /// wait; a batch of records takes held heartbeats along at once. 0: never hold.
    #[serde(default = "default_heartbeat_partitions_per_second")]
    pub heartbeat_partitions_per_second: u32,
    /// The longest a writer holds heartbeats for `heartbeat_partitions_per_second`: how far a
    /// heartbeat's commit may trail it (the replication lag an idle site shows).
    #[serde(default = "default_heartbeat_max_delay_ms")]
    pub heartbeat_max_delay_ms: u64,
    /// `host:port` addresses agents are sent to when their site's shard belongs to this hub
    /// and they reached another hub of the group. Empty: `listen`, unless it is a wildcard
    /// address (then this hub cannot be redirected to, and says so at start).
    #[serde(default)]
    pub advertised_addresses: Vec<String>,
    /// Kafka `session.timeout.ms` of the hub's group membership: how long a hub that died
    /// keeps its shards before the others take them over.
    #[serde(default = "default_fleet_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// How long a connecting site waits for its shard to be owned and loaded by this hub
    /// before it is told to come back later.
    #[serde(default = "default_shard_wait_ms")]
    pub shard_wait_ms: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            shards: default_shards(),
            writers_per_cluster: 0,
            transaction_linger_ms: 0,
            heartbeat_partitions_per_second: default_heartbeat_partitions_per_second(),
            heartbeat_max_delay_ms: default_heartbeat_max_delay_ms(),
            advertised_addresses: Vec::new(),
            session_timeout_ms: default_fleet_session_timeout_ms(),
            shard_wait_ms: default_shard_wait_ms(),
        }
    }
}

fn default_shards() -> u32 {
    64
}
fn default_heartbeat_partitions_per_second() -> u32 {
    100
}
fn default_heartbeat_max_delay_ms() -> u64 {
    5_000
}
fn default_fleet_session_timeout_ms() -> u64 {
    10_000
}
fn default_shard_wait_ms() -> u64 {
    30_000
}

/// The Prometheus metrics endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// TCP `ip:port` serving `/metrics`, e.g. `127.0.0.1:9465`; none when unset.
    #[serde(default)]
    pub listen: Option<String>,
    /// Serve the read-only web console at `/` on the same listener (default true).
    #[serde(default = "default_true")]
    pub console: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            console: true,
        }
    }
}

/// Remote topics created, grown and configured after the edge topics the agents report at
/// discovery (MM2's `sync.topic.configs.enabled` and `config.properties.exclude`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSyncConfig {
    /// Create remote topics at discovery with the source's partition count and configs (also
    /// when empty), add partitions when the edge does, and keep synced configs in step.
    /// Off: remote topics appear with the broker's defaults when their first record arrives.
    /// Never under the identity policy (shared topics belong to the operator).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Whole-name regexes of the topic configs a site may set on its remote topics. The
    /// default keeps to what shapes the data (cleanup, retention, compaction, record size,
    /// compression); settings that cost the central brokers (segment sizes, flushing,
    /// indexes, throttles) stay the operator's. `[".*"]` syncs what MM2 does.
    #[serde(default = "default_sync_include")]
    pub include: Vec<String>,
    /// Whole-name regexes of configs never synced, whatever `include` says (MM2's
    /// `config.properties.exclude` defaults).
    #[serde(default = "default_sync_exclude")]
    pub exclude: Vec<String>,
    /// A site's reports are applied at most this often (milliseconds); later ones wait and
    /// are merged, so a site cannot make the hub hammer the central cluster's admin API.
    #[serde(default = "default_sync_min_interval_ms")]
    pub min_interval_ms: u64,
}

impl Default for TopicSyncConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            include: default_sync_include(),
            exclude: default_sync_exclude(),
            min_interval_ms: default_sync_min_interval_ms(),
        }
    }
}

fn default_sync_include() -> Vec<String> {
    [
        "cleanup\\.policy",
        "retention\\.(ms|bytes)",
        "delete\\.retention\\.ms",
        "(min|max)\\.compaction\\.lag\\.ms",
        "min\\.cleanable\\.dirty\\.ratio",
        "max\\.message\\.bytes",
        "compression\\.type",
        "compression\\.[a-z0-9]+\\.level",
        "message\\.timestamp\\..*",
    ]
    .map(String::from)
    .to_vec()
}
fn default_sync_exclude() -> Vec<String> {
    [
        "follower\\.replication\\.throttled\\.replicas",
        "leader\\.replication\\.throttled\\.replicas",
        "message\\.timestamp\\.difference\\.max\\.ms",
        "message\\.timestamp\\.before\\.max\\.ms",
        "message\\.timestamp\\.after\\.max\\.ms",
        "log\\.message\\.timestamp\\.before\\.max\\.ms",
        "log\\.message\\.timestamp\\.after\\.max\\.ms",
        "message\\.timestamp\\.type",
        "unclean\\.leader\\.election\\.enable",
        "min\\.insync\\.replicas",
    ]
    .map(String::from)
    .to_vec()
}
fn default_sync_min_interval_ms() -> u64 {
    10_000
}

/// Edge topics' ACLs mirrored onto their remote topics (MM2's `sync.topic.acls.enabled`): the
/// agent reports the literal bindings of its replicated topics; the hub creates, on the
/// remote topic, the ALLOW READ and ALLOW DESCRIBE ones (ALL counts as READ) of principals
/// `principals` matches. A site is not trusted with more: no WRITE (MM2 never syncs it), no
/// DENY (one could lock the hub out of a topic its shared transactions write), nothing on
/// topics that are not the site's own. Bindings are only added, never removed (as MM2).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclSyncConfig {
    /// Off by default: an edge ACL decides who reads central data, so the central operator
    /// opts in. Needs ALTER on the central cluster for the hub's principal, and DESCRIBE on
    /// the edge cluster for the agent's. Never under the identity policy (remote topics are
    /// shared).
    #[serde(default)]
    pub enabled: bool,
    /// Whole-name regex of the principals a site may grant access to.
    #[serde(default = "default_acl_principals")]
    pub principals: String,
    /// Most bindings of one site the hub creates per report; more are dropped and logged.
    #[serde(default = "default_max_acls_per_site")]
    pub max_per_site: usize,
}

impl Default for AclSyncConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            principals: default_acl_principals(),
            max_per_site: default_max_acls_per_site(),
        }
    }
}

fn default_acl_principals() -> String {
    "User:.+".to_owned()
}
fn default_max_acls_per_site() -> usize {
    1_000
}

/// Consumer-group offset translation for failover.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointsConfig {
    /// Milliseconds between checkpoint rounds (each uses the latest group offsets the agent
    /// reported).
    #[serde(default = "default_checkpoint_interval_ms")]
    pub interval_ms: u64,
    /// Write MM2 offset syncs (`mm2-offset-syncs.<site>.internal`) for source partitions that
    /// map one to one.
    #[serde(default = "default_true")]
    pub offset_syncs: bool,
    /// Commit translated offsets to the central cluster's consumer groups of the same name
    /// (MM2's `sync.group.offsets.enabled`): forward only, and only while the group has no
    /// active members there.
    #[serde(default)]
    pub sync_group_offsets: bool,
}

impl Default for CheckpointsConfig {
    fn default() -> Self {
        Self {
            interval_ms: default_checkpoint_interval_ms(),
            offset_syncs: true,
            sync_group_offsets: false,
        }
    }
}

fn default_checkpoint_interval_ms() -> u64 {
    5_000
}
fn default_true() -> bool {
    true
}

fn default_group_id() -> String {
    "edge-replicator".to_owned()
}

/// TLS files of the hub (PEM) and who may connect.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate that every site certificate must chain to.
    pub ca_cert: PathBuf,
    /// The hub's certificate (its SANs must match the name agents connect with).
    pub cert: PathBuf,
    /// The hub's private key.
    pub key: PathBuf,
    /// Where a site's alias comes from: `cn` (the certificate's subject CN) or `san-uri` (a
    /// SPIFFE ID `spiffe://<spiffe_trust_domain>/site/<alias>` in the subject alternative names).
    #[serde(default = "default_identity")]
    pub identity: String,
    /// The SPIFFE trust domain site IDs must be in; required with `identity = "san-uri"`.
    #[serde(default)]
    pub spiffe_trust_domain: Option<String>,
    /// Site aliases allowed to connect: exact names or whole-name regexes (`plant-.*`). Absent:
    /// every alias the CA certifies.
    #[serde(default)]
    pub allowed_sites: Option<Vec<String>>,
    /// Certificate revocation lists (PEM or DER), each issued by `ca_cert`'s CA. Checked on
    /// every handshake, every resumed session and every live session; reloaded when a file
    /// changes.
    #[serde(default)]
    pub crl_files: Vec<PathBuf>,
    /// Milliseconds between checks of the CRL files' modification times.
    #[serde(default = "default_crl_poll_interval_ms")]
    pub crl_poll_interval_ms: u64,
}

fn default_identity() -> String {
    "cn".to_owned()
}
fn default_crl_poll_interval_ms() -> u64 {
    er_net::CRL_POLL_INTERVAL.as_millis() as u64
}

/// Bounds of `tls.crl_poll_interval_ms`: often enough to matter, rare enough to cost nothing.
const CRL_POLL_INTERVAL_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;

/// The identity policy `[tls]` describes (CRLs loaded), with errors naming the field.
fn identity_policy(
    tls: &TlsConfig,
    invalid: &Invalid<'_>,
) -> Result<er_net::IdentityPolicy, ConfigError> {
    let source = match (tls.identity.as_str(), &tls.spiffe_trust_domain) {
        ("cn", None) => er_net::IdentitySource::CommonName,
        ("san-uri", Some(domain)) => er_net::IdentitySource::SanUri {
            trust_domain: domain.clone(),
        },
        ("cn", Some(_)) => {
            return Err(invalid(
                "tls.spiffe_trust_domain",
                "only used with identity = \"san-uri\"".into(),
            ));
        }
        ("san-uri", None) => {
            return Err(invalid(
                "tls.spiffe_trust_domain",
                "required with identity = \"san-uri\"".into(),
            ));
        }
        (other, _) => {
            return Err(invalid(
                "tls.identity",
                format!("{other:?} is not one of \"cn\", \"san-uri\""),
            ));
        }
    };
    if let Some(allowed) = &tls.allowed_sites
        && allowed.is_empty()
    {
        return Err(invalid(
            "tls.allowed_sites",
            "an empty list admits no site; remove the field to admit every site of the CA".into(),
        ));
    }
    if !CRL_POLL_INTERVAL_MS.contains(&tls.crl_poll_interval_ms) {
        return Err(invalid(
            "tls.crl_poll_interval_ms",
            format!(
                "{} must be between {} and {}",
                tls.crl_poll_interval_ms,
                CRL_POLL_INTERVAL_MS.start(),
                CRL_POLL_INTERVAL_MS.end()
            ),
        ));
    }
    let settings = er_net::IdentitySettings {
        source,
        allowed_sites: tls.allowed_sites.clone(),
        crl_files: tls.crl_files.clone(),
    };
    er_net::IdentityPolicy::new(settings, &tls.ca_cert).map_err(|e| match e {
        er_net::NetError::AllowedSitePattern { index, .. } => {
            invalid(&format!("tls.allowed_sites[{index}]"), e.to_string())
        }
        er_net::NetError::TrustDomain(_) => invalid("tls.spiffe_trust_domain", e.to_string()),
        er_net::NetError::BadCrl { ref path, .. } | er_net::NetError::ReadFile { ref path, .. }
            if tls.crl_files.contains(path) =>
        {
            let i = tls.crl_files.iter().position(|f| f == path).unwrap_or(0);
            invalid(&format!("tls.crl_files[{i}]"), e.to_string())
        }
        e => invalid("tls.ca_cert", e.to_string()),
    })
}

/// Remote topic naming, as MirrorMaker 2's replication policies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// `default`: `<site><separator><topic>` (MM2's DefaultReplicationPolicy);
    /// `identity`: keep topic names (MM2's IdentityReplicationPolicy; heartbeats still prefixed).
    #[serde(default = "default_policy")]
    pub policy: String,
    /// Separator of the default policy.
    #[serde(default = "default_separator")]
    pub separator: String,
    /// Under the identity policy, the central topics each site may write (required: without
    /// it any site could write into any topic). Internal, Connect and Schema Registry topics
    /// are never allowed.
    #[serde(default)]
    pub identity_allow: Vec<IdentityAllow>,
    /// What becomes of a record the hub can never write where it belongs (larger than the
    /// destination takes, a topic name Kafka refuses or the site may not write, a record the
    /// agent could not send): `dead-letter` (the default) writes it to the site's dead-letter
    /// topic and the partition flows on; `stop` stops its partition there with an alarm
    /// (`er_hub_stopped_partitions`) until the agent reconnects, for data where a gap is
    /// worse than a halt. Agents older than protocol version 3 are always dead-lettered.
    #[serde(default)]
    pub on_unwritable: OnUnwritable,
}

/// `replication.on_unwritable`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnUnwritable {
    /// To the site's dead-letter topic, with its source coordinates and the reason.
    #[default]
    DeadLetter,
    /// Stop the partition at the record (committed up to it) until the agent reconnects.
    Stop,
}

/// Central topics some sites may write under the identity policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityAllow {
    /// Whole-name regex of the site aliases this entry is for.
    pub sites: String,
    /// Whole-name regex of the topics they may write.
    pub topics: String,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            policy: default_policy(),
            separator: default_separator(),
            identity_allow: Vec::new(),
            on_unwritable: OnUnwritable::default(),
        }
    }
}

/// Central topics no site may write under the identity policy, whatever the allowlist says
/// (internal names are refused too): see [`er_protocol::policy::PROTECTED_TOPICS`].
pub use er_protocol::policy::PROTECTED_TOPICS;

fn default_policy() -> String {
    "default".to_owned()
}
fn default_separator() -> String {
    ".".to_owned()
}

/// One central Kafka cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Alias of the cluster (MM2's target cluster alias), e.g. `central`.
    pub alias: String,
    /// Kafka bootstrap servers, comma separated `host:port`.
    pub bootstrap_servers: String,
    /// Replication factor for topics the hub creates.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Transaction timeout in milliseconds (Kafka's `transaction.timeout.ms`).
    #[serde(default = "default_transaction_timeout_ms")]
    pub transaction_timeout_ms: u64,
    /// Extra librdkafka properties for the producer and consumers of this cluster.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Topic configs set on every remote topic the hub creates or syncs on this cluster, over
    /// what the edge reports (e.g. a longer `retention.ms` centrally).
    #[serde(default)]
    pub topic_configs: BTreeMap<String, String>,
}

fn default_replication_factor() -> i32 {
    3
}
fn default_transaction_timeout_ms() -> u64 {
    60_000
}

/// Sends source topics matching a regex to a named cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Regex over the source topic name (whole-name match).
    pub topics: String,
    /// Optional regex over the site alias (whole-name match); all sites when absent.
    #[serde(default)]
    pub sites: Option<String>,
    /// Alias of the destination cluster.
    pub cluster: String,
}

/// Bounds protecting the hub's memory and the central cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest compressed batch a site may send, in bytes.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: u32,
    /// Largest uncompressed batch, in bytes.
    #[serde(default = "default_max_uncompressed_bytes")]
    pub max_uncompressed_bytes: u32,
    /// Upper bound of record bytes written in one Kafka transaction (several batches of one
    /// site are grouped into one commit up to this size).
    #[serde(default = "default_max_transaction_bytes")]
    pub max_transaction_bytes: u64,
    /// Bytes of batches (as received, compressed) queued for one writer before the hub stops
    /// reading the links that feed it: the writer's memory budget. Many small batches of many
    /// sites fit in one transaction; a batch larger than the budget waits for an empty queue.
    #[serde(default = "default_writer_queue_bytes")]
    pub writer_queue_bytes: u32,
    /// Bytes of one site's batches the writers' queues may hold at once, all writers
    /// together: one busy site cannot fill the queues the others share (it waits, unread,
    /// while the others' batches get in). A batch larger than this waits until none of the
    /// site's batches is queued.
    #[serde(default = "default_site_writer_queue_bytes")]
    pub site_writer_queue_bytes: u32,
    /// Entries (runs of consecutive offsets; one per kept record when plugins filter) kept in
    /// memory per (source partition, destination partition) pair of the offset index, about
    /// 1-5 bytes each. Older source offsets then translate as "too old".
    #[serde(default = "default_offset_index_max_entries_per_partition")]
    pub offset_index_max_entries_per_partition: usize,
    /// `retention.ms` of each site's offset index topic (`er-offset-index.<site>.internal`),
    /// applied when the hub creates it; the index rebuilt after a restart reaches back this far
    /// at most.
    #[serde(default = "default_offset_index_retention_ms")]
    pub offset_index_retention_ms: u64,
    /// Distinct source topics a site may send; a batch of one more is refused (the hub would
    /// otherwise create any number of central topics for one site).
    #[serde(default = "default_max_topics_per_site")]
    pub max_topics_per_site: usize,
    /// Edge consumer groups a site may report; reports of more are refused.
    #[serde(default = "default_max_groups_per_site")]
    pub max_groups_per_site: usize,
    /// Largest partition count a site may claim for a source topic: the hub creates (or grows)
    /// the central topic to the count a batch names, so a batch claiming more is refused.
    #[serde(default = "default_max_partitions_per_topic")]
    pub max_partitions_per_topic: i32,
    /// Bytes of frames one connection may have read and not yet handed to the writers; a
    /// stream waits (unread, so QUIC flow control holds the agent back) while they are taken.
    /// Also the connection's QUIC receive window. At least a batch frame
    /// (`max_batch_bytes` + 64 KiB).
    #[serde(default = "default_connection_inbound_bytes")]
    pub connection_inbound_bytes: u32,
    /// The same budget for all connections of one site together (at least
    /// `connection_inbound_bytes`).
    #[serde(default = "default_site_inbound_bytes")]
    pub site_inbound_bytes: u32,
    /// The same budget for the whole hub (at least `site_inbound_bytes`).
    #[serde(default = "default_inbound_bytes")]
    pub inbound_bytes: u64,
    /// A connection that has not sent its hello this long after its TLS handshake is closed.
    #[serde(default = "default_hello_timeout_ms")]
    pub hello_timeout_ms: u64,
    /// Connections one site may hold at once (a reconnecting agent briefly holds two); more
    /// are refused.
    #[serde(default = "default_max_connections_per_site")]
    pub max_connections_per_site: usize,
    /// Connections the hub holds at once, handshakes included; more are refused.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// With more TLS handshakes under way than this, a client whose address QUIC has not
    /// validated yet gets a Retry first (one more round trip, and spoofed sources get nowhere).
    /// 0 retries every new client.
    #[serde(default = "default_retry_above_handshakes")]
    pub retry_above_handshakes: usize,
    /// TLS handshakes under way at most; a connection attempt beyond them is refused at once
    /// (the agent backs off with jitter and comes back). A hub restarting under a whole fleet
    /// otherwise started every handshake, answered each too late, and the sites gave up on
    /// them and tried again: thousands of handshakes done for nobody.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_batch_bytes: default_max_batch_bytes(),
            max_uncompressed_bytes: default_max_uncompressed_bytes(),
            max_transaction_bytes: default_max_transaction_bytes(),
            writer_queue_bytes: default_writer_queue_bytes(),
            site_writer_queue_bytes: default_site_writer_queue_bytes(),
            offset_index_max_entries_per_partition: default_offset_index_max_entries_per_partition(
            ),
            offset_index_retention_ms: default_offset_index_retention_ms(),
            max_topics_per_site: default_max_topics_per_site(),
            max_groups_per_site: default_max_groups_per_site(),
            max_partitions_per_topic: default_max_partitions_per_topic(),
            connection_inbound_bytes: default_connection_inbound_bytes(),
            site_inbound_bytes: default_site_inbound_bytes(),
            inbound_bytes: default_inbound_bytes(),
            hello_timeout_ms: default_hello_timeout_ms(),
            max_connections_per_site: default_max_connections_per_site(),
            max_connections: default_max_connections(),
            retry_above_handshakes: default_retry_above_handshakes(),
            max_handshakes: default_max_handshakes(),
        }
    }
}

impl LimitsConfig {
    /// Largest frame a site may send: a batch of the configured limit plus room for its header.
    pub fn max_frame_bytes(&self) -> u32 {
        self.max_batch_bytes.saturating_add(64 * 1024)
    }
}

fn default_max_partitions_per_topic() -> i32 {
    1_024
}
fn default_connection_inbound_bytes() -> u32 {
    32 * 1024 * 1024
}
fn default_site_inbound_bytes() -> u32 {
    64 * 1024 * 1024
}
fn default_inbound_bytes() -> u64 {
    1024 * 1024 * 1024
}
fn default_hello_timeout_ms() -> u64 {
    10_000
}
fn default_max_connections_per_site() -> usize {
    4
}
fn default_max_connections() -> usize {
    20_000
}
fn default_retry_above_handshakes() -> usize {
    64
}
fn default_max_handshakes() -> usize {
    128
}

fn default_max_batch_bytes() -> u32 {
    8 * 1024 * 1024
}
fn default_max_uncompressed_bytes() -> u32 {
    32 * 1024 * 1024
}
fn default_max_transaction_bytes() -> u64 {
    32 * 1024 * 1024
}
fn default_writer_queue_bytes() -> u32 {
    32 * 1024 * 1024
}
fn default_site_writer_queue_bytes() -> u32 {
    16 * 1024 * 1024
}
fn default_offset_index_max_entries_per_partition() -> usize {
    crate::offsets::DEFAULT_MAX_ENTRIES_PER_PARTITION
}
fn default_max_topics_per_site() -> usize {
    1_000
}
fn default_max_groups_per_site() -> usize {
    1_000
}
fn default_offset_index_retention_ms() -> u64 {
    7 * 24 * 60 * 60 * 1000
}

/// A validated configuration, with parsed addresses and compiled regexes.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The raw configuration.
    pub raw: HubConfig,
    /// Parsed listen address.
    pub listen: SocketAddr,
    /// The replication policy.
    pub policy: ReplicationPolicy,
    /// Routes with compiled regexes and resolved cluster indexes.
    pub routes: Vec<CompiledRoute>,
    /// `[[downlinks]]`, compiled, in file order.
    pub downlinks: Vec<CompiledDownlink>,
    /// Address of the Prometheus endpoint, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Writers per cluster (`fleet.writers_per_cluster`, 0 resolved to the number of cores).
    pub writers_per_cluster: usize,
    /// Where agents are redirected to reach this hub (`fleet.advertised_addresses` or `listen`).
    pub advertised: Vec<String>,
    /// Who may connect (`[tls]`): alias source, allowlist, CRLs in force. Shared with the CRL
    /// reloader, so clones of this config see reloaded CRLs.
    pub identity: std::sync::Arc<er_net::IdentityPolicy>,
    /// `tls.crl_poll_interval_ms`.
    pub crl_poll_interval: std::time::Duration,
    /// `replication.identity_allow`, compiled: (sites, topics).
    pub identity_allow: std::sync::Arc<Vec<(Regex, Regex)>>,
    /// `topic_sync.include` / `exclude`, compiled.
    pub topic_config_filter: std::sync::Arc<crate::topic_sync::ConfigFilter>,
    /// `acl_sync.principals`, compiled.
    pub acl_principals: Regex,
}

/// A route ready to match.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    /// Whole-name topic matcher.
    pub topics: Regex,
    /// Whole-name site matcher.
    pub sites: Option<Regex>,
    /// Index into `clusters`.
    pub cluster: usize,
}

/// A `[[downlinks]]` entry, compiled.
#[derive(Debug, Clone)]
pub struct CompiledDownlink {
    /// Whole-name central topic matcher.
    pub topics: Regex,
    /// Whole-name site matcher.
    pub sites: Option<Regex>,
    /// Index into `clusters`.
    pub cluster: usize,
    /// Payload bytes per second to one site, if limited.
    pub max_bytes_per_sec: Option<u64>,
}

impl Validated {
    /// Index of the cluster that `topic` of `site` is written to.
    pub fn cluster_for(&self, site: &str, topic: &str) -> usize {
        self.routes
            .iter()
            .find(|r| r.topics.is_match(topic) && r.sites.as_ref().is_none_or(|s| s.is_match(site)))
            .map_or(0, |r| r.cluster)
    }
}

/// Reads, parses and validates a hub config file.
pub fn load(path: &Path) -> Result<Validated, ConfigError> {
    parse(path, &er_service::config::read(path)?)
}

/// Parses and validates config text; `path` is used for messages and to resolve relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Validated, ConfigError> {
    let mut raw: HubConfig = er_service::config::from_toml(path, text)?;
    let invalid = |field: &str, message: String| ConfigError::Invalid {
        path: path.to_owned(),
        field: field.to_owned(),
        message,
    };
    tls_files(
        &mut raw.tls,
        path.parent().unwrap_or(Path::new(".")),
        &invalid,
    )?;
    let identity = std::sync::Arc::new(identity_policy(&raw.tls, &invalid)?);
    let crl_poll_interval = std::time::Duration::from_millis(raw.tls.crl_poll_interval_ms);
    if raw.hub_id.trim().is_empty() {
        return Err(invalid("hub_id", "must not be empty".into()));
    }
    er_protocol::validate_site_alias(&raw.group_id)
        .map_err(|e| invalid("group_id", e.to_string()))?;
    let listen: SocketAddr = raw.listen.parse().map_err(|e| {
        invalid(
            "listen",
            format!("{:?} is not an `ip:port` socket address: {e}", raw.listen),
        )
    })?;
    let policy = replication_policy(&raw.replication, &invalid)?;
    clusters(&raw.clusters, &invalid)?;
    let identity_allow = identity_allow(&raw.replication, &invalid)?;
    let routes = routes(&raw.routes, &raw.clusters, &invalid)?;
    let downlinks = downlinks(&raw, &invalid)?;
    canary_rules(&raw.plugins, &invalid)?;
    if raw.checkpoints.interval_ms == 0 {
        return Err(invalid(
            "checkpoints.interval_ms",
            "must be greater than 0".into(),
        ));
    }
    limits(&raw.limits, &invalid)?;
    fleet(&raw.fleet, &invalid)?;
    let writers_per_cluster = match raw.fleet.writers_per_cluster {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let advertised = if !raw.fleet.advertised_addresses.is_empty() {
        raw.fleet.advertised_addresses.clone()
    } else if listen.ip().is_unspecified() {
        Vec::new()
    } else {
        vec![listen.to_string()]
    };
    let checks = er_service::config::Checks::new(path);
    let metrics_listen = checks.metrics_listen("metrics.listen", raw.metrics.listen.as_deref())?;
    let topic_config_filter = crate::topic_sync::ConfigFilter::new(
        checks.whole_matches("topic_sync.include", &raw.topic_sync.include)?,
        checks.whole_matches("topic_sync.exclude", &raw.topic_sync.exclude)?,
    );
    if raw.topic_sync.min_interval_ms == 0 {
        return Err(invalid(
            "topic_sync.min_interval_ms",
            "must be greater than 0".into(),
        ));
    }
    let acl_principals =
        whole_match(&raw.acl_sync.principals).map_err(|m| invalid("acl_sync.principals", m))?;
    Ok(Validated {
        raw,
        listen,
        policy,
        routes,
        downlinks,
        metrics_listen,
        writers_per_cluster,
        advertised,
        identity,
        crl_poll_interval,
        identity_allow: std::sync::Arc::new(identity_allow),
        topic_config_filter: std::sync::Arc::new(topic_config_filter),
        acl_principals,
    })
}

/// What a validator says about a field: the error naming the file and the field.
type Invalid<'a> = dyn Fn(&str, String) -> ConfigError + 'a;

/// `[tls]`'s files resolved against the config's directory, each one present.
fn tls_files(tls: &mut TlsConfig, base: &Path, invalid: &Invalid<'_>) -> Result<(), ConfigError> {
    let named = [
        ("tls.ca_cert".to_owned(), &mut tls.ca_cert),
        ("tls.cert".to_owned(), &mut tls.cert),
        ("tls.key".to_owned(), &mut tls.key),
    ];
    let crls = tls
        .crl_files
        .iter_mut()
        .enumerate()
        .map(|(i, f)| (format!("tls.crl_files[{i}]"), f));
    for (field, file) in named.into_iter().chain(crls) {
        if file.is_relative() {
            *file = base.join(&*file);
        }
        if !file.is_file() {
            return Err(invalid(&field, format!("no such file {file:?}")));
        }
    }
    Ok(())
}

/// `[replication]`'s policy: the default one's separator must keep sites apart; the identity
/// one needs its allowlist.
fn replication_policy(
    r: &ReplicationConfig,
    invalid: &Invalid<'_>,
) -> Result<ReplicationPolicy, ConfigError> {
    match r.policy.as_str() {
        "default" => {
            let sep = &r.separator;
            if sep.is_empty() || !sep.chars().all(|c| matches!(c, '.' | '_' | '-')) {
                return Err(invalid(
                    "replication.separator",
                    format!("{sep:?} must be one or more of '.', '_', '-'"),
                ));
            }
            // Site aliases hold '_' and '-' but never '.': only a separator with a '.' keeps
            // `a` + `b-x` and `a-b` + `x` apart.
            if !sep.contains('.') {
                return Err(invalid(
                    "replication.separator",
                    format!(
                        "{sep:?} must contain a '.': site aliases may contain '_' and '-', so with this separator two sites could name the same topic (site \"a\" + topic \"b{sep}x\" and site \"a{sep}b\" + topic \"x\")"
                    ),
                ));
            }
            Ok(ReplicationPolicy::Default {
                separator: sep.clone(),
            })
        }
        "identity" if r.identity_allow.is_empty() => Err(invalid(
            "replication.identity_allow",
            "the identity policy needs an explicit allowlist of the central topics each site may write ([[replication.identity_allow]] sites = \"...\", topics = \"...\"): without it any site could write into any topic".into(),
        )),
        "identity" => Ok(ReplicationPolicy::Identity),
        other => Err(invalid(
            "replication.policy",
            format!("{other:?} is not one of \"default\", \"identity\""),
        )),
    }
}

/// `[[replication.identity_allow]]`, compiled: (sites, topics).
fn identity_allow(
    r: &ReplicationConfig,
    invalid: &Invalid<'_>,
) -> Result<Vec<(Regex, Regex)>, ConfigError> {
    r.identity_allow
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let field = |f: &str| format!("replication.identity_allow[{i}].{f}");
            let sites = whole_match(&a.sites).map_err(|e| invalid(&field("sites"), e))?;
            let topics = whole_match(&a.topics).map_err(|e| invalid(&field("topics"), e))?;
            Ok((sites, topics))
        })
        .collect()
}

/// `[[clusters]]`: at least one, unique aliases, a bootstrap list, a replication factor, and
/// topic configs with names and values.
fn clusters(clusters: &[ClusterConfig], invalid: &Invalid<'_>) -> Result<(), ConfigError> {
    if clusters.is_empty() {
        return Err(invalid(
            "clusters",
            "at least one cluster is required".into(),
        ));
    }
    for (i, c) in clusters.iter().enumerate() {
        er_protocol::validate_site_alias(&c.alias)
            .map_err(|e| invalid(&format!("clusters[{i}].alias"), e.to_string()))?;
        if clusters[..i].iter().any(|o| o.alias == c.alias) {
            return Err(invalid(
                &format!("clusters[{i}].alias"),
                format!("duplicate alias {:?}", c.alias),
            ));
        }
        if c.bootstrap_servers.trim().is_empty() {
            return Err(invalid(
                &format!("clusters[{i}].bootstrap_servers"),
                "must not be empty".into(),
            ));
        }
        if c.replication_factor < 1 {
            return Err(invalid(
                &format!("clusters[{i}].replication_factor"),
                format!("{} must be at least 1", c.replication_factor),
            ));
        }
        if let Some((k, v)) = c
            .topic_configs
            .iter()
            .find(|(k, v)| k.is_empty() || v.is_empty())
        {
            return Err(invalid(
                &format!("clusters.{}.topic_configs", c.alias),
                format!("{k:?} = {v:?}: names and values must not be empty"),
            ));
        }
    }
    Ok(())
}

/// `[[routes]]`, compiled, each naming a configured cluster.
fn routes(
    routes: &[RouteConfig],
    clusters: &[ClusterConfig],
    invalid: &Invalid<'_>,
) -> Result<Vec<CompiledRoute>, ConfigError> {
    let mut out = Vec::with_capacity(routes.len());
    for (i, r) in routes.iter().enumerate() {
        let topics =
            whole_match(&r.topics).map_err(|e| invalid(&format!("routes[{i}].topics"), e))?;
        let sites = r
            .sites
            .as_deref()
            .map(whole_match)
            .transpose()
            .map_err(|e| invalid(&format!("routes[{i}].sites"), e))?;
        let cluster = clusters
            .iter()
            .position(|c| c.alias == r.cluster)
            .ok_or_else(|| {
                invalid(
                    &format!("routes[{i}].cluster"),
                    format!("no cluster with alias {:?}", r.cluster),
                )
            })?;
        out.push(CompiledRoute {
            topics,
            sites,
            cluster,
        });
    }
    Ok(out)
}

/// `[plugins]`: rates between 0 and 1, a canary that runs at least a second.
fn canary_rules(r: &PluginsConfig, invalid: &Invalid<'_>) -> Result<(), ConfigError> {
    for (field, v) in [
        ("plugins.max_error_rate_increase", r.max_error_rate_increase),
        ("plugins.max_drop_rate_increase", r.max_drop_rate_increase),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(invalid(
                field,
                format!("{v} must be between 0 and 1 (a share of records)"),
            ));
        }
    }
    if r.canary_seconds == 0 {
        return Err(invalid(
            "plugins.canary_seconds",
            "must be at least 1".into(),
        ));
    }
    for target in &r.targets {
        check_plugin_target(target).map_err(|why| invalid("plugins.targets", why))?;
    }
    Ok(())
}

/// A target this hub can precompile plugins for.
#[cfg(feature = "plugin-compiler")]
pub fn check_plugin_target(target: &str) -> Result<(), String> {
    er_plugin_host::target_triple(target)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A target this hub can precompile plugins for: none, built without the compiler.
#[cfg(not(feature = "plugin-compiler"))]
pub fn check_plugin_target(target: &str) -> Result<(), String> {
    Err(format!(
        "{target:?}: this hub was built without the plugin compiler (feature plugin-compiler); give precompiled builds with `hub plugins push --native`"
    ))
}

/// `[[downlinks]]`, compiled, each naming a configured cluster, and `[downlink]`'s bounds.
fn downlinks(raw: &HubConfig, invalid: &Invalid<'_>) -> Result<Vec<CompiledDownlink>, ConfigError> {
    let d = &raw.downlink;
    if !(1..=64).contains(&d.readers) {
        return Err(invalid(
            "downlink.readers",
            format!("{} must be between 1 and 64", d.readers),
        ));
    }
    if d.max_batch_bytes < 1024 || d.max_batch_bytes > raw.limits.max_batch_bytes {
        return Err(invalid(
            "downlink.max_batch_bytes",
            format!(
                "{} must be between 1024 and limits.max_batch_bytes ({})",
                d.max_batch_bytes, raw.limits.max_batch_bytes
            ),
        ));
    }
    if d.window_bytes < u64::from(d.max_batch_bytes) {
        return Err(invalid(
            "downlink.window_bytes",
            format!(
                "{} must hold at least one batch (downlink.max_batch_bytes = {})",
                d.window_bytes, d.max_batch_bytes
            ),
        ));
    }
    if d.poll_interval_ms < 10 || d.refresh_interval_ms < d.poll_interval_ms {
        return Err(invalid(
            "downlink.poll_interval_ms",
            format!(
                "poll_interval_ms ({}) must be at least 10 and at most refresh_interval_ms ({})",
                d.poll_interval_ms, d.refresh_interval_ms
            ),
        ));
    }
    let mut out = Vec::with_capacity(raw.downlinks.len());
    for (i, r) in raw.downlinks.iter().enumerate() {
        let field = |f: &str| format!("downlinks[{i}].{f}");
        let topics = whole_match(&r.topics).map_err(|e| invalid(&field("topics"), e))?;
        let sites = r
            .sites
            .as_deref()
            .map(whole_match)
            .transpose()
            .map_err(|e| invalid(&field("sites"), e))?;
        let cluster = match &r.cluster {
            None => 0,
            Some(alias) => raw
                .clusters
                .iter()
                .position(|c| &c.alias == alias)
                .ok_or_else(|| {
                    invalid(
                        &field("cluster"),
                        format!("no cluster with alias {alias:?}"),
                    )
                })?,
        };
        if r.max_bytes_per_sec.is_some_and(|b| b < 1024) {
            return Err(invalid(
                &field("max_bytes_per_sec"),
                "must be at least 1024 (bytes per second)".into(),
            ));
        }
        out.push(CompiledDownlink {
            topics,
            sites,
            cluster,
            max_bytes_per_sec: r.max_bytes_per_sec,
        });
    }
    Ok(out)
}

/// `[limits]`: every size at least one, the inbound budgets nested (connection <= site <= hub,
/// a connection's at least one frame).
fn limits(l: &LimitsConfig, invalid: &Invalid<'_>) -> Result<(), ConfigError> {
    if l.max_batch_bytes == 0
        || l.max_uncompressed_bytes == 0
        || l.writer_queue_bytes == 0
        || l.site_writer_queue_bytes == 0
    {
        return Err(invalid("limits", "limits must be greater than zero".into()));
    }
    if l.max_topics_per_site == 0 || l.max_groups_per_site == 0 {
        return Err(invalid(
            "limits.max_topics_per_site",
            "limits.max_topics_per_site and limits.max_groups_per_site must be at least 1".into(),
        ));
    }
    if !(1..=crate::sink::MAX_SOURCE_PARTITIONS).contains(&l.max_partitions_per_topic) {
        return Err(invalid(
            "limits.max_partitions_per_topic",
            format!(
                "{} must be between 1 and {}",
                l.max_partitions_per_topic,
                crate::sink::MAX_SOURCE_PARTITIONS
            ),
        ));
    }
    inbound_budgets(l, invalid)?;
    if l.hello_timeout_ms == 0 {
        return Err(invalid(
            "limits.hello_timeout_ms",
            "must be greater than 0".into(),
        ));
    }
    if l.max_connections_per_site == 0 || l.max_connections == 0 {
        return Err(invalid(
            "limits.max_connections",
            "limits.max_connections and limits.max_connections_per_site must be at least 1".into(),
        ));
    }
    if l.offset_index_max_entries_per_partition == 0 {
        return Err(invalid(
            "limits.offset_index_max_entries_per_partition",
            "must be at least 1".into(),
        ));
    }
    if l.offset_index_retention_ms == 0 || l.offset_index_retention_ms > i64::MAX as u64 {
        return Err(invalid(
            "limits.offset_index_retention_ms",
            format!(
                "{} must be between 1 and {} (use a large value to keep it long)",
                l.offset_index_retention_ms,
                i64::MAX
            ),
        ));
    }
    Ok(())
}

/// The inbound byte budgets: a connection's holds one frame, a site's one connection's, the
/// hub's one site's.
fn inbound_budgets(l: &LimitsConfig, invalid: &Invalid<'_>) -> Result<(), ConfigError> {
    let frame = l
        .max_frame_bytes()
        .max(er_net::wire::CONTROL_FRAME_MAX_BYTES);
    if l.connection_inbound_bytes < frame {
        return Err(invalid(
            "limits.connection_inbound_bytes",
            format!(
                "{} is less than one frame ({frame} bytes: limits.max_batch_bytes + 64 KiB)",
                l.connection_inbound_bytes
            ),
        ));
    }
    if l.site_inbound_bytes < l.connection_inbound_bytes {
        return Err(invalid(
            "limits.site_inbound_bytes",
            format!(
                "{} is less than limits.connection_inbound_bytes ({})",
                l.site_inbound_bytes, l.connection_inbound_bytes
            ),
        ));
    }
    if l.inbound_bytes < u64::from(l.site_inbound_bytes) {
        return Err(invalid(
            "limits.inbound_bytes",
            format!(
                "{} is less than limits.site_inbound_bytes ({})",
                l.inbound_bytes, l.site_inbound_bytes
            ),
        ));
    }
    Ok(())
}

/// `[fleet]`: shards, writers, linger and group timeouts within their bounds, advertised
/// addresses `host:port`.
fn fleet(f: &FleetConfig, invalid: &Invalid<'_>) -> Result<(), ConfigError> {
    if f.shards == 0 || f.shards > 4096 {
        return Err(invalid(
            "fleet.shards",
            format!("{} must be between 1 and 4096", f.shards),
        ));
    }
    if f.writers_per_cluster > 256 {
        return Err(invalid(
            "fleet.writers_per_cluster",
            format!(
                "{} must be at most 256 (0 = one per core)",
                f.writers_per_cluster
            ),
        ));
    }
    if f.transaction_linger_ms > 5_000 {
        return Err(invalid(
            "fleet.transaction_linger_ms",
            format!(
                "{} must be at most 5000 (every batch waits that long longer for its ack)",
                f.transaction_linger_ms
            ),
        ));
    }
    if f.heartbeat_max_delay_ms > 60_000 {
        return Err(invalid(
            "fleet.heartbeat_max_delay_ms",
            format!(
                "{} must be at most 60000 (a heartbeat shows its site alive; held longer it shows lag)",
                f.heartbeat_max_delay_ms
            ),
        ));
    }
    if !(6_000..=300_000).contains(&f.session_timeout_ms) {
        return Err(invalid(
            "fleet.session_timeout_ms",
            format!(
                "{} must be between 6000 and 300000 (the broker's group session bounds)",
                f.session_timeout_ms
            ),
        ));
    }
    if f.shard_wait_ms == 0 {
        return Err(invalid(
            "fleet.shard_wait_ms",
            "must be greater than 0".into(),
        ));
    }
    for (i, a) in f.advertised_addresses.iter().enumerate() {
        let ok = a
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok || a.len() > 255 {
            return Err(invalid(
                &format!("fleet.advertised_addresses[{i}]"),
                format!("{a:?} is not `host:port`"),
            ));
        }
    }
    Ok(())
}

/// The shipped example next to dev certificates in a temp dir, for tests of any module.
#[cfg(test)]
pub(crate) fn example_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    er_net::devcerts::generate(&dir.path().join("certs"), &[], &["plant-7".into()], false).unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/config/hub.toml");
    std::fs::copy(example, dir.path().join("hub.toml")).unwrap();
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_valid_and_routes_as_documented() {
        let dir = example_dir();
        let v = load(&dir.path().join("hub.toml")).unwrap();
        assert_eq!(v.cluster_for("plant-7", "alarms"), 1);
        assert_eq!(
            v.cluster_for("depot-1", "alarms"),
            0,
            "site regex limits the route"
        );
        assert_eq!(
            v.cluster_for("plant-7", "sensors.temp"),
            0,
            "default is the first cluster"
        );
        assert_eq!(v.policy.remote_topic("plant-7", "alarms"), "plant-7.alarms");
        assert_eq!(
            v.raw.limits.offset_index_max_entries_per_partition,
            1_000_000
        );
        assert_eq!(v.raw.limits.offset_index_retention_ms, 604_800_000);
        assert_eq!(v.advertised, ["hub-1.example.net:4433"]);
        assert!(v.writers_per_cluster >= 1, "0 means one writer per core");
        let d = &v.downlinks[0];
        assert!(d.topics.is_match("reference-prices") && !d.topics.is_match("commands-old"));
        assert!(d.sites.as_ref().is_some_and(|s| s.is_match("plant-7")));
        assert_eq!((d.cluster, d.max_bytes_per_sec), (0, Some(262_144)));
    }

    #[test]
    fn downlinks_are_checked_field_by_field() {
        let dir = example_dir();
        let path = dir.path().join("hub.toml");
        let good = std::fs::read_to_string(&path).unwrap();
        for (from, to, field) in [
            (
                "# cluster = \"analytics\"",
                "cluster = \"nowhere\"",
                "downlinks[0].cluster",
            ),
            (
                "topics = \"commands|reference-.*\"",
                "topics = \"(\"",
                "downlinks[0].topics",
            ),
            (
                "max_bytes_per_sec = 262144",
                "max_bytes_per_sec = 10",
                "downlinks[0].max_bytes_per_sec",
            ),
            ("readers = 2", "readers = 0", "downlink.readers"),
            (
                "window_bytes = 4194304",
                "window_bytes = 1024",
                "downlink.window_bytes",
            ),
            (
                "poll_interval_ms = 200",
                "poll_interval_ms = 1",
                "downlink.poll_interval_ms",
            ),
        ] {
            assert!(good.contains(from), "{from}");
            let bad = good.replacen(from, to, 1);
            let e = parse(&path, &bad).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn metrics_endpoint_is_optional_and_validated() {
        let dir = example_dir();
        let path = dir.path().join("hub.toml");
        let good = std::fs::read_to_string(&path).unwrap();
        let v = parse(&path, &good).unwrap();
        assert_eq!(
            v.metrics_listen,
            Some("127.0.0.1:9465".parse().unwrap()),
            "the example serves metrics"
        );
        let listen = "listen = \"127.0.0.1:9465\"";
        assert!(good.contains(listen));
        // The example ends with the [metrics] table.
        let absent = &good[..good.find("\n[metrics]").expect("example has [metrics]")];
        assert_eq!(parse(&path, absent).unwrap().metrics_listen, None);
        let unset = good.replace(listen, "");
        assert_eq!(parse(&path, &unset).unwrap().metrics_listen, None);
        for bad in [
            "localhost:9465",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:70000",
        ] {
            let text = good.replace("127.0.0.1:9465", bad);
            let e = parse(&path, &text).expect_err(bad).to_string();
            assert!(
                e.contains("metrics.listen") && e.contains("hub.toml"),
                "{bad}: {e}"
            );
        }
        let unknown = good.replace(listen, "port = 9465");
        let e = parse(&path, &unknown)
            .expect_err("unknown field")
            .to_string();
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn tls_identity_settings_are_validated_and_build_the_policy() {
        let dir = example_dir();
        let path = dir.path().join("hub.toml");
        let good = std::fs::read_to_string(&path).unwrap();
        let v = parse(&path, &good).unwrap();
        assert!(v.identity.crl_files().is_empty());
        assert_eq!(v.crl_poll_interval, std::time::Duration::from_secs(5));
        // A CRL from the example's own CA, next to its certificates.
        let pki = er_net::devcerts::generate_in_memory(&[], &["plant-7".into()]).unwrap();
        pki.write_to(&dir.path().join("certs"), true).unwrap();
        let site_pem = pki.sites[0].1.clone();
        std::fs::write(
            dir.path().join("certs/ca.crl.pem"),
            pki.crl(&[&site_pem], 1).unwrap(),
        )
        .unwrap();
        let tls = |extra: &str| {
            good.replace(
                "key = \"certs/hub.key\"\n",
                &format!("key = \"certs/hub.key\"\n{extra}\n"),
            )
        };
        let v = parse(
            &path,
            &tls("identity = \"san-uri\"\nspiffe_trust_domain = \"factory.example\"\nallowed_sites = [\"plant-[0-9]+\"]\ncrl_files = [\"certs/ca.crl.pem\"]\ncrl_poll_interval_ms = 1000"),
        )
        .unwrap();
        assert_eq!(v.identity.crls().revoked_count(), 1);
        assert_eq!(
            v.identity.crl_files(),
            [dir.path().join("certs/ca.crl.pem")],
            "relative to the config file"
        );
        assert_eq!(v.crl_poll_interval, std::time::Duration::from_secs(1));
        std::fs::write(dir.path().join("certs/broken.crl"), "garbage").unwrap();
        let cases = [
            (tls("identity = \"dns\""), "tls.identity"),
            (tls("identity = \"san-uri\""), "tls.spiffe_trust_domain"),
            (
                tls("spiffe_trust_domain = \"factory.example\""),
                "tls.spiffe_trust_domain",
            ),
            (
                tls("identity = \"san-uri\"\nspiffe_trust_domain = \"Bad Domain\""),
                "tls.spiffe_trust_domain",
            ),
            (tls("allowed_sites = []"), "tls.allowed_sites"),
            (
                tls("allowed_sites = [\"ok\", \"(\"]"),
                "tls.allowed_sites[1]",
            ),
            (
                tls("crl_files = [\"certs/ca.crl.pem\", \"certs/none.crl\"]"),
                "tls.crl_files[1]",
            ),
            (
                tls("crl_files = [\"certs/broken.crl\"]"),
                "tls.crl_files[0]",
            ),
            (tls("crl_poll_interval_ms = 0"), "tls.crl_poll_interval_ms"),
            (tls("crl_poll_interval = 5"), "crl_poll_interval"),
        ];
        for (text, field) in cases {
            let e = parse(&path, &text).expect_err(field).to_string();
            assert!(e.contains(field), "{field}: {e}");
            assert!(e.contains("hub.toml"), "{field}: {e}");
        }
    }

    #[test]
    fn each_validation_rule_names_its_field() {
        let dir = example_dir();
        let good = std::fs::read_to_string(dir.path().join("hub.toml")).unwrap();
        let path = dir.path().join("hub.toml");
        let cases = [
            (
                good.replace("hub_id = \"hub-1\"", "hub_id = \"\""),
                "hub_id",
            ),
            (good.replace("0.0.0.0:4433", "0.0.0.0"), "listen"),
            (
                good.replace("certs/ca.pem", "certs/none.pem"),
                "tls.ca_cert",
            ),
            (good.replace("certs/hub.key", "certs/none.key"), "tls.key"),
            (
                good.replace("policy = \"default\"", "policy = \"mirror\""),
                "replication.policy",
            ),
            (
                good.replace("policy = \"default\"", "policy = \"identity\""),
                "replication.identity_allow",
            ),
            (
                good.replace("separator = \".\"", "separator = \"/\""),
                "replication.separator",
            ),
            (
                good.replace("separator = \".\"", "separator = \"_\""),
                "replication.separator",
            ),
            (
                good.replace("separator = \".\"", "separator = \"--\""),
                "replication.separator",
            ),
            (
                good.replace("alias = \"analytics\"", "alias = \"central\""),
                "clusters[1].alias",
            ),
            (
                good.replace("alias = \"analytics\"", "alias = \"a.b\""),
                "clusters[1].alias",
            ),
            (
                good.replace(
                    "replication_factor = 3\ntransaction",
                    "replication_factor = 0\ntransaction",
                ),
                "clusters[0].replication_factor",
            ),
            (
                good.replace("topics = \"alarms\"", "topics = \"(\""),
                "routes[0].topics",
            ),
            (
                good.replace("sites = \"plant-.*\"", "sites = \"[\""),
                "routes[0].sites",
            ),
            (
                good.replace("cluster = \"analytics\"", "cluster = \"nowhere\""),
                "routes[0].cluster",
            ),
            (
                good.replace("group_id = \"edge-replicator\"", "group_id = \"a b\""),
                "group_id",
            ),
            (
                good.replace("writer_queue_bytes = 33554432", "writer_queue_bytes = 0"),
                "limits",
            ),
            (
                good.replace("[limits]", "[limits]\nunknown_knob = 1"),
                "unknown_knob",
            ),
            (
                good.replace(
                    "[limits]",
                    "[limits]\noffset_index_max_entries_per_partition = 0",
                ),
                "limits.offset_index_max_entries_per_partition",
            ),
            (
                good.replace("[limits]", "[limits]\noffset_index_retention_ms = 0"),
                "limits.offset_index_retention_ms",
            ),
            (
                good.replace("[limits]", "[limits]\nconnection_inbound_bytes = 1000000"),
                "limits.connection_inbound_bytes",
            ),
            (
                good.replace("[limits]", "[limits]\nsite_inbound_bytes = 9000000"),
                "limits.site_inbound_bytes",
            ),
            (
                good.replace("[limits]", "[limits]\ninbound_bytes = 9000000"),
                "limits.inbound_bytes",
            ),
            (
                good.replace("[limits]", "[limits]\nhello_timeout_ms = 0"),
                "limits.hello_timeout_ms",
            ),
            (
                good.replace("[limits]", "[limits]\nmax_partitions_per_topic = 20000"),
                "limits.max_partitions_per_topic",
            ),
            (
                good.replace("[limits]", "[limits]\nmax_connections_per_site = 0"),
                "limits.max_connections",
            ),
            (good.replace("shards = 64", "shards = 0"), "fleet.shards"),
            (
                good.replace("writers_per_cluster = 0", "writers_per_cluster = 1000"),
                "fleet.writers_per_cluster",
            ),
            (
                good.replace("transaction_linger_ms = 0", "transaction_linger_ms = 60000"),
                "fleet.transaction_linger_ms",
            ),
            (
                good.replace(
                    "heartbeat_max_delay_ms = 5000",
                    "heartbeat_max_delay_ms = 600000",
                ),
                "fleet.heartbeat_max_delay_ms",
            ),
            (
                good.replace("session_timeout_ms = 10000", "session_timeout_ms = 100"),
                "fleet.session_timeout_ms",
            ),
            (
                good.replace("\"hub-1.example.net:4433\"", "\"hub1\""),
                "fleet.advertised_addresses[0]",
            ),
        ];
        for (text, field) in cases {
            let e = parse(&path, &text).expect_err(field).to_string();
            assert!(e.contains(field), "{field}: {e}");
            assert!(e.contains("hub.toml"), "{field}: {e}");
        }
    }
}
