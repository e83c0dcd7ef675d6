//! The integration tests of er-tests as one binary (`--test it`), one module per area.
//!
//! One binary links once instead of once per area, and starts the shared Kafka brokers once per
//! run (`er_tests::kafka::shared`). Run one area with a filter on its module path,
//! `cargo test -p er-tests --test it -- chaos::` (a filter matches anywhere in the name:
//! `e2e::` runs every `*_e2e` module too), one test with `--exact` and its full path:
//! `cargo test -p er-tests --test it -- --exact e2e::replicates_100k_records_byte_exact_and_in_order`.
//! Helpers that more than one module uses live in the `er_tests` library or in [`common`].

mod acl_sync;
mod bandwidth;
mod chaos;
mod checkpoints_e2e;
mod common;
mod console_e2e;
mod downlink_e2e;
mod e2e;
mod fleet_e2e;
mod fleet_hubs;
mod group_offsets;
mod harness;
mod hostile;
mod link_changes;
mod metrics_e2e;
mod mm2_compat;
mod offset_index;
mod outage;
mod plugin_rollout;
mod plugins_e2e;
mod polyglot_e2e;
mod prometheus_e2e;
mod proxy;
mod reload;
mod transactional_source;
