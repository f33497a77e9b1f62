//! Old paths kept for the command line until it moves to the new ones: the control plane is
//! [`crate::control`], the trust plane [`crate::trust`], the time helpers [`crate::clock`].

pub use crate::clock::rfc3339;
pub use crate::trust::bundle_file;
