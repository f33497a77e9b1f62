//! External Account Binding keys: made and revoked by operators (admin API, `hsm-ca acme
//! eab`), each with the policy that the accounts bound with it are held to — which names
//! (DNS suffixes, exact names, wildcards, IP addresses), how long a certificate may live, and
//! whether it may be a client certificate too.
//!
//! A MAC key is shown once, in what [`create`] returns; it must never be logged, audited or
//! listed again.

use std::net::IpAddr;

use rand::RngCore;
use serde::Serialize;

use super::error::AcmeError;
use super::jws::b64;
use super::records::{EabKey, EabPolicy, Identifier, MacKey, Records, VERSION};
use crate::state::{AcmeKind, CaState};

/// A key just made: its id and MAC key (base64url, unpadded), shown once.
#[derive(Serialize)]
pub struct Created {
    pub kid: String,
    pub hmac_key: String,
    pub policy: EabPolicy,
}

impl std::fmt::Debug for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Created")
            .field("kid", &self.kid)
            .field("hmac_key", &"<redacted>")
            .finish()
    }
}

/// A key as listed: everything but the MAC key.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub kid: String,
    pub created_at: i64,
    pub revoked: bool,
    pub policy: EabPolicy,
}

/// Whether `name` is a DNS name (letters, digits, hyphens; labels of 1–63; at least two
/// labels).
pub fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.contains('.')
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Checks a policy's names and normalizes them (lowercase, no trailing dot).
pub fn check_policy(mut policy: EabPolicy) -> Result<EabPolicy, String> {
    for list in [&mut policy.dns_suffixes, &mut policy.dns_names] {
        for n in list.iter_mut() {
            *n = normalize(n.trim_start_matches("*."));
            if !is_dns_name(n) {
                return Err(format!("{n:?} is not a DNS name"));
            }
        }
    }
    if policy.max_validity_secs == Some(0) {
        return Err("max_validity_secs must be at least 1".into());
    }
    Ok(policy)
}

/// Makes a key with `policy` and stores it.
pub async fn create(state: &CaState, policy: EabPolicy, now: i64) -> Result<Created, AcmeError> {
    let policy = check_policy(policy).map_err(AcmeError::Malformed)?;
    let mut id = [0u8; 12];
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(key.as_mut());
    let kid = format!("eab-{}", hex::encode(id));
    let record = EabKey {
        version: VERSION,
        kid: kid.clone(),
        mac_key: MacKey::new(b64(key.as_ref())),
        created_at: now,
        revoked: false,
        policy: policy.clone(),
    };
    Records(state)
        .insert(AcmeKind::Eab, &kid, &record, None)
        .await?;
    Ok(Created {
        kid,
        hmac_key: record.mac_key.expose().to_string(),
        policy,
    })
}

/// Revokes a key: accounts bound with it can order nothing more. False when unknown.
pub async fn revoke(state: &CaState, kid: &str) -> Result<bool, AcmeError> {
    let records = Records(state);
    loop {
        let Some((mut key, raw)) = records.get::<EabKey>(AcmeKind::Eab, kid).await? else {
            return Ok(false);
        };
        key.revoked = true;
        if records.update(AcmeKind::Eab, kid, &raw, &key, None).await? {
            return Ok(true);
        }
    }
}

/// Every key, without MAC keys.
pub async fn list(state: &CaState) -> Result<Vec<Listed>, AcmeError> {
    Ok(Records(state)
        .list::<EabKey>(AcmeKind::Eab)
        .await?
        .into_iter()
        .map(|k| Listed {
            kid: k.kid,
            created_at: k.created_at,
            revoked: k.revoked,
            policy: k.policy,
        })
        .collect())
}

/// Whether `policy` allows `identifier`; the reason when not.
pub fn allows(policy: &EabPolicy, identifier: &Identifier) -> Result<(), String> {
    match identifier.kind.as_str() {
        "ip" => {
            if policy.ip && identifier.value.parse::<IpAddr>().is_ok() {
                Ok(())
            } else {
                Err(format!(
                    "IP address {} is not allowed for this account",
                    identifier.value
                ))
            }
        }
        _ => {
            let (wildcard, base) = match identifier.value.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, identifier.value.as_str()),
            };
            if wildcard && !policy.wildcards {
                return Err(format!(
                    "wildcard {} is not allowed for this account",
                    identifier.value
                ));
            }
            let exact = !wildcard && policy.dns_names.iter().any(|n| n == base);
            let under = policy
                .dns_suffixes
                .iter()
                .any(|s| base == s || base.ends_with(&format!(".{s}")));
            if exact || under {
                Ok(())
            } else {
                Err(format!(
                    "{} is outside the names allowed for this account",
                    identifier.value
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(v: &str) -> Identifier {
        Identifier {
            kind: "dns".into(),
            value: v.into(),
        }
    }

    #[test]
    fn policy_allows_suffixes_exact_names_and_wildcards_only_when_on() {
        let p = check_policy(EabPolicy {
            dns_suffixes: vec!["Mesh.Example.com.".into()],
            dns_names: vec!["host.other.org".into()],
            ..EabPolicy::default()
        })
        .expect("policy");
        assert!(allows(&p, &dns("gw.mesh.example.com")).is_ok());
        assert!(allows(&p, &dns("mesh.example.com")).is_ok());
        assert!(allows(&p, &dns("host.other.org")).is_ok());
        assert!(allows(&p, &dns("evilmesh.example.com")).is_err());
        assert!(allows(&p, &dns("a.host.other.org")).is_err());
        assert!(allows(&p, &dns("*.mesh.example.com")).is_err());
        let ip = Identifier {
            kind: "ip".into(),
            value: "10.0.0.1".into(),
        };
        assert!(allows(&p, &ip).is_err());
        let p = EabPolicy {
            wildcards: true,
            ip: true,
            ..p
        };
        assert!(allows(&p, &dns("*.mesh.example.com")).is_ok());
        assert!(allows(&p, &ip).is_ok());
    }

    #[test]
    fn mac_keys_never_show_in_debug() {
        let c = Created {
            kid: "k".into(),
            hmac_key: "c2VjcmV0".into(),
            policy: EabPolicy::default(),
        };
        assert!(!format!("{c:?}").contains("c2VjcmV0"));
        assert!(!format!("{:?}", MacKey::new("c2VjcmV0".into())).contains("c2VjcmV0"));
    }
}
