//! The hub: accepts edge sites over QUIC/mTLS and writes their records to central Kafka clusters,
//! exactly once, one transaction per group of batches.
//!
//! The binary (`hub --config hub.toml`) is a thin wrapper over [`Hub`]; the quickstart and the
//! tests run the same code in-process.

pub mod checkpoints;
pub mod config;
pub mod health;
pub mod kafka;
pub mod metrics;
pub mod offsets;
pub mod server;
pub mod sink;

use std::net::SocketAddr;
use std::sync::Arc;

pub use server::Hub;
use tokio::sync::watch;

/// A bound but not yet serving hub: lets callers learn the UDP address before serving.
#[derive(Debug)]
pub struct BoundHub {
    hub: Arc<Hub>,
    endpoint: quinn::Endpoint,
}

impl BoundHub {
    /// Binds the QUIC endpoint and prepares cluster clients.
    pub fn bind(config: config::Validated) -> anyhow::Result<Self> {
        let tls = er_net::TlsFiles {
            ca_cert: config.raw.tls.ca_cert.clone(),
            cert: config.raw.tls.cert.clone(),
            key: config.raw.tls.key.clone(),
        };
        let endpoint =
            er_net::server_endpoint(config.listen, &tls, &er_net::TransportTuning::default())?;
        let hub = Hub::new(config)?;
        Ok(Self { hub, endpoint })
    }

    /// The UDP address the hub listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Serves until `shutdown` turns true.
    pub async fn serve(self, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        self.hub.serve(self.endpoint, shutdown).await
    }
}
