//! The commands around the router: `check`, the demo, drills, and the
//! simulated regions the demo and the tests run.

pub mod check;
pub mod demo;
pub mod drill;
pub mod sim;
