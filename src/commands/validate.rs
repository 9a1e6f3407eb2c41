//! `shoal validate`: a summary of a good config, or every error with its location (exit 2).

use std::path::Path;

use crate::EXIT_USAGE;

pub fn run(path: &Path, json: bool) -> anyhow::Result<i32> {
    match shoal_config::load(path) {
        Ok(config) => {
            if json {
                let summary = serde_json::json!({ "valid": true, "summary": config.summary() });
                println!("{summary}");
            } else {
                println!("{}: valid", path.display());
                print!("{}", config.summary());
            }
            Ok(0)
        }
        Err(errors) => {
            if json {
                let errors: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                println!(
                    "{}",
                    serde_json::json!({ "valid": false, "errors": errors })
                );
            } else {
                eprint!("{errors}");
            }
            Ok(EXIT_USAGE)
        }
    }
}
