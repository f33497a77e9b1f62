//! SPIFFE IDs: `spiffe://<trust domain>/<path>`, with the rules of the SPIFFE standard.

use std::fmt;

/// SPIFFE trust domain rules: lowercase letters, digits, `.`, `-`, `_`; at most 255 bytes.
pub fn validate_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() {
        return Err("must not be empty".into());
    }
    if td.len() > 255 {
        return Err("is longer than 255 bytes".into());
    }
    if let Some(c) = td
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "{td:?} has {c:?}; a SPIFFE trust domain has only a-z, 0-9, '.', '-', '_'"
        ));
    }
    Ok(())
}

/// A validated SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpiffeIdError(String);

impl SpiffeId {
    /// Parses `spiffe://td/path...`; the path may be empty only when `allow_root` is true.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.len() > 2048 {
            return Err(SpiffeIdError("SPIFFE ID is longer than 2048 bytes".into()));
        }
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError(format!("{s:?} is not a spiffe:// URI")))?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        validate_trust_domain(td).map_err(|p| SpiffeIdError(format!("trust domain {p}")))?;
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                if segment.is_empty() || segment == "." || segment == ".." {
                    return Err(SpiffeIdError(format!(
                        "{s:?} has an empty or dot path segment"
                    )));
                }
                if let Some(c) = segment
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
                {
                    return Err(SpiffeIdError(format!("{s:?} has {c:?} in its path")));
                }
            }
        }
        Ok(SpiffeId {
            trust_domain: td.to_string(),
            path: path.to_string(),
        })
    }

    /// The Kubernetes workload identity `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn workload(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        SpiffeId::parse(&format!(
            "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// `(namespace, service account)` when the path is exactly `/ns/<ns>/sa/<sa>`.
    pub fn namespace_and_account(&self) -> Option<(&str, &str)> {
        let mut parts = self.path.strip_prefix('/')?.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// True for a workload identity (a non-empty path).
    pub fn has_path(&self) -> bool {
        !self.path.is_empty()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_ids_round_trip() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web").expect("valid");
        assert_eq!(id.namespace_and_account(), Some(("default", "web")));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
        assert_eq!(
            SpiffeId::workload("cluster.local", "default", "web").expect("ok"),
            id
        );
    }

    #[test]
    fn bad_ids_are_refused() {
        for bad in [
            "https://cluster.local/ns/a/sa/b",
            "spiffe://Cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/ns/../sa/b",
            "spiffe://cluster.local/ns/a b/sa/b",
            "spiffe://cluster.local/",
            "spiffe:///ns/a/sa/b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
        assert!(!SpiffeId::parse("spiffe://td").expect("root id").has_path());
        assert_eq!(
            SpiffeId::parse("spiffe://td/x")
                .expect("id")
                .namespace_and_account(),
            None
        );
    }
}
