//! Presence from the client's side: who is in a room ([`Client::presence`], a page at a
//! time, or [`Client::presence_count`]), the member's ephemeral state
//! ([`Client::presence_update`]), and the events of the rooms this client joined
//! ([`Client::presence_events`]). Joining is a subscription option
//! ([`crate::SubscribeOptions::presence`]), so a reconnect rejoins with the
//! subscription.
//!
//! The types are the protocol's own (`PresenceInfo`, `PresenceMember`, `PresenceEvent`),
//! re-exported: their fields are documented in `proto/rtc.proto`.

use std::time::Duration;

use rtc_proto::v1::{self, frame::Op, PresenceEvent, PresenceInfo};
use rtc_proto::Frame;

use crate::client::Client;
use crate::error::Error;
use crate::requests::unexpected;

impl Client {
    /// One page of `topic`'s members (in order of user, `limit` of them after the user
    /// `after`; `""` and 0 for the first page of 100), with the room's counts. Pass the
    /// answer's `next` as `after` for the next page; it is empty on the last.
    pub async fn presence(
        &self,
        topic: &str,
        after: &str,
        limit: u32,
    ) -> Result<PresenceInfo, Error> {
        self.presence_request(topic, after, limit, false).await
    }

    /// How many members `topic` has, and how many connections they are joined with.
    pub async fn presence_count(&self, topic: &str) -> Result<(u64, u64), Error> {
        let info = self.presence_request(topic, "", 0, true).await?;
        Ok((info.members, info.connections))
    }

    async fn presence_request(
        &self,
        topic: &str,
        after: &str,
        limit: u32,
        count_only: bool,
    ) -> Result<PresenceInfo, Error> {
        let request = v1::PresenceRequest {
            req_id: 0,
            topic: topic.to_string(),
            count_only,
            after: after.to_string(),
            limit,
        };
        match self
            .inner
            .request(|req_id| {
                Frame::from_op(Op::PresenceRequest(v1::PresenceRequest {
                    req_id,
                    ..request
                }))
            })
            .await?
        {
            Op::PresenceInfo(info) => Ok(info),
            other => Err(unexpected("PresenceInfo", other)),
        }
    }

    /// Sets `key` of this member's state in `topic` (joined by one of this client's
    /// subscriptions) to `value` for `ttl` (`None`: until changed); `""` clears it. The
    /// broker refuses updates beyond its rate with `RATE_LIMITED`.
    pub async fn presence_update(
        &self,
        topic: &str,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        let update = v1::PresenceUpdate {
            req_id: 0,
            topic: topic.to_string(),
            key: key.to_string(),
            value: value.to_string(),
            ttl_ms: ttl.map_or(0, |t| t.as_millis().max(1) as u64),
        };
        match self
            .inner
            .request(|req_id| {
                Frame::from_op(Op::PresenceUpdate(v1::PresenceUpdate { req_id, ..update }))
            })
            .await?
        {
            Op::Confirm(_) => Ok(()),
            other => Err(unexpected("Confirm", other)),
        }
    }

    /// The events of the rooms joined with `events`, from now on. A receiver that reads
    /// slowly keeps the latest 1 024; it learns how many older ones it lost
    /// (`RecvError::Lagged`), and a query gives the state again.
    pub fn presence_events(&self) -> tokio::sync::broadcast::Receiver<PresenceEvent> {
        self.inner.shared.presence.subscribe()
    }
}
