//! Losing the device and getting it back, without restarting: the process runs out of file
//! descriptors (SoftHSM then loses its view of the token's objects, and a key it held "cannot
//! be found" even after a new login), and the token's files disappear and come back. While the
//! device is gone every answer is a retryable error and the keystore reports the trouble; once
//! it is back, signing works again and the keystore reports healthy.
//!
//! Both disturbances hit every token of the process, so they run in turn in one test, in a
//! test binary of their own.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use hsm_ca::keystore::{KeyAlgorithm, KeyInfo, KeyRequest, KeyStore, SignatureScheme};
use support::{verify_signature, TestToken};

/// While the device is gone: a few calls, each a retryable error, and the trouble reported.
fn gone(store: &KeyStore, key: &KeyInfo, what: &str) {
    for _ in 0..3 {
        match store.sign_blocking(&key.id, SignatureScheme::EcdsaSha256, b"while gone") {
            Ok(_) => panic!("{what}: signed without the device"),
            Err(e) => assert!(e.is_retryable(), "{what}: not a retryable error: {e}"),
        }
    }
    assert!(store.health().is_err(), "{what}: the keystore says healthy");
}

/// Once the device is back: signing works again within a few seconds, without a restart.
fn back(store: &KeyStore, key: &KeyInfo, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    while Instant::now() < deadline {
        let message = b"after the device came back";
        match store.sign_blocking(&key.id, SignatureScheme::EcdsaSha256, message) {
            Ok(signature) => {
                assert!(
                    verify_signature(
                        &key.public_key,
                        SignatureScheme::EcdsaSha256,
                        message,
                        &signature
                    ),
                    "{what}: a wrong signature after recovery"
                );
                assert_eq!(store.health(), Ok(()), "{what}: still reported unhealthy");
                return;
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: the device came back but signing did not recover: {last}");
}

/// The process's soft and hard limits on open files.
fn nofile_limits() -> (String, String) {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].to_string(), fields[4].to_string())
}

fn set_soft_nofile(soft: &str, hard: &str) {
    let status = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={soft}:{hard}"),
        ])
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success(), "prlimit failed");
}

#[test]
fn signing_recovers_after_the_device_was_lost_without_a_restart() {
    let token = TestToken::new();
    let store = token.keystore(2);
    let key = store
        .generate_blocking(KeyRequest {
            algorithm: KeyAlgorithm::EcdsaP256,
            label: "device loss".into(),
        })
        .expect("generate");
    back(&store, &key, "at start");

    // 1. Out of file descriptors: every descriptor the process may open is held.
    let (soft, hard) = nofile_limits();
    set_soft_nofile("256", &hard);
    let mut held = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        held.push(f);
    }
    gone(&store, &key, "descriptors exhausted");
    drop(held);
    set_soft_nofile(&soft, &hard);
    back(&store, &key, "descriptors back");

    // 2. The token's files are taken away and put back.
    let conf =
        std::fs::read_to_string(std::env::var("SOFTHSM2_CONF").expect("conf")).expect("conf");
    let tokens = conf
        .lines()
        .find_map(|l| l.strip_prefix("directories.tokendir = "))
        .map(PathBuf::from)
        .expect("token folder");
    let away = tokens.with_extension("away");
    std::fs::rename(&tokens, &away).expect("take the token files away");
    gone(&store, &key, "token files removed");
    std::fs::rename(&away, &tokens).expect("put the token files back");
    back(&store, &key, "token files restored");
}
