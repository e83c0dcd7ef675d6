//! The hub: accepts edge sites over QUIC/mTLS and writes their records to central Kafka clusters,
//! exactly once, through a fixed pool of transactional writers shared by every site; hubs of a
//! group divide the sites' shards through Kafka's consumer-group protocol.
//!
//! The binary (`hub --config hub.toml`) is a thin wrapper over [`Hub`]; the quickstart and the
//! tests run the same code in-process.

pub mod acl_sync;
pub mod admission;
pub mod checkpoints;
pub mod config;
pub mod directory;
pub mod downlink;
pub mod events;
pub mod fleet;
pub mod fleet_status;
pub mod group_offsets;
pub mod health;
pub mod heartbeats;
pub mod kafka;
pub mod membership;
pub mod metrics;
pub mod offsets;
pub mod plugins;
pub mod server;
pub mod shards;
pub mod sink;
pub mod sites;
pub mod topic_sync;

use std::net::SocketAddr;

pub use server::Hub;
use tokio::sync::watch;

/// A bound but not yet serving hub: lets callers learn the UDP address before serving.
#[derive(Debug)]
pub struct BoundHub {
    config: config::Validated,
    endpoint: quinn::Endpoint,
    crl_reloader: er_net::CrlReloader,
    crl_poll_interval: std::time::Duration,
    health: Option<std::sync::Arc<health::HubHealth>>,
}

impl BoundHub {
    /// Binds the QUIC endpoint.
    pub fn bind(config: config::Validated) -> anyhow::Result<Self> {
        let tls = er_net::TlsFiles {
            ca_cert: config.raw.tls.ca_cert.clone(),
            cert: config.raw.tls.cert.clone(),
            key: config.raw.tls.key.clone(),
        };
        // QUIC buffers at most the connection's inbound budget unread (flow control), on top
        // of what its frame readers hold of the same budget.
        let defaults = er_net::TransportTuning::default();
        let window = u64::from(config.raw.limits.connection_inbound_bytes);
        let tuning = er_net::TransportTuning {
            receive_window: window,
            stream_receive_window: defaults.stream_receive_window.min(window),
            ..defaults
        };
        let (endpoint, crl_reloader) = er_net::server_endpoint_with_policy(
            config.listen,
            &tls,
            &tuning,
            config.identity.clone(),
        )?;
        metrics::set_certificate_expiry(&tls.cert);
        let crl_poll_interval = config.crl_poll_interval;
        Ok(Self {
            config,
            endpoint,
            crl_reloader,
            crl_poll_interval,
            health: None,
        })
    }

    /// Shows the fleet's sites in `health`'s `/status` once the fleet started.
    pub fn with_health(mut self, health: std::sync::Arc<health::HubHealth>) -> Self {
        self.health = Some(health);
        self
    }

    /// The UDP address the hub listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Accepts sites at once (handshake and admission need no Kafka) and starts the fleet
    /// (group topics, membership, writers; retried while the central cluster cannot be
    /// reached); admitted sites wait for it. Serves until `shutdown` turns true, reloading CRLs
    /// when their files change. A fleet that cannot start for good (a layout mismatch) ends
    /// serving with its error.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let crls = tokio::spawn(self.crl_reloader.run(self.crl_poll_interval));
        let listen = self.endpoint.local_addr()?;
        let (hub_tx, hub_rx) = watch::channel(None);
        let (stop_tx, stop_rx) = watch::channel(false);
        let listener = server::Listener::new(self.config.clone(), hub_rx);
        let serving = tokio::spawn(listener.serve(self.endpoint, stop_rx));
        let result = match Hub::start(self.config, &mut shutdown).await {
            Ok(Some(hub)) => {
                tracing::info!(listen = %listen, hub_id = %hub.fleet().config.raw.hub_id, "hub ready");
                if let Some(h) = &self.health {
                    h.fleet_started(hub.fleet().registry.clone());
                }
                hub_tx.send_replace(Some(hub));
                let _ = shutdown.wait_for(|stop| *stop).await;
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        let _ = stop_tx.send(true);
        let served = serving.await.map_err(anyhow::Error::from).and_then(|r| r);
        crls.abort();
        result.and(served)
    }
}
