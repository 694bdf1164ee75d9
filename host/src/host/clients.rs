//! Clients shared per service address: two sinks writing to one Redis, or a
//! lookup and a sink on one database, share one connection manager instead of
//! opening one each. A pool is keyed by the client's type and its address, and
//! made on first use by the caller's `connect`.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A client of any type, shared.
type AnyClient = Arc<dyn Any + Send + Sync>;

/// Shared clients of a host, one per (client type, address).
#[derive(Default, Clone)]
pub struct ClientPools {
    pools: Arc<Mutex<HashMap<(TypeId, String), AnyClient>>>,
}

impl std::fmt::Debug for ClientPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.pools.lock().map_or(0, |p| p.len());
        f.debug_struct("ClientPools").field("clients", &n).finish()
    }
}

impl ClientPools {
    /// The client of type `T` for `address`, made by `connect` the first time.
    /// `connect` runs under the pools' lock, so it should not block for long
    /// (a connection manager that connects lazily fits).
    ///
    /// # Errors
    /// Whatever `connect` returns; nothing is kept then, so the next call tries again.
    pub fn get_or_connect<T, E>(
        &self,
        address: &str,
        connect: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E>
    where
        T: Send + Sync + 'static,
    {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let key = (TypeId::of::<T>(), address.to_owned());
        if let Some(found) = pools.get(&key).and_then(|c| c.clone().downcast::<T>().ok()) {
            return Ok(found);
        }
        let client = Arc::new(connect()?);
        pools.insert(key, client.clone());
        Ok(client)
    }

    /// How many clients are held.
    pub fn len(&self) -> usize {
        self.pools.lock().map_or(0, |p| p.len())
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_per_type_and_address() {
        let pools = ClientPools::default();
        let a = pools
            .get_or_connect::<String, ()>("redis://a", || Ok("A".into()))
            .unwrap();
        let again = pools
            .get_or_connect::<String, ()>("redis://a", || panic!("not again"))
            .unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        let b = pools
            .get_or_connect::<String, ()>("redis://b", || Ok("B".into()))
            .unwrap();
        assert_eq!(*b, "B");
        let n = pools
            .get_or_connect::<u32, ()>("redis://a", || Ok(7))
            .unwrap();
        assert_eq!(*n, 7);
        assert!(
            pools
                .get_or_connect::<u64, &str>("x", || Err("refused"))
                .is_err()
        );
        assert_eq!(pools.len(), 3);
    }
}
