//! Publish, subscribe and unsubscribe for one session.
//!
//! A publish's topic checks, settings and matching subscriptions are remembered per
//! session for the few topics it publishes to (see [`crate::topic_cache`]), so a client
//! streaming publishes pays for them once. A publish to an ephemeral topic is fanned
//! out here, at once. A publish to a durable topic is handed to the log engine, and once
//! it is stored delivery fans it out and answers the client (see [`crate::delivery`]);
//! the session does not wait for it, so one connection can have many publishes in
//! flight. A subscription with a start position other than `new` gets a [`Gate`] and a
//! replay task (see [`crate::replay`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use rtc_proto::topic::{validate_group_name, validate_pattern};
use rtc_proto::v1::{self, frame::Op, start_position::Position};
use rtc_proto::Frame;
use tokio::task::JoinHandle;

use super::Session;
use crate::clock::now_ms;
use crate::consumer::MemberRef;
use crate::delivery::{AnswerTo, Origin};
use crate::outbound::{Closed, Subscription};
use crate::publish;
use crate::refusal::Refusal;
use crate::replay::{self, Gate};
use crate::router::{Member, Subscriber};
use crate::topic::is_durable;

/// Most topics a Subscribe's `resume_after` may list.
const MAX_RESUME_AFTER: usize = 1000;

/// One active subscription of a session.
#[derive(Debug)]
pub(crate) struct ActiveSub {
    pub(super) pattern: String,
    /// The replay task, while a replaying subscription catches up.
    pub(super) replay: Option<JoinHandle<()>>,
    /// For a durable consumer subscription: its membership.
    pub(super) member: Option<MemberRef>,
    /// For a subscription joined to its room's presence: the member's user.
    pub(super) presence: Option<String>,
}

impl Session {
    pub(super) async fn publish(&mut self, p: v1::Publish) -> Result<(), Closed> {
        let v1::Publish {
            req_id,
            topic,
            payload,
            headers,
            msg_id,
        } = p;
        // Validity, permission and settings of the topic: checked once per topic while
        // the settings in force do not change.
        let generation = self.shared.log.settings_generation();
        let checked = self.known_topics.get_or_try_insert(generation, &topic, || {
            publish::check_topic(&*self.shared.log, &self.identity, &topic)
        });
        let settings = match checked {
            Ok(settings) => *settings,
            Err(refusal) => return self.refuse(req_id, refusal).await,
        };
        if let Some((wait, tell)) = self.throttle.as_mut().and_then(|t| t.take()) {
            if tell {
                let (rate, _) = self.shared.live.publish_rate();
                let msg = format!(
                    "publishing faster than {rate}/s; this connection is being slowed down"
                );
                self.refuse(0, Refusal::RateLimited(msg)).await?;
            }
            self.flush();
            tokio::time::sleep(wait).await;
            // Accepted after the wait, not when read.
            self.read_ms = now_ms();
            self.read_at = tokio::time::Instant::now();
        }
        let contents = publish::Contents {
            payload,
            headers,
            msg_id,
        };
        let (message, message_len) = match publish::message(
            &self.shared.config,
            &self.shared.live,
            topic,
            contents,
            self.read_ms,
        ) {
            Ok(m) => m,
            Err(refusal) => return self.refuse(req_id, refusal).await,
        };
        self.tally.messages_in += 1;
        self.tally.bytes_in += message.payload.len() as u64;
        if !is_durable(&settings) {
            // For other nodes too, if there are any: then encoded whether or not a
            // subscriber here matches.
            let relayed =
                publish::relay(&*self.shared.bus, &message, message_len, settings.datagram);
            let fanout = self.shared.router.publish_cached(
                &mut self.matches,
                &message.topic,
                0,
                settings.datagram,
                || {
                    relayed.unwrap_or_else(|| {
                        rtc_proto::codec::encode_message_sized(&message, message_len)
                    })
                },
                &mut self.later,
            );
            self.tally.messages_out += fanout.queued as u64;
            self.tally.bytes_out += (fanout.queued * message_len) as u64;
            if fanout.backlogged {
                // A subscriber's writer is behind this publisher (a client streaming
                // publishes always has the next frame ready): let it run before its
                // queue fills and deliveries are dropped as if it were slow.
                self.flush();
                tokio::task::yield_now().await;
            }
            if req_id != 0 {
                let ack = v1::PubAck {
                    req_id,
                    seq: 0,
                    duplicate: false,
                };
                self.send(Frame::from_op(Op::PubAck(ack))).await?;
            }
            return Ok(());
        }
        // Delivery queues the answer without waiting; keep this client's unread answers
        // bounded by not reading further while its queue is full.
        self.outbox.wait_room().await?;
        let permit = match self.shared.delivery.try_permit() {
            Some(permit) => permit,
            None => {
                // Waiting for the log engine: what is queued goes out first.
                self.flush();
                self.shared.delivery.permit().await
            }
        };
        let origin = Origin {
            received: self.read_at,
            to: AnswerTo::Queue {
                req_id,
                due: self.outbox.answer_due(),
            },
            permit,
        };
        let append = publish::append(message, origin);
        if self.shared.publishes.append(append, self.lone).is_err() {
            let msg = "the storage thread has stopped; the message was not stored".to_string();
            return self.refuse(req_id, Refusal::Storage(msg)).await;
        }
        Ok(())
    }

    pub(super) async fn subscribe(&mut self, mut s: v1::Subscribe) -> Result<(), Closed> {
        let mut resume_after = std::mem::take(&mut s.resume_after);
        let req_id = s.req_id;
        if s.sub_id == 0 {
            let refusal = Refusal::InvalidRequest("sub_id must not be 0".into());
            return self.refuse(req_id, refusal).await;
        }
        if let Err(e) = validate_pattern(&s.pattern) {
            let refusal = Refusal::InvalidPattern(format!("{:?}: {e}", s.pattern));
            return self.refuse(req_id, refusal).await;
        }
        if !self.identity.can_subscribe(&s.pattern) {
            let msg = format!(
                "user {:?} may not subscribe to {:?}",
                self.identity.name(),
                s.pattern
            );
            return self.refuse(req_id, Refusal::PermissionDenied(msg)).await;
        }
        if self.subs.contains_key(&s.sub_id) {
            let msg = format!("sub_id {} is already active on this connection", s.sub_id);
            return self
                .refuse(req_id, Refusal::DuplicateSubscription(msg))
                .await;
        }
        let limit = self.shared.live.max_subscriptions();
        if self.subs.len() >= limit {
            let msg = format!("this connection already has {limit} subscriptions, the limit");
            return self.refuse(req_id, Refusal::LimitExceeded(msg)).await;
        }
        if resume_after.len() > MAX_RESUME_AFTER {
            let msg = format!(
                "resume_after lists {} topics; the limit is {MAX_RESUME_AFTER}",
                resume_after.len()
            );
            return self.refuse(req_id, Refusal::InvalidRequest(msg)).await;
        }
        let recreated = match self.stale_epochs(req_id, &s.epochs, &mut resume_after) {
            Ok(recreated) => recreated,
            Err(frame) => return self.send(*frame).await,
        };
        if !resume_after.is_empty() && !s.consumer.is_empty() {
            let msg = "resume_after is for plain subscriptions: a durable consumer resumes where the broker keeps it".to_string();
            return self.refuse(req_id, Refusal::InvalidRequest(msg)).await;
        }
        let start = match s.start.and_then(|p| p.position) {
            // Resuming: the listed topics replay, the others start at `new`.
            None | Some(Position::New(_)) if !resume_after.is_empty() => Some(Position::New(true)),
            None | Some(Position::New(_)) => None,
            Some(Position::Seq(0)) => {
                let refusal = Refusal::InvalidRequest("start seq must be at least 1".into());
                return self.refuse(req_id, refusal).await;
            }
            Some(Position::RelativeMs(d)) if d > 0 => {
                let msg = "a relative start time must be in the past (negative)".to_string();
                return self.refuse(req_id, Refusal::InvalidRequest(msg)).await;
            }
            Some(p) => Some(p),
        };
        if !s.group.is_empty() {
            let refusal = match validate_group_name(&s.group) {
                Err(e) => Some(e),
                Ok(()) if start.is_some() || !s.consumer.is_empty() => Some(
                    "a queue group is for live subscriptions: no start, resume_after or consumer"
                        .to_string(),
                ),
                Ok(()) => None,
            };
            if let Some(msg) = refusal {
                return self.refuse(req_id, Refusal::InvalidRequest(msg)).await;
            }
        }
        if let Err(refusal) = self.check_presence_join(&s) {
            return self.refuse(req_id, refusal).await;
        }
        if !s.consumer.is_empty() {
            return self.subscribe_consumer(s, start).await;
        }
        if !self.shared.bus.wildcards() && s.pattern.contains(['*', '>']) {
            let msg = "this cluster's live messages go by sharded pub/sub (Redis Cluster), which has no patterns: subscribe to topics without wildcards, or set [cluster] pubsub = \"classic\"".to_string();
            return self.refuse(req_id, Refusal::Unsupported(msg)).await;
        }
        let held = self.shared.config.replay_buffer;
        let gate = start
            .as_ref()
            .map(|_| Arc::new(Gate::new(s.sub_id, self.outbox.clone(), held)));
        // Live messages reach the client through the gate while it replays, else
        // straight into its queue; datagrams, if asked for and offered, come first.
        let stream: Arc<dyn Subscriber> = match &gate {
            Some(gate) => gate.clone(),
            None => Arc::new(Subscription::new(s.sub_id, self.outbox.clone())),
        };
        let subscriber = match (&self.datagrams, s.datagrams) {
            (Some(datagrams), true) => datagrams.subscriber(s.sub_id, stream),
            _ => stream,
        };
        let group = Some(s.group.as_str()).filter(|g| !g.is_empty());
        let member = Member {
            owner: self.conn_id,
            sub_id: s.sub_id,
            sub: subscriber,
        };
        self.shared.router.subscribe_in(&s.pattern, group, member);
        // Messages from other nodes too, before the SubAck says the subscription holds.
        self.shared.bus.listen(&s.pattern).await;
        let join = s.presence.take();
        let presence = join.as_ref().map(|_| self.presence_user());
        self.add_sub(
            s.sub_id,
            ActiveSub {
                pattern: s.pattern.clone(),
                replay: None,
                member: None,
                presence: presence.clone(),
            },
        );
        self.send(Frame::from_op(Op::SubAck(v1::SubAck {
            req_id: s.req_id,
            sub_id: s.sub_id,
        })))
        .await?;
        for topic in &recreated {
            // Its history comes from its new log's start, after this notice.
            self.send(Frame::topic_deleted(s.sub_id, topic)).await?;
        }
        // After the SubAck: the room's events for this subscription follow it.
        if let (Some(join), Some(user)) = (join, &presence) {
            let watcher = join.events.then(|| self.outbox.clone());
            let seat = (self.conn_id, s.sub_id);
            self.shared
                .presence
                .join(&s.pattern, user, seat, join.info, watcher);
        }
        if let (Some(gate), Some(start)) = (gate, start) {
            let (log, metrics) = (self.shared.log.clone(), self.shared.metrics.clone());
            let task = self.shared.tasks.spawn(replay::run(
                gate,
                log,
                metrics,
                s.pattern,
                start,
                resume_after,
            ));
            if let Some(sub) = self.subs.get_mut(&s.sub_id) {
                sub.replay = Some(task);
            }
        }
        Ok(())
    }

    pub(super) async fn unsubscribe(&mut self, u: v1::Unsubscribe) -> Result<(), Closed> {
        let Some(sub) = self.subs.remove(&u.sub_id) else {
            let msg = format!("sub_id {} is not an active subscription", u.sub_id);
            return self
                .refuse(u.req_id, Refusal::UnknownSubscription(msg))
                .await;
        };
        self.end_subscription(u.sub_id, sub).await;
        self.send(Frame::from_op(Op::UnsubAck(v1::UnsubAck {
            req_id: u.req_id,
            sub_id: u.sub_id,
        })))
        .await
    }

    /// Checks the epochs a subscription names (`Subscribe.epochs`) against the topics'
    /// now. A topic of `resume_after` whose log was deleted since resumes from the start
    /// of its new log (the automatic resume of a reconnecting client must not skip it);
    /// those topics are returned, to be told with `TOPIC_DELETED`. Any other stale
    /// epoch (the topic of a `seq` start) refuses the subscription.
    fn stale_epochs(
        &self,
        req_id: u64,
        epochs: &BTreeMap<String, u64>,
        resume_after: &mut BTreeMap<String, u64>,
    ) -> Result<Vec<String>, Box<Frame>> {
        if epochs.len() > MAX_RESUME_AFTER {
            let msg = format!(
                "epochs lists {} topics; the limit is {MAX_RESUME_AFTER}",
                epochs.len()
            );
            return Err(Box::new(Refusal::InvalidRequest(msg).frame(req_id)));
        }
        let mut recreated = Vec::new();
        for (topic, &given) in epochs {
            let now = self.shared.log.topic(topic).map_or(0, |t| t.epoch);
            if given == 0 || now == given {
                continue;
            }
            match resume_after.get_mut(topic) {
                Some(after) => {
                    *after = 0;
                    recreated.push(topic.clone());
                }
                None => return Err(Box::new(unrecoverable(req_id, topic, given, now))),
            }
        }
        Ok(recreated)
    }

    /// Records an active subscription (also in the admin view).
    /// Records an active subscription (also in the admin view).
    pub(super) fn add_sub(&mut self, sub_id: u64, sub: ActiveSub) {
        if let Some(entry) = &self.entry {
            entry.subscribed(sub_id, &sub.pattern);
        }
        self.subs.insert(sub_id, sub);
    }

    /// Removes a subscription from the router and stops its replay, so that nothing more
    /// is queued for it once this returns.
    async fn end_subscription(&self, sub_id: u64, sub: ActiveSub) {
        if let Some(entry) = &self.entry {
            entry.unsubscribed(sub_id);
        }
        self.shared
            .router
            .unsubscribe(&sub.pattern, self.conn_id, sub_id);
        if sub.member.is_none() {
            // A plain subscription (a consumer's member reads through its actor).
            self.shared.bus.unlisten(&sub.pattern);
        }
        if let Some(task) = sub.replay {
            task.abort();
            let _ = task.await;
        }
        if let Some(member) = sub.member {
            member.leave().await;
        }
        if let Some(user) = sub.presence {
            self.shared
                .presence
                .leave(&sub.pattern, &user, (self.conn_id, sub_id));
        }
    }

    pub(super) async fn remove_all_subscriptions(&mut self) {
        for (sub_id, sub) in std::mem::take(&mut self.subs) {
            self.end_subscription(sub_id, sub).await;
        }
    }
}

/// `Error{UNRECOVERABLE_POSITION}` for a position in epoch `given` of `topic`, whose
/// epoch is `now` (0: it does not exist).
fn unrecoverable(req_id: u64, topic: &str, given: u64, now: u64) -> Frame {
    let msg = if now == 0 {
        format!("topic {topic:?} (epoch {given}) was deleted; the position refers to a log that is gone")
    } else {
        format!("topic {topic:?} was deleted and created again (epoch {given} is now {now}); the position refers to the old log")
    };
    let mut frame = Refusal::UnrecoverablePosition(msg).frame(req_id);
    if let Some(Op::Error(e)) = &mut frame.op {
        e.topic = topic.to_string();
    }
    frame
}
