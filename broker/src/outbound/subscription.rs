//! A connection's side of the router's seams: [`Subscription`], one live subscription
//! delivering into the connection's [`Outbox`], and the [`Flush`] an outbox offers so
//! that a publisher can queue to many connections and wake each writer once.

use std::sync::Arc;

use super::Outbox;
use crate::router::{Flush, Flushes, Live, Subscriber};

/// The router can leave waking a connection's writer to whoever filled its queue.
impl Flush for Outbox {
    fn flush(&self) {
        Outbox::flush(self);
    }

    fn wake(&self) {
        Outbox::wake(self);
    }
}

/// One live subscription of a connection, as the router sees it: deliveries go into the
/// connection's queue with the subscription's id, the writer's wake left to the
/// publisher (it flushes once it has published what it has).
#[derive(Debug)]
pub struct Subscription {
    sub_id: u64,
    outbox: Arc<Outbox>,
}

impl Subscription {
    /// Subscription `sub_id`, delivering into `outbox`.
    pub fn new(sub_id: u64, outbox: Arc<Outbox>) -> Self {
        Subscription { sub_id, outbox }
    }
}

impl Subscriber for Subscription {
    fn deliver(&self, live: &Live<'_>, later: &mut Flushes) -> bool {
        match self
            .outbox
            .push_deliver_deferred(self.sub_id, live.message, live.share)
        {
            None => false,
            Some(false) => true,
            Some(true) => {
                later.push(self.outbox.clone());
                true
            }
        }
    }

    fn is_backlogged(&self) -> bool {
        self.outbox.is_backlogged()
    }
}
