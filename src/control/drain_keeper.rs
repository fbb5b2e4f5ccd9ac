//! The owner of drains: the store (a standalone router's state file, or the
//! fleet's book) behind its own lock, and the writer that keeps each change on
//! disk (fsynced) once that lock is released, never an older state over a newer.

use std::sync::Mutex;

use super::lock;

use crate::drains::{DrainStore, Drains, StateFileError, StateWrite};
use crate::fleet::book::FleetBook;

/// Where the drains live: this router's own, or the fleet's book.
#[derive(Debug)]
pub(crate) enum Book {
    Local(Drains),
    Fleet(FleetBook),
}

impl Book {
    fn store(&self) -> &dyn DrainStore {
        match self {
            Book::Local(d) => d,
            Book::Fleet(b) => b,
        }
    }

    fn store_mut(&mut self) -> &mut dyn DrainStore {
        match self {
            Book::Local(d) => d,
            Book::Fleet(b) => b,
        }
    }
}

#[derive(Debug)]
struct Kept {
    book: Book,
    /// Changes taken out to be written so far: each write carries the number
    /// of the newest change it holds.
    writes: u64,
    /// The drains the fleet guard held back, as last published.
    refused: Vec<(String, String)>,
}

#[derive(Debug)]
pub(crate) struct DrainKeeper {
    kept: Mutex<Kept>,
    /// The number of the newest write on disk.
    written: Mutex<u64>,
}

impl DrainKeeper {
    pub(crate) fn new(book: Book) -> Self {
        let refused = book.store().refused();
        DrainKeeper {
            kept: Mutex::new(Kept {
                book,
                writes: 0,
                refused,
            }),
            written: Mutex::new(0),
        }
    }

    /// Reads the drains in force.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&dyn DrainStore) -> R) -> R {
        f(lock(&self.kept).book.store())
    }

    /// Changes the drains: in memory at once, then on disk with this lock
    /// released. The change holds either way; a write that failed is returned.
    pub(crate) fn change<R>(
        &self,
        f: impl FnOnce(&mut dyn DrainStore) -> R,
    ) -> (R, Option<StateFileError>) {
        self.change_book(|b| f(b.store_mut()))
    }

    /// Changes the fleet's side of the drains; `None` outside a fleet.
    pub(crate) fn change_fleet<R>(
        &self,
        f: impl FnOnce(&mut FleetBook) -> R,
    ) -> Option<(R, Option<StateFileError>)> {
        let (r, failed) = self.change_book(|b| match b {
            Book::Fleet(fleet) => Some(f(fleet)),
            Book::Local(_) => None,
        });
        r.map(|r| (r, failed))
    }

    fn change_book<R>(&self, f: impl FnOnce(&mut Book) -> R) -> (R, Option<StateFileError>) {
        let (r, write) = {
            let mut kept = lock(&self.kept);
            let r = f(&mut kept.book);
            let write = kept.book.store_mut().take_write().map(|w| {
                kept.writes += 1;
                (kept.writes, w)
            });
            (r, write)
        };
        let failed = write.and_then(|(n, w)| self.write(n, &w).err());
        if let Some(e) = &failed {
            tracing::warn!(error = %e, "a drain change applies but could not be kept in the state file");
        }
        (r, failed)
    }

    /// Writes change `n` unless a newer one is on disk already (it holds this one).
    fn write(&self, n: u64, write: &StateWrite) -> Result<(), StateFileError> {
        let mut written = lock(&self.written);
        if *written >= n {
            return Ok(());
        }
        write.commit()?;
        *written = n;
        Ok(())
    }

    /// When the drains the guard holds back differ from those last published:
    /// records them and returns those newly refused (region, jurisdiction).
    pub(crate) fn refused_changed(&self) -> Option<Vec<(String, String)>> {
        let mut kept = lock(&self.kept);
        let now = kept.book.store().refused();
        if now == kept.refused {
            return None;
        }
        let new = now
            .iter()
            .filter(|x| !kept.refused.contains(x))
            .cloned()
            .collect();
        kept.refused = now;
        Some(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drains::{Drain, Scope};

    fn drain() -> Drain {
        Drain {
            reason: "drill".to_owned(),
            by: "test".to_owned(),
            since: 1,
            scope: Scope::Local,
            force: false,
        }
    }

    #[test]
    fn a_change_is_on_disk_when_it_returns_and_a_failed_write_is_said() {
        let dir = std::env::temp_dir().join(format!("georouter-keeper-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("state.json");
        let _ = std::fs::remove_file(&file);
        let keeper = DrainKeeper::new(Book::Local(Drains::load(Some(&file)).unwrap()));
        let ((), failed) = keeper.change(|d| d.set("eu-west", Some(drain())));
        assert!(failed.is_none());
        let again = Drains::load(Some(&file)).unwrap();
        assert!(again.get("eu-west").is_some());
        // The directory gone: the change holds, the failure is returned.
        std::fs::remove_file(&file).unwrap();
        std::fs::remove_dir(&dir).unwrap();
        let ((), failed) = keeper.change(|d| d.set("us-east", Some(drain())));
        assert!(failed.is_some_and(|e| e.to_string().contains("state.json")));
        assert!(keeper.read(|d| d.get("us-east").is_some()));
    }

    #[test]
    fn an_older_write_never_lands_over_a_newer_one() {
        let dir = std::env::temp_dir().join(format!("georouter-keeper-o-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("state.json");
        let keeper = DrainKeeper::new(Book::Local(Drains::load(Some(&file)).unwrap()));
        let older = StateWrite {
            path: file.clone(),
            bytes: b"{\"drains\": {}}\n".to_vec(),
        };
        keeper.change(|d| d.set("eu-west", Some(drain())));
        // Change 1 is on disk; a late write of an older state is skipped.
        keeper.write(1, &older).unwrap();
        assert!(Drains::load(Some(&file)).unwrap().get("eu-west").is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
