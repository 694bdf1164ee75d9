//! `[sink.http]`: feature vectors POSTed to a model server, one request per batch.
//!
//! ```toml
//! [sink.http]
//! url = "http://127.0.0.1:8501/v1/models/ctr:predict"
//! protocol = "tf_serving"      # or "kserve"
//! columns = ["user_bucket", "price_bucket", "age"]   # default: all, in batch order
//! instance = "object"          # tf_serving: "object" (default) or "vector"
//! tensor = "features"          # kserve: one [rows, columns] tensor of that name (default: one input per column)
//! defaults = { price = 0.0, country = "" }   # what a null becomes; default: none
//! timeout = "10s"              # per request, default 10s
//! retry = { attempts = 4, backoff = "100ms" }   # as crate::node::retry; defaults there
//! non_finite = "null"          # as [sink.vectors]
//! timestamps = "epoch_ms"      # as [sink.vectors]
//! ```
//!
//! Request bodies, built as `serde_json` values:
//!
//! - TensorFlow Serving (REST `predict`, row format):
//!   `{"instances": [{"age": 0.5, "user_bucket": 17}, …]}`, or with
//!   `instance = "vector"`, `{"instances": [[0.5, 17], …]}`.
//! - KServe v2 (Open Inference Protocol): one input per column,
//!   `{"inputs": [{"name": "age", "shape": [2], "datatype": "FP64", "data": [0.5, 0.7]}, …]}`;
//!   with `tensor`, one input `{"name": "features", "shape": [2, 3], "datatype": "FP64",
//!   "data": [row-major values]}` (columns must be numeric; INT64 if all are
//!   integers, FP32 if all Float32, else FP64). Datatypes per column: Boolean →
//!   BOOL, Int32 → INT32, Int64 → INT64, Float32 → FP32, Float64 → FP64, Utf8 →
//!   BYTES, timestamps → INT64 (epoch ms) or BYTES (RFC 3339).
//!
//! **Nulls.** A KServe input is a typed tensor, which has no null: KServe v2
//! servers and Triton refuse `"data": [3.95, null]`. So a null (and a NaN or
//! infinity under `non_finite = "null"`) takes the column's value in
//! `defaults` (the same model-safe value offline and online), and a null in a
//! column without one fails the write naming the column and the row. With
//! `tf_serving`, `defaults` fill nulls too; a null without one is sent as
//! `null`, as before. A default must fit its column: a number for a numeric
//! column (an integer for an integer one), a boolean for a boolean, a string
//! for a string.
//!
//! A 2xx answer is success. Connection errors, timeouts, 429 and 5xx are
//! transient: retried by the `retry` policy (exponential backoff with full
//! jitter, [`crate::node::retry`]) and counted in the node's `retries`, then
//! the run fails naming the URL and the last status. Any other status fails at
//! once with the start of the response body and `(permanent: not retried)`,
//! since repeating a request the server called malformed cannot help. Sinks run
//! on the blocking pool, so the client is a small blocking one (`ureq`, without
//! TLS).

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::batch::json::{
    JsonOptions, NonFinite, Timestamps, columns_as_values, rows_as_arrays, rows_as_objects,
};
use crate::node::config::{BuildCx, SinkConfig, SinkNode, SpecError};
use crate::node::retry::{RetryPolicy, Transience};
use crate::node::{Durability, Emitter, Lineage, NodeError, Sink};
use crate::units::Millis;

/// An HTTP feature sink's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkSpec {
    /// The endpoint, `http://host:port/path`.
    pub url: String,
    /// The request shape.
    pub protocol: Protocol,
    /// Columns to send, in order. Default: all, in batch order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// TF Serving only: rows as objects or as arrays. Default: `object`.
    #[serde(default)]
    pub instance: Instance,
    /// KServe only: send one `[rows, columns]` tensor of this name instead of one
    /// input per column. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor: Option<String>,
    /// Time allowed per request. Default: 10 s ([`default_timeout`]).
    #[serde(default = "default_timeout")]
    pub timeout: Millis,
    /// How transient failures are retried. Default: [`RetryPolicy::default`].
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Round floats to this many decimal places. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub float_decimals: Option<u8>,
    /// What NaN and ±infinity become. Default: `null`.
    #[serde(default)]
    pub non_finite: NonFinite,
    /// How timestamps are written. Default: `epoch_ms`.
    #[serde(default)]
    pub timestamps: Timestamps,
    /// What a null of a column becomes in a request: column name → a number,
    /// a boolean or a string. A KServe tensor cannot hold a null, so without a
    /// default a null there fails the write (see the module docs). Default:
    /// none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub defaults: BTreeMap<String, Value>,
}

/// The model server's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// TensorFlow Serving's REST `predict`: `{"instances": [...]}`.
    TfServing,
    /// KServe v2 / Open Inference Protocol: `{"inputs": [...]}`.
    Kserve,
}

/// How a TF Serving instance is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Instance {
    /// `{"name": value, ...}` (named inputs).
    #[default]
    Object,
    /// `[value, ...]` in `columns` order (one input tensor).
    Vector,
}

/// Default request timeout: 10 s.
pub fn default_timeout() -> Millis {
    Millis(Duration::from_secs(10))
}

/// POSTs each batch to a model server.
pub struct HttpSink {
    spec: HttpSinkSpec,
    agent: ureq::Agent,
    /// Requests sent again after a transient failure, not yet reported.
    unreported_retries: u64,
}

impl HttpSink {
    /// Checks the configuration (`key` is its key path, e.g. `sink[0].http`).
    /// Nothing is sent until the first batch.
    ///
    /// # Errors
    /// [`SpecError::Invalid`] for a URL that is not `http://…`, options of the
    /// other protocol, or a zero timeout.
    pub fn new(key: &str, spec: &HttpSinkSpec) -> Result<Self, SpecError> {
        if !spec.url.starts_with("http://") || spec.url.len() <= "http://".len() {
            return Err(SpecError::invalid(
                format!("{key}.url"),
                format!(
                    "`{}` is not an http:// URL (https needs a TLS-enabled build)",
                    spec.url
                ),
            ));
        }
        if spec.protocol == Protocol::TfServing && spec.tensor.is_some() {
            return Err(SpecError::invalid(
                format!("{key}.tensor"),
                "applies to protocol = \"kserve\" only",
            ));
        }
        if spec.protocol == Protocol::Kserve && spec.instance != Instance::Object {
            return Err(SpecError::invalid(
                format!("{key}.instance"),
                "applies to protocol = \"tf_serving\" only",
            ));
        }
        if spec.timeout.0.is_zero() {
            return Err(SpecError::invalid(
                format!("{key}.timeout"),
                "must be greater than 0",
            ));
        }
        spec.retry
            .check()
            .map_err(|e| SpecError::invalid(format!("{key}.retry"), e))?;
        for (column, value) in &spec.defaults {
            if !(value.is_number() || value.is_boolean() || value.is_string()) {
                return Err(SpecError::invalid(
                    format!("{key}.defaults.{column}"),
                    format!("{value} is not a number, a boolean or a string"),
                ));
            }
            if let Some(columns) = &spec.columns
                && !columns.contains(column)
            {
                return Err(SpecError::invalid(
                    format!("{key}.defaults.{column}"),
                    format!("`{column}` is not among `columns` ({})", columns.join(", ")),
                ));
            }
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(spec.timeout.0))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self {
            spec: spec.clone(),
            agent,
            unreported_retries: 0,
        })
    }

    /// Replaces each null of column `name` (sent as `datatype`) in `values` by
    /// the column's default; with `required` (a KServe tensor), a null without
    /// one is an error.
    ///
    /// # Errors
    /// [`NodeError::Data`] naming the column and the first null row when it
    /// has no default and `required`; [`NodeError::Config`] when the default
    /// does not fit `datatype`.
    fn fill_nulls(
        &self,
        name: &str,
        datatype: &str,
        values: &mut [Value],
        required: bool,
    ) -> Result<(), NodeError> {
        let default = self.spec.defaults.get(name);
        if let Some(d) = default {
            let fits = match datatype {
                "BOOL" => d.is_boolean(),
                "BYTES" => d.is_string(),
                "INT32" | "INT64" => d.is_i64() || d.is_u64(),
                _ => d.is_number(),
            };
            if !fits {
                return Err(NodeError::config(format!(
                    "`defaults.{name}` is {d}, which does not fit column `{name}` sent as {datatype}"
                )));
            }
        }
        for (row, v) in values.iter_mut().enumerate() {
            if v.is_null() {
                match default {
                    Some(d) => *v = d.clone(),
                    None if required => {
                        return Err(NodeError::Data {
                            message: format!(
                                "column `{name}` is null, and a KServe tensor cannot hold a null: give `{name}` a value in the sink's `defaults`"
                            ),
                            row: Some(row),
                        });
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }

    fn options(&self) -> JsonOptions {
        JsonOptions {
            float_decimals: self.spec.float_decimals,
            non_finite: self.spec.non_finite,
            timestamps: self.spec.timestamps,
        }
    }

    /// The request body for `batch`.
    ///
    /// # Errors
    /// [`NodeError::Config`] for a missing column, an unsupported type, a
    /// non-numeric column in a KServe tensor, or NaN under `non_finite = "error"`.
    pub fn body(&self, batch: &RecordBatch) -> Result<Value, NodeError> {
        let data = |e: crate::batch::BatchError| NodeError::config(e.to_string());
        let columns = self.spec.columns.as_deref();
        let options = self.options();
        let any_default = !self.spec.defaults.is_empty();
        Ok(match (self.spec.protocol, &self.spec.tensor) {
            (Protocol::TfServing, _) => match self.spec.instance {
                Instance::Object => {
                    let mut rows = rows_as_objects(batch, columns, options).map_err(data)?;
                    if any_default {
                        for row in &mut rows {
                            for (name, v) in row.iter_mut() {
                                if let (true, Some(d)) = (v.is_null(), self.spec.defaults.get(name))
                                {
                                    *v = d.clone();
                                }
                            }
                        }
                    }
                    json!({ "instances": rows })
                }
                Instance::Vector => {
                    let (names, mut rows) =
                        rows_as_arrays(batch, columns, options).map_err(data)?;
                    if any_default {
                        for row in &mut rows {
                            for (name, v) in names.iter().zip(row.iter_mut()) {
                                if let (true, Some(d)) = (v.is_null(), self.spec.defaults.get(name))
                                {
                                    *v = d.clone();
                                }
                            }
                        }
                    }
                    json!({ "instances": rows })
                }
            },
            (Protocol::Kserve, None) => {
                let mut inputs = Vec::new();
                for (name, t, mut values) in
                    columns_as_values(batch, columns, options).map_err(data)?
                {
                    let datatype = kserve_type(&t, options);
                    self.fill_nulls(&name, datatype, &mut values, true)?;
                    inputs.push(json!({ "name": name, "shape": [values.len()], "datatype": datatype, "data": values }));
                }
                json!({ "inputs": inputs })
            }
            (Protocol::Kserve, Some(tensor)) => {
                let mut cols = columns_as_values(batch, columns, options).map_err(data)?;
                for (name, t, _) in &cols {
                    if !t.is_numeric() {
                        return Err(NodeError::Config(format!(
                            "column `{name}` is {t}; a KServe tensor takes numeric columns only"
                        )));
                    }
                }
                let datatype = match cols
                    .iter()
                    .map(|(_, t, _)| t)
                    .collect::<Vec<_>>()
                    .as_slice()
                {
                    ts if ts.iter().all(|t| t.is_integer()) => "INT64",
                    ts if ts.iter().all(|t| **t == DataType::Float32) => "FP32",
                    _ => "FP64",
                };
                for (name, _, values) in &mut cols {
                    self.fill_nulls(name, datatype, values, true)?;
                }
                let (rows, width) = (batch.num_rows(), cols.len());
                let data: Vec<&Value> = (0..rows)
                    .flat_map(|r| cols.iter().map(move |(_, _, v)| &v[r]))
                    .collect();
                json!({ "inputs": [{ "name": tensor, "shape": [rows, width], "datatype": datatype, "data": data }] })
            }
        })
    }

    fn post(&mut self, body: &[u8]) -> Result<(), NodeError> {
        let url = &self.spec.url;
        let mut retries = 0;
        let posted = self
            .spec
            .retry
            .run_blocking(url, &PostFailure::transience, |attempt| {
                retries = u64::from(attempt.get() - 1);
                let mut resp = self
                    .agent
                    .post(url)
                    .header("content-type", "application/json")
                    .send(body)
                    .map_err(|e| PostFailure {
                        status: None,
                        message: format!("POST {url}: {e}"),
                    })?;
                let status = resp.status().as_u16();
                if (200..300).contains(&status) {
                    return Ok(());
                }
                let text = resp.body_mut().read_to_string().unwrap_or_default();
                let text: String = text.chars().take(200).collect();
                Err(PostFailure {
                    status: Some(status),
                    message: format!("POST {url}: HTTP {status}: {text}"),
                })
            })
            .map_err(|e| NodeError::Service {
                service: url.clone(),
                transient: e.transient(),
                message: e.to_string(),
            });
        self.unreported_retries += retries;
        posted
    }
}

/// A POST that did not get a 2xx: the status, if the server answered.
#[derive(Debug)]
struct PostFailure {
    status: Option<u16>,
    message: String,
}

impl PostFailure {
    /// HTTP's classifier: no answer (connection refused, reset, timed out),
    /// 429 and 5xx may pass on another try; any other status will not, since
    /// the server called the request itself wrong.
    fn transience(&self) -> Transience {
        match self.status {
            None | Some(429 | 500..) => Transience::Transient,
            Some(_) => Transience::Permanent,
        }
    }
}

impl std::fmt::Display for PostFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn kserve_type(t: &DataType, options: JsonOptions) -> &'static str {
    match t {
        DataType::Boolean => "BOOL",
        DataType::Int32 => "INT32",
        DataType::Int64 => "INT64",
        DataType::Float32 => "FP32",
        DataType::Float64 => "FP64",
        DataType::Timestamp(..) if options.timestamps == Timestamps::EpochMs => "INT64",
        _ => "BYTES",
    }
}

impl Sink for HttpSink {
    /// A write is durable once the model server answered 2xx.
    fn durability(&self) -> Durability {
        Durability::OnWrite
    }

    fn write(&mut self, batch: &RecordBatch, _lineage: &Lineage) -> Result<(), NodeError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let body =
            serde_json::to_vec(&self.body(batch)?).map_err(|e| NodeError::Bug(e.to_string()))?;
        self.post(&body)
    }

    /// The requests sent again since the last report, as `retries`.
    fn report(&mut self, out: &mut Emitter) {
        if self.unreported_retries > 0 {
            out.count("retries", std::mem::take(&mut self.unreported_retries));
        }
    }
}

/// Checked by building: [`HttpSink::new`] refuses a bad configuration and sends
/// nothing.
impl SinkConfig for HttpSinkSpec {
    /// Replayed records are written as any others: the service keeps what it
    /// already holds.
    fn replay_into(&self, _base_dir: &std::path::Path) -> crate::node::config::ReplayInto {
        crate::node::config::ReplayInto::Adds
    }

    fn check(&self, key: &str) -> Result<(), SpecError> {
        HttpSink::new(key, self).map(drop)
    }

    fn build(&self, cx: &BuildCx) -> Result<SinkNode, NodeError> {
        Ok(SinkNode::Sync(Box::new(HttpSink::new(cx.key, self)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_key() {
        let bad = |t: &str| match toml::from_str::<HttpSinkSpec>(t) {
            Ok(s) => HttpSink::new("sink[0].http", &s).err().unwrap().to_string(),
            Err(e) => e.message().to_owned(),
        };
        assert_eq!(
            bad("url = \"https://x\"\nprotocol = \"kserve\""),
            "`sink[0].http.url`: `https://x` is not an http:// URL (https needs a TLS-enabled build)"
        );
        assert_eq!(
            bad("url = \"http://x\"\nprotocol = \"tf_serving\"\ntensor = \"t\""),
            "`sink[0].http.tensor`: applies to protocol = \"kserve\" only"
        );
        assert_eq!(
            bad("url = \"http://x\"\nprotocol = \"torchserve\""),
            "unknown variant `torchserve`, expected `tf_serving` or `kserve`"
        );
        assert_eq!(
            bad("url = \"http://x\"\nprotocol = \"kserve\"\nretry = { attempts = -1 }"),
            "invalid value: integer `-1`, expected a nonzero u32"
        );
        assert_eq!(
            bad("url = \"http://x\"\nprotocol = \"kserve\"\nretries = 3"),
            "unknown field `retries`, expected one of `url`, `protocol`, `columns`, `instance`, `tensor`, `timeout`, `retry`, `float_decimals`, `non_finite`, `timestamps`, `defaults`"
        );
        assert_eq!(
            bad(
                "url = \"http://x\"\nprotocol = \"kserve\"\ncolumns = [\"a\"]\ndefaults = { b = 0 }"
            ),
            "`sink[0].http.defaults.b`: `b` is not among `columns` (a)"
        );
        assert_eq!(
            bad("url = \"http://x\"\nprotocol = \"kserve\"\ndefaults = { b = [0] }"),
            "`sink[0].http.defaults.b`: [0] is not a number, a boolean or a string"
        );
        assert_eq!(
            bad("url = \"http://x\"\nprotocol = \"kserve\"\nretry = { multiplier = 0.5 }"),
            "`sink[0].http.retry`: `multiplier` must be a number ≥ 1, not 0.5"
        );
    }

    /// `price` with a null and a NaN, `country` with a null.
    fn with_nulls() -> RecordBatch {
        use arrow::array::{Float64Array, StringArray};
        use arrow::datatypes::{Field, Schema};
        let schema = std::sync::Arc::new(Schema::new(vec![
            Field::new("price", DataType::Float64, true),
            Field::new("country", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                std::sync::Arc::new(Float64Array::from(vec![Some(3.95), None, Some(f64::NAN)])),
                std::sync::Arc::new(StringArray::from(vec![Some("de"), Some("fr"), None])),
            ],
        )
        .unwrap()
    }

    fn sink(extra: &str) -> HttpSink {
        let spec: HttpSinkSpec = toml::from_str(&format!(
            "url = \"http://x\"\nprotocol = \"kserve\"\n{extra}"
        ))
        .unwrap();
        HttpSink::new("sink[0].http", &spec).unwrap()
    }

    #[test]
    fn a_kserve_tensor_never_holds_a_null() {
        let batch = with_nulls();
        let body = sink("defaults = { price = -1.0, country = \"\" }")
            .body(&batch)
            .unwrap();
        assert_eq!(
            body,
            json!({"inputs": [
                {"name": "price", "shape": [3], "datatype": "FP64", "data": [3.95, -1.0, -1.0]},
                {"name": "country", "shape": [3], "datatype": "BYTES", "data": ["de", "fr", ""]},
            ]})
        );
        let e = sink("defaults = { price = 0 }").body(&batch).unwrap_err();
        assert_eq!(e.fault(), crate::node::Fault::Data);
        assert_eq!(
            e.to_string(),
            "column `country` is null, and a KServe tensor cannot hold a null: give `country` a value in the sink's `defaults` (row 2)"
        );
        let e = sink("defaults = { price = \"none\", country = \"\" }")
            .body(&batch)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "`defaults.price` is \"none\", which does not fit column `price` sent as FP64"
        );
        let body = sink("tensor = \"features\"\ncolumns = [\"price\"]\ndefaults = { price = 0.0 }")
            .body(&batch)
            .unwrap();
        assert_eq!(
            body,
            json!({"inputs": [{"name": "features", "shape": [3, 1], "datatype": "FP64", "data": [3.95, 0.0, 0.0]}]})
        );
        let e = sink("tensor = \"features\"\ncolumns = [\"price\"]")
            .body(&batch)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "column `price` is null, and a KServe tensor cannot hold a null: give `price` a value in the sink's `defaults` (row 1)"
        );
    }

    #[test]
    fn statuses_are_classified() {
        let class = |status| {
            PostFailure {
                status,
                message: String::new(),
            }
            .transience()
        };
        for s in [None, Some(429), Some(500), Some(503), Some(599)] {
            assert_eq!(class(s), Transience::Transient, "{s:?}");
        }
        for s in [Some(400), Some(401), Some(404), Some(413), Some(300)] {
            assert_eq!(class(s), Transience::Permanent, "{s:?}");
        }
    }
}
