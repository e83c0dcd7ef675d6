//! Hub-distributed plugins: the store (a compacted topic on the first central cluster, so every
//! hub of the group sees the same versions), rollouts with canaries and automatic rollback, and
//! which version each site is to run.
//!
//! Records of `er-plugins.<group>.internal` (one partition, compacted):
//! - `wasm/<name>/<version>`: a signed component ([`Signed::encode`]), written once by
//!   `hub plugins push`;
//! - `native/<name>/<version>/<target>`: the same version precompiled for agents of `target`
//!   (`<arch>-<os>`, `edge-agent plugin compile` on such a box), signed the same way: what an
//!   agent without a compiler runs, and what any agent of that target is offered first;
//! - `rollout/<name>`: the [`Rollout`] (JSON): which sites, the stable version, a canary under
//!   way, the versions rolled back. `push` writes it; hubs rewrite it to promote or roll back;
//! - `site/<alias>`: the versions a site last reported running and what it can run (a
//!   [`SiteRecord`], JSON): for `hub plugins status`, and the targets `push` precompiles for.
//!
//! The hub never signs: the operator's key does, at push, and agents verify before running, so
//! a hub (or anyone who can write the topic) cannot make a site run a component the operator did
//! not sign.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use er_protocol::{PluginPlatform, PluginRun};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

/// The store topic of `group`.
pub fn store_topic(group: &str) -> String {
    format!("er-plugins.{group}.internal")
}

/// Largest component the store takes (the topic's `max.message.bytes` is set above it).
pub const MAX_PLUGIN_BYTES: usize = 12 * 1024 * 1024;

/// A signed component as stored and offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// SHA-256 of `wasm`.
    pub sha256: [u8; 32],
    /// The operator's Ed25519 signature (see `er_net::signing`).
    pub signature: Bytes,
    /// The component.
    pub wasm: Bytes,
}

const SIGNED_MAGIC: &[u8; 4] = b"ERP1";

impl Signed {
    /// `ERP1`, SHA-256 (32 bytes), signature length (u16 BE) and bytes, the component.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 32 + 2 + self.signature.len() + self.wasm.len());
        out.extend_from_slice(SIGNED_MAGIC);
        out.extend_from_slice(&self.sha256);
        out.extend_from_slice(&(self.signature.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&self.wasm);
        out
    }

    /// Parses [`Signed::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let rest = bytes
            .strip_prefix(SIGNED_MAGIC)
            .ok_or("not a stored plugin (no ERP1 magic)")?;
        if rest.len() < 34 {
            return Err("truncated".into());
        }
        let sha256: [u8; 32] = rest[..32].try_into().expect("32 bytes");
        let len = u16::from_be_bytes([rest[32], rest[33]]) as usize;
        let rest = &rest[34..];
        if rest.len() < len {
            return Err("truncated signature".into());
        }
        Ok(Self {
            sha256,
            signature: Bytes::copy_from_slice(&rest[..len]),
            wasm: Bytes::copy_from_slice(&rest[len..]),
        })
    }
}

/// A canary under way: `percent` of the rollout's sites run `version` first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    /// The version on trial.
    pub version: u64,
    /// Share of the sites that run it, 1 to 100.
    pub percent: u8,
    /// When the trial began (Unix ms).
    pub since_ms: u64,
}

/// How one plugin name is rolled out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Plugin name.
    pub name: String,
    /// Whole-name regex of the sites that run it.
    pub sites: String,
    /// The version every site runs (outside a canary), if any was promoted.
    pub stable: Option<u64>,
    /// A canary under way.
    pub canary: Option<Canary>,
    /// Versions rolled back, oldest first.
    #[serde(default)]
    pub rolled_back: Vec<u64>,
}

impl Rollout {
    /// The version `site` is to run, if any: the canary's for the canary sites (`is_canary`),
    /// else the stable one.
    pub fn version_for(&self, site: &str, is_canary: impl Fn(&str) -> bool) -> Option<u64> {
        if !whole(&self.sites).is_some_and(|r| r.is_match(site)) {
            return None;
        }
        match &self.canary {
            Some(c) if is_canary(site) => Some(c.version),
            _ => self.stable,
        }
    }
}

fn whole(re: &str) -> Option<regex::Regex> {
    regex::Regex::new(&format!("^(?:{re})$")).ok()
}

/// Which of `sites` (the rollout's sites this hub knows) run the canary of `name` at `version`:
/// the first `percent`% of them (at least one) in an order fixed by a hash of site, name and
/// version, so every hub that knows the same sites picks the same ones.
pub fn canary_sites(sites: &[String], name: &str, version: u64, percent: u8) -> Vec<String> {
    let mut ranked: Vec<(u64, &String)> = sites
        .iter()
        .map(|s| (fnv64(&format!("{s}\0{name}\0{version}")), s))
        .collect();
    ranked.sort();
    let n = (sites.len() * usize::from(percent.min(100)))
        .div_ceil(100)
        .max(1);
    ranked
        .into_iter()
        .take(n.min(sites.len()))
        .map(|(_, s)| s.clone())
        .collect()
}

/// FNV-1a, then splitmix64's finalizer so that names differing in their last bytes still
/// sort far apart.
fn fnv64(s: &str) -> u64 {
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// When a canary is judged (hub.toml's `[plugins]`).
pub use crate::config::PluginsConfig as CanaryRules;

/// Counters of one version summed over sites.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Records in.
    pub records_in: u64,
    /// Records failed.
    pub errors: u64,
    /// Records dropped.
    pub dropped: u64,
}

impl Tally {
    fn add(&mut self, r: &PluginRun) {
        self.records_in += r.records_in;
        self.errors += r.errors;
        self.dropped += r.dropped;
    }

    fn rate(part: u64, whole: u64) -> f64 {
        if whole == 0 {
            0.0
        } else {
            part as f64 / whole as f64
        }
    }
}

/// What to do with a canary.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not enough seen yet.
    Wait,
    /// It ran long enough and was never worse: every site runs it.
    Promote,
    /// It is worse than the stable version beyond the bounds: back to stable.
    RollBack(String),
}

/// Judges a canary from the counters of its version (`canary`) and of the stable one (`stable`)
/// after it ran `ran` of the rules' `canary_seconds`.
pub fn judge(rules: &CanaryRules, canary: Tally, stable: Tally, ran: Duration) -> Verdict {
    if canary.records_in < rules.min_records {
        return Verdict::Wait;
    }
    let worse = |what: &str, new: f64, old: f64, bound: f64| {
        (new > old + bound).then(|| {
            format!(
                "{what} rate {:.2}% against the stable version's {:.2}% (bound +{:.2}%)",
                100.0 * new,
                100.0 * old,
                100.0 * bound
            )
        })
    };
    let errors = worse(
        "error",
        Tally::rate(canary.errors, canary.records_in),
        Tally::rate(stable.errors, stable.records_in),
        rules.max_error_rate_increase,
    );
    let drops = worse(
        "drop",
        Tally::rate(canary.dropped, canary.records_in),
        Tally::rate(stable.dropped, stable.records_in),
        rules.max_drop_rate_increase,
    );
    if let Some(why) = errors.or(drops) {
        return Verdict::RollBack(why);
    }
    if ran >= Duration::from_secs(rules.canary_seconds) {
        Verdict::Promote
    } else {
        Verdict::Wait
    }
}

/// What the hub knows of the store, and the latest reports of its sites.
#[derive(Debug, Default)]
pub struct StoreState {
    /// Rollouts by name.
    pub rollouts: BTreeMap<String, Rollout>,
    /// Components by (name, version).
    pub wasm: HashMap<(String, u64), Arc<Signed>>,
    /// Precompiled components by (name, version, target).
    pub native: HashMap<(String, u64, String), Arc<Signed>>,
    /// What each site last reported (from the store: every hub's sites).
    pub sites: BTreeMap<String, SiteRecord>,
}

/// A `site/<alias>` record: the versions a site runs and its platform.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRecord {
    /// Version run, by plugin name.
    pub versions: BTreeMap<String, u64>,
    /// The agent's target (`<arch>-<os>`).
    pub target: String,
    /// Whether the agent compiles `.wasm` itself.
    pub compiler: bool,
}

impl StoreState {
    /// The targets of the compiler-less agents among the sites `sites` (a compiled whole-name
    /// regex) matches: what a push must precompile for so that they can run it.
    pub fn compilerless_targets(&self, sites: &regex::Regex) -> Vec<String> {
        let mut targets: Vec<String> = self
            .sites
            .iter()
            .filter(|(site, r)| !r.compiler && !r.target.is_empty() && sites.is_match(site))
            .map(|(_, r)| r.target.clone())
            .collect();
        targets.sort();
        targets.dedup();
        targets
    }
}

impl StoreState {
    /// Applies one store record (`None` value: a tombstone).
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        if let Some(rest) = key.strip_prefix("wasm/") {
            let (name, version) = rest
                .rsplit_once('/')
                .ok_or_else(|| format!("key {key:?}: no version"))?;
            let version: u64 = version
                .parse()
                .map_err(|_| format!("key {key:?}: version is not a number"))?;
            let k = (name.to_owned(), version);
            match value {
                Some(v) => {
                    self.wasm.insert(k, Arc::new(Signed::decode(v)?));
                }
                None => {
                    self.wasm.remove(&k);
                }
            }
        } else if let Some(rest) = key.strip_prefix("native/") {
            let mut parts = rest.splitn(3, '/');
            let (Some(name), Some(version), Some(target)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("key {key:?}: not native/<name>/<version>/<target>"));
            };
            let version: u64 = version
                .parse()
                .map_err(|_| format!("key {key:?}: version is not a number"))?;
            let k = (name.to_owned(), version, target.to_owned());
            match value {
                Some(v) => {
                    self.native.insert(k, Arc::new(Signed::decode(v)?));
                }
                None => {
                    self.native.remove(&k);
                }
            }
        } else if let Some(name) = key.strip_prefix("rollout/") {
            match value {
                Some(v) => {
                    let r: Rollout = serde_json::from_slice(v)
                        .map_err(|e| format!("rollout of {name:?}: {e}"))?;
                    self.rollouts.insert(name.to_owned(), r);
                }
                None => {
                    self.rollouts.remove(name);
                }
            }
        } else if let Some(site) = key.strip_prefix("site/") {
            match value {
                Some(v) => {
                    let record = serde_json::from_slice(v)
                        .map_err(|e| format!("record of site {site:?}: {e}"))?;
                    self.sites.insert(site.to_owned(), record);
                }
                None => {
                    self.sites.remove(site);
                }
            }
        }
        Ok(())
    }

    /// The next version number of `name`.
    pub fn next_version(&self, name: &str) -> u64 {
        self.wasm
            .keys()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v + 1)
            .max()
            .unwrap_or(1)
    }
}

/// The store as the hub's sessions and controller share it.
#[derive(Debug, Default)]
pub struct Store {
    state: RwLock<StoreState>,
    /// Bumped on every change of rollouts or components.
    changed: watch::Sender<u64>,
    /// Latest report of each of this hub's sites.
    reports: Mutex<HashMap<String, Vec<PluginRun>>>,
    /// What plugins each of this hub's sites can run, from its reports.
    platforms: Mutex<HashMap<String, PluginPlatform>>,
}

impl Store {
    /// Reads the state.
    pub fn read<T>(&self, f: impl FnOnce(&StoreState) -> T) -> T {
        f(&self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Applies store records and tells watchers.
    pub fn apply(&self, records: &[(String, Option<Vec<u8>>)]) {
        if records.is_empty() {
            return;
        }
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (key, value) in records {
            if let Err(e) = state.apply(key, value.as_deref()) {
                warn!(%key, error = %e, "a plugin store record is unreadable; skipped");
            }
        }
        drop(state);
        self.changed.send_modify(|g| *g += 1);
    }

    /// Watches changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Keeps a site's latest report (untrusted: only the runs of plugins the store rolls out
    /// are kept, so what a site can make the hub hold is bounded by the rollouts, not by what
    /// it sends); true when the versions it runs changed.
    pub fn report(&self, site: &str, platform: PluginPlatform, mut runs: Vec<PluginRun>) -> bool {
        self.read(|s| runs.retain(|r| s.rollouts.contains_key(&r.name)));
        self.platforms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(site.to_owned(), platform);
        let mut reports = self
            .reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let versions = |r: &[PluginRun]| {
            r.iter()
                .map(|r| (r.name.clone(), r.version))
                .collect::<Vec<_>>()
        };
        let changed = reports
            .get(site)
            .is_none_or(|old| versions(old) != versions(&runs));
        reports.insert(site.to_owned(), runs);
        changed
    }

    /// What this hub's sites reported, as the store keeps it.
    pub fn site_records(&self) -> Vec<(String, SiteRecord)> {
        let platforms = self
            .platforms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let reports = self
            .reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        reports
            .iter()
            .map(|(site, runs)| {
                let platform = platforms.get(site);
                let record = SiteRecord {
                    versions: runs.iter().map(|r| (r.name.clone(), r.version)).collect(),
                    target: platform.map(|p| p.target.clone()).unwrap_or_default(),
                    compiler: platform.is_some_and(|p| p.compiler),
                };
                (site.clone(), record)
            })
            .collect()
    }

    /// Counters of `name` at `version` summed over this hub's sites.
    pub fn tally(&self, name: &str, version: u64) -> Tally {
        let reports = self
            .reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut t = Tally::default();
        for runs in reports.values() {
            for r in runs
                .iter()
                .filter(|r| r.name == name && r.version == version)
            {
                t.add(r);
            }
        }
        t
    }

    /// The sites of this hub that reported running (any version of) `name`.
    pub fn sites_running(&self, name: &str) -> Vec<String> {
        let reports = self
            .reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut sites: Vec<String> = reports
            .iter()
            .filter(|(_, runs)| runs.iter().any(|r| r.name == name))
            .map(|(s, _)| s.clone())
            .collect();
        sites.sort();
        sites
    }

    /// Whether `site` is among the canary sites of `rollout`'s canary.
    pub fn is_canary(&self, rollout: &Rollout, site: &str) -> bool {
        let Some(c) = &rollout.canary else {
            return false;
        };
        // A site is placed once it reported the plugins it uses (version 0: none yet); before
        // that it runs the stable version.
        let sites = self.sites_running(&rollout.name);
        canary_sites(&sites, &rollout.name, c.version, c.percent)
            .iter()
            .any(|s| s == site)
    }

    /// The versions `site` is to run: (name, version, what to send). Nothing before the site
    /// said what it can run; then a build precompiled for its target when the store has one,
    /// else the component for an agent that compiles.
    pub fn wanted(&self, site: &str) -> Vec<(String, u64, Arc<Signed>)> {
        let Some(platform) = self
            .platforms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(site)
            .cloned()
        else {
            return Vec::new();
        };
        let rollouts: Vec<Rollout> = self.read(|s| s.rollouts.values().cloned().collect());
        let mut out = Vec::new();
        for r in rollouts {
            let Some(v) = r.version_for(site, |s| self.is_canary(&r, s)) else {
                continue;
            };
            match self.read(|s| artifact(s, &r.name, v, &platform)) {
                Some(w) => out.push((r.name.clone(), v, w)),
                None => {
                    tracing::debug!(%site, plugin = %r.name, version = v, target = %platform.target, compiler = platform.compiler, "nothing the site can run for this version: no build for its target and it does not compile")
                }
            }
        }
        out
    }
}

/// What a site of `platform` gets for `name` at `version`.
fn artifact(
    s: &StoreState,
    name: &str,
    version: u64,
    platform: &PluginPlatform,
) -> Option<Arc<Signed>> {
    let native = s
        .native
        .get(&(name.to_owned(), version, platform.target.clone()))
        .cloned();
    native.or_else(|| {
        platform
            .compiler
            .then(|| s.wasm.get(&(name.to_owned(), version)).cloned())
            .flatten()
    })
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Decides every canary under way from this hub's sites' reports; returns the rollouts to
/// write (promoted or rolled back).
pub fn decide(store: &Store, rules: &CanaryRules) -> Vec<Rollout> {
    let rollouts: Vec<Rollout> = store.read(|s| s.rollouts.values().cloned().collect());
    let mut out = Vec::new();
    for mut r in rollouts {
        let Some(c) = r.canary.clone() else { continue };
        let canary = store.tally(&r.name, c.version);
        let stable = r
            .stable
            .map(|v| store.tally(&r.name, v))
            .unwrap_or_default();
        let ran = Duration::from_millis(now_ms().saturating_sub(c.since_ms));
        match judge(rules, canary, stable, ran) {
            Verdict::Wait => continue,
            Verdict::Promote => {
                info!(plugin = %r.name, version = c.version, records = canary.records_in, "canary promoted: every site runs it");
                r.stable = Some(c.version);
            }
            Verdict::RollBack(why) => {
                warn!(plugin = %r.name, version = c.version, stable = ?r.stable, %why, "canary rolled back");
                r.rolled_back.push(c.version);
            }
        }
        r.canary = None;
        out.push(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(records_in: u64, errors: u64, dropped: u64) -> Tally {
        Tally {
            records_in,
            errors,
            dropped,
        }
    }

    #[test]
    fn a_canary_is_judged_against_the_stable_version_once_it_saw_enough() {
        let rules = CanaryRules {
            min_records: 100,
            canary_seconds: 60,
            ..CanaryRules::default()
        };
        let minute = Duration::from_secs(60);
        assert_eq!(
            judge(&rules, tally(99, 99, 0), tally(0, 0, 0), minute),
            Verdict::Wait
        );
        assert!(matches!(
            judge(&rules, tally(1000, 50, 0), tally(1000, 0, 0), Duration::ZERO),
            Verdict::RollBack(why) if why.contains("error rate 5.00%")
        ));
        assert!(matches!(
            judge(&rules, tally(1000, 0, 900), tally(1000, 0, 100), Duration::ZERO),
            Verdict::RollBack(why) if why.contains("drop rate")
        ));
        // As bad as the stable version is not worse.
        assert_eq!(
            judge(
                &rules,
                tally(1000, 50, 0),
                tally(1000, 50, 0),
                Duration::ZERO
            ),
            Verdict::Wait
        );
        assert_eq!(
            judge(&rules, tally(1000, 50, 0), tally(1000, 50, 0), minute),
            Verdict::Promote
        );
    }

    #[test]
    fn canary_sites_are_a_stable_share_of_at_least_one() {
        let sites: Vec<String> = (0..10).map(|i| format!("plant-{i}")).collect();
        let c = canary_sites(&sites, "filter", 2, 20);
        assert_eq!(c.len(), 2);
        assert_eq!(
            c,
            canary_sites(&sites, "filter", 2, 20),
            "the same every time"
        );
        assert_eq!(
            canary_sites(&sites, "filter", 2, 1).len(),
            1,
            "at least one"
        );
        assert_eq!(canary_sites(&sites, "filter", 2, 100).len(), 10);
        assert_ne!(
            canary_sites(&sites, "filter", 2, 20),
            canary_sites(&sites, "filter", 3, 20),
            "another version tries other sites first (with these names)"
        );
    }

    #[test]
    fn a_site_gets_the_build_for_its_target_or_the_component_if_it_compiles() {
        let signed = |b: &'static [u8]| Signed {
            sha256: [0; 32],
            signature: Bytes::new(),
            wasm: Bytes::from_static(b),
        };
        let mut s = StoreState::default();
        s.apply("wasm/f/2", Some(&signed(b"\0asm").encode()))
            .unwrap();
        s.apply(
            "native/f/2/aarch64-linux",
            Some(&signed(b"\x7fELF arm").encode()),
        )
        .unwrap();
        let platform = |target: &str, compiler| PluginPlatform {
            target: target.into(),
            compiler,
        };
        let got = |p: &PluginPlatform| artifact(&s, "f", 2, p).map(|a| a.wasm.clone());
        assert_eq!(
            got(&platform("aarch64-linux", false)).as_deref(),
            Some(&b"\x7fELF arm"[..])
        );
        assert_eq!(
            got(&platform("aarch64-linux", true)).as_deref(),
            Some(&b"\x7fELF arm"[..]),
            "precompiled first: no compile on the box"
        );
        assert_eq!(
            got(&platform("x86_64-linux", true)).as_deref(),
            Some(&b"\0asm"[..])
        );
        assert_eq!(
            got(&platform("x86_64-linux", false)),
            None,
            "nothing it can run"
        );
        let e = s.apply("native/f/2", Some(b"")).unwrap_err();
        assert!(e.contains("native/<name>/<version>/<target>"), "{e}");
    }

    #[test]
    fn a_site_report_keeps_only_plugins_the_store_rolls_out() {
        let store = Store::default();
        let rollout = Rollout {
            name: "filter".into(),
            sites: ".*".into(),
            stable: Some(1),
            canary: None,
            rolled_back: vec![],
        };
        store.apply(&[(
            "rollout/filter".into(),
            Some(serde_json::to_vec(&rollout).unwrap()),
        )]);
        let run = |name: &str| PluginRun {
            name: name.into(),
            version: 1,
            records_in: 10,
            errors: 0,
            dropped: 0,
        };
        // A hostile site names 256 made-up plugins beside the real one.
        let mut runs: Vec<PluginRun> = (0..255).map(|i| run(&format!("junk-{i}"))).collect();
        runs.push(run("filter"));
        store.report("plant-1", PluginPlatform::default(), runs);
        store.report("plant-2", PluginPlatform::default(), vec![run("filter")]);
        let kept = store.reports.lock().unwrap()["plant-1"].len();
        assert_eq!(kept, 1, "only the rolled-out plugin is held");
        assert_eq!(
            store.tally("filter", 1).records_in,
            20,
            "the good site counts too"
        );
        assert_eq!(store.sites_running("junk-1"), Vec::<String>::new());
    }

    #[test]
    fn store_records_build_the_state_and_bad_ones_are_named() {
        let mut s = StoreState::default();
        let signed = Signed {
            sha256: [7; 32],
            signature: Bytes::from_static(&[1; 64]),
            wasm: Bytes::from_static(b"\0asm..."),
        };
        s.apply("wasm/filter/3", Some(&signed.encode())).unwrap();
        assert_eq!(*s.wasm[&("filter".into(), 3)], signed);
        assert_eq!(s.next_version("filter"), 4);
        assert_eq!(s.next_version("other"), 1);
        let r = Rollout {
            name: "filter".into(),
            sites: "plant-.*".into(),
            stable: Some(3),
            canary: None,
            rolled_back: vec![],
        };
        s.apply("rollout/filter", Some(&serde_json::to_vec(&r).unwrap()))
            .unwrap();
        assert_eq!(r.version_for("plant-1", |_| false), Some(3));
        assert_eq!(r.version_for("depot-1", |_| true), None, "not its sites");
        s.apply("wasm/filter/3", None).unwrap();
        assert!(s.wasm.is_empty(), "a tombstone removes");
        let e = s.apply("wasm/filter/x", Some(b"")).unwrap_err();
        assert!(e.contains("not a number"), "{e}");
        let e = s.apply("wasm/filter/4", Some(b"junk")).unwrap_err();
        assert!(e.contains("magic"), "{e}");
    }

    #[test]
    fn pushes_precompile_for_the_compiler_less_sites_the_store_has_seen() {
        let store = Store::default();
        let platform = |target: &str, compiler| PluginPlatform {
            target: target.into(),
            compiler,
        };
        store.report("plant-1", platform("aarch64-linux", false), vec![]);
        store.report("plant-2", platform("aarch64-linux", false), vec![]);
        store.report("plant-3", platform("x86_64-linux", true), vec![]);
        store.report("depot-1", platform("riscv64-linux", false), vec![]);
        // What this hub writes to the store is what every hub (and `push`) reads back.
        let mut s = StoreState::default();
        for (site, record) in store.site_records() {
            s.apply(
                &format!("site/{site}"),
                Some(&serde_json::to_vec(&record).unwrap()),
            )
            .unwrap();
        }
        assert_eq!(
            s.sites["plant-3"],
            SiteRecord {
                versions: BTreeMap::new(),
                target: "x86_64-linux".into(),
                compiler: true
            }
        );
        let re = |r: &str| regex::Regex::new(&format!("^(?:{r})$")).unwrap();
        assert_eq!(s.compilerless_targets(&re("plant-.*")), ["aarch64-linux"]);
        assert_eq!(
            s.compilerless_targets(&re(".*")),
            ["aarch64-linux", "riscv64-linux"]
        );
        assert!(s.compilerless_targets(&re("plant-3")).is_empty());
        let text = cli::render(&s);
        assert!(
            text.lines()
                .any(|l| l.starts_with("plant-1") && l.contains("aarch64-linux (no compiler)")),
            "{text}"
        );
    }
}

/// The store on Kafka: the topic, its reader and writer.
pub mod kafka {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::error::KafkaError;
    use rdkafka::message::Message;
    use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext};
    use rdkafka::{Offset, TopicPartitionList};

    use super::{MAX_PLUGIN_BYTES, Store};
    use crate::config::ClusterConfig;
    use crate::kafka::{KafkaOpError, QuietEof, TopicManager, client_config};

    /// A store record's key and value (`None`: a tombstone).
    type StoreRecord = (String, Option<Vec<u8>>);

    /// `max.message.bytes` of the store topic and the store clients: a component and its header.
    const MESSAGE_BYTES: usize = MAX_PLUGIN_BYTES + 64 * 1024;

    /// Creates the store topic of `group` (one partition, compacted) unless it exists.
    pub fn ensure_topic(
        rt: &tokio::runtime::Handle,
        topics: &TopicManager,
        group: &str,
    ) -> Result<(), KafkaOpError> {
        let bytes = MESSAGE_BYTES.to_string();
        topics.ensure(
            rt,
            &super::store_topic(group),
            1,
            &[("cleanup.policy", "compact"), ("max.message.bytes", &bytes)],
        )
    }

    /// [`ensure_topic`], tried again every 30 s until it works (true) or `stop` (false).
    pub fn ensure_topic_until(
        rt: &tokio::runtime::Handle,
        topics: &TopicManager,
        group: &str,
        stop: &AtomicBool,
    ) -> bool {
        let mut said = false;
        while !stop.load(Ordering::Relaxed) {
            match ensure_topic(rt, topics, group) {
                Ok(()) => {
                    if said {
                        tracing::info!("plugin store ready; hub-distributed plugins are on");
                    }
                    return true;
                }
                Err(e) => {
                    if !said {
                        tracing::error!(error = %e, "cannot set up the plugin store; hub-distributed plugins are off until it works (tried again every 30 s)");
                        said = true;
                    }
                    for _ in 0..300 {
                        if stop.load(Ordering::Relaxed) {
                            return false;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }
        false
    }

    fn reader(cluster: &ClusterConfig, group: &str) -> Result<BaseConsumer<QuietEof>, KafkaError> {
        let c: BaseConsumer<QuietEof> = client_config(cluster)
            .set("group.id", format!("{group}-plugins"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.message.max.bytes", MESSAGE_BYTES.to_string())
            .set("fetch.max.bytes", (2 * MESSAGE_BYTES).to_string())
            .set(
                "receive.message.max.bytes",
                (2 * MESSAGE_BYTES + 1024 * 1024).to_string(),
            )
            .create_with_context(QuietEof)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&super::store_topic(group), 0, Offset::Beginning)?;
        c.assign(&tpl)?;
        Ok(c)
    }

    /// One poll's worth of records: until the end or 100 records; `true` at the end.
    fn poll_records(
        c: &BaseConsumer<QuietEof>,
        wait: Duration,
    ) -> Result<(Vec<StoreRecord>, bool), KafkaError> {
        let mut out = Vec::new();
        loop {
            match c.poll(if out.is_empty() { wait } else { Duration::ZERO }) {
                None => return Ok((out, false)),
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok((out, true)),
                Some(Err(e)) => return Err(e),
                Some(Ok(m)) => {
                    let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                    out.push((key, m.payload().map(<[u8]>::to_vec)));
                    if out.len() >= 100 {
                        return Ok((out, false));
                    }
                }
            }
        }
    }

    /// Reads the whole store once (for the CLI).
    pub fn load(cluster: &ClusterConfig, group: &str) -> Result<super::StoreState, String> {
        let c = reader(cluster, group).map_err(|e| format!("reading the plugin store: {e}"))?;
        let mut state = super::StoreState::default();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (records, end) = poll_records(&c, Duration::from_millis(200))
                .map_err(|e| format!("reading the plugin store: {e}"))?;
            for (key, value) in &records {
                state.apply(key, value.as_deref())?;
            }
            if end {
                return Ok(state);
            }
            if Instant::now() > deadline {
                return Err("reading the plugin store: no end within 30 s".into());
            }
        }
    }

    /// Follows the store into `store` until `stop` (a blocking loop for its own thread).
    pub fn follow(cluster: &ClusterConfig, group: &str, store: &Arc<Store>, stop: &AtomicBool) {
        let c = match reader(cluster, group) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the plugin store; hub-distributed plugins are off");
                return;
            }
        };
        let mut failing = false;
        while !stop.load(Ordering::Relaxed) {
            match poll_records(&c, Duration::from_millis(500)) {
                Ok((records, _)) => {
                    failing = false;
                    store.apply(&records);
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "reading the plugin store failed; retrying");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// Writes store records.
    pub struct Writer {
        producer: crate::kafka::PolledProducer<Acks>,
        topic: String,
    }

    /// How long a store record may take to be acknowledged.
    const PUT_TIMEOUT: Duration = Duration::from_secs(30);

    /// Hands each store record's delivery report to the `put` waiting for it.
    #[derive(Debug)]
    pub struct Acks;

    impl rdkafka::ClientContext for Acks {}

    impl ProducerContext for Acks {
        type DeliveryOpaque = Box<tokio::sync::oneshot::Sender<Result<(), KafkaError>>>;

        fn delivery(&self, report: &DeliveryResult<'_>, put: Self::DeliveryOpaque) {
            let _ = put.send(report.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
        }
    }

    impl std::fmt::Debug for Writer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Writer")
                .field("topic", &self.topic)
                .finish()
        }
    }

    impl Writer {
        /// A writer of `group`'s store on `cluster`.
        pub fn new(cluster: &ClusterConfig, group: &str) -> Result<Self, KafkaError> {
            let config = client_config(cluster)
                .set("enable.idempotence", "true")
                .set("message.max.bytes", MESSAGE_BYTES.to_string())
                .set("message.timeout.ms", PUT_TIMEOUT.as_millis().to_string())
                .clone();
            Ok(Self {
                producer: crate::kafka::PolledProducer::with_context(
                    &config,
                    Acks,
                    "store-reports",
                )?,
                topic: super::store_topic(group),
            })
        }

        /// Writes `key` = `value` and waits until the cluster acknowledged it (at most
        /// [`PUT_TIMEOUT`], librdkafka's delivery timeout).
        pub async fn put(&self, key: &str, value: &[u8]) -> Result<(), KafkaError> {
            let (acked, ack) = tokio::sync::oneshot::channel();
            let record = BaseRecord::with_opaque_to(&self.topic, Box::new(acked))
                .key(key)
                .payload(value)
                .partition(0);
            self.producer.send(record).map_err(|(e, _)| e)?;
            match ack.await {
                Ok(result) => result,
                // The producer went away with the record.
                Err(_) => Err(KafkaError::Canceled),
            }
        }
    }
}

/// The hub's side of plugin rollouts: the store it follows, its writer, the canary rules.
pub struct PluginHub {
    /// What the store holds and the sites reported.
    pub store: Arc<Store>,
    writer: kafka::Writer,
    rules: CanaryRules,
    /// What was last written to the store of each site.
    written: Mutex<HashMap<String, SiteRecord>>,
}

impl std::fmt::Debug for PluginHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHub").finish_non_exhaustive()
    }
}

impl PluginHub {
    /// Creates the store topic if needed, follows it on a thread of its own (until `stop`) and
    /// judges canaries every second on `rt`. Blocking.
    pub fn start(
        rt: &tokio::runtime::Handle,
        config: &crate::config::Validated,
        topics: &Arc<crate::kafka::TopicManager>,
        stop: &Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<(Arc<Self>, std::thread::JoinHandle<()>), crate::kafka::KafkaOpError> {
        let cluster = &config.raw.clusters[0];
        let group = &config.raw.group_id;
        let writer = kafka::Writer::new(cluster, group).map_err(
            crate::kafka::KafkaOpError::kafka(&cluster.alias, "creating the plugin store writer"),
        )?;
        let hub = Arc::new(Self {
            store: Arc::new(Store::default()),
            writer,
            rules: config.raw.plugins.clone(),
            written: Mutex::new(HashMap::new()),
        });
        let (store, cluster, group, flag) = (
            hub.store.clone(),
            cluster.clone(),
            group.clone(),
            stop.clone(),
        );
        let (rt2, topics) = (rt.clone(), topics.clone());
        // The store is set up and followed on its own thread: a cluster that will not create
        // it leaves hub-distributed plugins off (said, and tried again), never replication.
        let follower = std::thread::Builder::new()
            .name("plugin-store".into())
            .spawn(move || {
                if kafka::ensure_topic_until(&rt2, &topics, &group, &flag) {
                    kafka::follow(&cluster, &group, &store, &flag);
                }
            })
            .expect("spawning the plugin store reader");
        let (me, flag) = (hub.clone(), stop.clone());
        rt.spawn(async move {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                me.control().await;
            }
        });
        Ok((hub, follower))
    }

    /// One round: canary verdicts and the sites' versions, written to the store.
    async fn control(&self) {
        for r in decide(&self.store, &self.rules) {
            let value = serde_json::to_vec(&r).expect("a rollout serializes");
            if let Err(e) = self
                .writer
                .put(&format!("rollout/{}", r.name), &value)
                .await
            {
                warn!(plugin = %r.name, error = %e, "writing a rollout decision failed; it is made again");
            }
        }
        let reports = self.store.site_records();
        for (site, record) in reports {
            let same = self
                .written
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&site)
                == Some(&record);
            if same {
                continue;
            }
            let value = serde_json::to_vec(&record).expect("a site record serializes");
            if self
                .writer
                .put(&format!("site/{site}"), &value)
                .await
                .is_ok()
            {
                self.written
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(site, record);
            }
        }
    }

    /// Pushes a new version of `name` (the CLI's `hub plugins push`): stores the signed
    /// component, then the rollout. Returns the version.
    pub async fn push(
        writer: &kafka::Writer,
        state: &StoreState,
        push: Push,
    ) -> Result<u64, String> {
        let version = state.next_version(&push.name);
        let sha256 = er_net::signing::sha256(&push.wasm);
        let signature = er_net::signing::sign(&push.key, &push.name, version, &sha256)
            .map_err(|e| e.to_string())?;
        let signed = Signed {
            sha256,
            signature: Bytes::from(signature),
            wasm: Bytes::from(push.wasm),
        };
        writer
            .put(&format!("wasm/{}/{version}", push.name), &signed.encode())
            .await
            .map_err(|e| format!("storing the component: {e}"))?;
        for (target, bytes) in push.native {
            let sha256 = er_net::signing::sha256(&bytes);
            let signature = er_net::signing::sign(&push.key, &push.name, version, &sha256)
                .map_err(|e| e.to_string())?;
            let signed = Signed {
                sha256,
                signature: Bytes::from(signature),
                wasm: Bytes::from(bytes),
            };
            writer
                .put(
                    &format!("native/{}/{version}/{target}", push.name),
                    &signed.encode(),
                )
                .await
                .map_err(|e| format!("storing the build for {target}: {e}"))?;
        }
        let previous = state.rollouts.get(&push.name);
        let rollout = Rollout {
            name: push.name.clone(),
            sites: push.sites,
            stable: match push.canary {
                Some(_) => previous.and_then(|r| r.stable),
                None => Some(version),
            },
            canary: push.canary.map(|percent| Canary {
                version,
                percent,
                since_ms: now_ms(),
            }),
            rolled_back: previous.map(|r| r.rolled_back.clone()).unwrap_or_default(),
        };
        writer
            .put(
                &format!("rollout/{}", push.name),
                &serde_json::to_vec(&rollout).expect("a rollout serializes"),
            )
            .await
            .map_err(|e| format!("storing the rollout: {e}"))?;
        Ok(version)
    }
}

/// What `hub plugins push` stores.
#[derive(Debug)]
pub struct Push {
    /// Plugin name.
    pub name: String,
    /// Whole-name regex of the sites.
    pub sites: String,
    /// Canary share, if the version goes to a canary first.
    pub canary: Option<u8>,
    /// The component.
    pub wasm: Vec<u8>,
    /// The same version precompiled, by agent target (`<arch>-<os>`).
    pub native: Vec<(String, Vec<u8>)>,
    /// The operator's PKCS#8 Ed25519 key.
    pub key: Vec<u8>,
}

/// `hub plugins keygen|push|status`.
pub mod cli {
    use std::fmt::Write as _;
    use std::path::Path;

    use anyhow::{Context, bail};

    use super::{MAX_PLUGIN_BYTES, PluginHub, Push, StoreState, kafka};

    /// Writes a new Ed25519 signing key (PKCS#8, mode 0600) to `out`; returns its public key
    /// in hex, for the agents' `plugins.trusted_keys`.
    pub fn keygen(out: &Path, force: bool) -> anyhow::Result<String> {
        if out.exists() && !force {
            bail!("{} exists (--force to overwrite)", out.display());
        }
        let (private, public) = er_net::signing::generate_key()?;
        write_private(out, &private)?;
        Ok(public)
    }

    #[cfg(unix)]
    fn write_private(out: &Path, bytes: &[u8]) -> anyhow::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(out)
            .with_context(|| format!("writing {}", out.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", out.display()))
    }

    #[cfg(not(unix))]
    fn write_private(out: &Path, bytes: &[u8]) -> anyhow::Result<()> {
        std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))
    }

    /// What `hub plugins push` was given.
    #[derive(Debug)]
    pub struct PushArgs<'a> {
        /// hub.toml (the first cluster holds the store).
        pub config: &'a Path,
        /// The signing key file.
        pub key: &'a Path,
        /// Plugin name.
        pub name: &'a str,
        /// The component file.
        pub wasm: &'a Path,
        /// Site regex.
        pub sites: &'a str,
        /// Canary share.
        pub canary: Option<u8>,
        /// Precompiled builds: `<target>=<file>` each.
        pub native: &'a [String],
        /// Targets to precompile for (besides `[plugins] targets` and those of the
        /// compiler-less sites the store has seen).
        pub targets: &'a [String],
    }

    /// What a push stored.
    #[derive(Debug)]
    pub struct Pushed {
        /// The new version.
        pub version: u64,
        /// Targets this push precompiled for.
        pub compiled: Vec<String>,
        /// Targets with a build given by `--native`.
        pub given: Vec<String>,
    }

    /// Checks, precompiles, signs and stores a new version.
    pub async fn push(a: PushArgs<'_>) -> anyhow::Result<Pushed> {
        er_protocol::check_plugin_name(a.name)
            .map_err(|e| anyhow::anyhow!("plugin name {:?}: {e}", a.name))?;
        let sites = regex::Regex::new(&format!("^(?:{})$", a.sites))
            .with_context(|| format!("--sites {:?} is not a regex", a.sites))?;
        if a.canary.is_some_and(|c| !(1..=100).contains(&c)) {
            bail!("--canary must be a share between 1 and 100 percent");
        }
        for t in a.targets {
            crate::config::check_plugin_target(t)
                .map_err(|e| anyhow::anyhow!("--target {t:?}: {e}"))?;
        }
        let wasm =
            std::fs::read(a.wasm).with_context(|| format!("reading {}", a.wasm.display()))?;
        if !wasm.starts_with(b"\0asm") {
            bail!("{} is not a WebAssembly file", a.wasm.display());
        }
        if wasm.len() > MAX_PLUGIN_BYTES {
            bail!(
                "{} is {} bytes, more than the store takes ({MAX_PLUGIN_BYTES})",
                a.wasm.display(),
                wasm.len()
            );
        }
        let mut native = native_builds(a.native)?;
        let key = std::fs::read(a.key).with_context(|| format!("reading {}", a.key.display()))?;
        er_net::signing::public_key_of(&key).with_context(|| a.key.display().to_string())?;
        let cfg = crate::config::load(a.config)?;
        let (cluster, group) = (cfg.raw.clusters[0].clone(), cfg.raw.group_id.clone());
        let state = tokio::task::spawn_blocking({
            let (cluster, group) = (cluster.clone(), group.clone());
            move || kafka::load(&cluster, &group)
        })
        .await?
        .map_err(anyhow::Error::msg)?;
        let given: Vec<String> = native.iter().map(|(t, _)| t.clone()).collect();
        let mut wanted: Vec<String> = a.targets.to_vec();
        wanted.extend(cfg.raw.plugins.targets.iter().cloned());
        wanted.extend(state.compilerless_targets(&sites));
        wanted.sort();
        wanted.dedup();
        wanted.retain(|t| !given.contains(t));
        let compiled = precompile_all(&wasm, a.wasm, &wanted)?;
        native.extend(compiled);
        let writer = kafka::Writer::new(&cluster, &group)?;
        let push = Push {
            name: a.name.to_owned(),
            sites: a.sites.to_owned(),
            canary: a.canary,
            wasm,
            native,
            key,
        };
        let version = PluginHub::push(&writer, &state, push)
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(Pushed {
            version,
            compiled: wanted,
            given,
        })
    }

    /// `hub plugins compile`: the component in `wasm` precompiled for `target`.
    pub fn compile(wasm: &Path, target: &str) -> anyhow::Result<Vec<u8>> {
        crate::config::check_plugin_target(target)
            .map_err(|e| anyhow::anyhow!("--target {target:?}: {e}"))?;
        let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
        let mut built = precompile_all(&bytes, wasm, &[target.to_owned()])?;
        Ok(built.pop().map(|(_, b)| b).unwrap_or_default())
    }

    /// The component precompiled for each of `targets` (one at a time: a build takes a
    /// second or so per target and megabytes of memory).
    #[cfg(feature = "plugin-compiler")]
    fn precompile_all(
        wasm: &[u8],
        path: &Path,
        targets: &[String],
    ) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::with_capacity(targets.len());
        for target in targets {
            let started = std::time::Instant::now();
            let bytes = er_plugin_host::precompile_for(wasm, path, target)
                .with_context(|| format!("precompiling for {target}"))?;
            if bytes.len() > MAX_PLUGIN_BYTES {
                bail!(
                    "the build for {target} is {} bytes, more than the store takes ({MAX_PLUGIN_BYTES})",
                    bytes.len()
                );
            }
            tracing::info!(%target, bytes = bytes.len(), ms = started.elapsed().as_millis() as u64, "precompiled");
            out.push((target.clone(), bytes));
        }
        Ok(out)
    }

    /// Without the compiler, a push needs every build given (`--native`).
    #[cfg(not(feature = "plugin-compiler"))]
    fn precompile_all(
        _wasm: &[u8],
        _path: &Path,
        targets: &[String],
    ) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        bail!(
            "this hub was built without the plugin compiler: give builds for {} with --native (`edge-agent plugin compile` on such a box)",
            targets.join(", ")
        )
    }

    /// `--native <target>=<file>` arguments, read and checked to be precompiled builds.
    fn native_builds(args: &[String]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::with_capacity(args.len());
        for arg in args {
            let Some((target, file)) = arg.split_once('=') else {
                bail!(
                    "--native {arg:?}: expected <target>=<file>, e.g. aarch64-linux=filter.cwasm"
                );
            };
            er_protocol::check_plugin_name(target)
                .map_err(|e| anyhow::anyhow!("--native target {target:?}: {e}"))?;
            let bytes = std::fs::read(file).with_context(|| format!("reading {file}"))?;
            if bytes.starts_with(b"\0asm") {
                bail!(
                    "--native {arg:?}: {file} is a WebAssembly file; give what `edge-agent plugin compile` made of it on a {target} box"
                );
            }
            if bytes.len() > MAX_PLUGIN_BYTES {
                bail!(
                    "{file} is {} bytes, more than the store takes ({MAX_PLUGIN_BYTES})",
                    bytes.len()
                );
            }
            out.push((target.to_owned(), bytes));
        }
        Ok(out)
    }

    /// The store's rollouts and the versions sites run, as text.
    pub fn status(config: &Path) -> anyhow::Result<String> {
        let cfg = crate::config::load(config)?;
        let state =
            kafka::load(&cfg.raw.clusters[0], &cfg.raw.group_id).map_err(anyhow::Error::msg)?;
        Ok(render(&state))
    }

    /// [`status`]'s text for a store state.
    pub fn render(state: &StoreState) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<24} {:<20} {:>7} {:<16} rolled back",
            "plugin", "sites", "stable", "canary"
        );
        for r in state.rollouts.values() {
            let canary = r.canary.as_ref().map_or("-".to_owned(), |c| {
                format!("v{} at {}%", c.version, c.percent)
            });
            let stable = r.stable.map_or("-".to_owned(), |v| format!("v{v}"));
            let back: Vec<String> = r.rolled_back.iter().map(|v| format!("v{v}")).collect();
            let _ = writeln!(
                out,
                "{:<24} {:<20} {:>7} {:<16} {}",
                r.name,
                r.sites,
                stable,
                canary,
                if back.is_empty() {
                    "-".into()
                } else {
                    back.join(" ")
                }
            );
        }
        let _ = writeln!(out, "\n{:<32} {:<24} running", "site", "target");
        for (site, r) in &state.sites {
            let v: Vec<String> = r
                .versions
                .iter()
                .map(|(n, v)| format!("{n} v{v}"))
                .collect();
            let target = match (r.target.as_str(), r.compiler) {
                ("", _) => "-".to_owned(),
                (t, true) => t.to_owned(),
                (t, false) => format!("{t} (no compiler)"),
            };
            let _ = writeln!(out, "{site:<32} {target:<24} {}", v.join(", "));
        }
        out
    }
}
