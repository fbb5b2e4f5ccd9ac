//! One active health check of a region: a GET of the check path on a new
//! connection to every endpoint at once; the fastest pass is the RTT sample
//! for latency steering, and each endpoint's result is its own standing.

use std::future::Future as _;
use std::time::Duration;

use tokio::time::Instant;

use crate::blame::LocalFault;
use crate::config::{EndpointSpec, HealthCheck, Http2Tuning};
use crate::proxy::pool;
use crate::routing::table::Region;

/// A check's outcome: passed with its round-trip time, or why it failed; or it
/// could not be made for want of the router's own resources, which says nothing
/// of the region (neither a pass nor a failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed { rtt: Duration },
    Failed { why: String },
    Local { fault: LocalFault, why: String },
}

/// One active check of a region: every endpoint at once, each passing or not
/// (`None` when the router could not make that endpoint's check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub outcome: Outcome,
    pub endpoints: Vec<Option<bool>>,
}

/// Checks every endpoint of `region` at once. The region passes when any
/// endpoint answers in time with an expected status (its round trip is the
/// fastest passing one); each endpoint's own result takes it in or out of
/// rotation (`capacity.rs`), so one hung endpoint is seen while its sibling
/// keeps the region up.
pub async fn run(region: &Region, check: &HealthCheck, tuning: &Http2Tuning) -> Report {
    let mut checks: Vec<_> = region
        .endpoints
        .iter()
        .map(|ep| Box::pin(endpoint(region, ep, check, tuning)))
        .collect();
    let mut results: Vec<Option<Outcome>> = vec![None; checks.len()];
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, c) in checks.iter_mut().enumerate() {
            if results[i].is_none() {
                match c.as_mut().poll(cx) {
                    std::task::Poll::Ready(o) => results[i] = Some(o),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    let results: Vec<Outcome> = results.into_iter().flatten().collect();
    let endpoints = results
        .iter()
        .map(|o| match o {
            Outcome::Passed { .. } => Some(true),
            Outcome::Failed { .. } => Some(false),
            Outcome::Local { .. } => None,
        })
        .collect();
    let fastest = results
        .iter()
        .filter_map(|o| match o {
            Outcome::Passed { rtt } => Some(*rtt),
            _ => None,
        })
        .min();
    let outcome = match fastest {
        Some(rtt) => Outcome::Passed { rtt },
        None => results
            .iter()
            .find(|o| matches!(o, Outcome::Local { .. }))
            .or(results.last())
            .cloned()
            .unwrap_or(Outcome::Failed {
                why: "the region has no endpoint".to_owned(),
            }),
    };
    Report { outcome, endpoints }
}

/// One endpoint's check.
async fn endpoint(
    region: &Region,
    ep: &EndpointSpec,
    check: &HealthCheck,
    tuning: &Http2Tuning,
) -> Outcome {
    let started = Instant::now();
    match tokio::time::timeout(check.timeout, pool::probe(region, ep, &check.path, tuning)).await {
        Ok(Ok(status)) if check.expected_status.contains(&status.as_u16()) => Outcome::Passed {
            rtt: started.elapsed(),
        },
        Ok(Ok(status)) => Outcome::Failed {
            why: format!("{} answered {}", ep.authority, status.as_u16()),
        },
        Ok(Err(e)) => match LocalFault::in_chain(&e) {
            Some(fault) => Outcome::Local {
                fault,
                why: e.to_string(),
            },
            None => Outcome::Failed { why: e.to_string() },
        },
        Err(_) => Outcome::Failed {
            why: format!(
                "{} did not answer within {}",
                ep.authority,
                humantime::format_duration(check.timeout)
            ),
        },
    }
}
