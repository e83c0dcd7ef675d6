//! Frame types exchanged between edge agent and hub, and the channels they travel on.

use std::fmt;

use bytes::Bytes;

/// Highest (and current) protocol version spoken by this crate.
pub const PROTOCOL_VERSION: u16 = 5;
/// Lowest protocol version this crate still accepts (version 2 added the heartbeat target to
/// Welcome and the GroupOffsets frame; version 3 the Stopped frame, which a hub sends only to
/// agents of version 3 or later).
pub const MIN_PROTOCOL_VERSION: u16 = 2;
/// Longest `agent_version` or `site_claim` a Hello may carry, in bytes. Both are free text from
/// an unauthenticated-as-yet peer that ends up in logs; a site alias is at most 64 bytes.
pub const MAX_HELLO_FIELD_BYTES: usize = 256;
/// Default cap on one frame's length (type byte + body), checked from the length prefix.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16 * 1024 * 1024;
/// Most addresses one [`Frame::Redirect`] may carry.
pub const MAX_REDIRECT_ADDRESSES: usize = 16;
/// Longest address (`host:port`, in bytes) a [`Frame::Redirect`] may carry.
pub const MAX_REDIRECT_ADDRESS_BYTES: usize = 255;
/// Longest reason (in bytes) a [`Frame::Redirect`] may carry.
pub const MAX_REDIRECT_REASON_BYTES: usize = 1024;
/// First protocol version whose agents understand [`Frame::Stopped`].
pub const STOPPED_VERSION: u16 = 3;
/// Longest reason (in bytes) a [`Frame::Stopped`] may carry.
pub const MAX_STOPPED_REASON_BYTES: usize = 1024;
/// First protocol version whose hubs take [`Frame::TopicMetadata`].
pub const TOPIC_METADATA_VERSION: u16 = 3;
/// Most configs one topic of a [`Frame::TopicMetadata`] may carry.
pub const MAX_TOPIC_CONFIGS: usize = 128;
/// Longest config name (in bytes) a [`Frame::TopicMetadata`] may carry.
pub const MAX_CONFIG_NAME_BYTES: usize = 255;
/// Longest config value (in bytes) a [`Frame::TopicMetadata`] may carry.
pub const MAX_CONFIG_VALUE_BYTES: usize = 4096;
/// First protocol version whose hubs take [`Frame::TopicAcls`].
pub const TOPIC_ACLS_VERSION: u16 = 4;
/// Longest principal (`User:alice`, in bytes) a [`Frame::TopicAcls`] may carry.
pub const MAX_ACL_PRINCIPAL_BYTES: usize = 255;
/// Longest host (in bytes) a [`Frame::TopicAcls`] may carry.
pub const MAX_ACL_HOST_BYTES: usize = 255;
/// Longest message of an Error or GoAway frame the hub sends, in bytes: the text may quote what
/// the peer sent (a topic name of 65,535 bytes, say), and is cut to this.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes at a char boundary, marked with "..." when cut.
pub fn cap_text(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str("...");
    text
}

/// A source (edge) topic partition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Ord, PartialOrd)]
pub struct TopicPartition {
    /// Topic name as seen at the edge.
    pub topic: String,
    /// Partition number, never negative on the wire.
    pub partition: i32,
}

impl TopicPartition {
    /// Convenience constructor.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Where replication of one source partition resumes: the next source offset to send.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// The source partition.
    pub tp: TopicPartition,
    /// First source offset the hub has not committed yet.
    pub next_offset: i64,
}

/// Committed offsets of one edge consumer group (the next offset it will consume, per partition).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupOffsets {
    /// Consumer group id at the edge.
    pub group: String,
    /// Committed offset per replicated source partition (never negative).
    pub offsets: Vec<Position>,
}

/// An edge topic as the agent found it at discovery: its partition count and the configs set on
/// it (neither Kafka's defaults nor the edge brokers' static settings).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TopicMetadata {
    /// Topic name at the edge.
    pub topic: String,
    /// Partition count at the edge (at least 1).
    pub partitions: i32,
    /// `(name, value)` of each config set on the topic or by the edge brokers' dynamic
    /// settings (at most [`MAX_TOPIC_CONFIGS`], names of at most [`MAX_CONFIG_NAME_BYTES`],
    /// values of at most [`MAX_CONFIG_VALUE_BYTES`]).
    pub configs: Vec<(String, String)>,
}

impl TopicMetadata {
    /// Bytes this topic takes in a [`Frame::TopicMetadata`].
    pub fn encoded_len(&self) -> usize {
        2 + self.topic.len()
            + 4
            + 2
            + self
                .configs
                .iter()
                .map(|(n, v)| 4 + n.len() + v.len())
                .sum::<usize>()
    }
}

/// An ACL binding on an edge topic as the agent reports it: literal on one topic's name, with
/// Kafka's wire codes for the operation and permission (`AclOperation.code()`: 2 ALL, 3 READ,
/// 4 WRITE, 5 CREATE, 6 DELETE, 7 ALTER, 8 DESCRIBE, 9 CLUSTER_ACTION, 10 DESCRIBE_CONFIGS,
/// 11 ALTER_CONFIGS, 12 IDEMPOTENT_WRITE; `AclPermissionType.code()`: 2 DENY, 3 ALLOW).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicAcl {
    /// Topic name at the edge.
    pub topic: String,
    /// Who it applies to, e.g. `User:alice` (1 to [`MAX_ACL_PRINCIPAL_BYTES`]).
    pub principal: String,
    /// Client host, `*` for any (1 to [`MAX_ACL_HOST_BYTES`]).
    pub host: String,
    /// Kafka's operation code (2..=12).
    pub operation: u8,
    /// Kafka's permission code (2 deny, 3 allow).
    pub permission: u8,
}

impl TopicAcl {
    /// Bytes this binding takes in a [`Frame::TopicAcls`].
    pub fn encoded_len(&self) -> usize {
        2 + self.topic.len() + 2 + self.principal.len() + 2 + self.host.len() + 2
    }
}

/// Checks an ACL binding against the protocol's caps (the decoder's, so a frame the agent
/// sends is one the hub reads). On error, returns the field at fault and what is wrong.
pub(crate) fn check_topic_acl(a: &TopicAcl) -> Result<(), (&'static str, String)> {
    if a.principal.is_empty() || a.principal.len() > MAX_ACL_PRINCIPAL_BYTES {
        return Err((
            "acls.principal",
            format!(
                "is {} bytes, not 1..={MAX_ACL_PRINCIPAL_BYTES}",
                a.principal.len()
            ),
        ));
    }
    if a.host.is_empty() || a.host.len() > MAX_ACL_HOST_BYTES {
        return Err((
            "acls.host",
            format!("is {} bytes, not 1..={MAX_ACL_HOST_BYTES}", a.host.len()),
        ));
    }
    if !(2..=12).contains(&a.operation) {
        return Err((
            "acls.operation",
            format!("is {}, not a Kafka operation code (2..=12)", a.operation),
        ));
    }
    if !(2..=3).contains(&a.permission) {
        return Err((
            "acls.permission",
            format!("is {}, not 2 (deny) or 3 (allow)", a.permission),
        ));
    }
    Ok(())
}

/// What only the agent knows about its site, for the hub's fleet status: sent on the control
/// channel every few seconds after Welcome. Counts are cumulative since the agent started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SiteReport {
    /// Records behind at the edge (high watermarks minus committed positions, summed over the
    /// replicated partitions); `None` while unknown. Never negative.
    pub lag_records: Option<i64>,
    /// Records edge retention deleted before they were replicated.
    pub retention_gap_records: u64,
    /// Records a plugin failed (skipped or dead-lettered by the route's policy).
    pub plugin_errors: u64,
    /// Times a plugin route stopped on a failure.
    pub route_stops: u64,
}

/// Compression applied to a batch's record payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Codec {
    /// Payload is the encoded records as-is.
    None = 0,
    /// Payload is one zstd frame of the encoded records.
    Zstd = 1,
}

impl Codec {
    /// Parses the wire byte; `None` for an unknown codec.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Codec::None),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// Metadata of a batch of records from one source partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Per-partition sequence number, strictly increasing within a connection.
    pub seq: u64,
    /// Source partition the records were read from.
    pub tp: TopicPartition,
    /// Number of partitions of the source topic when the batch was read.
    pub partition_count: i32,
    /// First source offset covered by this batch.
    pub first_offset: i64,
    /// Source position after this batch (exclusive end of the covered offset range).
    pub next_offset: i64,
    /// Number of records encoded in the payload (may be 0).
    pub record_count: u32,
    /// Compression of the payload.
    pub codec: Codec,
    /// Length of the encoded records before compression.
    pub uncompressed_len: u32,
}

/// A batch: header plus encoded (and possibly compressed) records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Batch metadata.
    pub header: BatchHeader,
    /// Encoded records, compressed per `header.codec`.
    pub payload: Bytes,
}

/// Error codes carried by [`Frame::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The peer violated the protocol.
    Protocol,
    /// The peer's identity is not allowed to do this.
    Unauthorized,
    /// No protocol version both sides speak.
    VersionMismatch,
    /// Internal failure on the sender's side.
    Internal,
    /// The sender is overloaded; retry later.
    Overloaded,
    /// A batch was malformed or too large.
    BadBatch,
    /// A code this version does not know (forward compatibility).
    Unknown(u16),
}

impl ErrorCode {
    /// Wire value of this code.
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::Protocol => 1,
            ErrorCode::Unauthorized => 2,
            ErrorCode::VersionMismatch => 3,
            ErrorCode::Internal => 4,
            ErrorCode::Overloaded => 5,
            ErrorCode::BadBatch => 6,
            ErrorCode::Unknown(v) => v,
        }
    }

    /// Parses a wire value; unknown values map to [`ErrorCode::Unknown`].
    pub fn from_u16(v: u16) -> Self {
        match v {
            1 => ErrorCode::Protocol,
            2 => ErrorCode::Unauthorized,
            3 => ErrorCode::VersionMismatch,
            4 => ErrorCode::Internal,
            5 => ErrorCode::Overloaded,
            6 => ErrorCode::BadBatch,
            v => ErrorCode::Unknown(v),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Unknown(v) => write!(f, "unknown({v})"),
            other => fmt::Debug::fmt(other, f),
        }
    }
}

/// One protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Agent -> hub, first frame on the control channel.
    Hello {
        /// Lowest protocol version the agent speaks.
        min_version: u16,
        /// Highest protocol version the agent speaks.
        max_version: u16,
        /// Agent software version, for logs.
        agent_version: String,
        /// Site alias the agent believes it is (the certificate decides).
        site_claim: String,
    },
    /// Hub -> agent, answer to Hello: negotiated version and resume positions.
    Welcome {
        /// Negotiated protocol version.
        version: u16,
        /// Site alias taken from the agent's certificate.
        site: String,
        /// Identifier of the hub instance, for logs.
        hub_id: String,
        /// Resume positions of every partition the hub knows for this site.
        positions: Vec<Position>,
        /// Largest batch payload the hub accepts.
        max_batch_bytes: u32,
        /// Alias of the central cluster the site's heartbeats go to: the target alias the agent
        /// writes into its MM2 heartbeat records.
        heartbeat_target: String,
    },
    /// Agent -> hub, records of one source partition.
    Batch(Batch),
    /// Hub -> agent, a batch is committed centrally.
    Ack {
        /// Sequence number of the committed batch.
        seq: u64,
        /// Source partition of the committed batch.
        tp: TopicPartition,
        /// Committed source position (the batch's next_offset).
        next_offset: i64,
    },
    /// Hub -> agent, on the partition's channel, instead of the Ack of batch `seq` (protocol
    /// version 3): the record at `offset` can never be written centrally, and the hub is set
    /// to stop the partition rather than dead-letter such a record. The batch's records before
    /// `offset` are committed (the hub's position is `offset`); the hub drops every later batch
    /// of the partition in this session, and the agent stops reading it until it reconnects.
    Stopped {
        /// Sequence number of the batch holding the record.
        seq: u64,
        /// The source partition.
        tp: TopicPartition,
        /// Source offset of the record: the committed position, where a next session resumes.
        offset: i64,
        /// Why the record cannot be written (at most [`MAX_STOPPED_REASON_BYTES`]).
        reason: String,
    },
    /// Liveness and RTT probe; the peer answers with Pong.
    Ping {
        /// Echoed back in the Pong.
        nonce: u64,
        /// Sender's clock in microseconds since connection start, echoed back.
        sent_at_micros: u64,
    },
    /// Answer to Ping, echoing its fields.
    Pong {
        /// The Ping's nonce.
        nonce: u64,
        /// The Ping's timestamp.
        sent_at_micros: u64,
    },
    /// Fatal error; the sender closes the connection after it.
    Error {
        /// Machine-readable category.
        code: ErrorCode,
        /// Human-readable description.
        message: String,
    },
    /// Graceful shutdown notice: no new batches, reconnect later.
    GoAway {
        /// Why the sender is going away.
        reason: String,
    },
    /// Agent -> hub, control channel: committed offsets of edge consumer groups. Each frame
    /// replaces what the hub knew of the groups it names (a large report spans several frames,
    /// each holding whole groups).
    GroupOffsets {
        /// The groups and their committed offsets.
        groups: Vec<GroupOffsets>,
    },
    /// Agent -> hub, control channel, after Welcome (protocol version 3): edge topics with
    /// their partition counts and configs, so the hub creates and grows their remote topics and
    /// keeps their configs in step before and without records. Each frame replaces what the
    /// hub knew of the topics it names (a long list spans several frames).
    TopicMetadata {
        /// The topics.
        topics: Vec<TopicMetadata>,
    },
    /// Agent -> hub, control channel, after Welcome (protocol version 4): the literal ACL
    /// bindings on edge topics the agent replicates, for MM2-style ACL sync. Each frame
    /// carries every binding of the topics it names (a long list spans several frames, each
    /// holding whole topics).
    TopicAcls {
        /// The bindings.
        acls: Vec<TopicAcl>,
    },
    /// Agent -> hub, control channel, after Welcome: the agent's own figures for the hub's
    /// status (edge lag, retention gaps, plugin failures).
    SiteReport(SiteReport),
    /// Hub -> agent, control channel, instead of Welcome: this hub does not serve the site;
    /// connect to one of `addresses` (in order) instead. The hub closes after it.
    Redirect {
        /// `host:port` of the hubs to try, best first (1 to [`MAX_REDIRECT_ADDRESSES`], each
        /// at most [`MAX_REDIRECT_ADDRESS_BYTES`]).
        addresses: Vec<String>,
        /// Why, for logs (at most [`MAX_REDIRECT_REASON_BYTES`]).
        reason: String,
    },
    /// Hub -> agent, control channel, after Welcome (protocol version 5): central topics this
    /// site receives, named as the edge sees them, with their partition counts and the configs
    /// the edge topic is created with. Later offers name topics created or grown since (at
    /// most [`crate::MAX_DOWNLINK_TOPICS`] per connection).
    DownlinkOffer {
        /// The topics (an empty list: nothing comes down on this connection).
        topics: Vec<TopicMetadata>,
    },
    /// Agent -> hub, control channel, answering each DownlinkOffer: where each newly offered
    /// partition it takes resumes (the next central offset the edge has not committed). A
    /// partition it leaves out receives nothing on this connection.
    DownlinkStart {
        /// Resume positions, keyed on the edge topic names of the offer.
        positions: Vec<Position>,
    },
    /// Hub -> agent, on the downlink channel: central records of one offered partition, in
    /// offset order (the header's `seq` counts the connection's downlink batches).
    DownlinkBatch(Batch),
    /// Agent -> hub, control channel: the edge committed this partition up to `next_offset`
    /// (its records and its position, in one transaction).
    DownlinkAck {
        /// The partition, by its edge topic name.
        tp: TopicPartition,
        /// Next central offset the edge has not committed.
        next_offset: i64,
    },
    /// Hub -> agent, on the downlink channel (protocol version 5): a plugin version the site
    /// is to run, signed by the operator; the agent checks hash and signature before using it.
    PluginOffer(PluginOffer),
    /// Agent -> hub, control channel (protocol version 5): counters of the hub-distributed
    /// plugin versions the site runs (at most [`MAX_PLUGIN_RUNS`]).
    PluginReport {
        /// What plugins the agent can run.
        platform: PluginPlatform,
        /// One entry per plugin name.
        runs: Vec<PluginRun>,
    },
}

/// One plugin version's counters at a site, since it started running that version.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PluginRun {
    /// Plugin name (as the hub distributes it).
    pub name: String,
    /// Version the site runs.
    pub version: u64,
    /// Records given to it.
    pub records_in: u64,
    /// Records it failed.
    pub errors: u64,
    /// Records it dropped.
    pub dropped: u64,
}

/// A plugin version offered to a site ([`Frame::PluginOffer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginOffer {
    /// Plugin name (1 to [`MAX_PLUGIN_NAME_BYTES`], the routes' `hub = "<name>"`).
    pub name: String,
    /// Version (increases with each push of the name).
    pub version: u64,
    /// SHA-256 of `wasm`.
    pub sha256: [u8; 32],
    /// Signature over name, version and hash (at most [`MAX_PLUGIN_SIGNATURE_BYTES`]).
    pub signature: Bytes,
    /// The WebAssembly component, or a build of it precompiled for the agent's target.
    pub wasm: Bytes,
}

/// What plugins an agent can run: its target and whether it compiles `.wasm` itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PluginPlatform {
    /// `<arch>-<os>` of the agent build, e.g. `aarch64-linux` (at most [`MAX_PLUGIN_NAME_BYTES`]).
    pub target: String,
    /// Whether the agent has a plugin compiler; without one it runs only precompiled plugins
    /// for its target.
    pub compiler: bool,
}

/// Longest plugin name (in bytes) a [`Frame::PluginOffer`] or [`Frame::PluginReport`] may carry.
pub const MAX_PLUGIN_NAME_BYTES: usize = 128;
/// Longest signature (in bytes) a [`Frame::PluginOffer`] may carry.
pub const MAX_PLUGIN_SIGNATURE_BYTES: usize = 512;
/// Most plugins one [`Frame::PluginReport`] may carry.
pub const MAX_PLUGIN_RUNS: usize = 256;

/// Checks a plugin name: 1 to [`MAX_PLUGIN_NAME_BYTES`] bytes of ASCII letters, digits, `.`,
/// `_` and `-` (it names a file at the edge), not starting with `.`.
pub fn check_plugin_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_PLUGIN_NAME_BYTES {
        return Err(format!(
            "is {} bytes, not 1..={MAX_PLUGIN_NAME_BYTES}",
            name.len()
        ));
    }
    if name.starts_with('.')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "{:?} holds characters other than letters, digits, '.', '_' and '-', or starts with '.'",
            crate::frame::cap_text(name.to_owned(), 64)
        ));
    }
    Ok(())
}

/// Checks topic metadata against the protocol's caps (the decoder's, so a frame the agent
/// sends is one the hub reads): a partition count of at least 1, at most [`MAX_TOPIC_CONFIGS`]
/// configs per topic, names and values within [`MAX_CONFIG_NAME_BYTES`] and
/// [`MAX_CONFIG_VALUE_BYTES`]. On error, returns the field at fault and what is wrong.
pub(crate) fn check_topic_metadata(t: &TopicMetadata) -> Result<(), (&'static str, String)> {
    if t.partitions < 1 {
        return Err(("partitions", format!("is {}, less than 1", t.partitions)));
    }
    if t.configs.len() > MAX_TOPIC_CONFIGS {
        return Err((
            "configs.count",
            format!(
                "is {}, more than the limit of {MAX_TOPIC_CONFIGS}",
                t.configs.len()
            ),
        ));
    }
    for (name, value) in &t.configs {
        if name.is_empty() || name.len() > MAX_CONFIG_NAME_BYTES {
            return Err((
                "configs.name",
                format!("is {} bytes, not 1..={MAX_CONFIG_NAME_BYTES}", name.len()),
            ));
        }
        if value.len() > MAX_CONFIG_VALUE_BYTES {
            return Err((
                "configs.value",
                format!(
                    "of {name:?} is {} bytes, more than the limit of {MAX_CONFIG_VALUE_BYTES}",
                    value.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a redirect against the protocol's rules: 1 to [`MAX_REDIRECT_ADDRESSES`] addresses,
/// each non-empty and at most [`MAX_REDIRECT_ADDRESS_BYTES`], a reason of at most
/// [`MAX_REDIRECT_REASON_BYTES`]. On error, returns the field at fault and what is wrong.
pub(crate) fn check_redirect(addresses: &[String], reason: &str) -> Result<(), (String, String)> {
    if addresses.is_empty() {
        return Err(("addresses".into(), "lists no address".into()));
    }
    if addresses.len() > MAX_REDIRECT_ADDRESSES {
        return Err((
            "addresses".into(),
            format!(
                "lists {} addresses, more than the limit of {MAX_REDIRECT_ADDRESSES}",
                addresses.len()
            ),
        ));
    }
    for (i, a) in addresses.iter().enumerate() {
        if a.is_empty() {
            return Err((format!("addresses[{i}]"), "is empty".into()));
        }
        if a.len() > MAX_REDIRECT_ADDRESS_BYTES {
            return Err((
                format!("addresses[{i}]"),
                format!(
                    "is {} bytes, more than the limit of {MAX_REDIRECT_ADDRESS_BYTES}",
                    a.len()
                ),
            ));
        }
    }
    if reason.len() > MAX_REDIRECT_REASON_BYTES {
        return Err((
            "reason".into(),
            format!(
                "is {} bytes, more than the limit of {MAX_REDIRECT_REASON_BYTES}",
                reason.len()
            ),
        ));
    }
    Ok(())
}

/// Wire frame type bytes.
pub(crate) mod frame_type {
    pub const HELLO: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const BATCH: u8 = 3;
    pub const ACK: u8 = 4;
    pub const PING: u8 = 5;
    pub const PONG: u8 = 6;
    pub const ERROR: u8 = 7;
    pub const GO_AWAY: u8 = 8;
    pub const GROUP_OFFSETS: u8 = 9;
    pub const REDIRECT: u8 = 10;
    pub const SITE_REPORT: u8 = 11;
    pub const STOPPED: u8 = 12;
    pub const TOPIC_METADATA: u8 = 13;
    pub const TOPIC_ACLS: u8 = 14;
    pub const DOWNLINK_OFFER: u8 = 15;
    pub const DOWNLINK_START: u8 = 16;
    pub const DOWNLINK_BATCH: u8 = 17;
    pub const DOWNLINK_ACK: u8 = 18;
    pub const PLUGIN_OFFER: u8 = 19;
    pub const PLUGIN_REPORT: u8 = 20;
}

impl Frame {
    /// Short name of the frame kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Welcome { .. } => "Welcome",
            Frame::Batch(_) => "Batch",
            Frame::Ack { .. } => "Ack",
            Frame::Ping { .. } => "Ping",
            Frame::Pong { .. } => "Pong",
            Frame::Error { .. } => "Error",
            Frame::GoAway { .. } => "GoAway",
            Frame::GroupOffsets { .. } => "GroupOffsets",
            Frame::Redirect { .. } => "Redirect",
            Frame::SiteReport(_) => "SiteReport",
            Frame::Stopped { .. } => "Stopped",
            Frame::TopicMetadata { .. } => "TopicMetadata",
            Frame::TopicAcls { .. } => "TopicAcls",
            Frame::DownlinkOffer { .. } => "DownlinkOffer",
            Frame::DownlinkStart { .. } => "DownlinkStart",
            Frame::DownlinkBatch(_) => "DownlinkBatch",
            Frame::DownlinkAck { .. } => "DownlinkAck",
            Frame::PluginOffer(_) => "PluginOffer",
            Frame::PluginReport { .. } => "PluginReport",
        }
    }

    pub(crate) fn type_byte(&self) -> u8 {
        use frame_type::*;
        match self {
            Frame::Hello { .. } => HELLO,
            Frame::Welcome { .. } => WELCOME,
            Frame::Batch(_) => BATCH,
            Frame::Ack { .. } => ACK,
            Frame::Ping { .. } => PING,
            Frame::Pong { .. } => PONG,
            Frame::Error { .. } => ERROR,
            Frame::GoAway { .. } => GO_AWAY,
            Frame::GroupOffsets { .. } => GROUP_OFFSETS,
            Frame::Redirect { .. } => REDIRECT,
            Frame::SiteReport(_) => SITE_REPORT,
            Frame::Stopped { .. } => STOPPED,
            Frame::TopicMetadata { .. } => TOPIC_METADATA,
            Frame::TopicAcls { .. } => TOPIC_ACLS,
            Frame::DownlinkOffer { .. } => DOWNLINK_OFFER,
            Frame::DownlinkStart { .. } => DOWNLINK_START,
            Frame::DownlinkBatch(_) => DOWNLINK_BATCH,
            Frame::DownlinkAck { .. } => DOWNLINK_ACK,
            Frame::PluginOffer(_) => PLUGIN_OFFER,
            Frame::PluginReport { .. } => PLUGIN_REPORT,
        }
    }
}

/// Logical stream a frame travels on; drivers map each to a QUIC stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Handshake, pings, errors, go-away, redirects, group and site reports.
    Control,
    /// Batches and acks of one source partition (ordered).
    Partition(TopicPartition),
    /// What the hub pushes down: downlink batches (one stream the hub opens) and plugin
    /// offers (a stream each).
    Downlink,
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Channel::Control => f.write_str("control"),
            Channel::Partition(tp) => write!(f, "partition {tp}"),
            Channel::Downlink => f.write_str("downlink"),
        }
    }
}
