//! docker's `filters` query parameter: JSON of `{"key": {"value": true, ...}}` (or the older
//! `{"key": ["value", ...]}`). Values of one key are alternatives; every key must match.

use std::collections::{BTreeMap, BTreeSet};

use crate::Invalid;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    by_key: BTreeMap<String, BTreeSet<String>>,
}

impl Filters {
    pub fn new() -> Filters {
        Filters::default()
    }

    /// Adds one `key=value` (as the CLI's `--filter key=value`).
    pub fn add(&mut self, key: &str, value: &str) -> &mut Filters {
        self.by_key
            .entry(key.to_string())
            .or_default()
            .insert(value.to_string());
        self
    }

    pub fn with(mut self, key: &str, value: &str) -> Filters {
        self.add(key, value);
        self
    }

    /// Parses the `filters` query value (already URL-decoded); empty means no filter.
    pub fn parse(json: &str) -> Result<Filters, Invalid> {
        if json.trim().is_empty() {
            return Ok(Filters::default());
        }
        let v: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| Invalid::new(format!("invalid filters {json:?}: {e}")))?;
        let serde_json::Value::Object(map) = v else {
            return Err(Invalid::new(format!(
                "invalid filters {json:?}: expected a JSON object of key -> values"
            )));
        };
        let mut f = Filters::default();
        for (key, values) in map {
            let set = f.by_key.entry(key.clone()).or_default();
            match values {
                serde_json::Value::Object(vals) => {
                    for (val, on) in vals {
                        if on.as_bool() != Some(false) {
                            set.insert(val);
                        }
                    }
                }
                serde_json::Value::Array(vals) => {
                    for val in vals {
                        match val {
                            serde_json::Value::String(s) => {
                                set.insert(s);
                            }
                            other => {
                                return Err(Invalid::new(format!(
                                    "invalid filter value {other} for '{key}': values are strings"
                                )));
                            }
                        }
                    }
                }
                other => {
                    return Err(Invalid::new(format!(
                        "invalid filter value {other} for '{key}': give {{\"value\": true}}"
                    )));
                }
            }
        }
        Ok(f)
    }

    /// The `filters` query value: docker's map form.
    pub fn to_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> = self
            .by_key
            .iter()
            .map(|(k, vals)| {
                let inner: serde_json::Map<String, serde_json::Value> = vals
                    .iter()
                    .map(|v| (v.clone(), serde_json::Value::Bool(true)))
                    .collect();
                (k.clone(), serde_json::Value::Object(inner))
            })
            .collect();
        serde_json::Value::Object(map).to_string()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Refuses keys outside `allowed` with docker's error.
    pub fn validate(&self, allowed: &[&str]) -> Result<(), Invalid> {
        for k in self.by_key.keys() {
            if !allowed.contains(&k.as_str()) {
                let mut public: Vec<&str> = allowed
                    .iter()
                    .copied()
                    .filter(|a| !a.starts_with('_'))
                    .collect();
                public.sort();
                return Err(Invalid::new(format!(
                    "invalid filter '{k}': use {}",
                    public.join(", ")
                )));
            }
        }
        Ok(())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }

    /// The values of `key` (empty when the key is absent).
    pub fn get(&self, key: &str) -> Vec<&str> {
        self.by_key
            .get(key)
            .map(|s| s.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// True when `key` is absent or any of its values satisfies `f`.
    pub fn matches(&self, key: &str, f: impl Fn(&str) -> bool) -> bool {
        match self.by_key.get(key) {
            None => true,
            Some(vals) => vals.iter().any(|v| f(v)),
        }
    }

    /// docker's `label` filter: every `key` or `key=value` given must be among `labels`.
    pub fn match_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.get("label")
            .iter()
            .all(|want| match want.split_once('=') {
                Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
                None => labels.contains_key(*want),
            })
    }

    /// A boolean filter such as `_up-to-date`: true if set to "true" or "1".
    pub fn is_true(&self, key: &str) -> bool {
        self.get(key).iter().any(|v| matches!(*v, "true" | "1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_and_round_trip() {
        let f = Filters::parse(r#"{"service":{"abc":true},"_up-to-date":{"true":true}}"#).unwrap();
        assert_eq!(f.get("service"), ["abc"]);
        assert!(f.is_true("_up-to-date"));
        let g = Filters::parse(r#"{"name":["a","b"]}"#).unwrap();
        assert_eq!(g.get("name"), ["a", "b"]);
        assert!(g.matches("name", |v| v == "b"));
        assert!(g.matches("node", |_| false), "absent keys match");
        assert_eq!(Filters::parse(&g.to_json()).unwrap(), g);
        assert!(Filters::parse("").unwrap().is_empty());
        assert!(Filters::parse("[1]").is_err());
        assert!(Filters::parse(r#"{"name":[1]}"#).is_err());
        let e = f.validate(&["service", "node", "_up-to-date"]);
        assert!(e.is_ok());
        let e = Filters::new()
            .with("colour", "red")
            .validate(&["name", "_up-to-date"])
            .unwrap_err();
        assert_eq!(e.0, "invalid filter 'colour': use name");
    }

    #[test]
    fn labels() {
        let labels = BTreeMap::from([("a".to_string(), "1".to_string())]);
        assert!(Filters::new().with("label", "a").match_labels(&labels));
        assert!(Filters::new().with("label", "a=1").match_labels(&labels));
        assert!(!Filters::new().with("label", "a=2").match_labels(&labels));
        assert!(!Filters::new().with("label", "b").match_labels(&labels));
    }
}
