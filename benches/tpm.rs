//! TPM sign rate beside SoftHSM's, measured in the same run.
//!
//! `cargo bench --bench tpm` (seconds per figure: `BENCH_SECS`, default 3). Starts a swtpm on
//! a free 127.0.0.1 port with a temporary state folder and a fresh SoftHSM token; signs ECDSA
//! P-256 through the keystore (queue, worker, signature self-check) on one worker each, since
//! swtpm serves one connection at a time. Prints both rates and TPM ÷ SoftHSM.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::cast_possible_truncation,
    reason = "a benchmark prints approximate figures"
)]

#[path = "../softhsm-tests/conformance/swtpm.rs"]
mod swtpm;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hsm_ca::keystore::pkcs11::{provision, Pkcs11Device, Pkcs11Settings, TokenSelector};
use hsm_ca::keystore::tpm::{SharedTpm, TpmDevice, TpmSettings};
use hsm_ca::keystore::{
    KeyAlgorithm, KeyDevice, KeyRequest, KeyStore, PoolOptions, SignatureScheme,
};
use hsm_ca::secret::{Secret, SecretSource};

/// Runs `op` on `threads` threads for `secs`; returns operations per second.
fn rate(threads: usize, secs: f64, op: impl Fn(u64) + Sync) -> f64 {
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, count, op) = (&stop, &count, &op);
            s.spawn(move || {
                let mut i = t as u64 * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    op(i);
                    i += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn sign_rate(device: Arc<dyn KeyDevice>, secs: f64) -> f64 {
    let store = KeyStore::start(
        device,
        PoolOptions {
            workers: 1,
            queue_depth: 4096,
            call_timeout: Duration::from_secs(10),
        },
    )
    .expect("keystore");
    let key = store
        .generate_blocking(KeyRequest {
            algorithm: KeyAlgorithm::EcdsaP256,
            label: "bench".into(),
        })
        .expect("key");
    rate(2, secs, |i| {
        store
            .sign_blocking(&key.id, SignatureScheme::EcdsaSha256, &i.to_be_bytes())
            .expect("sign");
    })
}

fn main() {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::create_dir_all(&tokens).expect("tokens");
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(&conf, provision::softhsm_config(&tokens)).expect("conf");
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let module = provision::softhsm_module().expect("SoftHSM is not installed");
    let pin = Secret::new("bench-pin-1234".into());
    std::fs::write(dir.path().join("pin"), pin.expose()).expect("pin");
    provision::create_token(&module, "bench", &Secret::new("bench-so-1234".into()), &pin)
        .expect("token");
    let softhsm = Pkcs11Device::open(Pkcs11Settings {
        module,
        token: TokenSelector::Label("bench".into()),
        pin: SecretSource::File(dir.path().join("pin")),
        verify_signatures: true,
    })
    .expect("softhsm");

    let tpm_process = swtpm::Swtpm::start();
    std::fs::write(dir.path().join("auth"), "bench-key-auth").expect("auth");
    let tpm = TpmDevice::open(TpmSettings {
        tcti: tpm_process.tcti(),
        owner_auth: None,
        key_auth: Some(SecretSource::File(dir.path().join("auth"))),
        verify_signatures: true,
    })
    .expect("swtpm");

    println!("hsm-ca TPM bench: ECDSA P-256, 1 worker, self-check on, {secs}s per figure");
    let soft = sign_rate(Arc::new(softhsm), secs);
    let tpm = sign_rate(Arc::new(SharedTpm(tpm)), secs);
    println!("{:<10} {:>12}", "device", "sign/s");
    println!("{:<10} {:>12.0}", "SoftHSM", soft);
    println!("{:<10} {:>12.0}", "swtpm", tpm);
    println!("swtpm / SoftHSM = {:.2}", tpm / soft);
}
