//! The PKI mount: `sign/<role>` (a leaf within the role's policy, signed by the active
//! intermediate), `root/sign-intermediate` (a CA for one SPIFFE trust domain, signed by the
//! root in the device: pathlen 0, URI SAN `spiffe://<trust domain>`, a critical name
//! constraint to it, the TTL capped), and the unauthenticated reads `ca/pem`, `ca_chain`,
//! `cert/ca_chain`, `crl/pem`. Answers carry Vault's `certificate`, `issuing_ca`,
//! `ca_chain` (issuing CA first, root last), `serial_number` and `expiration`.
//!
//! Refuse, never rewrite: a name, key, extension or TTL the role does not allow is an error
//! the caller sees. An identity configured as an admin identity is never issued.

use std::net::IpAddr;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509CertificationRequest};

use super::error::VaultError;
use super::policy::{flag, is_dns_name, list, parse_ttl};
use super::{data_answer, text, tokens, Call, VaultApi};
use crate::audit::AuditEvent;
use crate::ca::inspect::check_issued_by;
use crate::ca::named::Names;
use crate::ca::profile::{self, IntermediateProfile};
use crate::ca::{certificate_pem, fingerprint_id, parse_csr, ParsedCsr};
use crate::clock::rfc3339;
use crate::issuance::policy::MAX_CSR_PEM;
use crate::state::TokenRecord;

/// Routes the paths under `/v1/<pki>/`.
pub(super) async fn route(
    api: &VaultApi,
    call: &mut Call,
    rest: &[&str],
) -> Result<Response, VaultError> {
    match rest {
        ["sign", role] => sign(api, call, role).await,
        ["root", "sign-intermediate"] => sign_intermediate(api, call).await,
        ["ca", "pem"] => {
            call.read()?;
            let (chain, _) = issuing_chain(api)?;
            Ok(pem_answer(
                chain[0].clone(),
                "application/pem-certificate-chain",
            ))
        }
        ["ca_chain"] => {
            call.read()?;
            let (chain, _) = issuing_chain(api)?;
            // Vault labels this PEM text `application/pkix-cert`; clients may go by it.
            Ok(pem_answer(chain.concat(), "application/pkix-cert"))
        }
        ["cert", "ca_chain"] => {
            call.read()?;
            let (chain, _) = issuing_chain(api)?;
            let text = chain.concat();
            Ok(data_answer(json!({
                "certificate": text,
                "ca_chain": text,
                "revocation_time": 0,
                "revocation_time_rfc3339": "",
            })))
        }
        ["crl", "pem"] => {
            call.read()?;
            let (_, issuing_der) = issuing_chain(api)?;
            let der = api.control.crl(&fingerprint_id(&issuing_der)).await?;
            let text = pem::encode_config(
                &pem::Pem::new("X509 CRL", der),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            );
            Ok(pem_answer(text, "application/x-pem-file"))
        }
        _ => Err(VaultError::denied()),
    }
}

fn pem_answer(text: String, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

/// The active intermediate and the bundle root that signed it, as PEM (issuing CA first),
/// and the intermediate's DER.
fn issuing_chain(api: &VaultApi) -> Result<(Vec<String>, Vec<u8>), VaultError> {
    let issuer = api.control.trust().view().load();
    let der = issuer.ca.cert_der().to_vec();
    let mut chain = vec![certificate_pem(&der)];
    if let Some(root) = issuer
        .roots
        .iter()
        .find(|r| check_issued_by(&der, r).is_ok())
    {
        chain.push(certificate_pem(root));
    }
    Ok((chain, der))
}

/// Vault's serial number form: lowercase hex bytes joined by `:`.
fn colon_serial(hex_serial: &str) -> String {
    let padded = if hex_serial.len() % 2 == 1 {
        format!("0{hex_serial}")
    } else {
        hex_serial.to_string()
    };
    padded
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// The token presented, which must hold `policy`.
async fn token_with(
    api: &VaultApi,
    call: &mut Call,
    allowed: impl Fn(&TokenRecord) -> bool,
) -> Result<TokenRecord, VaultError> {
    let (_, record) = tokens::authenticate(api.control.state(), &call.headers, api.now()).await?;
    call.who = Some(record.caller.clone());
    if allowed(&record) {
        Ok(record)
    } else {
        Err(VaultError::denied())
    }
}

/// The CSR in the request (`csr`), parsed and its proof of possession verified.
fn request_csr(params: &Map<String, Value>) -> Result<ParsedCsr, VaultError> {
    let csr = text(params, "csr")?.ok_or_else(|| VaultError::BadRequest("missing csr".into()))?;
    if csr.len() > MAX_CSR_PEM {
        return Err(VaultError::BadRequest(format!(
            "the CSR is larger than {MAX_CSR_PEM} bytes"
        )));
    }
    Ok(parse_csr(csr.as_bytes())?)
}

/// The CSR's common name and IP SANs (what [`ParsedCsr`] only counts).
fn csr_details(der: &[u8]) -> (Option<String>, Vec<IpAddr>) {
    let Ok((_, csr)) = X509CertificationRequest::from_der(der) else {
        return (None, Vec::new());
    };
    let cn = csr
        .certification_request_info
        .subject
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .map(str::to_string);
    let mut ips = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                if let GeneralName::IPAddress(b) = name {
                    match b.len() {
                        4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                        16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                        _ => {}
                    }
                }
            }
        }
    }
    (cn, ips)
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

fn refuse(message: String) -> VaultError {
    VaultError::BadRequest(message)
}

/// `PUT|POST /v1/<pki>/sign/<role>`.
async fn sign(api: &VaultApi, call: &mut Call, role_name: &str) -> Result<Response, VaultError> {
    call.write_only()?;
    let params = call.params()?;
    let token = token_with(api, call, |t| t.policies.iter().any(|p| p == role_name)).await?;
    let role = api
        .settings()
        .roles
        .iter()
        .find(|r| r.name == role_name)
        .ok_or_else(|| refuse(format!("unknown role: {role_name}")))?;
    let csr = request_csr(&params)?;
    role.check_key(&csr.key).map_err(refuse)?;
    if csr
        .other_extensions
        .iter()
        .any(|e| e.starts_with("BasicConstraints"))
    {
        return Err(refuse(format!(
            "role {role_name} issues end-entity certificates only; the CSR asks for basic \
             constraints (a CA certificate)"
        )));
    }
    if !csr.other_extensions.is_empty() {
        return Err(refuse(format!(
            "extensions other than SAN, key usage and extended key usage are not allowed: {}",
            csr.other_extensions.join(", ")
        )));
    }
    if !csr.email_sans.is_empty() {
        return Err(refuse("email SANs are not allowed by this role".into()));
    }
    let (csr_cn, csr_ips) = csr_details(&csr.der);
    let mut names = Names {
        common_name: text(&params, "common_name")?.map(str::to_string).or(csr_cn),
        ..Names::default()
    };
    let exclude_cn = flag(params.get("exclude_cn_from_sans")).map_err(refuse)?;
    for d in csr
        .dns_sans
        .iter()
        .cloned()
        .chain(list(params.get("alt_names")).map_err(refuse)?)
    {
        push_unique(&mut names.dns, d);
    }
    if let Some(cn) = names.common_name.clone().filter(|cn| is_dns_name(cn)) {
        if !exclude_cn {
            push_unique(&mut names.dns, cn);
        }
    }
    for ip in list(params.get("ip_sans")).map_err(refuse)? {
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| refuse(format!("{ip:?} is not an IP address")))?;
        push_unique(&mut names.ips, ip);
    }
    for ip in csr_ips {
        push_unique(&mut names.ips, ip);
    }
    for u in csr
        .uri_sans
        .iter()
        .cloned()
        .chain(list(params.get("uri_sans")).map_err(refuse)?)
    {
        push_unique(&mut names.uris, u);
    }

    if let Some(cn) = &names.common_name {
        if !role.allows_dns(cn) {
            return Err(refuse(format!("common name {cn} not allowed by this role")));
        }
    }
    if let Some(d) = names.dns.iter().find(|d| !role.allows_dns(d)) {
        return Err(refuse(format!(
            "subject alternate name {d} not allowed by this role"
        )));
    }
    if let (Some(ip), false) = (names.ips.first(), role.allow_ip_sans) {
        return Err(refuse(format!(
            "IP Subject Alternative Names are not allowed in this role, but was provided {ip}"
        )));
    }
    if let Some(u) = names.uris.iter().find(|u| !role.allows_uri(u)) {
        return Err(refuse(format!(
            "URI Subject Alternative Names are not allowed in this role, but was provided {u}"
        )));
    }
    let admins = &api.control.config().admin.users;
    let cn_identity = names.common_name.as_ref().map(|cn| format!("CN={cn}"));
    if let Some(admin) = names
        .uris
        .iter()
        .chain(cn_identity.iter())
        .find(|id| admins.contains_key(*id))
    {
        return Err(refuse(format!(
            "{admin} is an admin identity; the CA does not issue it through this front door"
        )));
    }
    if names.common_name.is_none() && names.dns.is_empty() && names.uris.is_empty() {
        return Err(refuse(
            "the request names no common name, DNS name or URI".into(),
        ));
    }
    let ttl = match parse_ttl(params.get("ttl")).map_err(refuse)? {
        None => role.default_ttl,
        Some(t) if t > role.max_ttl => {
            return Err(refuse(format!(
                "ttl of {}s is more than role {role_name}'s max_ttl of {}s",
                t.as_secs(),
                role.max_ttl.as_secs()
            )))
        }
        Some(t) => t,
    };

    let issuer = api.control.trust().view().load();
    let now = api.control.clock().now();
    let skew = api.control.config().workload.clock_skew;
    let (not_before, not_after) = profile::leaf_validity(now, ttl, skew, issuer.ca.not_after());
    let cert_params = crate::ca::named::leaf(
        &names,
        role.server_flag,
        role.client_flag,
        not_before,
        not_after,
    )?;
    let leaf = issuer.ca.sign_async(&cert_params, &csr.spki, now).await?;
    let identity = names
        .uris
        .iter()
        .chain(names.dns.iter())
        .cloned()
        .chain(names.ips.iter().map(IpAddr::to_string))
        .chain(cn_identity)
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(audit) = api.control.audit() {
        let ca_key = issuer.ca.key().id().to_string();
        let recorded = audit
            .append(AuditEvent::Issued {
                serial: leaf.serial.clone(),
                identity,
                caller: token.caller.clone(),
                method: format!(
                    "vault:{}/sign/{role_name} ({})",
                    api.settings().pki_mount,
                    token.login
                ),
                ca_key: ca_key.clone(),
                not_before: rfc3339(leaf.not_before),
                not_after: rfc3339(leaf.not_after),
                csr_key_sha256: csr.public_key_fingerprint(),
                certificate_sha256: None,
            })
            .await;
        if let Err(e) = recorded {
            audit.record_withheld(&e, &leaf.serial, &ca_key).await;
            return Err(e.into());
        }
    }
    let (chain, _) = issuing_chain(api)?;
    Ok(data_answer(json!({
        "certificate": leaf.pem,
        "issuing_ca": chain[0],
        "ca_chain": chain,
        "serial_number": colon_serial(&leaf.serial),
        "expiration": leaf.not_after.unix_timestamp(),
        "not_before": leaf.not_before.unix_timestamp(),
    })))
}

/// The intermediate's subject: `common_name`, `organization`, `country` from the request
/// (the first of comma-separated values), or else the CSR's own subject.
fn intermediate_subject(
    params: &Map<String, Value>,
    csr: &ParsedCsr,
) -> Result<rcgen::DistinguishedName, VaultError> {
    let mut dn = rcgen::DistinguishedName::new();
    let first = |key: &str| -> Result<Option<String>, VaultError> {
        Ok(list(params.get(key)).map_err(refuse)?.into_iter().next())
    };
    if let Some(c) = first("country")? {
        dn.push(rcgen::DnType::CountryName, c);
    }
    if let Some(o) = first("organization")? {
        dn.push(rcgen::DnType::OrganizationName, o);
    }
    if let Some(cn) = text(params, "common_name")? {
        dn.push(rcgen::DnType::CommonName, cn);
    }
    if dn.iter().next().is_some() {
        return Ok(dn);
    }
    if csr.subject_is_blank {
        return Err(refuse(
            "the CSR has an empty subject and the request names none; an intermediate needs a \
             name"
                .into(),
        ));
    }
    Ok(
        rcgen::CertificateSigningRequestParams::from_der(&csr.der.as_slice().into())
            .map_err(|e| VaultError::Ca(crate::ca::CaError::MalformedCsr(e.to_string())))?
            .params
            .distinguished_name,
    )
}

/// `PUT|POST /v1/<pki>/root/sign-intermediate`.
async fn sign_intermediate(api: &VaultApi, call: &mut Call) -> Result<Response, VaultError> {
    call.write_only()?;
    let params = call.params()?;
    let grants = &api.settings().intermediates;
    let token = token_with(api, call, |t| {
        grants.iter().any(|g| t.policies.contains(&g.name))
    })
    .await?;
    let grant = grants
        .iter()
        .find(|g| token.policies.contains(&g.name))
        .ok_or_else(VaultError::denied)?;
    let csr = request_csr(&params)?;
    let want = format!("spiffe://{}", grant.trust_domain);
    if !csr.dns_sans.is_empty() || csr.ip_sans > 0 || !csr.email_sans.is_empty() {
        return Err(refuse(format!(
            "an intermediate for {want} carries no DNS, IP or email SANs"
        )));
    }
    let requested_uris = list(params.get("uri_sans")).map_err(refuse)?;
    if let Some(u) = csr
        .uri_sans
        .iter()
        .chain(requested_uris.iter())
        .find(|u| **u != want)
    {
        return Err(refuse(format!(
            "URI SAN {u} is not allowed: grant {} covers only {want}",
            grant.name
        )));
    }
    if let Some(e) = csr
        .other_extensions
        .iter()
        .find(|e| !e.starts_with("BasicConstraints"))
    {
        return Err(refuse(format!(
            "extension {e} is not allowed in an intermediate's CSR"
        )));
    }
    if api.control.config().admin.users.contains_key(&want) {
        return Err(refuse(format!(
            "{want} is an admin identity; the CA does not issue it through this front door"
        )));
    }
    let subject = intermediate_subject(&params, &csr)?;
    let ttl = parse_ttl(params.get("ttl"))
        .map_err(refuse)?
        .unwrap_or(grant.default_ttl)
        .min(grant.max_ttl);
    let (root, _) = api.control.root_signer(None).await?;
    let now = api.control.clock().now();
    let profile = IntermediateProfile {
        trust_domain: grant.trust_domain.clone(),
        validity: ttl,
        name_constraint: true,
        clock_skew: api.control.config().workload.clock_skew,
    };
    let cert_params = profile::intermediate(subject, &profile, now, root.not_after())?;
    let cert = root.sign_async(&cert_params, &csr.spki, now).await?;
    check_issued_by(&cert.der, root.cert_der())?;
    let caller = crate::control::Caller {
        identity: token.caller.clone(),
        roles: Vec::new(),
    };
    api.control
        .record_ca_issued(
            &caller,
            &cert.der,
            &format!(
                "vault:{}/root/sign-intermediate ({})",
                api.settings().pki_mount,
                token.login
            ),
            root.key().id(),
        )
        .await?;
    let root_pem = certificate_pem(root.cert_der());
    Ok(data_answer(json!({
        "certificate": cert.pem,
        "issuing_ca": root_pem,
        "ca_chain": [root_pem],
        "serial_number": colon_serial(&cert.serial),
        "expiration": cert.not_after.unix_timestamp(),
        "not_before": cert.not_before.unix_timestamp(),
    })))
}
