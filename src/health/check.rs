//! One active health check of a region: a GET of the check path on a new
//! connection to each endpoint until one passes, with the time it took as the RTT
//! sample for latency steering.

use std::time::Duration;

use tokio::time::Instant;

use crate::blame::LocalFault;
use crate::config::{HealthCheck, Http2Tuning};
use crate::pool;
use crate::table::Region;

/// A check's outcome: passed with its round-trip time, or why it failed; or it
/// could not be made for want of the router's own resources, which says nothing
/// of the region (neither a pass nor a failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed { rtt: Duration },
    Failed { why: String },
    Local { fault: LocalFault, why: String },
}

/// Checks `region`: it passes when any endpoint answers in time with an expected
/// status. Endpoints are not taken out one by one: a request that cannot connect
/// to one goes to the region's next endpoint (`forward.rs`).
pub async fn run(region: &Region, check: &HealthCheck, tuning: &Http2Tuning) -> Outcome {
    let mut why = String::new();
    for ep in region.endpoints.iter() {
        let started = Instant::now();
        match tokio::time::timeout(check.timeout, pool::probe(region, ep, &check.path, tuning))
            .await
        {
            Ok(Ok(status)) if check.expected_status.contains(&status.as_u16()) => {
                return Outcome::Passed {
                    rtt: started.elapsed(),
                }
            }
            Ok(Ok(status)) => why = format!("{} answered {}", ep.authority, status.as_u16()),
            Ok(Err(e)) => {
                if let Some(fault) = LocalFault::in_chain(&e) {
                    return Outcome::Local {
                        fault,
                        why: e.to_string(),
                    };
                }
                why = e.to_string()
            }
            Err(_) => {
                why = format!(
                    "{} did not answer within {}",
                    ep.authority,
                    humantime::format_duration(check.timeout)
                )
            }
        }
    }
    Outcome::Failed { why }
}
