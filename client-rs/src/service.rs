//! Request-reply from the client's side: [`Client::request`] asks the responders of a
//! topic and waits for the first answer; a responder subscribes as usual (in a queue
//! group with [`crate::SubscribeOptions::group`] to share requests) and answers each
//! [`Message`] whose `reply_to` is set with [`Client::reply`] (fire-and-forget, as a
//! responder keeping up with many requests needs) or [`Client::reply_confirmed`].
//!
//! Requests are not kept for a reconnect: a request in flight when the connection drops
//! fails with [`Error::Closed`] (the broker could not route its answer to the new
//! connection), and so does a reply to a request received before the drop.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::Frame;

use crate::client::Client;
use crate::error::Error;
use crate::message::{Message, Topic};
use crate::outgoing::Outgoing;
use crate::requests::unexpected;

/// How much longer than the request's own timeout the client waits for the broker's
/// `TIMEOUT`, before it gives up by itself.
const GRACE: Duration = Duration::from_secs(2);

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The responder's payload.
    pub payload: Bytes,
    /// The responder's headers.
    pub headers: BTreeMap<String, String>,
}

impl Client {
    /// Sends `payload` to the responders of `topic` and waits up to `timeout` for the
    /// first reply. Fails with the broker's `NO_RESPONDERS` at once when nothing
    /// subscribes to the topic, and with `TIMEOUT` when no reply comes in time.
    pub async fn request(
        &self,
        topic: impl Into<Topic>,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Response, Error> {
        self.request_with(topic, payload, BTreeMap::new(), timeout)
            .await
    }

    /// [`Client::request`] with headers.
    pub async fn request_with(
        &self,
        topic: impl Into<Topic>,
        payload: impl Into<Bytes>,
        headers: BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<Response, Error> {
        let request = v1::Request {
            req_id: 0,
            topic: topic.into().into(),
            payload: payload.into(),
            headers,
            timeout_ms: timeout.as_millis().max(1) as u64,
        };
        let answer = self
            .inner
            .request_waiting(timeout + GRACE, |req_id| {
                Frame::from_op(Op::Request(v1::Request { req_id, ..request }))
            })
            .await?;
        match answer {
            Op::Response(v1::Response {
                req_id: _,
                payload,
                headers,
            }) => Ok(Response { payload, headers }),
            other => Err(unexpected("Response", other)),
        }
    }

    /// Answers `request` (a message delivered with `reply_to`) with `payload`, without
    /// waiting for the broker: returns once the reply is queued for the socket. A reply
    /// the broker refuses (the request was answered already or timed out) is only
    /// logged; use [`Client::reply_confirmed`] to learn of it.
    pub async fn reply(&self, request: &Message, payload: impl Into<Bytes>) -> Result<(), Error> {
        let frame = Frame::from_op(Op::Reply(reply_to(request, payload)?));
        let len = rtc_proto::codec::frame_len(&frame);
        self.inner.send(Outgoing::Frame(frame), len).await
    }

    /// [`Client::reply`], waiting for the broker to take the reply: fails with its
    /// `NOT_FOUND` when the request was answered already or timed out.
    pub async fn reply_confirmed(
        &self,
        request: &Message,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        let reply = reply_to(request, payload)?;
        match self
            .inner
            .request(|req_id| Frame::from_op(Op::Reply(v1::Reply { req_id, ..reply })))
            .await?
        {
            Op::Confirm(_) => Ok(()),
            other => Err(unexpected("Confirm", other)),
        }
    }
}

/// The `Reply` (req_id 0) answering `request` with `payload`.
fn reply_to(request: &Message, payload: impl Into<Bytes>) -> Result<v1::Reply, Error> {
    if request.reply_to.is_empty() {
        return Err(Error::Server {
            code: crate::ErrorCode::InvalidRequest,
            message: "this message is not a request: it has no reply_to".into(),
        });
    }
    Ok(v1::Reply {
        req_id: 0,
        reply_to: request.reply_to.clone(),
        payload: payload.into(),
        headers: BTreeMap::new(),
    })
}
