//! TLS session resumption and 0-RTT between the agent's and the hub's endpoints: a reconnect
//! resumes (the site's identity comes from the session), sends early data only when the
//! ticket gate lends a ticket, and a hub that never issued the ticket refuses the early data.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use er_net::devcerts::{self, DevPki};
use er_net::{TransportTuning, client_endpoint_gated, peer_site_alias, server_endpoint};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn new_pki() -> Result<(tempfile::TempDir, DevPki)> {
    let dir = tempfile::tempdir()?;
    devcerts::generate(dir.path(), &[], &["shop-1".into()], false)?;
    let pki = DevPki::new(dir.path());
    Ok((dir, pki))
}

/// A hub endpoint that accepts connections in 0.5-RTT and, for each, reports whether the site
/// was known before the handshake ended, the site, and the first bytes of its first stream.
fn hub(pki: &DevPki) -> Result<(quinn::Endpoint, tokio::sync::mpsc::Receiver<(bool, String)>)> {
    let server = server_endpoint(loopback(), &pki.hub_tls(), &TransportTuning::default())?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let ep = server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(connecting) = incoming.accept() else {
                    return;
                };
                let (conn, done) = connecting.into_0rtt().expect("servers always get 0.5-RTT");
                let known_early = conn.peer_identity().is_some();
                let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                    return;
                };
                let mut hello = [0u8; 5];
                if recv.read_exact(&mut hello).await.is_err() {
                    return;
                }
                done.await;
                let site = peer_site_alias(&conn).unwrap_or_default();
                let _ = send.write_all(b"welcome").await;
                let _ = send.finish();
                let _ = tx.send((known_early, site)).await;
                let _ = conn.closed().await;
            });
        }
    });
    Ok((server, rx))
}

/// Connects, says hello (as 0-RTT data when the endpoint can), waits for the welcome. Returns
/// whether the attempt went out as 0-RTT and whether the hub took the early data.
async fn round_trip(
    client: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    addr: SocketAddr,
) -> Result<(bool, bool)> {
    let connecting = client.connect_with(config.clone(), addr, "localhost")?;
    let (conn, zero_rtt, accepted) = match connecting.into_0rtt() {
        Ok((conn, accepted)) => {
            let (mut send, recv) = conn.open_bi().await?;
            send.write_all(b"hello").await?;
            let accepted = accepted.await;
            if accepted {
                finish(send, recv).await?;
            } else {
                let (mut send, recv) = conn.open_bi().await?;
                send.write_all(b"hello").await?;
                finish(send, recv).await?;
            }
            (conn, true, accepted)
        }
        Err(connecting) => {
            let conn = connecting.await?;
            let (mut send, recv) = conn.open_bi().await?;
            send.write_all(b"hello").await?;
            finish(send, recv).await?;
            (conn, false, false)
        }
    };
    // Give the hub's session tickets (sent after the handshake) time to arrive.
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.close(0u32.into(), b"done");
    Ok((zero_rtt, accepted))
}

async fn finish(mut send: quinn::SendStream, mut recv: quinn::RecvStream) -> Result<()> {
    send.finish()?;
    let welcome = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(64))
        .await
        .context("no welcome within 5 s")??;
    ensure!(welcome == b"welcome", "welcome was {welcome:?}");
    Ok(())
}

#[tokio::test]
async fn a_reconnect_resumes_with_0rtt_only_while_the_gate_lends_tickets() -> Result<()> {
    let (_dir, pki) = new_pki()?;
    let (server, mut seen) = hub(&pki)?;
    let addr = server.local_addr()?;
    let (client, config, gate) = client_endpoint_gated(
        loopback(),
        &pki.site_tls("shop-1"),
        &TransportTuning::default(),
    )?;

    // First contact: nothing to resume; the site is known only once the handshake ended.
    assert_eq!(round_trip(&client, &config, addr).await?, (false, false));
    assert_eq!(seen.recv().await.context("hub")?, (false, "shop-1".into()));

    // A closed gate keeps the tickets: a full handshake.
    gate.set_open(false);
    assert_eq!(round_trip(&client, &config, addr).await?, (false, false));
    assert_eq!(seen.recv().await.context("hub")?, (false, "shop-1".into()));

    // Open: the reconnect resumes, the hello is 0-RTT data the hub takes, and the hub knows the
    // site from the session before the handshake ends.
    gate.set_open(true);
    assert_eq!(round_trip(&client, &config, addr).await?, (true, true));
    assert_eq!(seen.recv().await.context("hub")?, (true, "shop-1".into()));

    // A hub that never saw the session (restarted, another hub): the early data is refused and
    // the hello goes again over the full handshake.
    let (other, mut other_seen) = hub(&pki)?;
    let (zero_rtt, accepted) = round_trip(&client, &config, other.local_addr()?).await?;
    assert!(zero_rtt && !accepted, "0-RTT attempted and refused");
    assert_eq!(
        other_seen.recv().await.context("other hub")?,
        (false, "shop-1".into())
    );
    Ok(())
}
