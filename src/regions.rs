//! Region states: the health and drain facts the selector reads, one immutable
//! snapshot per change, indexed like the routing table it was made for.

use crate::table::{RegionId, RoutingTable};

/// Health and drain are separate facts: a drained region may be healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionState {
    pub healthy: bool,
    pub drained: bool,
}

impl RegionState {
    pub const SERVING: RegionState = RegionState {
        healthy: true,
        drained: false,
    };

    pub fn serving(&self) -> bool {
        self.healthy && !self.drained
    }
}

#[derive(Debug, Clone)]
pub struct RegionStates {
    table_generation: u64,
    states: Box<[RegionState]>,
}

impl RegionStates {
    /// Every region of the table healthy and undrained.
    pub fn all_serving(table: &RoutingTable) -> Self {
        Self {
            table_generation: table.generation(),
            states: vec![RegionState::SERVING; table.regions().len()].into_boxed_slice(),
        }
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
}
