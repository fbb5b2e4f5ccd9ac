//! Region health: the per-region state machine ([`machine`]) and the active HTTP
//! check that feeds it and measures RTT ([`check`]); the cap on automatic
//! ejection ([`cap`]). The controller in
//! `control.rs` runs them and publishes what they decide.

pub(crate) mod cap;
pub(crate) mod check;
pub(crate) mod machine;
