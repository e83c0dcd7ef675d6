//! QUIC endpoints: rustls (TLS 1.3 only, mutual auth, ALPN) plus flow-control tuning.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::ServerName;

use crate::crl::CrlSet;
use crate::pem::{load_certs, load_key, load_roots};
use crate::{ALPN, IdentityPolicy, NetError, TlsFiles};

const MIB: u64 = 1024 * 1024;

/// UDP send and receive buffer size requested for every endpoint socket. The kernel caps it
/// (`net.core.rmem_max` / `wmem_max` on Linux) without an error; the size granted is logged at
/// debug level. Small default buffers drop bursts at high rates long before QUIC's windows fill.
pub const UDP_SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// QUIC transport settings applied to both sides of the link.
///
/// quinn's defaults (about 1.25 MB stream window) suit roughly 100 Mbit/s at 100 ms RTT. A
/// sender can have at most one window in flight per round trip, so for a faster or longer link
/// raise the windows to the bandwidth-delay product (bandwidth in bytes/s times RTT in
/// seconds): 1 Gbit/s at 100 ms wants about 12.5 MB. The receive windows also bound how much
/// memory a peer can make us buffer (ARCHITECTURE.md, design invariant 7): at most `receive_window` per
/// connection, and `stream_receive_window` per stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportTuning {
    /// Interval between keep-alive pings while the connection is otherwise quiet; zero
    /// disables them. Must be shorter than `idle_timeout` and than the peer's idle timeout (the
    /// effective idle timeout is the smaller of both sides'), or quiet links get closed.
    pub keep_alive: Duration,
    /// A connection with no packets received for this long is closed. Also how fast a dead link
    /// is noticed. Must be non-zero.
    pub idle_timeout: Duration,
    /// Bytes one stream may have in flight toward us unread (per-stream flow-control window).
    /// One stream carries one source partition, so this bounds a single partition's throughput
    /// to about `stream_receive_window / RTT`.
    pub stream_receive_window: u64,
    /// Bytes all streams of one connection together may have in flight toward us unread.
    pub receive_window: u64,
    /// Bytes we keep buffered and unacknowledged toward the peer, all streams together.
    pub send_window: u64,
    /// Unidirectional streams the peer may have open at once.
    pub max_concurrent_uni_streams: u32,
    /// Bidirectional streams the peer may have open at once (one per replicated partition,
    /// plus control streams).
    pub max_concurrent_bidi_streams: u32,
}

impl Default for TransportTuning {
    /// Keep-alive 2 s, idle timeout 10 s, stream window 8 MiB, connection and send windows
    /// 64 MiB (about 670 Mbit/s per stream and 5 Gbit/s per connection at 100 ms RTT), 4096
    /// concurrent streams of each kind.
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            stream_receive_window: 8 * MIB,
            receive_window: 64 * MIB,
            send_window: 64 * MIB,
            max_concurrent_uni_streams: 4096,
            max_concurrent_bidi_streams: 4096,
        }
    }
}

impl TransportTuning {
    /// The quinn transport config, after checking values quinn would reject or that make no
    /// sense together.
    pub fn to_transport_config(&self) -> Result<quinn::TransportConfig, NetError> {
        fn varint(field: &'static str, value: u64) -> Result<VarInt, NetError> {
            VarInt::from_u64(value).map_err(|_| NetError::Tuning {
                field,
                value: value.to_string(),
                problem: format!("exceeds the QUIC maximum {}", VarInt::MAX),
            })
        }
        if self.idle_timeout.is_zero() {
            return Err(NetError::Tuning {
                field: "idle_timeout",
                value: "0s".into(),
                problem: "must be non-zero (a dead link would never be noticed)".into(),
            });
        }
        let idle = IdleTimeout::try_from(self.idle_timeout).map_err(|_| NetError::Tuning {
            field: "idle_timeout",
            value: format!("{:?}", self.idle_timeout),
            problem: "too large for QUIC".into(),
        })?;
        if !self.keep_alive.is_zero() && self.keep_alive >= self.idle_timeout {
            return Err(NetError::Tuning {
                field: "keep_alive",
                value: format!("{:?}", self.keep_alive),
                problem: format!(
                    "must be shorter than idle_timeout ({:?}), or quiet connections time out",
                    self.idle_timeout
                ),
            });
        }
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval((!self.keep_alive.is_zero()).then_some(self.keep_alive))
            .max_idle_timeout(Some(idle))
            .stream_receive_window(varint("stream_receive_window", self.stream_receive_window)?)
            .receive_window(varint("receive_window", self.receive_window)?)
            .send_window(self.send_window)
            .max_concurrent_uni_streams(self.max_concurrent_uni_streams.into())
            .max_concurrent_bidi_streams(self.max_concurrent_bidi_streams.into());
        Ok(t)
    }
}

/// Resumable TLS sessions a hub remembers (each site holds up to two tickets; an entry is its
/// certificate chain and secrets, a few KiB). A site whose ticket fell out does a full handshake.
const SESSION_CACHE_ENTRIES: usize = 8192;

/// Servers a client remembers sessions for (an agent talks to one hub).
const CLIENT_SESSION_CACHE_ENTRIES: usize = 8;

fn provider() -> Arc<CryptoProvider> {
    // Explicit provider: the process-wide default may be unset, or another crate's choice.
    Arc::new(rustls::crypto::ring::default_provider())
}

fn files_context(tls: &TlsFiles) -> String {
    format!(
        "cert {:?}, key {:?}, CA {:?}",
        tls.cert, tls.key, tls.ca_cert
    )
}

/// Binds a UDP socket with raised buffers and wraps it in a quinn endpoint.
fn bind_endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, NetError> {
    let socket_err = |source| NetError::Socket { addr, source };
    let runtime = quinn::default_runtime().ok_or(NetError::NoRuntime { addr })?;
    let socket = UdpSocket::bind(addr).map_err(socket_err)?;
    let state = quinn::udp::UdpSocketState::new((&socket).into()).map_err(socket_err)?;
    for (kind, result) in [
        (
            "receive",
            state.set_recv_buffer_size((&socket).into(), UDP_SOCKET_BUFFER_BYTES),
        ),
        (
            "send",
            state.set_send_buffer_size((&socket).into(), UDP_SOCKET_BUFFER_BYTES),
        ),
    ] {
        if let Err(e) = result {
            tracing::warn!(%addr, kind, requested = UDP_SOCKET_BUFFER_BYTES, error = %e,
                "could not raise UDP socket buffer");
        }
    }
    tracing::debug!(
        %addr,
        recv_buffer = state.recv_buffer_size((&socket).into()).ok(),
        send_buffer = state.send_buffer_size((&socket).into()).ok(),
        "UDP socket buffers"
    );
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
        .map_err(socket_err)
}

/// A QUIC server on `listen` that only accepts clients whose certificate chains to
/// `tls.ca_cert` (TLS 1.3 only, ALPN [`ALPN`]). Handshakes of clients without a certificate or
/// with a certificate from another CA fail; [`peer_site_alias`](crate::peer_site_alias) then
/// names the site of an accepted connection. No CRLs: the hub uses
/// [`server_endpoint_with_policy`]. Must be called inside a tokio runtime.
pub fn server_endpoint(
    listen: SocketAddr,
    tls: &TlsFiles,
    tuning: &TransportTuning,
) -> Result<quinn::Endpoint, NetError> {
    let policy = Arc::new(IdentityPolicy::common_name_only(&tls.ca_cert)?);
    server_endpoint_with_policy(listen, tls, tuning, policy).map(|(endpoint, _)| endpoint)
}

/// How often [`CrlReloader::run`] looks at the CRL files' modification times.
pub const CRL_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Like [`server_endpoint`], with the CRLs of `policy` in the handshake's certificate verifier.
/// Returns the endpoint and the [`CrlReloader`] that keeps verifier and `policy` in step with the
/// CRL files (spawn [`CrlReloader::run`]). A full handshake with a revoked certificate fails
/// with the TLS alert `certificate_revoked`; resumed sessions and live ones are the job of
/// [`admit`](crate::admit) and [`watch_admission`](crate::watch_admission).
pub fn server_endpoint_with_policy(
    listen: SocketAddr,
    tls: &TlsFiles,
    tuning: &TransportTuning,
    policy: Arc<IdentityPolicy>,
) -> Result<(quinn::Endpoint, CrlReloader), NetError> {
    let transport = tuning.to_transport_config()?;
    // Stamps before the policy's CRLs were read (just now, by the caller): a change since shows.
    let stamps = crate::crl::stamps(policy.crl_files());
    let parts = ServerParts {
        roots: Arc::new(load_roots(&tls.ca_cert)?),
        chain: load_certs("server certificate", &tls.cert)?,
        key: load_key("server private key", &tls.key)?,
        context: files_context(tls),
        ca_cert: tls.ca_cert.clone(),
        // One session store for every verifier generation: tickets issued before a CRL reload
        // still resume after it (and meet `admit`), instead of silently forcing full handshakes.
        sessions: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES),
    };
    let crypto = parts.crypto(&policy.crls())?;
    let mut server = quinn::ServerConfig::with_crypto(crypto);
    server.transport_config(Arc::new(transport));
    let endpoint = bind_endpoint(listen, Some(server.clone()))?;
    let reloader = CrlReloader {
        endpoint: endpoint.clone(),
        server,
        parts,
        policy,
        stamps,
    };
    Ok((endpoint, reloader))
}

/// What the server's rustls config is rebuilt from when the CRLs change.
struct ServerParts {
    roots: Arc<rustls::RootCertStore>,
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    context: String,
    ca_cert: std::path::PathBuf,
    sessions: Arc<rustls::server::ServerSessionMemoryCache>,
}

impl ServerParts {
    fn crypto(&self, crls: &CrlSet) -> Result<Arc<QuicServerConfig>, NetError> {
        let provider = provider();
        let mut verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone());
        if !crls.ders().is_empty() {
            // Only the site certificate is looked up (a dev PKI has no intermediates, and a
            // missing CRL for an intermediate must not lock every site out); CRLs are the
            // operator's files, so a serial they do not mention is simply not revoked.
            verifier = verifier
                .with_crls(crls.ders().iter().cloned())
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status();
        }
        let verifier = verifier
            .build()
            .map_err(|source| NetError::ClientVerifier {
                path: self.ca_cert.clone(),
                source,
            })?;
        let tls_err = |source| NetError::TlsConfig {
            context: self.context.clone(),
            source,
        };
        let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(tls_err)?;
        crypto.alpn_protocols = vec![ALPN.to_vec()];
        // Resumption: a returning site skips the certificate exchange, and its hello may come
        // as 0-RTT data (quinn wants 0 or u32::MAX here). Tickets are stateful and single-use
        // (rustls takes them out of this cache), so one hub accepts a given 0-RTT flight once;
        // the hub still treats an early hello as replayable and changes nothing before the
        // handshake ends. The certificate of a resumed session is checked by `admit`.
        crypto.max_early_data_size = u32::MAX;
        crypto.session_storage = self.sessions.clone();
        let crypto =
            QuicServerConfig::try_from(crypto).map_err(|e| NetError::QuicCrypto(e.to_string()))?;
        Ok(Arc::new(crypto))
    }
}

/// Keeps a server endpoint's certificate verifier and its [`IdentityPolicy`]'s CRLs in step with
/// the CRL files: polls their modification times, and on a change loads them again, swaps the
/// endpoint's server config (new handshakes) and the policy's CRL set (resumptions, live
/// sessions). A set that fails to load is logged and the old one stays in force.
pub struct CrlReloader {
    endpoint: quinn::Endpoint,
    server: quinn::ServerConfig,
    parts: ServerParts,
    policy: Arc<IdentityPolicy>,
    stamps: Vec<Option<(std::time::SystemTime, u64)>>,
}

impl std::fmt::Debug for CrlReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrlReloader")
            .field("crl_files", &self.policy.crl_files())
            .finish_non_exhaustive()
    }
}

/// What one [`CrlReloader::poll`] did.
#[derive(Debug)]
pub enum CrlReload {
    /// No CRL file changed since the last poll.
    Unchanged,
    /// The files changed and the new set is in force.
    Reloaded {
        /// Revoked serials in the new set.
        revoked: usize,
    },
    /// The files changed but could not be loaded; the previous set stays in force. Not retried
    /// until the files change again.
    Failed(NetError),
}

impl CrlReloader {
    /// Checks the CRL files once and reloads them if any changed (see [`CrlReload`]).
    pub fn poll(&mut self) -> CrlReload {
        let stamps = crate::crl::stamps(self.policy.crl_files());
        if stamps == self.stamps {
            return CrlReload::Unchanged;
        }
        self.stamps = stamps;
        self.reload()
    }

    /// Loads the CRL files now, changed or not.
    pub fn reload(&mut self) -> CrlReload {
        let set = match self.policy.crls_from_files() {
            Ok(set) => set,
            Err(e) => return CrlReload::Failed(e),
        };
        // The verifier first: once the policy swaps, live sessions are judged by the new set,
        // and a new handshake must not slip through on the old one.
        match self.parts.crypto(&set) {
            Ok(crypto) => {
                self.server.crypto = crypto;
                self.endpoint.set_server_config(Some(self.server.clone()));
            }
            Err(e) => return CrlReload::Failed(e),
        }
        let revoked = set.revoked_count();
        self.policy.install_crls(set);
        CrlReload::Reloaded { revoked }
    }

    /// Polls every `interval`, forever (returns at once without CRL files): spawn it, and abort
    /// it at shutdown. Logs each reload (info) and each failed one (error).
    pub async fn run(mut self, interval: Duration) {
        if self.policy.crl_files().is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.poll() {
                CrlReload::Unchanged => {}
                CrlReload::Reloaded { revoked } => tracing::info!(
                    files = ?self.policy.crl_files(),
                    revoked,
                    "CRL files changed: new revocation lists in force"
                ),
                CrlReload::Failed(e) => tracing::error!(
                    error = %e,
                    "CRL files changed but cannot be loaded; the previous revocation lists stay in force"
                ),
            }
        }
    }
}

/// A short stable label (a bounded set) for why a client's TLS handshake failed, from the TLS
/// alert the connection closed with: `revoked`, `expired`, `bad_certificate` (unknown CA, bad
/// signature, unsupported), `no_certificate`, or `handshake` for anything else.
pub fn handshake_refusal_reason(error: Option<&quinn::ConnectionError>) -> &'static str {
    use rustls::AlertDescription as A;
    let code = match error {
        Some(quinn::ConnectionError::TransportError(t)) => t.code,
        Some(quinn::ConnectionError::ConnectionClosed(c)) => c.error_code,
        _ => return "handshake",
    };
    let alert = |a: A| quinn::TransportErrorCode::crypto(u8::from(a));
    if code == alert(A::CertificateRevoked) {
        "revoked"
    } else if code == alert(A::CertificateExpired) {
        "expired"
    } else if code == alert(A::CertificateRequired) {
        "no_certificate"
    } else if [
        A::UnknownCA,
        A::BadCertificate,
        A::UnsupportedCertificate,
        A::DecryptError,
        A::CertificateUnknown,
    ]
    .into_iter()
    .any(|a| code == alert(a))
    {
        "bad_certificate"
    } else {
        "handshake"
    }
}

/// A QUIC client endpoint bound to `bind` (e.g. `0.0.0.0:0`) presenting `tls.cert` and
/// verifying the hub against `tls.ca_cert`. Returns the endpoint, whose default client config is
/// already set, and that config. Connect with `endpoint.connect(hub_addr, server_name)`, where
/// `server_name` is a DNS name or IP in the hub certificate. Reconnects resume the TLS session
/// and may send 0-RTT data (see [`TicketGate`]). Must be called inside a tokio runtime.
pub fn client_endpoint(
    bind: SocketAddr,
    tls: &TlsFiles,
    tuning: &TransportTuning,
) -> Result<(quinn::Endpoint, quinn::ClientConfig), NetError> {
    client_endpoint_gated(bind, tls, tuning).map(|(endpoint, config, _)| (endpoint, config))
}

/// Like [`client_endpoint`], plus the [`TicketGate`] of its session tickets.
pub fn client_endpoint_gated(
    bind: SocketAddr,
    tls: &TlsFiles,
    tuning: &TransportTuning,
) -> Result<(quinn::Endpoint, quinn::ClientConfig, TicketGate), NetError> {
    let (config, gate) = client_config(tls, tuning)?;
    let mut endpoint = bind_endpoint(bind, None)?;
    endpoint.set_default_client_config(config.clone());
    Ok((endpoint, config, gate))
}

/// The client config [`client_endpoint_gated`] sets on its endpoint, without binding a socket:
/// for one process that connects many identities over a few endpoints (e.g. a fleet
/// simulator), each connection with `endpoint.connect_with(config, addr, server_name)` on an
/// endpoint from [`client_only_endpoint`]. Resumption and 0-RTT work as for
/// [`client_endpoint_gated`], per config.
pub fn client_config(
    tls: &TlsFiles,
    tuning: &TransportTuning,
) -> Result<(quinn::ClientConfig, TicketGate), NetError> {
    let chain = load_certs("client certificate", &tls.cert)?;
    let key = load_key("client private key", &tls.key)?;
    let gate = TicketGate::default();
    let config = client_crypto(
        &tls.ca_cert,
        Some((chain, key, files_context(tls))),
        tuning,
        Some(&gate),
    )?;
    Ok((config, gate))
}

/// A client endpoint bound to `bind` with raised UDP buffers and no default client config:
/// every connection names its own ([`client_config`]). Must be called inside a tokio runtime.
pub fn client_only_endpoint(bind: SocketAddr) -> Result<quinn::Endpoint, NetError> {
    bind_endpoint(bind, None)
}

/// Whether new connection attempts may spend a TLS session ticket (resume the session and send
/// 0-RTT data). Tickets are single-use and a client holds only the few the hub sent, so an
/// attempt into a dead link wastes one: a client probing a silent hub closes the gate, and
/// opens it again once the hub answered (its probes are then full handshakes, whose new
/// tickets are kept). Open when created.
#[derive(Debug, Clone)]
pub struct TicketGate(Arc<AtomicBool>);

impl Default for TicketGate {
    fn default() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
}

impl TicketGate {
    /// Lets attempts use tickets (`true`) or keeps them for later (`false`).
    pub fn set_open(&self, open: bool) {
        self.0.store(open, Ordering::Relaxed);
    }

    /// Whether attempts may use tickets now.
    pub fn is_open(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// rustls' in-memory session store, handing out TLS 1.3 tickets only while the gate is open.
#[derive(Debug)]
struct GatedSessions {
    inner: rustls::client::ClientSessionMemoryCache,
    gate: TicketGate,
}

impl rustls::client::ClientSessionStore for GatedSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(server_name, value);
    }

    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.inner.insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        if self.gate.is_open() {
            self.inner.take_tls13_ticket(server_name)
        } else {
            None
        }
    }
}

/// Like [`client_endpoint`] but presenting no client certificate; the hub must refuse it. For
/// tests of that refusal.
pub fn client_endpoint_without_cert(
    bind: SocketAddr,
    ca_cert: &Path,
    tuning: &TransportTuning,
) -> Result<(quinn::Endpoint, quinn::ClientConfig), NetError> {
    client(bind, ca_cert, None, tuning, None)
}

type ClientIdentity = (
    Vec<rustls_pki_types::CertificateDer<'static>>,
    rustls_pki_types::PrivateKeyDer<'static>,
    String,
);

fn client(
    bind: SocketAddr,
    ca_cert: &Path,
    identity: Option<ClientIdentity>,
    tuning: &TransportTuning,
    gate: Option<&TicketGate>,
) -> Result<(quinn::Endpoint, quinn::ClientConfig), NetError> {
    let config = client_crypto(ca_cert, identity, tuning, gate)?;
    let mut endpoint = bind_endpoint(bind, None)?;
    endpoint.set_default_client_config(config.clone());
    Ok((endpoint, config))
}

fn client_crypto(
    ca_cert: &Path,
    identity: Option<ClientIdentity>,
    tuning: &TransportTuning,
    gate: Option<&TicketGate>,
) -> Result<quinn::ClientConfig, NetError> {
    let transport = tuning.to_transport_config()?;
    let roots = load_roots(ca_cert)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| NetError::TlsConfig {
            context: format!("CA {ca_cert:?}"),
            source,
        })?
        .with_root_certificates(roots);
    let mut crypto = match identity {
        Some((chain, key, context)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|source| NetError::TlsConfig { context, source })?,
        None => builder.with_no_client_auth(),
    };
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    // Lets a reconnect send its hello in 0-RTT (the only replay-safe frame; see the hub).
    crypto.enable_early_data = true;
    if let Some(gate) = gate {
        crypto.resumption = rustls::client::Resumption::store(Arc::new(GatedSessions {
            inner: rustls::client::ClientSessionMemoryCache::new(CLIENT_SESSION_CACHE_ENTRIES),
            gate: gate.clone(),
        }));
    }
    let crypto =
        QuicClientConfig::try_from(crypto).map_err(|e| NetError::QuicCrypto(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tuning_is_accepted() {
        TransportTuning::default().to_transport_config().unwrap();
    }

    #[test]
    fn bad_tuning_is_rejected_naming_the_field() {
        let base = TransportTuning::default();
        let cases = [
            (
                TransportTuning {
                    keep_alive: Duration::from_secs(10),
                    ..base.clone()
                },
                "keep_alive = 10s: must be shorter than idle_timeout (10s)",
            ),
            (
                TransportTuning {
                    idle_timeout: Duration::ZERO,
                    ..base.clone()
                },
                "idle_timeout = 0s",
            ),
            (
                TransportTuning {
                    receive_window: u64::MAX,
                    ..base.clone()
                },
                "receive_window = 18446744073709551615: exceeds",
            ),
        ];
        for (tuning, want) in cases {
            let msg = tuning.to_transport_config().unwrap_err().to_string();
            assert!(msg.contains(want), "{msg:?} lacks {want:?}");
        }
    }

    #[test]
    fn zero_keep_alive_disables_it() {
        TransportTuning {
            keep_alive: Duration::ZERO,
            ..TransportTuning::default()
        }
        .to_transport_config()
        .unwrap();
    }
}
