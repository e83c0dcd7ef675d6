//! `er-service`: what the two binaries, `edge-agent` and `hub`, share around their own work.
//!
//! * [`config`]: reading a TOML config file into its serde schema, and the checks every
//!   validator uses; each error names the file and the dotted field at fault.
//! * [`logging`]: the tracing subscriber both binaries install (`--log-format text|json`).
//! * [`shutdown`]: the signals that stop a binary gracefully.
//!
//! Nothing here knows about Kafka, QUIC or plugins; the transport and the HTTP endpoint live in
//! `er-net`.

pub mod config;
pub mod logging;
pub mod shutdown;
