//! The one wasmtime [`Engine`] per host, and the thread that drives its epochs.

use std::thread;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::LoadError;
use crate::units::ByteSize;

/// How the host's engine is sized.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Stage instances that can be live at once (pooling-allocator slots).
    /// Default: 128.
    pub max_instances: u32,
    /// The largest linear memory any stage may be granted (the pool reserves address
    /// space, not memory, per slot). Default: 4 GiB.
    pub max_stage_memory: ByteSize,
    /// How often the epoch advances: the granularity of deadlines. Default: 10 ms.
    pub epoch_tick: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_instances: 128,
            max_stage_memory: ByteSize(4 << 30),
            epoch_tick: Duration::from_millis(10),
        }
    }
}

/// Builds the engine: component model, fuel, epochs, pooling allocator.
pub(super) fn build(config: &EngineConfig) -> Result<Engine, LoadError> {
    let mut pool = PoolingAllocationConfig::new();
    // A Rust component instantiates 3 core instances (and up to 2 memories); leave room.
    pool.total_component_instances(config.max_instances)
        .total_core_instances(config.max_instances * 6)
        .total_memories(config.max_instances * 2)
        .total_tables(config.max_instances * 6)
        .max_core_instances_per_component(16)
        .max_memories_per_component(4)
        .max_tables_per_component(16)
        .max_memory_size(config.max_stage_memory.as_usize());

    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        .consume_fuel(true)
        .epoch_interruption(true)
        // Component-model async is unused by the contract; off, a call costs
        // ~0.18 µs instead of ~0.5 µs.
        .concurrency_support(false)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&wasm).map_err(|e| LoadError::Setup(format!("{e:#}")))
}

/// Advances the engine's epoch every tick until the engine is dropped.
///
/// The thread holds only a weak reference, so it ends on its own with the engine.
pub(super) fn spawn_epoch_ticker(engine: &Engine, tick: Duration) {
    let weak = engine.weak();
    thread::Builder::new()
        .name("weir-epoch".into())
        .spawn(move || {
            loop {
                thread::sleep(tick);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .expect("spawning the epoch thread");
}
