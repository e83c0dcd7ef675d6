//! Plugins the hub distributes (`hub = "<name>"` in a route): checked, installed, reported.
//!
//! An offer is taken only for a name a route uses, and only when its component hashes to what
//! a trusted key (`plugins.trusted_keys`) signed together with the name and version. It is then
//! written to `<plugins.hub_dir>/<name>.wasm` by an atomic rename, beside `<name>.version`;
//! the routes' hot reload swaps it in between batches (a component that fails to load keeps the
//! running version), so nothing is lost in a switch. A route whose plugin never arrived waits,
//! as a stopped route does, and starts once it is there. Every report carries, per name, the
//! version installed and the records, failures and drops it saw since it was installed, which
//! the hub's canaries are judged by.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use er_protocol::PluginRun;
use tracing::{info, warn};

use crate::config::HubPluginSettings;
use crate::pipeline::SharedPipeline;

/// Counters of one plugin name, summed over the routes that use it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    records_in: u64,
    errors: u64,
    dropped: u64,
}

/// The installed version of a name and the counters when it was installed.
#[derive(Debug, Clone, Copy)]
struct Installed {
    version: u64,
    baseline: Counts,
}

/// A plugin offer as the hub sent it.
pub use er_protocol::PluginOffer as Offer;

/// What became of an offer.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written; the routes switch at their next batch.
    Installed,
    /// That version is installed already.
    Current,
    /// No route uses the name.
    Unused,
}

/// The agent's hub-distributed plugins.
#[derive(Debug)]
pub struct HubPlugins {
    settings: HubPluginSettings,
    installed: Mutex<BTreeMap<String, Installed>>,
}

impl HubPlugins {
    /// Reads which versions are installed from the version files.
    pub fn new(settings: HubPluginSettings) -> Self {
        let installed = settings
            .names
            .iter()
            .filter_map(|name| {
                let text = std::fs::read_to_string(settings.version_file(name)).ok()?;
                let version = text.trim().parse().ok()?;
                let baseline = Counts::default();
                Some((name.clone(), Installed { version, baseline }))
            })
            .collect();
        Self {
            settings,
            installed: Mutex::new(installed),
        }
    }

    /// Checks and installs an offer. Blocking (file writes, the pipeline's lock).
    pub fn install(&self, offer: &Offer, pipeline: &SharedPipeline) -> anyhow::Result<Outcome> {
        if !self.settings.names.contains(&offer.name) {
            return Ok(Outcome::Unused);
        }
        if self.version(&offer.name) == Some(offer.version) {
            return Ok(Outcome::Current);
        }
        er_net::signing::verify(
            &self.settings.trusted,
            &offer.name,
            offer.version,
            &offer.sha256,
            &offer.signature,
            &offer.wasm,
        )?;
        std::fs::create_dir_all(&self.settings.dir)
            .with_context(|| format!("creating {}", self.settings.dir.display()))?;
        write_atomically(&self.settings.wasm(&offer.name), &offer.wasm)?;
        write_atomically(
            &self.settings.version_file(&offer.name),
            format!("{}\n", offer.version).as_bytes(),
        )?;
        let baseline = counts(pipeline, &self.settings.wasm(&offer.name));
        self.installed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                offer.name.clone(),
                Installed {
                    version: offer.version,
                    baseline,
                },
            );
        info!(plugin = %offer.name, version = offer.version, bytes = offer.wasm.len(), "hub plugin installed; routes switch at their next batch");
        Ok(Outcome::Installed)
    }

    /// The installed version of `name`.
    pub fn version(&self, name: &str) -> Option<u64> {
        self.installed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .map(|i| i.version)
    }

    /// Per name the routes use: the version installed (0: none yet) and the counters since it
    /// was installed.
    pub fn report(&self, pipeline: &SharedPipeline) -> Vec<PluginRun> {
        let installed = self
            .installed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        self.settings
            .names
            .iter()
            .map(|name| match installed.get(name) {
                Some(i) => {
                    let now = counts(pipeline, &self.settings.wasm(name));
                    PluginRun {
                        name: name.clone(),
                        version: i.version,
                        records_in: now.records_in.saturating_sub(i.baseline.records_in),
                        errors: now.errors.saturating_sub(i.baseline.errors),
                        dropped: now.dropped.saturating_sub(i.baseline.dropped),
                    }
                }
                None => PluginRun {
                    name: name.clone(),
                    version: 0,
                    records_in: 0,
                    errors: 0,
                    dropped: 0,
                },
            })
            .collect()
    }
}

/// What plugins this agent runs: its `<arch>-<os>` and whether it compiles `.wasm` itself (the
/// `compiler` feature); without a compiler it takes only builds precompiled for its target.
pub fn platform() -> er_protocol::PluginPlatform {
    er_protocol::PluginPlatform {
        target: er_plugin_host::this_target(),
        compiler: er_plugin_host::HAS_COMPILER,
    }
}

/// The counters of the plugin at `path`, summed over the routes that run it.
fn counts(pipeline: &SharedPipeline, path: &Path) -> Counts {
    let stats = pipeline
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .stats();
    let mut c = Counts::default();
    for s in stats.iter().flat_map(|(_, plugins)| plugins) {
        if s.plugin == path {
            c.records_in += s.records_in;
            c.errors += s.errors;
            c.dropped += s.records_dropped;
        }
    }
    c
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`: a reader sees
/// the old file or the new one, never half of it.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// Installs an offer off the executor and logs what became of it.
pub fn install_in_background(
    plugins: std::sync::Arc<HubPlugins>,
    pipeline: SharedPipeline,
    offer: Offer,
) {
    tokio::task::spawn_blocking(move || match plugins.install(&offer, &pipeline) {
        Ok(Outcome::Installed | Outcome::Current) => {}
        Ok(Outcome::Unused) => {
            info!(plugin = %offer.name, version = offer.version, "the hub offered a plugin no route uses; ignored");
        }
        Err(e) => {
            warn!(plugin = %offer.name, version = offer.version, error = format!("{e:#}"), "hub plugin refused; the installed version keeps running")
        }
    });
}
