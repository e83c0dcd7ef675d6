//! Certificate revocation lists: loaded from PEM or DER files, checked against the CA, and
//! looked up by (issuer, serial) for connections the TLS verifier does not see again (resumed
//! sessions, live sessions after a reload).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::NetError;

/// The revocation lists of a set of files: the DER of each (for rustls' verifier) and the
/// revoked serials per issuer (for [`admit`](crate::admit)).
#[derive(Debug, Clone, Default)]
pub struct CrlSet {
    ders: Vec<CertificateRevocationListDer<'static>>,
    /// Raw DER of the issuer name -> revoked serials (leading zero bytes stripped) -> the file
    /// that revoked it.
    revoked: HashMap<Vec<u8>, HashMap<Vec<u8>, PathBuf>>,
}

impl CrlSet {
    /// Reads every CRL in `files` (each PEM with one or more `X509 CRL` sections, or one DER
    /// CRL). Each must be issued and signed by a certificate in `ca_certs` (the CA site
    /// certificates chain to): a CRL from elsewhere would be ignored by the verifier and would
    /// only look like protection.
    pub fn load(files: &[PathBuf], ca_certs: &[CertificateDer<'_>]) -> Result<Self, NetError> {
        let mut set = CrlSet::default();
        for path in files {
            let bytes = std::fs::read(path).map_err(|source| NetError::ReadFile {
                what: "CRL",
                path: path.clone(),
                source,
            })?;
            let bad = |problem: String| NetError::BadCrl {
                path: path.clone(),
                problem,
            };
            let ders: Vec<CertificateRevocationListDer<'static>> =
                if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
                    CertificateRevocationListDer::pem_slice_iter(&bytes)
                        .collect::<Result<_, _>>()
                        .map_err(|e| bad(format!("malformed PEM: {e}")))?
                } else {
                    vec![CertificateRevocationListDer::from(bytes)]
                };
            if ders.is_empty() {
                return Err(bad("no PEM `X509 CRL` section found".into()));
            }
            for (i, der) in ders.into_iter().enumerate() {
                let (rest, crl) = CertificateRevocationList::from_der(der.as_ref())
                    .map_err(|e| bad(format!("CRL #{i} is not a valid X.509 CRL: {e}")))?;
                if !rest.is_empty() {
                    return Err(bad(format!(
                        "CRL #{i} has {} trailing bytes after its DER",
                        rest.len()
                    )));
                }
                check_issuer(&crl, ca_certs).map_err(|p| bad(format!("CRL #{i}: {p}")))?;
                let serials = set
                    .revoked
                    .entry(crl.issuer().as_raw().to_vec())
                    .or_default();
                for revoked in crl.iter_revoked_certificates() {
                    serials.insert(normalize_serial(revoked.raw_serial()), path.clone());
                }
                set.ders.push(der);
            }
        }
        Ok(set)
    }

    /// The CRLs, for rustls' client certificate verifier.
    pub fn ders(&self) -> &[CertificateRevocationListDer<'static>] {
        &self.ders
    }

    /// The file that revokes the certificate of `issuer` (raw DER name) with `serial`, if any.
    pub fn revoked_by(&self, issuer: &[u8], serial: &[u8]) -> Option<&Path> {
        self.revoked
            .get(issuer)?
            .get(&normalize_serial(serial))
            .map(PathBuf::as_path)
    }

    /// Revoked serials over all CRLs.
    pub fn revoked_count(&self) -> usize {
        self.revoked.values().map(HashMap::len).sum()
    }
}

/// The modification time and length of each file (`None` for one that cannot be read): a
/// reloader compares snapshots taken before each load to notice changes.
pub(crate) fn stamps(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

/// DER integers may carry a leading 0x00 (sign); compare magnitudes.
fn normalize_serial(serial: &[u8]) -> Vec<u8> {
    let start = serial.iter().position(|&b| b != 0).unwrap_or(serial.len());
    serial[start..].to_vec()
}

/// The CRL's issuer is one of the CA certificates, and the CRL is signed by its key.
fn check_issuer(
    crl: &CertificateRevocationList<'_>,
    ca_certs: &[CertificateDer<'_>],
) -> Result<(), String> {
    let mut names = HashSet::new();
    for der in ca_certs {
        let Ok((_, ca)) = X509Certificate::from_der(der.as_ref()) else {
            continue;
        };
        if ca.subject().as_raw() == crl.issuer().as_raw() {
            return crl.verify_signature(ca.public_key()).map_err(|e| {
                format!(
                    "signature does not verify with the key of CA {:?}: {e}",
                    ca.subject().to_string()
                )
            });
        }
        names.insert(ca.subject().to_string());
    }
    Err(format!(
        "issued by {:?}, which is not a configured CA (CAs: {names:?})",
        crl.issuer().to_string()
    ))
}
