//! The select step of the decision: candidate regions + region states -> the regions
//! to try, in order. Skips unhealthy and drained regions, orders by measured RTT
//! for latency steering, and holds back a recovering region's share while it
//! ramps up. Pure: the caller supplies the random draw.

use crate::config::Steering;
use crate::routing::policy::Candidates;
use crate::routing::regions::RegionStates;
use crate::routing::table::{RegionId, RoutingTable};

/// Where a decided request goes, in order: the serving candidates by the
/// route's steering, the client placed in a ramp by its stable hash; in panic
/// mode, when none serves and no jurisdiction fenced the request, every
/// undrained candidate. The proxy and `/explain` both read it. The bool says
/// panic mode chose; empty means refuse.
pub fn order(
    table: &RoutingTable,
    states: &RegionStates,
    decision: &crate::routing::policy::Decision<'_>,
    client: crate::routing::identity::ClientIp,
) -> (Candidates, bool) {
    let route = decision.route;
    let regions = serving(table, states, route.steering, &decision.candidates, |r| {
        client_place(crate::routing::policy::client_hash(client), r)
    });
    if regions.is_empty() && route.panic_mode && !decision.fenced {
        let regions = panic(table, states, &decision.candidates);
        let chose = !regions.is_empty();
        return (regions, chose);
    }
    let mut regions = regions;
    if states.any_standby() {
        // Last: candidates held down for flapping that pass their checks, for
        // a request every serving candidate failed (a jurisdiction's last
        // region killed before it is ejected).
        for &id in decision.candidates.iter() {
            let s = states.get(table, id);
            if s.standby && !s.drained {
                regions.push(id);
            }
        }
    }
    (regions, false)
}

/// The serving candidates, best first: the first is tried, the rest are where a
/// failed attempt may go next. `place` gives the client's place (0..1000) in a
/// region's ramp, asked only when the first region is ramping up: the region
/// keeps the first place when the client's place is below its weight, else it
/// swaps with the second. With [`client_place`], a ramp admits each client once
/// and for good as the weight grows: clients move back one by one, never bounce.
pub fn serving(
    table: &RoutingTable,
    states: &RegionStates,
    steering: Steering,
    candidates: &[RegionId],
    place: impl FnOnce(RegionId) -> u16,
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
        if place(out[0]) >= weight {
            out.as_mut_slice().swap(0, 1);
        }
    }
    out
}

/// A client's place in `region`'s slow-start ramp, 0..1000: a hash of the client
/// (see `policy::client_hash`) and the region, so each region admits its own
/// spread of clients (rendezvous hashing) and a client's place never changes.
pub fn client_place(client: u64, region: RegionId) -> u16 {
    // splitmix64's finaliser over the pair.
    let mut z = client ^ (u64::from(region.0) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % 1000) as u16
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
    use crate::routing::regions::RegionState;
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
        serving(t, s, steering, &ALL, |_| draw).to_vec()
    }

    fn state(healthy: bool, drained: bool, weight: u16, rtt_ms: Option<u64>) -> RegionState {
        RegionState {
            standby: false,
            healthy,
            drained,
            weight,
            rtt: rtt_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn all_serving_keeps_policy_order() {
        let t = table();
        let s = RegionStates::all_serving(&t);
        assert_eq!(pick(&t, &s, Steering::Failover, 0), ALL);
    }

    #[test]
    fn unhealthy_and_drained_regions_are_skipped() {
        let t = table();
        let mut s = RegionStates::all_serving(&t);
        s.set(RegionId(0), state(false, false, 0, None));
        s.set(RegionId(2), state(true, true, 1000, None));
        assert_eq!(pick(&t, &s, Steering::Failover, 0), [RegionId(1)]);
    }

    #[test]
    fn nothing_serving_yields_nothing() {
        let t = table();
        let mut s = RegionStates::all_serving(&t);
        for id in ALL {
            s.set(id, state(false, false, 0, None));
        }
        assert!(pick(&t, &s, Steering::Failover, 0).is_empty());
    }

    #[test]
    fn latency_steering_orders_by_rtt_and_unmeasured_last() {
        let t = table();
        let mut s = RegionStates::all_serving(&t);
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
        let mut s = RegionStates::all_serving(&t);
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
    fn a_ramp_admits_each_client_once_and_for_good() {
        let t = table();
        let clients: Vec<u64> = (0..2000u64)
            .map(|c| c.wrapping_mul(0x51_7cc1_b727_220a))
            .collect();
        let mut admitted = vec![false; clients.len()];
        for weight in (0..=1000u16).step_by(50) {
            let mut s = RegionStates::all_serving(&t);
            s.set(RegionId(0), state(true, false, weight, None));
            let mut share = 0;
            for (i, &c) in clients.iter().enumerate() {
                let first = serving(&t, &s, Steering::Failover, &ALL, |r| client_place(c, r))[0];
                let now = first == RegionId(0);
                assert!(
                    now || !admitted[i],
                    "client {i} left the ramp at weight {weight}"
                );
                admitted[i] = now;
                share += usize::from(now);
            }
            let expected = clients.len() * usize::from(weight) / 1000;
            assert!(
                share.abs_diff(expected) <= clients.len() / 20,
                "weight {weight}: {share} of {} clients",
                clients.len()
            );
        }
    }

    #[test]
    fn a_ramping_region_alone_takes_everything() {
        let t = table();
        let mut s = RegionStates::all_serving(&t);
        s.set(RegionId(0), state(true, false, 10, None));
        s.set(RegionId(1), state(false, false, 0, None));
        s.set(RegionId(2), state(false, false, 0, None));
        assert_eq!(pick(&t, &s, Steering::Failover, 999), [RegionId(0)]);
    }
}
