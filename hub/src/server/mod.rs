//! The QUIC server: accepts sites ([`accept`]), sends each to the hub that owns its shard, and
//! runs one session per connected site ([`session`]) over the shared fleet
//! ([`crate::fleet::Fleet`]).

mod accept;

pub use accept::Listener;
mod budget;
mod session;
mod streams;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Validated;
use crate::fleet::Fleet;
use crate::kafka::KafkaOpError;

/// QUIC application close codes the hub uses.
pub mod close_code {
    /// Orderly shutdown.
    pub const SHUTDOWN: u32 = 0;
    /// The peer broke the protocol.
    pub const PROTOCOL: u32 = 1;
    /// The certificate does not name a valid site.
    pub const UNAUTHORIZED: u32 = 2;
    /// The central cluster or the hub failed; the agent should reconnect and resume.
    pub const INTERNAL: u32 = 3;
    /// A newer connection of the same site replaced this one.
    pub const SUPERSEDED: u32 = 4;
    /// The site's certificate expired (or is not valid yet): at resumption or during a session.
    pub const CERT_EXPIRED: u32 = 5;
    /// A CRL revokes the site's certificate: at resumption or during a session.
    pub const REVOKED: u32 = 6;
    /// Another hub of the group serves the site (a redirect was sent), or the site's shard
    /// moved away; the agent should connect again.
    pub const NOT_OWNER: u32 = 7;
    /// The site holds `limits.max_connections_per_site` connections already; the agent should
    /// try again later.
    pub const TOO_MANY_CONNECTIONS: u32 = 8;
}

/// How long a new connection of a site waits for the session it replaces to end and for that
/// session's batches to be written.
const HANDOVER_WAIT: Duration = Duration::from_secs(10);

/// How long a failing fleet start waits before trying again.
const START_RETRY: Duration = Duration::from_secs(5);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionEnd {
    /// The agent broke the protocol or sent a bad batch.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The hub or a central cluster failed; the agent resumes from committed positions.
    #[error("{0}")]
    Internal(String),
    /// The site belongs to another hub (or nobody owns its shard right now).
    #[error("{0}")]
    NotOwner(String),
    /// The group coordinator fenced a transaction of the site's: whoever owns the shard now,
    /// the site reconnects and resumes from committed positions.
    #[error("{0}")]
    Fenced(String),
    /// The site was sent to the hub that owns its shard.
    #[error("redirected to hub {0:?}")]
    Redirected(String),
    /// A newer connection of the site replaced this one.
    #[error("superseded by a newer connection")]
    Superseded,
    /// The link failed or the agent closed it.
    #[error("{0}")]
    Link(String),
}

impl SessionEnd {
    fn from_stream(e: er_net::wire::StreamError) -> Self {
        use er_net::wire::StreamError;
        match e {
            StreamError::Decode(d) => SessionEnd::Protocol(format!("malformed frame: {d}")),
            StreamError::Truncated(_) => SessionEnd::Protocol(e.to_string()),
            other => SessionEnd::Link(other.to_string()),
        }
    }

    /// Logs why the session ended and closes its connection with the matching code.
    fn report(self, conn: &quinn::Connection) {
        let code = match &self {
            SessionEnd::Protocol(m) => {
                warn!(error = %m, "closing connection: protocol violation");
                close_code::PROTOCOL
            }
            SessionEnd::Internal(m) => {
                warn!(error = %m, "closing connection; the site will resume from committed positions");
                close_code::INTERNAL
            }
            SessionEnd::NotOwner(m) => {
                info!(reason = %m, "closing connection: the site is served elsewhere");
                close_code::NOT_OWNER
            }
            SessionEnd::Fenced(m) => {
                info!(reason = %m, "closing connection: the shard's ownership changed; the site resumes from committed positions");
                close_code::NOT_OWNER
            }
            SessionEnd::Redirected(hub) => {
                info!(owner = %hub, "site sent to the hub that owns its shard");
                close_code::NOT_OWNER
            }
            SessionEnd::Superseded => {
                info!("a newer connection of the site replaces this one");
                close_code::SUPERSEDED
            }
            SessionEnd::Link(m) => {
                info!(reason = %m, "site link lost");
                return;
            }
        };
        conn.close(code.into(), self.to_string().as_bytes());
    }
}

/// State shared by all sessions of one hub process.
pub struct Hub {
    fleet: Arc<Fleet>,
    next_session: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("hub_id", &self.fleet.config.raw.hub_id)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Starts the fleet machinery (topics, group membership, writers, checkpointers), trying
    /// again while the coordination cluster cannot be reached; `None` if `shutdown` came
    /// first. A layout mismatch (e.g. a different `fleet.shards`) is not retried.
    pub async fn start(
        config: Validated,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        loop {
            let cfg = config.clone();
            let rt = tokio::runtime::Handle::current();
            match tokio::task::spawn_blocking(move || Fleet::start(rt, cfg)).await? {
                Ok(fleet) => {
                    let fleet = Arc::new(fleet);
                    tokio::spawn(fleet.clone().run_loader(shutdown.clone()));
                    return Ok(Some(Arc::new(Self {
                        fleet,
                        next_session: AtomicU64::new(1),
                    })));
                }
                Err(e @ KafkaOpError::Layout { .. }) => return Err(e.into()),
                Err(e) => {
                    warn!(error = %e, retry_s = START_RETRY.as_secs(), "cannot start the fleet; trying again");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(START_RETRY) => {}
                _ = shutdown.changed() => return Ok(None),
            }
        }
    }

    /// The fleet this hub serves.
    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }
}

/// The same positions, in any order.
fn same_positions(a: &[er_protocol::Position], b: &[er_protocol::Position]) -> bool {
    let key = |ps: &[er_protocol::Position]| {
        let mut v: Vec<_> = ps
            .iter()
            .map(|p| (p.tp.topic.clone(), p.tp.partition, p.next_offset))
            .collect();
        v.sort();
        v
    };
    a.len() == b.len() && key(a) == key(b)
}
