//! Sans-IO agent<->hub wire protocol: frames, codec, record batches, connection state machines,
//! and MirrorMaker 2 record formats and topic naming.
//!
//! Nothing here does I/O or reads the clock: drivers pass bytes and `Instant`s in and poll frames,
//! events and timeouts out (the quinn-proto style).

#![forbid(unsafe_code)]

pub mod agent;
pub mod codec;
pub mod downlink;
pub mod error;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod hub;
pub mod mm2;
pub mod policy;
pub mod records;

pub use agent::{AgentConn, AgentConnConfig, AgentEvent};
pub use codec::{
    FrameDecoder, decode_frame, decode_frame_bytes, encode_batch_prefix, encode_frame,
    try_encode_frame,
};
pub use downlink::{DOWNLINK_VERSION, MAX_DOWNLINK_TOPICS};
pub use error::{DecodeError, EncodeError, ProtocolError};
pub use frame::{
    Batch, BatchHeader, Channel, Codec, DEFAULT_MAX_FRAME_BYTES, ErrorCode, Frame, GroupOffsets,
    MAX_ACL_HOST_BYTES, MAX_ACL_PRINCIPAL_BYTES, MAX_CONFIG_NAME_BYTES, MAX_CONFIG_VALUE_BYTES,
    MAX_HELLO_FIELD_BYTES, MAX_PLUGIN_NAME_BYTES, MAX_PLUGIN_RUNS, MAX_PLUGIN_SIGNATURE_BYTES,
    MAX_REDIRECT_ADDRESS_BYTES, MAX_REDIRECT_ADDRESSES, MAX_REDIRECT_REASON_BYTES,
    MAX_STOPPED_REASON_BYTES, MAX_TOPIC_CONFIGS, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
    PluginOffer, PluginPlatform, PluginRun, Position, STOPPED_VERSION, SiteReport,
    TOPIC_ACLS_VERSION, TOPIC_METADATA_VERSION, TopicAcl, TopicMetadata, TopicPartition,
    check_plugin_name,
};
pub use hub::{HubConn, HubConnConfig, HubEvent};
pub use mm2::{Checkpoint, Heartbeat, Mm2Error, OffsetSync};
pub use policy::{
    HEARTBEATS_TOPIC, PolicyError, ReplicationPolicy, checkpoints_topic, is_internal_topic,
    offset_syncs_topic, validate_site_alias, validate_topic_name,
};
pub use records::{
    BatchBuilder, DecodedRecords, Headers, HeadersIter, POISON_KEY_MAX_BYTES, POISON_REASON_HEADER,
    RecordIter, RecordRef, RecordView, TimestampType,
};
