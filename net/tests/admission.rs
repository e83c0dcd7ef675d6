//! Site admission over real QUIC: revoked, expired and not-allowlisted certificates are refused
//! on a full handshake and on a resumed (0-RTT) session, CRL files are reloaded while the server
//! runs, and live sessions end when their certificate expires or is revoked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use er_net::devcerts::{self, DevPki, DevPkiPem, SiteCertOptions};
use er_net::{
    AdmissionError, CrlReload, CrlReloader, IdentityPolicy, IdentitySettings, TicketGate, TlsFiles,
    TransportTuning, admit, client_endpoint_gated, handshake_refusal_reason,
    server_endpoint_with_policy, watch_admission,
};
use tokio::sync::mpsc;

const EXPIRED: u32 = 5;
const REVOKED: u32 = 6;
const UNAUTHORIZED: u32 = 2;
const WAIT: Duration = Duration::from_secs(10);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// What the test hub saw of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Admitted `alias`; `resumed` when known before the handshake ended (TLS resumption).
    Admitted { alias: String, resumed: bool },
    /// Refused by `admit` (reason label).
    Refused { resumed: bool, reason: &'static str },
    /// The TLS handshake failed (reason label from the alert).
    HandshakeFailed(&'static str),
    /// A live session was closed by its watcher.
    Ended { alias: String, reason: &'static str },
}

fn close_code(e: &AdmissionError) -> u32 {
    match e {
        AdmissionError::Expired { .. } | AdmissionError::NotYetValid { .. } => EXPIRED,
        AdmissionError::Revoked { .. } => REVOKED,
        _ => UNAUTHORIZED,
    }
}

/// A hub in miniature, doing what hub/src/server.rs does at the start of each connection:
/// 0.5-RTT accept, `admit` (at once for a resumed session, after the handshake otherwise), a
/// watcher per admitted session, then "welcome" for the "hello" on the first stream.
struct Hub {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    reloader: CrlReloader,
    _endpoint: quinn::Endpoint,
}

fn hub(pki: &DevPki, settings: IdentitySettings) -> Result<Hub> {
    let policy = Arc::new(IdentityPolicy::new(settings, &pki.ca_cert())?);
    let (endpoint, reloader) = server_endpoint_with_policy(
        loopback(),
        &pki.hub_tls(),
        &TransportTuning::default(),
        policy.clone(),
    )?;
    let (tx, seen) = mpsc::unbounded_channel();
    let ep = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let (tx, policy) = (tx.clone(), policy.clone());
            tokio::spawn(async move {
                let Ok(connecting) = incoming.accept() else {
                    return;
                };
                let (conn, handshake) = connecting.into_0rtt().expect("servers get 0.5-RTT");
                let resumed = conn.peer_identity().is_some();
                let mut handshake = Some(handshake);
                if !resumed {
                    handshake.take().unwrap().await;
                    if conn.close_reason().is_some() {
                        let reason = handshake_refusal_reason(conn.close_reason().as_ref());
                        let _ = tx.send(Seen::HandshakeFailed(reason));
                        return;
                    }
                }
                let identity = match admit(&conn, &policy, SystemTime::now()) {
                    Ok(id) => id,
                    Err(e) => {
                        conn.close(close_code(&e).into(), e.to_string().as_bytes());
                        let _ = tx.send(Seen::Refused {
                            resumed,
                            reason: e.reason(),
                        });
                        return;
                    }
                };
                let alias = identity.alias.clone();
                let _ = tx.send(Seen::Admitted {
                    alias: alias.clone(),
                    resumed,
                });
                {
                    let (conn, policy, tx) = (conn.clone(), policy.clone(), tx.clone());
                    tokio::spawn(async move {
                        if let Some(e) = watch_admission(&conn, &policy, &identity).await {
                            conn.close(close_code(&e).into(), e.to_string().as_bytes());
                            let _ = tx.send(Seen::Ended {
                                alias,
                                reason: e.reason(),
                            });
                        }
                    });
                }
                let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                    return;
                };
                let mut hello = [0u8; 5];
                if recv.read_exact(&mut hello).await.is_err() {
                    return;
                }
                if let Some(h) = handshake {
                    h.await;
                }
                let _ = send.write_all(b"welcome").await;
                let _ = send.finish();
                let _ = conn.closed().await;
            });
        }
    });
    Ok(Hub {
        addr: endpoint.local_addr()?,
        seen,
        reloader,
        _endpoint: endpoint,
    })
}

impl Hub {
    async fn next(&mut self) -> Result<Seen> {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .context("the hub saw nothing")?
            .context("hub gone")
    }
}

struct Site {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    gate: TicketGate,
}

fn site(tls: &TlsFiles) -> Result<Site> {
    let (endpoint, config, gate) =
        client_endpoint_gated(loopback(), tls, &TransportTuning::default())?;
    Ok(Site {
        endpoint,
        config,
        gate,
    })
}

/// One connection attempt as the agent makes it.
struct Attempt {
    zero_rtt: bool,
    /// The connection, when it was welcomed; else how it ended.
    result: Result<quinn::Connection, quinn::ConnectionError>,
}

impl Site {
    async fn connect(&self, addr: SocketAddr) -> Result<Attempt> {
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), addr, "localhost")?;
        let (conn, zero_rtt) = match connecting.into_0rtt() {
            Ok((conn, _accepted)) => (conn, true),
            Err(connecting) => match connecting.await {
                Ok(conn) => (conn, false),
                Err(e) => {
                    return Ok(Attempt {
                        zero_rtt: false,
                        result: Err(e),
                    });
                }
            },
        };
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(b"hello").await?;
            send.finish()?;
            let welcome = recv.read_to_end(64).await?;
            ensure!(welcome == b"welcome", "welcome was {welcome:?}");
            anyhow::Ok(())
        };
        let result = match tokio::time::timeout(WAIT, exchange).await {
            Ok(Ok(())) => {
                // Give the hub's session tickets (sent after the handshake) time to arrive.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(conn)
            }
            Ok(Err(_)) => Err(tokio::time::timeout(WAIT, conn.closed())
                .await
                .context("exchange failed but the connection stayed open")?),
            Err(_) => bail!("no welcome and no close within {WAIT:?}"),
        };
        Ok(Attempt { zero_rtt, result })
    }
}

/// The application close code a connection ended with, if it ended that way. A close sent
/// before the client finished its handshake may arrive as the transport's APPLICATION_ERROR.
fn app_code(e: &quinn::ConnectionError) -> Option<u32> {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            u32::try_from(c.error_code.into_inner()).ok()
        }
        _ => None,
    }
}

async fn closed_with(conn: &quinn::Connection) -> Result<quinn::ConnectionError> {
    tokio::time::timeout(WAIT, conn.closed())
        .await
        .context("the live session was not closed")
}

/// A dev PKI in a temp dir with sites shop-1 and plant-7, and an empty CRL in `ca.crl.pem`.
fn pki() -> Result<(tempfile::TempDir, DevPki, DevPkiPem, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let pem = devcerts::generate_in_memory(&[], &["shop-1".into(), "plant-7".into()])?;
    pem.write_to(dir.path(), false)?;
    let crl = dir.path().join("ca.crl.pem");
    std::fs::write(&crl, pem.crl(&[], 1)?)?;
    let pki = DevPki::new(dir.path());
    Ok((dir, pki, pem, crl))
}

fn site_pem<'a>(pem: &'a DevPkiPem, alias: &str) -> &'a str {
    &pem.sites.iter().find(|s| s.0 == alias).expect("site").1
}

/// Writes a certificate and key under `name` in the PKI dir; returns the site's files.
fn write_site(pki: &DevPki, name: &str, (cert, key): (String, String)) -> Result<TlsFiles> {
    let dir = pki.dir();
    std::fs::write(dir.join(format!("{name}.pem")), cert)?;
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&key_path, key)?;
    // Private keys are for their owner only (the hub and agent refuse others).
    std::fs::set_permissions(
        &key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    Ok(pki.site_tls(name))
}

/// Replaces a file atomically (as an operator's tooling would), with a new modification time.
fn replace(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_live_on_resumption_and_on_a_full_handshake() -> Result<()>
{
    let (_dir, pki, pem, crl) = pki()?;
    let mut hub = hub(
        &pki,
        IdentitySettings {
            crl_files: vec![crl.clone()],
            ..Default::default()
        },
    )?;
    let shop = site(&pki.site_tls("shop-1"))?;
    let plant = site(&pki.site_tls("plant-7"))?;

    // Before revocation: a full handshake, then a resumed session with 0-RTT.
    let first = shop.connect(hub.addr).await?;
    assert!(first.result.is_ok() && !first.zero_rtt);
    assert_eq!(
        hub.next().await?,
        Seen::Admitted {
            alias: "shop-1".into(),
            resumed: false
        }
    );
    let live = shop.connect(hub.addr).await?;
    assert!(live.zero_rtt, "the reconnect resumes with 0-RTT");
    let live = live
        .result
        .map_err(|e| anyhow::anyhow!("resumed session refused: {e}"))?;
    assert_eq!(
        hub.next().await?,
        Seen::Admitted {
            alias: "shop-1".into(),
            resumed: true
        }
    );
    let plant_live = plant.connect(hub.addr).await?.result?;
    assert_eq!(
        hub.next().await?,
        Seen::Admitted {
            alias: "plant-7".into(),
            resumed: false
        }
    );

    // Revoke shop-1: the CRL file changes, the reloader picks it up.
    assert!(matches!(hub.reloader.poll(), CrlReload::Unchanged));
    replace(&crl, pem.crl(&[site_pem(&pem, "shop-1")], 2)?.as_bytes())?;
    match hub.reloader.poll() {
        CrlReload::Reloaded { revoked: 1 } => {}
        other => bail!("reload: {other:?}"),
    }
    // Both live sessions of shop-1 are closed; plant-7's stays.
    let first = first.result.map_err(|e| anyhow::anyhow!("first: {e}"))?;
    for conn in [&first, &live] {
        let e = closed_with(conn).await?;
        assert_eq!(app_code(&e), Some(REVOKED), "{e}");
        assert_eq!(
            hub.next().await?,
            Seen::Ended {
                alias: "shop-1".into(),
                reason: "revoked"
            }
        );
    }
    assert!(
        plant_live.close_reason().is_none(),
        "plant-7 is not revoked"
    );

    // Resumption: the TLS verifier does not run, `admit` refuses.
    let resumed = shop.connect(hub.addr).await?;
    assert!(
        resumed.zero_rtt,
        "the site still holds a ticket and tries 0-RTT"
    );
    let e = resumed
        .result
        .err()
        .context("a revoked site was welcomed on resumption")?;
    println!("revoked, resumed: {e}");
    assert_eq!(
        hub.next().await?,
        Seen::Refused {
            resumed: true,
            reason: "revoked"
        }
    );

    // A full handshake: the verifier (rebuilt with the new CRL) refuses.
    shop.gate.set_open(false);
    let full = shop.connect(hub.addr).await?;
    assert!(!full.zero_rtt);
    let e = full
        .result
        .err()
        .context("a revoked site was welcomed on a full handshake")?;
    println!("revoked, full handshake: {e}");
    assert_eq!(hub.next().await?, Seen::HandshakeFailed("revoked"));

    // plant-7 still connects, resuming.
    let again = plant.connect(hub.addr).await?;
    assert!(again.result.is_ok());
    assert_eq!(
        hub.next().await?,
        Seen::Admitted {
            alias: "plant-7".into(),
            resumed: true
        }
    );
    Ok(())
}

#[tokio::test]
async fn an_expired_certificate_is_refused_on_resumption_and_ends_its_live_session() -> Result<()> {
    let (_dir, pki, pem, _crl) = pki()?;
    let mut hub = hub(&pki, IdentitySettings::default())?;
    // Valid for a few more seconds (X.509 times are whole seconds).
    let now = SystemTime::now();
    let short = pem.issue_site(
        "shop-1",
        &SiteCertOptions {
            validity: Some((
                now - Duration::from_secs(86_400),
                now + Duration::from_secs(3),
            )),
            ..Default::default()
        },
    )?;
    let shop = site(&write_site(&pki, "shop-1", short)?)?;
    let first = shop.connect(hub.addr).await?;
    let first = first
        .result
        .map_err(|e| anyhow::anyhow!("first connect: {e}"))?;
    assert_eq!(
        hub.next().await?,
        Seen::Admitted {
            alias: "shop-1".into(),
            resumed: false
        }
    );

    // The live session ends when the certificate does.
    let e = closed_with(&first).await?;
    assert_eq!(app_code(&e), Some(EXPIRED), "{e}");
    assert_eq!(
        hub.next().await?,
        Seen::Ended {
            alias: "shop-1".into(),
            reason: "expired"
        }
    );

    // The site still holds a session ticket: resumption would skip the verifier.
    let resumed = shop.connect(hub.addr).await?;
    assert!(resumed.zero_rtt, "the site tries 0-RTT with its ticket");
    let e = resumed
        .result
        .err()
        .context("an expired site was welcomed on resumption")?;
    println!("expired, resumed: {e}");
    assert_eq!(
        hub.next().await?,
        Seen::Refused {
            resumed: true,
            reason: "expired"
        }
    );

    // And a full handshake fails in the verifier.
    shop.gate.set_open(false);
    let full = shop.connect(hub.addr).await?;
    assert!(full.result.is_err());
    assert_eq!(hub.next().await?, Seen::HandshakeFailed("expired"));
    Ok(())
}

#[tokio::test]
async fn a_site_not_on_the_allowlist_is_refused() -> Result<()> {
    let (_dir, pki, _pem, _crl) = pki()?;
    let mut hub = hub(
        &pki,
        IdentitySettings {
            allowed_sites: Some(vec!["plant-[0-9]+".into()]),
            ..Default::default()
        },
    )?;
    let shop = site(&pki.site_tls("shop-1"))?;
    let refused = shop.connect(hub.addr).await?;
    let e = refused.result.err().context("shop-1 was welcomed")?;
    assert_eq!(app_code(&e), Some(UNAUTHORIZED), "{e}");
    assert!(e.to_string().contains("not in tls.allowed_sites"), "{e}");
    assert_eq!(
        hub.next().await?,
        Seen::Refused {
            resumed: false,
            reason: "not_allowed"
        }
    );

    let plant = site(&pki.site_tls("plant-7"))?;
    assert!(plant.connect(hub.addr).await?.result.is_ok());
    assert_eq!(
        hub.next().await?,
        Seen::Admitted {
            alias: "plant-7".into(),
            resumed: false
        }
    );
    Ok(())
}

#[tokio::test]
async fn a_broken_crl_on_reload_keeps_the_old_set() -> Result<()> {
    let (_dir, pki, pem, crl) = pki()?;
    replace(&crl, pem.crl(&[site_pem(&pem, "shop-1")], 2)?.as_bytes())?;
    let mut hub = hub(
        &pki,
        IdentitySettings {
            crl_files: vec![crl.clone()],
            ..Default::default()
        },
    )?;
    assert!(matches!(hub.reloader.poll(), CrlReload::Unchanged));

    replace(
        &crl,
        b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )?;
    match hub.reloader.poll() {
        CrlReload::Failed(e) => assert!(e.to_string().contains("ca.crl.pem"), "{e}"),
        other => bail!("a broken CRL was not refused: {other:?}"),
    }
    // Not retried (nor logged again) until the file changes again.
    assert!(matches!(hub.reloader.poll(), CrlReload::Unchanged));
    // The old set is still in force, in the verifier and in `admit`.
    let shop = site(&pki.site_tls("shop-1"))?;
    assert!(shop.connect(hub.addr).await?.result.is_err());
    assert_eq!(hub.next().await?, Seen::HandshakeFailed("revoked"));

    // A good CRL that no longer lists shop-1: it gets in again.
    replace(&crl, pem.crl(&[], 3)?.as_bytes())?;
    assert!(matches!(
        hub.reloader.poll(),
        CrlReload::Reloaded { revoked: 0 }
    ));
    assert!(shop.connect(hub.addr).await?.result.is_ok());
    assert_eq!(
        hub.next().await?,
        Seen::Admitted {
            alias: "shop-1".into(),
            resumed: false
        }
    );
    Ok(())
}

#[tokio::test]
async fn a_spiffe_named_site_is_admitted_under_san_uri_and_a_cn_only_one_is_not() -> Result<()> {
    let (_dir, pki, pem, _crl) = pki()?;
    let mut hub = hub(
        &pki,
        IdentitySettings {
            source: er_net::IdentitySource::SanUri {
                trust_domain: "factory.example".into(),
            },
            ..Default::default()
        },
    )?;
    let spiffe = pem.issue_site(
        "depot-3",
        &SiteCertOptions {
            spiffe_trust_domain: Some("factory.example".into()),
            ..Default::default()
        },
    )?;
    let depot = site(&write_site(&pki, "depot-3", spiffe)?)?;
    assert!(depot.connect(hub.addr).await?.result.is_ok());
    assert_eq!(
        hub.next().await?,
        Seen::Admitted {
            alias: "depot-3".into(),
            resumed: false
        }
    );
    // A certificate naming its site only in the CN carries no SPIFFE ID.
    let shop = site(&pki.site_tls("shop-1"))?;
    let e = shop
        .connect(hub.addr)
        .await?
        .result
        .err()
        .context("shop-1 was welcomed")?;
    assert_eq!(app_code(&e), Some(UNAUTHORIZED), "{e}");
    assert_eq!(
        hub.next().await?,
        Seen::Refused {
            resumed: false,
            reason: "bad_identity"
        }
    );
    Ok(())
}
