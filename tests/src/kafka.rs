//! Real Apache Kafka for tests: single-node KRaft brokers from the Maven Central jars.
//!
//! ```no_run
//! let k = er_tests::kafka::shared();           // "edge" + "central", started once per process
//! let topic = er_tests::unique_name("orders");
//! # let _ = (k.edge.as_str(), k.central.as_str(), topic);
//! let mut node = er_tests::kafka::KafkaNode::start("chaos-central").unwrap(); // a private one
//! node.restart().unwrap();
//! ```
//!
//! The jars come from `tools/kafka/pom.xml` (see [`dist`]); set `ER_EDGE_BOOTSTRAP` and
//! `ER_CENTRAL_BOOTSTRAP` (printed by `cargo xtask kafka up`) to reuse running brokers.

pub mod dist;
mod node;
pub mod proc;
mod shared;

pub use dist::{cache_dir, classpath, ensure_libs, kafka_version, libs_dir};
pub use node::{DetachedNode, KafkaNode, NodeOptions};
pub use shared::{SharedKafka, shared};
