//! QUIC endpoints with mutual TLS shared by `edge-agent` and `hub`, site identity from client
//! certificates, dev certificate generation, and the HTTP endpoint both serve: Prometheus
//! metrics, health, readiness and status ([`metrics::serve_prometheus`], [`status`]).
//!
//! The hub calls [`server_endpoint_with_policy`] and decides who connected, and whether they may
//! write, with [`admit`] (then [`watch_admission`] for the life of the session); the agent
//! calls [`client_endpoint`] and then `endpoint.connect_with(client_config, addr, server_name)` (or
//! `endpoint.connect(addr, server_name)`, the returned config is also the endpoint's default).
//! The site alias is taken from the certificate the hub verified, never from what the agent says
//! (ARCHITECTURE.md, design invariant 6: site isolation).

#![forbid(unsafe_code)]

mod crl;
pub mod devcerts;
mod error;
mod identity;
pub mod metrics;
mod pem;
pub mod signing;
pub mod status;
pub mod status_client;
mod transport;
mod untrusted;
pub mod wire;

pub use crl::CrlSet;
pub use error::NetError;
pub use identity::{
    AdmissionError, IdentityPolicy, IdentitySettings, IdentitySource, MAX_SITE_ALIAS_LEN,
    SPIFFE_SITE_PATH, SiteIdentity, admit, certificate_not_after, peer_site_alias,
    site_alias_from_cert_der, validate_site_alias, watch_admission,
};
pub use transport::{
    CRL_POLL_INTERVAL, CrlReload, CrlReloader, TicketGate, TransportTuning,
    UDP_SOCKET_BUFFER_BYTES, client_config, client_endpoint, client_endpoint_gated,
    client_endpoint_without_cert, client_only_endpoint, handshake_refusal_reason, server_endpoint,
    server_endpoint_with_policy,
};
pub use untrusted::{UNTRUSTED_LOG_CHARS, Untrusted};

use std::path::PathBuf;

/// ALPN protocol id both sides require; a peer speaking anything else fails the handshake.
pub const ALPN: &[u8] = b"edge-replicator/1";

/// How many probe intervals a connection attempt waits at most for the hub's first answer
/// after attempts in a row got none: one, two, then this many. A hub restarting under a whole
/// fleet answers late, and sites that gave up after one interval flooded it with handshakes
/// nobody waited for. Shared by the agent and the fleet simulator.
pub const MAX_ANSWER_WAIT_FACTOR: u64 = 3;

/// PEM files one side of the link needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) the peer's certificate must chain to.
    pub ca_cert: PathBuf,
    /// This side's certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key of `cert` (PKCS#8, SEC1 or PKCS#1 PEM).
    pub key: PathBuf,
}
