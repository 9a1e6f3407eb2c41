//! One module per CLI command that does more than call into a crate.

pub mod demo_backend;
pub mod status;
pub mod validate;
