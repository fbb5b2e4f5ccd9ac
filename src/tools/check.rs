//! `georouter check`: everything `run` reads, validated without serving (like
//! `nginx -t`), and the policy summarised for people.

use std::fmt::Write as _;
use std::path::Path;

use crate::config::{Config, Invalid, LoadError};

mod recover;
use crate::routing::table::{RoutingTable, TableError};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A syntax error, and what the rest of the policy has wrong besides.
    #[error("{parse}\nWith line {} left out, the rest of the policy was checked too: {rest}", lines_list(.lines))]
    ParseAndMore {
        parse: Box<LoadError>,
        lines: Vec<usize>,
        rest: Invalid,
    },
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("listeners[{0}].tls: {1}")]
    Tls(usize, crate::tls::TlsError),
    #[error("{0}: {1}")]
    Start(String, Box<crate::control::StartError>),
    #[error(transparent)]
    Secret(#[from] crate::secret::WorldWritable),
}

/// A syntax error, with the rest of the policy checked when leaving the
/// broken lines out makes it parse and it has mistakes of its own.
fn after_syntax_error(path: std::path::PathBuf, error: toml::de::Error) -> CheckError {
    let rest = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| recover::rest_of(&text, &error));
    let parse = LoadError::Parse { path, error };
    match rest {
        Some((lines, rest)) if !rest.0.is_empty() => CheckError::ParseAndMore {
            parse: Box::new(parse),
            lines,
            rest,
        },
        _ => CheckError::Load(parse),
    }
}

fn lines_list(lines: &[usize]) -> String {
    let n: Vec<String> = lines.iter().map(ToString::to_string).collect();
    n.join(", ")
}

/// Checks the policy at `path`; its summary.
pub fn check(path: &Path, overrides: &crate::config::Overrides) -> Result<String, CheckError> {
    let mut out = String::new();
    let config = match Config::load_with(path, overrides) {
        Err(LoadError::Parse { path, error }) => return Err(after_syntax_error(path, error)),
        other => other?,
    };
    let table = RoutingTable::compile(&config)?;
    for (i, l) in config.listeners.iter().enumerate() {
        if let Some(tls) = &l.tls {
            crate::tls::server_config(tls).map_err(|e| CheckError::Tls(i, e))?;
        }
    }
    // Everything `run` reads besides the policy: tokens, the drain state file.
    crate::control::preflight(&config, &crate::control::Options::default())
        .map_err(|e| CheckError::Start(path.display().to_string(), Box::new(e)))?;
    let warnings = crate::secret::audit(&config)?;
    let _ = writeln!(
        out,
        "{}: ok: {} listener(s), {} region(s), {} route(s)",
        path.display(),
        config.listeners.len(),
        table.regions().len(),
        table.routes().len()
    );
    for l in &config.listeners {
        let tls = if l.tls.is_some() { "tls" } else { "plain" };
        let _ = writeln!(out, "  listener {:<16} {} ({tls})", l.name, l.address);
    }
    for r in table.regions() {
        let endpoints: Vec<String> = r
            .endpoints
            .iter()
            .map(|e| format!("{}://{}", e.scheme, e.authority))
            .collect();
        let _ = writeln!(
            out,
            "  region   {:<16} jurisdiction={} endpoints={}",
            r.name,
            r.jurisdiction.as_deref().unwrap_or("-"),
            endpoints.join(",")
        );
    }
    let names = |ids: &[crate::routing::table::RegionId]| {
        ids.iter()
            .map(|&id| table.region(id).name.as_str())
            .collect::<Vec<_>>()
            .join(" > ")
    };
    for (route, spec) in table.routes().iter().zip(&config.routes) {
        let methods = if spec.methods.is_any() { "any" } else { "some" };
        let _ = writeln!(
            out,
            "  route    {:<16} host={} prefix={} methods={methods} steering={:?} residency={} -> {}",
            route.name,
            spec.host.as_deref().unwrap_or("*"),
            route.path_prefix,
            spec.steering,
            spec.residency,
            names(&route.candidates)
        );
        for (k, (rule, ids)) in spec.rules.iter().zip(route.rules.iter()).enumerate() {
            let mut matches: Vec<String> = Vec::new();
            matches.extend(rule.cidrs.iter().map(|c| c.to_string()));
            matches.extend(
                rule.subdivisions
                    .iter()
                    .map(|(c, s)| format!("{c}-{}", s.as_str())),
            );
            matches.extend(rule.countries.iter().map(|c| c.to_string()));
            matches.extend(rule.continents.iter().map(|c| format!("continent {c}")));
            let _ = writeln!(
                out,
                "             rules[{k}] {} -> {}",
                matches.join(","),
                names(ids)
            );
        }
    }
    for j in table.jurisdictions() {
        let _ = writeln!(
            out,
            "  jurisdiction {} ({}) regions: {}",
            j.name,
            if j.strict { "strict" } else { "not strict" },
            names(&j.regions)
        );
    }
    for w in &warnings {
        let _ = writeln!(out, "  warning: {w}");
    }
    Ok(out)
}
