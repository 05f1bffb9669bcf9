//! The Docker Engine API's swarm subset, as netagent serves it and netctl calls it.
//!
//! Wire types are written by hand from docker's v1.41 swagger (`api/docs/v1.41.yaml` in moby) and
//! the Go types behind it (`api/types/swarm`, `api/types/network`): the same field names and
//! casing, the same `omitempty` fields, times in RFC 3339 and durations in nanoseconds. Only what
//! netagent has a meaning for is typed; docker fields without one are kept as opaque JSON so a
//! request carrying them is accepted and answered with a warning (see [`service::to_model`]).
//!
//! Why not `bollard-stubs`: its models are generated from a much newer swagger (1.53) than the
//! version netagent reports, make every field an `Option` (so every conversion would be mostly
//! unwrapping), and have nowhere to keep the docker fields netagent accepts without using; the
//! subset the CLI and SDKs need here is some forty structs.
//!
//! Modules, one per resource: [`system`] (`/_ping`, `/version`, `/info`), [`swarm`], [`node`],
//! [`network`], [`service`], [`task`]; [`filters`] parses docker's `filters` query parameter;
//! [`version`] the `/v1.NN` prefix; [`query`] the query parameters. Every conversion between these types and the `model` crate's
//! objects lives here, next to the type it produces.

pub mod filters;
pub mod network;
pub mod node;
pub mod query;
pub mod service;
pub mod swarm;
pub mod system;
pub mod task;
pub mod version;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use filters::Filters;

/// The API version netagent speaks (docker 20.10's).
pub const API_VERSION: &str = "1.41";
/// The oldest version a client may ask for (docker's minimum; the CLI falls back to it).
pub const MIN_API_VERSION: &str = "1.24";

/// docker's `Version` (`{"Index": N}`): the object's Raft index, for `?version=` updates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectVersion {
    #[serde(rename = "Index", default)]
    pub index: u64,
}

/// docker's `Meta`, embedded in every swarm object: version and times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    #[serde(rename = "Version", default)]
    pub version: ObjectVersion,
    #[serde(rename = "CreatedAt")]
    pub created_at: DateTime<Utc>,
    #[serde(rename = "UpdatedAt")]
    pub updated_at: DateTime<Utc>,
}

impl From<&model::Meta> for Meta {
    fn from(m: &model::Meta) -> Meta {
        Meta {
            version: ObjectVersion { index: m.version },
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// Every error answer: `{"message": "..."}` (the docker CLI prints "Error response from daemon:
/// <message>").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub message: String,
}

/// A request the API refuses: what is wrong with it, in words for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Invalid {
    pub fn new(m: impl Into<String>) -> Invalid {
        Invalid(m.into())
    }
}

/// `Labels` as docker writes them: `null` when there are none.
pub(crate) mod null_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(m: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
        if m.is_empty() {
            s.serialize_none()
        } else {
            m.serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, String>, D::Error> {
        Ok(Option::<BTreeMap<String, String>>::deserialize(d)?.unwrap_or_default())
    }
}

/// A value that may be `null` on the wire: read as its default.
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Whether a JSON value says nothing (absent, null, false, 0, "", [] or {} all the way down):
/// docker clients send empty structs for options they were not given.
pub fn is_empty_value(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.iter().all(is_empty_value),
        Value::Object(o) => o.values().all(is_empty_value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_values() {
        assert!(is_empty_value(
            &serde_json::json!({"Limits": {}, "Reservations": {}})
        ));
        assert!(is_empty_value(
            &serde_json::json!({"Condition": "", "MaxAttempts": 0})
        ));
        assert!(!is_empty_value(
            &serde_json::json!({"Limits": {"NanoCPUs": 1}})
        ));
        assert!(!is_empty_value(&serde_json::json!(["x"])));
    }
}
