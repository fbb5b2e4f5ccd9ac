//! The tries one request left behind, in order: the region, the endpoint and
//! why it was left, for the access log. Fixed size, no allocation: a request
//! that fails over more than [`CAP`] times keeps the first ones and a count.

use crate::blame::FailureKind;
use crate::routing::table::{RegionId, RoutingTable};

/// How many tries are kept.
pub const CAP: usize = 6;

/// Why a try was left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The region failed it.
    Failed(FailureKind),
    /// The region left service while the request waited.
    LeftService,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Failed(kind) => kind.as_str(),
            Why::LeftService => "left_service",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    pub region: RegionId,
    pub endpoint: u16,
    pub why: Why,
}

const NONE: Left = Left {
    region: RegionId(0),
    endpoint: 0,
    why: Why::LeftService,
};

#[derive(Debug, Clone, Copy)]
pub struct Trail {
    tries: [Left; CAP],
    /// Tries left in all (may exceed `CAP`).
    len: u16,
}

impl Default for Trail {
    fn default() -> Self {
        Trail {
            tries: [NONE; CAP],
            len: 0,
        }
    }
}

impl Trail {
    pub fn push(&mut self, region: RegionId, endpoint: usize, why: Why) {
        if let Some(slot) = self.tries.get_mut(usize::from(self.len)) {
            *slot = Left {
                region,
                endpoint: u16::try_from(endpoint).unwrap_or(u16::MAX),
                why,
            };
        }
        self.len = self.len.saturating_add(1);
    }

    /// The tries kept, in order.
    pub fn tries(&self) -> &[Left] {
        &self.tries[..usize::from(self.len).min(CAP)]
    }

    /// Tries left beyond those kept.
    pub fn more(&self) -> u16 {
        self.len.saturating_sub(CAP as u16)
    }

    /// `region/host:port why` for each try, space-separated (`-`: none), as
    /// `table` names them.
    pub fn render(&self, table: &RoutingTable) -> String {
        if self.len == 0 {
            return "-".to_owned();
        }
        let mut out = String::new();
        for (i, t) in self.tries().iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            let region = table.region(t.region);
            out.push_str(region.name.as_str());
            if let Some(ep) = region.endpoints.get(usize::from(t.endpoint)) {
                out.push('/');
                out.push_str(ep.authority.as_str());
            }
            out.push(':');
            out.push_str(t.why.as_str());
        }
        if self.more() > 0 {
            out.push_str(&format!(" (+{} more)", self.more()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_tries_in_order_and_counts_the_rest() {
        let mut t = Trail::default();
        assert!(t.tries().is_empty());
        for i in 0..CAP + 2 {
            t.push(RegionId(i as u16), i, Why::Failed(FailureKind::Reset));
        }
        assert_eq!(t.tries().len(), CAP);
        assert_eq!(t.tries()[0].region, RegionId(0));
        assert_eq!(t.tries()[CAP - 1].endpoint, (CAP - 1) as u16);
        assert_eq!(t.more(), 2);
    }
}
