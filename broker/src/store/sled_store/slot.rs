//! The sled database as the store holds it: one slot that a reopen empties and fills
//! again (after an I/O error sled refuses every write until it is closed and opened
//! again), and closing it without hanging the broker when sled cannot finish.

use std::sync::RwLock;

use crate::store::StoreError;

/// The sled database, which a reopen replaces: after an I/O error sled refuses every
/// write until it is closed and opened again (it keeps the error as its "global error").
/// Everyone takes a handle for one operation and drops it after, so that a reopen, under
/// the open chunks' write lock (no walk in progress), can close the database.
#[derive(Debug)]
pub(crate) struct DbSlot(pub(super) RwLock<Option<sled::Db>>);

impl DbSlot {
    /// A handle on the database, unless a reopen failed and left none.
    pub(crate) fn get(&self) -> Result<sled::Db, StoreError> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                StoreError::Io("the store is closed after an I/O error; reopening".into())
            })
    }

    pub(super) fn replace(&self, db: Option<sled::Db>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = db;
    }

    pub(super) fn take(&self) -> Option<sled::Db> {
        self.0.write().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Drop for DbSlot {
    /// The store's last handle closes sled, but never hangs the broker's shutdown.
    fn drop(&mut self) {
        if let Some(db) = self.take() {
            if !close(db) {
                tracing::error!("sled did not finish closing after an I/O error; exiting without it (under fsync always nothing acknowledged is lost)");
            }
        }
    }
}

/// Drops `db`, which closes sled if it is the last handle; whether that ended within
/// [`CLOSE_WAIT`]. sled flushes on close, and after some I/O errors that flush waits
/// for ever for a write that failed.
pub(super) fn close(db: sled::Db) -> bool {
    within(CLOSE_WAIT, move || drop(db))
}

/// How long closing sled may take in a reopen (see [`Storage::reopen`] there).
pub(super) const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a failed store cannot be reopened.
pub(super) const STUCK: &str = "the store cannot be closed after its I/O error (sled waits for a write that failed), so it cannot be reopened in this process: restart the broker to take writes again; nothing acknowledged is lost";

/// Runs `f` on a thread of its own; whether it ended within `limit`. One that does not
/// is left running.
pub(super) fn within(limit: std::time::Duration, f: impl FnOnce() + Send + 'static) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("rtc-store-close".into())
        .spawn(move || {
            f();
            let _ = tx.send(());
        });
    spawned.is_ok() && rx.recv_timeout(limit).is_ok()
}

