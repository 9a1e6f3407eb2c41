//! shoal-config: the YAML schema of SPEC.md, its defaults, validation and error locations.
//!
//! ```
//! let config = shoal_config::parse(
//!     "listeners: [{ name: web, bind: 127.0.0.1:8080, service: web }]\n\
//!      services: { web: { upstreams: { static: [127.0.0.1:9001] } } }\n",
//!     "shoal.yaml",
//! )
//! .unwrap();
//! assert_eq!(config.listeners[0].service.as_deref(), Some("web"));
//!
//! let errors = shoal_config::parse("workers: 0\nadmin: { lisen: 1 }\n", "shoal.yaml").unwrap_err();
//! assert_eq!(
//!     errors.to_string(),
//!     "shoal.yaml:2:10: admin: unknown key `lisen`; did you mean `listen`?\n"
//! );
//! ```
//!
//! Reading a file goes: `${VAR}` interpolation while deserializing (see [`interpolate`]),
//! then [`validate`], which reports every problem of meaning at once with its dotted path.

mod error;
pub mod interpolate;
pub mod schema;
mod summary;
#[cfg(test)]
mod tests;
pub mod units;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use error::{ConfigError, ConfigErrors, Location};
pub use schema::*;
pub use validate::{is_user, parse_subnet, signal_name, MAX_PIDS, MIN_MEMORY};

/// Reads, interpolates from the process environment, deserializes and validates a config
/// file. An unreadable file is one error naming the file and the OS error.
///
/// `${PORT}` and `${SHOAL_REPLICA}` inside `services.*.container.command` and `.env` are left
/// in place for the runtime to fill in per replica ([`interpolate::replica_vars`]).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_checking(path, |_| Vec::new())
}

/// Like [`load`], with `outside` checking what the config names outside itself (files it
/// reads, say) once it reads: those errors are listed with the errors of meaning, but for
/// one about a value that has an error of meaning already.
pub fn load_checking(
    path: &Path,
    outside: impl Fn(&Config) -> Vec<ConfigError>,
) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::at_path(&file, "", format!("cannot read the config file: {e}"))
    })?;
    let env = |name: &str| std::env::var(name).ok();
    let config = deserialize(&text, &env)
        .map_err(|e| every_schema_error(&text, &env, &file, &e, &outside))?;
    let errors = meaning_and_outside(&config, &file, &[], &outside);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The config's `admin` keys the CLI needs, read on their own (see [`admin_settings`]).
#[derive(Debug, Default, PartialEq)]
pub struct AdminSettings {
    /// `admin.listen`, when the file sets it.
    pub listen: Option<SocketAddr>,
    /// `admin.token_file`, when the file sets it.
    pub token_file: Option<PathBuf>,
}

/// Whether the file at `path` is YAML at all (before variables and the schema): when it is
/// not, nothing in it, not even its admin address, can be read. An unreadable file counts
/// as YAML here: what is wrong with it is for whoever reads it to say.
pub fn parses_as_yaml(path: &Path) -> bool {
    std::fs::read_to_string(path).map_or(true, |text| {
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).is_ok()
    })
}

/// `admin.listen` and `admin.token_file` of the config file at `path`, read without the
/// rest: the CLI talks to the daemon that file configures, and needs the token to ask it
/// to reload a file that does not validate, so that it can print the errors the daemon
/// finds in it. Nothing is set when the file cannot be read.
pub fn admin_settings(path: &Path) -> AdminSettings {
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        admin: Option<Admin>,
    }
    #[derive(Deserialize)]
    struct Admin {
        // Text, so that a listen address that does not parse costs the token nothing.
        #[serde(default)]
        listen: Option<String>,
        #[serde(default)]
        token_file: Option<PathBuf>,
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return AdminSettings::default();
    };
    let env = |name: &str| std::env::var(name).ok();
    let file = File::deserialize(interpolate::Interpolating::new(
        serde_yaml_ng::Deserializer::from_str(&text),
        &env,
    ));
    match file.ok().and_then(|f| f.admin) {
        Some(admin) => AdminSettings {
            listen: admin.listen.and_then(|l| l.trim().parse().ok()),
            token_file: admin.token_file,
        },
        None => AdminSettings::default(),
    }
}

/// Like [`load`] for text already read; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    parse_with_env(text, file, &|name| std::env::var(name).ok())
}

/// Like [`parse`], with variables looked up by `env` instead of the process environment
/// (for tests, and for callers that hold the environment elsewhere).
pub fn parse_with_env(
    text: &str,
    file: &str,
    env: interpolate::Env<'_>,
) -> Result<Config, ConfigErrors> {
    let config = deserialize(text, env)
        .map_err(|e| every_schema_error(text, env, file, &e, &|_| Vec::new()))?;
    validate::validate(&config, file)?;
    Ok(config)
}

/// At most this many errors of reading are reported for one file.
const MAX_SCHEMA_ERRORS: usize = 50;

/// serde stops at the first error; whoever fixes the file wants them all, as `validate`
/// lists every error of meaning. So the file is read again as a YAML tree (when its syntax
/// allows), and each error's value is taken out of it (the unknown key,
/// or the value of the wrong type or name, which then takes its default) before the tree is
/// written back out and read again, until it reads or an error repeats. The first error
/// keeps its line and column; the ones found after it are placed by their dotted path.
/// Once the rest reads, its errors of meaning follow.
fn every_schema_error(
    text: &str,
    env: interpolate::Env<'_>,
    file: &str,
    first: &serde_yaml_ng::Error,
    outside: &dyn Fn(&Config) -> Vec<ConfigError>,
) -> ConfigErrors {
    let mut errors = vec![error::from_yaml(first, file)];
    // The tree keeps `${VAR}` as written: read back through the interpolation, as the file
    // was, an interpolated number is a number again, not the string it was substituted as.
    let Some((mut tree, repeated)) = first_keys(text) else {
        return ConfigErrors(errors);
    };
    let mut found = error::path_and_message(first);
    // Where each value taken out was.
    let mut gone = Vec::new();
    // Unknown keys taken out, by the path of their mapping: one may turn out to be a
    // required key misspelt once the reading gets to that key.
    let mut unknowns: Vec<(String, String, serde_yaml_ng::Value)> = Vec::new();
    while errors.len() < MAX_SCHEMA_ERRORS {
        let (path, message) = &found;
        let path = path.as_deref().unwrap_or_default();
        let unknown = unknown_key(message);
        // A name given twice is in the tree once already (see `first_keys`): nothing to
        // take out, and nothing of its map's is left unread.
        if !units::is_repeated_key(message) {
            let taken = take_out(&mut tree, path, unknown);
            match (unknown, taken) {
                (Some(key), Some(value)) => {
                    unknowns.push((path.to_string(), key.to_string(), value))
                }
                (None, Some(_)) => {}
                // A list item is not taken out (that would move the paths of those after
                // it): a stand-in takes its place.
                (None, None) if stand_in(&mut tree, path, env) => {}
                _ => break,
            }
            gone.push(match unknown {
                Some(key) if !path.is_empty() => format!("{path}.{key}"),
                Some(key) => key.to_string(),
                None => path.to_string(),
            });
        }
        let mut next = read_again(&tree, env);
        // A required key missing now is either one misspelt (`bnd` for `bind`), whose value
        // then goes under the right name, or a value taken out that had no default, whose
        // place a stand-in takes. Either way the reading goes on to the errors after it.
        while let Some(missing) = next
            .as_ref()
            .map(error::path_and_message)
            .and_then(|found| {
                let field = missing_field(&found.1)?.to_string();
                Some((found.0.unwrap_or_default(), field))
            })
        {
            let (at, field) = missing;
            let misspelt = unknowns.iter().rposition(|(mapping, key, _)| {
                *mapping == at && error::closest(key, [field.as_str()]).is_some()
            });
            let filled = match misspelt {
                Some(index) => {
                    let (_, _, value) = unknowns.remove(index);
                    mapping_at(&mut tree, &at)
                        .is_some_and(|map| map.insert(field.into(), value).is_none())
                }
                None => {
                    let required = if at.is_empty() {
                        field
                    } else {
                        format!("{at}.{field}")
                    };
                    gone.contains(&required) && stand_in(&mut tree, &required, env)
                }
            };
            if !filled {
                break;
            }
            next = read_again(&tree, env);
        }
        let Some(next) = next else {
            break;
        };
        let next_found = error::path_and_message(&next);
        // A value taken out that had no default shows up as missing: not the user's error.
        if next_found == found || missing_field(&next_found.1).is_some() {
            break;
        }
        errors.push(error::from_rewritten_yaml(&next, file));
        found = next_found;
    }
    // Each key given twice, but the one reported first (as serde words it for a struct's
    // field, `duplicate field `bind``, or as `de_unique_keys` does).
    let (first_path, first_message) = error::path_and_message(first);
    for (path, key) in repeated {
        let reported = first_path.as_deref().unwrap_or_default() == path
            && first_message.contains(&format!("`{key}`"));
        if !reported && errors.len() < MAX_SCHEMA_ERRORS {
            errors.push(ConfigError::at_path(file, path, units::repeated_key(&key)));
        }
    }
    // With what could not be read taken out (each value in its default's place), the rest
    // may read: its errors of meaning are the file's too, but for those about a value
    // taken out or one holding it (a `dns` block taken out leaves its `upstreams` listing
    // no backend), which the user is fixing already. Not when a whole section or service
    // was taken out (a misspelt `servics:`): what refers to it would all be errors.
    let whole = gone.iter().any(|g| {
        let depth = g.split('.').count();
        depth == 1 || depth == 2 && g.starts_with("services.")
    });
    let read = serde_yaml_ng::to_string(&tree).map(|text| deserialize(&text, env));
    if let (false, Ok(Ok(config))) = (whole, read) {
        errors.extend(meaning_and_outside(&config, file, &gone, outside));
    }
    ConfigErrors(errors)
}

/// The errors of meaning of `config`, then those `outside` finds, leaving out any about a
/// value at a path in `exclude` (taken out, or a stand-in), inside one or holding one, and
/// any of `outside`'s about a value that has an error of meaning already.
fn meaning_and_outside(
    config: &Config,
    file: &str,
    exclude: &[String],
    outside: &dyn Fn(&Config) -> Vec<ConfigError>,
) -> Vec<ConfigError> {
    let related = |error: &ConfigError, paths: &[String]| match &error.location {
        Location::Path(path) => paths.iter().any(|p| within(path, p) || within(p, path)),
        Location::Syntax { .. } => false,
    };
    let mut errors: Vec<ConfigError> = match validate::validate(config, file) {
        Ok(()) => Vec::new(),
        Err(ConfigErrors(meaning)) => meaning
            .into_iter()
            .filter(|error| !related(error, exclude))
            .collect(),
    };
    let mut known: Vec<String> = exclude.to_vec();
    known.extend(errors.iter().filter_map(|error| match &error.location {
        Location::Path(path) => Some(path.clone()),
        Location::Syntax { .. } => None,
    }));
    errors.extend(
        outside(config)
            .into_iter()
            .filter(|error| !related(error, &known)),
    );
    errors
}

/// Whether dotted `path` is `at` or inside it (everything is inside the file's `""`).
fn within(path: &str, at: &str) -> bool {
    path.strip_prefix(at)
        .is_some_and(|rest| at.is_empty() || rest.is_empty() || rest.starts_with(['.', '[']))
}

/// The key an "unknown field" error names.
fn unknown_key(message: &str) -> Option<&str> {
    named(message, "unknown field `")
}

/// The field a "missing field" error names.
fn missing_field(message: &str) -> Option<&str> {
    named(message, "missing field `")
}

/// The name quoted right after `prefix` in serde's `message`.
fn named<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    message
        .strip_prefix(prefix)
        .and_then(|rest| rest.split('`').next())
}

/// Whether `found` is the error of a missing required key, the one at `path`.
fn is_missing(found: &(Option<String>, String), path: &str) -> bool {
    let (parent, key) = match path.rsplit_once('.') {
        Some((parent, key)) => (parent, key),
        None => ("", path),
    };
    found.0.as_deref().unwrap_or_default() == parent && missing_field(&found.1) == Some(key)
}

/// Puts, at `path` (a list item, or a required key taken out), the first of a few stand-in
/// values with which the reading gets past that place: an address, a number (500 for an
/// HTTP status), a word, an empty list or mapping. What a stand-in makes wrong is not reported, as with a value
/// taken out (see `every_schema_error`). False when none does.
fn stand_in(tree: &mut serde_yaml_ng::Value, path: &str, env: interpolate::Env<'_>) -> bool {
    use serde_yaml_ng::Value;
    let candidates = [
        Value::from("127.0.0.1:1"),
        Value::from(1),
        Value::from(500),
        Value::from("x"),
        Value::Sequence(Vec::new()),
        Value::Mapping(serde_yaml_ng::Mapping::new()),
    ];
    let mut steps = path_steps(path);
    let Some(last) = steps.pop() else {
        return false;
    };
    for candidate in candidates {
        let Some(node) = node_at(tree, &steps) else {
            return false;
        };
        match &last {
            Step::Key(key) => match node.as_mapping_mut() {
                Some(map) => drop(map.insert(key.as_str().into(), candidate)),
                None => return false,
            },
            Step::Index(index) => match node.get_mut(*index) {
                Some(item) => *item = candidate,
                None => return false,
            },
        }
        let past = read_again(tree, env).is_none_or(|next| {
            let found = error::path_and_message(&next);
            found.0.as_deref() != Some(path) && !is_missing(&found, path)
        });
        if past {
            return true;
        }
    }
    false
}

/// The file as a YAML tree that keeps the first of a key given twice in one map, where
/// serde_yaml's own tree refuses the whole file, so that the rest of it still has its errors
/// found; and, by the dotted path of its map, each key given twice, which is an error of
/// its own (`units::de_unique_keys` words it). None when the text is not YAML.
///
/// Keys are read as written (`0x10`, `~`), as the schema's maps read their names: read as
/// YAML values, `0x10` and `16` would be one key, and `~` and `"null"` another. A file with
/// a key that is no scalar (a list, a map) cannot be read so, and is read with keys as
/// values instead.
fn first_keys(text: &str) -> Option<(serde_yaml_ng::Value, Vec<(String, String)>)> {
    use serde::de::DeserializeSeed;
    [true, false].into_iter().find_map(|keys_as_written| {
        let repeated = std::cell::RefCell::new(Vec::new());
        let tree = Tree {
            path: String::new(),
            repeated: &repeated,
            keys_as_written,
        }
        .deserialize(serde_yaml_ng::Deserializer::from_str(text))
        .ok()?;
        Some((tree, repeated.into_inner()))
    })
}

/// Reads one value of [`first_keys`]' tree at `path`.
struct Tree<'a> {
    path: String,
    repeated: &'a std::cell::RefCell<Vec<(String, String)>>,
    keys_as_written: bool,
}

impl Tree<'_> {
    fn at(&self, path: String) -> Self {
        Tree {
            path,
            repeated: self.repeated,
            keys_as_written: self.keys_as_written,
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Tree<'_> {
    type Value = serde_yaml_ng::Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Tree<'_> {
    type Value = serde_yaml_ng::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_yaml_ng::Value::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_yaml_ng::Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        serde::de::DeserializeSeed::deserialize(self, d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) =
            seq.next_element_seed(self.at(format!("{}[{}]", self.path, items.len())))?
        {
            items.push(item);
        }
        Ok(serde_yaml_ng::Value::Sequence(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_yaml_ng::Mapping::new();
        loop {
            let key = if self.keys_as_written {
                map.next_key::<String>()?.map(serde_yaml_ng::Value::String)
            } else {
                map.next_key_seed(self.at(self.path.clone()))?
            };
            let Some(key) = key else {
                break;
            };
            let name = match &key {
                serde_yaml_ng::Value::String(name) => name.clone(),
                other => serde_yaml_ng::to_string(other)
                    .map(|text| text.trim_end().to_string())
                    .unwrap_or_default(),
            };
            let path = if self.path.is_empty() {
                name.clone()
            } else {
                format!("{}.{name}", self.path)
            };
            let value = map.next_value_seed(self.at(path))?;
            if out.contains_key(&key) {
                let mut repeated = self.repeated.borrow_mut();
                // Once, however often it is given; no more than are listed.
                let at = (self.path.clone(), name);
                if repeated.len() < MAX_SCHEMA_ERRORS && !repeated.contains(&at) {
                    repeated.push(at);
                }
            } else {
                out.insert(key, value);
            }
        }
        Ok(serde_yaml_ng::Value::Mapping(out))
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        use serde::de::VariantAccess;
        let (tag, variant) = data.variant::<String>()?;
        let value = variant.newtype_variant_seed(self.at(self.path.clone()))?;
        Ok(serde_yaml_ng::Value::Tagged(Box::new(
            serde_yaml_ng::value::TaggedValue {
                tag: serde_yaml_ng::value::Tag::new(tag),
                value,
            },
        )))
    }
}

/// The error of reading `tree` written back out, or None when it reads (or cannot be
/// written).
fn read_again(
    tree: &serde_yaml_ng::Value,
    env: interpolate::Env<'_>,
) -> Option<serde_yaml_ng::Error> {
    let rewritten = serde_yaml_ng::to_string(tree).ok()?;
    deserialize(&rewritten, env).err()
}

/// Takes the value an error is about out of `tree`: the `unknown` key of the mapping at
/// `path`, or else the value at `path` itself, if it is a mapping's. None when there is no
/// such value.
fn take_out(
    tree: &mut serde_yaml_ng::Value,
    path: &str,
    unknown: Option<&str>,
) -> Option<serde_yaml_ng::Value> {
    let mut steps = path_steps(path);
    if let Some(key) = unknown {
        steps.push(Step::Key(key.to_string()));
    }
    // A list item is left alone: taking it out would shift the indexes of those after it,
    // and with them the paths of their errors.
    let Some(Step::Key(key)) = steps.pop() else {
        return None;
    };
    node_at(tree, &steps)?
        .as_mapping_mut()?
        .remove(key.as_str())
}

/// The mapping at `path` in `tree`.
fn mapping_at<'a>(
    tree: &'a mut serde_yaml_ng::Value,
    path: &str,
) -> Option<&'a mut serde_yaml_ng::Mapping> {
    node_at(tree, &path_steps(path))?.as_mapping_mut()
}

fn node_at<'a>(
    mut node: &'a mut serde_yaml_ng::Value,
    steps: &[Step],
) -> Option<&'a mut serde_yaml_ng::Value> {
    for step in steps {
        node = match step {
            Step::Key(key) => node.get_mut(key.as_str())?,
            Step::Index(index) => node.get_mut(*index)?,
        };
    }
    Some(node)
}

enum Step {
    Key(String),
    Index(usize),
}

/// `listeners[0].routes[1].service` as keys and list indexes.
fn path_steps(path: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut pieces = part.split('[');
        if let Some(key) = pieces.next().filter(|k| !k.is_empty()) {
            steps.push(Step::Key(key.to_string()));
        }
        for index in pieces {
            if let Ok(index) = index.trim_end_matches(']').parse() {
                steps.push(Step::Index(index));
            }
        }
    }
    steps
}

fn deserialize(text: &str, env: interpolate::Env<'_>) -> Result<Config, serde_yaml_ng::Error> {
    // An empty file (or one of only comments) is the all-defaults config, not an error.
    let blank = text
        .lines()
        .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'));
    if blank {
        return Ok(Config::default());
    }
    Config::deserialize(interpolate::Interpolating::new(
        serde_yaml_ng::Deserializer::from_str(text),
        env,
    ))
}
