//! The fleet policy follower: reads the pushed policy, then watches it; each
//! new one is verified (signature) and applied like a reload, or refused and
//! reported.

use super::*;

impl Control {
    /// With `fleet.policy`: applies the fleet's policy whenever it changes
    /// (validated again here; a policy that does not load is refused, recorded
    /// in this instance's acknowledgement, and the one in service stays).
    pub(super) async fn fleet_policy(self: Arc<Self>, fleet: Arc<Fleet>) {
        static LOG: crate::log_limit::Limiter = crate::log_limit::Limiter::new();
        let backoff = Backoff::default();
        let (this, fleet, backoff) = (&self, &fleet, &backoff);
        self.keep_following(
            "fleet policy watch interrupted; serving the policy last applied",
            &LOG,
            backoff,
            || this.follow_policy(fleet, backoff),
        )
        .await;
    }

    async fn follow_policy(
        self: &Arc<Self>,
        fleet: &Fleet,
        backoff: &Backoff,
    ) -> Result<(), EtcdError> {
        if fleet.history_changed() {
            return Err(history_changed(fleet));
        }
        let key = fleet.keys.policy();
        let (revision, kvs) = fleet.store.range_prefix(&key).await?;
        if let Some(kv) = kvs.into_iter().find(|kv| kv.key == key) {
            self.apply_fleet_policy(fleet, kv.value, kv.mod_revision)
                .await;
        }
        let mut watch = fleet.store.watch(&key, revision + 1).await?;
        backoff.reset();
        loop {
            let changes = next_changes(&mut watch, fleet).await?;
            let Some(changes) = changes else {
                return Ok(());
            };
            for event in changes.events {
                if let Event::Put(kv) = event {
                    if kv.key == key {
                        self.apply_fleet_policy(fleet, kv.value, kv.mod_revision)
                            .await;
                    }
                }
            }
        }
    }

    async fn apply_fleet_policy(self: &Arc<Self>, fleet: &Fleet, text: Vec<u8>, revision: i64) {
        let (current, rejected) = fleet.policy_state();
        if revision <= current || rejected.is_some_and(|r| r.revision == revision) {
            return;
        }
        let text = String::from_utf8_lossy(&text).into_owned();
        // Only a policy signed by one of this instance's own keys (from its
        // start, not from any pushed policy).
        let text = match crate::signing::verify(&text, &fleet.settings.policy_keys) {
            Ok(body) => body.to_owned(),
            Err(e) => {
                tracing::error!(target: "georouter::fleet", revision, error = %e, "a fleet policy refused");
                fleet.set_policy(revision, Err(e.to_string()));
                return;
            }
        };
        if !crate::signing::for_instance(&text, fleet.instance()) {
            // A canary stage for other instances: not this one's yet.
            return;
        }
        let trigger = format!("fleet policy at revision {revision}");
        let result = self.reload_text(text.clone(), &trigger).await;
        if result.is_ok() {
            // A restart serves it, not the bootstrap file.
            crate::fleet::keep_accepted_policy(self.state_file.as_deref(), &text, revision);
        }
        fleet.set_policy(revision, result.map(|_| ()).map_err(|e| e.to_string()));
    }
}
