//! The fail point the store's tests use to make sled writes fail on purpose.

/// Where the tests make sled writes fail on purpose, to check that a failed write leaves
/// nothing of itself behind (sled 0.34 cannot be made to fail one). Every message insert
/// and batch of the store asks it first; outside `cfg(test)` it holds nothing and always
/// lets the write through.
#[derive(Debug)]
pub(crate) struct FailPoint {
    /// Writes still to succeed before each one fails; `usize::MAX` when off.
    #[cfg(test)]
    ok_left: std::sync::atomic::AtomicUsize,
    /// Failing until the next reopen ([`FailPoint::fail_until_reopen`]).
    #[cfg(test)]
    until_reopen: std::sync::atomic::AtomicBool,
    /// Times the store was reopened.
    #[cfg(test)]
    pub(super) reopens: std::sync::atomic::AtomicUsize,
    /// Free space reported instead of the filesystem's; `u64::MAX` when off.
    #[cfg(test)]
    pub(super) free: std::sync::atomic::AtomicU64,
}

impl FailPoint {
    pub(super) fn new() -> Self {
        FailPoint {
            #[cfg(test)]
            ok_left: std::sync::atomic::AtomicUsize::new(usize::MAX),
            #[cfg(test)]
            until_reopen: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            reopens: std::sync::atomic::AtomicUsize::new(0),
            #[cfg(test)]
            free: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }

    /// An error if this write is to fail.
    pub(super) fn check(&self) -> Result<(), sled::Error> {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering;
            let left = self.ok_left.load(Ordering::SeqCst);
            if left == 0 {
                return Err(sled::Error::Io(std::io::Error::other(
                    "injected write failure",
                )));
            }
            if left != usize::MAX {
                self.ok_left.store(left - 1, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    /// Lets `ok` more writes through, then fails every one until [`FailPoint::off`].
    #[cfg(test)]
    pub(super) fn fail_after(&self, ok: usize) {
        self.ok_left.store(ok, std::sync::atomic::Ordering::SeqCst);
    }

    /// Writes go through again.
    #[cfg(test)]
    pub(super) fn off(&self) {
        self.fail_after(usize::MAX);
    }

    /// The store was reopened: like sled, a fail point set to fail "until reopened"
    /// lets writes through again.
    pub(super) fn reopened(&self) {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering;
            self.reopens.fetch_add(1, Ordering::SeqCst);
            if self.until_reopen.swap(false, Ordering::SeqCst) {
                self.off();
            }
        }
    }

    /// The free space the tests report, if they set one.
    pub(super) fn free_space(&self) -> Option<u64> {
        #[cfg(test)]
        {
            let free = self.free.load(std::sync::atomic::Ordering::SeqCst);
            if free != u64::MAX {
                return Some(free);
            }
        }
        None
    }

    /// Fails every write from now until the store is reopened, as sled does after an
    /// I/O error.
    #[cfg(test)]
    pub(super) fn fail_until_reopen(&self) {
        self.until_reopen
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.fail_after(0);
    }
}

