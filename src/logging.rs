//! The log's filter, changeable while the router runs (`POST /log` on the admin
//! API): the binary installs the setter when it sets up logging; a process
//! without one (a test harness) says so.

use std::sync::{Mutex, OnceLock};

type Setter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static SETTER: OnceLock<Setter> = OnceLock::new();
static CURRENT: Mutex<String> = Mutex::new(String::new());

/// The audit log's target: a filter change never silences it.
const AUDIT: &str = "georouter::audit=info";

/// Installs what changes the filter (once, at start), and the filter in force.
pub fn install(
    initial: String,
    setter: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static,
) {
    if SETTER.set(Box::new(setter)).is_ok() {
        *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = initial;
    }
}

/// The filter in force, when this process can change it.
pub fn current() -> Option<String> {
    SETTER.get()?;
    Some(CURRENT.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("this process's log filter cannot be changed at run time")]
    NotReloadable,
    #[error(
        "{0:?} is not a log filter (e.g. info, georouter=debug, georouter::fleet=trace,info): {1}"
    )]
    Invalid(String, String),
}

/// Replaces the log filter (`RUST_LOG` syntax). An empty filter is refused
/// (it would silence every line), and the audit log stays on whatever the
/// filter says of the rest. Returns the filter now in force.
pub fn set_filter(directives: &str) -> Result<String, FilterError> {
    let set = SETTER.get().ok_or(FilterError::NotReloadable)?;
    let directives = directives.trim();
    if directives.is_empty() {
        return Err(FilterError::Invalid(
            String::new(),
            "an empty filter would silence every line, the audit log's too".to_owned(),
        ));
    }
    let full = if directives.contains("georouter::audit") {
        directives.to_owned()
    } else {
        format!("{directives},{AUDIT}")
    };
    set(&full).map_err(|e| FilterError::Invalid(directives.to_owned(), e))?;
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = full.clone();
    Ok(full)
}

static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lines are JSON objects (their writer escapes every value itself).
pub fn set_json(json: bool) {
    JSON.store(json, std::sync::atomic::Ordering::Relaxed);
}

/// A value a client chose, for a log line: in text, written quoted, with `"`,
/// `\` and control characters escaped, so it cannot end its field or start a
/// line; in JSON, as it is (the JSON writer escapes it).
pub struct Quoted<T>(pub T);

impl<T: std::fmt::Display> std::fmt::Debug for Quoted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if JSON.load(std::sync::atomic::Ordering::Relaxed) {
            return write!(f, "{}", self.0);
        }
        struct Escape<'a, 'b>(&'a mut std::fmt::Formatter<'b>);
        impl std::fmt::Write for Escape<'_, '_> {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                for c in s.chars() {
                    match c {
                        '"' | '\\' => write!(self.0, "\\{c}")?,
                        c if c.is_control() => write!(self.0, "{}", c.escape_default())?,
                        c => self.0.write_char(c)?,
                    }
                }
                Ok(())
            }
        }
        f.write_str("\"")?;
        std::fmt::write(&mut Escape(f), format_args!("{}", self.0))?;
        f.write_str("\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_cannot_end_their_field() {
        assert_eq!(format!("{:?}", Quoted("/a")), r#""/a""#);
        assert_eq!(
            format!("{:?}", Quoted("/a\" status=200 x=\"\\\n")),
            r#""/a\" status=200 x=\"\\\n""#
        );
    }

    #[test]
    fn an_empty_filter_is_refused_and_the_audit_log_stays_on() {
        install("info".to_owned(), |_| Ok(()));
        assert_eq!(current().as_deref(), Some("info"));
        assert!(matches!(set_filter("  "), Err(FilterError::Invalid(..))));
        assert_eq!(current().as_deref(), Some("info"), "unchanged");
        assert_eq!(set_filter("off").unwrap(), "off,georouter::audit=info");
        assert_eq!(current().as_deref(), Some("off,georouter::audit=info"));
        assert_eq!(
            set_filter("warn,georouter::audit=debug").unwrap(),
            "warn,georouter::audit=debug"
        );
    }
}
