//! `er-tests`: the edge-replicator test harness.
//!
//! * [`kafka`]: real Apache Kafka brokers (single-node KRaft) started from the Maven Central jars on
//!   free loopback ports, tied to the test process ([`kafka::KafkaNode`], [`kafka::shared`]).
//! * [`client`]: small rdkafka helpers (create topics, produce, consume, watermarks).
//! * [`delivery`]: checking that every produced record arrived exactly once, in order per
//!   partition.
//! * [`fleet`]: many simulated sites in one process against a real hub, and the exactly-once
//!   check of all they sent.
//! * [`prom`]: scraping and reading the binaries' Prometheus endpoints.
//! * [`replicator`]: the real `hub` and `edge-agent` binaries: configs ([`replicator::HubSetup`],
//!   [`replicator::AgentSetup`]), a dev PKI, processes and their logs.
//! * [`rig`]: what most end-to-end tests start: [`rig::Rig`], one hub and its agents with their
//!   PKI and work dir, from one builder (`Rig::builder().agent(&site, "orders-.*").start()?`).
//! * [`proxied`]: one site replicating through a link proxy, for tests that change the link.
//! * [`unique_name`]: collision-free topic / group / transactional-id names.
//!
//! Each test process starts its own "edge" and "central" brokers on first use of
//! [`kafka::shared`] (a few seconds, more when the machine is busy) and kills them when it exits.
//! To pay that once per session instead (e.g. with cargo-nextest, which runs every test in its
//! own process): `eval "$(cargo xtask kafka up)"`, then tests attach via `ER_EDGE_BOOTSTRAP` /
//! `ER_CENTRAL_BOOTSTRAP`; `cargo xtask kafka down` stops them.
//!
//! Environment: `ER_CACHE_DIR` (jars, run dirs; default `~/.cache/edge-replicator`),
//! `ER_KAFKA_HEAP` (default `1g`), `ER_KAFKA_START_TIMEOUT_SECS` (default 60).

pub mod client;
pub mod delivery;
pub mod fleet;
pub mod kafka;
pub mod oracle;
pub mod prom;
pub mod proxied;
pub mod proxy;
pub mod replicator;
pub mod rig;

use std::sync::atomic::{AtomicU64, Ordering};

/// A name unique per call, per test process and per run: `prefix-<pid>-<counter>-<random>`.
///
/// Only uses characters legal in Kafka topic names (`[a-zA-Z0-9._-]`), so it can be used for
/// topics, consumer groups and transactional ids alike (as long as `prefix` is legal too).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let r: u32 = rand::random();
    format!("{prefix}-{}-{n}-{:06x}", std::process::id(), r & 0xff_ffff)
}
