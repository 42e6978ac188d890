//! [`Outgoing`]: what the API hands the writer of a connection (frames, publishes
//! encoded from their fields, a `Publisher`'s [`Batch`] of encoded publishes, the rest of
//! a direct write), and [`encode_outgoing`], the one place that turns each into bytes.
//! The writer task (`crate::connection`) and direct writers (`crate::direct`) both
//! encode through it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rtc_proto::codec::encode_frame;
use rtc_proto::publish::PublishRef;
use rtc_proto::tcp::TcpWriter;
use rtc_proto::v1;
use rtc_proto::Frame;
use tokio::sync::Notify;

use crate::message::PublishMessage;

/// What the writer task is asked to do.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Frame(Frame),
    /// A fire-and-forget publish, encoded straight from its fields (no `v1::Publish`
    /// with an owned topic is built).
    Publish(PublishMessage),
    /// Fire-and-forget publishes already encoded, whole frames one after another
    /// ([`crate::Publisher`]).
    Batch(Batch),
    /// An acknowledged publish, shared with the outbox that keeps it until its answer.
    Acked(Arc<v1::Publish>),
    /// The end of a frame a direct write began on `socket`, which it did not take
    /// (`crate::direct`): written first, as it is — to that socket only. If the
    /// connection was lost meanwhile, it is dropped.
    Rest {
        bytes: Bytes,
        socket: TcpWriter,
    },
    /// Flush what is queued, close the write side, stop.
    Close,
}

/// Batches sent and not yet taken by the writer.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    pub(crate) count: AtomicUsize,
    pub(crate) freed: Notify,
}

/// A publisher's batch on its way to the socket: whole frames, and the count it is in.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) bytes: Bytes,
    sent: Arc<InFlight>,
}

impl Batch {
    /// `bytes` on its way, counted in `sent` until the writer drops it.
    pub(crate) fn new(bytes: Bytes, sent: Arc<InFlight>) -> Batch {
        sent.count.fetch_add(1, Ordering::SeqCst);
        Batch { bytes, sent }
    }
}

impl Drop for Batch {
    /// Taken by the writer (or dropped with a lost connection's queue).
    fn drop(&mut self) {
        self.sent.count.fetch_sub(1, Ordering::SeqCst);
        self.sent.freed.notify_one();
    }
}

/// Appends `item`'s bytes to `buf` (`Close` has none).
pub(crate) fn encode_outgoing(item: &Outgoing, max_frame_size: usize, buf: &mut BytesMut) {
    match item {
        Outgoing::Frame(frame) => encode(frame, max_frame_size, buf),
        Outgoing::Publish(m) => encode_publish(m.as_publish(0), max_frame_size, buf),
        Outgoing::Acked(p) => encode_publish((&**p).into(), max_frame_size, buf),
        Outgoing::Batch(batch) => buf.extend_from_slice(&batch.bytes),
        Outgoing::Rest { bytes, .. } => buf.extend_from_slice(bytes),
        Outgoing::Close => {}
    }
}

pub(crate) fn encode(frame: &Frame, max_frame_size: usize, buf: &mut BytesMut) {
    if let Err(e) = encode_frame(frame, max_frame_size, buf) {
        tracing::error!(error = %e, "dropping an unencodable frame");
    }
}

fn encode_publish(p: PublishRef<'_>, max_frame_size: usize, buf: &mut BytesMut) {
    if let Err(e) = p.encode(max_frame_size, buf) {
        tracing::error!(error = %e, "dropping an unencodable publish");
    }
}
