//! The trust bundle formats, kept at their old path for the command line; they live in
//! [`crate::trust::bundle`].

pub use crate::trust::bundle::{configmap, pem, spiffe};
