//! The control plane's recent events (health transitions, drains, reloads),
//! newest first, for the status page: what changed, when and why.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// How many events the journal keeps.
pub const CAPACITY: usize = 50;

/// One thing the control plane did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    /// Unix time, milliseconds.
    pub at_ms: u64,
    /// The region it concerns; empty for the router as a whole (a reload).
    pub region: String,
    /// `health`, `drain`, `undrain` or `reload`.
    pub kind: &'static str,
    /// What changed: `up -> ejected`, `drained`, `generation 4`.
    pub what: String,
    /// Why, in the words the log uses.
    pub cause: String,
}

/// The last [`CAPACITY`] events.
#[derive(Debug, Default)]
pub struct Journal {
    events: Mutex<VecDeque<Event>>,
}

impl Journal {
    pub fn record(&self, region: &str, kind: &'static str, what: String, cause: String) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if events.len() == CAPACITY {
            events.pop_back();
        }
        events.push_front(Event {
            at_ms,
            region: region.to_owned(),
            kind,
            what,
            cause,
        });
    }

    /// Newest first.
    pub fn recent(&self) -> Vec<Event> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_first_and_at_most_capacity() {
        let j = Journal::default();
        for i in 0..CAPACITY + 5 {
            j.record("eu-west", "health", format!("{i}"), String::new());
        }
        let recent = j.recent();
        assert_eq!(recent.len(), CAPACITY);
        assert_eq!(recent[0].what, format!("{}", CAPACITY + 4));
        assert_eq!(recent[CAPACITY - 1].what, "5");
    }
}
