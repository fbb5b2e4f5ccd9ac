//! Where a fleet keeps what it shares, as a seam: etcd's data model (one
//! revision counter, keys with their last revision, leases, prefix watches)
//! behind [`FleetStore`], kept by etcd in service and in memory in unit tests.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::etcd::EtcdError;

/// One key as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
}

/// A change a watch saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(Kv),
    Delete { key: String, mod_revision: i64 },
}

/// One step of a transaction's success branch.
#[derive(Debug, Clone)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<i64>,
    },
}

/// A transaction's guard: the key's last modification is at `mod_revision` (0:
/// the key does not exist).
#[derive(Debug, Clone)]
pub struct Unchanged {
    pub key: String,
    pub mod_revision: i64,
}

/// What one message of a watch carried.
#[derive(Debug, Default)]
pub struct Changes {
    /// The revision the store was at when it sent them.
    pub revision: i64,
    pub events: Vec<Event>,
}

/// A store call's answer, to come.
pub type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, EtcdError>> + Send + 'a>>;

/// The calls a fleet makes: reads, puts and guarded transactions over one
/// revision counter, leases, and watches from a revision.
pub trait FleetStore: Send + Sync + std::fmt::Debug {
    /// Every key under `prefix`, and the revision they were read at.
    fn range_prefix<'a>(&'a self, prefix: &'a str) -> Answer<'a, (i64, Vec<Kv>)>;
    /// How many keys are under `prefix` (no values sent).
    fn count_prefix<'a>(&'a self, prefix: &'a str) -> Answer<'a, i64>;
    /// Puts `value` at `key` (bound to `lease` if given); the new revision.
    fn put<'a>(&'a self, key: &'a str, value: &'a [u8], lease: Option<i64>) -> Answer<'a, i64>;
    /// Runs `ops` if every key in `guards` is unchanged; whether it ran, and
    /// the revision after.
    fn txn<'a>(&'a self, guards: &'a [Unchanged], ops: &'a [Op]) -> Answer<'a, (bool, i64)>;
    /// A lease of `ttl`; its id.
    fn lease_grant(&self, ttl: Duration) -> Answer<'_, i64>;
    /// Renews a lease; false when it has expired.
    fn lease_keepalive(&self, id: i64) -> Answer<'_, bool>;
    /// Ends a lease and its keys at once (a clean shutdown).
    fn lease_revoke(&self, id: i64) -> Answer<'_, ()>;
    /// Watches every key under `prefix` from `start` (a revision).
    fn watch<'a>(&'a self, prefix: &'a str, start: i64) -> Answer<'a, Box<dyn WatchStream>>;
}

/// A watch's stream of changes.
pub trait WatchStream: Send {
    /// The next batch of changes; `None` when the store closed the stream.
    fn next(&mut self) -> Answer<'_, Option<Changes>>;
}

/// A store in this process, with etcd's semantics for what a fleet uses:
/// revisions start at 1 and move once per write, a transaction compares
/// `mod_revision`, a lease's keys go when it expires (on the tokio clock), a
/// watch replays from its start revision. Each [`MemoryStore::client`] has its
/// own link: [`MemoryStore::set_reachable`] cuts one instance off (a
/// partition); [`MemoryStore::wipe`] plays a data loss for all.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Memory>>,
    /// This client's link (its calls fail and its watches break while down).
    up: Arc<AtomicBool>,
    id: u64,
    /// Reads (ranges) this client made.
    reads: Arc<AtomicU64>,
}

/// Client ids of the handles on one store.
static CLIENTS: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
struct Memory {
    revision: i64,
    keys: BTreeMap<String, Kv>,
    /// Lease id -> (ttl, expiry).
    leases: HashMap<i64, (Duration, Instant)>,
    next_lease: i64,
    /// Every change, for a watch that starts in the past.
    history: Vec<(i64, Event)>,
    /// Client id, prefix, where its changes go.
    watchers: Vec<(u64, String, mpsc::UnboundedSender<Changes>)>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            inner: Arc::new(Mutex::new(Memory::empty(1))),
            up: Arc::new(AtomicBool::new(true)),
            id: CLIENTS.fetch_add(1, Ordering::Relaxed),
            reads: Arc::default(),
        }
    }
}

impl Memory {
    fn empty(next_lease: i64) -> Memory {
        Memory {
            revision: 1,
            keys: BTreeMap::new(),
            leases: HashMap::new(),
            next_lease,
            history: Vec::new(),
            watchers: Vec::new(),
        }
    }

    fn unreachable() -> EtcdError {
        EtcdError::Unreachable {
            endpoints: "memory".to_owned(),
            last: "partitioned".to_owned(),
        }
    }

    /// Ends expired leases (their keys deleted at one revision).
    fn expire(&mut self) {
        let now = Instant::now();
        let gone: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.end_lease(id);
        }
    }

    fn end_lease(&mut self, id: i64) {
        self.leases.remove(&id);
        let keys: Vec<String> = self
            .keys
            .values()
            .filter(|kv| kv.lease == id)
            .map(|kv| kv.key.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        self.revision += 1;
        let events = keys
            .into_iter()
            .map(|key| {
                self.keys.remove(&key);
                Event::Delete {
                    key,
                    mod_revision: self.revision,
                }
            })
            .collect();
        self.publish(events);
    }

    /// Writes `ops` at one new revision.
    fn apply(&mut self, ops: &[Op]) -> Result<i64, EtcdError> {
        for Op::Put { lease, .. } in ops {
            if let Some(l) = lease.filter(|l| !self.leases.contains_key(l)) {
                return Err(EtcdError::Refused {
                    call: "put",
                    message: format!("requested lease not found ({l})"),
                });
            }
        }
        self.revision += 1;
        let events = ops
            .iter()
            .map(|Op::Put { key, value, lease }| {
                let kv = Kv {
                    key: key.clone(),
                    value: value.clone(),
                    mod_revision: self.revision,
                    lease: lease.unwrap_or(0),
                };
                self.keys.insert(key.clone(), kv.clone());
                Event::Put(kv)
            })
            .collect();
        self.publish(events);
        Ok(self.revision)
    }

    fn publish(&mut self, events: Vec<Event>) {
        let revision = self.revision;
        for (_, prefix, tx) in &self.watchers {
            let mine: Vec<Event> = events
                .iter()
                .filter(|e| key_of(e).starts_with(prefix.as_str()))
                .cloned()
                .collect();
            if !mine.is_empty() {
                let _ = tx.send(Changes {
                    revision,
                    events: mine,
                });
            }
        }
        self.watchers.retain(|(_, _, tx)| !tx.is_closed());
        self.history
            .extend(events.into_iter().map(|e| (revision, e)));
    }
}

fn key_of(e: &Event) -> &str {
    match e {
        Event::Put(kv) => &kv.key,
        Event::Delete { key, .. } => key,
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Another client of the same store, with its own link.
    pub fn client(&self) -> MemoryStore {
        MemoryStore {
            inner: self.inner.clone(),
            up: Arc::new(AtomicBool::new(true)),
            id: CLIENTS.fetch_add(1, Ordering::Relaxed),
            reads: Arc::default(),
        }
    }

    /// Reads (ranges and counts) this client has made.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Cuts (false) or restores (true) this client's link: its calls fail as
    /// unreachable and its open watches break.
    pub fn set_reachable(&self, up: bool) {
        let mut m = self.inner.lock().expect("memory store lock");
        self.up.store(up, Ordering::Relaxed);
        if !up {
            m.watchers.retain(|(client, _, _)| *client != self.id);
        }
    }

    /// Loses everything, as an etcd restarted empty: revision 1, no key, no
    /// lease; open watches break.
    pub fn wipe(&self) {
        let mut m = self.inner.lock().expect("memory store lock");
        let next_lease = m.next_lease;
        *m = Memory::empty(next_lease);
    }

    /// Runs `f` over the store if it is reachable, after expiring leases.
    fn with<T>(&self, f: impl FnOnce(&mut Memory) -> Result<T, EtcdError>) -> Result<T, EtcdError> {
        let mut m = self.inner.lock().expect("memory store lock");
        if !self.up.load(Ordering::Relaxed) {
            return Err(Memory::unreachable());
        }
        m.expire();
        f(&mut m)
    }
}

impl FleetStore for MemoryStore {
    fn count_prefix<'a>(&'a self, prefix: &'a str) -> Answer<'a, i64> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let r = self.with(|m| {
            Ok(m.keys
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .count() as i64)
        });
        Box::pin(std::future::ready(r))
    }

    fn range_prefix<'a>(&'a self, prefix: &'a str) -> Answer<'a, (i64, Vec<Kv>)> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let r = self.with(|m| {
            let kvs = m
                .keys
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, kv)| kv.clone())
                .collect();
            Ok((m.revision, kvs))
        });
        Box::pin(std::future::ready(r))
    }

    fn put<'a>(&'a self, key: &'a str, value: &'a [u8], lease: Option<i64>) -> Answer<'a, i64> {
        let op = Op::Put {
            key: key.to_owned(),
            value: value.to_vec(),
            lease,
        };
        Box::pin(std::future::ready(self.with(|m| m.apply(&[op]))))
    }

    fn txn<'a>(&'a self, guards: &'a [Unchanged], ops: &'a [Op]) -> Answer<'a, (bool, i64)> {
        let r = self.with(|m| {
            let holds = guards
                .iter()
                .all(|g| m.keys.get(&g.key).map_or(0, |kv| kv.mod_revision) == g.mod_revision);
            if !holds {
                return Ok((false, m.revision));
            }
            Ok((true, m.apply(ops)?))
        });
        Box::pin(std::future::ready(r))
    }

    fn lease_grant(&self, ttl: Duration) -> Answer<'_, i64> {
        let r = self.with(|m| {
            let id = m.next_lease;
            m.next_lease += 1;
            let ttl = ttl.max(Duration::from_secs(1));
            m.leases.insert(id, (ttl, Instant::now() + ttl));
            Ok(id)
        });
        Box::pin(std::future::ready(r))
    }

    fn lease_keepalive(&self, id: i64) -> Answer<'_, bool> {
        let r = self.with(|m| {
            Ok(match m.leases.get_mut(&id) {
                Some((ttl, deadline)) => {
                    *deadline = Instant::now() + *ttl;
                    true
                }
                None => false,
            })
        });
        Box::pin(std::future::ready(r))
    }

    fn lease_revoke(&self, id: i64) -> Answer<'_, ()> {
        Box::pin(std::future::ready(self.with(|m| {
            m.end_lease(id);
            Ok(())
        })))
    }

    fn watch<'a>(&'a self, prefix: &'a str, start: i64) -> Answer<'a, Box<dyn WatchStream>> {
        let r = self.with(|m| {
            let (tx, rx) = mpsc::unbounded_channel();
            // The past first, one message per revision, as etcd sends it.
            let mut past: Vec<Changes> = Vec::new();
            for (revision, e) in m.history.iter().filter(|(r, _)| *r >= start) {
                if !key_of(e).starts_with(prefix) {
                    continue;
                }
                match past.last_mut() {
                    Some(c) if c.revision == *revision => c.events.push(e.clone()),
                    _ => past.push(Changes {
                        revision: *revision,
                        events: vec![e.clone()],
                    }),
                }
            }
            for c in past {
                let _ = tx.send(c);
            }
            m.watchers.push((self.id, prefix.to_owned(), tx));
            Ok(Box::new(MemoryWatch { rx }) as Box<dyn WatchStream>)
        });
        Box::pin(std::future::ready(r))
    }
}

/// A watch on a [`MemoryStore`]: broken when the store is cut off or wiped.
struct MemoryWatch {
    rx: mpsc::UnboundedReceiver<Changes>,
}

impl WatchStream for MemoryWatch {
    fn next(&mut self) -> Answer<'_, Option<Changes>> {
        Box::pin(async move {
            match self.rx.recv().await {
                Some(c) => Ok(Some(c)),
                None => Err(EtcdError::Unreachable {
                    endpoints: "memory".to_owned(),
                    last: "the watch broke".to_owned(),
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Op {
        Op::Put {
            key: key.to_owned(),
            value: value.as_bytes().to_vec(),
            lease: None,
        }
    }

    #[tokio::test]
    async fn a_transaction_runs_only_over_unchanged_keys() {
        let s = MemoryStore::new();
        let r1 = s.put("/d/a", b"1", None).await.unwrap();
        let guard = |rev| Unchanged {
            key: "/d/a".to_owned(),
            mod_revision: rev,
        };
        let (ran, r2) = s.txn(&[guard(r1)], &[put("/d/b", "2")]).await.unwrap();
        assert!(ran && r2 == r1 + 1);
        s.put("/d/a", b"3", None).await.unwrap();
        let (ran, _) = s.txn(&[guard(r1)], &[put("/d/b", "4")]).await.unwrap();
        assert!(!ran, "the guard's key changed since");
        let absent = Unchanged {
            key: "/d/none".to_owned(),
            mod_revision: 0,
        };
        assert!(s.txn(&[absent], &[]).await.unwrap().0);
        let (_, kvs) = s.range_prefix("/d/").await.unwrap();
        let values: Vec<&[u8]> = kvs.iter().map(|kv| kv.value.as_slice()).collect();
        assert_eq!(values, [b"3".as_slice(), b"2".as_slice()]);
    }

    #[tokio::test]
    async fn a_watch_replays_from_its_revision_then_follows() {
        let s = MemoryStore::new();
        let r1 = s.put("/d/a", b"1", None).await.unwrap();
        s.put("/other", b"x", None).await.unwrap();
        let mut w = s.watch("/d/", r1).await.unwrap();
        let first = w.next().await.unwrap().unwrap();
        assert_eq!((first.revision, first.events.len()), (r1, 1));
        let r3 = s.put("/d/b", b"2", None).await.unwrap();
        assert_eq!(w.next().await.unwrap().unwrap().revision, r3);
        // Another instance's link is its own.
        let other = s.client();
        let mut theirs = other.watch("/d/", r3 + 1).await.unwrap();
        s.set_reachable(false);
        let r4 = other.put("/d/c", b"3", None).await.unwrap();
        assert_eq!(theirs.next().await.unwrap().unwrap().revision, r4);
        assert!(w.next().await.unwrap_err().is_unreachable());
        assert!(s.range_prefix("/d/").await.unwrap_err().is_unreachable());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_left_to_expire_takes_its_keys() {
        let s = MemoryStore::new();
        let lease = s.lease_grant(Duration::from_secs(2)).await.unwrap();
        s.put("/i/a", b"me", Some(lease)).await.unwrap();
        let mut w = s.watch("/i/", 0).await.unwrap();
        w.next().await.unwrap().unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(s.lease_keepalive(lease).await.unwrap());
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(s.range_prefix("/i/").await.unwrap().1, vec![]);
        let gone = w.next().await.unwrap().unwrap();
        assert!(matches!(&gone.events[0], Event::Delete { key, .. } if key == "/i/a"));
        assert!(!s.lease_keepalive(lease).await.unwrap());
        assert!(s.put("/i/b", b"late", Some(lease)).await.is_err());
    }

    #[tokio::test]
    async fn a_wipe_starts_a_new_history() {
        let s = MemoryStore::new();
        for _ in 0..5 {
            s.put("/d/a", b"1", None).await.unwrap();
        }
        s.wipe();
        let (revision, kvs) = s.range_prefix("/").await.unwrap();
        assert_eq!((revision, kvs.len()), (1, 0));
    }
}
