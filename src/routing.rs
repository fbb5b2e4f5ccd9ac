//! What requests read and how they are decided: the published snapshot (table,
//! region states, accounts), the request facts, policy, selection and `/explain`.
//! Pure: no I/O; every other plane reads it.

pub(crate) mod accounting;
pub(crate) mod capacity;
pub(crate) mod explain;
pub(crate) mod facts;
pub mod identity;
pub(crate) mod plan;
pub mod policy;
pub mod regions;
pub mod residency;
pub mod select;
pub(crate) mod snapshot;
pub(crate) mod state;
pub mod table;

pub use state::State;
