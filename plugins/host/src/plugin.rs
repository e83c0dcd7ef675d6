//! One loaded plugin: its compiled component, a live sandboxed instance, limits, stats, reload.

use std::fs;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::abi::{BatchArg, ProcessBatch};
use crate::bindings::edge_replicator::plugin::{host as wit_host, types as wit};
use crate::bindings::{Plugin, PluginPre};
use crate::chain::PluginStats;
use crate::error::{Failure, MAX_TEXT_BYTES, PluginError, cap_text};
use crate::{HostInner, PluginSpec};

/// Most log events a plugin may emit per call; the rest are counted, not logged, so a plugin
/// logging per record cannot flood an edge box's disk.
const MAX_LOGS_PER_CALL: u32 = 100;
/// Most fields of one log event that are logged; the rest are replaced by a count.
pub const MAX_LOG_FIELDS: usize = 16;
/// Most bytes of a log field's name or value that are logged.
pub const MAX_LOG_FIELD_BYTES: usize = 256;
/// Most bytes of a counter name (longer names are truncated with a marker, so two long names
/// with the same start add up in one counter).
pub const MAX_COUNTER_NAME_BYTES: usize = 64;
/// Most distinct counters a plugin may create; deltas of further names go to
/// [`OTHER_COUNTERS`].
pub const MAX_COUNTERS: usize = 64;
/// The counter that collects deltas of names beyond [`MAX_COUNTERS`].
pub const OTHER_COUNTERS: &str = "(other counters)";

/// Per-instance state: an empty WASI context, the limiter, and what the host imports collect.
pub(crate) struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    plugin: Arc<str>,
    logs_in_call: u32,
    pub(crate) logs_suppressed: u64,
    /// Counters added by the plugin, drained into the stats after each call.
    pub(crate) counters: Vec<(String, u64)>,
    /// The last error-level log of the current call: the panic message of a Rust guest.
    last_error_log: Option<String>,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

struct Limiter {
    memory_limit: usize,
    /// Size of the instance's linear memory: what the last granted grow (or its creation) asked.
    memory_bytes: usize,
    /// Set when the plugin asked for more than the cap: the size it wanted.
    exceeded: Option<usize>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.exceeded = Some(desired);
            // Trap rather than fail the grow: a Rust guest would abort anyway, and a trap
            // carries a clear reason.
            wasmtime::bail!("memory limit of {} bytes exceeded", self.memory_limit);
        }
        self.memory_bytes = desired;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

impl wit::Host for StoreState {}

impl wit_host::Host for StoreState {
    fn log(&mut self, level: wit::Level, message: String, fields: Vec<(String, String)>) {
        let message = cap_text(message, MAX_TEXT_BYTES);
        if level == wit::Level::Error {
            self.last_error_log = Some(message.clone());
        }
        if self.logs_in_call >= MAX_LOGS_PER_CALL {
            self.logs_suppressed += 1;
            return;
        }
        self.logs_in_call += 1;
        let plugin = &*self.plugin;
        let extra = fields.len().saturating_sub(MAX_LOG_FIELDS);
        let mut fields: Vec<String> = fields
            .into_iter()
            .take(MAX_LOG_FIELDS)
            .map(|(k, v)| {
                let k = cap_text(k, MAX_LOG_FIELD_BYTES);
                let v = cap_text(v, MAX_LOG_FIELD_BYTES);
                format!("{k}={v:?}")
            })
            .collect();
        if extra > 0 {
            fields.push(format!("(+{extra} fields)"));
        }
        let fields = fields.join(" ");
        match level {
            wit::Level::Trace => tracing::trace!(plugin, fields, "{message}"),
            wit::Level::Debug => tracing::debug!(plugin, fields, "{message}"),
            wit::Level::Info => tracing::info!(plugin, fields, "{message}"),
            wit::Level::Warn => tracing::warn!(plugin, fields, "{message}"),
            wit::Level::Error => tracing::error!(plugin, fields, "{message}"),
        }
    }

    fn counter_add(&mut self, name: String, delta: u64) {
        let name = cap_text(name, MAX_COUNTER_NAME_BYTES);
        add_counter(&mut self.counters, name, delta);
    }
}

/// Adds `delta` to counter `name` of `counters`, which holds at most [`MAX_COUNTERS`] names:
/// further names add to [`OTHER_COUNTERS`]. (Used for one call's counters and for the totals.)
fn add_counter(counters: &mut Vec<(String, u64)>, name: String, delta: u64) {
    if let Some((_, v)) = counters.iter_mut().find(|(n, _)| *n == name) {
        *v = v.saturating_add(delta);
        return;
    }
    // The overflow counter itself does not count against the bound.
    let named = counters.iter().filter(|(n, _)| n != OTHER_COUNTERS).count();
    if named < MAX_COUNTERS {
        counters.push((name, delta));
        return;
    }
    match counters.iter_mut().find(|(n, _)| n == OTHER_COUNTERS) {
        Some((_, v)) => *v = v.saturating_add(delta),
        None => counters.push((OTHER_COUNTERS.to_owned(), delta)),
    }
}

/// A clock stuck at zero: the contract grants no time source (record timestamps are the
/// plugin's notion of time), and a frozen clock keeps plugins deterministic.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The linker every plugin is instantiated with: the contract's host imports plus WASI p2 so
/// Rust std guests resolve, with everything denied by an empty context.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<StoreState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    // Host calls cannot be interrupted by the epoch deadline, so a plugin must not be able to
    // block the host: sleeping (clock subscriptions) traps instead of waiting.
    linker.allow_shadowing(true);
    let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
    for name in ["subscribe-duration", "subscribe-instant"] {
        clock.func_new(name, |_, _, _, _| {
            wasmtime::bail!("sleeping is not granted to plugins (wasi:clocks subscribe)")
        })?;
    }
    linker.allow_shadowing(false);
    Plugin::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// What identifies the plugin file's current content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    mtime: Option<SystemTime>,
    len: u64,
}

fn fingerprint(path: &Path) -> std::io::Result<Fingerprint> {
    let meta = fs::metadata(path)?;
    Ok(Fingerprint {
        mtime: meta.modified().ok(),
        len: meta.len(),
    })
}

fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Outcome of a failed call.
pub(crate) enum CallError {
    /// The plugin failed; its instance may have been discarded.
    Failed(Failure),
    /// The plugin had trapped before and a fresh instance could not be made.
    Restart(String),
}

struct Live {
    store: Store<StoreState>,
    process_batch: ProcessBatch,
}

impl Live {
    fn memory_bytes(&self) -> u64 {
        self.store.data().limiter.memory_bytes as u64
    }
}

/// A plugin of a chain.
pub(crate) struct LoadedPlugin {
    pub(crate) spec: PluginSpec,
    pre: PluginPre<StoreState>,
    /// `None` after a trap, until the next call makes a fresh instance.
    live: Option<Live>,
    current: Fingerprint,
    hash: u64,
    /// The fingerprint of a changed file that failed to load: not retried until it changes.
    failed: Option<Fingerprint>,
    pub(crate) stats: PluginStats,
}

impl LoadedPlugin {
    /// Reads, compiles, links, instantiates and initializes the plugin of `spec`.
    pub(crate) fn load(host: &HostInner, spec: PluginSpec) -> Result<Self, PluginError> {
        let (fp, hash, pre, live) = prepare(host, &spec)?;
        let stats = PluginStats {
            plugin: spec.path.clone(),
            memory_bytes: live.memory_bytes(),
            ..PluginStats::default()
        };
        Ok(LoadedPlugin {
            spec,
            pre,
            live: Some(live),
            current: fp,
            hash,
            failed: None,
            stats,
        })
    }

    /// Swaps in a changed file between batches. `Ok(false)` when unchanged (or when the same
    /// broken file already failed); on error the old version keeps running.
    pub(crate) fn reload_if_changed(&mut self, host: &HostInner) -> Result<bool, PluginError> {
        let path = &self.spec.path;
        let fp = fingerprint(path).map_err(|error| PluginError::Read {
            path: path.clone(),
            error,
        })?;
        if fp == self.current || Some(fp) == self.failed {
            return Ok(false);
        }
        match prepare(host, &self.spec) {
            Ok((fp, hash, pre, live)) => {
                self.current = fp;
                self.failed = None;
                if hash == self.hash {
                    // Touched, not changed.
                    return Ok(false);
                }
                self.hash = hash;
                self.pre = pre;
                self.stats.memory_bytes = live.memory_bytes();
                self.live = Some(live);
                self.stats.reloads += 1;
                tracing::info!(plugin = %path.display(), "plugin reloaded");
                Ok(true)
            }
            Err(e) => {
                self.failed = Some(fp);
                self.stats.last_error = Some(e.to_string());
                tracing::warn!(plugin = %path.display(), error = %e, "plugin reload failed; keeping the previous version");
                Err(e)
            }
        }
    }

    /// Runs `process-batch` under the deadline and memory cap.
    pub(crate) fn call(
        &mut self,
        host: &HostInner,
        batch: BatchArg<'_>,
    ) -> Result<wit::BatchResult, CallError> {
        if self.live.is_none() {
            let live = instantiate(host, &self.pre, &self.spec).map_err(|e| {
                self.stats.last_error = Some(e.to_string());
                CallError::Restart(e.to_string())
            })?;
            self.stats.restarts += 1;
            self.live = Some(live);
        }
        let Some(live) = self.live.as_mut() else {
            return Err(CallError::Restart("no instance".into()));
        };
        live.store.set_epoch_deadline(host.deadline_ticks);
        {
            let s = live.store.data_mut();
            s.logs_in_call = 0;
            s.last_error_log = None;
        }
        let started = Instant::now();
        let result = live.process_batch.call(&mut live.store, batch);
        self.stats.time_ns += started.elapsed().as_nanos() as u64;
        let state = live.store.data_mut();
        self.stats.logs_suppressed = state.logs_suppressed;
        self.stats.memory_bytes = state.limiter.memory_bytes as u64;
        for (name, delta) in state.counters.drain(..) {
            add_counter(&mut self.stats.counters, name, delta);
        }
        match result {
            Ok(Ok(res)) => Ok(res),
            Ok(Err(msg)) => Err(CallError::Failed(Failure::Batch(cap_text(
                msg,
                MAX_TEXT_BYTES,
            )))),
            Err(e) => {
                let failure = classify(host, state, &e);
                // A trapped component instance cannot be entered again: start afresh next call.
                self.live = None;
                Err(CallError::Failed(failure))
            }
        }
    }
}

fn classify(host: &HostInner, state: &StoreState, e: &wasmtime::Error) -> Failure {
    if let Some(wanted) = state.limiter.exceeded {
        return Failure::Memory {
            limit: state.limiter.memory_limit,
            wanted,
        };
    }
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return Failure::Deadline(host.config.batch_deadline);
    }
    let mut msg = format!("{e:#}");
    if let Some(log) = &state.last_error_log {
        msg = format!("{log} ({msg})");
    }
    // The error log is capped already; wasmtime's text holds the plugin's function names.
    Failure::Trap(cap_text(msg, 4 * MAX_TEXT_BYTES))
}

type Prepared = (Fingerprint, u64, PluginPre<StoreState>, Live);

/// Everything of loading that can fail, without touching the running version.
fn prepare(host: &HostInner, spec: &PluginSpec) -> Result<Prepared, PluginError> {
    let path = &spec.path;
    let read_err = |error| PluginError::Read {
        path: path.clone(),
        error,
    };
    let fp = fingerprint(path).map_err(read_err)?;
    let bytes = fs::read(path).map_err(read_err)?;
    let hash = content_hash(&bytes);
    let component = compile(host, hash, &bytes, path)?;
    let wrong_world = |e: wasmtime::Error| PluginError::WrongWorld {
        path: path.clone(),
        reason: format!("{e:#}"),
    };
    let instance_pre = host
        .linker
        .instantiate_pre(&component)
        .map_err(wrong_world)?;
    let pre = PluginPre::new(instance_pre).map_err(wrong_world)?;
    let live = instantiate(host, &pre, spec)?;
    Ok((fp, hash, pre, live))
}

/// The component in `bytes` (read from `path`): compiled from WebAssembly, or loaded as the
/// native code of a precompiled plugin; once per content.
fn compile(
    host: &HostInner,
    hash: u64,
    bytes: &[u8],
    path: &Path,
) -> Result<Component, PluginError> {
    let mut compiled = host
        .compiled
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, c)) = compiled.iter().find(|(h, _)| *h == hash) {
        return Ok(c.clone());
    }
    let component = match wasmtime::Engine::detect_precompiled(bytes) {
        Some(wasmtime::Precompiled::Component) => load_precompiled(host, bytes, path)?,
        Some(wasmtime::Precompiled::Module) => {
            return Err(PluginError::Precompiled {
                path: path.to_owned(),
                reason: "a precompiled core module, not a component (make it with `edge-agent plugin compile` from the plugin's .wasm)".into(),
            });
        }
        // Precompiled plugins are ELF files; wasmtime recognises only whole, readable ones.
        None if bytes.starts_with(b"\x7fELF") => {
            return Err(PluginError::Precompiled {
                path: path.to_owned(),
                reason: "an ELF file that is not a whole wasmtime artifact (truncated, damaged, or not made by `edge-agent plugin compile`)".into(),
            });
        }
        None => from_wasm(host, bytes, path)?,
    };
    compiled.push((hash, component.clone()));
    Ok(component)
}

#[cfg(feature = "compiler")]
fn from_wasm(host: &HostInner, bytes: &[u8], path: &Path) -> Result<Component, PluginError> {
    Component::new(&host.engine, bytes).map_err(|e| PluginError::InvalidComponent {
        path: path.to_owned(),
        reason: format!("{e:#}"),
    })
}

#[cfg(not(feature = "compiler"))]
fn from_wasm(_: &HostInner, _: &[u8], path: &Path) -> Result<Component, PluginError> {
    Err(PluginError::NoCompiler {
        path: path.to_owned(),
    })
}

/// Loads a precompiled plugin: native code, so only from a file no other user could have
/// written (as the code cache). wasmtime checks that it was made by this version for this
/// engine's settings and target, and says which one differs.
fn load_precompiled(host: &HostInner, bytes: &[u8], path: &Path) -> Result<Component, PluginError> {
    let refused = |reason: String| PluginError::Precompiled {
        path: path.to_owned(),
        reason,
    };
    crate::check_native_code_file(path).map_err(refused)?;
    // SAFETY: wasmtime's deserialization trusts its input to be an artifact wasmtime wrote:
    // a crafted file is native code. It is read from a file only this user or root can write
    // (checked above), as trusted as the agent binary and its configuration; `deserialize`
    // still checks its header, version, engine settings and target.
    #[allow(unsafe_code)]
    let component = unsafe { Component::deserialize(&host.engine, bytes) };
    component.map_err(|e| refused(format!("{e:#}")))
}

/// A fresh sandboxed instance with `init` called.
fn instantiate(
    host: &HostInner,
    pre: &PluginPre<StoreState>,
    spec: &PluginSpec,
) -> Result<Live, PluginError> {
    let path = &spec.path;
    let wasi = WasiCtx::builder()
        .wall_clock(FrozenClock)
        .monotonic_clock(FrozenClock)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    let state = StoreState {
        wasi,
        table: ResourceTable::new(),
        limiter: Limiter {
            memory_limit: host.config.memory_limit_bytes,
            memory_bytes: 0,
            exceeded: None,
        },
        plugin: Arc::from(path.display().to_string()),
        logs_in_call: 0,
        logs_suppressed: 0,
        counters: Vec::new(),
        last_error_log: None,
    };
    let mut store = Store::new(&host.engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(host.deadline_ticks);
    let plugin = pre
        .instantiate(&mut store)
        .map_err(|e| PluginError::Instantiate {
            path: path.clone(),
            reason: format!("{e:#}"),
        })?;
    let guest = plugin.edge_replicator_plugin_guest();
    let process_batch =
        ProcessBatch::new(*guest.func_process_batch().func(), &store).map_err(|e| {
            PluginError::Instantiate {
                path: path.clone(),
                reason: format!("{e:#}"),
            }
        })?;
    store.set_epoch_deadline(host.deadline_ticks);
    match guest.call_init(&mut store, &spec.config) {
        Ok(Ok(())) => Ok(Live {
            store,
            process_batch,
        }),
        Ok(Err(message)) => Err(PluginError::InitRejected {
            path: path.clone(),
            message: cap_text(message, MAX_TEXT_BYTES),
        }),
        Err(e) => Err(PluginError::InitFailed {
            path: path.clone(),
            failure: classify(host, store.data(), &e),
        }),
    }
}
