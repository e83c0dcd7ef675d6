//! The crate's error type.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong setting up transport, checking a peer's identity or generating
/// dev certificates. Messages name the file or value at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// A PEM file could not be read from disk.
    #[error("reading {what} {path:?}: {source}")]
    ReadFile {
        /// What the file should contain, e.g. "CA certificate".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A private key file others may read or anyone but its owner may change.
    #[error(
        "{what} {path:?}: permissions {mode:04o} let other users read or change it; make it readable by the service user only (chmod 600, or 640 with a dedicated group)"
    )]
    KeyPermissions {
        /// What the file should contain, e.g. "server private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// A PEM file was read but holds nothing usable (no PEM section of the expected kind, or
    /// malformed PEM).
    #[error("reading {what} {path:?}: {problem}")]
    BadPem {
        /// What the file should contain, e.g. "CA certificate".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong, e.g. "no PEM certificate found".
        problem: String,
    },

    /// A CA certificate was parsed as PEM but rustls refused it as a trust anchor.
    #[error("reading CA certificate {path:?}: not a usable trust anchor: {source}")]
    BadCaCert {
        /// The CA file.
        path: PathBuf,
        /// Why rustls refused it.
        #[source]
        source: rustls::Error,
    },

    /// rustls refused the configuration built from the given files (e.g. key does not match
    /// the certificate, unsupported key type).
    #[error("TLS configuration from {context}: {source}")]
    TlsConfig {
        /// The files involved, e.g. `cert "hub.pem", key "hub.key"`.
        context: String,
        /// Why rustls refused.
        #[source]
        source: rustls::Error,
    },

    /// The client certificate verifier could not be built from the CA file.
    #[error("building client certificate verifier from CA {path:?}: {source}")]
    ClientVerifier {
        /// The CA file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },

    /// quinn refused the rustls configuration (no TLS 1.3 cipher suite usable for QUIC).
    #[error("QUIC crypto setup: {0}")]
    QuicCrypto(String),

    /// A [`TransportTuning`](crate::TransportTuning) value is out of range or inconsistent.
    #[error("transport tuning {field} = {value}: {problem}")]
    Tuning {
        /// The field, e.g. "keep_alive".
        field: &'static str,
        /// The value given, formatted.
        value: String,
        /// What is wrong with it.
        problem: String,
    },

    /// The UDP socket could not be bound or set up.
    #[error("UDP socket on {addr}: {source}")]
    Socket {
        /// The address to bind.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// An endpoint was created outside a tokio runtime.
    #[error(
        "creating QUIC endpoint on {addr}: no tokio runtime (call from inside a tokio runtime)"
    )]
    NoRuntime {
        /// The address the endpoint was for.
        addr: SocketAddr,
    },

    /// The peer presented no certificate (only possible on a connection not made by
    /// [`server_endpoint`](crate::server_endpoint), which requires one).
    #[error("peer presented no certificate")]
    NoPeerCertificate,

    /// A certificate could not be parsed as X.509.
    #[error("peer certificate is not valid X.509 DER: {0}")]
    BadCertificate(String),

    /// The certificate's subject has no usable common name to take the site alias from.
    #[error("certificate subject {subject:?}: {problem}")]
    NoCommonName {
        /// The subject distinguished name as text.
        subject: String,
        /// What is wrong, e.g. "no CN" or "2 CNs".
        problem: String,
    },

    /// A site alias (from a certificate CN or given to dev cert generation) is not valid.
    #[error("site alias {alias:?}: {problem}")]
    InvalidSiteAlias {
        /// The alias as given.
        alias: String,
        /// What is wrong with it.
        problem: String,
    },

    /// A CRL file holds no usable revocation list (malformed, or not issued by the CA).
    #[error("reading CRL {path:?}: {problem}")]
    BadCrl {
        /// The CRL file.
        path: PathBuf,
        /// What was wrong.
        problem: String,
    },

    /// An entry of the site allowlist is not a valid regex.
    #[error("allowed_sites[{index}] {pattern:?}: not a valid regex: {problem}")]
    AllowedSitePattern {
        /// Position in the list.
        index: usize,
        /// The entry.
        pattern: String,
        /// The regex error.
        problem: String,
    },

    /// A SPIFFE trust domain with characters SPIFFE does not allow.
    #[error(
        "SPIFFE trust domain {0:?}: must be non-empty lowercase letters, digits, '.', '-', '_'"
    )]
    TrustDomain(String),

    /// rcgen failed to generate a key or certificate.
    #[error("generating {what}: {source}")]
    CertGen {
        /// What was being generated, e.g. `site certificate "shop-1"`.
        what: String,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },

    /// The existing CA key does not belong to the CA certificate.
    #[error("CA key {key:?} does not match CA certificate {cert:?}")]
    CaKeyMismatch {
        /// The CA certificate file.
        cert: PathBuf,
        /// The CA key file.
        key: PathBuf,
    },

    /// Dev cert generation would overwrite a file and `force` was not set.
    #[error("refusing to overwrite existing file {0:?} (use force to replace it)")]
    WouldOverwrite(PathBuf),

    /// Writing a generated file (or creating its directory) failed.
    #[error("writing {path:?}: {source}")]
    WriteFile {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
