//! The hub's admission wiring, without Kafka (refusals happen before a site's writers start):
//! `[tls]` settings reach the QUIC server, a refused site gets the matching close code, and a
//! CRL file changed while the hub runs closes the revoked site's live connection.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use er_net::devcerts::{self, DevPki, DevPkiPem};
use er_net::{TransportTuning, client_endpoint};

const WAIT: Duration = Duration::from_secs(10);

/// A hub on loopback with the dev PKI in `dir`, extra `[tls]` lines, and a cluster nobody
/// listens on (nothing here reaches Kafka).
async fn start_hub(
    dir: &Path,
    tls_extra: &str,
) -> Result<(SocketAddr, tokio::sync::watch::Sender<bool>)> {
    let config = format!(
        r#"hub_id = "hub-test"
listen = "127.0.0.1:0"

[tls]
ca_cert = "ca.pem"
cert = "hub.pem"
key = "hub.key"
{tls_extra}

[[clusters]]
alias = "central"
bootstrap_servers = "127.0.0.1:1"
"#
    );
    let path = dir.join("hub.toml");
    std::fs::write(&path, config)?;
    let bound = er_hub::BoundHub::bind(er_hub::config::load(&path)?)?;
    let addr = bound.local_addr()?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(bound.serve(rx));
    Ok((addr, tx))
}

/// Connects as `site` and returns the connection (the handshake done; the hub may still refuse).
async fn connect(
    pki: &DevPki,
    site: &str,
    addr: SocketAddr,
) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let (endpoint, config) = client_endpoint(
        "127.0.0.1:0".parse()?,
        &pki.site_tls(site),
        &TransportTuning::default(),
    )?;
    let conn = endpoint.connect_with(config, addr, "localhost")?.await?;
    Ok((endpoint, conn))
}

async fn close_code(conn: &quinn::Connection) -> Result<u64> {
    match tokio::time::timeout(WAIT, conn.closed())
        .await
        .context("the hub did not close the connection")?
    {
        quinn::ConnectionError::ApplicationClosed(c) => Ok(c.error_code.into_inner()),
        other => bail!("closed otherwise: {other}"),
    }
}

fn pki() -> Result<(tempfile::TempDir, DevPki, DevPkiPem)> {
    let dir = tempfile::tempdir()?;
    let pem = devcerts::generate_in_memory(&[], &["shop-1".into(), "plant-7".into()])?;
    pem.write_to(dir.path(), false)?;
    let pki = DevPki::new(dir.path());
    Ok((dir, pki, pem))
}

#[tokio::test]
async fn a_site_off_the_allowlist_is_refused_with_unauthorized() -> Result<()> {
    let (dir, pki, _pem) = pki()?;
    let (addr, _stop) = start_hub(dir.path(), r#"allowed_sites = ["plant-[0-9]+"]"#).await?;
    let (_ep, shop) = connect(&pki, "shop-1", addr).await?;
    assert_eq!(
        close_code(&shop).await?,
        u64::from(er_hub::server::close_code::UNAUTHORIZED)
    );
    // plant-7 is admitted: the hub waits for its hello instead of closing.
    let (_ep2, plant) = connect(&pki, "plant-7", addr).await?;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), plant.closed())
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn a_crl_published_while_the_hub_runs_closes_the_live_connection_and_refuses_the_next()
-> Result<()> {
    let (dir, pki, pem) = pki()?;
    let crl = dir.path().join("ca.crl.pem");
    std::fs::write(&crl, pem.crl(&[], 1)?)?;
    let (addr, _stop) = start_hub(
        dir.path(),
        "crl_files = [\"ca.crl.pem\"]\ncrl_poll_interval_ms = 100",
    )
    .await?;
    let (_ep, shop) = connect(&pki, "shop-1", addr).await?;
    let (_ep2, plant) = connect(&pki, "plant-7", addr).await?;

    let shop_pem = &pem
        .sites
        .iter()
        .find(|s| s.0 == "shop-1")
        .context("site")?
        .1;
    let tmp = dir.path().join("ca.crl.tmp");
    std::fs::write(&tmp, pem.crl(&[shop_pem], 2)?)?;
    std::fs::rename(&tmp, &crl)?;

    assert_eq!(
        close_code(&shop).await?,
        u64::from(er_hub::server::close_code::REVOKED)
    );
    assert!(plant.close_reason().is_none(), "plant-7 is not revoked");
    // A new full handshake of shop-1 fails in the TLS verifier (alert certificate_revoked).
    let (_ep3, again) = connect(&pki, "shop-1", addr).await?;
    let e = tokio::time::timeout(WAIT, again.closed()).await?;
    assert!(
        matches!(&e, quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code == quinn::TransportErrorCode::crypto(44)),
        "want TLS alert 44 (certificate_revoked): {e}"
    );
    Ok(())
}
