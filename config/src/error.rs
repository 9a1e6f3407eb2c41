//! Errors with a location a user can act on: `FILE:LINE:COL: message` for the first problem
//! found while reading the YAML (syntax, types, unknown keys, unset variables) and
//! `FILE: services.web.scale.max: message` for the ones found after it and for problems of
//! meaning found by validation.

use std::fmt;

use serde::{Serialize, Serializer};

/// Where in the file an error is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A position in the text, both 1-based.
    Syntax { line: usize, column: usize },
    /// A dotted path to a value: map keys joined by `.`, list items as `[index]`, e.g.
    /// `listeners[0].routes[1].service` or `services.web.scale.max`. Empty when the error is
    /// about the file as a whole (e.g. it cannot be read).
    Path(String),
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub location: Location,
    pub message: String,
}

impl ConfigError {
    /// An error about the value at `path` (see [`Location::Path`]).
    pub fn at_path(file: &str, path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_string(),
            location: Location::Path(path.into()),
            message: message.into(),
        }
    }

    /// The dotted path of the value the error is about, when it has one: a located error
    /// about a value starts its message with the path (`from_yaml`).
    pub fn path(&self) -> Option<&str> {
        match &self.location {
            // The file's top level has no path, whichever way the error was found.
            Location::Path(path) => (!path.is_empty()).then_some(path.as_str()),
            Location::Syntax { .. } => split_path(&self.message).map(|(path, _)| path),
        }
    }

    /// An error at a 1-based line and column of the text.
    pub fn at_position(file: &str, line: usize, column: usize, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_string(),
            location: Location::Syntax { line, column },
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::Syntax { line, column } => {
                write!(f, "{}:{line}:{column}: {}", self.file, self.message)
            }
            Location::Path(path) if path.is_empty() => write!(f, "{}: {}", self.file, self.message),
            Location::Path(path) => write!(f, "{}: {path}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Serialized as its display string, which is what the admin API's `{"errors": [...]}` holds.
impl Serialize for ConfigError {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Every problem found in a config file; never empty when returned by [`crate::load`] or
/// [`crate::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// One error per line, each line ending in `\n` (print it with `eprint!`, not `eprintln!`).
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for error in &self.0 {
            writeln!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

/// Turns a `serde_yaml_ng` error into ours: the position moves out of the message into
/// [`Location::Syntax`], and serde's wording for unknown keys and values is replaced by one
/// that suggests the closest known name.
pub(crate) fn from_yaml(error: &serde_yaml_ng::Error, file: &str) -> ConfigError {
    let (path, message) = path_and_message(error);
    let message = explain(&message, path.as_deref());
    match (error.location(), path) {
        (Some(at), Some(path)) => {
            ConfigError::at_position(file, at.line(), at.column(), format!("{path}: {message}"))
        }
        (Some(at), None) => ConfigError::at_position(file, at.line(), at.column(), message),
        (None, path) => ConfigError::at_path(file, path.unwrap_or_default(), message),
    }
}

/// The same for an error found in a document shoal wrote back out (see
/// `crate::every_schema_error`): only its dotted path means something to the user.
pub(crate) fn from_rewritten_yaml(error: &serde_yaml_ng::Error, file: &str) -> ConfigError {
    let (path, message) = path_and_message(error);
    let message = explain(&message, path.as_deref());
    ConfigError::at_path(file, path.unwrap_or_default(), message)
}

/// The dotted path serde_yaml_ng puts before its message (none at the top level), and the
/// message without it and without the position.
pub(crate) fn path_and_message(error: &serde_yaml_ng::Error) -> (Option<String>, String) {
    let mut text = error.to_string();
    let location = error.location();
    if let Some(at) = &location {
        for suffix in [
            format!(" at line {} column {}", at.line(), at.column()),
            format!(" at position {}", at.index()),
        ] {
            if let Some(start) = text.find(&suffix) {
                text.replace_range(start..start + suffix.len(), "");
                break;
            }
        }
    }
    match split_path(&text) {
        Some((path, rest)) => (Some(path.to_string()), rest.to_string()),
        None => (None, text),
    }
}

/// The dotted path a message starts with (serde_yaml_ng's, and so `from_yaml`'s, style:
/// `services.web.scale: ...`), and the rest. A path never contains whitespace or a
/// backtick, while every message's own first words do.
fn split_path(text: &str) -> Option<(&str, &str)> {
    text.split_once(": ")
        .filter(|(path, _)| !path.is_empty() && !path.contains([' ', '`']))
}

/// Rewrites serde's "unknown field `x`, expected one of `a`, `b`" (and the same for enum
/// variants) into a message naming the closest known key, or listing them all. `path` is
/// where the value was.
fn explain(message: &str, path: Option<&str>) -> String {
    // `{ attempts: ${N} }`: in YAML's flow style `{` ends a plain value, so `$` is read alone.
    if message.starts_with("invalid type: string \"$\"") {
        return format!(
            "{}; inside {{ }} (YAML's flow style) put a variable in quotes: \"${{VAR}}\"",
            plain_types(message)
        );
    }
    if message == "invalid socket address syntax" {
        // Only a backend may be a name, and then not here.
        let names = match path {
            Some(path) if path.contains(".upstreams.") => "; a name goes in `upstreams.dns`",
            _ => "; shoal binds an address, not a name",
        };
        return format!(
            "not an IP address and port, like 127.0.0.1:9001 or [::1]:9001 (a port is at \
             most 65535{names})"
        );
    }
    let (what, rest) = if let Some(rest) = message.strip_prefix("unknown field `") {
        ("key", rest)
    } else if let Some(rest) = message.strip_prefix("unknown variant `") {
        ("value", rest)
    } else if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        return format!("missing required key `{name}`");
    } else {
        return plain_types(message);
    };
    let Some((given, expected)) = rest.split_once('`') else {
        return message.to_string();
    };
    // The expected names are the backtick-quoted words after "expected".
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    if known.is_empty() {
        return format!("unknown {what} `{given}`; nothing is allowed here");
    }
    match closest(given, known.iter().copied()) {
        Some(best) => format!("unknown {what} `{given}`; did you mean `{best}`?"),
        None => {
            let list: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
            format!(
                "unknown {what} `{given}`; expected one of {}",
                list.join(", ")
            )
        }
    }
}

/// serde's words for Rust's types (numbers, a section's struct) in words a config's reader uses.
fn plain_types(message: &str) -> String {
    let mut text = message.replace(" as u128", "").replace(" as i128", "");
    for (rust, plain) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number up to 65535"),
        ("expected u8", "expected a whole number up to 255"),
        ("expected f64", "expected a number"),
    ] {
        text = text.replace(rust, plain);
    }
    // A section's Rust type (`expected struct Admin`) means a map of its keys to a reader.
    if let Some(at) = text.find("expected struct ") {
        let name_end = text[at + "expected struct ".len()..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .map_or(text.len(), |end| at + "expected struct ".len() + end);
        text.replace_range(at..name_end, "expected a map of keys");
    }
    text
}

/// The candidate most similar to `given`, if any is similar enough to be a plausible typo.
pub(crate) fn closest<'a>(
    given: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(given, candidate), candidate))
        // Short names are far apart by Jaro-Winkler even one letter off (`mn` for `min`).
        .filter(|(score, candidate)| {
            *score >= 0.8 || given.len() >= 2 && strsim::levenshtein(given, candidate) == 1
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_forms() {
        let syntax = ConfigError::at_position("shoal.yaml", 3, 7, "bad");
        assert_eq!(syntax.to_string(), "shoal.yaml:3:7: bad");
        let semantic = ConfigError::at_path("shoal.yaml", "services.web.scale.max", "too small");
        assert_eq!(
            semantic.to_string(),
            "shoal.yaml: services.web.scale.max: too small"
        );
        let errors = ConfigErrors(vec![syntax, semantic]);
        assert_eq!(
            errors.to_string(),
            "shoal.yaml:3:7: bad\nshoal.yaml: services.web.scale.max: too small\n"
        );
    }

    #[test]
    fn serializes_as_strings() {
        let errors = ConfigErrors(vec![ConfigError::at_path("f", "workers", "too many")]);
        assert_eq!(
            serde_yaml_ng::to_string(&errors).unwrap().trim(),
            "- 'f: workers: too many'"
        );
    }

    #[test]
    fn explains_unknown_names() {
        assert_eq!(
            explain(
                "unknown field `lisen`, expected `listen` or `token_file`",
                None
            ),
            "unknown key `lisen`; did you mean `listen`?"
        );
        assert_eq!(
            explain("unknown variant `round_robbin`, expected one of `round_robin`, `least_request`, `p2c_ewma`, `consistent_hash`", None),
            "unknown value `round_robbin`; did you mean `round_robin`?"
        );
        assert_eq!(
            explain(
                "unknown field `zzz`, expected `listen` or `token_file`",
                None
            ),
            "unknown key `zzz`; expected one of `listen`, `token_file`"
        );
        assert_eq!(
            explain("invalid type: sequence, expected struct Admin", None),
            "invalid type: sequence, expected a map of keys"
        );
        assert_eq!(
            explain("invalid type: string \"$\", expected u32", None),
            "invalid type: string \"$\", expected a whole number; inside { } (YAML's flow \
             style) put a variable in quotes: \"${VAR}\""
        );
        assert_eq!(
            explain("invalid value: integer `-1` as i128, expected usize", None),
            "invalid value: integer `-1`, expected a whole number"
        );
        let upstream = explain(
            "invalid socket address syntax",
            Some("services.web.upstreams.static[0]"),
        );
        assert!(upstream.contains("like 127.0.0.1:9001"), "{upstream}");
        assert!(upstream.contains("`upstreams.dns`"), "{upstream}");
        let bind = explain("invalid socket address syntax", Some("listeners[0].bind"));
        assert!(!bind.contains("upstreams"), "{bind}");
        // Short names one letter off are still suggested.
        assert_eq!(
            explain(
                "unknown field `mn`, expected one of `min`, `max`, `initial`",
                None
            ),
            "unknown key `mn`; did you mean `min`?"
        );
        assert_eq!(
            explain(
                "unknown field `mx`, expected one of `min`, `max`, `initial`",
                None
            ),
            "unknown key `mx`; did you mean `max`?"
        );
    }
}
