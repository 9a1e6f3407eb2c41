//! The human summary `shoal validate` prints for a good config.

use crate::schema::Config;

impl Config {
    /// A short description: each listener with its bind, protocol and where it routes, each
    /// service with its kind, balancer and scale range. Every line ends in `\n`.
    pub fn summary(&self) -> String {
        String::new()
    }
}
