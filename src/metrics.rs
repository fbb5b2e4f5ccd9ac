//! Metrics the router exports, in a registry it owns (no global state). Names
//! follow Prometheus conventions with the `georouter_` prefix.

use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};

pub const RESIDENCY_REFUSALS: &str = "georouter_residency_refusals_total";

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests refused because no region inside their jurisdiction could serve.
    pub residency_refusals: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let residency_refusals = IntCounterVec::new(
            Opts::new(
                RESIDENCY_REFUSALS,
                "Requests refused (503) because no region inside the resident's jurisdiction could serve them.",
            ),
            &["jurisdiction"],
        )
        .expect("metric options are valid");
        registry
            .register(Box::new(residency_refusals.clone()))
            .expect("metric names are unique");
        Metrics {
            registry,
            residency_refusals,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("writing to a Vec cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
