//! A stage's parameters, from the JSON the host passes to `init`, into a serde type.
//!
//! Enabled by the `params` feature. Errors name the offending key, as the host's own
//! pipeline-file errors do, so a typo in a pipeline's `params` table reads the same
//! whichever side caught it.
//!
//! ```
//! use serde::Deserialize;
//!
//! #[derive(Debug, Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Params {
//!     input: String,
//!     boundaries: Vec<f64>,
//! }
//!
//! let p: Params = weir_guest::params::parse(r#"{"input": "price", "boundaries": [0, 10]}"#)?;
//! assert_eq!(p.boundaries, [0.0, 10.0]);
//!
//! let err = weir_guest::params::parse::<Params>(r#"{"input": "price", "boundaries": [0, "x"]}"#)
//!     .unwrap_err();
//! assert!(err.starts_with("bad parameters: `boundaries[1]`: "), "{err}");
//! # Ok::<(), String>(())
//! ```

use serde::de::DeserializeOwned;

/// Parses `params` (JSON) into `T`.
///
/// # Errors
/// `bad parameters: `<key path>`: <reason>` (or without the path when the JSON as
/// a whole is wrong), ready to return from `init`.
pub fn parse<T: DeserializeOwned>(params: &str) -> Result<T, String> {
    let de = &mut serde_json::Deserializer::from_str(params);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            format!("bad parameters: {}", e.inner())
        } else {
            format!("bad parameters: `{path}`: {}", e.inner())
        }
    })
}
