//! The fleet's gauges and counters, registered only when `[fleet]` is set.

use prometheus::{Gauge, IntGauge};

use crate::metrics::Metrics;

/// The fleet's gauges (registered only when `[fleet]` is set).
#[derive(Debug, Clone)]
pub struct FleetMetrics {
    pub connected: IntGauge,
    pub instances: IntGauge,
    pub applied_revision: IntGauge,
    pub lag_seconds: Gauge,
    pub leases_lost: prometheus::IntCounter,
    pub history_changed: IntGauge,
}

impl FleetMetrics {
    pub(super) fn register(metrics: &Metrics) -> Self {
        let int = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric options are valid");
            metrics
                .registry()
                .register(Box::new(g.clone()))
                .expect("metric names are unique");
            g
        };
        let lag = Gauge::new(
            "georouter_fleet_lag_seconds",
            "Seconds since this instance last knew it had every drain of the fleet (0 while connected).",
        )
        .expect("metric options are valid");
        metrics
            .registry()
            .register(Box::new(lag.clone()))
            .expect("metric names are unique");
        FleetMetrics {
            connected: int(
                "georouter_fleet_connected",
                "1 while this instance reads the fleet's drains from etcd live.",
            ),
            instances: int(
                "georouter_fleet_instances",
                "Instances of the fleet alive in etcd (their leases renewed).",
            ),
            applied_revision: int(
                "georouter_fleet_applied_revision",
                "The etcd revision of the last fleet drain change this instance applied.",
            ),
            lag_seconds: lag,
            history_changed: int(
                "georouter_fleet_history_changed",
                "1 when the fleet's epoch in etcd is gone or changed (data loss, a restore from backup): nothing from etcd is applied until `georouter fleet restore`.",
            ),
            leases_lost: {
                let c = prometheus::IntCounter::new(
                    "georouter_fleet_leases_lost_total",
                    "Times this instance's lease expired or was refused and it registered again (its record vanished meanwhile).",
                )
                .expect("metric options are valid");
                metrics
                    .registry()
                    .register(Box::new(c.clone()))
                    .expect("metric names are unique");
                c
            },
        }
    }
}
