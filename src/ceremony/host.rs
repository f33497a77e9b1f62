//! The ceremony host itself: its name for the transcript, the network interfaces through
//! which this process could reach a network (a ceremony refuses to run with one up), and the
//! folder where it keeps its own log and state. Reads `/proc` only; never opens a socket.

use std::path::PathBuf;

use crate::config::Config;

/// Where the ceremony host keeps its log and the roots and revocations it made: apart from an
/// appliance's state and audit log, should both ever share a `data_dir`.
pub fn host_dir(config: &Config) -> PathBuf {
    config.data_dir.join("ceremony")
}

/// The host's name, for the transcript.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Interfaces other than loopback that this process could reach a network through: those
/// with an IPv4 or IPv6 route in the process's network namespace (`/proc/self/net`, which,
/// unlike `/sys/class/net`, follows the namespace).
pub fn interfaces_up() -> Vec<String> {
    let mut up = Vec::new();
    let mut add = |name: &str| {
        if name != "lo" && !name.is_empty() && !up.iter().any(|n: &String| n == name) {
            up.push(name.to_string());
        }
    };
    if let Ok(text) = std::fs::read_to_string("/proc/self/net/route") {
        for line in text.lines().skip(1) {
            add(line.split_whitespace().next().unwrap_or(""));
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/self/net/ipv6_route") {
        for line in text.lines() {
            add(line.split_whitespace().last().unwrap_or(""));
        }
    }
    up.sort();
    up
}
