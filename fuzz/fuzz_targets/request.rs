//! Untrusted bytes → domain types: a gRPC request body is decoded, its CSR parsed and checked
//! against an identity, its impersonation metadata parsed as a SPIFFE ID. Nothing may panic.
//!
//! Run: `ops/fuzz.sh SECONDS request` (CI runs every target for a few seconds).
#![no_main]

use hsm_ca::auth::SpiffeId;
use hsm_ca::issuance::pb::IstioCertificateRequest;
use hsm_ca::issuance::policy;
use prost::Message;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // As raw CSR bytes (PEM or DER).
    if let Ok(csr) = hsm_ca::ca::parse_csr(data) {
        if let Ok(id) = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web") {
            let _ = policy::check_csr(&csr, &id);
        }
    }
    // As a protobuf request, the way the service receives it.
    if let Ok(request) = IstioCertificateRequest::decode(data) {
        let _ = policy::ttl(
            request.validity_duration,
            std::time::Duration::from_secs(86400),
            std::time::Duration::from_secs(604800),
        );
        if let Ok(csr) = hsm_ca::ca::parse_csr(request.csr.as_bytes()) {
            for uri in &csr.uri_sans {
                let _ = SpiffeId::parse(uri);
            }
        }
        if let Some(meta) = request.metadata {
            for value in meta.fields.values() {
                if let Some(prost_types_kind) = &value.kind {
                    let _ = format!("{prost_types_kind:?}");
                }
            }
        }
    }
});
