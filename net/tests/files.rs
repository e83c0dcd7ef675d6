//! Dev PKI files on disk and the errors bad PEM files give.

use std::path::{Path, PathBuf};

use anyhow::Result;
use er_net::devcerts::{self, DevPki};
use er_net::{
    NetError, TlsFiles, TransportTuning, client_endpoint, client_endpoint_without_cert,
    server_endpoint, site_alias_from_cert_der,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn generate_writes_the_layout_with_private_keys_0600() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let written = devcerts::generate(
        dir.path(),
        &names(&["hub.example", "10.0.0.1"]),
        &names(&["shop-1", "plant_2"]),
        false,
    )?;
    let want: Vec<PathBuf> = ["ca.pem", "ca.key", "hub.pem", "hub.key"]
        .iter()
        .chain(&["shop-1.pem", "shop-1.key", "plant_2.pem", "plant_2.key"])
        .map(|f| dir.path().join(f))
        .collect();
    assert_eq!(written, want);
    #[cfg(unix)]
    for path in &written {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if path.extension().unwrap() == "key" {
            assert_eq!(mode, 0o600, "{path:?}");
        } else {
            assert_eq!(mode & 0o044, 0o044, "{path:?} should be readable");
        }
    }
    let site = CertificateDer::from_pem_file(dir.path().join("shop-1.pem"))?;
    assert_eq!(site_alias_from_cert_der(&site)?, "shop-1");
    Ok(())
}

#[test]
fn generate_refuses_to_overwrite_unless_forced() -> Result<()> {
    let dir = tempfile::tempdir()?;
    devcerts::generate(dir.path(), &[], &names(&["shop-1"]), false)?;
    let ca_before = std::fs::read(dir.path().join("ca.pem"))?;
    // A new site, but the CA and hub files exist: nothing may be written.
    let err = devcerts::generate(dir.path(), &[], &names(&["shop-2"]), false).unwrap_err();
    assert!(
        matches!(err, NetError::WouldOverwrite(ref p) if p.ends_with("ca.pem")),
        "{err}"
    );
    assert!(err.to_string().contains("ca.pem"), "{err}");
    assert!(!dir.path().join("shop-2.pem").exists());
    assert_eq!(std::fs::read(dir.path().join("ca.pem"))?, ca_before);

    // A forced overwrite also tightens a loosened key mode.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = dir.path().join("ca.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
        devcerts::generate(dir.path(), &[], &names(&["shop-2"]), true)?;
        assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
    }
    assert_ne!(std::fs::read(dir.path().join("ca.pem"))?, ca_before);
    Ok(())
}

/// `hub certs --force` often runs as root: a symlink planted where a key goes must be replaced
/// by the new file, never written through (here it points at a file outside the directory).
#[cfg(unix)]
#[test]
fn a_forced_overwrite_replaces_a_planted_symlink_instead_of_following_it() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let outside = tempfile::tempdir()?;
    let victim = outside.path().join("passwd");
    std::fs::write(&victim, "root:x:0:0\n")?;
    let dir = tempfile::tempdir()?;
    devcerts::generate(dir.path(), &[], &names(&["shop-1"]), false)?;
    let key = dir.path().join("shop-1.key");
    std::fs::remove_file(&key)?;
    std::os::unix::fs::symlink(&victim, &key)?;

    devcerts::generate(dir.path(), &[], &names(&["shop-1"]), true)?;
    assert_eq!(
        std::fs::read_to_string(&victim)?,
        "root:x:0:0\n",
        "written through the link"
    );
    let meta = std::fs::symlink_metadata(&key)?;
    assert!(meta.file_type().is_file(), "the link is replaced by a file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&key)?.contains("PRIVATE KEY"));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "staging files left: {leftovers:?}");
    Ok(())
}

#[test]
fn bad_site_names_are_refused_before_anything_is_written() {
    let cases: &[(&[&str], &str)] = &[
        (&["a.b"], "site alias \"a.b\": character '.'"),
        (&["../etc"], "character '.'"),
        (&[""], "must not be empty"),
        (&["ca"], "reserved"),
        (&["hub"], "reserved"),
        (&["x", "x"], "given twice"),
    ];
    for (sites, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let err = devcerts::generate(dir.path(), &[], &names(sites), false).unwrap_err();
        assert!(err.to_string().contains(want), "{sites:?}: {err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

#[test]
fn add_site_signs_with_the_existing_ca_and_checks_its_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    devcerts::generate(dir.path(), &[], &[], false)?;
    let written = devcerts::add_site(dir.path(), "shop-9", false)?;
    assert_eq!(
        written,
        vec![dir.path().join("shop-9.pem"), dir.path().join("shop-9.key")]
    );
    let err = devcerts::add_site(dir.path(), "shop-9", false).unwrap_err();
    assert!(matches!(err, NetError::WouldOverwrite(_)), "{err}");
    devcerts::add_site(dir.path(), "shop-9", true)?;

    // A CA key that is not the CA certificate's would sign certificates nobody trusts.
    let other = devcerts::generate_in_memory(&[], &[])?;
    std::fs::write(dir.path().join("ca.key"), other.ca_key_pem)?;
    let err = devcerts::add_site(dir.path(), "shop-10", false).unwrap_err();
    assert!(matches!(err, NetError::CaKeyMismatch { .. }), "{err}");

    let empty = tempfile::tempdir()?;
    let err = devcerts::add_site(empty.path(), "shop-1", false).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("reading CA certificate \""), "{msg}");
    assert!(msg.contains("ca.pem"), "{msg}");
    Ok(())
}

#[test]
fn in_memory_pki_writes_the_same_layout() -> Result<()> {
    let pem = devcerts::generate_in_memory(&[], &names(&["shop-1"]))?;
    assert_eq!(pem.sites.len(), 1);
    assert_eq!(pem.sites[0].0, "shop-1");
    assert!(!format!("{pem:?}").contains("PRIVATE KEY"));
    let dir = tempfile::tempdir()?;
    let written = pem.write_to(dir.path(), false)?;
    assert_eq!(written.len(), 6);
    let pki = DevPki::new(dir.path());
    assert_eq!(
        std::fs::read_to_string(pki.site_tls("shop-1").cert)?,
        pem.sites[0].1
    );
    assert_eq!(std::fs::read_to_string(pki.hub_tls().key)?, pem.hub_key_pem);
    Ok(())
}

/// Each case breaks one file of an otherwise good hub or site setup.
#[tokio::test]
async fn missing_or_garbage_pem_files_are_named_in_the_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    devcerts::generate(dir.path(), &[], &names(&["shop-1"]), false)?;
    let pki = DevPki::new(dir.path());
    let write = |name: &str, contents: &str| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    };
    let missing = dir.path().join("missing.pem");
    let garbage = write("garbage.pem", "this is not PEM\n");
    let truncated = write("truncated.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
    // A certificate where the key should be, readable by its owner only (past the check of a
    // key's permissions), and a real key others may read.
    let cert_as_key = dir.path().join("cert-as.key");
    std::fs::copy(pki.site_tls("shop-1").cert, &cert_as_key)?;
    std::fs::set_permissions(
        &cert_as_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let open_key = dir.path().join("open.key");
    std::fs::copy(pki.site_tls("shop-1").key, &open_key)?;
    std::fs::set_permissions(
        &open_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    let other_key = {
        let other = devcerts::generate_in_memory(&[], &[])?;
        write("other.key", &other.hub_key_pem)
    };

    type Case<'a> = (&'a str, TlsFiles, String);
    let hub = pki.hub_tls();
    let site = pki.site_tls("shop-1");
    let cases: Vec<(bool, Case<'_>)> = vec![
        (
            true,
            (
                "missing CA",
                TlsFiles {
                    ca_cert: missing.clone(),
                    ..hub.clone()
                },
                format!("reading CA certificate {missing:?}: No such file"),
            ),
        ),
        (
            true,
            (
                "garbage CA",
                TlsFiles {
                    ca_cert: garbage.clone(),
                    ..hub.clone()
                },
                format!("reading CA certificate {garbage:?}: no PEM certificate found"),
            ),
        ),
        (
            true,
            (
                "truncated CA",
                TlsFiles {
                    ca_cert: truncated.clone(),
                    ..hub.clone()
                },
                format!("reading CA certificate {truncated:?}: malformed PEM"),
            ),
        ),
        (
            true,
            (
                "garbage server cert",
                TlsFiles {
                    cert: garbage.clone(),
                    ..hub.clone()
                },
                format!("reading server certificate {garbage:?}: no PEM certificate found"),
            ),
        ),
        (
            true,
            (
                "cert instead of key",
                TlsFiles {
                    key: cert_as_key.clone(),
                    ..hub.clone()
                },
                format!("reading server private key {cert_as_key:?}: no PEM private key found"),
            ),
        ),
        (
            false,
            (
                "key others may read",
                TlsFiles {
                    key: open_key.clone(),
                    ..site.clone()
                },
                format!("client private key {open_key:?}: permissions 0644 let other users read"),
            ),
        ),
        (
            true,
            (
                "key of another cert",
                TlsFiles {
                    key: other_key.clone(),
                    ..hub.clone()
                },
                format!("key {other_key:?}"),
            ),
        ),
        (
            false,
            (
                "missing client key",
                TlsFiles {
                    key: missing.clone(),
                    ..site.clone()
                },
                format!("reading client private key {missing:?}: No such file"),
            ),
        ),
        (
            false,
            (
                "garbage client cert",
                TlsFiles {
                    cert: garbage.clone(),
                    ..site.clone()
                },
                format!("reading client certificate {garbage:?}: no PEM certificate found"),
            ),
        ),
        (
            false,
            (
                "garbage CA at client",
                TlsFiles {
                    ca_cert: garbage.clone(),
                    ..site.clone()
                },
                format!("reading CA certificate {garbage:?}: no PEM certificate found"),
            ),
        ),
    ];
    let tuning = TransportTuning::default();
    for (server, (name, tls, want)) in cases {
        let msg = if server {
            server_endpoint(loopback(), &tls, &tuning)
                .unwrap_err()
                .to_string()
        } else {
            client_endpoint(loopback(), &tls, &tuning)
                .unwrap_err()
                .to_string()
        };
        println!("{name}: {msg}");
        assert!(msg.contains(&want), "{name}: {msg:?} lacks {want:?}");
    }
    let msg = client_endpoint_without_cert(loopback(), Path::new("nope/ca.pem"), &tuning)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("reading CA certificate \"nope/ca.pem\""),
        "{msg}"
    );
    Ok(())
}

#[test]
fn revoke_sites_writes_a_growing_crl_the_policy_enforces() -> Result<()> {
    let dir = tempfile::tempdir()?;
    devcerts::generate(
        dir.path(),
        &[],
        &names(&["shop-1", "plant_2", "depot"]),
        false,
    )?;
    let pki = DevPki::new(dir.path());
    let der = |site: &str| -> Result<Vec<u8>> {
        let bytes = std::fs::read(pki.site_tls(site).cert)?;
        Ok(CertificateDer::from_pem_slice(&bytes)?.as_ref().to_vec())
    };
    let policy = || {
        er_net::IdentityPolicy::new(
            er_net::IdentitySettings {
                crl_files: vec![pki.crl()],
                ..Default::default()
            },
            &pki.ca_cert(),
        )
    };
    let reason = |policy: &er_net::IdentityPolicy, site: &str| -> Result<&'static str> {
        Ok(
            match policy.check_certificate(&der(site)?, std::time::SystemTime::now()) {
                Ok(_) => "admitted",
                Err(e) => e.reason(),
            },
        )
    };

    assert_eq!(
        devcerts::revoke_sites(dir.path(), &names(&["shop-1"]))?,
        pki.crl()
    );
    let p = policy()?;
    assert_eq!(reason(&p, "shop-1")?, "revoked");
    assert_eq!(reason(&p, "plant_2")?, "admitted");

    // A second revocation keeps the first; revoking again changes nothing.
    devcerts::revoke_sites(dir.path(), &names(&["plant_2", "shop-1"]))?;
    let p = policy()?;
    assert_eq!(p.crls().revoked_count(), 2);
    assert_eq!(reason(&p, "shop-1")?, "revoked");
    assert_eq!(reason(&p, "plant_2")?, "revoked");
    assert_eq!(reason(&p, "depot")?, "admitted");

    // A site re-issued with --add --force has a new serial: admitted again.
    devcerts::add_site(dir.path(), "shop-1", true)?;
    assert_eq!(reason(&policy()?, "shop-1")?, "admitted");

    let e = devcerts::revoke_sites(dir.path(), &names(&["nobody"])).unwrap_err();
    assert!(e.to_string().contains("nobody.pem"), "{e}");
    Ok(())
}
