//! Checks of meaning that types alone cannot express.

use crate::error::{ConfigError, ConfigErrors};
use crate::schema::Config;

pub(crate) fn validate(_config: &Config, _file: &str) -> Result<(), ConfigErrors> {
    let errors: Vec<ConfigError> = Vec::new();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}
