//! Query parameters as docker reads them: booleans are "1", "true", "yes" (anything but "",
//! "0", "no", "false", "none"); versions are numbers.

use serde::{Deserialize, Serialize};

use crate::{Filters, Invalid};

/// docker's `httputils.BoolValue`.
pub fn bool_value(v: Option<&str>) -> bool {
    v.is_some_and(|s| {
        !matches!(
            s.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "no" | "false" | "none"
        )
    })
}

/// `?filters=&status=` of the list routes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub filters: Option<String>,
    /// `GET /services?status=true`: with `ServiceStatus`.
    #[serde(default)]
    pub status: Option<String>,
}

impl ListQuery {
    /// The filters, refused unless every key is in `allowed`.
    pub fn filters(&self, allowed: &[&str]) -> Result<Filters, Invalid> {
        let f = Filters::parse(self.filters.as_deref().unwrap_or(""))?;
        f.validate(allowed)?;
        Ok(f)
    }
}

/// `GET /networks/{id}?verbose=&scope=`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InspectQuery {
    #[serde(default)]
    pub verbose: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
}

impl InspectQuery {
    pub fn verbose(&self) -> bool {
        bool_value(self.verbose.as_deref())
    }
}

/// `?force=` (node rm, swarm leave).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForceQuery {
    #[serde(default)]
    pub force: Option<String>,
}

impl ForceQuery {
    pub fn force(&self) -> bool {
        bool_value(self.force.as_deref())
    }
}

/// The query of updates: `?version=` (the object's version the caller read), and for
/// `/swarm/update` the token rotations, for `/services/{id}/update` `rollback=previous`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateQuery {
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub rollback: Option<String>,
    #[serde(default, rename = "rotateWorkerToken")]
    pub rotate_worker_token: Option<String>,
    #[serde(default, rename = "rotateManagerToken")]
    pub rotate_manager_token: Option<String>,
    #[serde(default, rename = "rotateManagerUnlockKey")]
    pub rotate_manager_unlock_key: Option<String>,
    /// netagent's own: rotate the data-path (IPsec) keys now (`netctl swarm update
    /// --rotate-data-key`).
    #[serde(default, rename = "rotateDataKey")]
    pub rotate_data_key: Option<String>,
}

impl UpdateQuery {
    /// The version, refused unless a number.
    pub fn version(&self) -> Result<Option<u64>, Invalid> {
        match self.version.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                Invalid::new(format!(
                    "invalid version {v:?}: give the Version.Index the object was read at"
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_and_versions() {
        assert!(bool_value(Some("1")));
        assert!(bool_value(Some("True")));
        assert!(!bool_value(Some("0")));
        assert!(!bool_value(Some("false")));
        assert!(!bool_value(None));
        let q = UpdateQuery {
            version: Some("x".into()),
            ..Default::default()
        };
        assert!(q.version().is_err());
    }
}
