//! `hsm-ca cacerts`: writes Istio's plug-in CA files for istiod's intermediate (signed by the
//! offline root with `ceremony sign-intermediate`, or by the online root through the admin
//! API) and prints the `kubectl` line that makes the `cacerts` secret. istiod's private key is
//! never read: the line names the file where istiod's administrator keeps it.

use std::path::Path;

use super::CliError;
use crate::authority::{read_certificates, write_file};
use crate::config::Config;

/// Writes `ca-cert.pem`, `cert-chain.pem` and `root-cert.pem` for the intermediate in `cert`
/// into `out_dir`, and prints the secret's `kubectl` line.
pub fn cacerts(
    config_path: &Path,
    cert: &Path,
    out_dir: &Path,
    key: &Path,
    namespace: &str,
) -> Result<(), CliError> {
    let config = Config::load(config_path)?;
    let roots = super::commands::published_roots(&config)?;
    let mut certs = read_certificates(cert)?;
    if certs.len() != 1 {
        return Err(CliError::Message(format!(
            "{} must hold exactly one certificate (istiod's intermediate), not {}",
            cert.display(),
            certs.len()
        )));
    }
    let files = crate::trust::cacerts::istio_cacerts(
        &certs.remove(0),
        &roots,
        time::OffsetDateTime::now_utc(),
    )?;
    std::fs::create_dir_all(out_dir)
        .map_err(|e| CliError::Message(format!("{}: {e}", out_dir.display())))?;
    for (name, text) in [
        ("ca-cert.pem", &files.ca_cert),
        ("cert-chain.pem", &files.cert_chain),
        ("root-cert.pem", &files.root_cert),
    ] {
        write_file(&out_dir.join(name), text.as_bytes(), true)?;
    }
    let d = out_dir.display();
    say!("wrote {d}/ca-cert.pem, {d}/cert-chain.pem, {d}/root-cert.pem");
    say!(
        "kubectl create secret generic cacerts -n {namespace} \\\n  --from-file=ca-cert.pem={d}/ca-cert.pem \\\n  --from-file=ca-key.pem={} \\\n  --from-file=root-cert.pem={d}/root-cert.pem \\\n  --from-file=cert-chain.pem={d}/cert-chain.pem",
        key.display()
    );
    Ok(())
}
