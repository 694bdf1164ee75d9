//! Reading vectors back, as model serving does: `HGETALL {prefix}:{entity}`,
//! typed by the `{prefix}` schema hash. `weir features get` and
//! `weir lineage --redis` print what this returns.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::{EVENT_TIME_FIELD, LINEAGE_FIELD, encode, redact};
use crate::node::{Lineage, NodeError};

/// One stored vector.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredVector {
    /// The entity (the key's suffix).
    pub entity: String,
    /// Its event time in epoch milliseconds (`None` if the hash has none: not
    /// written by weir).
    pub event_time_ms: Option<i64>,
    /// The features, typed back by the schema hash, by name.
    pub features: Map<String, Value>,
    /// The lineage stored with it, when the sink kept it.
    pub lineage: Option<Lineage>,
}

impl StoredVector {
    /// The JSON object `weir features get` prints:
    /// `{"entity", "event_time_ms", "features", "lineage"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "entity": self.entity,
            "event_time_ms": self.event_time_ms,
            "features": self.features,
            "lineage": self.lineage,
        })
    }
}

/// The vectors of `entities` under `prefix`, in order; `None` where no vector is
/// stored (never written, expired or deleted).
///
/// # Errors
/// [`NodeError::Service`] when Redis cannot be reached or answers with an
/// error (a key that is not a hash).
pub async fn read_vectors(
    url: &str,
    prefix: &str,
    entities: &[String],
) -> Result<Vec<Option<StoredVector>>, NodeError> {
    let service = redact(url);
    let fail = |e: redis::RedisError| NodeError::Service {
        service: service.clone(),
        transient: e.is_io_error() || e.is_timeout(),
        message: format!("reading {prefix}:… from {service}: {e}"),
    };
    let client = redis::Client::open(url).map_err(fail)?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(fail)?;
    let mut pipe = redis::pipe();
    pipe.cmd("HGETALL").arg(prefix);
    for e in entities {
        pipe.cmd("HGETALL").arg(format!("{prefix}:{e}"));
    }
    let mut replies: Vec<Vec<(Vec<u8>, Vec<u8>)>> =
        pipe.query_async(&mut conn).await.map_err(fail)?;
    if replies.is_empty() {
        return Err(NodeError::Bug("Redis answered an empty pipeline".into()));
    }
    let types: HashMap<String, String> = replies
        .remove(0)
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect();
    Ok(entities
        .iter()
        .zip(replies)
        .map(|(entity, fields)| {
            if fields.is_empty() {
                return None;
            }
            let mut v = StoredVector {
                entity: entity.clone(),
                event_time_ms: None,
                features: Map::new(),
                lineage: None,
            };
            let mut fields: Vec<(String, Vec<u8>)> = fields
                .into_iter()
                .map(|(k, val)| (String::from_utf8_lossy(&k).into_owned(), val))
                .collect();
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, bytes) in fields {
                match name.as_str() {
                    EVENT_TIME_FIELD => {
                        v.event_time_ms = String::from_utf8_lossy(&bytes).parse().ok();
                    }
                    LINEAGE_FIELD => v.lineage = serde_json::from_slice(&bytes).ok(),
                    _ => {
                        let value = encode::decode(types.get(&name).map(String::as_str), &bytes);
                        v.features.insert(name, value);
                    }
                }
            }
            Some(v)
        })
        .collect())
}
