//! The Prometheus endpoint both binaries serve: one exporter setup and one error for it.
//!
//! Each binary still declares and describes its own metrics (`edge_agent::metrics`,
//! `er_hub::metrics`); this only installs the recorder and its HTTP listener.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics.listen {addr}: cannot serve metrics: {message}")]
pub struct MetricsError {
    /// The configured address.
    pub addr: SocketAddr,
    /// The exporter's message (address in use, recorder already installed, invalid buckets, ...).
    pub message: String,
}

/// Installs the process-wide Prometheus recorder with an HTTP listener serving `/metrics` on
/// `addr`. `histogram_buckets` gives the bucket bounds of each histogram, by full metric name
/// (histograms not named are exported as summaries). Call it once per process, inside a tokio
/// runtime.
pub fn serve_prometheus(
    addr: SocketAddr,
    histogram_buckets: &[(&str, &[f64])],
) -> Result<(), MetricsError> {
    let err = |e: BuildError| MetricsError {
        addr,
        message: e.to_string(),
    };
    let mut builder = PrometheusBuilder::new().with_http_listener(addr);
    for (name, buckets) in histogram_buckets {
        builder = builder
            .set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)
            .map_err(err)?;
    }
    builder.install().map_err(err)
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
