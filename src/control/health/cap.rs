//! The cap on automatic ejection: traffic may take a region out only while most
//! of each route it serves stays in, and never the last serving region of a
//! jurisdiction. When more fail at once, the router suspects itself or its
//! network, not every region. Pure.

use crate::routing::table::{RegionId, RoutingTable};

/// Why an ejection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Capped {
    #[error("{out} of the {of} regions of route {route} are already out (max_ejected_percent = {percent})")]
    Share {
        route: String,
        out: usize,
        of: usize,
        percent: u32,
    },
    #[error("it is the last serving region of jurisdiction {jurisdiction}")]
    LastInJurisdiction { jurisdiction: String },
}

/// Whether region `id` may be ejected. `out[i]` says region `i` is out of service
/// by health (down, ejected, held down); `drained[i]` that an operator drained it.
/// As Envoy's outlier detection, one region of a route may always go while none
/// is out (unless `percent` is 0).
pub fn may_eject(
    table: &RoutingTable,
    id: RegionId,
    out: &[bool],
    drained: &[bool],
    percent: u32,
) -> Result<(), Capped> {
    let serving = |r: RegionId| {
        let i = usize::from(r.0);
        !out.get(i).copied().unwrap_or(false) && !drained.get(i).copied().unwrap_or(false)
    };
    let region = table.region(id);
    if let Some(j) = &region.jurisdiction {
        let others = table
            .regions()
            .iter()
            .any(|o| o.id != id && o.jurisdiction.as_ref() == Some(j) && serving(o.id));
        if !others {
            return Err(Capped::LastInJurisdiction {
                jurisdiction: j.clone(),
            });
        }
    }
    let mut members = Vec::new();
    for route in table.routes() {
        members.clear();
        members.extend(route.candidates.iter().copied());
        for rule in route.rules.iter() {
            members.extend(rule.iter().copied());
        }
        members.sort_unstable_by_key(|r| r.0);
        members.dedup();
        if !members.contains(&id) {
            continue;
        }
        let of = members.len();
        let already = members
            .iter()
            .filter(|&&r| r != id && out.get(usize::from(r.0)).copied().unwrap_or(false))
            .count();
        let within = (already + 1) * 100 <= percent as usize * of;
        if percent == 0 || !(within || already == 0) {
            return Err(Capped::Share {
                route: route.name.to_string(),
                out: already,
                of,
                percent,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// Four regions a..d on one route; `c` and `d` form jurisdiction "eu".
    fn table() -> RoutingTable {
        let mut toml = String::from("[[listeners]]\naddress = \"127.0.0.1:0\"\n");
        for (i, r) in ["a", "b", "c", "d"].iter().enumerate() {
            let j = if i >= 2 {
                "jurisdiction = \"eu\"\n"
            } else {
                ""
            };
            toml += &format!(
                "[[regions]]\nname = \"{r}\"\n{j}endpoints = [{{ url = \"http://127.0.0.1:{}\" }}]\n",
                i + 1
            );
        }
        toml += "[[jurisdictions]]\nname = \"eu\"\ncountries = [\"DE\"]\n";
        toml += "[[routes]]\nresidency = false\nregions = [\"a\", \"b\", \"c\", \"d\"]\n";
        RoutingTable::compile(&Config::from_toml(&toml).unwrap()).unwrap()
    }

    const NONE: [bool; 4] = [false; 4];

    #[test]
    fn half_of_a_route_may_be_ejected_and_no_more() {
        let t = table();
        assert_eq!(may_eject(&t, RegionId(0), &NONE, &NONE, 50), Ok(()));
        let one_out = [true, false, false, false];
        assert_eq!(may_eject(&t, RegionId(1), &one_out, &NONE, 50), Ok(()));
        let two_out = [true, true, false, false];
        assert!(matches!(
            may_eject(&t, RegionId(2), &two_out, &NONE, 50),
            Err(Capped::Share { out: 2, of: 4, .. })
        ));
    }

    #[test]
    fn one_region_may_always_go_while_none_is_out() {
        let t = table();
        assert_eq!(may_eject(&t, RegionId(0), &NONE, &NONE, 10), Ok(()));
        assert!(may_eject(&t, RegionId(0), &NONE, &NONE, 0).is_err());
    }

    #[test]
    fn the_last_serving_region_of_a_jurisdiction_stays() {
        let t = table();
        let d_drained = [false, false, false, true];
        assert_eq!(
            may_eject(&t, RegionId(2), &NONE, &d_drained, 100),
            Err(Capped::LastInJurisdiction {
                jurisdiction: "eu".into()
            })
        );
        let d_out = [false, false, false, true];
        assert!(may_eject(&t, RegionId(2), &d_out, &NONE, 100).is_err());
        assert_eq!(may_eject(&t, RegionId(2), &NONE, &NONE, 100), Ok(()));
    }
}
