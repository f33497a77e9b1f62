//! A PKI role's rules applied to one request: DNS names against the allowed domains (bare,
//! subdomains, globs), URI SANs against patterns, IP SANs on or off, key types, and TTLs in
//! both forms clients send (seconds, or a Go duration such as `2160h0m0s`). Refuse, never
//! rewrite: every function answers what is wrong, in words a caller can act on.

use std::time::Duration;

use crate::ca::CsrKey;
use crate::config::vault_api::{KeyType, PkiRole};

/// Whether `pattern` (with `*` matching any run of characters other than `stop`) matches
/// `value` entirely.
fn glob(pattern: &str, value: &str, stop: char) -> bool {
    fn go(p: &[char], v: &[char], stop: char) -> bool {
        match p.split_first() {
            None => v.is_empty(),
            Some(('*', rest)) => (0..=v.len())
                .take_while(|&i| i == 0 || v[i - 1] != stop)
                .any(|i| go(rest, &v[i..], stop)),
            Some((c, rest)) => v.first() == Some(c) && go(rest, &v[1..], stop),
        }
    }
    let (p, v): (Vec<char>, Vec<char>) = (pattern.chars().collect(), value.chars().collect());
    go(&p, &v, stop)
}

/// Whether `name` is a syntactically valid DNS name (a leading `*.` label allowed).
pub fn is_dns_name(name: &str) -> bool {
    let body = name.strip_prefix("*.").unwrap_or(name);
    !body.is_empty()
        && body.len() <= 253
        && body.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

impl PkiRole {
    /// Whether the DNS name `name` is allowed by this role.
    pub fn allows_dns(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        if !is_dns_name(&name) {
            return false;
        }
        self.allowed_domains.iter().any(|domain| {
            (self.allow_bare_domains && name == *domain)
                || (self.allow_subdomains
                    && name
                        .strip_suffix(domain.as_str())
                        .is_some_and(|head| head.len() > 1 && head.ends_with('.')))
                || (self.allow_glob_domains && domain.contains('*') && glob(domain, &name, '.'))
        })
    }

    /// Whether the URI SAN `uri` matches one of the role's patterns (`*` stops at `/`).
    pub fn allows_uri(&self, uri: &str) -> bool {
        self.allowed_uri_sans.iter().any(|p| glob(p, uri, '/'))
    }

    /// Checks the CSR's key type and size against the role.
    pub fn check_key(&self, key: &CsrKey) -> Result<(), String> {
        let ok = match (self.key_type, key) {
            (KeyType::Any | KeyType::Rsa, CsrKey::Rsa { bits }) => *bits >= self.min_rsa_bits,
            (KeyType::Any | KeyType::Ec, CsrKey::EcP256 | CsrKey::EcP384) => true,
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "role {} does not accept {key} keys (key_type {:?}, RSA at least {} bits)",
                self.name, self.key_type, self.min_rsa_bits
            ))
        }
    }
}

/// A TTL as Vault accepts it: a JSON number of seconds, or a string of seconds (`"3600"`)
/// or a Go-style duration (`"2160h0m0s"`, `"1h30m"`, `"90s"`, `"7d"`). `Ok(None)` when
/// absent or empty.
pub fn parse_ttl(value: Option<&serde_json::Value>) -> Result<Option<Duration>, String> {
    let text = match value {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::Number(n)) => {
            return n
                .as_u64()
                .map(|s| Some(Duration::from_secs(s)))
                .ok_or_else(|| format!("ttl {n} is not a whole number of seconds"))
        }
        Some(serde_json::Value::String(s)) => s.trim(),
        Some(other) => return Err(format!("ttl {other} is neither a number nor a string")),
    };
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Some(Duration::from_secs(secs)));
    }
    let bad = || format!("ttl {text:?} is not seconds or a duration such as 2160h0m0s");
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
        };
        let part = Duration::try_from_secs_f64(value * scale).map_err(|_| bad())?;
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = next;
    }
    Ok(Some(total))
}

/// A list parameter as Vault takes it: a comma-separated string or a JSON array of strings.
pub fn list(value: Option<&serde_json::Value>) -> Result<Vec<String>, String> {
    let items: Vec<String> = match value {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => s.split(',').map(str::to_string).collect(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{v} is not a string"))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("{other} is neither a string nor a list")),
    };
    Ok(items
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

/// A boolean parameter: `true`/`false` or the strings Go's `strconv.ParseBool` takes.
pub fn flag(value: Option<&serde_json::Value>) -> Result<bool, String> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(false),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(serde_json::Value::String(s)) => match s.as_str() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
            "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
            other => Err(format!("{other:?} is not a boolean")),
        },
        Some(other) => Err(format!("{other} is not a boolean")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role() -> PkiRole {
        PkiRole {
            name: "web".into(),
            allowed_domains: vec!["example.com".into(), "*.mesh.example.org".into()],
            allow_subdomains: true,
            allow_bare_domains: false,
            allow_glob_domains: true,
            allowed_uri_sans: vec!["spiffe://cluster.local/ns/*/sa/*".into()],
            allow_ip_sans: false,
            key_type: KeyType::Any,
            min_rsa_bits: 2048,
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(7200),
            server_flag: true,
            client_flag: true,
        }
    }

    #[test]
    fn dns_names_follow_bare_subdomain_and_glob_rules() {
        let r = role();
        assert!(r.allows_dns("a.example.com"));
        assert!(r.allows_dns("A.B.Example.com"));
        assert!(!r.allows_dns("example.com"), "bare domain is off");
        assert!(!r.allows_dns("badexample.com"));
        assert!(!r.allows_dns("a.example.com.evil.net"));
        assert!(r.allows_dns("gw.mesh.example.org"));
        assert!(!r.allows_dns("a.b.mesh.example.org"), "* is one label");
        assert!(!r.allows_dns("a..example.com"));
        let bare = PkiRole {
            allow_bare_domains: true,
            allow_subdomains: false,
            ..role()
        };
        assert!(bare.allows_dns("example.com"));
        assert!(!bare.allows_dns("a.example.com"));
    }

    #[test]
    fn uri_patterns_match_one_path_segment_per_star() {
        let r = role();
        assert!(r.allows_uri("spiffe://cluster.local/ns/default/sa/web"));
        assert!(!r.allows_uri("spiffe://cluster.local/ns/a/b/sa/web"));
        assert!(!r.allows_uri("spiffe://other.td/ns/default/sa/web"));
    }

    #[test]
    fn key_types_and_sizes_are_checked() {
        let ec = PkiRole {
            key_type: KeyType::Ec,
            ..role()
        };
        assert!(ec.check_key(&CsrKey::EcP256).is_ok());
        assert!(ec.check_key(&CsrKey::Rsa { bits: 4096 }).is_err());
        let rsa = PkiRole {
            key_type: KeyType::Rsa,
            min_rsa_bits: 3072,
            ..role()
        };
        assert!(rsa.check_key(&CsrKey::Rsa { bits: 2048 }).is_err());
        assert!(rsa.check_key(&CsrKey::Rsa { bits: 4096 }).is_ok());
    }

    #[test]
    fn ttls_in_both_forms() {
        let secs = |v| parse_ttl(Some(&v)).expect("ttl").map(|d| d.as_secs());
        assert_eq!(secs(json!(3600)), Some(3600));
        assert_eq!(secs(json!("3600")), Some(3600));
        assert_eq!(secs(json!("2160h0m0s")), Some(2160 * 3600));
        assert_eq!(secs(json!("1h30m")), Some(5400));
        assert_eq!(secs(json!("7d")), Some(7 * 86400));
        assert_eq!(secs(json!("1.5h")), Some(5400));
        assert_eq!(secs(json!("")), None);
        assert_eq!(parse_ttl(None).expect("absent"), None);
        for bad in [
            json!("10 years"),
            json!("h"),
            json!(-5),
            json!(true),
            json!("5x"),
        ] {
            assert!(parse_ttl(Some(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_and_flags_in_vault_forms() {
        assert_eq!(
            list(Some(&json!("a.example.com, b.example.com,"))).expect("list"),
            vec!["a.example.com", "b.example.com"]
        );
        assert_eq!(list(Some(&json!(["x"]))).expect("list"), vec!["x"]);
        assert!(list(Some(&json!(5))).is_err());
        assert!(flag(Some(&json!("true"))).expect("flag"));
        assert!(!flag(None).expect("flag"));
        assert!(flag(Some(&json!("maybe"))).is_err());
    }
}
