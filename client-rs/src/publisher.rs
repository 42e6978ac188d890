//! [`Publisher`]: a stream of fire-and-forget publishes from one task. Each publish is
//! encoded into the publisher's own buffer, and the buffer goes to the connection's
//! writer as one item once it holds [`Publisher::DEFAULT_BATCH`] bytes (or whatever
//! [`Publisher::batch_bytes`] set), on [`Publisher::flush`], and, as far as it can
//! without waiting, when the publisher is dropped.
//!
//! Why: [`crate::Client::publish_nowait`] hands each message to the writer queue on its
//! own (a lock, a wake-up, a move of the message, and its encoding later in the writer
//! task). A publisher that sends a stream does that once per batch instead, like the
//! NATS clients' write buffer or a Redis pipeline. The cost is latency: a publish waits
//! in the buffer until the batch is full or flushed, so flush when a stream pauses.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::error::Error;
use crate::message::PublishMessage;
use crate::outgoing::{Batch, InFlight, Outgoing};
use crate::requests::Inner;

/// Buffers fire-and-forget publishes and sends them a batch at a time (see the module
/// docs). Made by [`crate::Client::publisher`]. At most once, like `publish_nowait`: a
/// batch on its way when the connection is lost is lost with it.
#[derive(Debug)]
pub struct Publisher {
    inner: Arc<Inner>,
    buf: BytesMut,
    batch: usize,
    sent: Arc<InFlight>,
}

/// Batches a publisher lets wait for the writer at once. Without a bound a stream ran
/// ahead by the write queue's whole length (1 024 items, here 64 MiB of batches), and at
/// 1 KiB messages delivered about a quarter less (730–830 k against 885–995 k msgs/s with
/// the queue cut to 8 items): the batches went cold in the cache before they were written.
const MAX_IN_FLIGHT: usize = 2;

impl Publisher {
    /// Bytes buffered before a batch is sent: 64 KiB.
    pub const DEFAULT_BATCH: usize = 64 * 1024;

    pub(crate) fn new(inner: Arc<Inner>) -> Publisher {
        Publisher {
            inner,
            buf: BytesMut::new(),
            batch: Self::DEFAULT_BATCH,
            sent: Arc::default(),
        }
    }

    /// Sends a batch once it holds this many bytes (at least one publish).
    pub fn batch_bytes(mut self, bytes: usize) -> Publisher {
        self.batch = bytes;
        self
    }

    /// Adds `message` to the batch, and sends the batch if it is full. A message larger
    /// than the broker's frame limit is refused here ([`Error::TooLarge`]); the batch
    /// keeps what it had.
    pub async fn publish(&mut self, message: &PublishMessage) -> Result<(), Error> {
        let p = message.as_publish(0);
        let len = p.frame_len();
        self.inner.check_len(len)?;
        if self.buf.capacity() == 0 {
            self.buf.reserve(2 * self.batch.max(len));
        }
        p.encode(self.inner.max_frame_size, &mut self.buf)
            .map_err(|_| Error::TooLarge {
                len,
                max: self.inner.max_frame_size,
            })?;
        if self.buf.len() >= self.batch {
            self.flush().await?;
        }
        Ok(())
    }

    /// Bytes waiting in the batch.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Sends what the batch holds; returns once it is queued for the socket and at most
    /// one batch before it is still waiting for the writer.
    pub async fn flush(&mut self) -> Result<(), Error> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let bytes = self.take();
        let batch = self.batch_of(bytes);
        // Whole frames, each checked against the limit as it was added.
        self.inner.send(Outgoing::Batch(batch), 0).await?;
        loop {
            let freed = self.sent.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a batch taken in between is not missed.
            freed.as_mut().enable();
            if self.sent.count.load(Ordering::SeqCst) < MAX_IN_FLIGHT {
                return Ok(());
            }
            freed.await;
        }
    }

    fn batch_of(&self, bytes: Bytes) -> Batch {
        Batch::new(bytes, self.sent.clone())
    }

    fn take(&mut self) -> Bytes {
        // The buffer has room for two batches: while one is on its way, the next fills
        // the other half, and once the first is written and dropped the buffer takes its
        // room back in place (`BytesMut::reserve` reclaims a buffer no one else holds),
        // so a stream reuses one allocation instead of touching new pages per batch.
        self.buf.split().freeze()
    }
}

impl Drop for Publisher {
    /// Queues what is left if the writer queue has room; a publisher that must not lose
    /// its last batch flushes before it is dropped.
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let bytes = self.buf.split().freeze();
            let batch = self.batch_of(bytes);
            let _ = self.inner.tx.try_send(Outgoing::Batch(batch));
        }
    }
}
