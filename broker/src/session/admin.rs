//! Topic administration requests: create (or re-configure) a topic, describe one, list
//! them, delete or purge one, delete a durable consumer. Creation and removals go
//! through the storage thread, which persists them; the descriptions come from the log
//! engine's topic metadata ([`crate::engine::Log`]).
//!
//! The removals themselves are [`Shared`]'s, so that the admin HTTP API does exactly
//! what a client's request does: deleting a topic stops its durable consumers (their
//! members are told), removes it from the store, then tells every live subscription
//! that matches its name (`Error{TOPIC_DELETED}` with the sub_id and topic). Only an
//! admin identity may remove ([`crate::auth::Identity::is_admin`]).

use rtc_proto::topic::{validate_publish_topic, validate_topic};
use rtc_proto::v1::{self, frame::Op, StorageClass};
use rtc_proto::Frame;

use super::{Session, Shared};
use crate::engine::TopicView;
use crate::outbound::Closed;
use crate::refusal::Refusal;

impl Shared {
    /// Deletes topic `name` everywhere (see the module docs); how many live
    /// subscriptions were told.
    pub async fn delete_topic(&self, name: &str) -> Result<usize, Refusal> {
        existing_topic(self, name)?;
        self.consumers.stop_all(name).await;
        self.log.delete_topic(name.to_string()).await?;
        let mut told = Vec::new();
        self.router
            .for_each_match(name, |owner, sub_id, _| told.push((owner, sub_id)));
        for &(owner, sub_id) in &told {
            if let Some(conn) = self.connections.get(owner) {
                let _ = conn
                    .outbox
                    .push_frame_now(Frame::topic_deleted(sub_id, name));
            }
        }
        self.events.record(
            "topic_deleted",
            format!("topic {name} deleted; {} subscription(s) told", told.len()),
        );
        Ok(told.len())
    }

    /// Removes topic `name`'s stored messages but the newest `keep`.
    pub async fn purge_topic(&self, name: &str, keep: u64) -> Result<TopicView, Refusal> {
        existing_topic(self, name)?;
        let view = self.log.purge_topic(name.to_string(), keep).await?;
        self.events.record(
            "topic_purged",
            format!(
                "topic {name} purged: {} message(s) kept, next seq {}",
                view.stats.messages,
                view.stats.last_seq + 1
            ),
        );
        Ok(view)
    }

    /// Deletes durable consumer `name` on `topic` (its members are told).
    pub async fn delete_consumer(&self, topic: &str, name: &str) -> Result<(), Refusal> {
        existing_topic(self, topic)?;
        self.consumers.delete(topic, name).await?;
        self.events.record(
            "consumer_deleted",
            format!("consumer {name} of {topic} deleted"),
        );
        Ok(())
    }
}

/// Checks that `name` is a topic name and the topic exists.
fn existing_topic(shared: &Shared, name: &str) -> Result<TopicView, Refusal> {
    validate_topic(name).map_err(|e| Refusal::InvalidTopic(format!("{name:?}: {e}")))?;
    shared
        .log
        .topic(name)
        .ok_or_else(|| Refusal::NotFound(format!("no topic {name:?}")))
}

/// Room left in a `TopicList` frame for its envelope.
const LIST_MARGIN: usize = 1024;

impl Session {
    pub(super) async fn topic_create(&mut self, c: v1::TopicCreate) -> Result<(), Closed> {
        let req_id = c.req_id;
        if let Err(e) = validate_publish_topic(&c.name) {
            let refusal = Refusal::InvalidTopic(format!("{:?}: {e}", c.name));
            return self.refuse(req_id, refusal).await;
        }
        if !self.identity.can_publish(&c.name) {
            let msg = format!(
                "user {:?} may not create {:?} (needs publish permission)",
                self.identity.name(),
                c.name
            );
            return self.refuse(req_id, Refusal::PermissionDenied(msg)).await;
        }
        let settings = c.settings.unwrap_or_default();
        if StorageClass::try_from(settings.storage).is_err() {
            let msg = format!("unknown storage class {}", settings.storage);
            return self.refuse(req_id, Refusal::InvalidRequest(msg)).await;
        }
        match self.shared.log.create_topic(c.name.clone(), settings).await {
            Ok(view) => {
                let info = view.info(req_id, &c.name);
                self.send(Frame::from_op(Op::TopicInfo(info))).await
            }
            Err(refusal) => self.refuse(req_id, refusal).await,
        }
    }

    pub(super) async fn topic_info(&mut self, r: v1::TopicInfoRequest) -> Result<(), Closed> {
        if let Err(e) = validate_topic(&r.name) {
            let msg = format!("{:?}: {e}", r.name);
            return self.refuse(r.req_id, Refusal::InvalidTopic(msg)).await;
        }
        match self.shared.log.topic_now(&r.name).await {
            Some(view) => {
                let info = view.info(r.req_id, &r.name);
                self.send(Frame::from_op(Op::TopicInfo(info))).await
            }
            None => {
                let msg = format!(
                    "no topic {:?} (created by `topic create` or a first publish)",
                    r.name
                );
                self.refuse(r.req_id, Refusal::NotFound(msg)).await
            }
        }
    }

    pub(super) async fn topic_list(&mut self, r: v1::TopicListRequest) -> Result<(), Closed> {
        let budget = self.shared.config.max_frame_size - LIST_MARGIN;
        let mut list = v1::TopicList {
            req_id: r.req_id,
            topics: Vec::new(),
            truncated: false,
        };
        let mut size = 0;
        for (name, view) in self.shared.log.topics() {
            let info = view.info(0, &name);
            size += prost::Message::encoded_len(&info) + 4;
            if size > budget {
                list.truncated = true;
                break;
            }
            list.topics.push(info);
        }
        self.send(Frame::from_op(Op::TopicList(list))).await
    }
}

impl Session {
    pub(super) async fn consumer_info(&mut self, r: v1::ConsumerInfoRequest) -> Result<(), Closed> {
        match self.shared.consumers.info(&r.topic, &r.name).await {
            Some(mut info) => {
                info.req_id = r.req_id;
                self.send(Frame::from_op(Op::ConsumerInfo(info))).await
            }
            None => {
                let msg = format!("no consumer {:?} on topic {:?}", r.name, r.topic);
                self.refuse(r.req_id, Refusal::NotFound(msg)).await
            }
        }
    }

    /// Refuses a removal by a connection that is not an admin.
    fn admin_only(&self, what: &str) -> Result<(), Refusal> {
        if self.identity.is_admin() {
            return Ok(());
        }
        Err(Refusal::PermissionDenied(format!(
            "user {:?} may not {what} (needs admin)",
            self.identity.name()
        )))
    }

    pub(super) async fn topic_delete(&mut self, d: v1::TopicDelete) -> Result<(), Closed> {
        let v1::TopicDelete { req_id, name } = d;
        let done = match self.admin_only("delete topics") {
            Ok(()) => self.shared.delete_topic(&name).await.map(drop),
            Err(refusal) => Err(refusal),
        };
        self.confirm_or_refuse(req_id, done).await
    }

    pub(super) async fn topic_purge(&mut self, p: v1::TopicPurge) -> Result<(), Closed> {
        let v1::TopicPurge { req_id, name, keep } = p;
        let done = match self.admin_only("purge topics") {
            Ok(()) => self.shared.purge_topic(&name, keep).await,
            Err(refusal) => Err(refusal),
        };
        match done {
            Ok(view) => {
                let info = view.info(req_id, &name);
                self.send(Frame::from_op(Op::TopicInfo(info))).await
            }
            Err(refusal) => self.refuse(req_id, refusal).await,
        }
    }

    pub(super) async fn consumer_delete(&mut self, d: v1::ConsumerDelete) -> Result<(), Closed> {
        let v1::ConsumerDelete {
            req_id,
            topic,
            name,
        } = d;
        let done = match self.admin_only("delete consumers") {
            Ok(()) => self.shared.delete_consumer(&topic, &name).await,
            Err(refusal) => Err(refusal),
        };
        self.confirm_or_refuse(req_id, done).await
    }

    /// `Confirm` for a request that went through, its refusal otherwise.
    async fn confirm_or_refuse(
        &self,
        req_id: u64,
        done: Result<(), Refusal>,
    ) -> Result<(), Closed> {
        match done {
            Ok(()) => {
                self.send(Frame::from_op(Op::Confirm(v1::Confirm { req_id })))
                    .await
            }
            Err(refusal) => self.refuse(req_id, refusal).await,
        }
    }

    pub(super) async fn consumer_list(&mut self, r: v1::ConsumerListRequest) -> Result<(), Closed> {
        let consumers = self.shared.consumers.list(&r.topic).await;
        let list = v1::ConsumerList {
            req_id: r.req_id,
            consumers,
        };
        self.send(Frame::from_op(Op::ConsumerList(list))).await
    }
}
