//! The select step of the decision: candidate regions + region states -> the regions
//! to try, in order, skipping those that are unhealthy or drained. Pure.

use crate::regions::RegionStates;
use crate::table::{RegionId, RoutingTable};

/// The serving candidates, in the policy's order: the first is tried, the rest are
/// where a failed attempt may go next.
pub fn serving<'a>(
    table: &'a RoutingTable,
    states: &'a RegionStates,
    candidates: &'a [RegionId],
) -> impl Iterator<Item = RegionId> + 'a {
    candidates
        .iter()
        .copied()
        .filter(move |&id| states.get(table, id).serving())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::regions::RegionState;

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

    #[test]
    fn all_serving_keeps_policy_order() {
        let t = table();
        let s = RegionStates::all_serving(&t);
        assert_eq!(serving(&t, &s, &ALL).collect::<Vec<_>>(), ALL);
    }

    #[test]
    fn unhealthy_and_drained_regions_are_skipped() {
        let t = table();
        let mut s = RegionStates::all_serving(&t);
        s.set(
            RegionId(0),
            RegionState {
                healthy: false,
                drained: false,
            },
        );
        s.set(
            RegionId(2),
            RegionState {
                healthy: true,
                drained: true,
            },
        );
        assert_eq!(serving(&t, &s, &ALL).collect::<Vec<_>>(), [RegionId(1)]);
    }

    #[test]
    fn nothing_serving_yields_nothing() {
        let t = table();
        let mut s = RegionStates::all_serving(&t);
        for id in ALL {
            s.set(
                id,
                RegionState {
                    healthy: false,
                    drained: false,
                },
            );
        }
        assert_eq!(serving(&t, &s, &ALL).next(), None);
    }
}
