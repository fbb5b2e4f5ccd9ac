//! What one request reads: a routing table and the region states made for it,
//! published together so no decision sees one generation's table with another's
//! states.

use std::sync::Arc;

use crate::routing::accounting::Accounts;
use crate::routing::regions::RegionStates;
use crate::routing::table::RoutingTable;

/// One consistent generation of the data plane's inputs, swapped whole.
#[derive(Debug)]
pub struct Snapshot {
    pub table: Arc<RoutingTable>,
    /// Plain data: what the decision reads.
    pub states: RegionStates,
    /// The regions' counters, beside the states: what forwarding writes.
    pub accounts: Accounts,
}
