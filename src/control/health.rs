//! Region health: its owner ([`Health`]: the records and checkers), the
//! per-region state machine ([`machine`]), the active HTTP check that feeds it
//! and measures RTT ([`check`]) and the cap on automatic ejection ([`cap`]).

pub(crate) mod cap;
pub(crate) mod check;
pub(crate) mod machine;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::AbortHandle;

use super::record::Record;
use crate::config::RegionName;
use crate::routing::table::RoutingTable;

/// The owner of region health: one record per region of the table the
/// records were made for (a reload replaces both at once), and the checker
/// tasks that feed them.
pub(crate) struct Health {
    pub(in crate::control) table: Arc<RoutingTable>,
    pub(in crate::control) regions: HashMap<RegionName, Record>,
    pub(in crate::control) checkers: Vec<AbortHandle>,
}
