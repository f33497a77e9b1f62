//! Orders, authorizations and challenges (RFC 8555 §7.4–7.5), finalization and certificate
//! download, and revocation (§7.6). An order's names must pass its account's EAB policy
//! (else `rejectedIdentifier`); each name gets an authorization with `http-01`,
//! `tls-alpn-01` and `dns-01` challenges (`dns-01` only for a wildcard); finalizing takes a
//! CSR naming exactly the order's identifiers, and the certificate is issued by the active
//! intermediate and audited like the Istio service's.
//!
//! It must never issue before every authorization is valid, and never issue a name, key or
//! lifetime the order and its policy do not allow.

use std::net::IpAddr;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::eab;
use super::error::AcmeError;
use super::issue;
use super::jws;
use super::records::{
    Account, Authorization, Certificate, Challenge, EabKey, EabPolicy, Identifier, Order,
    KEEP_AFTER_EXPIRY, VERSION,
};
use super::{answer, linked, located, signed, signed_either, AcmeServer, Call};
use crate::clock::rfc3339;
use crate::state::AcmeKind;

/// How long an order and its authorizations stay pending.
const ORDER_LIFETIME_SECS: i64 = 86400;
/// Most identifiers one order may name.
const MAX_IDENTIFIERS: usize = 100;

fn random_id() -> String {
    let mut b = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    jws::b64(&b)
}

fn time_text(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .map(rfc3339)
        .unwrap_or_default()
}

/// The policy an account is held to: its EAB key's, or, without a binding (only when
/// `eab_required = false`), any DNS name or IP address without wildcards.
async fn policy_of(acme: &AcmeServer, account: &Account) -> Result<EabPolicy, AcmeError> {
    let Some(kid) = &account.eab_kid else {
        return Ok(EabPolicy {
            dns_suffixes: Vec::new(),
            dns_names: Vec::new(),
            wildcards: false,
            ip: true,
            max_validity_secs: None,
            client_auth: false,
        });
    };
    match acme.records().get::<EabKey>(AcmeKind::Eab, kid).await? {
        Some((key, _)) if !key.revoked => Ok(key.policy),
        _ => Err(AcmeError::Unauthorized(
            "the account's external account binding key was revoked".into(),
        )),
    }
}

/// Normalizes and checks one requested identifier.
fn identifier(v: &Value) -> Result<Identifier, AcmeError> {
    let kind = v.get("type").and_then(Value::as_str).unwrap_or_default();
    let value = v.get("value").and_then(Value::as_str).unwrap_or_default();
    match kind {
        "dns" => {
            let value = value.trim_end_matches('.').to_ascii_lowercase();
            let base = value.strip_prefix("*.").unwrap_or(&value);
            if !eab::is_dns_name(base) {
                return Err(AcmeError::RejectedIdentifier(format!(
                    "{value:?} is not a DNS name"
                )));
            }
            Ok(Identifier {
                kind: "dns".into(),
                value,
            })
        }
        "ip" => {
            let ip: IpAddr = value
                .parse()
                .map_err(|_| AcmeError::Malformed(format!("{value:?} is not an IP address")))?;
            Ok(Identifier {
                kind: "ip".into(),
                value: ip.to_string(),
            })
        }
        other => Err(AcmeError::UnsupportedIdentifier(format!(
            "identifier type {other:?} is not supported (dns, ip)"
        ))),
    }
}

/// The order object clients see, with its status read from its authorizations.
async fn order_view(
    acme: &AcmeServer,
    call: &Call,
    order: &Order,
) -> Result<(String, Value), AcmeError> {
    let status = order_status(acme, order).await?;
    let mut v = json!({
        "status": status,
        "expires": time_text(order.expires),
        "identifiers": order.identifiers,
        "authorizations": order.authorizations.iter()
            .map(|a| call.link(&format!("authz/{a}"))).collect::<Vec<_>>(),
        "finalize": call.link(&format!("order/{}/finalize", order.id)),
    });
    if let Some(nb) = &order.not_before {
        v["notBefore"] = json!(nb);
    }
    if let Some(na) = &order.not_after {
        v["notAfter"] = json!(na);
    }
    if let Some(e) = &order.error {
        v["error"] = e.clone();
    }
    if let Some(c) = &order.certificate {
        v["certificate"] = json!(call.link(&format!("cert/{c}")));
    }
    Ok((status, v))
}

/// `pending`, `ready`, `processing`, `valid` or `invalid`.
async fn order_status(acme: &AcmeServer, order: &Order) -> Result<String, AcmeError> {
    if order.status != "pending" {
        return Ok(order.status.clone());
    }
    let now = acme.now();
    if now >= order.expires {
        return Ok("invalid".into());
    }
    let mut all_valid = true;
    for id in &order.authorizations {
        let status = match acme
            .records()
            .get::<Authorization>(AcmeKind::Authorization, id)
            .await?
        {
            Some((a, _)) => a.current_status(now),
            None => "invalid",
        };
        match status {
            "valid" => {}
            "pending" => all_valid = false,
            _ => return Ok("invalid".into()),
        }
    }
    Ok(if all_valid { "ready" } else { "pending" }.into())
}

/// `POST /acme/new-order`.
pub(super) async fn new_order(acme: &AcmeServer, call: &mut Call) -> Result<Response, AcmeError> {
    let req = signed(acme, call).await?;
    let payload = req
        .payload
        .ok_or_else(|| AcmeError::Malformed("new-order needs a payload".into()))?;
    let requested = payload
        .get("identifiers")
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| AcmeError::Malformed("identifiers must be a non-empty list".into()))?;
    if requested.len() > MAX_IDENTIFIERS {
        return Err(AcmeError::RejectedIdentifier(format!(
            "an order names at most {MAX_IDENTIFIERS} identifiers"
        )));
    }
    let mut identifiers: Vec<Identifier> = Vec::new();
    for v in requested {
        let id = identifier(v)?;
        if !identifiers.contains(&id) {
            identifiers.push(id);
        }
    }
    if let Some(replaces) = payload.get("replaces").filter(|r| !r.is_null()) {
        let replaces = replaces
            .as_str()
            .ok_or_else(|| AcmeError::Malformed("replaces must be a certID".into()))?;
        let replaced = super::renewal::certificate(acme, replaces).await?;
        if replaced.account != req.account.id {
            return Err(AcmeError::Unauthorized(
                "the replaced certificate was ordered by another account".into(),
            ));
        }
    }
    let policy = policy_of(acme, &req.account).await?;
    let admins = &acme.control.config().admin.users;
    for id in &identifiers {
        if req.account.eab_kid.is_some() {
            eab::allows(&policy, id).map_err(AcmeError::RejectedIdentifier)?;
        } else if id.value.starts_with("*.") && !policy.wildcards {
            return Err(AcmeError::RejectedIdentifier(
                "wildcards need an account with an external account binding that allows them"
                    .into(),
            ));
        }
        if admins.contains_key(&format!("CN={}", id.value)) {
            return Err(AcmeError::RejectedIdentifier(format!(
                "{} is an admin identity; the CA does not issue it through this front door",
                id.value
            )));
        }
    }
    let text = |key: &str| -> Result<Option<String>, AcmeError> {
        match payload.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => {
                OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| AcmeError::Malformed(format!("{key} is not an RFC 3339 time")))?;
                Ok(Some(s.clone()))
            }
            Some(_) => Err(AcmeError::Malformed(format!("{key} must be a string"))),
        }
    };
    let (not_before, not_after) = (text("notBefore")?, text("notAfter")?);

    let now = acme.now();
    let expires = now + ORDER_LIFETIME_SECS;
    let keep = Some(expires + KEEP_AFTER_EXPIRY);
    let mut authorizations = Vec::new();
    for id in &identifiers {
        let (wildcard, value) = match id.value.strip_prefix("*.") {
            Some(base) => (true, base.to_string()),
            None => (false, id.value.clone()),
        };
        let kinds: &[&str] = if wildcard {
            &["dns-01"]
        } else if id.kind == "ip" {
            &["http-01", "tls-alpn-01"]
        } else {
            &["http-01", "tls-alpn-01", "dns-01"]
        };
        let authz = Authorization {
            version: VERSION,
            id: random_id(),
            account: req.account.id.clone(),
            identifier: Identifier {
                kind: id.kind.clone(),
                value,
            },
            wildcard,
            status: "pending".into(),
            expires,
            challenges: kinds
                .iter()
                .map(|k| Challenge {
                    kind: (*k).to_string(),
                    token: token(),
                    status: "pending".into(),
                    validated: None,
                    error: None,
                })
                .collect(),
        };
        acme.records()
            .put(AcmeKind::Authorization, &authz.id, &authz, keep)
            .await?;
        authorizations.push(authz.id);
    }
    let order = Order {
        version: VERSION,
        id: random_id(),
        account: req.account.id.clone(),
        status: "pending".into(),
        expires,
        identifiers,
        authorizations,
        not_before,
        not_after,
        error: None,
        certificate: None,
    };
    acme.records()
        .put(AcmeKind::Order, &order.id, &order, keep)
        .await?;
    let (_, view) = order_view(acme, call, &order).await?;
    let location = call.link(&format!("order/{}", order.id));
    Ok(located(answer(StatusCode::CREATED, &view), &location))
}

/// An order of the signer's account.
async fn own_order(
    acme: &AcmeServer,
    account: &Account,
    id: &str,
) -> Result<(Order, Value), AcmeError> {
    match acme.records().get::<Order>(AcmeKind::Order, id).await? {
        Some((o, raw)) if o.account == account.id => Ok((o, raw)),
        _ => Err(AcmeError::NotFound("no such order for this account".into())),
    }
}

/// `POST /acme/order/<id>` (POST-as-GET).
pub(super) async fn get_order(
    acme: &AcmeServer,
    call: &mut Call,
    id: &str,
) -> Result<Response, AcmeError> {
    let req = signed(acme, call).await?;
    let (order, _) = own_order(acme, &req.account, id).await?;
    let (_, view) = order_view(acme, call, &order).await?;
    Ok(answer(StatusCode::OK, &view))
}

fn challenge_view(call: &Call, authz: &Authorization, n: usize, c: &Challenge) -> Value {
    let mut v = json!({
        "type": c.kind,
        "url": call.link(&format!("chall/{}/{n}", authz.id)),
        "token": c.token,
        "status": c.status,
    });
    if let Some(t) = &c.validated {
        v["validated"] = json!(t);
    }
    if let Some(e) = &c.error {
        v["error"] = e.clone();
    }
    v
}

fn authz_view(call: &Call, authz: &Authorization, now: i64) -> Value {
    let mut v = json!({
        "identifier": authz.identifier,
        "status": authz.current_status(now),
        "expires": time_text(authz.expires),
        "challenges": authz.challenges.iter().enumerate()
            .map(|(n, c)| challenge_view(call, authz, n, c)).collect::<Vec<_>>(),
    });
    if authz.wildcard {
        v["wildcard"] = json!(true);
    }
    v
}

async fn own_authz(
    acme: &AcmeServer,
    account: &Account,
    id: &str,
) -> Result<(Authorization, Value), AcmeError> {
    match acme
        .records()
        .get::<Authorization>(AcmeKind::Authorization, id)
        .await?
    {
        Some((a, raw)) if a.account == account.id => Ok((a, raw)),
        _ => Err(AcmeError::NotFound(
            "no such authorization for this account".into(),
        )),
    }
}

/// `POST /acme/authz/<id>`: read (POST-as-GET) or deactivate.
pub(super) async fn authorization(
    acme: &AcmeServer,
    call: &mut Call,
    id: &str,
) -> Result<Response, AcmeError> {
    let req = signed(acme, call).await?;
    let (mut authz, raw) = own_authz(acme, &req.account, id).await?;
    let deactivate = req
        .payload
        .as_ref()
        .and_then(|p| p.get("status"))
        .and_then(Value::as_str)
        == Some("deactivated");
    if deactivate {
        authz.status = "deactivated".into();
        let keep = Some(authz.expires + KEEP_AFTER_EXPIRY);
        if !acme
            .records()
            .update(AcmeKind::Authorization, id, &raw, &authz, keep)
            .await?
        {
            return Err(AcmeError::Malformed(
                "the authorization changed meanwhile; retry".into(),
            ));
        }
    }
    Ok(answer(
        StatusCode::OK,
        &authz_view(call, &authz, acme.now()),
    ))
}

/// `POST /acme/chall/<authz>/<n>`: `{}` asks for validation; empty reads it.
pub(super) async fn challenge(
    acme: &AcmeServer,
    call: &mut Call,
    authz_id: &str,
    n: &str,
) -> Result<Response, AcmeError> {
    let req = signed(acme, call).await?;
    let (mut authz, raw) = own_authz(acme, &req.account, authz_id).await?;
    let n: usize = n
        .parse()
        .ok()
        .filter(|n| *n < authz.challenges.len())
        .ok_or_else(|| AcmeError::NotFound("no such challenge".into()))?;
    let up = call.link(&format!("authz/{authz_id}"));
    let start = req.payload.is_some()
        && authz.current_status(acme.now()) == "pending"
        && authz.challenges[n].status == "pending"
        && !authz.challenges.iter().any(|c| c.status == "processing");
    if start {
        authz.challenges[n].status = "processing".into();
        let keep = Some(authz.expires + KEEP_AFTER_EXPIRY);
        if acme
            .records()
            .update(AcmeKind::Authorization, authz_id, &raw, &authz, keep)
            .await?
        {
            let key = jws::AccountKey::from_jwk(&req.account.jwk)?;
            let key_authorization = key.key_authorization(&authz.challenges[n].token);
            acme.validator
                .clone()
                .start(acme.control.clone(), authz.clone(), n, key_authorization);
        } else if let Some((current, _)) = acme
            .records()
            .get::<Authorization>(AcmeKind::Authorization, authz_id)
            .await?
        {
            authz = current;
        }
    }
    let view = challenge_view(call, &authz, n, &authz.challenges[n]);
    Ok(linked(answer(StatusCode::OK, &view), &up, "up"))
}

/// `POST /acme/order/<id>/finalize`.
pub(super) async fn finalize(
    acme: &AcmeServer,
    call: &mut Call,
    id: &str,
) -> Result<Response, AcmeError> {
    let req = signed(acme, call).await?;
    let (order, raw) = own_order(acme, &req.account, id).await?;
    let status = order_status(acme, &order).await?;
    if status != "ready" {
        return Err(AcmeError::OrderNotReady(format!(
            "the order is {status}; it can be finalized once ready"
        )));
    }
    let csr_text = req
        .payload
        .as_ref()
        .and_then(|p| p.get("csr"))
        .and_then(Value::as_str)
        .ok_or_else(|| AcmeError::Malformed("finalize needs a csr".into()))?;
    let csr_der = jws::unb64(csr_text, "csr")?;
    let policy = policy_of(acme, &req.account).await?;
    let csr = issue::check_csr(&csr_der, &order.identifiers)?;
    let keep = Some(order.expires + KEEP_AFTER_EXPIRY);
    let mut claimed = order.clone();
    claimed.status = "processing".into();
    if !acme
        .records()
        .update(AcmeKind::Order, id, &raw, &claimed, keep)
        .await?
    {
        return Err(AcmeError::OrderNotReady(
            "the order is being finalized already".into(),
        ));
    }
    let claimed_raw =
        serde_json::to_value(&claimed).map_err(|e| AcmeError::Internal(e.to_string()))?;
    let mut done = claimed.clone();
    match issue::issue(acme, &req.account, &order, &policy, &csr).await {
        Ok(cert) => {
            let cert_keep = Some(cert.not_after + KEEP_AFTER_EXPIRY);
            acme.records()
                .put(AcmeKind::Certificate, &cert.serial, &cert, cert_keep)
                .await?;
            done.status = "valid".into();
            done.certificate = Some(cert.serial.clone());
        }
        Err(e) => {
            done.status = "invalid".into();
            done.error = Some(e.document());
            acme.records()
                .update(AcmeKind::Order, id, &claimed_raw, &done, keep)
                .await?;
            return Err(e);
        }
    }
    acme.records()
        .update(AcmeKind::Order, id, &claimed_raw, &done, keep)
        .await?;
    let (_, view) = order_view(acme, call, &done).await?;
    let location = call.link(&format!("order/{id}"));
    Ok(located(answer(StatusCode::OK, &view), &location))
}

/// `POST /acme/cert/<id>` (POST-as-GET): the chain, leaf first.
pub(super) async fn certificate(
    acme: &AcmeServer,
    call: &mut Call,
    id: &str,
    alternate: Option<&str>,
) -> Result<Response, AcmeError> {
    let req = signed(acme, call).await?;
    let cert = match acme
        .records()
        .get::<Certificate>(AcmeKind::Certificate, id)
        .await?
    {
        Some((c, _)) if c.account == req.account.id => c,
        _ => {
            return Err(AcmeError::NotFound(
                "no such certificate for this account".into(),
            ))
        }
    };
    let alternates = alternate_chains(acme, &cert).await?;
    let body = match alternate {
        None => cert.chain_pem,
        Some(n) => n
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| alternates.get(i).cloned())
            .ok_or_else(|| AcmeError::NotFound("no such alternate chain".into()))?,
    };
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
        body,
    )
        .into_response();
    for n in 1..=alternates.len() {
        response = linked(response, &call.link(&format!("cert/{id}/{n}")), "alternate");
    }
    Ok(response)
}

/// Chains to offer besides the stored one while two roots are in the bundle: the stored chain
/// followed by a cross-certificate kept in the CA state that certifies the key which signed
/// the issuing intermediate, signed by another root in the bundle — for clients that trust
/// only that other (older) root.
async fn alternate_chains(acme: &AcmeServer, cert: &Certificate) -> Result<Vec<String>, AcmeError> {
    let chain = crate::ca::certificates_from_pem(cert.chain_pem.as_bytes())
        .map_err(|e| AcmeError::Internal(format!("stored chain of {}: {e}", cert.serial)))?;
    let Some(intermediate) = chain.last().filter(|_| chain.len() > 1) else {
        return Ok(Vec::new());
    };
    let bundle: Vec<String> = acme
        .control
        .trust()
        .roots()
        .iter()
        .map(|der| crate::ca::fingerprint_id(der))
        .collect();
    if bundle.len() < 2 {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for cross in acme.control.state().cross_certificates().await? {
        if !(bundle.contains(&cross.issuer_root) && bundle.contains(&cross.subject_root)) {
            continue;
        }
        let Some(der) = crate::ca::certificates_from_pem(cross.certificate_pem.as_bytes())
            .ok()
            .and_then(|mut c| (!c.is_empty()).then(|| c.remove(0)))
        else {
            continue;
        };
        if crate::ca::inspect::check_issued_by(intermediate, &der).is_ok() {
            out.push(format!("{}{}", cert.chain_pem, cross.certificate_pem));
        }
    }
    Ok(out)
}

/// `POST /acme/revoke-cert`: by the account that ordered it, or signed by the certificate's
/// own key.
pub(super) async fn revoke(acme: &AcmeServer, call: &mut Call) -> Result<Response, AcmeError> {
    let (payload, signer) = signed_either(acme, call).await?;
    let payload =
        payload.ok_or_else(|| AcmeError::Malformed("revoke-cert needs a payload".into()))?;
    let der = jws::unb64(
        payload
            .get("certificate")
            .and_then(Value::as_str)
            .ok_or_else(|| AcmeError::Malformed("revoke-cert needs a certificate".into()))?,
        "certificate",
    )?;
    let reason = match payload.get("reason").filter(|r| !r.is_null()) {
        None => 0,
        Some(r) => r
            .as_u64()
            .filter(|c| *c <= 10 && *c != 7)
            .ok_or_else(|| AcmeError::BadRevocationReason(format!("{r} is not a reason code")))?,
    };
    let reason = u8::try_from(reason)
        .map_err(|_| AcmeError::BadRevocationReason("reason out of range".into()))?;
    let serial = issue::serial_of(&der)?;
    let stored = acme
        .records()
        .get::<Certificate>(AcmeKind::Certificate, &serial)
        .await?
        .map(|(c, _)| c)
        .filter(|c| issue::same_certificate(&c.chain_pem, &der))
        .ok_or_else(|| {
            AcmeError::Unauthorized("this CA did not issue that certificate over ACME".into())
        })?;
    let who = match signer {
        Ok(s) if s.account.id == stored.account => format!("acme:{}", s.account.id),
        Ok(_) => {
            return Err(AcmeError::Unauthorized(
                "the certificate was ordered by another account".into(),
            ))
        }
        Err(key) => {
            if issue::key_thumbprint(&der)? != key.thumbprint {
                return Err(AcmeError::Unauthorized(
                    "the request is not signed by the certificate's key".into(),
                ));
            }
            format!("acme:certificate-key:{serial}")
        }
    };
    call.who = Some(who.clone());
    let caller = crate::control::Caller {
        identity: who,
        roles: Vec::new(),
    };
    let request = crate::control::RevokeRequest {
        serial: Some(serial),
        issuer: Some(stored.issuer_key.clone()),
        intermediate: None,
        reason: Some(
            crate::ca::RevocationReason::from_code(reason)
                .name()
                .to_string(),
        ),
    };
    acme.control
        .revoke(&caller, &request)
        .await
        .map_err(|e| match e {
            crate::control::ControlError::AlreadyRevoked { serial, .. } => {
                AcmeError::AlreadyRevoked(format!("certificate {serial} is revoked already"))
            }
            other => AcmeError::Control(other),
        })?;
    Ok(StatusCode::OK.into_response())
}
