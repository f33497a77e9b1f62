//! Recovery from a lost login and from a finalised PKCS#11 library, mid-run, against SoftHSM.
//!
//! Both disturbances affect every session of the process, so this file holds one test that
//! runs them in turn. While signing threads run, another context logs the application out, or
//! finalises (and re-initialises) the library; every answer a caller gets must be a correct
//! signature or a retryable error, and signing must work again afterwards.
//!
//! PKCS#11 leaves C_Finalize undefined while another thread is inside a call, so the library
//! disturbances happen between calls: the callers pause at a gate, the library is finalised,
//! and they resume against sessions and handles that no longer exist.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use hsm_ca::keystore::pkcs11::init_args;
use hsm_ca::keystore::{KeyAlgorithm, KeyInfo, KeyRequest, KeyStore, SignatureScheme};
use support::{verify_signature, TestToken};

struct Tally {
    good: AtomicUsize,
    retryable: AtomicUsize,
}

/// Signs from three threads until `stop`, checking every answer.
fn sign_until(
    store: &KeyStore,
    keys: &[(KeyInfo, SignatureScheme)],
    stop: &AtomicBool,
    gate: &RwLock<()>,
    tally: &Tally,
) {
    std::thread::scope(|s| {
        for t in 0..3 {
            s.spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let (key, scheme) = &keys[(i + t) % keys.len()];
                    let msg = format!("thread {t} message {i}");
                    let _pass = gate.read().expect("gate");
                    match store.sign_blocking(&key.id, *scheme, msg.as_bytes()) {
                        Ok(sig) => {
                            assert!(
                                verify_signature(&key.public_key, *scheme, msg.as_bytes(), &sig),
                                "a wrong signature reached the caller"
                            );
                            tally.good.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            assert!(e.is_retryable(), "non-retryable error during recovery: {e}");
                            tally.retryable.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += 1;
                }
            });
        }
    });
}

/// `between_calls`: hold the callers at the gate while disturbing.
fn disturb_and_check(
    store: &KeyStore,
    keys: &[(KeyInfo, SignatureScheme)],
    between_calls: bool,
    disturb: impl FnOnce() + Send,
) {
    let stop = AtomicBool::new(false);
    let gate = RwLock::new(());
    let tally = Tally {
        good: AtomicUsize::new(0),
        retryable: AtomicUsize::new(0),
    };
    std::thread::scope(|s| {
        s.spawn(|| sign_until(store, keys, &stop, &gate, &tally));
        std::thread::sleep(Duration::from_millis(300));
        let before = tally.good.load(Ordering::Relaxed);
        assert!(before > 0, "no signature before the disturbance");
        if between_calls {
            let _hold = gate.write().expect("gate");
            disturb();
        } else {
            disturb();
        }
        // Keep signing well past the disturbance, then require progress after it.
        let deadline = Instant::now() + Duration::from_secs(20);
        while tally.good.load(Ordering::Relaxed) < before + 300 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        assert!(
            tally.good.load(Ordering::Relaxed) >= before + 300,
            "signing did not recover: {} good, {} retryable",
            tally.good.load(Ordering::Relaxed),
            tally.retryable.load(Ordering::Relaxed)
        );
    });
    // And a plain call afterwards succeeds for every key.
    for (key, scheme) in keys {
        let sig = store
            .sign_blocking(&key.id, *scheme, b"after")
            .expect("sign after recovery");
        assert!(verify_signature(&key.public_key, *scheme, b"after", &sig));
    }
}

fn other_context() -> Pkcs11 {
    let ctx = Pkcs11::new(support::module()).expect("module");
    let _ = ctx.initialize(init_args());
    ctx
}

#[test]
fn signing_survives_a_forced_logout_and_a_library_reinitialisation() {
    let token = TestToken::new();
    let store = token.keystore(2);
    let keys: Vec<_> = [
        (KeyAlgorithm::EcdsaP256, SignatureScheme::EcdsaSha256),
        (KeyAlgorithm::EcdsaP384, SignatureScheme::EcdsaSha384),
        (KeyAlgorithm::Rsa2048, SignatureScheme::RsaPkcs1Sha256),
    ]
    .into_iter()
    .map(|(algorithm, scheme)| {
        let info = store
            .generate_blocking(KeyRequest {
                algorithm,
                label: "recovery".into(),
            })
            .expect("generate");
        (info, scheme)
    })
    .collect();

    // 1. Another session logs the whole application out of the token.
    disturb_and_check(&store, &keys, false, || {
        support::log_out_from_outside(&token.label);
    });

    // 2. Another part of the process finalises the library and leaves it finalised.
    disturb_and_check(&store, &keys, true, || {
        other_context().finalize().expect("finalize");
    });

    // The P-256 key has signed often enough to have its signatures checked with its tables
    // (`keystore::check`): what follows holds that check to catching stale handles too.
    let p256 =
        hsm_ca::keystore::der::subject_public_key_bits(&keys[0].0.public_key).expect("public key");
    let check = hsm_ca::keystore::check::KeyCheck::for_key(std::sync::Arc::from(p256));
    let waited = Instant::now();
    while !check.has_tables() {
        assert!(waited.elapsed() < Duration::from_secs(60), "no tables");
        std::thread::sleep(Duration::from_millis(20));
    }

    // 3. It finalises and re-initialises it: every session and key handle the keystore holds
    //    is stale, and their numbers may now name other sessions and objects.
    disturb_and_check(&store, &keys, true, || {
        other_context().finalize().expect("finalize");
        let ctx = other_context();
        let slot = support::slot_by_label(&ctx, &token.label);
        // Open sessions so that stale handle numbers are reused by someone else, and keep
        // them open past this closure.
        #[allow(clippy::mem_forget, reason = "the sessions must outlive the closure")]
        {
            std::mem::forget(ctx.open_ro_session(slot).expect("session"));
            std::mem::forget(ctx.open_ro_session(slot).expect("session"));
        }
    });
}
