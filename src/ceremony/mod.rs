//! The root ceremony, run on an offline host in front of officers and witnesses: splitting the
//! token's PIN among officers, making and rotating the root, signing and revoking
//! intermediates, signing the root CRL, and the transcript that proves what happened.
//!
//! Every ceremony that uses the token follows the same steps, so that a
//! transcript always reads the same way and nothing is half done:
//! 1. read the config, refuse to run with a network interface up (unless the officers allow
//!    it), and check that no output file exists yet;
//! 2. rebuild the PIN from the officers' shares when the token's PIN is held as shares — too
//!    few, mixed or altered shares stop here, before the token is opened or anything recorded;
//! 3. show what is about to happen and ask for the go-ahead;
//! 4. record the start (who attended, which shares) in the host's own audit chain, log in, do
//!    the work, write the outputs, record their SHA-256, sign the chain head with the root key,
//!    and write the whole chain (`transcript.jsonl`) and a readable rendering
//!    (`transcript.txt`) next to the outputs.
//!
//! A failure after step 4 began is recorded (`ceremony_failed`) and signed when a root key is
//! at hand. Nothing here opens a network socket, prints, prompts or reads stdin: the people in
//! the room are reached through [`Officers`], which the command line implements.

mod error;
mod host;
mod officers;
mod operations;
mod roots;
mod session;
mod shares;
mod split;
pub mod transcript;

pub use error::CeremonyError;
pub use host::{host_dir, interfaces_up};
pub use officers::{Action, Officers, PassphraseFor, Plan, RootPlan, RootSummary, Step};
pub use operations::{
    crl, init_root, revoke_intermediate, rotate_root, sign_intermediate, Revocation,
    RevocationReason, DEFAULT_CRL_DAYS,
};
pub use session::{keystore_with_shares, Attendance, Finished};
pub use shares::{ShareSource, SplitPlan};
pub use split::{init_quorum, reshare};
