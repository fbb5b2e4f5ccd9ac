//! File descriptors: the router raises its soft limit to the hard one at start
//! and keeps `max_connections` within what the limit can carry (each client
//! connection may need an upstream one, plus checks, listeners and headroom), so
//! that at the limit it stops accepting instead of failing its own checks.

/// What start-up found and decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The soft limit in force after raising it.
    pub limit: u64,
    /// Descriptors kept for listeners, health checks, the admin API, files.
    pub reserved: u64,
    /// Client connections admitted at once.
    pub max_connections: usize,
    /// Whether `max_connections` was lowered to fit.
    pub clamped: bool,
}

/// Connections the admin listener serves at once (past it, newcomers are
/// closed): counted in the reserve, so no admin flood takes client descriptors.
pub const ADMIN_CONNECTIONS: usize = 64;

/// Descriptors kept aside besides two per client connection: `endpoints` health
/// checks at a time, the listeners, the admin listener's connections, and a
/// fixed margin for logs, the state file and the geo database.
pub fn reserved(endpoints: usize, listeners: usize) -> u64 {
    64 + ADMIN_CONNECTIONS as u64 + 2 * endpoints as u64 + listeners as u64
}

/// The budget for `wanted` client connections under a soft limit of `limit`.
pub fn budget(limit: u64, wanted: usize, endpoints: usize, listeners: usize) -> Budget {
    let reserved = reserved(endpoints, listeners);
    let fits = usize::try_from(limit.saturating_sub(reserved) / 2)
        .unwrap_or(usize::MAX)
        .max(1);
    Budget {
        limit,
        reserved,
        max_connections: wanted.min(fits),
        clamped: wanted > fits,
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (where the platform has
/// one) and returns the budget for `wanted` connections under it.
pub fn raise_and_budget(wanted: usize, endpoints: usize, listeners: usize) -> Budget {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the descriptor limit; keeping the current one");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    let b = budget(limit, wanted, endpoints, listeners);
    if b.clamped {
        tracing::warn!(
            descriptors = b.limit,
            reserved = b.reserved,
            wanted,
            max_connections = b.max_connections,
            "server.max_connections lowered to fit the descriptor limit (two per connection: client and region); raise LimitNOFILE / ulimit -n to admit more"
        );
    } else {
        tracing::info!(
            descriptors = b.limit,
            reserved = b.reserved,
            max_connections = b.max_connections,
            "descriptor budget"
        );
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_clamped_to_two_descriptors_each_after_the_reserve() {
        let b = budget(1024, 10_000, 4, 1);
        assert_eq!(b.reserved, 64 + 64 + 8 + 1);
        assert_eq!(b.max_connections, (1024 - 137) / 2);
        assert!(b.clamped);
    }

    #[test]
    fn a_limit_with_room_leaves_the_setting_alone() {
        let b = budget(1 << 20, 10_000, 4, 1);
        assert_eq!((b.max_connections, b.clamped), (10_000, false));
    }

    #[test]
    fn a_tiny_limit_still_admits_one() {
        assert_eq!(budget(10, 100, 4, 1).max_connections, 1);
    }
}
