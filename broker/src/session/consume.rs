//! Durable consumer subscriptions and the requests that settle their deliveries (Ack,
//! Nack, InProgress). The work itself is done by the consumer's actor
//! ([`crate::consumer`]); the session validates, forwards, and confirms.

use std::time::Duration;

use rtc_proto::topic::{dead_letter_topic, validate_consumer_name, validate_topic};
use rtc_proto::v1::{self, frame::Op, start_position::Position, AckMode};
use rtc_proto::Frame;

use super::pubsub::ActiveSub;
use super::Session;
use crate::consumer::{JoinSpec, DEFAULT_ACK_WAIT, DEFAULT_MAX_DELIVER, DEFAULT_MAX_IN_FLIGHT};
use crate::outbound::Closed;
use crate::refusal::Refusal;

/// Deliveries one Ack/Nack/InProgress may name.
const MAX_SEQS: usize = 10_000;

/// What a settle request does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Settle {
    Ack,
    Nack(Duration),
    InProgress,
}

impl Session {
    /// Subscribe with `consumer` set: join (or create) the durable consumer.
    pub(super) async fn subscribe_consumer(
        &mut self,
        s: v1::Subscribe,
        start: Option<Position>,
    ) -> Result<(), Closed> {
        let req_id = s.req_id;
        if let Err(msg) = validate_consumer_name(&s.consumer) {
            return self.refuse(req_id, Refusal::InvalidRequest(msg)).await;
        }
        if validate_topic(&s.pattern).is_err() {
            let msg = format!(
                "a durable consumer reads one topic; {:?} is a pattern (no wildcards allowed)",
                s.pattern
            );
            return self.refuse(req_id, Refusal::InvalidRequest(msg)).await;
        }
        let dlq = dead_letter_topic(&s.pattern, &s.consumer);
        if let Err(e) = validate_topic(&dlq) {
            let msg = format!("its dead-letter topic {dlq:?} would be invalid: {e}");
            return self.refuse(req_id, Refusal::InvalidRequest(msg)).await;
        }
        let explicit_ack = s.ack_mode != AckMode::None as i32;
        let spec = JoinSpec {
            sub_id: s.sub_id,
            outbox: self.outbox.clone(),
            first_frame: Frame::from_op(Op::SubAck(v1::SubAck {
                req_id: s.req_id,
                sub_id: s.sub_id,
            })),
            explicit_ack,
            ack_wait: match s.ack_wait_ms {
                0 => DEFAULT_ACK_WAIT,
                ms => Duration::from_millis(ms),
            },
            max_in_flight: match s.max_in_flight {
                0 => DEFAULT_MAX_IN_FLIGHT,
                n => n,
            } as usize,
            max_deliver: match s.max_deliver {
                0 => DEFAULT_MAX_DELIVER,
                n => n,
            },
            start,
        };
        match self
            .shared
            .consumers
            .join(&s.pattern, &s.consumer, spec)
            .await
        {
            Ok(member) => {
                self.add_sub(
                    s.sub_id,
                    ActiveSub {
                        pattern: s.pattern,
                        replay: None,
                        member: Some(member),
                        presence: None,
                    },
                );
                Ok(())
            }
            Err(refusal) => self.refuse(req_id, refusal).await,
        }
    }

    /// Ack, Nack or InProgress for deliveries of subscription `sub_id`.
    pub(super) async fn settle(
        &mut self,
        req_id: u64,
        sub_id: u64,
        kind: Settle,
        seqs: Vec<u64>,
    ) -> Result<(), Closed> {
        let member = match self.subs.get(&sub_id) {
            None => {
                let msg = format!("sub_id {sub_id} is not an active subscription");
                return self.refuse(req_id, Refusal::UnknownSubscription(msg)).await;
            }
            Some(ActiveSub { member: None, .. }) => {
                let msg = format!("sub_id {sub_id} is not a durable consumer subscription; nothing to acknowledge");
                return self.refuse(req_id, Refusal::InvalidRequest(msg)).await;
            }
            Some(ActiveSub {
                member: Some(m), ..
            }) => m.clone(),
        };
        if seqs.len() > MAX_SEQS {
            let msg = format!(
                "{} seqs in one request; the limit is {MAX_SEQS}",
                seqs.len()
            );
            return self.refuse(req_id, Refusal::InvalidRequest(msg)).await;
        }
        let done = match kind {
            Settle::Ack => member.ack(seqs, req_id != 0).await,
            Settle::Nack(delay) => member.nack(seqs, delay).await,
            Settle::InProgress => member.in_progress(seqs).await,
        };
        if !done {
            let msg =
                "the consumer's state could not be stored; the request may not have taken effect"
                    .to_string();
            return self.refuse(req_id, Refusal::Storage(msg)).await;
        }
        if req_id != 0 {
            self.send(Frame::from_op(Op::Confirm(v1::Confirm { req_id })))
                .await?;
        }
        Ok(())
    }
}
