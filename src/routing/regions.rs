//! Region states: the health, drain, weight and RTT facts the selector reads, one
//! immutable snapshot per change, indexed like the routing table it was made for.
//! Plain data: the counters live beside them (`routing::accounting::Accounts`).

use std::time::Duration;

use crate::routing::table::{RegionId, RoutingTable};

/// Health and drain are separate facts: a drained region may be healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionState {
    pub healthy: bool,
    pub drained: bool,
    /// Share of its traffic, 0..=1000: below 1000 while it ramps up after recovery.
    pub weight: u16,
    /// Round-trip time as latency steering sees it (moves with hysteresis).
    pub rtt: Option<Duration>,
    /// Held down for flapping while it passes its checks: not serving, but
    /// where a request goes when every serving candidate failed it.
    pub standby: bool,
}

impl RegionState {
    pub const SERVING: RegionState = RegionState {
        healthy: true,
        drained: false,
        weight: 1000,
        rtt: None,
        standby: false,
    };

    pub fn serving(&self) -> bool {
        self.healthy && !self.drained
    }
}

#[derive(Debug, Clone)]
pub struct RegionStates {
    table_generation: u64,
    states: Box<[RegionState]>,
    /// Some region is on standby (held down): selection looks for it.
    any_standby: bool,
}

impl RegionStates {
    /// A snapshot for `table`: one state per region, in table order.
    pub fn new(table: &RoutingTable, states: Vec<RegionState>) -> Self {
        debug_assert_eq!(states.len(), table.regions().len());
        Self {
            table_generation: table.generation(),
            any_standby: states.iter().any(|s| s.standby && !s.drained),
            states: states.into_boxed_slice(),
        }
    }

    /// Every region of the table healthy and undrained.
    pub fn all_serving(table: &RoutingTable) -> Self {
        Self::new(table, vec![RegionState::SERVING; table.regions().len()])
    }

    /// Changes one region's state in this (unpublished) snapshot.
    pub fn set(&mut self, id: RegionId, state: RegionState) {
        if let Some(s) = self.states.get_mut(usize::from(id.0)) {
            *s = state;
        }
        self.any_standby = self.states.iter().any(|s| s.standby && !s.drained);
    }

    pub fn any_standby(&self) -> bool {
        self.any_standby
    }

    /// The state of a region. A snapshot made for another table generation
    /// reads as serving rather than guessing by index (published together with
    /// its table, it never is; this only guards misuse).
    pub fn get(&self, table: &RoutingTable, id: RegionId) -> RegionState {
        if self.table_generation != table.generation() {
            return RegionState::SERVING;
        }
        self.states
            .get(usize::from(id.0))
            .copied()
            .unwrap_or(RegionState::SERVING)
    }
}
