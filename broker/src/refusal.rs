//! [`Refusal`]: why the broker did not carry out a request, with the stable wire code
//! (`rtc_proto::ErrorCode`) the client gets in its `Error` frame. Every layer that can
//! refuse something — sessions, the log engine, durable consumers — returns one, and the
//! session turns it into the frame ([`Refusal::frame`]), so a code is chosen where the
//! failure is understood and sent the same way from everywhere.

use rtc_proto::{ErrorCode, Frame};

/// A refused request: one variant per wire code, each with the message for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request is malformed or breaks a documented rule (`INVALID_REQUEST`).
    #[error("{0}")]
    InvalidRequest(String),
    /// A topic name is not valid (`INVALID_TOPIC`).
    #[error("{0}")]
    InvalidTopic(String),
    /// A subscription pattern is not valid (`INVALID_PATTERN`).
    #[error("{0}")]
    InvalidPattern(String),
    /// The user may not do this (`PERMISSION_DENIED`).
    #[error("{0}")]
    PermissionDenied(String),
    /// A payload or the frame built from it is above a limit (`PAYLOAD_TOO_LARGE`).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The connection publishes faster than its limit (`RATE_LIMITED`).
    #[error("{0}")]
    RateLimited(String),
    /// A broker-wide or per-connection limit is reached (`LIMIT_EXCEEDED`).
    #[error("{0}")]
    LimitExceeded(String),
    /// The sub_id is already in use on the connection (`DUPLICATE_SUBSCRIPTION`).
    #[error("{0}")]
    DuplicateSubscription(String),
    /// No active subscription has that sub_id (`UNKNOWN_SUBSCRIPTION`).
    #[error("{0}")]
    UnknownSubscription(String),
    /// No such topic or consumer (`NOT_FOUND`).
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts the state it meets (`CONFLICT`).
    #[error("{0}")]
    Conflict(String),
    /// The log engine could not store or read (`STORAGE`).
    #[error("{0}")]
    Storage(String),
    /// The broker is stopping (`SHUTTING_DOWN`).
    #[error("{0}")]
    ShuttingDown(String),
    /// The operation is not one a client may send (`UNSUPPORTED`).
    #[error("{0}")]
    Unsupported(String),
    /// No `Hello` in time (`HANDSHAKE_TIMEOUT`); the connection is closed.
    #[error("{0}")]
    HandshakeTimeout(String),
    /// The first frame was not `Hello`, or a second one came (`HANDSHAKE_REQUIRED`).
    #[error("{0}")]
    HandshakeRequired(String),
    /// The client speaks another protocol version (`UNSUPPORTED_VERSION`).
    #[error("{0}")]
    UnsupportedVersion(String),
    /// No valid token (`UNAUTHORIZED`).
    #[error("{0}")]
    Unauthorized(String),
    /// Bytes that are not a frame (`BAD_FRAME`); the connection is closed.
    #[error("{0}")]
    BadFrame(String),
    /// A frame above the announced limit (`FRAME_TOO_LARGE`); the connection is closed.
    #[error("{0}")]
    FrameTooLarge(String),
    /// Nothing received for three heartbeat intervals (`HEARTBEAT_TIMEOUT`).
    #[error("{0}")]
    HeartbeatTimeout(String),
    /// Nothing subscribes to a request's topic (`NO_RESPONDERS`).
    #[error("{0}")]
    NoResponders(String),
    /// No reply came within a request's timeout (`TIMEOUT`).
    #[error("{0}")]
    Timeout(String),
    /// A position's epoch is not its topic's (`UNRECOVERABLE_POSITION`).
    #[error("{0}")]
    UnrecoverablePosition(String),
    /// An operator disconnected the connection (`DISCONNECTED`).
    #[error("{0}")]
    Disconnected(String),
    /// Cluster mode: Redis cannot be reached (`UNAVAILABLE`).
    #[error("{0}")]
    Unavailable(String),
}

impl Refusal {
    /// The wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Refusal::InvalidTopic(_) => ErrorCode::InvalidTopic,
            Refusal::InvalidPattern(_) => ErrorCode::InvalidPattern,
            Refusal::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Refusal::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Refusal::RateLimited(_) => ErrorCode::RateLimited,
            Refusal::LimitExceeded(_) => ErrorCode::LimitExceeded,
            Refusal::DuplicateSubscription(_) => ErrorCode::DuplicateSubscription,
            Refusal::UnknownSubscription(_) => ErrorCode::UnknownSubscription,
            Refusal::NotFound(_) => ErrorCode::NotFound,
            Refusal::Conflict(_) => ErrorCode::Conflict,
            Refusal::Storage(_) => ErrorCode::Storage,
            Refusal::ShuttingDown(_) => ErrorCode::ShuttingDown,
            Refusal::Unsupported(_) => ErrorCode::Unsupported,
            Refusal::HandshakeTimeout(_) => ErrorCode::HandshakeTimeout,
            Refusal::HandshakeRequired(_) => ErrorCode::HandshakeRequired,
            Refusal::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            Refusal::Unauthorized(_) => ErrorCode::Unauthorized,
            Refusal::BadFrame(_) => ErrorCode::BadFrame,
            Refusal::FrameTooLarge(_) => ErrorCode::FrameTooLarge,
            Refusal::HeartbeatTimeout(_) => ErrorCode::HeartbeatTimeout,
            Refusal::NoResponders(_) => ErrorCode::NoResponders,
            Refusal::Timeout(_) => ErrorCode::Timeout,
            Refusal::UnrecoverablePosition(_) => ErrorCode::UnrecoverablePosition,
            Refusal::Disconnected(_) => ErrorCode::Disconnected,
            Refusal::Unavailable(_) => ErrorCode::Unavailable,
        }
    }

    /// The `Error` frame answering request `req_id` (0: not about one request).
    pub fn frame(&self, req_id: u64) -> Frame {
        Frame::error(req_id, self.code(), self.to_string())
    }

    /// The `Error` frame about subscription `sub_id` (it carries the sub_id, not a req_id).
    pub fn sub_frame(&self, sub_id: u64) -> Frame {
        Frame::sub_error(sub_id, self.code(), self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_proto::v1::frame::Op;

    #[test]
    fn the_frame_carries_the_code_and_the_message() {
        let r = Refusal::NotFound("no topic \"a\"".into());
        let Some(Op::Error(e)) = r.frame(7).op else {
            panic!("not an error frame")
        };
        assert_eq!(
            (e.req_id, e.code, e.message.as_str()),
            (7, ErrorCode::NotFound as i32, "no topic \"a\"")
        );
    }
}
