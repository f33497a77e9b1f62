//! Untrusted input: the appliance's TOML config file (`--config`), as written by an operator
//! or a deployment tool: `Config::parse` reads the TOML and validates it section by section
//! (keystore, root, intermediate, workload, server, clusters, authorization, admin, rotation,
//! audit). Any text must give a `Config` or a `ConfigError`; nothing is read from disk.
#![no_main]

use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = hsm_ca::config::Config::parse(Path::new("/etc/hsm-ca/config.toml"), text);
    }
});
