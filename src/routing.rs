//! What requests read and how they are decided: the published snapshot (table,
//! region states, accounts), the request facts, policy, selection and `/explain`.
//! Pure: no I/O; every other plane reads it.

pub mod accounting;
pub mod capacity;
pub mod explain;
pub mod facts;
pub mod identity;
pub mod plan;
pub mod policy;
pub mod regions;
pub mod residency;
pub mod select;
pub mod snapshot;
pub mod state;
pub mod table;

pub use state::State;
