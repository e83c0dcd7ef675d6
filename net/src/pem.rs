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

/// The first private key in a PEM file.
pub(crate) fn load_key(
    what: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, NetError> {
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
