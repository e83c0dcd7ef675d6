//! mTLS over real QUIC on loopback: who gets in, who is refused, and what the hub learns.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use er_net::devcerts::{self, DevPki};
use er_net::{
    ALPN, NetError, TlsFiles, TransportTuning, client_endpoint, client_endpoint_without_cert,
    peer_site_alias, server_endpoint, site_alias_from_cert_der,
};
use quinn::{ConnectionError, TransportErrorCode};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
};

const LOOPBACK: &str = "127.0.0.1:0";

fn loopback() -> SocketAddr {
    LOOPBACK.parse().unwrap()
}

/// A dev PKI with sites "shop-1" and "plant_2" in a fresh tempdir.
fn new_pki() -> Result<(tempfile::TempDir, DevPki)> {
    let dir = tempfile::tempdir()?;
    devcerts::generate(dir.path(), &[], &["shop-1".into(), "plant_2".into()], false)?;
    let pki = DevPki::new(dir.path());
    Ok((dir, pki))
}

struct Outcome {
    server: Result<quinn::Connection, ConnectionError>,
    client: Result<quinn::Connection, ConnectionError>,
    // Dropping an endpoint closes its connections; keep both for the test's lifetime.
    _endpoints: (quinn::Endpoint, quinn::Endpoint),
}

/// Runs one handshake between a hub using `hub` files and the given client endpoint.
async fn handshake(
    hub: &TlsFiles,
    client: (quinn::Endpoint, quinn::ClientConfig),
) -> Result<Outcome> {
    let server = server_endpoint(loopback(), hub, &TransportTuning::default())?;
    let addr = server.local_addr()?;
    let accept = {
        let server = server.clone();
        tokio::spawn(async move { server.accept().await.expect("endpoint open").await })
    };
    let (endpoint, config) = client;
    let connecting = endpoint
        .connect_with(config, addr, "localhost")
        .context("starting connect")?;
    let client = connecting.await;
    let server_result = accept.await?;
    let client = match (&server_result, client) {
        // In TLS 1.3 the client's handshake completes before the server has judged the
        // client certificate, so a refusal reaches the client as a connection close.
        (Err(_), Ok(conn)) => Err(tokio::time::timeout(SECOND * 5, conn.closed())
            .await
            .context("client never saw the refusal")?),
        (_, client) => client,
    };
    Ok(Outcome {
        server: server_result,
        client,
        _endpoints: (server, endpoint),
    })
}

const SECOND: std::time::Duration = std::time::Duration::from_secs(1);

fn site_client(tls: &TlsFiles) -> Result<(quinn::Endpoint, quinn::ClientConfig)> {
    Ok(client_endpoint(
        loopback(),
        tls,
        &TransportTuning::default(),
    )?)
}

/// The TLS alert a refused handshake ended with, from either side's error.
fn alert(e: &ConnectionError) -> Option<TransportErrorCode> {
    match e {
        ConnectionError::TransportError(t) => Some(t.code),
        ConnectionError::ConnectionClosed(c) => Some(c.error_code),
        _ => None,
    }
}

#[tokio::test]
async fn site_with_valid_cert_connects_and_is_named_by_its_cn() -> Result<()> {
    let (_dir, pki) = new_pki()?;
    for site in ["shop-1", "plant_2"] {
        let out = handshake(&pki.hub_tls(), site_client(&pki.site_tls(site))?).await?;
        let server = out.server.context("server handshake")?;
        let client = out.client.context("client handshake")?;
        assert_eq!(peer_site_alias(&server)?, site);
        let alpn = server
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol);
        assert_eq!(alpn.as_deref(), Some(ALPN));
        drop(client);
    }
    Ok(())
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused() -> Result<()> {
    let (_dir, pki) = new_pki()?;
    let (_other_dir, other) = new_pki()?;
    // Trusts the real hub, but presents a certificate the hub's CA never signed.
    let tls = TlsFiles {
        ca_cert: pki.ca_cert(),
        ..other.site_tls("shop-1")
    };
    let out = handshake(&pki.hub_tls(), site_client(&tls)?).await?;
    let server_err = out
        .server
        .err()
        .context("hub accepted a foreign certificate")?;
    let client_err = out.client.err().context("client was not told")?;
    println!("hub: {server_err}\nclient: {client_err}");
    // TLS alert 48 = unknown_ca.
    assert_eq!(alert(&server_err), Some(TransportErrorCode::crypto(48)));
    assert_eq!(alert(&client_err), Some(TransportErrorCode::crypto(48)));
    let msg = server_err.to_string();
    assert!(
        msg.contains("UnknownIssuer") || msg.contains("certificate"),
        "{msg}"
    );
    Ok(())
}

#[tokio::test]
async fn client_without_cert_is_refused() -> Result<()> {
    let (_dir, pki) = new_pki()?;
    let client =
        client_endpoint_without_cert(loopback(), &pki.ca_cert(), &TransportTuning::default())?;
    let out = handshake(&pki.hub_tls(), client).await?;
    let server_err = out
        .server
        .err()
        .context("hub accepted a client without certificate")?;
    let client_err = out.client.err().context("client was not told")?;
    println!("hub: {server_err}\nclient: {client_err}");
    // TLS alert 116 = certificate_required.
    assert_eq!(alert(&server_err), Some(TransportErrorCode::crypto(116)));
    assert_eq!(alert(&client_err), Some(TransportErrorCode::crypto(116)));
    Ok(())
}

#[tokio::test]
async fn hub_from_another_ca_is_refused_by_the_client() -> Result<()> {
    let (_dir, pki) = new_pki()?;
    let (_other_dir, other) = new_pki()?;
    let out = handshake(&other.hub_tls(), site_client(&pki.site_tls("shop-1"))?).await?;
    let client_err = out.client.err().context("client accepted a foreign hub")?;
    println!("client: {client_err}");
    assert_eq!(alert(&client_err), Some(TransportErrorCode::crypto(48)));
    assert!(out.server.is_err());
    Ok(())
}

/// A client certificate signed by the dev CA in `dir` with the given subject.
fn signed_cert(dir: &Path, subject: DistinguishedName) -> Result<(String, String)> {
    let pki = DevPki::new(dir);
    let issuer = Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(pki.ca_cert())?,
        KeyPair::from_pem(&std::fs::read_to_string(pki.ca_key())?)?,
    )?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = subject;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    Ok((params.signed_by(&key, &issuer)?.pem(), key.serialize_pem()))
}

fn subject(cns: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "edge-replicator");
    for cn in cns {
        dn.push(DnType::CommonName, *cn);
    }
    dn
}

#[tokio::test]
async fn ca_signed_cert_with_invalid_cn_gets_in_but_has_no_site_alias() -> Result<()> {
    let (dir, pki) = new_pki()?;
    let (cert, key) = signed_cert(dir.path(), subject(&["a.b"]))?;
    let tls = TlsFiles {
        ca_cert: pki.ca_cert(),
        cert: dir.path().join("bad.pem"),
        key: dir.path().join("bad.key"),
    };
    std::fs::write(&tls.cert, cert)?;
    std::fs::write(&tls.key, key)?;
    // Private keys are for their owner only (the hub and agent refuse others).
    std::fs::set_permissions(
        &tls.key,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let out = handshake(&pki.hub_tls(), site_client(&tls)?).await?;
    let server = out.server.context("CA-signed certificate must pass TLS")?;
    let err = peer_site_alias(&server).unwrap_err();
    println!("{err}");
    assert!(matches!(err, NetError::InvalidSiteAlias { ref alias, .. } if alias == "a.b"));
    assert!(err.to_string().contains("'.'"), "{err}");
    Ok(())
}

#[test]
fn site_alias_rules_on_certificate_subjects() -> Result<()> {
    let dir = tempfile::tempdir()?;
    devcerts::generate(dir.path(), &[], &[], false)?;
    let long = "x".repeat(65);
    let cases: &[(&[&str], Result<&str, &str>)] = &[
        (&["shop-1"], Ok("shop-1")),
        (
            &["a.b"],
            Err("site alias \"a.b\": character '.' at byte 1 not allowed"),
        ),
        (&[""], Err("site alias \"\": must not be empty")),
        (&[&long], Err("65 bytes long, at most 64 allowed")),
        (&["a/../b"], Err("character '/'")),
        (&[], Err("no CN")),
    ];
    for (cns, want) in cases {
        let (pem, _) = signed_cert(dir.path(), subject(cns))?;
        let der = rustls_pki_types_der(&pem);
        let got = site_alias_from_cert_der(&der);
        match (want, &got) {
            (Ok(w), Ok(g)) => assert_eq!(w, g),
            (Err(w), Err(e)) => assert!(e.to_string().contains(w), "{cns:?}: {e} lacks {w:?}"),
            _ => panic!("{cns:?}: want {want:?}, got {got:?}"),
        }
    }
    let garbage = site_alias_from_cert_der(b"not a certificate").unwrap_err();
    assert!(matches!(garbage, NetError::BadCertificate(_)), "{garbage}");
    Ok(())
}

fn rustls_pki_types_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}
