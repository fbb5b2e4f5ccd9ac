//! The heartbeat: this instance's lease (kept alive on its own schedule) and
//! its record on it, the acknowledgement of what it applied.

use super::*;

impl Control {
    pub(super) async fn fleet_heartbeat(self: Arc<Self>, fleet: Arc<Fleet>) {
        let mut shutdown = self.shutdown.clone();
        let ttl = fleet.settings.lease_ttl;
        let every = ttl / 3;
        let mut lease: Option<i64> = None;
        let mut had_lease = false;
        let backoff = Backoff::default();
        // The keepalive keeps its own schedule: acknowledgements made in
        // between (a drain change a second) never push it back.
        let mut renew_at = tokio::time::Instant::now() + every;
        loop {
            let step = async {
                let id = match lease {
                    Some(id) => id,
                    None => {
                        let id = fleet.store.lease_grant(ttl).await?;
                        if had_lease {
                            if let Some(m) = &fleet.metrics {
                                m.leases_lost.inc();
                            }
                        }
                        had_lease = true;
                        lease = Some(id);
                        renew_at = tokio::time::Instant::now() + every;
                        id
                    }
                };
                // One put per change and instance: the fleet's view (every
                // record) is read on the keepalive's schedule, not per change,
                // so a change costs etcd the same at 5 instances as at 500.
                fleet.report(id, &self.instance_record(&fleet)).await?;
                Ok::<i64, EtcdError>(id)
            };
            let id = tokio::select! {
                r = step => r,
                _ = shutdown.changed() => break,
            };
            let id = match id {
                Ok(id) => {
                    backoff.reset();
                    id
                }
                Err(e) => {
                    lease = None;
                    fleet.set_connected(false);
                    fleet.reset.notify_waiters();
                    static LOG: crate::log_limit::Limiter = crate::log_limit::Limiter::new();
                    if let Some(suppressed) = LOG.allow() {
                        tracing::warn!(target: "georouter::fleet", error = %e, suppressed, "fleet heartbeat failed; serving with the drains last applied");
                    }
                    if !backoff.wait(&mut shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            // Renew on schedule until the lease is lost or a new
            // acknowledgement is due.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(renew_at) => {
                        renew_at = tokio::time::Instant::now() + every;
                        fleet.refresh_gauges();
                        match fleet.store.lease_keepalive(id).await {
                            Ok(true) => {
                                // Keeps georouter_fleet_instances current: a
                                // count, not every record (at 500 instances,
                                // reading them all on every keepalive of every
                                // instance was most of etcd's work).
                                let _ = fleet.count_members().await;
                                continue;
                            }
                            Ok(false) => {
                                tracing::warn!(target: "georouter::fleet", "this instance's lease expired; registering again");
                                lease = None;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    _ = fleet.applied_changed.notified() => break,
                    _ = shutdown.changed() => {
                        let _ = fleet.store.lease_revoke(id).await;
                        return;
                    }
                }
            }
        }
        if let Some(id) = lease {
            let _ = fleet.store.lease_revoke(id).await;
        }
    }

    /// What this instance says of itself.
    fn instance_record(&self, fleet: &Fleet) -> InstanceRecord {
        let health = self.health();
        let (refused, drained) = self.drains.read(|d| {
            let drained: Vec<String> = d.iter().map(|(r, _)| r.clone()).collect();
            (d.refused(), drained)
        });
        let regions = health
            .regions
            .iter()
            .map(|(name, rec)| {
                let drained = drained.iter().any(|r| r == name.as_str());
                let phase = rec.machine.phase().name();
                let view = if drained {
                    format!("{phase}, drained")
                } else if let Some((_, j)) = refused.iter().find(|(r, _)| *r == name.as_str()) {
                    format!("{phase}, drain refused (last of {j})")
                } else {
                    phase.to_owned()
                };
                (name.to_string(), view)
            })
            .collect();
        let (policy_revision, policy_rejected) = fleet.policy_state();
        InstanceRecord {
            history_changed: fleet.history_changed(),
            epoch: fleet.epoch(),
            policy_revision,
            policy_rejected,
            instance: fleet.instance().to_owned(),
            applied_revision: fleet.applied(),
            policy_generation: self.generation.load(std::sync::atomic::Ordering::Relaxed),
            regions,
            at_ms: now_ms(),
        }
    }
}
