//! Reading a parsed policy into its raw types with every mistake at once:
//! each section read on its own, the key at fault taken out and the section
//! read again, each error at its dotted path with a hint (the closest known
//! key, an example duration). Errors come structured (`serde_value`'s: the
//! unknown key and the known ones, the missing key, the type expected), at
//! their path (`serde_path_to_error`): no error text is parsed.

use serde::Deserialize;

use super::raw::*;

/// Reads every section of a parsed policy, reporting every type error, unknown
/// key and missing field at its dotted path (one per section: serde stops at
/// the first in each), with the closest known key for a misspelt one and an
/// example for a bad duration.
pub fn read(table: toml::Table) -> Result<RawConfig, super::Invalid> {
    let whole = toml::Value::Table(table.clone());
    if let Ok(raw) = RawConfig::deserialize(whole) {
        return Ok(raw);
    }
    let mut errs = super::Invalid::default();
    for (key, value) in table {
        match key.as_str() {
            "server" => section::<RawServer>(&key, value, &mut errs),
            "listeners" => elements::<RawListener>(&key, value, &mut errs),
            "client" => section::<RawClient>(&key, value, &mut errs),
            "geo" => section::<RawGeo>(&key, value, &mut errs),
            "admin" => section::<RawAdmin>(&key, value, &mut errs),
            "upstream" => section::<RawUpstream>(&key, value, &mut errs),
            "regions" => elements::<RawRegion>(&key, value, &mut errs),
            "jurisdictions" => elements::<RawJurisdiction>(&key, value, &mut errs),
            "residency" => section::<RawResidency>(&key, value, &mut errs),
            "routes" => elements::<RawRoute>(&key, value, &mut errs),
            "health" => section::<RawHealth>(&key, value, &mut errs),
            "failback" => section::<RawFailback>(&key, value, &mut errs),
            "retry" => section::<RawRetry>(&key, value, &mut errs),
            "reload" => section::<RawReload>(&key, value, &mut errs),
            "fleet" => section::<RawFleet>(&key, value, &mut errs),
            other => errs.push(
                other.to_owned(),
                match closest(other, SECTIONS) {
                    Some(s) => format!("unknown section; did you mean [{s}]?"),
                    None => format!("unknown section; the sections are {}", SECTIONS.join(", ")),
                },
            ),
        }
    }
    if errs.0.is_empty() {
        errs.push("(policy)", "the policy could not be read as a whole");
    }
    Err(errs)
}

/// Every mistake of one section: serde stops at the first, so the key at
/// fault is taken out and the section read again, until it reads or the
/// mistake is one that taking a key out cannot pass (a missing key).
fn section<T: serde::de::DeserializeOwned>(
    name: &str,
    mut value: toml::Value,
    errs: &mut super::Invalid,
) {
    // Keys meant by a misspelt one: their "missing" would say it twice.
    let mut meant: Vec<String> = Vec::new();
    for _ in 0..64 {
        let Ok(structured) = serde_value::to_value(&value) else {
            return;
        };
        let Err(e) = serde_path_to_error::deserialize::<_, T>(structured) else {
            return;
        };
        let inner = e.path().to_string();
        let path = match inner.as_str() {
            "." | "" => name.to_owned(),
            p if p.starts_with('[') => format!("{name}{p}"),
            p => format!("{name}.{p}"),
        };
        let Explained {
            path,
            message,
            meant: suggested,
        } = explain(path, e.into_inner());
        if meant.contains(&path) {
            return;
        }
        // A key of the wrong type was taken out to read on: that it is
        // now missing is the same mistake, said already.
        if message == MISSING && errs.0.iter().any(|e| e.path == path) {
            return;
        }
        if let Some(key) = suggested {
            let parent = path.rsplit_once('.').map_or("", |(p, _)| p);
            meant.push(format!("{parent}.{key}"));
        }
        let within = path.strip_prefix(name).unwrap_or("").to_owned();
        errs.push(path, message);
        if !remove_at(&mut value, &within) {
            return;
        }
    }
}
/// An array of tables, each element read on its own: a mistake in
/// `regions[0]` hides none in `regions[1]`.
fn elements<T: serde::de::DeserializeOwned>(
    name: &str,
    value: toml::Value,
    errs: &mut super::Invalid,
) {
    match value {
        toml::Value::Array(items) => {
            for (i, item) in items.into_iter().enumerate() {
                section::<T>(&format!("{name}[{i}]"), item, errs);
            }
        }
        other => section::<Vec<T>>(name, other, errs),
    }
}

/// Takes the key at `path` (`.a.b[2].c`, relative to `value`) out of its
/// table; false when there is no such key or it is an array's element.
fn remove_at(value: &mut toml::Value, path: &str) -> bool {
    enum Seg<'p> {
        Key(&'p str),
        Index(usize),
    }
    // `.a[2].c` -> Key("a"), Index(2), Key("c").
    let mut segments = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut pieces = part.split('[');
        if let Some(key) = pieces.next().filter(|k| !k.is_empty()) {
            segments.push(Seg::Key(key));
        }
        for index in pieces {
            match index
                .strip_suffix(']')
                .and_then(|i| i.parse::<usize>().ok())
            {
                Some(i) => segments.push(Seg::Index(i)),
                None => return false,
            }
        }
    }
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut at = value;
    for seg in parents {
        let next = match (seg, at) {
            (Seg::Key(k), toml::Value::Table(t)) => t.get_mut(*k),
            (Seg::Index(i), toml::Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    match (last, at) {
        (Seg::Key(k), toml::Value::Table(t)) => t.remove(*k).is_some(),
        _ => false,
    }
}

const MISSING: &str = "missing: this key is required";

const SECTIONS: &[&str] = &[
    "server",
    "listeners",
    "client",
    "geo",
    "admin",
    "upstream",
    "regions",
    "jurisdictions",
    "residency",
    "routes",
    "health",
    "failback",
    "retry",
    "reload",
    "fleet",
];

/// One mistake, said for an operator: where, what, and the key probably meant.
struct Explained {
    path: String,
    message: String,
    /// The known key closest to an unknown one.
    meant: Option<&'static str>,
}

/// A structured error made useful: the closest key for an unknown one, an
/// example for a duration, the path of a missing field.
fn explain(path: String, e: serde_value::DeserializerError) -> Explained {
    use serde_value::DeserializerError as E;
    let said = |path, message| Explained {
        path,
        message,
        meant: None,
    };
    match e {
        E::UnknownField(field, known) => {
            // The path ends at the unknown key already, or at its table.
            let path = if path.ends_with(field.as_str()) {
                path
            } else {
                format!("{path}.{field}")
            };
            let meant = closest(&field, known);
            let message = match meant {
                Some(k) => format!("unknown key; did you mean `{k}`?"),
                None if known.is_empty() => "unknown key".to_owned(),
                None => format!("unknown key; the keys here are {}", known.join(", ")),
            };
            Explained {
                path,
                message,
                meant,
            }
        }
        E::MissingField(field) => said(format!("{path}.{field}"), MISSING.to_owned()),
        E::UnknownVariant(value, known) => said(
            path,
            match closest(&value, known) {
                Some(k) => format!("unknown value `{value}`; did you mean `{k}`?"),
                None => format!("unknown value `{value}`; one of {}", known.join(", ")),
            },
        ),
        E::DuplicateField(field) => said(format!("{path}.{field}"), "given twice".to_owned()),
        E::InvalidType(unexpected, expected) => said(
            path,
            with_example(
                format!(
                    "invalid type: {}, expected {expected}",
                    unexpected.to_unexpected()
                ),
                &expected,
            ),
        ),
        E::InvalidValue(unexpected, expected) => said(
            path,
            with_example(
                format!(
                    "invalid value: {}, expected {expected}",
                    unexpected.to_unexpected()
                ),
                &expected,
            ),
        ),
        E::InvalidLength(len, expected) => {
            said(path, format!("invalid length {len}, expected {expected}"))
        }
        E::Custom(message) => said(path, message),
    }
}

/// A duration's example beside a mistake where one was expected.
fn with_example(message: String, expected: &str) -> String {
    if expected.contains("duration") {
        format!("{message}; a duration is a number and a unit, e.g. \"250ms\", \"10s\", \"5m\"")
    } else {
        message
    }
}

/// The known name closest to `word` (edit distance at most 2, or a prefix).
fn closest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::levenshtein(word, k), *k))
        .filter(|(d, k)| *d <= 2 || k.starts_with(word) || word.starts_with(k))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}
