//! A minimal DNS stub client for validation: one question (A, AAAA or TXT) over UDP to the
//! configured resolver, with recursion desired, a random id that the answer must echo, and a
//! timeout. Only what dns-01 and address lookups need; answers are read, never trusted
//! beyond the values compared.
//!
//! It must never follow a referral or cache an answer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use rand::Rng;
use tokio::net::UdpSocket;

pub const A: u16 = 1;
pub const TXT: u16 = 16;
pub const AAAA: u16 = 28;

/// Why a lookup gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("{0:?} is not a DNS name")]
    BadName(String),
    #[error("the resolver did not answer: {0}")]
    Unreachable(String),
    #[error("the resolver's answer is malformed")]
    Malformed,
    #[error("the resolver answered with error code {0}")]
    Rcode(u8),
}

fn question(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, DnsError> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..=63).contains(l))
            .ok_or_else(|| DnsError::BadName(name.to_string()))?;
        q.push(len);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    Ok(q)
}

/// The offset just past the (possibly compressed) name at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> Result<usize, DnsError> {
    loop {
        let len = *msg.get(at).ok_or(DnsError::Malformed)?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xc0 == 0xc0 => return Ok(at + 2),
            l => at += 1 + usize::from(l),
        }
    }
}

fn u16_at(msg: &[u8], at: usize) -> Result<u16, DnsError> {
    let b = msg.get(at..at + 2).ok_or(DnsError::Malformed)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

/// The rdata of every answer of type `qtype` in `msg`.
fn answers(msg: &[u8], id: u16, qtype: u16) -> Result<Vec<Vec<u8>>, DnsError> {
    if msg.len() < 12 || u16_at(msg, 0)? != id || msg[2] & 0x80 == 0 {
        return Err(DnsError::Malformed);
    }
    match msg[3] & 0x0f {
        0 => {}
        3 => return Ok(Vec::new()),
        code => return Err(DnsError::Rcode(code)),
    }
    let (qd, an) = (u16_at(msg, 4)?, u16_at(msg, 6)?);
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(msg, at)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        at = skip_name(msg, at)?;
        let rtype = u16_at(msg, at)?;
        let len = usize::from(u16_at(msg, at + 8)?);
        let data = msg.get(at + 10..at + 10 + len).ok_or(DnsError::Malformed)?;
        if rtype == qtype {
            out.push(data.to_vec());
        }
        at += 10 + len;
    }
    Ok(out)
}

/// Asks `resolver` for the records of type `qtype` at `name`; the rdata of each.
pub async fn query(
    resolver: SocketAddr,
    name: &str,
    qtype: u16,
    timeout: Duration,
) -> Result<Vec<Vec<u8>>, DnsError> {
    let id: u16 = rand::thread_rng().gen();
    let q = question(id, name, qtype)?;
    let local: SocketAddr = if resolver.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let unreachable = |e: std::io::Error| DnsError::Unreachable(e.to_string());
    let socket = UdpSocket::bind(local).await.map_err(unreachable)?;
    socket.connect(resolver).await.map_err(unreachable)?;
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        socket.send(&q).await.map_err(unreachable)?;
        let deadline = tokio::time::Instant::now() + timeout / 2;
        loop {
            match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(unreachable(e)),
                Ok(Ok(n)) => match answers(&buf[..n], id, qtype) {
                    // A stray datagram (another id): keep waiting for ours.
                    Err(DnsError::Malformed) => continue,
                    other => return other,
                },
            }
        }
    }
    Err(DnsError::Unreachable("timed out".into()))
}

/// The TXT records at `name`, each its strings joined.
pub async fn txt(
    resolver: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<String>, DnsError> {
    let records = query(resolver, name, TXT, timeout).await?;
    let mut out = Vec::new();
    for data in records {
        let mut text = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let len = usize::from(data[at]);
            text.extend_from_slice(data.get(at + 1..at + 1 + len).ok_or(DnsError::Malformed)?);
            at += 1 + len;
        }
        out.push(String::from_utf8_lossy(&text).into_owned());
    }
    Ok(out)
}

/// The addresses of `name`: A records, else AAAA.
pub async fn addresses(
    resolver: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<IpAddr>, DnsError> {
    let v4: Vec<IpAddr> = query(resolver, name, A, timeout)
        .await?
        .into_iter()
        .filter_map(|d| <[u8; 4]>::try_from(d.as_slice()).ok())
        .map(IpAddr::from)
        .collect();
    if !v4.is_empty() {
        return Ok(v4);
    }
    Ok(query(resolver, name, AAAA, timeout)
        .await?
        .into_iter()
        .filter_map(|d| <[u8; 16]>::try_from(d.as_slice()).ok())
        .map(IpAddr::from)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_through_compressed_names() {
        let mut msg = question(7, "_acme-challenge.a.test", TXT).expect("q");
        msg[2] |= 0x80;
        msg[7] = 1; // one answer
        msg.extend_from_slice(&[0xc0, 12]);
        msg.extend_from_slice(&TXT.to_be_bytes());
        msg.extend_from_slice(&[0, 1, 0, 0, 0, 60, 0, 4, 3, b'a', b'b', b'c']);
        let got = answers(&msg, 7, TXT).expect("answers");
        assert_eq!(got, vec![vec![3, b'a', b'b', b'c']]);
        assert!(answers(&msg, 8, TXT).is_err());
    }
}
