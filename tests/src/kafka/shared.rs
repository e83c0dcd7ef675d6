//! Brokers shared by all tests of one test process.

use std::sync::{Mutex, OnceLock};

use super::KafkaNode;

/// The "edge" and "central" clusters shared by the tests of one process (see [`shared`]).
#[derive(Debug)]
pub struct SharedKafka {
    /// Bootstrap address of the edge-site cluster.
    pub edge: String,
    /// Bootstrap address of the central cluster.
    pub central: String,
    /// True when attached to brokers from the environment rather than started here.
    pub attached: bool,
    central2: OnceLock<Result<String, String>>,
}

/// Nodes started by [`shared`]: never dropped; the atexit hook kills them and removes their dirs.
static NODES: Mutex<Vec<KafkaNode>> = Mutex::new(Vec::new());

fn keep(node: KafkaNode) -> String {
    let bootstrap = node.bootstrap().to_string();
    NODES.lock().unwrap_or_else(|e| e.into_inner()).push(node);
    bootstrap
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The shared edge and central clusters, started on first use (both in parallel, ~5-10 s) or
/// attached to when `ER_EDGE_BOOTSTRAP` and `ER_CENTRAL_BOOTSTRAP` are set.
///
/// Tests share them: always use [`crate::unique_name`] for topics, groups and transactional ids,
/// and never stop or restart them (start a private [`KafkaNode`] for chaos tests).
///
/// # Panics
/// If the brokers cannot be started (with the broker log in the message), in every test that
/// calls it.
pub fn shared() -> &'static SharedKafka {
    static SHARED: OnceLock<Result<SharedKafka, String>> = OnceLock::new();
    match SHARED.get_or_init(init) {
        Ok(shared) => shared,
        Err(e) => panic!("shared Kafka brokers unavailable: {e}"),
    }
}

fn init() -> Result<SharedKafka, String> {
    if let (Some(edge), Some(central)) = (env("ER_EDGE_BOOTSTRAP"), env("ER_CENTRAL_BOOTSTRAP")) {
        return Ok(SharedKafka {
            edge,
            central,
            attached: true,
            central2: OnceLock::new(),
        });
    }
    let (edge, central) = std::thread::scope(|s| {
        let edge = s.spawn(|| KafkaNode::start("edge"));
        let central = s.spawn(|| KafkaNode::start("central"));
        (edge.join(), central.join())
    });
    let edge = edge
        .map_err(|_| "starting edge panicked".to_string())?
        .map_err(|e| format!("{e:#}"))?;
    let central = central
        .map_err(|_| "starting central panicked".to_string())?
        .map_err(|e| format!("{e:#}"))?;
    Ok(SharedKafka {
        edge: keep(edge),
        central: keep(central),
        attached: false,
        central2: OnceLock::new(),
    })
}

impl SharedKafka {
    /// Edge bootstrap address.
    pub fn edge(&self) -> &str {
        &self.edge
    }

    /// Central bootstrap address.
    pub fn central(&self) -> &str {
        &self.central
    }

    /// A third cluster "central2" (e.g. fan-out to two centrals), started on first use, or
    /// `ER_CENTRAL2_BOOTSTRAP` when set.
    ///
    /// # Panics
    /// If it cannot be started.
    pub fn central2(&self) -> &str {
        let result = self.central2.get_or_init(|| {
            if let Some(b) = env("ER_CENTRAL2_BOOTSTRAP") {
                return Ok(b);
            }
            KafkaNode::start("central2")
                .map(keep)
                .map_err(|e| format!("{e:#}"))
        });
        match result {
            Ok(b) => b,
            Err(e) => panic!("central2 Kafka broker unavailable: {e}"),
        }
    }
}
