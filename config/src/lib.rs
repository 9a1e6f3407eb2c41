//! shoal-config: the YAML schema of SPEC.md, its defaults, validation and error locations.

pub mod schema;
pub mod units;

pub use schema::*;
