//! The hub's `/readyz`, `/status`, `/status/<site>` and console answers: listening, every
//! central cluster reachable (a metadata request cached for [`CLUSTER_CHECK_TTL`]), the fleet
//! table ([`crate::fleet_status`]) and the embedded console page ([`CONSOLE_HTML`]).
//!
//! A load balancer or Kubernetes sends sites only to a hub that can write them: one that stopped
//! listening (shutting down) or cannot reach a central cluster would take sessions and fail
//! their transactions.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use er_net::status::{CachedCheck, Check, Endpoints};
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::{ClusterConfig, Validated};
use crate::fleet_status::{self, HubStatus, SiteDetail};
use crate::sites::Registry;

/// The read-only web console served at `/` on the metrics listener: one page, no external
/// assets; it polls `/status` and `/status/<site>`.
pub const CONSOLE_HTML: &str = include_str!("console.html");

/// How long a cluster's metadata answer counts for readiness.
pub const CLUSTER_CHECK_TTL: Duration = Duration::from_secs(5);
/// How long one metadata request may take.
pub const CLUSTER_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// A topic name asked about in the metadata request: the answer lists the brokers whatever the
/// topic, and asking about one topic stays cheap on a cluster with thousands. Never created
/// (`allow.auto.create.topics=false`).
const PROBE_TOPIC: &str = "er-readiness-probe.internal";

/// Readiness and status of one hub process.
#[derive(Debug)]
pub struct HubHealth {
    hub_id: String,
    listening: Mutex<Option<SocketAddr>>,
    stopping: AtomicBool,
    clusters: Vec<CachedCheck>,
    registry: OnceLock<Arc<Registry>>,
}

impl HubHealth {
    /// Prepares a metadata client per central cluster of `config` (no broker round trip yet).
    pub fn new(config: &Validated) -> Result<Arc<Self>, rdkafka::error::KafkaError> {
        let clusters = config
            .raw
            .clusters
            .iter()
            .map(cluster_check)
            .collect::<Result<_, _>>()?;
        Ok(Arc::new(Self {
            hub_id: config.raw.hub_id.clone(),
            listening: Mutex::new(None),
            stopping: AtomicBool::new(false),
            clusters,
            registry: OnceLock::new(),
        }))
    }

    /// The QUIC endpoint is bound to `addr`.
    pub fn listening(&self, addr: SocketAddr) {
        *self
            .listening
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(addr);
    }

    /// The fleet started: its sites show in `/status` from now on.
    pub fn fleet_started(&self, registry: Arc<Registry>) {
        let _ = self.registry.set(registry);
    }

    /// Shutdown began: not ready any more, so traffic moves elsewhere first.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Every check, in order: `listening`, then `cluster:<alias>` per central cluster (blocking).
    pub fn checks(&self) -> Vec<Check> {
        let addr = *self
            .listening
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let listening = match (addr, self.stopping.load(Ordering::Relaxed)) {
            (_, true) => Check::new("listening", false, "shutting down"),
            (Some(a), false) => Check::new("listening", true, format!("udp {a}")),
            (None, false) => Check::new("listening", false, "not bound yet"),
        };
        std::iter::once(listening)
            .chain(self.clusters.iter().map(CachedCheck::check))
            .collect()
    }

    /// The `/status` document (see [`HubStatus`]).
    pub fn status(&self) -> HubStatus {
        let addr = *self
            .listening
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = crate::metrics::now_ms();
        let mut sites: Vec<_> = self
            .registry
            .get()
            .map(|r| {
                r.sites()
                    .iter()
                    .map(|s| fleet_status::site_row(s, now))
                    .collect()
            })
            .unwrap_or_default();
        fleet_status::sort_worst_first(&mut sites);
        HubStatus {
            hub_id: self.hub_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            listen: addr.map(|a| a.to_string()),
            stopping: self.stopping.load(Ordering::Relaxed),
            sites_connected: crate::metrics::sites_connected(),
            generated_ms: now,
            fleet_started: self.registry.get().is_some(),
            sites,
        }
    }

    /// The `/status/<site>` document, if the site is in a shard this hub owns.
    pub fn site_detail(&self, alias: &str) -> Option<SiteDetail> {
        let registry = self.registry.get()?;
        let site = registry.sites().into_iter().find(|s| s.alias == alias)?;
        let now = crate::metrics::now_ms();
        Some(SiteDetail {
            row: fleet_status::site_row(&site, now),
            history_interval_seconds: crate::metrics::HISTORY_INTERVAL.as_secs_f64(),
            history: site.metrics.snapshot(now).history,
        })
    }

    /// Answers `/readyz`, `/status` and `/status/<site>` on `endpoints` from now on, and
    /// serves the console at `/` when `console` is true.
    pub fn register(self: &Arc<Self>, endpoints: &Endpoints, console: bool) {
        let me = self.clone();
        endpoints.set_readiness(move || me.checks());
        let me = self.clone();
        endpoints.set_status(move || to_json(&me.status()));
        let me = self.clone();
        endpoints.set_detail(move |site| me.site_detail(site).map(|d| to_json(&d)));
        if console {
            endpoints.set_page(CONSOLE_HTML);
        }
    }
}

fn to_json(v: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(v)
        .unwrap_or_else(|e| serde_json::json!({ "error": format!("cannot serialize: {e}") }))
}

fn cluster_check(cluster: &ClusterConfig) -> Result<CachedCheck, rdkafka::error::KafkaError> {
    let mut cfg = crate::kafka::client_config(cluster);
    cfg.set("allow.auto.create.topics", "false");
    let client: BaseConsumer = cfg.create()?;
    let alias = cluster.alias.clone();
    Ok(CachedCheck::new(
        format!("cluster:{alias}"),
        CLUSTER_CHECK_TTL,
        move || {
            let md = client
                .fetch_metadata(Some(PROBE_TOPIC), CLUSTER_CHECK_TIMEOUT)
                .map_err(|e| format!("cluster {alias}: metadata request failed: {e}"))?;
            match md.brokers().len() {
                0 => Err(format!("cluster {alias}: metadata lists no broker")),
                n => Ok(format!("{n} brokers")),
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(bootstrap: &str) -> Validated {
        let dir = tempfile::tempdir().unwrap();
        er_net::devcerts::generate(dir.path(), &[], &["plant-7".into()], false).unwrap();
        let text = format!(
            r#"
hub_id = "hub-t"
listen = "127.0.0.1:0"
[tls]
ca_cert = "ca.pem"
cert = "hub.pem"
key = "hub.key"
[[clusters]]
alias = "central"
bootstrap_servers = "{bootstrap}"
"#
        );
        crate::config::parse(&dir.path().join("hub.toml"), &text).unwrap()
    }

    #[test]
    fn not_ready_until_listening_nor_with_an_unreachable_cluster_nor_when_stopping() {
        // Nothing listens on port 1: the metadata request fails within the timeout.
        let h = HubHealth::new(&config("127.0.0.1:1")).unwrap();
        let names = |c: &[Check]| c.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        let c = h.checks();
        assert_eq!(names(&c), ["listening", "cluster:central"]);
        assert!(!c[0].ok && !c[1].ok, "{c:?}");
        assert!(c[1].detail.contains("cluster central"), "{c:?}");
        h.listening("127.0.0.1:4433".parse().unwrap());
        let c = h.checks();
        assert!(c[0].ok && c[0].detail == "udp 127.0.0.1:4433", "{c:?}");
        h.stopping();
        assert!(!h.checks()[0].ok);
        let s = h.status();
        assert_eq!(s.hub_id, "hub-t");
        assert_eq!(s.listen.as_deref(), Some("127.0.0.1:4433"));
        assert!(!s.fleet_started && s.sites.is_empty());
        assert!(h.site_detail("plant-7").is_none());
        let registry = Arc::new(Registry::new(4, 1, 10));
        registry.install(registry.shard_of("plant-7"), 1, Default::default());
        registry.site("plant-7").unwrap();
        h.fleet_started(registry);
        let s = h.status();
        assert!(s.fleet_started);
        assert_eq!(s.sites.len(), 1);
        assert_eq!(s.sites[0].site, "plant-7");
        assert_eq!(s.sites[0].link, fleet_status::LinkState::Down);
        let d = h.site_detail("plant-7").unwrap();
        assert_eq!(d.row.site, "plant-7");
        assert!(h.site_detail("plant-8").is_none());
    }
}
