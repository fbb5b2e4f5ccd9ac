//! The decision composed once: the policy (route, rule, pin, fence) and the
//! selection (regions to try, in order; panic mode) over one snapshot. The
//! proxy and `/explain` both call [`plan`], so they cannot drift apart.

use crate::routing::facts::RequestFacts;
use crate::routing::policy::{self, Candidates, Decision, Refusal};
use crate::routing::regions::RegionStates;
use crate::routing::select;
use crate::routing::table::RoutingTable;

/// Where a request goes and why.
#[derive(Debug)]
pub struct Plan<'t> {
    /// The policy's decision: route, matched rule, pin, fenced candidates.
    pub decision: Decision<'t>,
    /// The regions to try, in order; empty: refuse (503, or the resident's 503
    /// when the decision is fenced).
    pub regions: Candidates,
    /// No candidate was healthy and panic mode chose the undrained ones.
    pub panicked: bool,
}

/// The plan for a request's facts over a table and the region states made for
/// it. Pure: no I/O, no allocation beyond the fixed-size candidate lists.
pub fn plan<'t>(
    table: &'t RoutingTable,
    states: &RegionStates,
    facts: &RequestFacts<'_>,
) -> Result<Plan<'t>, Refusal> {
    let decision = policy::decide(table, facts)?;
    // A ramp admits clients by a stable hash, so each moves back once.
    let (regions, panicked) = select::order(table, states, &decision, facts.client);
    Ok(Plan {
        decision,
        regions,
        panicked,
    })
}
