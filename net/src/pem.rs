//! Loading PEM certificates and keys with errors that name the file.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::NetError;

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, NetError> {
    std::fs::read(path).map_err(|source| NetError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

fn bad_pem(what: &'static str, path: &Path, problem: impl Into<String>) -> NetError {
    NetError::BadPem {
        what,
        path: path.to_owned(),
        problem: problem.into(),
    }
}

fn pem_problem(e: &pem::Error) -> String {
    format!("malformed PEM: {e}")
}

/// All certificates in a PEM file, in file order; at least one.
pub(crate) fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let bytes = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(what, path, pem_problem(&e)))?;
    if certs.is_empty() {
        return Err(bad_pem(what, path, "no PEM certificate found"));
    }
    Ok(certs)
}

/// Permission bits a private key file may not have: any access by other users, or writing by
/// the group (a group may read it: root-owned keys shared with a service group, mode 0640).
#[cfg(unix)]
const KEY_MODE_FORBIDDEN: u32 = 0o027;

/// Refuses a private key file that others may read or the group may change (like ssh does for
/// its identity files): a leaked key is a site. Follows symlinks (Kubernetes secret volumes
/// are links into a directory of real files).
fn check_key_permissions(what: &'static str, path: &Path) -> Result<(), NetError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|source| NetError::ReadFile {
            what,
            path: path.to_owned(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & KEY_MODE_FORBIDDEN != 0 {
            return Err(NetError::KeyPermissions {
                what,
                path: path.to_owned(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (what, path);
    Ok(())
}

/// The first private key in a PEM file, which only its owner (and group) may read.
pub(crate) fn load_key(
    what: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, NetError> {
    check_key_permissions(what, path)?;
    let bytes = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => bad_pem(what, path, "no PEM private key found"),
        e => bad_pem(what, path, pem_problem(&e)),
    })
}

/// A root store holding every certificate in the CA file.
pub(crate) fn load_roots(path: &Path) -> Result<RootCertStore, NetError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("CA certificate", path)? {
        roots.add(cert).map_err(|source| NetError::BadCaCert {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_others_may_read_or_the_group_may_change_is_refused_naming_file_and_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("site.key");
        std::fs::write(&path, "not even a key").expect("write");
        for (mode, refused) in [
            (0o600, false),
            (0o400, false),
            (0o640, false),
            (0o644, true),
            (0o604, true),
            (0o660, true),
            (0o666, true),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let got = load_key("client private key", &path);
            match got {
                Err(NetError::KeyPermissions { mode: m, .. }) => {
                    assert!(refused, "{mode:o} refused");
                    assert_eq!(m, mode);
                    let text = got.unwrap_err().to_string();
                    assert!(
                        text.contains("site.key") && text.contains(&format!("{mode:04o}")),
                        "{text}"
                    );
                }
                // Past the check, the content is refused.
                Err(NetError::BadPem { .. }) => assert!(!refused, "{mode:o} accepted"),
                other => panic!("{mode:o}: {other:?}"),
            }
        }
    }
}
