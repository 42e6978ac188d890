//! Request and Reply for one session (see [`crate::request`] for the broker-wide part).
//!
//! A `Request` is checked as a publish is (topic, permission, payload and headers), then
//! goes to the subscriptions of its topic: each one outside a queue group, and one member
//! of each group ([`crate::router::Router::recipients`]). It is registered before it is
//! delivered, so that a fast reply finds it, and delivered to each recipient with the
//! request's token as `reply_to` (so the message is encoded per recipient: a request is
//! not the fan-out hot path). With no recipient, or none whose queue took it, the
//! requester gets `NO_RESPONDERS` at once. Requests are never stored.
//!
//! A `Reply` is checked like a payload, then answers the request it names, which goes to
//! the requester's queue as a `Response`; a reply to no waiting request, or from a
//! connection the request was not delivered to, is refused when it asks for an answer.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rtc_proto::v1::{self, frame::Op};
use rtc_proto::Frame;

use super::Session;
use crate::outbound::Closed;
use crate::publish;
use crate::refusal::Refusal;
use crate::request::{token, token_node};
use crate::router::{Live, Share};

impl Session {
    pub(super) async fn request(&mut self, r: v1::Request) -> Result<(), Closed> {
        let v1::Request {
            req_id,
            topic,
            payload,
            headers,
            timeout_ms,
        } = r;
        if req_id == 0 {
            let refusal = Refusal::InvalidRequest("a Request needs a req_id".into());
            return self.refuse(0, refusal).await;
        }
        if let Err(refusal) = publish::check_permission(&self.identity, &topic) {
            return self.refuse(req_id, refusal).await;
        }
        let config = &self.shared.config;
        let limit = self.shared.live.max_requests();
        if self.waiting.load(Ordering::Relaxed) >= limit {
            let msg = format!("this connection already has {limit} requests waiting, the limit");
            return self.refuse(req_id, Refusal::LimitExceeded(msg)).await;
        }
        let timeout = match timeout_ms {
            0 => config.request_timeout,
            ms => Duration::from_millis(ms).min(config.max_request_timeout),
        };
        let contents = publish::Contents {
            payload,
            headers,
            msg_id: String::new(),
        };
        let mut message =
            match publish::message(config, &self.shared.live, topic, contents, self.read_ms) {
                Ok((message, _)) => message,
                Err(refusal) => return self.refuse(req_id, refusal).await,
            };
        self.shared.metrics.request_sent();
        let recipients = self.shared.router.recipients(&message.topic);
        // In cluster mode other nodes may have responders: it goes to them too.
        let cluster = self.shared.bus.relays();
        if recipients.is_empty() && !cluster {
            self.shared.metrics.request_unanswered(false);
            let msg = format!("nothing subscribes to {:?}", message.topic);
            return self.refuse(req_id, Refusal::NoResponders(msg)).await;
        }
        // Who may answer: each connection once, however many of its subscriptions match.
        let mut answerers: Vec<u64> = recipients.iter().map(|m| m.owner).collect();
        answerers.sort_unstable();
        answerers.dedup();
        let requests = self.shared.requests.clone();
        let id = requests.open(
            self.outbox.clone(),
            req_id,
            answerers,
            timeout,
            self.waiting.clone(),
            cluster,
        );
        message.reply_to = token(id, requests.node());
        let encoded = rtc_proto::codec::encode_message(&message);
        let live = Live {
            topic: &message.topic,
            seq: 0,
            message: &encoded,
            datagram: false,
            share: Share::Reference,
        };
        let mut taken = 0;
        for member in &recipients {
            if member.sub.deliver(&live, &mut self.later) {
                taken += 1;
            }
        }
        if cluster {
            // PUBLISH counts every node listening to the topic, this one too when its
            // own subscribers match.
            let nodes = self
                .shared
                .bus
                .request(&message.topic, encoded.clone())
                .await;
            taken += nodes.saturating_sub(u64::from(!recipients.is_empty()));
        }
        if taken == 0 {
            self.shared.metrics.request_unanswered(false);
            requests.cancel(id);
            let msg = format!(
                "the subscribers of {:?} are too far behind to take a request",
                message.topic
            );
            return self.refuse(req_id, Refusal::NoResponders(msg)).await;
        }
        Ok(())
    }

    pub(super) async fn reply(&mut self, r: v1::Reply) -> Result<(), Closed> {
        let v1::Reply {
            req_id,
            reply_to,
            payload,
            headers,
        } = r;
        let max = self.shared.live.max_payload();
        let checked = if payload.len() > max {
            Err(Refusal::PayloadTooLarge(format!(
                "reply payload of {} bytes; the limit is {max}",
                payload.len()
            )))
        } else {
            rtc_proto::headers::validate_headers(&headers).map_err(Refusal::InvalidRequest)
        };
        let answered = checked.and_then(|()| self.shared.requests.answer(&reply_to, self.conn_id));
        let pending = match answered {
            Ok(pending) => pending,
            Err(Refusal::NotFound(why)) => {
                // A request from another node: its reply goes there.
                let elsewhere = token_node(&reply_to)
                    .filter(|&node| Some(node) != self.shared.requests.node())
                    .map(str::to_string);
                let forwarded = match elsewhere {
                    Some(node) => {
                        let reply = v1::Reply {
                            req_id: 0,
                            reply_to,
                            payload,
                            headers,
                        };
                        self.shared.bus.reply(&node, reply).await
                    }
                    None => false,
                };
                return match (forwarded, req_id) {
                    (_, 0) => Ok(()),
                    (true, _) => {
                        self.send(Frame::from_op(Op::Confirm(v1::Confirm { req_id })))
                            .await
                    }
                    (false, _) => self.refuse(req_id, Refusal::NotFound(why)).await,
                };
            }
            Err(refusal) if req_id != 0 => return self.refuse(req_id, refusal).await,
            Err(_) => return Ok(()),
        };
        let response = Frame::from_op(Op::Response(v1::Response {
            req_id: pending.req_id,
            payload,
            headers,
        }));
        // Into the requester's queue whatever it holds: what one connection can have
        // waiting is bounded by max_requests_per_connection.
        if let Ok(true) = pending.requester.push_frame_deferred(response) {
            self.later.push(pending.requester.clone());
        }
        if req_id != 0 {
            self.send(Frame::from_op(Op::Confirm(v1::Confirm { req_id })))
                .await?;
        }
        Ok(())
    }
}
