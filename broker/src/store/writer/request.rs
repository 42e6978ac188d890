//! What the storage thread is asked to do ([`Request`]), and who is told how an append
//! went ([`Reply`]).

use rtc_proto::v1::TopicSettings;
use tokio::sync::oneshot;

use crate::engine::{Append, ConsumerRecord, TopicView};
use crate::refusal::Refusal;

/// Who is told how an append went.
#[derive(Debug)]
pub enum Reply<O> {
    /// The layer above, through the commit sink, with the origin it gave.
    Origin(O),
    /// The broker itself (a dead letter): the stored seq, once the pass is committed.
    Internal(oneshot::Sender<Result<u64, Refusal>>),
}

impl<O> Request<O> {
    /// A request that removes data, handled alone rather than in a pass of appends.
    pub fn is_removal(&self) -> bool {
        matches!(
            self,
            Request::DeleteTopic { .. }
                | Request::PurgeTopic { .. }
                | Request::DeleteConsumer { .. }
                | Request::SetRules { .. }
        )
    }
}

/// Work for the storage thread.
#[derive(Debug)]
pub enum Request<O> {
    /// Store a message.
    Append(Append<Reply<O>>),
    /// Create a topic or change its settings.
    CreateTopic {
        /// Topic name (validated).
        name: String,
        /// Requested settings (normalized by the thread).
        settings: TopicSettings,
        /// Answer.
        reply: oneshot::Sender<Result<TopicView, Refusal>>,
    },
    /// Make sure a topic exists, with its configured settings (an existing one is left
    /// as it is).
    EnsureTopic {
        /// Topic name (validated).
        name: String,
        /// Answer.
        reply: oneshot::Sender<Result<TopicView, Refusal>>,
    },
    /// Store a durable consumer's state. Several saves of one consumer in a pass are
    /// written once (the last).
    SaveConsumer {
        /// Its topic.
        topic: String,
        /// Consumer name.
        name: String,
        /// Its state.
        record: ConsumerRecord,
        /// Told once the state is stored (and flushed per the fsync policy).
        stored: Option<oneshot::Sender<()>>,
    },
    /// Delete a topic: its log, dedup entries and stored consumers. Handled on its own,
    /// after the requests before it.
    DeleteTopic {
        /// Topic name.
        name: String,
        /// Answer.
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    /// Remove a topic's stored messages but the newest `keep`. Handled on its own.
    PurgeTopic {
        /// Topic name.
        name: String,
        /// Messages kept.
        keep: u64,
        /// Answer: the topic as it is after.
        reply: oneshot::Sender<Result<TopicView, Refusal>>,
    },
    /// Remove a durable consumer's stored state. Handled on its own.
    DeleteConsumer {
        /// Its topic.
        topic: String,
        /// Consumer name.
        name: String,
        /// Answer.
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    /// Replace the config's topic rules and apply them to the topics that follow them
    /// (those not created explicitly). Handled on its own.
    SetRules {
        /// The new rules.
        rules: crate::topic::TopicRules,
        /// Answer: how many topics changed settings.
        reply: oneshot::Sender<Result<usize, Refusal>>,
    },
    /// Apply retention limits and expire dedup entries.
    Enforce,
    /// Nothing to do but look at the flush timer again: an inline append left the
    /// store unflushed under an `interval` policy.
    Wake,
    /// Flush and stop.
    Shutdown,
}
