//! What requests read, made from what the control plane holds: one pure
//! function from the table, each region's health and the drains to the next
//! snapshot. `Control::publish` gathers the inputs, calls it, then counts.

use std::sync::Arc;
use std::time::Duration;

use crate::routing::accounting::{Accounts, RegionAccount};
use crate::routing::regions::{RegionState, RegionStates};
use crate::routing::snapshot::Snapshot;
use crate::routing::table::RoutingTable;

/// One region's health as the publisher reads it.
#[derive(Debug, Clone)]
pub struct Health {
    /// Its state machine has it in service.
    pub serving: bool,
    /// Held down for flapping (standby: tried last).
    pub held_down: bool,
    /// Its share of traffic now, 0..=1000 (slow start, partial drain).
    pub weight: u16,
    /// The latency steering reads.
    pub rtt: Option<Duration>,
    /// Its counters and capacity, carried from snapshot to snapshot.
    pub account: Arc<RegionAccount>,
}

/// The next snapshot: `table` with, for each of its regions in order, its
/// health and whether a drain applies; the accounts carry the counters of
/// `previous` over. Pure: no clock, no lock, no metric.
pub fn snapshot(
    table: Arc<RoutingTable>,
    health: &[Health],
    drained: impl Fn(&str) -> bool,
    previous: Option<&Accounts>,
) -> Snapshot {
    debug_assert_eq!(health.len(), table.regions().len());
    let states = table
        .regions()
        .iter()
        .zip(health)
        .map(|(region, h)| RegionState {
            standby: h.held_down,
            healthy: h.serving,
            drained: drained(region.name.as_str()),
            weight: h.weight,
            rtt: h.rtt,
        })
        .collect();
    let accounts = health.iter().map(|h| h.account.clone()).collect();
    Snapshot {
        accounts: Accounts::new(&table, accounts, previous),
        states: RegionStates::new(&table, states),
        table,
    }
}

/// How many regions of each jurisdiction serve in `snapshot`, in table order.
pub fn serving_by_jurisdiction(snapshot: &Snapshot) -> Vec<usize> {
    let table = &snapshot.table;
    table
        .jurisdictions()
        .iter()
        .map(|j| {
            j.regions
                .iter()
                .filter(|&&id| snapshot.states.get(table, id).serving())
                .count()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::routing::table::RegionId;

    fn table() -> Arc<RoutingTable> {
        let toml = r#"
            [[listeners]]
            address = "127.0.0.1:0"
            [[regions]]
            name = "eu1"
            jurisdiction = "eu"
            endpoints = [{ url = "http://127.0.0.1:1" }]
            [[regions]]
            name = "eu2"
            jurisdiction = "eu"
            endpoints = [{ url = "http://127.0.0.1:2" }]
            [[regions]]
            name = "us"
            endpoints = [{ url = "http://127.0.0.1:3" }]
            [[jurisdictions]]
            name = "eu"
            strict = true
            countries = ["DE"]
            [[routes]]
            regions = ["eu1", "eu2"]
        "#;
        Arc::new(RoutingTable::compile(&Config::from_toml(toml).unwrap()).unwrap())
    }

    fn health(table: &RoutingTable, metrics: &Metrics) -> Vec<Health> {
        table
            .regions()
            .iter()
            .map(|r| Health {
                serving: true,
                held_down: false,
                weight: 1000,
                rtt: None,
                account: Arc::new(RegionAccount::new(
                    r.name.clone(),
                    metrics,
                    &r.endpoints,
                    &r.capacity,
                )),
            })
            .collect()
    }

    #[test]
    fn each_region_gets_its_health_and_drain_in_table_order() {
        let table = table();
        let metrics = Metrics::new();
        let mut h = health(&table, &metrics);
        h[1].serving = false;
        h[2].weight = 250;
        h[2].rtt = Some(Duration::from_millis(20));
        let s = snapshot(table.clone(), &h, |r| r == "eu1", None);
        let state = |i: u16| s.states.get(&table, RegionId(i));
        assert!(state(0).drained && state(0).healthy && !state(0).serving());
        assert!(!state(1).healthy && !state(1).drained);
        assert_eq!(
            (state(2).weight, state(2).rtt),
            (250, Some(Duration::from_millis(20)))
        );
        assert!(state(2).serving());
        // The strict jurisdiction has no serving region left: what the
        // jurisdiction gauge and the fleet guard read.
        assert_eq!(serving_by_jurisdiction(&s), vec![0]);
    }

    #[test]
    fn a_held_down_region_is_on_standby_and_the_counters_carry_over() {
        let table = table();
        let metrics = Metrics::new();
        let mut h = health(&table, &metrics);
        h[0].serving = false;
        h[0].held_down = true;
        let first = snapshot(table.clone(), &h, |_| false, None);
        assert!(first.states.get(&table, RegionId(0)).standby);
        assert!(first.states.any_standby());
        let next = snapshot(table.clone(), &h, |_| false, Some(&first.accounts));
        assert!(std::ptr::eq(
            first.accounts.counters(),
            next.accounts.counters()
        ));
        // Drained while held down: not a standby for selection.
        let drained = snapshot(table.clone(), &h, |r| r == "eu1", None);
        assert!(!drained.states.any_standby());
    }
}
