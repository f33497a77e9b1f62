//! Accounts (RFC 8555 §7.3): `new-account` with or without External Account Binding (bound
//! keys carry the policy the account is held to), reading and updating an account
//! (contacts, deactivation), its orders list, and `key-change` (§7.3.5).
//!
//! It must never make an account without a valid binding while `eab_required` is on, and
//! never let one key belong to two accounts.

use axum::http::StatusCode;
use axum::response::Response;
use rand::RngCore;
use serde_json::{json, Value};

use super::error::AcmeError;
use super::records::{Account, AccountKeyIndex, EabKey, Order, VERSION};
use super::{account_by_thumbprint, answer, jws, located, signed, signed_by_key, AcmeServer, Call};
use crate::state::AcmeKind;

/// The account object clients see.
fn account_json(call: &Call, account: &Account) -> Value {
    let mut v = json!({
        "status": account.status,
        "contact": account.contact,
        "orders": call.link(&format!("acct/{}/orders", account.id)),
    });
    if let Some(kid) = &account.eab_kid {
        v["externalAccountBinding"] = json!({ "kid": kid });
    }
    v
}

/// `contact`: mailto: URLs only (clients send an empty list, or none).
fn contacts(payload: &Value) -> Result<Vec<String>, AcmeError> {
    let Some(list) = payload.get("contact").filter(|c| !c.is_null()) else {
        return Ok(Vec::new());
    };
    let Some(list) = list.as_array() else {
        return Err(AcmeError::Malformed("contact must be a list".into()));
    };
    list.iter()
        .filter(|c| c.as_str() != Some(""))
        .map(|c| match c.as_str() {
            Some(s) if s.starts_with("mailto:") && !s.contains(['?', ',']) => Ok(s.to_string()),
            _ => Err(AcmeError::Malformed(
                "contacts must be mailto: URLs with one address each".into(),
            )),
        })
        .collect()
}

/// `POST /acme/new-account`.
pub(super) async fn new_account(acme: &AcmeServer, call: &mut Call) -> Result<Response, AcmeError> {
    let req = signed_by_key(acme, call).await?;
    let payload = req.payload.unwrap_or_else(|| json!({}));
    if let Some((existing, _)) = account_by_thumbprint(acme, &req.key.thumbprint).await? {
        call.who = Some(format!("acme:{}", existing.id));
        let location = call.link(&format!("acct/{}", existing.id));
        return Ok(located(
            answer(StatusCode::OK, &account_json(call, &existing)),
            &location,
        ));
    }
    if payload.get("onlyReturnExisting").and_then(Value::as_bool) == Some(true) {
        return Err(AcmeError::AccountDoesNotExist);
    }
    let contact = contacts(&payload)?;
    let eab_kid = match payload
        .get("externalAccountBinding")
        .filter(|v| !v.is_null())
    {
        Some(binding) => {
            let flattened: jws::Flattened =
                serde_json::from_value(binding.clone()).map_err(|_| {
                    AcmeError::Malformed("externalAccountBinding is not a flattened JWS".into())
                })?;
            let inner = jws::parse_flattened(&flattened)?;
            let kid = inner.header.kid.clone().unwrap_or_default();
            let key = acme
                .records()
                .get::<EabKey>(AcmeKind::Eab, &kid)
                .await?
                .map(|(k, _)| k)
                .filter(|k| !k.revoked);
            let kid = jws::verify_eab(&inner, &req.key.jwk, &call.url, |_| {
                key.as_ref().and_then(|k| k.mac_key.bytes())
            })?;
            Some(kid)
        }
        None if acme.settings().eab_required => return Err(AcmeError::ExternalAccountRequired),
        None => None,
    };
    let _ = &req.parsed;
    let mut id = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let account = Account {
        version: VERSION,
        id: hex::encode(id),
        status: "valid".into(),
        jwk: req.key.jwk.clone(),
        thumbprint: req.key.thumbprint.clone(),
        contact,
        eab_kid,
        created_at: acme.now(),
    };
    let records = acme.records();
    records
        .put(AcmeKind::Account, &account.id, &account, None)
        .await?;
    let index = AccountKeyIndex {
        account: account.id.clone(),
    };
    if !records
        .insert(AcmeKind::AccountKey, &account.thumbprint, &index, None)
        .await?
    {
        // Another request made an account for this key meanwhile: that one stands.
        let _ = acme
            .control
            .state()
            .acme_take(AcmeKind::Account, &account.id)
            .await?;
        let (existing, _) = account_by_thumbprint(acme, &account.thumbprint)
            .await?
            .ok_or_else(|| AcmeError::Internal("account index without account".into()))?;
        let location = call.link(&format!("acct/{}", existing.id));
        return Ok(located(
            answer(StatusCode::OK, &account_json(call, &existing)),
            &location,
        ));
    }
    call.who = Some(format!("acme:{}", account.id));
    tracing::info!(account = %account.id, eab = ?account.eab_kid, "acme account created");
    let location = call.link(&format!("acct/{}", account.id));
    Ok(located(
        answer(StatusCode::CREATED, &account_json(call, &account)),
        &location,
    ))
}

/// `POST /acme/acct/<id>`: read (POST-as-GET), update contacts, or deactivate.
pub(super) async fn update(
    acme: &AcmeServer,
    call: &mut Call,
    id: &str,
) -> Result<Response, AcmeError> {
    let req = signed(acme, call).await?;
    if req.account.id != id {
        return Err(AcmeError::Unauthorized(
            "the account URL is not the signer's account".into(),
        ));
    }
    let Some(payload) = req.payload else {
        return Ok(answer(StatusCode::OK, &account_json(call, &req.account)));
    };
    let mut account = req.account.clone();
    match payload.get("status").and_then(Value::as_str) {
        None | Some("") | Some("valid") => {}
        Some("deactivated") => account.status = "deactivated".into(),
        Some(other) => {
            return Err(AcmeError::Malformed(format!(
                "an account's status can only be set to deactivated, not {other}"
            )))
        }
    }
    if payload.get("contact").is_some() {
        account.contact = contacts(&payload)?;
    }
    if account != req.account
        && !acme
            .records()
            .update(AcmeKind::Account, id, &req.account_raw, &account, None)
            .await?
    {
        return Err(AcmeError::Malformed(
            "the account changed meanwhile; retry".into(),
        ));
    }
    Ok(answer(StatusCode::OK, &account_json(call, &account)))
}

/// `POST /acme/acct/<id>/orders`: the account's orders.
pub(super) async fn orders(
    acme: &AcmeServer,
    call: &mut Call,
    id: &str,
) -> Result<Response, AcmeError> {
    let req = signed(acme, call).await?;
    if req.account.id != id {
        return Err(AcmeError::Unauthorized(
            "the orders list is the signer's account's only".into(),
        ));
    }
    let orders: Vec<String> = acme
        .records()
        .list::<Order>(AcmeKind::Order)
        .await?
        .into_iter()
        .filter(|o| o.account == id)
        .map(|o| call.link(&format!("order/{}", o.id)))
        .collect();
    Ok(answer(StatusCode::OK, &json!({ "orders": orders })))
}

/// `POST /acme/key-change` (RFC 8555 §7.3.5): an inner JWS, signed by the new key, names the
/// account and its old key.
pub(super) async fn key_change(acme: &AcmeServer, call: &mut Call) -> Result<Response, AcmeError> {
    let req = signed(acme, call).await?;
    let payload = req
        .payload
        .clone()
        .ok_or_else(|| AcmeError::Malformed("key-change needs an inner JWS".into()))?;
    let flattened: jws::Flattened = serde_json::from_value(payload)
        .map_err(|_| AcmeError::Malformed("the key-change payload is not a JWS".into()))?;
    let inner = jws::parse_flattened(&flattened)?;
    if inner.header.url.as_deref() != Some(call.url.as_str()) {
        return Err(AcmeError::Malformed(
            "the inner JWS url must be the key-change URL".into(),
        ));
    }
    if inner.header.nonce.is_some() {
        return Err(AcmeError::Malformed(
            "the inner JWS must not carry a nonce".into(),
        ));
    }
    let new_jwk = inner
        .header
        .jwk
        .clone()
        .ok_or_else(|| AcmeError::Malformed("the inner JWS needs a jwk header".into()))?;
    let new_key = jws::AccountKey::from_jwk(&new_jwk)?;
    new_key.verify(&inner)?;
    let body: Value = serde_json::from_slice(&inner.payload)
        .map_err(|_| AcmeError::Malformed("the inner payload is not JSON".into()))?;
    let account_url = call.link(&format!("acct/{}", req.account.id));
    if body.get("account").and_then(Value::as_str) != Some(account_url.as_str()) {
        return Err(AcmeError::Unauthorized(
            "the inner payload names another account".into(),
        ));
    }
    let old = jws::AccountKey::from_jwk(body.get("oldKey").unwrap_or(&Value::Null))?;
    if old.thumbprint != req.account.thumbprint {
        return Err(AcmeError::Unauthorized(
            "oldKey is not the account's key".into(),
        ));
    }
    let records = acme.records();
    let index = AccountKeyIndex {
        account: req.account.id.clone(),
    };
    if !records
        .insert(AcmeKind::AccountKey, &new_key.thumbprint, &index, None)
        .await?
    {
        let mut response = answer(
            StatusCode::CONFLICT,
            &json!({
                "type": "urn:ietf:params:acme:error:malformed",
                "detail": "the new key belongs to an account already",
                "status": 409,
            }),
        );
        let other = account_by_thumbprint(acme, &new_key.thumbprint).await?;
        if let Some((other, _)) = other {
            response = located(response, &call.link(&format!("acct/{}", other.id)));
        }
        return Ok(response);
    }
    let mut account = req.account.clone();
    account.jwk = new_key.jwk.clone();
    account.thumbprint = new_key.thumbprint.clone();
    if !records
        .update(
            AcmeKind::Account,
            &account.id,
            &req.account_raw,
            &account,
            None,
        )
        .await?
    {
        let _ = acme
            .control
            .state()
            .acme_take(AcmeKind::AccountKey, &new_key.thumbprint)
            .await?;
        return Err(AcmeError::Malformed(
            "the account changed meanwhile; retry".into(),
        ));
    }
    let _ = acme
        .control
        .state()
        .acme_take(AcmeKind::AccountKey, &req.account.thumbprint)
        .await?;
    Ok(answer(StatusCode::OK, &account_json(call, &account)))
}
