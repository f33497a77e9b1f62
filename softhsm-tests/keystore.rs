//! The keystore against real SoftHSM tokens: keys are born in the device and cannot leave it,
//! every algorithm signs correctly, concurrency is safe, overload and deadlines are distinct
//! errors, and PIN / token mistakes are clear.

mod support;

use std::sync::Arc;
use std::time::Duration;

use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use hsm_ca::keystore::pkcs11::{Pkcs11Device, TokenSelector};
use hsm_ca::keystore::{
    KeyAlgorithm, KeyId, KeyRequest, KeyStore, KeystoreError, PoolOptions, SignatureScheme,
};
use support::{verify_signature, TestToken};

fn generate(store: &KeyStore, algorithm: KeyAlgorithm) -> hsm_ca::keystore::KeyInfo {
    store
        .generate_blocking(KeyRequest {
            algorithm,
            label: format!("test {algorithm}"),
        })
        .expect("generate")
}

#[test]
fn generated_keys_are_device_bound_and_their_secrets_cannot_be_read() {
    let token = TestToken::new();
    let store = token.keystore(1);
    for algorithm in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Rsa2048,
    ] {
        let info = generate(&store, algorithm);
        assert_eq!(info.algorithm, Some(algorithm));
        assert!(info.sensitive && !info.extractable, "{info:?}");
        assert!(
            info.always_sensitive && info.never_extractable && info.local,
            "{info:?}"
        );
        assert!(info.is_device_bound());
        assert_eq!(info.id.0.len(), 16);

        // Ask the token directly, as an attacker with the PIN would: the private value is refused.
        let ctx = cryptoki::context::Pkcs11::new(support::module()).expect("module");
        let _ = ctx.initialize(hsm_ca::keystore::pkcs11::init_args());
        let slot = support::slot_by_label(&ctx, &token.label);
        let session = ctx.open_ro_session(slot).expect("session");
        let _ = session.login(
            UserType::User,
            Some(&AuthPin::from(token.pin.expose().to_string())),
        );
        let handle = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(info.id.0.clone()),
            ])
            .expect("find")[0];
        let secret_attr = if algorithm == KeyAlgorithm::Rsa2048 {
            AttributeType::PrivateExponent
        } else {
            AttributeType::Value
        };
        let got = session.get_attributes(handle, &[secret_attr]);
        let leaked = matches!(&got, Ok(attrs) if !attrs.is_empty());
        assert!(!leaked, "private key material was readable: {got:?}");
    }
    // The listing shows all three, each device-bound.
    let keys = store.list_blocking().expect("list");
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| k.is_device_bound()));
}

#[test]
fn every_algorithm_signs_and_the_signature_verifies_in_software() {
    let token = TestToken::new();
    let store = token.keystore(2);
    let cases = [
        (KeyAlgorithm::EcdsaP256, SignatureScheme::EcdsaSha256),
        (KeyAlgorithm::EcdsaP384, SignatureScheme::EcdsaSha384),
        (KeyAlgorithm::Rsa2048, SignatureScheme::RsaPkcs1Sha256),
        (KeyAlgorithm::Rsa2048, SignatureScheme::RsaPssSha256),
        (KeyAlgorithm::Rsa3072, SignatureScheme::RsaPkcs1Sha256),
    ];
    for (algorithm, scheme) in cases {
        let info = generate(&store, algorithm);
        for message in [&b""[..], b"tbs certificate bytes", &[0xa5u8; 5000][..]] {
            let sig = store
                .sign_blocking(&info.id, scheme, message)
                .expect("sign");
            assert!(
                verify_signature(&info.public_key, scheme, message, &sig),
                "{algorithm} {scheme:?} signature did not verify"
            );
            assert!(!verify_signature(
                &info.public_key,
                scheme,
                b"other message",
                &sig
            ));
        }
    }
}

#[test]
fn a_key_signs_only_with_its_own_scheme_and_unknown_keys_are_reported() {
    let token = TestToken::new();
    let store = token.keystore(1);
    let ec = generate(&store, KeyAlgorithm::EcdsaP256);
    let err = store
        .sign_blocking(&ec.id, SignatureScheme::RsaPkcs1Sha256, b"m")
        .expect_err("wrong scheme");
    assert!(matches!(err, KeystoreError::WrongScheme { .. }), "{err}");
    let missing = KeyId(vec![9; 16]);
    let err = store
        .sign_blocking(&missing, SignatureScheme::EcdsaSha256, b"m")
        .expect_err("missing");
    assert!(matches!(err, KeystoreError::KeyNotFound(_)), "{err}");
    assert!(!err.is_retryable());
}

#[test]
fn concurrent_signing_from_many_threads_is_always_correct() {
    let token = TestToken::new();
    let store = token.keystore(2);
    let ec = generate(&store, KeyAlgorithm::EcdsaP256);
    let rsa = generate(&store, KeyAlgorithm::Rsa2048);
    for round in 0..3 {
        std::thread::scope(|s| {
            for t in 0..4 {
                let store = store.clone();
                let (ec, rsa) = (&ec, &rsa);
                s.spawn(move || {
                    for i in 0..150 {
                        let msg = format!("round {round} thread {t} message {i}");
                        let (key, scheme) = if i % 5 == 0 {
                            (rsa, SignatureScheme::RsaPkcs1Sha256)
                        } else {
                            (ec, SignatureScheme::EcdsaSha256)
                        };
                        let sig = store
                            .sign_blocking(&key.id, scheme, msg.as_bytes())
                            .expect("sign");
                        assert!(
                            verify_signature(&key.public_key, scheme, msg.as_bytes(), &sig),
                            "bad signature"
                        );
                    }
                });
            }
        });
    }
}

#[test]
fn a_full_queue_is_overloaded_and_a_stale_call_is_past_its_deadline() {
    let token = TestToken::new();
    let keys = token.keystore(1);
    let rsa = generate(&keys, KeyAlgorithm::Rsa4096);
    drop(keys);

    // One worker, room for two waiting calls: a burst of eight must see Overloaded.
    let store = token.keystore_with(PoolOptions {
        workers: 1,
        queue_depth: 2,
        call_timeout: Duration::from_secs(30),
    });
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                let id = rsa.id.clone();
                s.spawn(move || store.sign_blocking(&id, SignatureScheme::RsaPkcs1Sha256, b"m"))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let overloaded = results
        .iter()
        .filter(|r| matches!(r, Err(KeystoreError::Overloaded)))
        .count();
    assert!(
        overloaded > 0,
        "no call was refused as overloaded: {results:?}"
    );
    for r in &results {
        match r {
            Ok(sig) => assert!(verify_signature(
                &rsa.public_key,
                SignatureScheme::RsaPkcs1Sha256,
                b"m",
                sig
            )),
            Err(e) => assert!(e.is_retryable(), "{e}"),
        }
    }
    drop(store);

    // A deadline shorter than one RSA-4096 signature: calls queued behind it expire unanswered.
    let store = token.keystore_with(PoolOptions {
        workers: 1,
        queue_depth: 64,
        call_timeout: Duration::from_millis(1),
    });
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let store = store.clone();
                let id = rsa.id.clone();
                s.spawn(move || store.sign_blocking(&id, SignatureScheme::RsaPkcs1Sha256, b"m"))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(KeystoreError::DeadlineExceeded))),
        "no call expired: {results:?}"
    );
}

#[test]
fn async_callers_get_signatures_without_blocking_the_runtime() {
    let token = TestToken::new();
    let store = token.keystore(2);
    let ec = generate(&store, KeyAlgorithm::EcdsaP256);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sigs = rt.block_on(async {
        let calls = (0..64).map(|i| {
            let store = store.clone();
            let id = ec.id.clone();
            async move {
                store
                    .sign(
                        &id,
                        SignatureScheme::EcdsaSha256,
                        format!("m{i}").as_bytes(),
                    )
                    .await
            }
        });
        futures_join_all(calls).await
    });
    for (i, sig) in sigs.into_iter().enumerate() {
        let sig = sig.expect("sign");
        assert!(verify_signature(
            &ec.public_key,
            SignatureScheme::EcdsaSha256,
            format!("m{i}").as_bytes(),
            &sig
        ));
    }
}

async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[test]
fn a_wrong_pin_is_refused_without_showing_it() {
    let token = TestToken::new();
    let wrong = "0000-not-the-pin-4242";
    std::fs::write(token.dir.path().join("pin"), wrong).expect("pin");
    let err = Pkcs11Device::open(token.settings()).expect_err("wrong pin");
    assert!(matches!(err, KeystoreError::PinIncorrect), "{err}");
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains(wrong) && !shown.contains(token.pin.expose()),
        "{shown}"
    );
}

#[test]
fn a_missing_token_is_named_by_label() {
    let token = TestToken::new();
    let mut settings = token.settings();
    settings.token = TokenSelector::Label("no-such-token".into());
    let err = Pkcs11Device::open(settings).expect_err("no token");
    assert_eq!(
        err.to_string(),
        "no token with label \"no-such-token\" is present"
    );
}

#[test]
fn a_token_can_be_chosen_by_serial() {
    let token = TestToken::new();
    let by_label = token.keystore(1);
    let key = generate(&by_label, KeyAlgorithm::EcdsaP256);
    drop(by_label);
    let ctx = cryptoki::context::Pkcs11::new(support::module()).expect("module");
    let _ = ctx.initialize(hsm_ca::keystore::pkcs11::init_args());
    let serial = ctx
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .filter_map(|s| ctx.get_token_info(s).ok())
        .find(|i| i.label().trim_end() == token.label)
        .map(|i| i.serial_number().trim_end().to_string())
        .expect("serial");
    let mut settings = token.settings();
    settings.token = TokenSelector::Serial(serial);
    let store = KeyStore::start(
        Arc::new(Pkcs11Device::open(settings).expect("open")),
        PoolOptions::default(),
    )
    .expect("start");
    assert_eq!(
        store.key_info_blocking(&key.id).expect("info").public_key,
        key.public_key
    );
}

#[test]
fn every_worker_signs_again_after_repeated_logouts() {
    // Two workers' sessions, driven in a fixed order: worker one recovers from the first logout;
    // worker two's session predates that recovery and must still recover from the second one.
    let token = TestToken::new();
    let device = Pkcs11Device::open(token.settings()).expect("open token");
    let mut one = hsm_ca::keystore::KeyDevice::open_session(&device).expect("session one");
    let mut two = hsm_ca::keystore::KeyDevice::open_session(&device).expect("session two");
    let key = one
        .generate(&KeyRequest {
            algorithm: KeyAlgorithm::EcdsaP256,
            label: "workers".into(),
        })
        .expect("generate");
    let scheme = SignatureScheme::EcdsaSha256;
    for (name, session) in [("one", &mut one), ("two", &mut two)] {
        session.sign(&key.id, scheme, b"before").expect(name);
    }
    for round in 0..3 {
        let session = if round == 1 { &mut two } else { &mut one };
        support::log_out_from_outside(&token.label);
        let message = format!("after logout {round}");
        let sig = session
            .sign(&key.id, scheme, message.as_bytes())
            .unwrap_or_else(|e| panic!("sign after logout {round}: {e}"));
        assert!(verify_signature(
            &key.public_key,
            scheme,
            message.as_bytes(),
            &sig
        ));
    }
}
