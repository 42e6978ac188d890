//! Presence for one session (see [`crate::presence`] for the rooms): the checks of a
//! Subscribe that joins a room, who the member is, and presence queries.
//!
//! The member is always the connection's authenticated user (a `[[user]]`'s name or a
//! JWT's `sub`), never a name the client gives; on an open broker each connection is
//! its own member, `anon-<connection_id>`.

use rtc_proto::topic::validate_topic;
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::Frame;

use super::Session;
use crate::outbound::Closed;
use crate::refusal::Refusal;

impl Session {
    /// The member this connection is in a room.
    pub(super) fn presence_user(&self) -> String {
        match self.identity.user_id() {
            Some(user) => user.to_string(),
            None => format!("anon-{}", self.conn_id),
        }
    }

    /// Whether subscription request `s` may join the presence of its pattern.
    pub(super) fn check_presence_join(&self, s: &v1::Subscribe) -> Result<(), Refusal> {
        let Some(join) = &s.presence else {
            return Ok(());
        };
        if validate_topic(&s.pattern).is_err() {
            return Err(Refusal::InvalidRequest(format!(
                "presence is per room: the pattern must be one topic, not {:?}",
                s.pattern
            )));
        }
        if !s.consumer.is_empty() {
            let msg = "presence is for plain subscriptions, not durable consumers";
            return Err(Refusal::InvalidRequest(msg.into()));
        }
        let max = self.shared.config.max_presence_info;
        if join.info.len() > max {
            return Err(Refusal::PayloadTooLarge(format!(
                "presence info of {} bytes; the limit is {max}",
                join.info.len()
            )));
        }
        if !join.info.is_empty() && serde_json::from_str::<serde_json::Value>(&join.info).is_err() {
            let msg = "presence info must be JSON (or empty)";
            return Err(Refusal::InvalidRequest(msg.into()));
        }
        Ok(())
    }

    pub(super) async fn presence_update(&mut self, u: v1::PresenceUpdate) -> Result<(), Closed> {
        let v1::PresenceUpdate {
            req_id,
            topic,
            key,
            value,
            ttl_ms,
        } = u;
        // The seat: this connection's subscription joined to that room.
        let seat = self
            .subs
            .iter()
            .find(|(_, s)| s.presence.is_some() && s.pattern == topic)
            .map(|(sub_id, _)| (self.conn_id, *sub_id));
        let ttl = (ttl_ms > 0).then(|| std::time::Duration::from_millis(ttl_ms));
        let done = match seat {
            None => Err(Refusal::NotFound(format!(
                "this connection has not joined the presence of {topic:?}"
            ))),
            Some(seat) => {
                let user = self.presence_user();
                self.shared
                    .presence
                    .update(&topic, &user, seat, &key, &value, ttl)
            }
        };
        match done {
            Ok(()) if req_id != 0 => {
                self.send(Frame::from_op(Op::Confirm(v1::Confirm { req_id })))
                    .await
            }
            Ok(()) => Ok(()),
            Err(refusal) => self.refuse(req_id, refusal).await,
        }
    }

    pub(super) async fn presence_query(&mut self, r: v1::PresenceRequest) -> Result<(), Closed> {
        if let Err(e) = validate_topic(&r.topic) {
            let refusal = Refusal::InvalidTopic(format!("{:?}: {e}", r.topic));
            return self.refuse(r.req_id, refusal).await;
        }
        if !self.identity.can_subscribe(&r.topic) {
            let msg = format!(
                "user {:?} may not see who is in {:?}",
                self.identity.name(),
                r.topic
            );
            return self.refuse(r.req_id, Refusal::PermissionDenied(msg)).await;
        }
        let info = self.shared.presence.query_now(&r).await;
        self.send(Frame::from_op(Op::PresenceInfo(info))).await
    }
}
