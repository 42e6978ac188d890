//! Topic administration requests: create (or re-configure) a topic, describe one, list
//! them. Creation goes through the storage thread, which persists the settings; the
//! descriptions come from the log engine's topic metadata ([`crate::engine::Log`]).

use rtc_proto::topic::{validate_publish_topic, validate_topic};
use rtc_proto::v1::{self, frame::Op, StorageClass};
use rtc_proto::Frame;

use super::Session;
use crate::outbound::Closed;
use crate::refusal::Refusal;

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
        match self.shared.log.topic(&r.name) {
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

    pub(super) async fn consumer_list(&mut self, r: v1::ConsumerListRequest) -> Result<(), Closed> {
        let consumers = self.shared.consumers.list(&r.topic).await;
        let list = v1::ConsumerList {
            req_id: r.req_id,
            consumers,
        };
        self.send(Frame::from_op(Op::ConsumerList(list))).await
    }
}
