//! Kafka admin calls the `rdkafka` crate does not wrap, made through librdkafka's C API: topic
//! ACLs (DescribeAcls, CreateAcls) for MirrorMaker-2-style ACL sync, and IncrementalAlterConfigs
//! (KIP-339) for topic config sync. Also [`message`]: Kafka messages as `er_protocol` batch
//! records, for the agent's reader and the hub's downlink reader alike.
//!
//! Plain data in and out: no C type crosses this crate's boundary. Every call blocks its thread
//! until the cluster answers or `timeout` (plus a few seconds of grace) passes, so call it from a
//! blocking thread (`tokio::task::spawn_blocking`), never from an async task.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use rdkafka::ClientConfig;
//! use rdkafka::admin::AdminClient;
//! use rdkafka::client::DefaultClientContext;
//!
//! let admin: AdminClient<DefaultClientContext> =
//!     ClientConfig::new().set("bootstrap.servers", "edge:9092").create()?;
//! match er_kafka_admin::describe_topic_acls(&admin, Duration::from_secs(30)) {
//!     Ok(acls) => acls.iter().for_each(|acl| println!("{acl}")),
//!     Err(e) if e.is_security_disabled() => println!("the edge cluster has no authorizer"),
//!     Err(e) => return Err(e.into()),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! All `unsafe` code lives in `ffi.rs`.

use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::ClientContext;
use rdkafka::error::RDKafkaErrorCode;

mod acl;
mod config;
#[allow(unsafe_code)]
mod ffi;
pub mod message;

pub use acl::{AclOperation, AclPermission, PatternType, TopicAcl, UnknownName};
pub use config::ConfigOp;

/// Each topic of an incremental alter with its result (the broker's message on refusal).
pub type AlterResults = Vec<(String, Result<(), String>)>;

/// A request that failed as a whole. Failures of single items (one ACL binding, one topic's
/// configs) are in the results instead.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A name handed in cannot reach librdkafka: C strings end at the first NUL byte.
    #[error("{op}: {value:?} holds a NUL byte")]
    NulByte {
        /// What was being done, e.g. `altering topic configs`.
        op: &'static str,
        /// The name.
        value: String,
    },
    /// librdkafka refused the request before sending it.
    #[error("{op}: {message}")]
    Rejected {
        /// What was being done.
        op: &'static str,
        /// librdkafka's reason.
        message: String,
    },
    /// The cluster (or librdkafka, e.g. on a timeout) answered the request with an error, e.g.
    /// `describing ACLs: Broker: Security features are disabled: broker 1 has no authorizer
    /// (authorizer.class.name is empty) (SECURITY_DISABLED)`.
    #[error("{op}: {message} ({code_name})")]
    Failed {
        /// What was being done.
        op: &'static str,
        /// The error code, for callers to match on.
        code: RDKafkaErrorCode,
        /// librdkafka's name of the code, e.g. `SECURITY_DISABLED`, `_TIMED_OUT`.
        code_name: String,
        /// The broker's or librdkafka's message.
        message: String,
    },
    /// No answer came at all (librdkafka answers a timed-out request itself, so it is stuck).
    #[error("{op}: no answer within {waited:?}")]
    NoAnswer {
        /// What was being done.
        op: &'static str,
        /// How long it waited.
        waited: Duration,
    },
    /// librdkafka answered with something other than this request's result.
    #[error("{op}: unexpected answer from librdkafka: {message}")]
    Unexpected {
        /// What was being done.
        op: &'static str,
        /// What was unexpected.
        message: String,
    },
}

impl AdminError {
    /// The Kafka or librdkafka error code of a [`AdminError::Failed`] request.
    pub fn code(&self) -> Option<RDKafkaErrorCode> {
        match self {
            AdminError::Failed { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the cluster has no authorizer configured (so it has no ACLs to read or set).
    pub fn is_security_disabled(&self) -> bool {
        self.code() == Some(RDKafkaErrorCode::SecurityDisabled)
    }
}

/// Every ACL binding on TOPIC resources of the cluster: DescribeAcls with the filter resource
/// TOPIC, any name, any pattern type, any principal, host, operation and permission. Blocking.
///
/// Needs DESCRIBE on the CLUSTER resource; without it the error's [`AdminError::code`] is
/// `ClusterAuthorizationFailed`. A cluster without an authorizer answers with
/// [`AdminError::is_security_disabled`]. librdkafka reports both as an empty list, so an empty
/// list costs two more requests (DescribeCluster, the broker's `authorizer.class.name`) that
/// tell them from a cluster with no topic ACLs, within what is left of `timeout`. A binding
/// whose pattern type or permission librdkafka cannot read (newer than it) is left out with a
/// warning.
pub fn describe_topic_acls<C: ClientContext>(
    client: &AdminClient<C>,
    timeout: Duration,
) -> Result<Vec<TopicAcl>, AdminError> {
    ffi::describe_topic_acls(client, timeout)
}

/// Creates each binding on its TOPIC resource (CreateAcls, one request). One result per
/// binding, in the order given; a binding librdkafka refuses to send (a filter-only value such
/// as pattern `MATCH` or operation `ANY`, a NUL byte) fails alone, without a request. Creating
/// a binding that exists succeeds. Blocking.
///
/// Needs ALTER on the CLUSTER resource.
pub fn create_topic_acls<C: ClientContext>(
    client: &AdminClient<C>,
    acls: &[TopicAcl],
    timeout: Duration,
) -> Result<Vec<Result<(), String>>, AdminError> {
    ffi::create_topic_acls(client, acls, timeout)
}

/// Applies `changes` per topic with Kafka's IncrementalAlterConfigs (KIP-339: only the named
/// configs change, unlike the legacy AlterConfigs the `rdkafka` crate wraps, which replaces a
/// topic's whole set and would drop settings an operator made). One request; each topic's
/// result as the broker names it. Blocking.
pub fn incremental_alter_topic_configs<C: ClientContext>(
    client: &AdminClient<C>,
    changes: &[(String, Vec<ConfigOp>)],
    timeout: Duration,
) -> Result<AlterResults, AdminError> {
    ffi::incremental_alter_topic_configs(client, changes, timeout)
}
