//! `${VAR}` and `${VAR:-default}` in string values, replaced from the environment.
//!
//! # Rules
//!
//! - `${NAME}` is the value of `NAME`; unset is an error naming the variable and its position.
//! - `${NAME:-default}` is the value of `NAME`, or `default` when `NAME` is unset or empty
//!   (as in the shell). The default is literal text up to the first `}`.
//! - `$${` is a literal `${` (so `$${HOME}` reaches the program as `${HOME}`). Any other `$`
//!   is kept as is, so `$HOME` or `sh -c 'echo $$'` pass through untouched.
//! - `NAME` is letters, digits and `_`, not starting with a digit; anything else after `${`
//!   is an error rather than a silent literal.
//! - Only values are interpolated: never keys, never comments (they are not values).
//! - A value made entirely or partly of variables may stand where a number or boolean is
//!   expected (`pids: ${PIDS:-512}`): the substituted text is read as that type.
//! - **Replica variables.** `${PORT}` and `${SHOAL_REPLICA}` (with or without a default)
//!   inside `services.*.container.command` and `services.*.container.env` are left as they
//!   are: they belong to each replica, and the runtime substitutes them when it starts one
//!   (see [`replica_vars`]). Everywhere else they are ordinary variables, so
//!   `bind: 0.0.0.0:${PORT}` works on platforms that hand the daemon its port in `PORT`.
//!
//! # Why during deserialization
//!
//! Interpolation wraps the `serde_yaml_ng` deserializer and rewrites each scalar as it is
//! read, rather than substituting in the text before parsing. That keeps every error
//! position exactly where the user wrote it (a substituted value may be longer or hold a
//! newline), keeps substituted text from being read as YAML (a value `a: b` or `#x` stays a
//! string), and lets the rule above know where a value sits (keys vs values, container
//! command vs elsewhere).

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// Looks a variable up; `std::env::var(name).ok()` in the daemon, a map in tests.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Variables that belong to a replica, not to the daemon: see the module documentation.
pub const REPLICA_VARS: [&str; 2] = ["PORT", "SHOAL_REPLICA"];

/// Substitutes the replica variables (`${PORT}`, `${SHOAL_REPLICA}`, also with `:-default`)
/// in a container's command or env value, for the runtime when it starts a replica.
/// Everything else was already handled at load time and is left alone. (A `$${PORT}` was
/// turned into `${PORT}` at load time too, so a container command has no way to pass a
/// literal `${PORT}`; no workload has needed one.)
///
/// ```
/// let arg = shoal_config::interpolate::replica_vars("--port=${PORT}", 41234, "web-3f2a");
/// assert_eq!(arg, "--port=41234");
/// ```
pub fn replica_vars(text: &str, port: u16, replica: &str) -> String {
    let port = port.to_string();
    let lookup = |name: &str| match name {
        "PORT" => Some(port.clone()),
        "SHOAL_REPLICA" => Some(replica.to_string()),
        _ => None,
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match parse_reference(after) {
            Some((name, default, len)) if REPLICA_VARS.contains(&name) => {
                let value = lookup(name).filter(|v| !v.is_empty());
                out.push_str(&value.unwrap_or_else(|| default.unwrap_or_default().to_string()));
                rest = &after[len..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Parses `NAME}` or `NAME:-default}` (the text after `${`): the name, the default and the
/// length consumed including the `}`.
fn parse_reference(after: &str) -> Option<(&str, Option<&str>, usize)> {
    let end = after.find('}')?;
    let inner = &after[..end];
    let (name, default) = match inner.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (inner, None),
    };
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then_some((name, default, end + 1))
}

/// Interpolates one value. `keep_replica_vars` leaves `${PORT}`/`${SHOAL_REPLICA}` in place.
pub(crate) fn interpolate<'t>(
    text: &'t str,
    env: Env<'_>,
    keep_replica_vars: bool,
) -> Result<Cow<'t, str>, String> {
    if !text.contains("${") {
        return Ok(Cow::Borrowed(text));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            // `$${` is the escape for a literal `${`.
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some((name, default, len)) = parse_reference(after) else {
            return Err(format!(
                "`{}` is not a variable reference; write `${{NAME}}` or `${{NAME:-default}}` \
                 (NAME: letters, digits, _), or `$${{` for a literal `${{`",
                shorten(&rest[start..])
            ));
        };
        if keep_replica_vars && REPLICA_VARS.contains(&name) {
            out.push_str(&rest[start..start + 2 + len]);
        } else {
            match (
                env(name).filter(|v| default.is_none() || !v.is_empty()),
                default,
            ) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set; set it, or give a default \
                         with `${{{name}:-default}}`"
                    ))
                }
            }
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

fn shorten(text: &str) -> String {
    let end = text.find('}').map_or(text.len(), |i| i + 1);
    text.chars().take(end.min(40)).collect()
}

/// How far down a value sits, as far as the replica-variable rule needs to know.
#[derive(Clone)]
struct State<'a> {
    env: Env<'a>,
    /// The leading path segments (at most [`DEPTH`]).
    path: Rc<[Rc<str>]>,
    /// Set while a map key is read: the key is recorded here and not interpolated.
    key: Option<Rc<RefCell<Option<Rc<str>>>>>,
}

const DEPTH: usize = 4;

impl<'a> State<'a> {
    fn child(&self, segment: Rc<str>) -> Self {
        let path = if self.path.len() < DEPTH {
            self.path.iter().cloned().chain([segment]).collect()
        } else {
            self.path.clone()
        };
        State {
            env: self.env,
            path,
            key: None,
        }
    }

    fn keeps_replica_vars(&self) -> bool {
        matches!(&*self.path, [services, _, container, field]
            if &**services == "services" && &**container == "container"
                && (&**field == "command" || &**field == "env"))
    }
}

/// Wraps a deserializer so that every string value is interpolated on the way through.
pub(crate) struct Interpolating<'a, D> {
    inner: D,
    state: State<'a>,
}

impl<'a, D> Interpolating<'a, D> {
    pub(crate) fn new(inner: D, env: Env<'a>) -> Self {
        Interpolating {
            inner,
            state: State {
                env,
                path: Rc::from([]),
                key: None,
            },
        }
    }
}

/// What type the deserialize call asked for, so a substituted string can be read as it.
#[derive(Clone, Copy)]
enum Hint {
    Bool,
    Int,
    Float,
    Other,
}

macro_rules! forward {
    ($($method:ident => $hint:expr),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.inner.$method(Wrap { inner: visitor, state: self.state, hint: $hint })
        }
    )*};
}

/// Numbers and booleans are read through `deserialize_any`: `serde_yaml_ng` rejects a
/// plain `${PIDS}` scalar for an integer without showing it to the visitor, so the visitor
/// would never get the chance to substitute and convert it.
macro_rules! forward_scalar {
    ($($method:ident => $hint:expr),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.inner.deserialize_any(Wrap { inner: visitor, state: self.state, hint: $hint })
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Interpolating<'_, D> {
    type Error = D::Error;

    forward_scalar! {
        deserialize_bool => Hint::Bool,
        deserialize_i8 => Hint::Int, deserialize_i16 => Hint::Int,
        deserialize_i32 => Hint::Int, deserialize_i64 => Hint::Int, deserialize_i128 => Hint::Int,
        deserialize_u8 => Hint::Int, deserialize_u16 => Hint::Int,
        deserialize_u32 => Hint::Int, deserialize_u64 => Hint::Int, deserialize_u128 => Hint::Int,
        deserialize_f32 => Hint::Float, deserialize_f64 => Hint::Float,
    }

    forward! {
        deserialize_any => Hint::Other,
        deserialize_char => Hint::Other, deserialize_str => Hint::Other,
        deserialize_string => Hint::Other, deserialize_bytes => Hint::Other,
        deserialize_byte_buf => Hint::Other, deserialize_option => Hint::Other,
        deserialize_unit => Hint::Other, deserialize_seq => Hint::Other,
        deserialize_map => Hint::Other, deserialize_identifier => Hint::Other,
        deserialize_ignored_any => Hint::Other,
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_unit_struct(name, Wrap::new(visitor, self.state))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_newtype_struct(name, Wrap::new(visitor, self.state))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_tuple(len, Wrap::new(visitor, self.state))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_tuple_struct(name, len, Wrap::new(visitor, self.state))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_struct(name, fields, Wrap::new(visitor, self.state))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_enum(name, variants, Wrap::new(visitor, self.state))
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// The visitor side of [`Interpolating`]: rewrites strings, wraps nested accesses.
struct Wrap<'a, V> {
    inner: V,
    state: State<'a>,
    hint: Hint,
}

impl<'a, V> Wrap<'a, V> {
    fn new(inner: V, state: State<'a>) -> Self {
        Wrap {
            inner,
            state,
            hint: Hint::Other,
        }
    }

    /// Interpolates `text`; `None` when it needs no change (so borrowing stays possible).
    fn rewrite<E: de::Error>(&self, text: &str) -> Result<Option<String>, E> {
        if let Some(key) = &self.state.key {
            *key.borrow_mut() = Some(Rc::from(text));
            return Ok(None);
        }
        match interpolate(text, self.state.env, self.state.keeps_replica_vars()) {
            Ok(Cow::Borrowed(_)) => Ok(None),
            Ok(Cow::Owned(text)) => Ok(Some(text)),
            Err(message) => Err(E::custom(message)),
        }
    }
}

impl<'de, V: Visitor<'de>> Wrap<'_, V> {
    /// Hands a substituted string to the visitor, as the type it asked for when possible.
    fn visit_substituted<E: de::Error>(self, text: String) -> Result<V::Value, E> {
        let trimmed = text.trim();
        match self.hint {
            Hint::Bool => match trimmed {
                "true" => return self.inner.visit_bool(true),
                "false" => return self.inner.visit_bool(false),
                _ => {}
            },
            Hint::Int => {
                if let Ok(n) = trimmed.parse::<u64>() {
                    return self.inner.visit_u64(n);
                }
                if let Ok(n) = trimmed.parse::<i64>() {
                    return self.inner.visit_i64(n);
                }
            }
            Hint::Float => {
                if let Ok(n) = trimmed.parse::<f64>() {
                    return self.inner.visit_f64(n);
                }
            }
            Hint::Other => {}
        }
        self.inner.visit_string(text)
    }
}

macro_rules! pass {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    pass! {
        visit_bool(bool), visit_i8(i8), visit_i16(i16), visit_i32(i32), visit_i64(i64),
        visit_i128(i128), visit_u8(u8), visit_u16(u16), visit_u32(u32), visit_u64(u64),
        visit_u128(u128), visit_f32(f32), visit_f64(f64), visit_char(char),
        visit_bytes(&[u8]), visit_borrowed_bytes(&'de [u8]), visit_byte_buf(Vec<u8>),
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
        match self.rewrite(v)? {
            Some(text) => self.visit_substituted(text),
            None => self.inner.visit_str(v),
        }
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<V::Value, E> {
        match self.rewrite(v)? {
            Some(text) => self.visit_substituted(text),
            None => self.inner.visit_borrowed_str(v),
        }
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<V::Value, E> {
        match self.rewrite(&v)? {
            Some(text) => self.visit_substituted(text),
            None => self.inner.visit_string(v),
        }
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(Interpolating {
            inner: d,
            state: self.state,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(Interpolating {
            inner: d,
            state: self.state,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(Seq {
            inner: seq,
            state: self.state,
            index: 0,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(Map {
            inner: map,
            state: self.state,
            key: Rc::new(RefCell::new(None)),
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(Enum {
            inner: data,
            state: self.state,
        })
    }
}

/// Deserializes a seed's value through [`Interpolating`].
struct Seed<'a, S> {
    inner: S,
    state: State<'a>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Interpolating {
            inner: d,
            state: self.state,
        })
    }
}

struct Seq<'a, A> {
    inner: A,
    state: State<'a>,
    index: usize,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let state = self.state.child(Rc::from(self.index.to_string()));
        self.index += 1;
        self.inner.next_element_seed(Seed { inner: seed, state })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

struct Map<'a, A> {
    inner: A,
    state: State<'a>,
    /// The key just read, so that its value knows where it sits.
    key: Rc<RefCell<Option<Rc<str>>>>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let state = State {
            key: Some(self.key.clone()),
            ..self.state.clone()
        };
        self.inner.next_key_seed(Seed { inner: seed, state })
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        let key = self
            .key
            .borrow_mut()
            .take()
            .unwrap_or_else(|| Rc::from("?"));
        let state = self.state.child(key);
        self.inner.next_value_seed(Seed { inner: seed, state })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

struct Enum<'a, A> {
    inner: A,
    state: State<'a>,
}

impl<'a, 'de, A: EnumAccess<'de>> EnumAccess<'de> for Enum<'a, A> {
    type Error = A::Error;
    type Variant = Variant<'a, A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let (value, variant) = self.inner.variant_seed(Seed {
            inner: seed,
            state: self.state.clone(),
        })?;
        Ok((
            value,
            Variant {
                inner: variant,
                state: self.state,
            },
        ))
    }
}

struct Variant<'a, A> {
    inner: A,
    state: State<'a>,
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Variant<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.newtype_variant_seed(Seed {
            inner: seed,
            state: self.state,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner
            .tuple_variant(len, Wrap::new(visitor, self.state))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner
            .struct_variant(fields, Wrap::new(visitor, self.state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("example.com".into()),
            "EMPTY" => Some(String::new()),
            "PORT" => Some("1111".into()),
            _ => None,
        }
    }

    #[test]
    fn substitutes() {
        assert_eq!(
            interpolate("a ${HOST} b", &env, false).unwrap(),
            "a example.com b"
        );
        assert_eq!(interpolate("${NOPE:-x:y}", &env, false).unwrap(), "x:y");
        assert_eq!(interpolate("${EMPTY:-d}", &env, false).unwrap(), "d");
        assert_eq!(interpolate("${EMPTY}", &env, false).unwrap(), "");
        assert_eq!(
            interpolate("$${HOST} $HOST $$", &env, false).unwrap(),
            "${HOST} $HOST $$"
        );
        assert_eq!(interpolate("${PORT}", &env, false).unwrap(), "1111");
        assert_eq!(
            interpolate("--port=${PORT}", &env, true).unwrap(),
            "--port=${PORT}"
        );
        let unset = interpolate("${NOPE}", &env, false).unwrap_err();
        assert!(unset.contains("`NOPE` is not set"), "{unset}");
        assert!(interpolate("${1X}", &env, false).is_err());
        assert!(interpolate("${OPEN", &env, false).is_err());
    }

    #[test]
    fn replica_variables() {
        assert_eq!(
            replica_vars("${SHOAL_REPLICA}:${PORT} ${OTHER} ${PORT:-1}", 80, "web-1"),
            "web-1:80 ${OTHER} 80"
        );
    }
}
