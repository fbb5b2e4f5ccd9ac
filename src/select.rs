//! The select step of the decision: candidate regions + region states -> the regions
//! to try, in order. Skips unhealthy and drained regions, orders by measured RTT
//! for latency steering, and holds back a recovering region's share while it
//! ramps up. Pure: the caller supplies the random draw.

use crate::config::Steering;
use crate::policy::Candidates;
use crate::regions::RegionStates;
use crate::table::{RegionId, RoutingTable};

/// The serving candidates, best first: the first is tried, the rest are where a
/// failed attempt may go next. `draw` yields a number in 0..1000, called only
/// when the first region is ramping up: it keeps the first place with
/// probability weight/1000, else it swaps with the second.
pub fn serving(
    table: &RoutingTable,
    states: &RegionStates,
    steering: Steering,
    candidates: &[RegionId],
    draw: impl FnOnce() -> u16,
) -> Candidates {
    let mut out = Candidates::EMPTY;
    for &id in candidates {
        if states.get(table, id).serving() {
            out.push(id);
        }
    }
    if steering == Steering::Latency {
        // Stable: regions without a measurement, or equal ones, keep the written order.
        out.as_mut_slice().sort_by_key(|&id| {
            states
                .get(table, id)
                .rtt
                .unwrap_or(std::time::Duration::MAX)
        });
    }
    if out.len() >= 2 && states.get(table, out[0]).weight < 1000 {
        let weight = states.get(table, out[0]).weight;
        if draw() >= weight {
            out.as_mut_slice().swap(0, 1);
        }
    }
    out
}

/// Panic mode: when no candidate serves, the undrained ones, unhealthy or not (an
/// operator's drain still holds). Never used for fenced requests.
pub fn panic(table: &RoutingTable, states: &RegionStates, candidates: &[RegionId]) -> Candidates {
    let mut out = Candidates::EMPTY;
    for &id in candidates {
        if !states.get(table, id).drained {
            out.push(id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::regions::RegionState;
    use std::time::Duration;

    fn table() -> RoutingTable {
        let toml = r#"
            [[listeners]]
            address = "127.0.0.1:0"
            [[regions]]
            name = "a"
            endpoints = [{ url = "http://127.0.0.1:1" }]
            [[regions]]
            name = "b"
            endpoints = [{ url = "http://127.0.0.1:2" }]
            [[regions]]
            name = "c"
            endpoints = [{ url = "http://127.0.0.1:3" }]
        "#;
        RoutingTable::compile(&Config::from_toml(toml).unwrap()).unwrap()
    }

    const ALL: [RegionId; 3] = [RegionId(0), RegionId(1), RegionId(2)];

    fn pick(t: &RoutingTable, s: &RegionStates, steering: Steering, draw: u16) -> Vec<RegionId> {
        serving(t, s, steering, &ALL, || draw).to_vec()
    }

    fn state(healthy: bool, drained: bool, weight: u16, rtt_ms: Option<u64>) -> RegionState {
        RegionState {
            healthy,
            drained,
            weight,
            rtt: rtt_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn all_serving_keeps_policy_order() {
        let t = table();
        let s = RegionStates::all_serving(&t, &Metrics::new());
        assert_eq!(pick(&t, &s, Steering::Failover, 0), ALL);
    }

    #[test]
    fn unhealthy_and_drained_regions_are_skipped() {
        let t = table();
        let mut s = RegionStates::all_serving(&t, &Metrics::new());
        s.set(RegionId(0), state(false, false, 0, None));
        s.set(RegionId(2), state(true, true, 1000, None));
        assert_eq!(pick(&t, &s, Steering::Failover, 0), [RegionId(1)]);
    }

    #[test]
    fn nothing_serving_yields_nothing() {
        let t = table();
        let mut s = RegionStates::all_serving(&t, &Metrics::new());
        for id in ALL {
            s.set(id, state(false, false, 0, None));
        }
        assert!(pick(&t, &s, Steering::Failover, 0).is_empty());
    }

    #[test]
    fn latency_steering_orders_by_rtt_and_unmeasured_last() {
        let t = table();
        let mut s = RegionStates::all_serving(&t, &Metrics::new());
        s.set(RegionId(0), state(true, false, 1000, None));
        s.set(RegionId(1), state(true, false, 1000, Some(40)));
        s.set(RegionId(2), state(true, false, 1000, Some(12)));
        assert_eq!(
            pick(&t, &s, Steering::Latency, 0),
            [RegionId(2), RegionId(1), RegionId(0)]
        );
        assert_eq!(
            pick(&t, &s, Steering::Failover, 0),
            ALL,
            "only latency steering sorts"
        );
    }

    #[test]
    fn a_ramping_region_keeps_only_its_share_of_first_places() {
        let t = table();
        let mut s = RegionStates::all_serving(&t, &Metrics::new());
        s.set(RegionId(0), state(true, false, 250, None));
        let firsts = (0..1000u16)
            .filter(|&d| pick(&t, &s, Steering::Failover, d)[0] == RegionId(0))
            .count();
        assert_eq!(firsts, 250);
        assert_eq!(
            pick(&t, &s, Steering::Failover, 999),
            [RegionId(1), RegionId(0), RegionId(2)],
            "diverted requests may still fail over to it"
        );
    }

    #[test]
    fn a_ramping_region_alone_takes_everything() {
        let t = table();
        let mut s = RegionStates::all_serving(&t, &Metrics::new());
        s.set(RegionId(0), state(true, false, 10, None));
        s.set(RegionId(1), state(false, false, 0, None));
        s.set(RegionId(2), state(false, false, 0, None));
        assert_eq!(pick(&t, &s, Steering::Failover, 999), [RegionId(0)]);
    }
}
