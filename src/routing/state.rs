//! What the data plane shares: the config and the routing snapshot, each an
//! immutable value swapped whole, the metrics, and the controller's wake-up.

use arc_swap::ArcSwap;

use super::accounting::{Accounts, CodeCounters};
use super::regions::RegionStates;
use super::snapshot::Snapshot;
use super::table::{RoutingTable, TableError};
use crate::config::{Config, RegionName};
use crate::metrics::Metrics;

/// What the data plane shares: immutable snapshots, swapped whole.
#[derive(Debug)]
pub struct State {
    pub metrics: Metrics,
    pub config: ArcSwap<Config>,
    /// The routing table and its region states, one generation at a time.
    pub routing: ArcSwap<Snapshot>,
    /// Wakes the controller when traffic trips a region's passive detection.
    pub wake: tokio::sync::Notify,
    /// `requests_total{region="none"}`: answers the router gave itself.
    pub unrouted: CodeCounters,
}

impl State {
    pub fn new(config: Config) -> Result<State, TableError> {
        let table = RoutingTable::compile(&config)?;
        let metrics = Metrics::new();
        let states = RegionStates::all_serving(&table);
        let accounts = Accounts::fresh(&table, &metrics);
        Ok(State {
            config: ArcSwap::from_pointee(config),
            routing: ArcSwap::from_pointee(Snapshot {
                table: std::sync::Arc::new(table),
                states,
                accounts,
            }),
            wake: tokio::sync::Notify::new(),
            unrouted: CodeCounters::new(&metrics.requests, RegionName::new("none")),
            metrics,
        })
    }
}
