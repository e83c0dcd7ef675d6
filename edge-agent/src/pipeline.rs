//! The plugin pipeline: routes (topic patterns -> plugin chains) loaded once per agent process
//! and applied by the reader thread to each batch of a routed partition before it is encoded.
//!
//! Plugins run at the edge, so dropped records never cross the link. Every output record keeps
//! the source offset of the record it came from (several outputs may share one), which is what
//! lets the hub translate consumer-group offsets exactly. Internal records never reach a plugin:
//! the heartbeats topic takes no route (see [`Settings::route_for`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use er_plugin_host::{Chain, ErrorPolicy, PluginHost, PluginStats};

use crate::config::Settings;

/// The routes of one agent process with their loaded chains. Shared by the reader threads of
/// successive sessions and of their priority lanes (they take turns through the lock), so
/// plugins are compiled and initialised once.
pub struct Pipeline {
    /// Kept alive for the chains (engine, epoch ticker).
    _host: Option<PluginHost>,
    routes: Vec<RouteRuntime>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field(
                "routes",
                &self.routes.iter().map(|r| &r.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// One route at run time.
#[derive(Debug)]
pub struct RouteRuntime {
    /// The route's name (logs).
    pub name: String,
    /// Its plugin chain; `None` while a plugin the hub distributes has not arrived yet.
    pub chain: Option<Chain>,
    /// What builds the chain once every plugin file is there.
    waiting: Option<Waiting>,
    last_reload_check: Instant,
}

/// A route whose hub plugins have not arrived: what loads it when they do.
#[derive(Debug)]
struct Waiting {
    host: PluginHost,
    specs: Vec<er_plugin_host::PluginSpec>,
    policy: ErrorPolicy,
    limits: er_plugin_host::OutputLimits,
}

impl Waiting {
    /// The plugin files not there yet.
    fn missing(&self) -> Vec<String> {
        self.specs
            .iter()
            .filter(|s| !s.path.exists())
            .map(|s| s.path.display().to_string())
            .collect()
    }
}

/// How often plugin files are checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// A pipeline shared between the agent and its sessions' reader threads.
pub type SharedPipeline = Arc<Mutex<Pipeline>>;

impl Pipeline {
    /// Compiles, instantiates and initialises every route's plugins. Fails on the first plugin
    /// that cannot load; the error names the route and the plugin file.
    pub fn load(cfg: &Settings) -> anyhow::Result<Self> {
        // Routes without plugins only set a priority: no chain ever runs, so no host is needed.
        if cfg.routes.iter().all(|r| r.plugins.is_empty()) {
            return Ok(Pipeline {
                _host: None,
                routes: Vec::new(),
            });
        }
        let host = PluginHost::new(cfg.plugins.host.clone()).context("starting the plugin host")?;
        let mut routes = Vec::with_capacity(cfg.routes.len());
        for r in cfg.routes.iter() {
            let waiting = Waiting {
                host: host.clone(),
                specs: r.plugins.clone(),
                policy: r.policy.clone(),
                limits: r.output_limits,
            };
            let missing = waiting.missing();
            if !r.hub_plugins.is_empty() && !missing.is_empty() {
                tracing::info!(route = %r.name, ?missing, "route waits for its plugins from the hub");
                routes.push(RouteRuntime {
                    name: r.name.clone(),
                    chain: None,
                    waiting: Some(waiting),
                    last_reload_check: Instant::now(),
                });
                continue;
            }
            let chain = host
                .load_chain_with(&r.plugins, r.policy.clone(), r.output_limits)
                .with_context(|| format!("route {:?}", r.name))?;
            tracing::info!(
                route = %r.name,
                plugins = ?r.plugins.iter().map(|p| p.path.display().to_string()).collect::<Vec<_>>(),
                policy = policy_name(&r.policy),
                "route loaded"
            );
            routes.push(RouteRuntime {
                name: r.name.clone(),
                chain: Some(chain),
                waiting: None,
                last_reload_check: Instant::now(),
            });
        }
        Ok(Pipeline {
            _host: Some(host),
            routes,
        })
    }

    /// An empty pipeline (no routes): every topic is replicated unchanged.
    pub fn empty() -> Self {
        Pipeline {
            _host: None,
            routes: Vec::new(),
        }
    }

    /// Wraps the pipeline for sharing.
    pub fn shared(self) -> SharedPipeline {
        Arc::new(Mutex::new(self))
    }

    /// The route at `index` (as returned by [`Settings::route_for`]).
    pub fn route(&mut self, index: usize) -> &mut RouteRuntime {
        &mut self.routes[index]
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Per-route plugin counters.
    pub fn stats(&self) -> Vec<(String, Vec<PluginStats>)> {
        self.routes
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    r.chain.as_ref().map(Chain::stats).unwrap_or_default(),
                )
            })
            .collect()
    }
}

impl RouteRuntime {
    /// Swaps in changed plugin files, at most once per second (call between batches). A file
    /// that fails to load keeps the running version and is reported once.
    pub fn maybe_reload(&mut self) {
        if self.last_reload_check.elapsed() < RELOAD_CHECK {
            return;
        }
        self.force_reload_check();
    }

    /// Checks the plugin files now (loads a waiting route whose files all arrived).
    pub fn force_reload_check(&mut self) {
        self.last_reload_check = Instant::now();
        let Some(chain) = self.chain.as_mut() else {
            self.load_waiting();
            return;
        };
        match chain.reload_if_changed() {
            Ok(true) => tracing::info!(route = %self.name, "plugin changed on disk; reloaded"),
            Ok(false) => {}
            Err(e) => tracing::error!(
                route = %self.name,
                error = %e,
                "changed plugin failed to load; the previous version keeps running"
            ),
        }
    }
}

impl RouteRuntime {
    fn load_waiting(&mut self) {
        let Some(w) = &self.waiting else { return };
        if !w.missing().is_empty() {
            return;
        }
        match w.host.load_chain_with(&w.specs, w.policy.clone(), w.limits) {
            Ok(chain) => {
                tracing::info!(route = %self.name, "the route's plugins arrived; route loaded");
                self.chain = Some(chain);
                self.waiting = None;
            }
            Err(e) => tracing::error!(
                route = %self.name,
                error = %e,
                "the route's plugins arrived but failed to load; it keeps waiting"
            ),
        }
    }

    /// The route's name, and its chain to run or why it cannot run now (its hub plugins have
    /// not arrived). Borrowed apart, so a batch's run needs no copy of the name.
    pub fn runnable(&mut self) -> (&str, Result<&mut Chain, String>) {
        let chain = match (&mut self.chain, &self.waiting) {
            (Some(chain), _) => Ok(chain),
            (None, Some(w)) => Err(format!(
                "waits for plugins from the hub: {}",
                w.missing().join(", ")
            )),
            (None, None) => Err("has no chain".into()),
        };
        (&self.name, chain)
    }
}

/// The config spelling of a policy.
pub fn policy_name(p: &ErrorPolicy) -> &'static str {
    match p {
        ErrorPolicy::Stop => "stop",
        ErrorPolicy::Skip => "skip",
        ErrorPolicy::DeadLetter { .. } => "dead-letter",
    }
}
