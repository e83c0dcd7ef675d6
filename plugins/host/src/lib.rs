//! Sandboxed wasmtime host for edge-replicator plugins: load, link, limit, chain and hot-reload
//! WebAssembly components of world `edge-replicator:plugin@0.1.0` (see `wit/plugin.wit`).
//!
//! This crate knows nothing about Kafka or QUIC: records come in as [`InRecord`] views and go
//! out as [`OutBatch`] entries (or owned [`OutRecord`]s) that remember which input they came from,
//! so the caller can keep checkpoints exact after filtering and renaming.
//!
//! ```no_run
//! use er_plugin_host::{ErrorPolicy, HostConfig, InRecord, PluginHost, PluginSpec};
//!
//! let host = PluginHost::new(HostConfig::default())?;
//! let spec = PluginSpec {
//!     path: "plugins/filter.wasm".into(),
//!     config: vec![("condition".into(), "temperature > 30".into())],
//! };
//! let mut chain = host.load_chain(&[spec], ErrorPolicy::Skip)?;
//! let value = br#"{"temperature":31}"#;
//! let input = [InRecord {
//!     topic: "sensors",
//!     partition: 0,
//!     offset: 42,
//!     timestamp: 0,
//!     key: None,
//!     value: Some(value),
//!     headers: &[],
//! }];
//! let out = chain.process(&input)?;
//! assert_eq!(out[0].source_index, 0);
//! chain.reload_if_changed()?; // between batches
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod abi;
pub mod build;
mod chain;
mod error;
mod jsonl;
mod plugin;
mod records;
pub mod template;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use chain::{
    Chain, DEAD_LETTER_ERROR_HEADER, DEAD_LETTER_PLUGIN_HEADER, ErrorPolicy, PluginStats,
};
pub use error::{ChainError, FailedAt, Failure, MAX_TEXT_BYTES, PluginError, SourcePosition};
pub use jsonl::{JsonlError, RunSummary, run_jsonl};
pub use plugin::{
    MAX_COUNTER_NAME_BYTES, MAX_COUNTERS, MAX_LOG_FIELD_BYTES, MAX_LOG_FIELDS, OTHER_COUNTERS,
};
pub use records::{InRecord, OutBatch, OutHeaders, OutRecord, OutRecordRef, RecordFailure};

use plugin::StoreState;

/// The contract this host implements, as shown in error messages.
pub const WORLD: &str = "edge-replicator:plugin@0.1.0";

/// Host-side bindings generated from `wit/plugin.wit` (the same files the SDK uses).
mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "plugin",
    });
}

/// Limits and caching for every plugin instance of a [`PluginHost`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// Linear memory cap per plugin instance, in bytes (rounded up to 64 KiB pages). A plugin
    /// growing past it traps the batch.
    pub memory_limit_bytes: usize,
    /// CPU deadline for one batch call (wall time, enforced by epoch interruption). A plugin
    /// running longer traps the batch.
    pub batch_deadline: Duration,
    /// Most records one input record may turn into (through `replace`); more is an error for
    /// that record.
    pub max_outputs_per_input: u32,
    /// Most bytes of records one input record may turn into (see [`OutputLimits`]); the
    /// default for chains loaded without their own limits.
    pub max_output_bytes_per_input: u64,
    /// Most bytes of records one plugin call may produce through `replace` (see
    /// [`OutputLimits`]); the default for chains loaded without their own limits.
    pub max_output_bytes_per_batch: u64,
    /// Directory for wasmtime's compiled-code cache; `None` compiles every plugin at load.
    pub cache_dir: Option<PathBuf>,
    /// Plugin instances that can be alive at once in this host (pooling allocator slots).
    /// Each plugin of each chain holds one; a reload briefly holds two.
    pub max_instances: u32,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            memory_limit_bytes: 64 << 20,
            batch_deadline: Duration::from_millis(50),
            max_outputs_per_input: 100,
            max_output_bytes_per_input: DEFAULT_MAX_OUTPUT_BYTES_PER_INPUT,
            max_output_bytes_per_batch: DEFAULT_MAX_OUTPUT_BYTES_PER_BATCH,
            cache_dir: None,
            max_instances: 64,
        }
    }
}

/// Default of [`OutputLimits::max_bytes_per_input`]: 8 MiB, a quarter of the hub's default
/// uncompressed batch limit (the outputs of one source record always travel in one batch).
pub const DEFAULT_MAX_OUTPUT_BYTES_PER_INPUT: u64 = 8 << 20;
/// Default of [`OutputLimits::max_bytes_per_batch`]: 32 MiB, the hub's default uncompressed
/// batch limit.
pub const DEFAULT_MAX_OUTPUT_BYTES_PER_BATCH: u64 = 32 << 20;

/// Bounds on what one plugin of a chain may produce, so a plugin cannot make the host hold (and
/// the link carry) far more than it was given. Breaking one fails the record (per input) or the
/// batch call (per batch), and the route's [`ErrorPolicy`] applies.
///
/// Bytes of an output record are its topic, key, value, header names and header values,
/// counted also when they alias input bytes: a hundred outputs that all point at one
/// 1 MiB value are 100 MiB to whoever writes them. Records a plugin keeps (`keep`) do not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// Most records one input may turn into.
    pub max_outputs_per_input: u32,
    /// Most bytes of records one input may turn into.
    pub max_bytes_per_input: u64,
    /// Most bytes of records one plugin call may produce (with `skip` or `dead-letter`, a batch
    /// over it is re-run one record at a time and records are admitted in order while they fit).
    pub max_bytes_per_batch: u64,
}

impl From<&HostConfig> for OutputLimits {
    fn from(c: &HostConfig) -> Self {
        OutputLimits {
            max_outputs_per_input: c.max_outputs_per_input,
            max_bytes_per_input: c.max_output_bytes_per_input,
            max_bytes_per_batch: c.max_output_bytes_per_batch,
        }
    }
}

/// Compiles and instantiates plugins. Cheap to clone and share across threads: all chains
/// loaded from one host share its engine, compiled-code cache and epoch ticker.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<HostInner>,
}

impl fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginHost")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

pub(crate) struct HostInner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<StoreState>,
    pub(crate) config: HostConfig,
    /// Epoch ticks per batch deadline.
    pub(crate) deadline_ticks: u64,
    /// Compiled components by content hash, so routes sharing a plugin compile it once.
    pub(crate) compiled: Mutex<Vec<(u64, Component)>>,
}

/// Linear memories one plugin component may have. Rust, C and componentize-py guests have one;
/// a component with more fails to instantiate with a clear error.
pub const MEMORIES_PER_COMPONENT: u32 = 1;
/// Tables one plugin component may have (a Rust guest: its function table and the shims').
pub const TABLES_PER_COMPONENT: u32 = 4;
/// Core module instances one plugin component may have: a Rust guest has the module plus shims;
/// componentize-py links 14 (libc, libpython, its runtime, the WASI adapter, shims). Each slot
/// is address space for one instance's context (wasmtime's `max_core_instance_size`), committed
/// only when used, so the bound costs reserved address space, not memory.
pub const CORE_INSTANCES_PER_COMPONENT: u32 = 16;

/// Period of the epoch ticker for a deadline: fine enough to enforce it within about 10%,
/// coarse enough to cost nothing on a small box.
fn tick_for(deadline: Duration) -> Duration {
    (deadline / 10).clamp(Duration::from_millis(1), Duration::from_millis(10))
}

impl PluginHost {
    /// Creates the engine (pooling allocator, epoch interruption, optional code cache), the
    /// linker (host imports and a deny-everything WASI) and the epoch ticker thread.
    pub fn new(config: HostConfig) -> Result<Self, PluginError> {
        let engine_err = |e: wasmtime::Error| PluginError::Engine(format!("{e:#}"));
        if config.batch_deadline.is_zero() || config.memory_limit_bytes == 0 {
            return Err(PluginError::Engine(
                "batch_deadline and memory_limit_bytes must be greater than zero".into(),
            ));
        }
        let wcfg = wasmtime_config(&config)?;
        let engine = Engine::new(&wcfg).map_err(engine_err)?;
        let linker = plugin::linker(&engine).map_err(engine_err)?;
        let tick = tick_for(config.batch_deadline);
        let deadline_ticks = config.batch_deadline.as_nanos().div_ceil(tick.as_nanos()) as u64 + 1;
        let inner = Arc::new(HostInner {
            engine,
            linker,
            config,
            deadline_ticks,
            compiled: Mutex::new(Vec::new()),
        });
        spawn_ticker(Arc::downgrade(&inner), tick)?;
        Ok(PluginHost { inner })
    }

    /// The configuration this host was created with.
    pub fn config(&self) -> &HostConfig {
        &self.inner.config
    }

    /// Loads every plugin of a route (compile or take from cache, link, instantiate, `init` with
    /// its config) into a chain applied in order. The first failure names the plugin file.
    pub fn load_chain(
        &self,
        specs: &[PluginSpec],
        policy: ErrorPolicy,
    ) -> Result<Chain, PluginError> {
        self.load_chain_with(specs, policy, OutputLimits::from(&self.inner.config))
    }

    /// [`PluginHost::load_chain`] with output limits of the chain's own (a route's settings)
    /// instead of the host's defaults.
    pub fn load_chain_with(
        &self,
        specs: &[PluginSpec],
        policy: ErrorPolicy,
        limits: OutputLimits,
    ) -> Result<Chain, PluginError> {
        let plugins = specs
            .iter()
            .map(|s| plugin::LoadedPlugin::load(&self.inner, s.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Chain::new(self.inner.clone(), plugins, policy, limits))
    }
}

/// Whether this host compiles plugins from `.wasm` (the `compiler` feature); without it, only
/// precompiled plugins load.
pub const HAS_COMPILER: bool = cfg!(feature = "compiler");

/// Compiles the plugin component in the file `wasm` for this machine's target: what
/// [`PluginHost`] loads from a file without compiling it (a host built without the `compiler`
/// feature loads only such files). The artifact is native code for this wasmtime version and
/// the host's engine settings, which no [`HostConfig`] field changes today (its limits are
/// enforced at run time): a host of another version or target refuses it, naming what differs.
#[cfg(feature = "compiler")]
pub fn precompile(wasm: &std::path::Path) -> Result<Vec<u8>, PluginError> {
    let bytes = std::fs::read(wasm).map_err(|error| PluginError::Read {
        path: wasm.to_owned(),
        error,
    })?;
    let engine = Engine::new(&wasmtime_config(&HostConfig::default())?)
        .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
    engine
        .precompile_component(&bytes)
        .map_err(|e| PluginError::InvalidComponent {
            path: wasm.to_owned(),
            reason: format!("{e:#}"),
        })
}

/// Compiles the plugin component `bytes` (read from `path`, named in errors) for agents of
/// `target` (`<arch>-<os>` as agents report it, e.g. `aarch64-linux`), which need not be this
/// machine's: what a hub precompiles for agents built without a compiler. The code uses only
/// the target's baseline instructions (no features of the compiling machine's CPU), with the
/// engine settings every host uses, so any agent of that target and wasmtime version loads it;
/// wasmtime checks both at load and names what differs. Cross targets need the compiler's
/// backend for them (the `cross` feature builds all of wasmtime's).
#[cfg(feature = "compiler")]
pub fn precompile_for(
    bytes: &[u8],
    path: &std::path::Path,
    target: &str,
) -> Result<Vec<u8>, PluginError> {
    let triple = target_triple(target)?;
    let mut config = wasmtime_config(&HostConfig::default())?;
    config
        .target(&triple)
        .map_err(|e| PluginError::Engine(format!("target {target:?} ({triple}): {e:#}")))?;
    let engine = Engine::new(&config)
        .map_err(|e| PluginError::Engine(format!("target {target:?} ({triple}): {e:#}")))?;
    engine
        .precompile_component(bytes)
        .map_err(|e| PluginError::InvalidComponent {
            path: path.to_owned(),
            reason: format!("{e:#}"),
        })
}

/// The platform name agents report (`<arch>-<os>`, Rust's `std::env::consts`), e.g.
/// `x86_64-linux`.
pub fn this_target() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

/// The compiler's target triple for an agent platform name (`<arch>-<os>`). wasmtime checks a
/// precompiled plugin's architecture and operating system only, so the vendor and environment
/// here are the usual ones.
pub fn target_triple(target: &str) -> Result<String, PluginError> {
    let unknown = |why: &str| PluginError::Engine(format!("target {target:?}: {why}"));
    let (arch, os) = target
        .split_once('-')
        .ok_or_else(|| unknown("expected <arch>-<os>, e.g. aarch64-linux"))?;
    let arch = match arch {
        "x86_64" | "aarch64" | "s390x" => arch,
        "riscv64" => "riscv64gc",
        _ => {
            return Err(unknown(
                "architecture not one of x86_64, aarch64, riscv64, s390x",
            ));
        }
    };
    let rest = match os {
        "linux" => "unknown-linux-gnu",
        "macos" => "apple-darwin",
        "windows" => "pc-windows-msvc",
        _ => return Err(unknown("operating system not one of linux, macos, windows")),
    };
    Ok(format!("{arch}-{rest}"))
}

/// The engine settings of a host: the pooling allocator with a bounded share per component,
/// epoch interruption, and the optional code cache. Precompiled plugins carry these settings
/// and load only into an engine with the same ones.
fn wasmtime_config(config: &HostConfig) -> Result<Config, PluginError> {
    let memory = (config.memory_limit_bytes as u64).div_ceil(1 << 16) << 16;
    let mut pool = PoolingAllocationConfig::default();
    let instances = config.max_instances.max(1);
    // Every component instance gets its own bounded share of the pool: the totals are the
    // per-component maxima times the instances, so no component can take the slots another
    // one needs (without per-component maxima, one component with many memories could hold
    // every memory slot). One memory each: the memory cap is then a cap per instance.
    pool.total_component_instances(instances)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .total_memories(instances * MEMORIES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .total_tables(instances * TABLES_PER_COMPONENT)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .total_core_instances(instances * CORE_INSTANCES_PER_COMPONENT)
        .total_stacks(instances)
        .max_memory_size(memory as usize);
    let mut wcfg = Config::new();
    wcfg.epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        // A 4 GiB reservation plus a 2 GiB guard lets compiled code skip explicit bounds
        // checks on 32-bit memories (about 25% less CPU per filtered record in the host
        // bench). It is address space only (PROT_NONE); the cap above still limits what a
        // plugin can touch, and nothing is committed until it grows.
        .memory_reservation(4 << 30)
        .memory_guard_size(2 << 30)
        .memory_reservation_for_growth(0);
    if let Some(dir) = &config.cache_dir {
        cache(&mut wcfg, dir)?;
    }
    Ok(wcfg)
}

/// Keeps compiled code in `dir` (checked: see [`check_cache_dir`]).
#[cfg(feature = "compiler")]
fn cache(wcfg: &mut Config, dir: &std::path::Path) -> Result<(), PluginError> {
    check_cache_dir(dir)?;
    let mut cc = wasmtime::CacheConfig::new();
    cc.with_directory(dir);
    let cache = wasmtime::Cache::new(cc).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
    wcfg.cache(Some(cache));
    Ok(())
}

/// Without a compiler there is nothing to cache: a configured cache is a mistake to report.
#[cfg(not(feature = "compiler"))]
fn cache(_: &mut Config, dir: &std::path::Path) -> Result<(), PluginError> {
    Err(PluginError::CacheDir {
        path: dir.to_owned(),
        problem: "this build has no plugin compiler (built without the `compiler` feature) and loads only precompiled plugins, which need no cache: remove plugins.cache_dir".into(),
    })
}

/// One ticker thread per host: advances the engine's epoch so running plugins notice their
/// deadline. It ends when the host (and every chain holding it) is dropped.
fn spawn_ticker(host: Weak<HostInner>, tick: Duration) -> Result<(), PluginError> {
    std::thread::Builder::new()
        .name("er-plugin-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match host.upgrade() {
                    Some(h) => h.engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .map(drop)
        .map_err(|e| PluginError::Engine(format!("cannot start the epoch ticker thread: {e}")))
}

/// One plugin of a route: its component file and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSpec {
    /// Path of the `.wasm` component (also the plugin's name in errors and stats).
    pub path: PathBuf,
    /// Settings passed to the plugin's `init`, in config order.
    pub config: Vec<(String, String)>,
}

/// Makes sure the compiled-code cache is a directory only this user (or root) owns and only
/// its owner may write: wasmtime maps the native code it finds there, so anyone else who can
/// write it could make the agent run their code. A missing directory is created, mode 0700.
#[cfg(feature = "compiler")]
fn check_cache_dir(dir: &std::path::Path) -> Result<(), PluginError> {
    let problem = |problem: String| PluginError::CacheDir {
        path: dir.to_owned(),
        problem,
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| problem(format!("cannot create it: {e}")))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| problem(format!("cannot restrict it to its owner: {e}")))?;
        }
    }
    let meta = std::fs::metadata(dir).map_err(|e| problem(format!("cannot read it: {e}")))?;
    if !meta.is_dir() {
        return Err(problem("is not a directory".into()));
    }
    only_ours(&meta, "a directory").map_err(problem)
}

/// Refuses a precompiled plugin file (native code) that another user could have written: the
/// file and its directory must be owned by this user or root and writable by their owner only.
fn check_native_code_file(path: &std::path::Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    only_ours(&meta, "a file")?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let dir_meta = std::fs::metadata(dir).map_err(|e| format!("cannot read its directory: {e}"))?;
    only_ours(&dir_meta, "a directory").map_err(|e| format!("its directory {}", e))
}

/// Native code is loaded only from what this user (or root) owns and only its owner may write:
/// anyone else who can write it could make the agent run their code. `what` names the thing in
/// the advice.
fn only_ours(meta: &std::fs::Metadata, what: &str) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(format!(
                "permissions {mode:04o} let other users write it, and the agent loads native code from it; make it writable by the agent's user only (chmod go-w)"
            ));
        }
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me && meta.uid() != 0 {
            return Err(format!(
                "is owned by user {} (the agent runs as {me}), and the agent loads native code from it; use {what} the agent's user owns",
                meta.uid()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = (meta, what);
    Ok(())
}
