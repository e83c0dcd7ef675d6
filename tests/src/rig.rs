//! One hub and its agents for an end-to-end test, started from one builder: [`Rig`].
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! use er_tests::rig::Rig;
//! let site = er_tests::unique_name("site");
//! let mut rig = Rig::builder()
//!     .hub(|h| h.extra.push_str("[topic_sync]\nenabled = false\n"))
//!     .agent_with(&site, "orders-.*", |a| a.max_records = 300)
//!     .start()?;
//! // ... produce at the edge, read centrally, on failure show `rig.logs()` ...
//! rig.agent_mut(&site).restart()?;
//! # Ok(()) }
//! ```
//!
//! The rig owns everything the processes need and drops it in a safe order: agents (then the
//! link proxies in front of them), the hub, the work dir with configs and logs, the PKI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::kafka::shared;
use crate::proxy::LinkProxy;
use crate::replicator::{self, AgentSetup, HubSetup, Pki, Proc};

/// A change to a setup before its process starts.
type Tweak<'a, T> = Box<dyn FnOnce(&mut T) + 'a>;

/// An agent the builder starts.
struct AgentPlan<'a> {
    site: String,
    include: String,
    via_proxy: bool,
    tweak: Tweak<'a, AgentSetup>,
}

/// What [`RigBuilder::start`] starts: sites, clusters, the hub's and the agents' setups. Made by
/// [`Rig::builder`]; closures given to it may borrow the test's locals.
#[must_use = "a rig starts nothing until `start`"]
pub struct RigBuilder<'a> {
    sites: Vec<String>,
    edge: Option<String>,
    central: Option<String>,
    proxy_seed: Option<u64>,
    hub: Vec<Tweak<'a, HubSetup>>,
    agents: Vec<AgentPlan<'a>>,
}

impl std::fmt::Debug for RigBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RigBuilder")
            .field("sites", &self.sites)
            .field("edge", &self.edge)
            .field("central", &self.central)
            .field(
                "agents",
                &self.agents.iter().map(|a| &a.site).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<'a> RigBuilder<'a> {
    /// A site with a certificate in the rig's PKI but no agent at start: for an agent started
    /// later ([`Rig::start_agent`]) or a hand-made QUIC client. Sites of agents need not be named.
    pub fn site(mut self, site: &str) -> Self {
        self.add_site(site);
        self
    }

    /// The edge cluster the agents read (default: the shared one, [`shared`]).
    pub fn edge(mut self, bootstrap: &str) -> Self {
        self.edge = Some(bootstrap.to_owned());
        self
    }

    /// The hub's default cluster, `central` (default: the shared one, [`shared`]).
    pub fn central(mut self, bootstrap: &str) -> Self {
        self.central = Some(bootstrap.to_owned());
        self
    }

    /// Changes the hub's setup before it starts (after [`HubSetup::new`]); may be repeated.
    pub fn hub(mut self, tweak: impl FnOnce(&mut HubSetup) + 'a) -> Self {
        self.hub.push(Box::new(tweak));
        self
    }

    /// An agent of `site` replicating topics matching `include`, straight to the hub.
    pub fn agent(self, site: &str, include: &str) -> Self {
        self.agent_with(site, include, |_| {})
    }

    /// An agent as [`RigBuilder::agent`], its setup changed by `tweak` before it starts.
    pub fn agent_with(
        mut self,
        site: &str,
        include: &str,
        tweak: impl FnOnce(&mut AgentSetup) + 'a,
    ) -> Self {
        self.add_agent(site, include, false, Box::new(tweak));
        self
    }

    /// An agent as [`RigBuilder::agent_with`] reaching the hub through a [`LinkProxy`] of its
    /// own ([`Rig::proxy`]).
    pub fn agent_via_proxy(
        mut self,
        site: &str,
        include: &str,
        tweak: impl FnOnce(&mut AgentSetup) + 'a,
    ) -> Self {
        self.add_agent(site, include, true, Box::new(tweak));
        self
    }

    /// The seed of the link proxies' randomness (loss, jitter), for a reproducible run
    /// (default: a random one, [`LinkProxy::start`]).
    pub fn proxy_seed(mut self, seed: u64) -> Self {
        self.proxy_seed = Some(seed);
        self
    }

    fn add_site(&mut self, site: &str) {
        if !self.sites.iter().any(|s| s == site) {
            self.sites.push(site.to_owned());
        }
    }

    fn add_agent(
        &mut self,
        site: &str,
        include: &str,
        via_proxy: bool,
        tweak: Tweak<'a, AgentSetup>,
    ) {
        self.add_site(site);
        self.agents.push(AgentPlan {
            site: site.to_owned(),
            include: include.to_owned(),
            via_proxy,
            tweak,
        });
    }

    /// Makes the PKI and the work dir, starts the hub (waiting until it is ready), then the
    /// agents in the order they were added (not waiting for their sessions).
    pub fn start(self) -> anyhow::Result<Rig> {
        let pki = Pki::new(&self.sites.iter().map(String::as_str).collect::<Vec<_>>())?;
        let dir = tempfile::tempdir()?;
        let central = match &self.central {
            Some(c) => c.clone(),
            None => shared().central().to_owned(),
        };
        let mut hub_setup = HubSetup::new(&central)?;
        for tweak in self.hub {
            tweak(&mut hub_setup);
        }
        let hub = hub_setup.start(&pki, dir.path())?;
        let mut rig = Rig {
            agents: Vec::new(),
            proxies: Vec::new(),
            hub,
            hub_setup,
            edge: self.edge.unwrap_or_else(|| shared().edge().to_owned()),
            proxy_seed: self.proxy_seed,
            dir,
            pki,
        };
        for plan in self.agents {
            let mut setup = rig.agent_setup(&plan.site, &plan.include);
            (plan.tweak)(&mut setup);
            rig.launch(&setup, plan.via_proxy, None)?;
        }
        Ok(rig)
    }
}

/// A started agent of the rig.
#[derive(Debug)]
struct Agent {
    site: String,
    config: PathBuf,
    proc: Proc,
}

/// A started hub and agents with their PKI and work dir, for one end-to-end test.
///
/// Agents are known by their site ([`Rig::agent`], [`Rig::agent_mut`]); more start with
/// [`Rig::start_agent`], from [`Rig::agent_setup`]. Failure messages show [`Rig::logs`].
#[derive(Debug)]
pub struct Rig {
    // Field order is drop order: agents, their link proxies, hub, work dir, PKI.
    agents: Vec<Agent>,
    proxies: Vec<(String, LinkProxy)>,
    /// The hub: kill, restart, its log.
    pub hub: Proc,
    hub_setup: HubSetup,
    edge: String,
    proxy_seed: Option<u64>,
    dir: tempfile::TempDir,
    pki: Pki,
}

impl Rig {
    /// A builder with no sites, the shared clusters and the hub as [`HubSetup::new`] makes it.
    pub fn builder<'a>() -> RigBuilder<'a> {
        RigBuilder {
            sites: Vec::new(),
            edge: None,
            central: None,
            proxy_seed: None,
            hub: Vec::new(),
            agents: Vec::new(),
        }
    }

    /// The agent of `site`. Panics if the rig has none: a test's own mistake.
    pub fn agent(&self, site: &str) -> &Proc {
        &self.find(site).proc
    }

    /// The agent of `site`, to kill, stop or restart it.
    pub fn agent_mut(&mut self, site: &str) -> &mut Proc {
        let i = self.index(site);
        &mut self.agents[i].proc
    }

    /// The link proxy in front of the hub for the agent of `site` (started with
    /// [`RigBuilder::agent_via_proxy`], [`Rig::start_agent_via_proxy`] or [`Rig::start_proxy`]).
    pub fn proxy(&self, site: &str) -> &LinkProxy {
        self.proxies
            .iter()
            .find(|(s, _)| s == site)
            .map(|(_, p)| p)
            .unwrap_or_else(|| panic!("the rig has no link proxy for {site}"))
    }

    /// Starts the link proxy for the agent of `site` before the agent, so impairments set on
    /// it apply from the agent's first packet; [`Rig::start_agent_via_proxy`] then uses it.
    pub fn start_proxy(&mut self, site: &str) -> anyhow::Result<&LinkProxy> {
        anyhow::ensure!(
            self.proxies.iter().all(|(s, _)| s != site),
            "the rig already has a link proxy for {site}"
        );
        let hub = SocketAddr::from(([127, 0, 0, 1], self.hub_setup.port));
        let proxy = match self.proxy_seed {
            Some(seed) => LinkProxy::start_with_seed(hub, seed),
            None => LinkProxy::start(hub),
        }
        .with_context(|| format!("starting the link proxy of {site}"))?;
        self.proxies.push((site.to_owned(), proxy));
        Ok(&self.proxies.last().expect("just pushed").1)
    }

    /// The config file the agent of `site` runs with (e.g. to rewrite it before a SIGHUP).
    pub fn agent_config(&self, site: &str) -> &Path {
        &self.find(site).config
    }

    /// The hub's setup as it started.
    pub fn hub_setup(&self) -> &HubSetup {
        &self.hub_setup
    }

    /// The config file the hub runs with.
    pub fn hub_config(&self) -> PathBuf {
        self.hub_setup.config_path(self.dir())
    }

    /// The rig's PKI: a CA, the hub's certificate and one per site.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The work dir holding configs and logs (removed with the rig).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The edge cluster the agents read.
    pub fn edge(&self) -> &str {
        &self.edge
    }

    /// A setup for an agent of `site` replicating topics matching `include` from the rig's
    /// edge cluster to its hub, for [`Rig::start_agent`].
    pub fn agent_setup(&self, site: &str, include: &str) -> AgentSetup {
        AgentSetup::new(site, &self.edge, self.hub_setup.port, include)
    }

    /// Starts an agent of `setup` with the rig's PKI; it joins the rig under its site.
    pub fn start_agent(&mut self, setup: &AgentSetup) -> anyhow::Result<&mut Proc> {
        self.launch(setup, false, None)
    }

    /// Starts an agent of `setup` reaching the hub through a [`LinkProxy`] of its own (the one
    /// [`Rig::start_proxy`] started, if it did).
    pub fn start_agent_via_proxy(&mut self, setup: &AgentSetup) -> anyhow::Result<&mut Proc> {
        self.launch(setup, true, None)
    }

    /// Starts an agent of `setup` with the certificates of `pki` instead of the rig's (a rogue
    /// or mixed PKI, for refusal tests).
    pub fn start_agent_with_pki(
        &mut self,
        setup: &AgentSetup,
        pki: &Pki,
    ) -> anyhow::Result<&mut Proc> {
        self.launch(setup, false, Some(pki))
    }

    /// The hub and the agents, in the order they started (for helpers that take processes).
    pub fn procs(&self) -> Vec<&Proc> {
        std::iter::once(&self.hub)
            .chain(self.agents.iter().map(|a| &a.proc))
            .collect()
    }

    /// What a failed test shows of the rig: each process's log path and digest
    /// ([`replicator::logs`]).
    pub fn logs(&self) -> String {
        replicator::logs(&self.procs())
    }

    fn launch(
        &mut self,
        setup: &AgentSetup,
        via_proxy: bool,
        pki: Option<&Pki>,
    ) -> anyhow::Result<&mut Proc> {
        anyhow::ensure!(
            self.agents.iter().all(|a| a.site != setup.site),
            "the rig already has an agent of site {}",
            setup.site
        );
        let mut setup = setup.clone();
        if via_proxy {
            if !self.proxies.iter().any(|(s, _)| *s == setup.site) {
                self.start_proxy(&setup.site)?;
            }
            setup.hub_port = self.proxy(&setup.site).local_addr().port();
        }
        let proc = setup.start(pki.unwrap_or(&self.pki), self.dir.path())?;
        self.agents.push(Agent {
            site: setup.site.clone(),
            config: setup.config_path(self.dir.path()),
            proc,
        });
        Ok(&mut self.agents.last_mut().expect("just pushed").proc)
    }

    fn index(&self, site: &str) -> usize {
        self.agents
            .iter()
            .position(|a| a.site == site)
            .unwrap_or_else(|| {
                let sites: Vec<&str> = self.agents.iter().map(|a| a.site.as_str()).collect();
                panic!("the rig has no agent of {site}; its agents: {sites:?}")
            })
    }

    fn find(&self, site: &str) -> &Agent {
        &self.agents[self.index(site)]
    }
}
