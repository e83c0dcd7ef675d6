//! The hub: accepts edge sites over QUIC/mTLS and writes their records to central Kafka clusters,
//! exactly once, through a fixed pool of transactional writers shared by every site; hubs of a
//! group divide the sites' shards through Kafka's consumer-group protocol.
//!
//! The binary (`hub --config hub.toml`) is a thin wrapper over [`Hub`]; the quickstart and the
//! tests run the same code in-process.

pub mod checkpoints;
pub mod config;
pub mod directory;
pub mod fleet;
pub mod kafka;
pub mod membership;
pub mod metrics;
pub mod offsets;
pub mod server;
pub mod shards;
pub mod sink;
pub mod sites;

use std::net::SocketAddr;

pub use server::Hub;
use tokio::sync::watch;

/// A bound but not yet serving hub: lets callers learn the UDP address before serving.
#[derive(Debug)]
pub struct BoundHub {
    config: config::Validated,
    endpoint: quinn::Endpoint,
}

impl BoundHub {
    /// Binds the QUIC endpoint.
    pub fn bind(config: config::Validated) -> anyhow::Result<Self> {
        let tls = er_net::TlsFiles {
            ca_cert: config.raw.tls.ca_cert.clone(),
            cert: config.raw.tls.cert.clone(),
            key: config.raw.tls.key.clone(),
        };
        let endpoint =
            er_net::server_endpoint(config.listen, &tls, &er_net::TransportTuning::default())?;
        Ok(Self { config, endpoint })
    }

    /// The UDP address the hub listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Starts the fleet (group topics, membership, writers; retried while the central
    /// cluster cannot be reached) and serves sites until `shutdown` turns true.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let Some(hub) = Hub::start(self.config, &mut shutdown).await? else {
            return Ok(());
        };
        hub.serve(self.endpoint, shutdown).await
    }
}
