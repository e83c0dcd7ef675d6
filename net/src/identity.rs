//! Site identity: the alias a site writes under comes from its verified client certificate.

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::NetError;

/// Longest accepted site alias, in bytes (all accepted characters are ASCII).
pub const MAX_SITE_ALIAS_LEN: usize = 64;

/// Checks that `alias` can name a site: non-empty, at most [`MAX_SITE_ALIAS_LEN`] characters,
/// only `A-Z a-z 0-9 _ -`. The alias becomes a Kafka topic prefix (`<site>.t`), a
/// transactional.id part and a file name, so dots, slashes and spaces are refused.
pub fn validate_site_alias(alias: &str) -> Result<(), NetError> {
    let invalid = |problem: String| NetError::InvalidSiteAlias {
        alias: alias.to_owned(),
        problem,
    };
    if alias.is_empty() {
        return Err(invalid("must not be empty".into()));
    }
    if alias.len() > MAX_SITE_ALIAS_LEN {
        return Err(invalid(format!(
            "{} bytes long, at most {MAX_SITE_ALIAS_LEN} allowed",
            alias.len()
        )));
    }
    if let Some((i, c)) = alias
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(invalid(format!(
            "character {c:?} at byte {i} not allowed (only A-Z a-z 0-9 _ -)"
        )));
    }
    Ok(())
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
pub fn peer_site_alias(conn: &quinn::Connection) -> Result<String, NetError> {
    let identity = conn.peer_identity().ok_or(NetError::NoPeerCertificate)?;
    let chain = identity
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .map_err(|_| NetError::NoPeerCertificate)?;
    let leaf = chain.first().ok_or(NetError::NoPeerCertificate)?;
    site_alias_from_cert_der(leaf)
}

#[cfg(test)]
mod tests {
    use super::*;

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
