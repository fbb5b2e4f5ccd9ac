//! Region states: the health, drain, weight and RTT facts the selector reads, one
//! immutable snapshot per change, indexed like the routing table it was made for;
//! with each region's data-plane counters.

use std::sync::Arc;
use std::time::Duration;

use crate::accounting::{RegionAccount, TableCounters};
use crate::metrics::Metrics;
use crate::table::{RegionId, RoutingTable};

/// Health and drain are separate facts: a drained region may be healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionState {
    pub healthy: bool,
    pub drained: bool,
    /// Share of its traffic, 0..=1000: below 1000 while it ramps up after recovery.
    pub weight: u16,
    /// Round-trip time as latency steering sees it (moves with hysteresis).
    pub rtt: Option<Duration>,
}

impl RegionState {
    pub const SERVING: RegionState = RegionState {
        healthy: true,
        drained: false,
        weight: 1000,
        rtt: None,
    };

    pub fn serving(&self) -> bool {
        self.healthy && !self.drained
    }
}

#[derive(Debug, Clone)]
pub struct RegionStates {
    table_generation: u64,
    states: Box<[RegionState]>,
    accounts: Box<[Arc<RegionAccount>]>,
    /// Failover and refusal counters of the table: kept from one snapshot to the
    /// next while the table stays.
    counters: Arc<TableCounters>,
}

impl RegionStates {
    /// A snapshot for `table`: one state and one account per region, in table order;
    /// `previous`'s table counters if it was made for the same table.
    pub fn new(
        table: &RoutingTable,
        states: Vec<RegionState>,
        accounts: Vec<Arc<RegionAccount>>,
        previous: Option<&RegionStates>,
    ) -> Self {
        debug_assert_eq!(states.len(), table.regions().len());
        debug_assert_eq!(accounts.len(), table.regions().len());
        Self {
            table_generation: table.generation(),
            states: states.into_boxed_slice(),
            accounts: accounts.into_boxed_slice(),
            counters: match previous {
                Some(p) => p.counters.for_table(table),
                None => Arc::new(TableCounters::new(table)),
            },
        }
    }

    /// Every region of the table healthy and undrained, with new accounts.
    pub fn all_serving(table: &RoutingTable, metrics: &Metrics) -> Self {
        let accounts = table
            .regions()
            .iter()
            .map(|r| Arc::new(RegionAccount::new(r.name.clone(), metrics)))
            .collect();
        Self::new(
            table,
            vec![RegionState::SERVING; table.regions().len()],
            accounts,
            None,
        )
    }

    /// Changes one region's state in this (unpublished) snapshot.
    pub fn set(&mut self, id: RegionId, state: RegionState) {
        if let Some(s) = self.states.get_mut(usize::from(id.0)) {
            *s = state;
        }
    }

    /// The state of a region. A snapshot made for another table generation (the
    /// instant between two swaps) reads as serving rather than guessing by index.
    pub fn get(&self, table: &RoutingTable, id: RegionId) -> RegionState {
        if self.table_generation != table.generation() {
            return RegionState::SERVING;
        }
        self.states
            .get(usize::from(id.0))
            .copied()
            .unwrap_or(RegionState::SERVING)
    }

    /// The counters of a region of `table`; found by name during a swap.
    pub fn account(&self, table: &RoutingTable, id: RegionId) -> Option<&RegionAccount> {
        if self.table_generation == table.generation() {
            return self.accounts.get(usize::from(id.0)).map(|a| &**a);
        }
        let name = &table.region(id).name;
        self.accounts.iter().find(|a| a.name == *name).map(|a| &**a)
    }

    /// The table's failover and refusal counters.
    pub fn counters(&self) -> &TableCounters {
        &self.counters
    }

    /// Every account, in table order.
    pub fn accounts(&self) -> &[Arc<RegionAccount>] {
        &self.accounts
    }
}
