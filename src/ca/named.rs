//! The profile of leaves with DNS, IP and URI names (gateways, webhooks, hosts, istio-csr
//! workloads) that a front door's role allows: an optional common name, the names as SANs,
//! digitalSignature + keyEncipherment, serverAuth and/or clientAuth, CA:false, a random
//! 128-bit serial. Which names are allowed is the front door's policy, not decided here.

use std::net::IpAddr;

use rcgen::{CertificateParams, DnType, SanType};
use time::OffsetDateTime;

use super::{profile, CaError};

/// What a named leaf carries.
#[derive(Clone, Debug, Default)]
pub struct Names {
    pub common_name: Option<String>,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub uris: Vec<String>,
}

/// A named leaf valid from `not_before` to `not_after`, for server and/or client use.
pub fn leaf(
    names: &Names,
    server: bool,
    client: bool,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, CaError> {
    let mut p = profile::end_entity(not_before, not_after, server, client);
    if let Some(cn) = &names.common_name {
        p.distinguished_name.push(DnType::CommonName, cn.as_str());
    }
    for name in &names.dns {
        p.subject_alt_names.push(SanType::DnsName(
            name.as_str()
                .try_into()
                .map_err(|_| CaError::Policy(format!("{name:?} is not a DNS name")))?,
        ));
    }
    p.subject_alt_names
        .extend(names.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    for uri in &names.uris {
        p.subject_alt_names.push(SanType::URI(
            uri.as_str()
                .try_into()
                .map_err(|_| CaError::Policy(format!("{uri:?} is not an IA5 string")))?,
        ));
    }
    Ok(p)
}
