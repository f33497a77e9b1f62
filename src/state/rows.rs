//! Signed rows: on a shared database, the trust bundle's rows carry a signature by the writing
//! node's device-held key over their table, key and content, and every reader keeps only rows
//! signed by a member key (this node's own, and those its config lists). A row written into the
//! database by other means — a root inserted with SQL — is ignored, counted and reported once.
//!
//! The keys stay in the devices: this module only sees a signing function and public keys. It
//! must never accept a row it could not verify.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Signs a row's message with this node's device-held key (ECDSA P-256, SHA-256, DER).
pub type RowSign = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// Told once per rejected row: its table and key.
pub type OnReject = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// How this node signs rows and whom it believes.
pub struct RowTrust {
    sign: RowSign,
    /// This node's own public key (DER SubjectPublicKeyInfo).
    own: Vec<u8>,
    /// Member public keys as ring reads them (the SubjectPublicKeyInfo's key bits).
    members: Vec<Vec<u8>>,
    rejected: AtomicU64,
    reported: Mutex<HashSet<String>>,
    on_reject: OnReject,
}

impl std::fmt::Debug for RowTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowTrust")
            .field("members", &self.members.len())
            .field("rejected", &self.rejected.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What a row's signature covers.
pub fn message(table: &str, key: &str, content: &[u8]) -> Vec<u8> {
    let mut m = format!("hsm-ca state row v1\n{table}\n{key}\n").into_bytes();
    m.extend_from_slice(content);
    m
}

impl RowTrust {
    /// `own`: this node's public key (DER SubjectPublicKeyInfo, P-256), whose private half
    /// `sign` uses; `others`: the other members' keys. Rows signed by any of them are believed.
    pub fn new(
        sign: RowSign,
        own: &[u8],
        others: &[Vec<u8>],
        on_reject: OnReject,
    ) -> Result<Self, String> {
        let members = std::iter::once(own)
            .chain(others.iter().map(Vec::as_slice))
            .map(|spki| {
                crate::keystore::der::subject_public_key_bits(spki)
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| "a member key is not a SubjectPublicKeyInfo".to_string())
            })
            .collect::<Result<_, _>>()?;
        Ok(RowTrust {
            sign,
            own: own.to_vec(),
            members,
            rejected: AtomicU64::new(0),
            reported: Mutex::new(HashSet::new()),
            on_reject,
        })
    }

    /// The signature for a row.
    pub fn sign(&self, table: &str, key: &str, content: &[u8]) -> Result<Vec<u8>, String> {
        (self.sign)(&message(table, key, content))
    }

    /// Whether a member signed this row; a row that fails is counted and reported once.
    pub fn believe(
        &self,
        table: &str,
        key: &str,
        content: &[u8],
        signature: Option<&[u8]>,
    ) -> bool {
        let msg = message(table, key, content);
        let good = signature.is_some_and(|sig| {
            self.members.iter().any(|m| {
                crate::keystore::signature_verifies(
                    crate::keystore::SignatureScheme::EcdsaSha256,
                    m,
                    &msg,
                    sig,
                )
            })
        });
        if !good {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            let first = self
                .reported
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(format!("{table}/{key}"));
            if first {
                (self.on_reject)(table, key);
            }
        }
        good
    }

    /// This node's public key (DER SubjectPublicKeyInfo).
    pub fn own_key(&self) -> &[u8] {
        &self.own
    }

    /// Rows read and not believed so far (each read counts).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}
