//! edge-agent + hub: the release binaries with configs written by the test harness's
//! `HubSetup` / `AgentSetup` (the same configs the end-to-end tests run).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use er_tests::replicator::{AgentSetup, HubSetup, Pki};

use crate::procs::Child;
use crate::shaper::LinkShape;
use crate::udp_relay::UdpRelay;

/// A running hub and agent, with the relay between them.
#[derive(Debug)]
pub struct Ours {
    /// The hub process.
    pub hub: Child,
    /// The agent process.
    pub agent: Child,
    /// The counting relay on the link, if any.
    pub relay: Option<UdpRelay>,
    _pki: Pki,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct OursSetup {
    /// Site alias (the certificate CN; remote topics are `<site>.<topic>`).
    pub site: String,
    /// Edge bootstrap servers.
    pub edge: String,
    /// Central bootstrap servers.
    pub central: String,
    /// Topic include regexes.
    pub include: Vec<String>,
    /// TOML appended to the agent config (routes, batching overrides).
    pub agent_extra: String,
    /// Put the counting relay on the link (with this shape, if any).
    pub relay: Option<Option<LinkShape>>,
}

impl OursSetup {
    /// Starts hub, relay and agent; configs and logs go to `dir`.
    pub fn start(&self, bins: &Path, dir: &Path) -> Result<Ours> {
        let pki = Pki::new(&[&self.site])?;
        let hub_setup = HubSetup::new(&self.central)?;
        let hub_cfg = dir.join(format!("hub-{}.toml", self.site));
        std::fs::write(&hub_cfg, hub_setup.toml(&pki))?;
        let env = [(
            "RUST_LOG",
            std::env::var("ER_BENCH_LOG").unwrap_or_else(|_| "info".into()),
        )];
        let mut hub = Child::spawn(
            "hub",
            &bins.join("hub"),
            &["--config".into(), hub_cfg.display().to_string()],
            &env,
            &dir.join(format!("hub-{}.log", self.site)),
        )?;
        hub.wait_for_log("hub ready", Duration::from_secs(30))?;
        let hub_addr: SocketAddr = ([127, 0, 0, 1], hub_setup.port).into();
        let relay = self
            .relay
            .map(|shape| UdpRelay::start(hub_addr, shape))
            .transpose()?;
        let port = relay.as_ref().map_or(hub_setup.port, |r| r.addr().port());
        let mut agent_setup = AgentSetup::new(&self.site, &self.edge, port, &self.include[0]);
        agent_setup.include = self.include.clone();
        // The agent's own default batch size (AgentSetup's 2000 suits small tests).
        agent_setup.max_records = 5000;
        agent_setup.extra = self.agent_extra.clone();
        let agent_cfg = dir.join(format!("agent-{}.toml", self.site));
        std::fs::write(&agent_cfg, agent_setup.toml(&pki))?;
        let agent = Child::spawn(
            "agent",
            &bins.join("edge-agent"),
            &["--config".into(), agent_cfg.display().to_string()],
            &env,
            &dir.join(format!("agent-{}.log", self.site)),
        )?;
        Ok(Ours {
            hub,
            agent,
            relay,
            _pki: pki,
        })
    }
}

impl Ours {
    /// Stops the agent, then the hub (both cleanly).
    pub fn stop(&mut self) {
        self.agent.stop(Duration::from_secs(10));
        self.hub.stop(Duration::from_secs(10));
    }
}

/// Directory of `edge-agent` and `hub`: `--bin-dir`, or built now next to this executable with
/// its profile (`cargo build [--release] -p edge-agent -p er-hub`).
pub fn binaries(bin_dir: Option<&Path>, workspace: &Path) -> Result<(PathBuf, bool)> {
    if let Some(d) = bin_dir {
        for b in ["edge-agent", "hub"] {
            if !d.join(b).exists() {
                bail!("--bin-dir {}: no {b} binary", d.display());
            }
        }
        return Ok((d.to_owned(), true));
    }
    let exe = std::env::current_exe().context("locating er-bench")?;
    let dir = exe
        .parent()
        .context("er-bench has no parent directory")?
        .to_owned();
    let release = dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace)
        .args(["build", "--quiet", "-p", "edge-agent", "-p", "er-hub"]);
    if release {
        cmd.arg("--release");
    }
    if let Some(target) = dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    eprintln!(
        "[er-bench] building edge-agent and hub ({})",
        if release { "release" } else { "debug" }
    );
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build -p edge-agent -p er-hub failed ({status})");
    }
    Ok((dir, release))
}
