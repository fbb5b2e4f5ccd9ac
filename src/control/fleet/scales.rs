//! The partial-drain follower: the fleet's `capacity/` keys, read then
//! watched; partial drains held during an outage written back unless the
//! fleet's are newer.

use super::*;

impl Control {
    /// Applies the fleet's partial drains whenever they change. Fail static: a
    /// partial drain ends only by a newer record (keep = 1), never because a
    /// read no longer shows it.
    pub(super) async fn fleet_scales(self: Arc<Self>, fleet: Arc<Fleet>) {
        static LOG: crate::log_limit::Limiter = crate::log_limit::Limiter::new();
        let backoff = Backoff::default();
        let (this, fleet, backoff) = (&self, &fleet, &backoff);
        self.keep_following(
            "fleet partial-drain watch interrupted; serving with those last applied",
            &LOG,
            backoff,
            || this.follow_scales(fleet, backoff),
        )
        .await;
    }

    async fn follow_scales(&self, fleet: &Fleet, backoff: &Backoff) -> Result<(), EtcdError> {
        if fleet.history_changed() {
            return Err(history_changed(fleet));
        }
        let dir = fleet.keys.scales();
        let (revision, kvs) = fleet.store.range_prefix(&dir).await?;
        let mut all = BTreeMap::new();
        for kv in &kvs {
            if let Some((region, scale)) = read_scale(fleet, &dir, kv) {
                all.insert(region.to_owned(), scale);
            }
        }
        // Partial drains made here while etcd was unreachable go to the fleet
        // unless the fleet's is newer.
        let regions: Vec<String> = self
            .health()
            .table
            .regions()
            .iter()
            .map(|r| r.name.to_string())
            .collect();
        for region in regions {
            let Some(mine) = self.scale_of(&region) else {
                continue;
            };
            if mine.scope != crate::drains::Scope::Pending {
                continue;
            }
            match all.get(&region) {
                Some(theirs) if theirs.at_ms > mine.since * 1000 => {
                    tracing::warn!(target: "georouter::fleet", %region, "a partial drain held during the etcd outage is older than the fleet's; the fleet's wins");
                }
                _ => {
                    let record = FleetScale {
                        keep: mine.keep,
                        by: mine.by.clone(),
                        instance: fleet.instance().to_owned(),
                        at_ms: mine.since * 1000,
                    };
                    fleet.write_scale(&region, &record).await?;
                    tracing::info!(target: "georouter::fleet", %region, keep = mine.keep, "a partial drain held during the etcd outage is now the fleet's");
                    all.insert(region, record);
                }
            }
        }
        for (region, scale) in &all {
            self.apply_fleet_scale(region, scale);
        }
        let mut watch = fleet.store.watch(&dir, revision + 1).await?;
        backoff.reset();
        loop {
            let Some(changes) = next_changes(&mut watch, fleet).await? else {
                return Ok(());
            };
            for event in changes.events {
                if let Event::Put(kv) = event {
                    if let Some((region, scale)) = read_scale(fleet, &dir, &kv) {
                        self.apply_fleet_scale(region, &scale);
                    }
                }
            }
        }
    }

    fn apply_fleet_scale(&self, region: &str, scale: &FleetScale) {
        let by = if scale.instance.is_empty() {
            scale.by.clone()
        } else {
            format!("{} via {}", scale.by, scale.instance)
        };
        let kept = self.apply_scale(
            region,
            scale.keep(),
            &by,
            crate::drains::Scope::Fleet,
            scale.at_ms / 1000,
        );
        if let Some(e) = kept {
            tracing::warn!(target: "georouter::fleet", %region, error = %e, "a partial drain applies but could not be written to the state file");
        }
    }
}
