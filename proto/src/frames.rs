//! Constructors for the frames both sides build often, so callers write
//! `Frame::error(req_id, code, msg)` rather than nesting the generated structs by hand.

use crate::v1::{self, frame::Op, ErrorCode, Frame};

impl Frame {
    /// Wraps one operation in a frame.
    pub fn from_op(op: Op) -> Self {
        Frame { op: Some(op) }
    }

    /// An `Error` frame answering request `req_id` (0 when it answers none).
    pub fn error(req_id: u64, code: ErrorCode, message: impl Into<String>) -> Self {
        Self::from_op(Op::Error(v1::Error {
            req_id,
            code: code as i32,
            message: message.into(),
            sub_id: 0,
            count: 0,
            topic: String::new(),
        }))
    }

    /// An `Error` frame about subscription `sub_id`, answering no request.
    pub fn sub_error(sub_id: u64, code: ErrorCode, message: impl Into<String>) -> Self {
        Self::from_op(Op::Error(v1::Error {
            req_id: 0,
            code: code as i32,
            message: message.into(),
            sub_id,
            count: 0,
            topic: String::new(),
        }))
    }

    /// The `Error{TOPIC_DELETED}` notice for subscription `sub_id`: `topic` is gone.
    pub fn topic_deleted(sub_id: u64, topic: &str) -> Self {
        Self::from_op(Op::Error(v1::Error {
            req_id: 0,
            code: ErrorCode::TopicDeleted as i32,
            message: format!("topic {topic:?} was deleted"),
            sub_id,
            count: 0,
            topic: topic.to_string(),
        }))
    }

    /// The `Error{SLOW_CONSUMER}` notice telling a client that `count` deliveries were
    /// dropped because its outbound queue was full.
    pub fn slow_consumer(count: u64) -> Self {
        Self::from_op(Op::Error(v1::Error {
            req_id: 0,
            code: ErrorCode::SlowConsumer as i32,
            message: format!(
                "{count} message(s) dropped: this connection's outbound queue was full"
            ),
            sub_id: 0,
            count,
            topic: String::new(),
        }))
    }

    /// The short name of the operation, for logs and error messages.
    pub fn op_name(&self) -> &'static str {
        match &self.op {
            None => "unknown",
            Some(Op::Hello(_)) => "Hello",
            Some(Op::Welcome(_)) => "Welcome",
            Some(Op::Publish(_)) => "Publish",
            Some(Op::PubAck(_)) => "PubAck",
            Some(Op::Subscribe(_)) => "Subscribe",
            Some(Op::SubAck(_)) => "SubAck",
            Some(Op::Deliver(_)) => "Deliver",
            Some(Op::Unsubscribe(_)) => "Unsubscribe",
            Some(Op::UnsubAck(_)) => "UnsubAck",
            Some(Op::Ping(_)) => "Ping",
            Some(Op::Pong(_)) => "Pong",
            Some(Op::Error(_)) => "Error",
            Some(Op::TopicCreate(_)) => "TopicCreate",
            Some(Op::TopicInfoRequest(_)) => "TopicInfoRequest",
            Some(Op::TopicListRequest(_)) => "TopicListRequest",
            Some(Op::TopicInfo(_)) => "TopicInfo",
            Some(Op::TopicList(_)) => "TopicList",
            Some(Op::Ack(_)) => "Ack",
            Some(Op::Nack(_)) => "Nack",
            Some(Op::InProgress(_)) => "InProgress",
            Some(Op::Confirm(_)) => "Confirm",
            Some(Op::ConsumerInfoRequest(_)) => "ConsumerInfoRequest",
            Some(Op::ConsumerListRequest(_)) => "ConsumerListRequest",
            Some(Op::ConsumerInfo(_)) => "ConsumerInfo",
            Some(Op::ConsumerList(_)) => "ConsumerList",
            Some(Op::ReplayEnd(_)) => "ReplayEnd",
            Some(Op::AuthRefresh(_)) => "AuthRefresh",
            Some(Op::AuthRefreshed(_)) => "AuthRefreshed",
            Some(Op::Request(_)) => "Request",
            Some(Op::Response(_)) => "Response",
            Some(Op::Reply(_)) => "Reply",
            Some(Op::PresenceEvent(_)) => "PresenceEvent",
            Some(Op::PresenceRequest(_)) => "PresenceRequest",
            Some(Op::PresenceInfo(_)) => "PresenceInfo",
            Some(Op::PresenceUpdate(_)) => "PresenceUpdate",
            Some(Op::TopicDelete(_)) => "TopicDelete",
            Some(Op::TopicPurge(_)) => "TopicPurge",
            Some(Op::ConsumerDelete(_)) => "ConsumerDelete",
        }
    }
}

impl v1::Error {
    /// The error code, or `Unspecified` for a number this version does not know.
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::try_from(self.code).unwrap_or(ErrorCode::Unspecified)
    }
}

impl ErrorCode {
    /// The code's short stable name as documented in docs/protocol.md, e.g.
    /// `INVALID_TOPIC` for `ERROR_CODE_INVALID_TOPIC`.
    pub fn name(self) -> &'static str {
        let full = self.as_str_name();
        full.strip_prefix("ERROR_CODE_").unwrap_or(full)
    }
}
