//! What the host hands a node while it is built: a small typed map of services
//! ([`Services`]) and the interfaces lower layers call through it.
//!
//! `node` is the bottom layer: it cannot name the sandbox, the store or a client
//! pool. It declares here what a node may ask for — [`NodeStateStore`] for state
//! kept outside the run, [`ComponentSource`] for components named by reference, a
//! [`Clock`] — and the host puts the implementations in. A node asks by type:
//!
//! ```text
//!   host ──insert(Arc<Sandbox>), insert::<dyn ComponentSource>(store), …──► Services
//!   node build: cx.services.require::<Sandbox>(cx.key)?   (clear error if absent)
//!               cx.services.get::<dyn ComponentSource>()  (optional)
//! ```

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use super::NodeError;

/// The services a host offers its nodes, by type: a concrete one
/// (`Arc<Sandbox>`) or an interface (`Arc<dyn ComponentSource>`). Cheap to
/// clone; nodes keep the `Arc`s they take out.
#[derive(Clone, Default)]
pub struct Services {
    /// Each entry holds an `Arc<T>` (itself boxed once more so `T` may be a trait
    /// object), keyed by `TypeId::of::<T>()`.
    map: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("count", &self.map.len())
            .finish()
    }
}

impl Services {
    /// No services: a node that needs one fails to build, naming it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Offers `service` as `T`, replacing any earlier one of that type.
    pub fn insert<T: ?Sized + Send + Sync + 'static>(&mut self, service: Arc<T>) {
        self.map.insert(TypeId::of::<T>(), Arc::new(service));
    }

    /// [`insert`](Self::insert), by value, for building a map in one expression.
    #[must_use]
    pub fn with<T: ?Sized + Send + Sync + 'static>(mut self, service: Arc<T>) -> Self {
        self.insert(service);
        self
    }

    /// Adds every service of `other`, replacing those of the same type.
    pub fn extend(&mut self, other: &Self) {
        self.map
            .extend(other.map.iter().map(|(k, v)| (*k, v.clone())));
    }

    /// The service offered as `T`, if any.
    pub fn get<T: ?Sized + Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.map
            .get(&TypeId::of::<T>())
            .and_then(|s| s.downcast_ref::<Arc<T>>())
            .cloned()
    }

    /// The service offered as `T`, or an error naming the node's `key` and the
    /// service it lacks: a host that does not offer what a node needs is a
    /// configuration that cannot run, not a bug of the node.
    ///
    /// # Errors
    /// [`NodeError::Config`] naming `key` and the missing service.
    pub fn require<T: ?Sized + Send + Sync + 'static>(
        &self,
        key: &str,
    ) -> Result<Arc<T>, NodeError> {
        self.get::<T>().ok_or_else(|| {
            NodeError::config(format!(
                "`{key}` needs the {}, which this host does not provide",
                service_name::<T>()
            ))
        })
    }
}

/// `T`'s name without its module path (`Sandbox`, `ComponentSource`), for errors.
fn service_name<T: ?Sized>() -> String {
    let full = std::any::type_name::<T>();
    let full = full.strip_prefix("dyn ").unwrap_or(full);
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_owned()
}

/// Entries of a key space, key and value, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Key-value state a node keeps outside the run (a lookup's cache, a dedupe set),
/// in a key space of its own. The host scopes it (tenant, pipeline) before handing
/// it over, so a node names only its space and keys.
pub trait NodeStateStore: Send + Sync {
    /// The value of `key` in `space`, if any.
    ///
    /// # Errors
    /// A [`NodeError`] when the store cannot be read.
    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, NodeError>;

    /// Sets `key` in `space` to `value`.
    ///
    /// # Errors
    /// A [`NodeError`] when the store cannot be written.
    fn put(&self, space: &str, key: &[u8], value: &[u8]) -> Result<(), NodeError>;

    /// Removes `key` from `space` (nothing if absent).
    ///
    /// # Errors
    /// A [`NodeError`] when the store cannot be written.
    fn remove(&self, space: &str, key: &[u8]) -> Result<(), NodeError>;

    /// Every entry of `space` whose key starts with `prefix`, in key order.
    ///
    /// # Errors
    /// A [`NodeError`] when the store cannot be read.
    fn scan(&self, space: &str, prefix: &[u8]) -> Result<Entries, NodeError>;
}

/// Components named by reference (`bucketize@3`, `bucketize`, `sha256:<hex>`):
/// the component store, seen from a node that loads one.
pub trait ComponentSource: Send + Sync {
    /// The component `reference` names: its digest (hex sha256) and its bytes.
    ///
    /// # Errors
    /// [`NodeError::Config`] when the reference is malformed or names nothing;
    /// another [`NodeError`] when the store fails.
    fn component(&self, reference: &str) -> Result<(String, Vec<u8>), NodeError>;
}

/// The time nodes read, so tests can fix it.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The machine's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A clock that says what it is told: for tests.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock at `ms`.
    pub fn at(ms: u64) -> Self {
        Self(std::sync::atomic::AtomicU64::new(ms))
    }

    /// Moves the clock to `ms`.
    pub fn set(&self, ms: u64) {
        self.0.store(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The tenant a process works as unless told otherwise.
pub const DEFAULT_TENANT: &str = "default";

#[cfg(test)]
mod tests {
    use super::*;

    trait Greeter: Send + Sync {
        fn greet(&self) -> String;
    }

    struct English;

    impl Greeter for English {
        fn greet(&self) -> String {
            "hello".into()
        }
    }

    #[test]
    fn services_are_found_by_concrete_type_and_by_interface() {
        let services = Services::new()
            .with(Arc::new(42u32))
            .with::<dyn Greeter>(Arc::new(English));
        assert_eq!(*services.get::<u32>().unwrap(), 42);
        assert_eq!(services.get::<dyn Greeter>().unwrap().greet(), "hello");
        assert!(services.get::<u64>().is_none());
        assert!(services.get::<dyn Clock>().is_none());
    }

    #[test]
    fn a_missing_service_names_the_node_and_the_service() {
        let e = Services::new()
            .require::<dyn ComponentSource>("stage[0].wasm")
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "`stage[0].wasm` needs the ComponentSource, which this host does not provide"
        );
        assert!(matches!(e, NodeError::Config(_)));
    }

    #[test]
    fn a_manual_clock_says_what_it_is_told() {
        let clock = ManualClock::at(5);
        assert_eq!(clock.now_ms(), 5);
        clock.set(9);
        assert_eq!(clock.now_ms(), 9);
    }
}
