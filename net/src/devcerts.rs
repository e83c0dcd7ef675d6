//! Dev PKI: a CA, a hub server certificate and per-site client certificates, generated with
//! rcgen for tests, the quickstart and small deployments.
//!
//! Layout of a dev PKI directory: `ca.pem` + `ca.key`, `hub.pem` + `hub.key`, and
//! `<site>.pem` + `<site>.key` per site. Keys are PKCS#8 PEM (ECDSA P-256) written with mode
//! 0600; the site certificate's subject CN is the site alias the hub will trust. Tests also issue
//! SPIFFE-named, expired and not yet valid site certificates and CRLs
//! ([`DevPkiPem::issue_site`], [`DevPkiPem::crl`]).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{NetError, TlsFiles, validate_site_alias};

/// Hub SANs used when [`generate`] is given none: loopback only.
pub const DEFAULT_HUB_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// Years a generated certificate stays valid.
const VALIDITY_YEARS: i32 = 10;

/// Where the files of a dev PKI live inside one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    dir: PathBuf,
}

impl DevPki {
    /// The layout in `dir` (nothing is read or written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `ca.pem`: the CA certificate both sides trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `ca.key`: the CA private key (needed only to add or revoke sites).
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// `ca.crl.pem`: the CRL [`revoke_sites`] writes.
    pub fn crl(&self) -> PathBuf {
        self.dir.join("ca.crl.pem")
    }

    /// The hub's files: `ca.pem`, `hub.pem`, `hub.key`.
    pub fn hub_tls(&self) -> TlsFiles {
        self.tls("hub")
    }

    /// A site's files: `ca.pem`, `<site>.pem`, `<site>.key`.
    pub fn site_tls(&self, site: &str) -> TlsFiles {
        self.tls(site)
    }

    fn tls(&self, name: &str) -> TlsFiles {
        TlsFiles {
            ca_cert: self.ca_cert(),
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        }
    }
}

/// A generated dev PKI as PEM strings.
#[derive(Clone)]
pub struct DevPkiPem {
    /// CA certificate.
    pub ca_cert_pem: String,
    /// CA private key.
    pub ca_key_pem: String,
    /// Hub server certificate (server-auth EKU, SANs = hub names).
    pub hub_cert_pem: String,
    /// Hub private key.
    pub hub_key_pem: String,
    /// Per site: (alias, certificate PEM, private key PEM). The certificate's CN is the alias.
    pub sites: Vec<(String, String, String)>,
}

impl fmt::Debug for DevPkiPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys stay out of logs.
        f.debug_struct("DevPkiPem")
            .field(
                "sites",
                &self.sites.iter().map(|s| &s.0).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl DevPkiPem {
    /// Writes the files of the [`DevPki`] layout into `dir` (created if missing). Refuses to
    /// overwrite any existing file unless `force`, checking all before writing any. Returns the
    /// paths written.
    pub fn write_to(&self, dir: &Path, force: bool) -> Result<Vec<PathBuf>, NetError> {
        let pki = DevPki::new(dir);
        let hub = pki.hub_tls();
        let mut files = vec![
            (pki.ca_cert(), &self.ca_cert_pem, false),
            (pki.ca_key(), &self.ca_key_pem, true),
            (hub.cert, &self.hub_cert_pem, false),
            (hub.key, &self.hub_key_pem, true),
        ];
        for (alias, cert, key) in &self.sites {
            let site = pki.site_tls(alias);
            files.push((site.cert, cert, false));
            files.push((site.key, key, true));
        }
        write_files(dir, &files, force)
    }
}

/// How [`DevPkiPem::issue_site`] shapes a site certificate; the default is what [`generate`]
/// issues (CN = alias, valid from last year for ten years).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteCertOptions {
    /// Name the site by a SPIFFE ID `spiffe://<trust domain>/site/<alias>` in a SAN URI instead
    /// of the CN (the CN is then `spiffe workload`, which is not the alias).
    pub spiffe_trust_domain: Option<String>,
    /// `(not_before, not_after)` instead of the default validity: for expired or not yet valid
    /// certificates in tests.
    pub validity: Option<(SystemTime, SystemTime)>,
}

impl DevPkiPem {
    /// Issues one more site certificate (PEM certificate, PEM key) from this PKI's CA.
    pub fn issue_site(
        &self,
        site: &str,
        options: &SiteCertOptions,
    ) -> Result<(String, String), NetError> {
        check_site_name(site)?;
        site_cert_with(site, &self.issuer()?, options)
    }

    /// A CRL (PEM) signed by this PKI's CA listing the given certificates (PEM) as revoked.
    /// `number` is the CRL number, which must grow with each CRL the CA issues.
    pub fn crl(&self, revoked_cert_pems: &[&str], number: u64) -> Result<String, NetError> {
        let serials = revoked_cert_pems
            .iter()
            .map(|pem| {
                let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
                    .map_err(|e| crl_gen(format!("revoked certificate is not PEM: {e}")))?;
                let (_, cert) = X509Certificate::from_der(der.as_ref())
                    .map_err(|e| crl_gen(format!("revoked certificate is not X.509: {e}")))?;
                Ok(cert.raw_serial().to_vec())
            })
            .collect::<Result<Vec<_>, NetError>>()?;
        crl_pem(&self.issuer()?, serials, number)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, NetError> {
        let key =
            KeyPair::from_pem(&self.ca_key_pem).map_err(|source| cert_gen("CA key", source))?;
        Issuer::from_ca_cert_pem(&self.ca_cert_pem, key)
            .map_err(|source| cert_gen("CA issuer", source))
    }
}

/// A CRL (PEM) signed by `issuer` revoking `serials` (raw DER integers), valid from the middle
/// of last year to the start of the year after next (verifiers here do not enforce it).
fn crl_pem(
    issuer: &Issuer<'_, KeyPair>,
    serials: Vec<Vec<u8>>,
    number: u64,
) -> Result<String, NetError> {
    let year = current_year();
    let revoked_certs = serials
        .into_iter()
        .map(|serial| RevokedCertParams {
            serial_number: SerialNumber::from(serial),
            revocation_time: rcgen::date_time_ymd(year - 1, 6, 1),
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        })
        .collect();
    let params = CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(year - 1, 6, 1),
        next_update: rcgen::date_time_ymd(year + 2, 1, 1),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(issuer)
        .map_err(|source| cert_gen("CRL", source))?;
    crl.pem().map_err(|source| cert_gen("CRL PEM", source))
}

/// Revokes the certificates of `sites` in `out_dir` (their `<site>.pem`): (re)writes `ca.crl.pem`,
/// signed by the CA there, listing them and every serial the previous `ca.crl.pem` listed, with
/// the next CRL number. Point the hub's `tls.crl_files` at it; it reloads the file when it
/// changes. Returns the CRL's path. Issue a new certificate for a revoked site with
/// [`add_site`] and `force`.
pub fn revoke_sites(out_dir: &Path, sites: &[String]) -> Result<PathBuf, NetError> {
    let pki = DevPki::new(out_dir);
    let issuer = load_issuer(&pki)?;
    let crl_path = pki.crl();
    let mut serials: Vec<Vec<u8>> = Vec::new();
    let mut number = 1u64;
    if crl_path.exists() {
        let bytes = std::fs::read(&crl_path).map_err(|source| NetError::ReadFile {
            what: "CRL",
            path: crl_path.clone(),
            source,
        })?;
        let bad = |problem: String| NetError::BadCrl {
            path: crl_path.clone(),
            problem,
        };
        let der = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(&bytes)
            .map_err(|e| bad(format!("malformed PEM: {e}")))?;
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(der.as_ref())
                .map_err(|e| bad(format!("not a valid X.509 CRL: {e}")))?;
        serials.extend(
            crl.iter_revoked_certificates()
                .map(|r| r.raw_serial().to_vec()),
        );
        let previous = crl
            .crl_number()
            .map(|n| n.to_bytes_be())
            .filter(|b| b.len() <= 8)
            .map_or(0, |b| {
                b.iter().fold(0u64, |acc, &x| acc << 8 | u64::from(x))
            });
        number = previous.saturating_add(1);
    }
    for site in sites {
        check_site_name(site)?;
        let path = pki.site_tls(site).cert;
        let der = crate::pem::load_certs("site certificate", &path)?
            .into_iter()
            .next()
            .expect("load_certs returns at least one certificate");
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| NetError::BadPem {
            what: "site certificate",
            path: path.clone(),
            problem: format!("not valid X.509: {e}"),
        })?;
        let serial = cert.raw_serial().to_vec();
        if !serials.contains(&serial) {
            serials.push(serial);
        }
    }
    let pem = crl_pem(&issuer, serials, number)?;
    // Replaced atomically: the hub may read it at any moment.
    let tmp = out_dir.join("ca.crl.pem.tmp");
    write_file(&tmp, &pem, false, true)
        .and_then(|()| std::fs::rename(&tmp, &crl_path))
        .map_err(|source| NetError::WriteFile {
            path: crl_path.clone(),
            source,
        })?;
    Ok(crl_path)
}

fn crl_gen(problem: String) -> NetError {
    NetError::BadCrl {
        path: PathBuf::from("<generated>"),
        problem,
    }
}

/// Creates `ca.pem` + `ca.key`, `hub.pem` + `hub.key` (SANs: `hub_names`, DNS names or IP
/// addresses such as "localhost", "127.0.0.1", "::1"; [`DEFAULT_HUB_NAMES`] if empty) and per
/// site `<site>.pem` + `<site>.key` (CN = site alias, client-auth EKU) in `out_dir`. Refuses to
/// overwrite existing files unless `force`. Returns the paths written.
pub fn generate(
    out_dir: &Path,
    hub_names: &[String],
    sites: &[String],
    force: bool,
) -> Result<Vec<PathBuf>, NetError> {
    generate_in_memory(hub_names, sites)?.write_to(out_dir, force)
}

/// Adds `<site>.pem` + `<site>.key` to `out_dir`, signed by the CA already there (`ca.pem` +
/// `ca.key`). Refuses to overwrite the site's files unless `force`. Returns the paths written.
pub fn add_site(out_dir: &Path, site: &str, force: bool) -> Result<Vec<PathBuf>, NetError> {
    check_site_name(site)?;
    let pki = DevPki::new(out_dir);
    let issuer = load_issuer(&pki)?;
    let (cert, key) = site_cert(site, &issuer)?;
    let tls = pki.site_tls(site);
    write_files(
        out_dir,
        &[(tls.cert, &cert, false), (tls.key, &key, true)],
        force,
    )
}

/// The CA of a dev PKI directory as an issuer, after checking that key and certificate belong
/// together.
fn load_issuer(pki: &DevPki) -> Result<Issuer<'static, KeyPair>, NetError> {
    let (ca_cert_path, ca_key_path) = (pki.ca_cert(), pki.ca_key());
    let ca_cert_pem = read_text("CA certificate", &ca_cert_path)?;
    let ca_key_pem = read_text("CA private key", &ca_key_path)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| NetError::BadPem {
        what: "CA private key",
        path: ca_key_path.clone(),
        problem: e.to_string(),
    })?;
    let ca_der = crate::pem::load_certs("CA certificate", &ca_cert_path)?
        .into_iter()
        .next()
        .expect("load_certs returns at least one certificate");
    let (_, parsed) = X509Certificate::from_der(&ca_der).map_err(|e| NetError::BadPem {
        what: "CA certificate",
        path: ca_cert_path.clone(),
        problem: format!("not valid X.509: {e}"),
    })?;
    if parsed.public_key().raw != ca_key.subject_public_key_info().as_slice() {
        return Err(NetError::CaKeyMismatch {
            cert: ca_cert_path,
            key: ca_key_path,
        });
    }
    Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key).map_err(|e| NetError::BadPem {
        what: "CA certificate",
        path: ca_cert_path.clone(),
        problem: format!("cannot sign with it: {e}"),
    })
}

/// The same PKI as [`generate`], as PEM strings, nothing written. Use
/// [`DevPkiPem::write_to`] to put it in a directory.
pub fn generate_in_memory(hub_names: &[String], sites: &[String]) -> Result<DevPkiPem, NetError> {
    for (i, site) in sites.iter().enumerate() {
        check_site_name(site)?;
        if sites[..i].contains(site) {
            return Err(NetError::InvalidSiteAlias {
                alias: site.clone(),
                problem: "given twice".into(),
            });
        }
    }
    let hub_names: Vec<String> = if hub_names.is_empty() {
        DEFAULT_HUB_NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        hub_names.to_vec()
    };

    let ca_key = new_key("CA key")?;
    let mut ca = params(Vec::new(), "CA certificate")?;
    // A name unique to this CA's key: webpki picks issuers by name, so two dev CAs sharing a
    // name would turn "unknown CA" into a confusing "bad signature".
    let key_id: String = ca.key_identifier(&ca_key)[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    ca.distinguished_name = dn(&format!("edge-replicator dev CA {key_id}"));
    // No intermediates in a dev PKI.
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(|source| cert_gen("CA certificate", source))?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);

    let what = format!("hub certificate for {hub_names:?}");
    let hub_key = new_key("hub key")?;
    let mut hub = params(hub_names, &what)?;
    hub.distinguished_name = dn("edge-replicator hub");
    hub.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    hub.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    hub.use_authority_key_identifier_extension = true;
    let hub_cert = hub
        .signed_by(&hub_key, &issuer)
        .map_err(|source| cert_gen(&what, source))?;

    let sites = sites
        .iter()
        .map(|site| {
            let (cert, key) = site_cert(site, &issuer)?;
            Ok((site.clone(), cert, key))
        })
        .collect::<Result<_, NetError>>()?;

    Ok(DevPkiPem {
        ca_cert_pem: ca_cert.pem(),
        ca_key_pem,
        hub_cert_pem: hub_cert.pem(),
        hub_key_pem: hub_key.serialize_pem(),
        sites,
    })
}

/// A valid alias that also does not collide with the CA or hub files.
fn check_site_name(site: &str) -> Result<(), NetError> {
    validate_site_alias(site)?;
    if site == "ca" || site == "hub" {
        return Err(NetError::InvalidSiteAlias {
            alias: site.into(),
            problem: "reserved: its files would collide with the CA's or hub's in the dev PKI \
                      directory"
                .into(),
        });
    }
    Ok(())
}

/// Client certificate (PEM) and key (PEM) for `site`.
fn site_cert(site: &str, issuer: &Issuer<'_, KeyPair>) -> Result<(String, String), NetError> {
    site_cert_with(site, issuer, &SiteCertOptions::default())
}

fn site_cert_with(
    site: &str,
    issuer: &Issuer<'_, KeyPair>,
    options: &SiteCertOptions,
) -> Result<(String, String), NetError> {
    let what = format!("site certificate {site:?}");
    let key = new_key(&what)?;
    let mut p = params(Vec::new(), &what)?;
    p.distinguished_name = dn(site);
    if let Some(domain) = &options.spiffe_trust_domain {
        let uri = format!("spiffe://{domain}{}{site}", crate::SPIFFE_SITE_PATH);
        p.distinguished_name = dn("spiffe workload");
        p.subject_alt_names = vec![SanType::URI(
            uri.as_str()
                .try_into()
                .map_err(|source| cert_gen(&what, source))?,
        )];
    }
    if let Some((not_before, not_after)) = options.validity {
        p.not_before = not_before.into();
        p.not_after = not_after.into();
    }
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    let cert = p
        .signed_by(&key, issuer)
        .map_err(|source| cert_gen(&what, source))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn params(names: Vec<String>, what: &str) -> Result<CertificateParams, NetError> {
    let mut p = CertificateParams::new(names).map_err(|source| cert_gen(what, source))?;
    // From 1 January of last year (tolerates clock skew) for VALIDITY_YEARS.
    let year = current_year();
    p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    p.not_after = rcgen::date_time_ymd(year + VALIDITY_YEARS, 1, 1);
    Ok(p)
}

fn current_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Mean Gregorian year; off by at most a day around New Year, which not_before absorbs.
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn new_key(what: &str) -> Result<KeyPair, NetError> {
    KeyPair::generate().map_err(|source| cert_gen(what, source))
}

fn cert_gen(what: &str, source: rcgen::Error) -> NetError {
    NetError::CertGen {
        what: what.to_owned(),
        source,
    }
}

fn read_text(what: &'static str, path: &Path) -> Result<String, NetError> {
    std::fs::read_to_string(path).map_err(|source| NetError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Writes `(path, contents, is_private_key)` files; keys get mode 0600. Checks every path
/// before writing anything so a refusal leaves the directory as it was.
fn write_files(
    dir: &Path,
    files: &[(PathBuf, &String, bool)],
    force: bool,
) -> Result<Vec<PathBuf>, NetError> {
    if !force && let Some((path, _, _)) = files.iter().find(|(path, _, _)| path.exists()) {
        return Err(NetError::WouldOverwrite(path.clone()));
    }
    std::fs::create_dir_all(dir).map_err(|source| NetError::WriteFile {
        path: dir.to_owned(),
        source,
    })?;
    let mut written = Vec::with_capacity(files.len());
    for (path, contents, private) in files {
        write_file(path, contents, *private, force).map_err(|source| NetError::WriteFile {
            path: path.clone(),
            source,
        })?;
        written.push(path.clone());
    }
    Ok(written)
}

/// Writes one file. A forced overwrite writes a new file next to it and renames it over the
/// old one, so a symlink planted where a file is expected is replaced, never followed (a root
/// `hub certs --force` must not write through a link into some other file).
fn write_file(path: &Path, contents: &str, private: bool, force: bool) -> std::io::Result<()> {
    let target = path;
    let staged;
    let path = if force {
        let name = path.file_name().map_or_else(
            || std::ffi::OsString::from("file"),
            std::ffi::OsStr::to_os_string,
        );
        let mut tmp = std::ffi::OsString::from(".");
        tmp.push(&name);
        tmp.push(format!(".{}.tmp", std::process::id()));
        staged = path.with_file_name(tmp);
        // A leftover of an interrupted run (never a file of ours otherwise).
        let _ = std::fs::remove_file(&staged);
        staged.as_path()
    } else {
        path
    };
    let mut options = std::fs::OpenOptions::new();
    // Never an existing file or link: a forced write goes to a fresh staging file; otherwise
    // this also catches a file that appeared since the up-front check.
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path)?;
    let written = file
        .write_all(contents.as_bytes())
        .and_then(|()| file.sync_all());
    if force {
        if let Err(e) = written.and_then(|()| std::fs::rename(path, target)) {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        return Ok(());
    }
    written
}
