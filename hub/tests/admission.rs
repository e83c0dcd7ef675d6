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

/// A UDP relay between one client and the hub that records the first byte of every datagram
/// the hub sends: QUIC v1 long headers tell the packet type (0x80 long form, type in 0x30).
async fn relay(hub: SocketAddr) -> Result<(SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<u8>>>)> {
    use std::sync::{Arc, Mutex};
    use tokio::net::UdpSocket;
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    back.connect(hub).await?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let addr = front.local_addr()?;
    {
        let (front, back, client) = (front.clone(), back.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client.lock().expect("lock") = Some(from);
                let _ = back.send(&buf[..n]).await;
            }
        });
    }
    {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok(n) = back.recv(&mut buf).await {
                if n > 0 {
                    seen.lock().expect("lock").push(buf[0]);
                }
                let to = *client.lock().expect("lock");
                if let Some(to) = to {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        });
    }
    Ok((addr, seen))
}

/// QUIC v1 long-header packet types.
const LONG_HEADER: u8 = 0x80;
const TYPE_INITIAL: u8 = 0x00;
const TYPE_RETRY: u8 = 0x30;

/// Under a handshake load above `limits.retry_above_handshakes` (0 here: always), a new client
/// must prove its address with a QUIC Retry before the hub spends a handshake on it; a real
/// client follows the Retry and is admitted. At the default, the hub answers with its Initial.
#[tokio::test]
async fn unvalidated_clients_get_a_retry_first_under_load_and_are_then_admitted() -> Result<()> {
    let (dir, pki, _pem) = pki()?;
    for (limit, want_retry) in [(0, true), (64, false)] {
        let (hub, _stop) = start_hub(
            dir.path(),
            &format!("\n[limits]\nretry_above_handshakes = {limit}"),
        )
        .await?;
        let (addr, seen) = relay(hub).await?;
        let (_ep, conn) = connect(&pki, "shop-1", addr).await?;
        // Admitted: the hub now waits for the hello instead of closing.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), conn.closed())
                .await
                .is_err(),
            "retry_above_handshakes = {limit}: the connection was closed"
        );
        let first = *seen
            .lock()
            .expect("lock")
            .first()
            .context("the hub sent nothing")?;
        assert_eq!(first & LONG_HEADER, LONG_HEADER, "{first:#04x}");
        let kind = first & 0x30;
        assert_eq!(
            kind,
            if want_retry { TYPE_RETRY } else { TYPE_INITIAL },
            "retry_above_handshakes = {limit}: first packet type {kind:#04x}"
        );
    }
    Ok(())
}

/// At `limits.max_connections` the hub refuses new connections before any cryptography
/// (CONNECTION_REFUSED), and takes one again once a slot is free.
#[tokio::test]
async fn the_hub_refuses_connections_beyond_its_total_and_frees_the_slot_on_close() -> Result<()> {
    let (dir, pki, _pem) = pki()?;
    let (addr, _stop) = start_hub(dir.path(), "\n[limits]\nmax_connections = 2").await?;
    let (_ep1, one) = connect(&pki, "shop-1", addr).await?;
    let (_ep2, _two) = connect(&pki, "plant-7", addr).await?;
    let (ep3, config) = client_endpoint(
        "127.0.0.1:0".parse()?,
        &pki.site_tls("plant-7"),
        &TransportTuning::default(),
    )?;
    let third = tokio::time::timeout(WAIT, ep3.connect_with(config.clone(), addr, "localhost")?)
        .await
        .context("the third connection neither failed nor succeeded")?;
    match third {
        Err(quinn::ConnectionError::ConnectionClosed(c))
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {}
        other => bail!("want CONNECTION_REFUSED at the hub's total, got {other:?}"),
    }
    one.close(0u32.into(), b"done");
    // The slot is released once the hub has seen the close.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match ep3.connect_with(config.clone(), addr, "localhost")?.await {
            Ok(_conn) => break,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => bail!("a freed slot was never taken again: {e}"),
        }
    }
    Ok(())
}
