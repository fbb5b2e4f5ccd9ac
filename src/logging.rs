//! The log's filter, changeable while the router runs (`POST /log` on the admin
//! API): the binary installs the setter when it sets up logging; a process
//! without one (a test harness) says so.

use std::sync::OnceLock;

type Setter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static SETTER: OnceLock<Setter> = OnceLock::new();

/// Installs what changes the filter (once, at start).
pub fn install(setter: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static) {
    let _ = SETTER.set(Box::new(setter));
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

/// Replaces the log filter (`RUST_LOG` syntax).
pub fn set_filter(directives: &str) -> Result<(), FilterError> {
    let set = SETTER.get().ok_or(FilterError::NotReloadable)?;
    set(directives).map_err(|e| FilterError::Invalid(directives.to_owned(), e))
}
