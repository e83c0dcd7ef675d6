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

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use chain::{
    Chain, DEAD_LETTER_ERROR_HEADER, DEAD_LETTER_PLUGIN_HEADER, ErrorPolicy, PluginStats,
};
pub use error::{ChainError, Failure, PluginError};
pub use jsonl::{JsonlError, RunSummary, run_jsonl};
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
            cache_dir: None,
            max_instances: 64,
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
        let memory = (config.memory_limit_bytes as u64).div_ceil(1 << 16) << 16;
        let mut pool = PoolingAllocationConfig::default();
        let instances = config.max_instances.max(1);
        pool.total_component_instances(instances)
            // A Rust std guest has one memory and a few core instances (the module plus shims).
            .total_memories(instances * 2)
            .total_tables(instances * 4)
            .total_core_instances(instances * 8)
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
            let mut cc = wasmtime::CacheConfig::new();
            cc.with_directory(dir);
            let cache = wasmtime::Cache::new(cc).map_err(engine_err)?;
            wcfg.cache(Some(cache));
        }
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
        let plugins = specs
            .iter()
            .map(|s| plugin::LoadedPlugin::load(&self.inner, s.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Chain::new(self.inner.clone(), plugins, policy))
    }
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
