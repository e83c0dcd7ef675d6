//! Site identity: the alias a site writes under comes from its verified client certificate,
//! and [`admit`] decides, for every connection (full handshake or resumed session), whether that
//! certificate may write at all: valid now, not revoked, alias allowed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regex::Regex;
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::NetError;
use crate::crl::CrlSet;

/// Longest accepted site alias, in bytes (all accepted characters are ASCII).
pub const MAX_SITE_ALIAS_LEN: usize = er_protocol::policy::MAX_SITE_ALIAS_LEN;

/// Checks that `alias` can name a site: non-empty, at most [`MAX_SITE_ALIAS_LEN`] characters,
/// only `A-Z a-z 0-9 _ -`. The alias becomes a Kafka topic prefix (`<site>.t`), a
/// transactional.id part and a file name, so dots, slashes and spaces are refused.
pub fn validate_site_alias(alias: &str) -> Result<(), NetError> {
    use er_protocol::policy::PolicyError;
    // The rule is the protocol's (one definition for config, certificates and the wire); this
    // only says what is wrong in the words a certificate's owner needs.
    er_protocol::validate_site_alias(alias).map_err(|e| {
        let problem = match e {
            PolicyError::SiteAliasLength { len: 0, .. } => "must not be empty".to_owned(),
            PolicyError::SiteAliasLength { len, .. } => {
                format!("{len} bytes long, at most {MAX_SITE_ALIAS_LEN} allowed")
            }
            PolicyError::SiteAliasChar { ch, .. } => format!(
                "character {ch:?} at byte {} not allowed (only A-Z a-z 0-9 _ -)",
                alias.find(ch).unwrap_or_default()
            ),
            other => other.to_string(),
        };
        NetError::InvalidSiteAlias {
            alias: alias.to_owned(),
            problem,
        }
    })
}

/// The site alias in a DER certificate: its subject CN, which must be the only CN and a valid
/// alias (see [`validate_site_alias`]).
pub fn site_alias_from_cert_der(der: &[u8]) -> Result<String, NetError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| NetError::BadCertificate(e.to_string()))?;
    let subject = cert.subject();
    let no_cn = |problem: String| NetError::NoCommonName {
        subject: subject.to_string(),
        problem,
    };
    let mut cns = subject.iter_common_name();
    let cn = cns
        .next()
        .ok_or_else(|| no_cn("no CN (common name) to take the site alias from".into()))?;
    let extra = cns.count();
    if extra > 0 {
        return Err(no_cn(format!(
            "{} CNs, expected exactly one site alias",
            extra + 1
        )));
    }
    let cn = cn
        .as_str()
        .map_err(|e| no_cn(format!("CN is not a text string: {e}")))?;
    validate_site_alias(cn).map_err(|e| match e {
        NetError::InvalidSiteAlias { alias, problem } => NetError::InvalidSiteAlias {
            alias,
            problem: format!("{problem} (from certificate subject CN)"),
        },
        e => e,
    })?;
    Ok(cn.to_owned())
}

/// The site alias of the peer of a connection accepted by [`server_endpoint`](crate::server_endpoint),
/// taken from the client certificate rustls verified against the CA (leaf certificate's CN).
/// Checks nothing else: the hub uses [`admit`].
pub fn peer_site_alias(conn: &quinn::Connection) -> Result<String, NetError> {
    site_alias_from_cert_der(&peer_leaf(conn).ok_or(NetError::NoPeerCertificate)?)
}

/// The leaf certificate the peer presented (from the handshake or the resumed session).
fn peer_leaf(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    chain.first().cloned()
}

/// Path prefix of a site's SPIFFE ID: `spiffe://<trust-domain>/site/<alias>`.
pub const SPIFFE_SITE_PATH: &str = "/site/";

/// Where a site's alias is read from in its client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum IdentitySource {
    /// The subject common name: exactly one CN, a valid alias.
    #[default]
    CommonName,
    /// A SPIFFE ID in the subject alternative names: exactly one `spiffe://` URI, of the form
    /// `spiffe://<trust_domain>/site/<alias>`.
    SanUri {
        /// The trust domain the URI must name, e.g. `factory.example`.
        trust_domain: String,
    },
}

/// Who may connect, as the hub configures it (`[tls]` of hub.toml).
#[derive(Debug, Clone, Default)]
pub struct IdentitySettings {
    /// Where the alias comes from.
    pub source: IdentitySource,
    /// Whole-name regexes over site aliases (a plain alias matches only itself); `None` allows
    /// every alias the CA certifies.
    pub allowed_sites: Option<Vec<String>>,
    /// CRL files (PEM or DER), each issued by the CA.
    pub crl_files: Vec<PathBuf>,
}

/// The identity policy: alias source, allowlist and the current CRLs (swapped on reload).
/// Shared by the TLS verifier's reloader, [`admit`] and every [`watch_admission`].
#[derive(Debug)]
pub struct IdentityPolicy {
    source: IdentitySource,
    allowed_sites: Option<Vec<(String, Regex)>>,
    ca_certs: Vec<CertificateDer<'static>>,
    crl_files: Vec<PathBuf>,
    crls: tokio::sync::watch::Sender<Arc<CrlSet>>,
}

impl IdentityPolicy {
    /// Compiles the allowlist and loads the CRLs, which must be issued by a CA in `ca_cert`
    /// (the file site certificates chain to).
    pub fn new(settings: IdentitySettings, ca_cert: &Path) -> Result<Self, NetError> {
        if let IdentitySource::SanUri { trust_domain } = &settings.source {
            validate_trust_domain(trust_domain)?;
        }
        let allowed_sites = settings
            .allowed_sites
            .map(|patterns| {
                patterns
                    .into_iter()
                    .enumerate()
                    .map(|(index, p)| match Regex::new(&format!("^(?:{p})$")) {
                        Ok(re) => Ok((p, re)),
                        Err(e) => Err(NetError::AllowedSitePattern {
                            index,
                            pattern: p,
                            problem: e.to_string(),
                        }),
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let ca_certs = crate::pem::load_certs("CA certificate", ca_cert)?;
        let crls = CrlSet::load(&settings.crl_files, &ca_certs)?;
        Ok(Self {
            source: settings.source,
            allowed_sites,
            ca_certs,
            crl_files: settings.crl_files,
            crls: tokio::sync::watch::Sender::new(Arc::new(crls)),
        })
    }

    /// Today's behaviour: alias from the CN, every alias allowed, no CRLs.
    pub fn common_name_only(ca_cert: &Path) -> Result<Self, NetError> {
        Self::new(IdentitySettings::default(), ca_cert)
    }

    /// The configured CRL files.
    pub fn crl_files(&self) -> &[PathBuf] {
        &self.crl_files
    }

    /// The CRLs in force.
    pub fn crls(&self) -> Arc<CrlSet> {
        self.crls.borrow().clone()
    }

    /// Reads the CRL files again, without putting them in force.
    pub(crate) fn crls_from_files(&self) -> Result<Arc<CrlSet>, NetError> {
        CrlSet::load(&self.crl_files, &self.ca_certs).map(Arc::new)
    }

    /// Puts a CRL set in force for [`admit`] and every [`watch_admission`] (which close the
    /// sessions it revokes).
    pub(crate) fn install_crls(&self, set: Arc<CrlSet>) {
        self.crls.send_replace(set);
    }

    /// Checks a leaf certificate (DER) as [`admit`] does, at `now`.
    pub fn check_certificate(
        &self,
        der: &[u8],
        now: SystemTime,
    ) -> Result<SiteIdentity, AdmissionError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| AdmissionError::BadIdentity(format!("not valid X.509 DER: {e}")))?;
        let alias = match &self.source {
            IdentitySource::CommonName => site_alias_from_cert_der(der)
                .map_err(|e| AdmissionError::BadIdentity(e.to_string()))?,
            IdentitySource::SanUri { trust_domain } => {
                site_alias_from_san_uri(&cert, trust_domain).map_err(AdmissionError::BadIdentity)?
            }
        };
        let identity = SiteIdentity {
            alias,
            not_before: to_system_time(cert.validity().not_before.timestamp()),
            not_after: to_system_time(cert.validity().not_after.timestamp()),
            serial: cert.raw_serial_as_string(),
            issuer: cert.issuer().as_raw().to_vec(),
            raw_serial: cert.raw_serial().to_vec(),
        };
        identity.check_validity(now)?;
        self.check_revocation(&identity, &self.crls())?;
        if let Some(allowed) = &self.allowed_sites
            && !allowed.iter().any(|(_, re)| re.is_match(&identity.alias))
        {
            return Err(AdmissionError::NotAllowed {
                alias: identity.alias,
            });
        }
        Ok(identity)
    }

    fn check_revocation(
        &self,
        identity: &SiteIdentity,
        crls: &CrlSet,
    ) -> Result<(), AdmissionError> {
        match crls.revoked_by(&identity.issuer, &identity.raw_serial) {
            Some(crl) => Err(AdmissionError::Revoked {
                alias: identity.alias.clone(),
                serial: identity.serial.clone(),
                crl: crl.to_owned(),
            }),
            None => Ok(()),
        }
    }
}

/// A site admitted by [`admit`]: its alias and certificate facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteIdentity {
    /// The site alias (from the CN or the SPIFFE ID, per the policy).
    pub alias: String,
    /// Start of the certificate's validity.
    pub not_before: SystemTime,
    /// End of the certificate's validity: the session is closed then.
    pub not_after: SystemTime,
    /// Serial number, hex bytes separated by `:`.
    pub serial: String,
    issuer: Vec<u8>,
    raw_serial: Vec<u8>,
}

impl SiteIdentity {
    fn check_validity(&self, now: SystemTime) -> Result<(), AdmissionError> {
        // RFC 5280: valid from notBefore through notAfter inclusive, at second precision.
        let now_s = unix_seconds(now);
        if now_s < unix_seconds(self.not_before) {
            return Err(AdmissionError::NotYetValid {
                alias: self.alias.clone(),
                serial: self.serial.clone(),
                not_before: rfc3339(self.not_before),
            });
        }
        if now_s > unix_seconds(self.not_after) {
            return Err(AdmissionError::Expired {
                alias: self.alias.clone(),
                serial: self.serial.clone(),
                not_after: rfc3339(self.not_after),
            });
        }
        Ok(())
    }
}

/// Why a connection (or a live session) may not write for the site its certificate names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionError {
    /// The peer presented no certificate (not possible through
    /// [`server_endpoint`](crate::server_endpoint)).
    #[error("no client certificate")]
    NoCertificate,
    /// The certificate names no usable site alias under the policy's identity source.
    #[error("no usable site identity in the client certificate: {0}")]
    BadIdentity(String),
    /// The certificate's validity ended (checked at resumption and on live sessions, which TLS
    /// does not do).
    #[error("certificate of site {alias:?} (serial {serial}) expired at {not_after}")]
    Expired {
        /// The site alias.
        alias: String,
        /// The certificate's serial.
        serial: String,
        /// notAfter, RFC 3339.
        not_after: String,
    },
    /// The certificate's validity has not started.
    #[error("certificate of site {alias:?} (serial {serial}) is not valid before {not_before}")]
    NotYetValid {
        /// The site alias.
        alias: String,
        /// The certificate's serial.
        serial: String,
        /// notBefore, RFC 3339.
        not_before: String,
    },
    /// A loaded CRL lists the certificate's serial under its issuer.
    #[error("certificate of site {alias:?} (serial {serial}) is revoked by CRL {crl:?}")]
    Revoked {
        /// The site alias.
        alias: String,
        /// The certificate's serial.
        serial: String,
        /// The CRL file listing it.
        crl: PathBuf,
    },
    /// The alias matches no entry of the allowlist.
    #[error("site {alias:?} is not in tls.allowed_sites")]
    NotAllowed {
        /// The site alias.
        alias: String,
    },
}

impl AdmissionError {
    /// A short stable label for metrics (a bounded set: one per variant).
    pub fn reason(&self) -> &'static str {
        match self {
            AdmissionError::NoCertificate => "no_certificate",
            AdmissionError::BadIdentity(_) => "bad_identity",
            AdmissionError::Expired { .. } => "expired",
            AdmissionError::NotYetValid { .. } => "not_yet_valid",
            AdmissionError::Revoked { .. } => "revoked",
            AdmissionError::NotAllowed { .. } => "not_allowed",
        }
    }
}

/// Decides whether the peer of `conn` may write, at `now`: its leaf certificate is valid at
/// `now`, not revoked by any loaded CRL, and names an allowed alias. Call it for every
/// connection, also for a resumed TLS session (0-RTT): TLS 1.3 resumption does not run the
/// certificate verifier again, so this is the only check a returning site gets.
pub fn admit(
    conn: &quinn::Connection,
    policy: &IdentityPolicy,
    now: SystemTime,
) -> Result<SiteIdentity, AdmissionError> {
    let leaf = peer_leaf(conn).ok_or(AdmissionError::NoCertificate)?;
    policy.check_certificate(&leaf, now)
}

/// Longest wait between re-checks of the clock: wakes survive wall-clock jumps and timers
/// never exceed what tokio supports.
const WATCH_RECHECK: Duration = Duration::from_secs(3600);

/// Waits until the admitted session of `identity` must end: returns the reason when its
/// certificate expires or a reloaded CRL revokes it, `None` when the connection closed first.
/// Run one per connection, next to the session.
pub async fn watch_admission(
    conn: &quinn::Connection,
    policy: &IdentityPolicy,
    identity: &SiteIdentity,
) -> Option<AdmissionError> {
    let mut crls = policy.crls.subscribe();
    loop {
        let now = SystemTime::now();
        if let Err(e) = identity.check_validity(now) {
            return Some(e);
        }
        if let Err(e) = policy.check_revocation(identity, &crls.borrow_and_update()) {
            return Some(e);
        }
        // One second past notAfter: validity is inclusive at second precision.
        let until_expiry = identity
            .not_after
            .duration_since(now)
            .unwrap_or_default()
            .saturating_add(Duration::from_secs(1));
        tokio::select! {
            _ = conn.closed() => return None,
            _ = tokio::time::sleep(until_expiry.min(WATCH_RECHECK)) => {}
            changed = crls.changed() => {
                if changed.is_err() {
                    // The policy is gone (hub shutting down): nothing left to watch.
                    conn.closed().await;
                    return None;
                }
            }
        }
    }
}

/// The notAfter of the first certificate in a PEM file (the hub's or an agent's own, for the
/// expiry gauges).
pub fn certificate_not_after(path: &Path) -> Result<SystemTime, NetError> {
    let certs = crate::pem::load_certs("certificate", path)?;
    let (_, cert) = X509Certificate::from_der(certs[0].as_ref()).map_err(|e| NetError::BadPem {
        what: "certificate",
        path: path.to_owned(),
        problem: format!("not valid X.509: {e}"),
    })?;
    Ok(to_system_time(cert.validity().not_after.timestamp()))
}

fn site_alias_from_san_uri(
    cert: &X509Certificate<'_>,
    trust_domain: &str,
) -> Result<String, String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("subject alternative names unreadable: {e}"))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .filter(|u| {
            u.get(..9)
                .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://"))
        })
        .collect();
    let uri = match uris.as_slice() {
        [uri] => *uri,
        [] => return Err("no spiffe:// URI in the subject alternative names".into()),
        many => {
            return Err(format!(
                "{} spiffe:// URIs in the subject alternative names, expected exactly one",
                many.len()
            ));
        }
    };
    let rest = &uri[9..];
    let (domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if domain != trust_domain {
        return Err(format!(
            "SPIFFE ID {:?}: trust domain {domain:?} is not the configured {trust_domain:?}",
            crate::Untrusted(uri)
        ));
    }
    let alias = path.strip_prefix(SPIFFE_SITE_PATH).ok_or_else(|| {
        format!(
            "SPIFFE ID {:?}: path must be {SPIFFE_SITE_PATH}<alias>",
            crate::Untrusted(uri)
        )
    })?;
    validate_site_alias(alias).map_err(|e| format!("{e} (from SPIFFE ID)"))?;
    Ok(alias.to_owned())
}

/// A SPIFFE trust domain: lowercase letters, digits, `.`, `-`, `_`, not empty.
fn validate_trust_domain(domain: &str) -> Result<(), NetError> {
    if domain.is_empty()
        || !domain
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
    {
        return Err(NetError::TrustDomain(domain.to_owned()));
    }
    Ok(())
}

fn to_system_time(unix_seconds: i64) -> SystemTime {
    match u64::try_from(unix_seconds) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH - Duration::from_secs(unix_seconds.unsigned_abs()),
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC), for messages about certificate times.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = unix_seconds(t);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to civil date (Howard Hinnant's algorithm, proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devcerts::{self, DevPkiPem, SiteCertOptions};
    use rustls_pki_types::pem::PemObject;

    const DAY: Duration = Duration::from_secs(86_400);

    struct Fixture {
        dir: tempfile::TempDir,
        pki: DevPkiPem,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let pki =
                devcerts::generate_in_memory(&[], &["shop-1".into(), "plant-7".into()]).unwrap();
            pki.write_to(dir.path(), false).unwrap();
            Self { dir, pki }
        }

        fn ca(&self) -> PathBuf {
            self.dir.path().join("ca.pem")
        }

        fn policy(&self, settings: IdentitySettings) -> Result<IdentityPolicy, NetError> {
            IdentityPolicy::new(settings, &self.ca())
        }

        fn site_pem(&self, site: &str) -> String {
            let (_, cert, _) = self.pki.sites.iter().find(|s| s.0 == site).unwrap();
            cert.clone()
        }

        fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    fn check(policy: &IdentityPolicy, pem: &str) -> Result<SiteIdentity, AdmissionError> {
        policy.check_certificate(&der(pem), SystemTime::now())
    }

    /// A self-signed certificate with the given SAN URIs (the chain is the verifier's business,
    /// not `check_certificate`'s).
    fn with_uris(uris: &[&str]) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::new()).unwrap();
        p.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI((*u).try_into().unwrap()))
            .collect();
        p.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn common_name_is_the_default_source() {
        let f = Fixture::new();
        let policy = f.policy(IdentitySettings::default()).unwrap();
        let id = check(&policy, &f.site_pem("shop-1")).unwrap();
        assert_eq!(id.alias, "shop-1");
        assert!(id.not_after > SystemTime::now() + 365 * DAY);
        assert!(!id.serial.is_empty());
        // A SPIFFE-named certificate has no alias in its CN ("spiffe workload").
        let (spiffe, _) = f
            .pki
            .issue_site(
                "shop-1",
                &SiteCertOptions {
                    spiffe_trust_domain: Some("factory.example".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        let e = check(&policy, &spiffe).unwrap_err();
        assert_eq!(e.reason(), "bad_identity");
        assert!(e.to_string().contains("spiffe workload"), "{e}");
    }

    #[test]
    fn san_uri_forms() {
        let f = Fixture::new();
        let policy = f
            .policy(IdentitySettings {
                source: IdentitySource::SanUri {
                    trust_domain: "factory.example".into(),
                },
                ..Default::default()
            })
            .unwrap();
        let (spiffe, _) = f
            .pki
            .issue_site(
                "plant-7",
                &SiteCertOptions {
                    spiffe_trust_domain: Some("factory.example".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(check(&policy, &spiffe).unwrap().alias, "plant-7");
        // Other URIs next to the SPIFFE ID do not matter.
        let mixed = with_uris(&[
            "https://example.com/x",
            "spiffe://factory.example/site/depot_2",
        ]);
        assert_eq!(check(&policy, &mixed).unwrap().alias, "depot_2");
        let cases: &[(&str, &str)] = &[
            (&f.site_pem("shop-1"), "no spiffe:// URI"),
            (
                &with_uris(&["spiffe://other.example/site/shop-1"]),
                "trust domain \"other.example\"",
            ),
            (
                &with_uris(&["spiffe://factory.example/workload/shop-1"]),
                "path must be /site/<alias>",
            ),
            (&with_uris(&["spiffe://factory.example/site/a.b"]), "'.'"),
            (
                &with_uris(&["spiffe://factory.example/site/"]),
                "must not be empty",
            ),
            (
                &with_uris(&[
                    "spiffe://factory.example/site/a",
                    "spiffe://factory.example/site/b",
                ]),
                "2 spiffe:// URIs",
            ),
        ];
        for (pem, want) in cases {
            let e = check(&policy, pem).unwrap_err();
            assert_eq!(e.reason(), "bad_identity", "{want}");
            assert!(e.to_string().contains(want), "{e} lacks {want:?}");
        }
        let bad_domain = f.policy(IdentitySettings {
            source: IdentitySource::SanUri {
                trust_domain: "Factory Example".into(),
            },
            ..Default::default()
        });
        assert!(
            matches!(bad_domain, Err(NetError::TrustDomain(_))),
            "{bad_domain:?}"
        );
    }

    #[test]
    fn validity_is_checked_at_now() {
        let f = Fixture::new();
        let policy = f.policy(IdentitySettings::default()).unwrap();
        let now = SystemTime::now();
        let issue = |from, to| {
            f.pki
                .issue_site(
                    "shop-1",
                    &SiteCertOptions {
                        validity: Some((from, to)),
                        ..Default::default()
                    },
                )
                .unwrap()
                .0
        };
        let expired = issue(now - 30 * DAY, now - DAY);
        let e = check(&policy, &expired).unwrap_err();
        assert_eq!(e.reason(), "expired");
        let msg = e.to_string();
        assert!(
            msg.contains("\"shop-1\"") && msg.contains("expired at 20"),
            "{msg}"
        );
        let future = issue(now + DAY, now + 30 * DAY);
        let e = check(&policy, &future).unwrap_err();
        assert_eq!(e.reason(), "not_yet_valid");
        assert!(e.to_string().contains("not valid before"), "{e}");
        // The same certificate at a time inside its validity is fine: `now` is the caller's.
        let id = policy
            .check_certificate(&der(&future), now + 2 * DAY)
            .unwrap();
        assert_eq!(id.alias, "shop-1");
        assert!(matches!(
            policy.check_certificate(&der(&future), now + 31 * DAY),
            Err(AdmissionError::Expired { .. })
        ));
    }

    #[test]
    fn crls_revoke_by_issuer_and_serial() {
        let f = Fixture::new();
        let shop = f.site_pem("shop-1");
        let crl = f.write("ca.crl.pem", f.pki.crl(&[&shop], 1).unwrap().as_bytes());
        let policy = f
            .policy(IdentitySettings {
                crl_files: vec![crl.clone()],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(policy.crls().revoked_count(), 1);
        let e = check(&policy, &shop).unwrap_err();
        assert_eq!(e.reason(), "revoked");
        let msg = e.to_string();
        assert!(
            msg.contains("shop-1") && msg.contains("ca.crl.pem"),
            "{msg}"
        );
        let id = check(&policy, &f.site_pem("plant-7")).unwrap();
        assert_eq!(id.alias, "plant-7");
        // A reissued certificate for the same site has a new serial: admitted.
        let (fresh, _) = f
            .pki
            .issue_site("shop-1", &SiteCertOptions::default())
            .unwrap();
        assert_eq!(check(&policy, &fresh).unwrap().alias, "shop-1");

        // DER works as PEM does.
        let der_crl = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(
            std::fs::read(&crl).unwrap().as_slice(),
        )
        .unwrap();
        let der_path = f.write("ca.crl", der_crl.as_ref());
        let policy = f
            .policy(IdentitySettings {
                crl_files: vec![der_path],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(check(&policy, &shop).unwrap_err().reason(), "revoked");
    }

    #[test]
    fn crls_not_from_the_ca_or_malformed_are_refused_naming_the_file() {
        let f = Fixture::new();
        let other = devcerts::generate_in_memory(&[], &["shop-1".into()]).unwrap();
        let foreign = f.write("foreign.crl.pem", other.crl(&[], 1).unwrap().as_bytes());
        let garbage = f.write("garbage.crl", b"not a crl");
        let empty_pem = f.write(
            "empty.pem",
            b"-----BEGIN NOTHING-----\n-----END NOTHING-----\n",
        );
        for (path, want) in [
            (foreign, "not a configured CA"),
            (garbage, "not a valid X.509 CRL"),
            (empty_pem, "no PEM"),
        ] {
            let e = f
                .policy(IdentitySettings {
                    crl_files: vec![path.clone()],
                    ..Default::default()
                })
                .unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, NetError::BadCrl { .. }), "{msg}");
            assert!(
                msg.contains(want) && msg.contains(path.file_name().unwrap().to_str().unwrap()),
                "{msg} lacks {want:?}"
            );
        }
    }

    #[test]
    fn allowlist_matches_whole_names() {
        let f = Fixture::new();
        let policy = f
            .policy(IdentitySettings {
                allowed_sites: Some(vec!["plant-[0-9]+".into(), "shop".into()]),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            check(&policy, &f.site_pem("plant-7")).unwrap().alias,
            "plant-7"
        );
        let e = check(&policy, &f.site_pem("shop-1")).unwrap_err();
        assert_eq!(
            e,
            AdmissionError::NotAllowed {
                alias: "shop-1".into()
            }
        );
        assert_eq!(e.to_string(), "site \"shop-1\" is not in tls.allowed_sites");
        let bad = f.policy(IdentitySettings {
            allowed_sites: Some(vec!["ok".into(), "(".into()]),
            ..Default::default()
        });
        assert!(
            matches!(bad, Err(NetError::AllowedSitePattern { index: 1, .. })),
            "{bad:?}"
        );
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723)),
            "2000-02-29T01:02:03Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(4_102_444_799)),
            "2099-12-31T23:59:59Z"
        );
    }

    #[test]
    fn alias_rules() {
        let long = "a".repeat(MAX_SITE_ALIAS_LEN);
        let too_long = "a".repeat(MAX_SITE_ALIAS_LEN + 1);
        let cases: &[(&str, Option<&str>)] = &[
            ("shop-1", None),
            ("Plant_7", None),
            (&long, None),
            ("", Some("must not be empty")),
            (&too_long, Some("65 bytes long")),
            ("a.b", Some("'.' at byte 1")),
            ("a/b", Some("'/'")),
            ("a b", Some("' '")),
            ("café", Some("'é'")),
        ];
        for (alias, want) in cases {
            let got = validate_site_alias(alias);
            match (want, got) {
                (None, Ok(())) => {}
                (Some(w), Err(e)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(w), "{alias:?}: {msg:?} lacks {w:?}");
                }
                (want, got) => panic!("{alias:?}: want {want:?}, got {got:?}"),
            }
        }
    }
}
