//! The Prometheus recorder both binaries install, served with their health endpoints by
//! [`crate::status`]: one setup and one error for it.
//!
//! Each binary still declares and describes its own metrics (`edge_agent::metrics`,
//! `er_hub::metrics`); this only installs the recorder and starts the HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

use crate::status::Endpoints;

/// How often histograms are drained into their buckets (what the exporter's own listener did).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics.listen {addr}: cannot serve metrics: {message}")]
pub struct MetricsError {
    /// The configured address.
    pub addr: SocketAddr,
    /// The exporter's message (address in use, recorder already installed, invalid buckets, ...).
    pub message: String,
}

/// Installs the process-wide Prometheus recorder and serves it on `addr` at `/metrics`, next to
/// `/healthz`, `/readyz` and `/status` (see [`crate::status`]); the returned [`Endpoints`] take
/// the readiness and status callbacks once the binary can answer them. `histogram_buckets` gives
/// the bucket bounds of each histogram, by full metric name (histograms not named are exported
/// as summaries). Call it once per process, inside a tokio runtime.
pub fn serve_prometheus(
    addr: SocketAddr,
    histogram_buckets: &[(&str, &[f64])],
) -> Result<Arc<Endpoints>, MetricsError> {
    let err = |message: String| MetricsError { addr, message };
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in histogram_buckets {
        builder = builder
            .set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)
            .map_err(|e: BuildError| err(e.to_string()))?;
    }
    // Bind before installing, so a taken port leaves no recorder behind.
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|e| err(e.to_string()))?;
    let handle = builder.install_recorder().map_err(|e| err(e.to_string()))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let endpoints = Arc::new(Endpoints::default());
    crate::status::spawn(listener, handle, endpoints.clone());
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_buckets_are_refused_naming_the_address() {
        let addr: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let e = serve_prometheus(addr, &[("er_test_seconds", &[])]).unwrap_err();
        assert_eq!(e.addr, addr);
        let msg = e.to_string();
        assert!(
            msg.starts_with("metrics.listen 127.0.0.1:9464: cannot serve metrics: "),
            "{msg}"
        );
    }
}
