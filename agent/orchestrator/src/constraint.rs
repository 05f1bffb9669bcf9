//! Placement constraints, as docker's `--constraint`: `node.id`, `node.hostname`, `node.role`,
//! `node.labels.KEY` (and `node.platform.os`/`node.platform.arch`), compared with `==` or `!=`.

use model::Node;
use model::node::Role;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "invalid constraint {0:?}: expected KEY==VALUE or KEY!=VALUE, e.g. node.hostname==node1 or node.labels.zone!=east"
    )]
    Syntax(String),
    #[error(
        "invalid constraint {0:?}: unknown key {1:?}; use node.id, node.hostname, node.role, node.platform.os, node.platform.arch or node.labels.<label>"
    )]
    UnknownKey(String, String),
    #[error("invalid constraint {0:?}: node.role is manager or worker, not {1:?}")]
    BadRole(String, String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Id,
    Hostname,
    Role,
    Os,
    Arch,
    Label(String),
}

/// One parsed constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    key: Key,
    equal: bool,
    value: String,
}

impl Constraint {
    pub fn parse(text: &str) -> Result<Constraint, Error> {
        let syntax = || Error::Syntax(text.to_string());
        let (lhs, rhs, equal) = if let Some((l, r)) = text.split_once("==") {
            (l, r, true)
        } else if let Some((l, r)) = text.split_once("!=") {
            (l, r, false)
        } else {
            return Err(syntax());
        };
        let (lhs, value) = (lhs.trim(), rhs.trim());
        if lhs.is_empty() || value.is_empty() || value.contains("==") || value.contains("!=") {
            return Err(syntax());
        }
        let key = match lhs.to_ascii_lowercase().as_str() {
            "node.id" => Key::Id,
            "node.hostname" => Key::Hostname,
            "node.role" => Key::Role,
            "node.platform.os" => Key::Os,
            "node.platform.arch" => Key::Arch,
            lower => match lower.strip_prefix("node.labels.") {
                // Label keys keep their case.
                Some(_) if lhs.len() > "node.labels.".len() => {
                    Key::Label(lhs["node.labels.".len()..].to_string())
                }
                _ => return Err(Error::UnknownKey(text.to_string(), lhs.to_string())),
            },
        };
        if key == Key::Role && !matches!(value.to_ascii_lowercase().as_str(), "manager" | "worker")
        {
            return Err(Error::BadRole(text.to_string(), value.to_string()));
        }
        Ok(Constraint {
            key,
            equal,
            value: value.to_string(),
        })
    }

    /// Whether `node` satisfies this constraint. A missing label never equals anything.
    pub fn matches(&self, node: &Node) -> bool {
        let actual: Option<String> = match &self.key {
            Key::Id => Some(node.meta.id.clone()),
            Key::Hostname => Some(node.description.hostname.clone()),
            Key::Role => Some(
                match node.role {
                    Role::Manager => "manager",
                    Role::Worker => "worker",
                }
                .to_string(),
            ),
            Key::Os => Some(node.description.os.clone()),
            Key::Arch => Some(node.description.architecture.clone()),
            Key::Label(k) => node.spec.labels.get(k).cloned(),
        };
        let same = match (&self.key, actual) {
            (_, None) => false,
            // Hostnames and roles compare case-insensitively, as in swarmkit; labels and ids exactly.
            (Key::Hostname | Key::Role | Key::Os | Key::Arch, Some(a)) => {
                a.eq_ignore_ascii_case(&self.value)
            }
            (_, Some(a)) => a == self.value,
        };
        same == self.equal
    }
}

/// Parses every constraint, failing on the first invalid one.
pub fn parse_all(texts: &[String]) -> Result<Vec<Constraint>, Error> {
    texts.iter().map(|t| Constraint::parse(t)).collect()
}

/// Whether `node` satisfies all constraints (invalid ones were refused at service create).
pub fn node_matches(constraints: &[Constraint], node: &Node) -> bool {
    constraints.iter().all(|c| c.matches(node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::node;

    #[test]
    fn parses_and_matches() {
        let mut n = node("abc", "node1");
        n.spec.labels.insert("zone".into(), "east".into());
        let ok = |s: &str| Constraint::parse(s).unwrap().matches(&n);
        assert!(ok("node.hostname==node1"));
        assert!(ok("node.hostname == NODE1"));
        assert!(!ok("node.hostname!=node1"));
        assert!(ok("node.id==abc"));
        assert!(ok("node.role==worker"));
        assert!(!ok("node.role==manager"));
        assert!(ok("node.labels.zone==east"));
        assert!(ok("node.labels.zone!=west"));
        assert!(!ok("node.labels.rack==1"), "a missing label equals nothing");
        assert!(ok("node.labels.rack!=1"), "and differs from everything");
    }

    #[test]
    fn refuses_bad_input() {
        for bad in [
            "",
            "node.hostname",
            "node.hostname=x",
            "==x",
            "node.hostname==",
            "a==b==c",
        ] {
            assert!(
                matches!(Constraint::parse(bad), Err(Error::Syntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Constraint::parse("engine.labels.x==1"),
            Err(Error::UnknownKey(..))
        ));
        assert!(matches!(
            Constraint::parse("node.labels.==1"),
            Err(Error::UnknownKey(..))
        ));
        assert!(matches!(
            Constraint::parse("node.role==boss"),
            Err(Error::BadRole(..))
        ));
        let e = Constraint::parse("node.colour==red")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("node.colour") && e.contains("node.labels.<label>"),
            "{e}"
        );
    }
}
