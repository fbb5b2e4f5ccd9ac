//! Connection pressure: when every connection slot is taken, the connections
//! that do nothing make room for newcomers (those that never sent a complete
//! request head first, then idle keep-alives, oldest first, as nginx reuses
//! idle keep-alive connections); and an optional cap per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::time::Instant;

use crate::edge::activity::Activity;

/// Every open client connection, for choosing which to close under pressure.
#[derive(Debug, Default)]
pub struct Pressure {
    conns: Mutex<HashMap<u64, Arc<Tracked>>>,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    next: AtomicU64,
    /// Connections per client address at most (0: no cap).
    max_per_ip: u32,
    /// Connections closed to make room, and refused by the per-address cap.
    pub reclaimed: AtomicU64,
    pub refused_per_ip: AtomicU64,
}

/// One open connection as pressure sees it.
#[derive(Debug)]
pub struct Tracked {
    id: u64,
    ip: IpAddr,
    since: Instant,
    /// Set once the connection is open (PROXY header, TLS and first bytes read).
    activity: OnceLock<Arc<Activity>>,
    closing: AtomicBool,
    waker: atomic_waker::AtomicWaker,
}

impl Tracked {
    /// The connection's activity, once it is open.
    pub fn opened(&self, activity: Arc<Activity>) {
        let _ = self.activity.set(activity);
    }

    /// Ready once the connection is chosen to make room: one flag read and a
    /// waker kept, per poll of its connection.
    pub fn poll_closed(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.closing.load(Ordering::Acquire) {
            return std::task::Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.closing.load(Ordering::Acquire) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    /// How much room closing it would take from a client: 0 for one that never
    /// completed a request head, 1 for an idle keep-alive, `None` for one with
    /// a request in flight.
    fn idleness(&self) -> Option<u8> {
        match self.activity.get() {
            None => Some(0),
            Some(a) => match a.quiet_mark()? {
                0 => Some(0),
                _ => Some(1),
            },
        }
    }
}

/// A connection's place in [`Pressure`], left when dropped.
#[derive(Debug)]
pub struct Registration {
    pressure: Arc<Pressure>,
    pub tracked: Arc<Tracked>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let t = &self.tracked;
        self.pressure
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&t.id);
        if self.pressure.max_per_ip > 0 {
            let mut per_ip = self
                .pressure
                .per_ip
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(n) = per_ip.get_mut(&t.ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&t.ip);
                }
            }
        }
    }
}

impl Pressure {
    pub fn new(max_per_ip: u32) -> Self {
        Self {
            max_per_ip,
            ..Self::default()
        }
    }

    /// Registers a new connection from `ip`; `None` when that address already
    /// has `max_per_ip` connections (the caller closes it).
    pub fn register(self: &Arc<Self>, ip: IpAddr) -> Option<Registration> {
        if self.max_per_ip > 0 {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                self.refused_per_ip.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            *n += 1;
        }
        let tracked = Arc::new(Tracked {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            ip,
            since: Instant::now(),
            activity: OnceLock::new(),
            closing: AtomicBool::new(false),
            waker: atomic_waker::AtomicWaker::new(),
        });
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tracked.id, tracked.clone());
        Some(Registration {
            pressure: self.clone(),
            tracked,
        })
    }

    /// Every slot is taken: closes the connection that does least, the one
    /// that never completed a request head before an idle keep-alive, the
    /// oldest first. False when every connection has a request in flight.
    pub fn reclaim(&self) -> bool {
        let victim = {
            let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            conns
                .values()
                .filter(|t| !t.closing.load(Ordering::Relaxed))
                .filter_map(|t| Some(((t.idleness()?, t.since), t)))
                .min_by_key(|(k, _)| *k)
                .map(|(_, t)| t.clone())
        };
        let Some(t) = victim else {
            return false;
        };
        t.closing.store(true, Ordering::Release);
        t.waker.wake();
        self.reclaimed.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn header_less_connections_go_first_then_idle_ones_then_none() {
        let p = Arc::new(Pressure::new(0));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let busy = p.register(ip).unwrap();
        let a = Arc::new(Activity::new());
        let _request = a.begin();
        busy.tracked.opened(a.clone());
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let idle = p.register(ip).unwrap();
        let served = Arc::new(Activity::new());
        drop(served.begin());
        idle.tracked.opened(served);
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let silent = p.register(ip).unwrap();
        assert!(p.reclaim());
        assert!(
            silent.tracked.closing.load(Ordering::Relaxed),
            "header-less first"
        );
        assert!(p.reclaim());
        assert!(idle.tracked.closing.load(Ordering::Relaxed), "then idle");
        assert!(!p.reclaim(), "a connection with a request in flight stays");
        drop(busy);
    }

    #[test]
    fn the_per_address_cap_counts_open_connections() {
        let p = Arc::new(Pressure::new(2));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = p.register(ip).unwrap();
        let _b = p.register(ip).unwrap();
        assert!(p.register(ip).is_none());
        assert!(p.register("192.0.2.2".parse().unwrap()).is_some());
        drop(a);
        assert!(p.register(ip).is_some());
    }
}
