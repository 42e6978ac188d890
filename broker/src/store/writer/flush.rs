//! When the writer flushes, and what else it owes the store on a timer: the storage
//! thread sleeps until [`Writer::deadline`] when no request comes, then calls
//! [`Writer::deadline_passed`]. Two things set a deadline: an `interval:MS` policy's
//! flush once something was written, and the store's appends held in memory
//! ([`Storage::seal_due`](crate::store::Storage::seal_due)), which must reach the
//! storage engine within a bounded time even if nothing else is written.

use std::time::{Duration, Instant};

use super::Writer;
use crate::config::FsyncPolicy;
use crate::store::StoreError;

impl<O> Writer<O> {
    /// When an `interval` policy owes a flush.
    fn flush_deadline(&self) -> Option<Instant> {
        match self.fsync {
            FsyncPolicy::IntervalMs(ms) if self.dirty => {
                Some(self.last_flush + Duration::from_millis(ms))
            }
            _ => None,
        }
    }

    /// When the storage thread must next act without a request: the earlier of the
    /// flush an `interval` policy owes and the sealing of held appends.
    pub(super) fn deadline(&self) -> Option<Instant> {
        if let Some(retry) = self.retry_due() {
            // Nothing is written until the store is back.
            return Some(retry);
        }
        match (self.flush_deadline(), self.storage.seal_due()) {
            (Some(flush), Some(seal)) => Some(flush.min(seal)),
            (flush, seal) => flush.or(seal),
        }
    }

    /// The [`Writer::deadline`] has passed: flushes if the flush is due (which seals
    /// too), else seals the held appends.
    pub(super) fn deadline_passed(&mut self) {
        if !self.store_usable() {
            return;
        }
        if self.flush_deadline().is_some_and(|d| d <= Instant::now()) {
            self.flush_logged();
        } else if let Err(e) = self.storage.seal() {
            self.store_failed(&e);
        }
    }

    pub(super) fn flush(&mut self) -> Result<(), StoreError> {
        let began = Instant::now();
        self.storage.flush()?;
        if let Some(observer) = &self.observer {
            observer.fsync(began.elapsed());
        }
        self.dirty = false;
        self.last_flush = Instant::now();
        Ok(())
    }

    /// Flushes if anything is unflushed; a failure starts a failure episode (logged
    /// once). Not while the store is failed: sled, after some I/O errors, waits for ever
    /// in a flush, which would hang the broker's shutdown.
    pub(super) fn flush_logged(&mut self) {
        if self.dirty && !self.store_failed_io() {
            if let Err(e) = self.flush() {
                self.store_failed(&e);
            }
        }
    }
}
