//! One module per CLI command that does more than call into a crate.

pub mod container;
pub mod demo;
pub mod demo_backend;
pub mod reload;
pub mod scale;
pub mod simulate;
pub mod status;
pub mod validate;
