//! The store as the services nodes are handed ([`crate::node::services`]): the
//! component store a WebAssembly stage resolves references in.

use super::{Store, StoreError};
use crate::node::NodeError;
use crate::node::services::{ComponentSource, Entries, NodeStateStore};

/// A store failure as a node sees it: a reference naming nothing, or malformed,
/// is the pipeline's configuration; a database failure is the store's, a service.
fn node_error(store: &Store, e: StoreError) -> NodeError {
    match e {
        StoreError::UnknownComponent { .. }
        | StoreError::BadReference { .. }
        | StoreError::UnknownVersion { .. }
        | StoreError::BadTenant { .. } => NodeError::config(e.to_string()),
        other => NodeError::Service {
            service: format!("store (tenant `{}`)", store.tenant()),
            transient: false,
            message: other.to_string(),
        },
    }
}

impl ComponentSource for Store {
    fn component(&self, reference: &str) -> Result<(String, Vec<u8>), NodeError> {
        let digest = self.resolve(reference).map_err(|e| node_error(self, e))?;
        let bytes = self
            .component_bytes(&digest)
            .map_err(|e| node_error(self, e))?;
        Ok((digest, bytes))
    }
}

/// Node state lives in the store's key spaces, under the store's tenant.
impl NodeStateStore for Store {
    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, NodeError> {
        self.kv_get(space, key).map_err(|e| node_error(self, e))
    }

    fn put(&self, space: &str, key: &[u8], value: &[u8]) -> Result<(), NodeError> {
        self.kv_put(space, key, value)
            .map_err(|e| node_error(self, e))
    }

    fn remove(&self, space: &str, key: &[u8]) -> Result<(), NodeError> {
        self.kv_remove(space, key).map_err(|e| node_error(self, e))
    }

    fn scan(&self, space: &str, prefix: &[u8]) -> Result<Entries, NodeError> {
        self.kv_scan(space, prefix, usize::MAX)
            .map_err(|e| node_error(self, e))
    }
}
