//! Who may write, connection by connection: the site identity policy applied on the hub (every
//! connection, resumed ones included), refusals counted and logged, and a watcher per session
//! that closes it when its certificate expires or a reloaded CRL revokes it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use er_net::{AdmissionError, IdentityPolicy, SiteIdentity};
use tracing::warn;

use crate::server::close_code;

/// The close code telling an agent why its certificate was refused.
pub fn close_code_for(e: &AdmissionError) -> u32 {
    match e {
        AdmissionError::Expired { .. } | AdmissionError::NotYetValid { .. } => {
            close_code::CERT_EXPIRED
        }
        AdmissionError::Revoked { .. } => close_code::REVOKED,
        _ => close_code::UNAUTHORIZED,
    }
}

/// Why a connection is refused: the close code and the text the agent gets.
#[derive(Debug)]
pub struct Refusal {
    /// QUIC application close code (`crate::server::close_code`).
    pub code: u32,
    /// Reason text sent with the close.
    pub reason: String,
}

/// Applies the identity policy to a connection whose certificate is known (after the full
/// handshake, or at once for a resumed session). A refusal is logged and counted; the caller
/// closes the connection with it.
pub fn admit(
    conn: &quinn::Connection,
    policy: &IdentityPolicy,
    remote: SocketAddr,
) -> Result<SiteIdentity, Refusal> {
    match er_net::admit(conn, policy, SystemTime::now()) {
        Ok(identity) => {
            crate::metrics::set_site_certificate_expiry(&identity.alias, identity.not_after);
            Ok(identity)
        }
        Err(e) => {
            crate::events::ConnectionRefused {
                remote,
                why: crate::events::Refused::Admission(&e),
            }
            .emit();
            Err(Refusal {
                code: close_code_for(&e),
                reason: e.to_string(),
            })
        }
    }
}

/// Reports a connection whose TLS handshake failed (the verifier refused its certificate, or
/// it gave up).
pub fn handshake_refused(conn: &quinn::Connection, remote: SocketAddr) {
    let error = conn.close_reason();
    crate::events::ConnectionRefused {
        remote,
        why: crate::events::Refused::Handshake {
            reason: er_net::handshake_refusal_reason(error.as_ref()),
            error: error.as_ref(),
        },
    }
    .emit();
}

/// Watches an admitted session for the life of its connection: closes it (close code
/// `CERT_EXPIRED` or `REVOKED`) when its certificate expires or a reloaded CRL revokes it.
pub fn spawn_watcher(conn: quinn::Connection, policy: Arc<IdentityPolicy>, identity: SiteIdentity) {
    tokio::spawn(async move {
        if let Some(e) = er_net::watch_admission(&conn, &policy, &identity).await {
            warn!(site = %identity.alias, reason = e.reason(), error = %e, "closing the site's session: its certificate is no longer admitted");
            conn.close(close_code_for(&e).into(), e.to_string().as_bytes());
        }
    });
}
