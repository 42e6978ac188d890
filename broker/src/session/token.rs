//! A connection's token over time: a token that expires (a JWT) closes the connection
//! with `UNAUTHORIZED` when it does, unless the client sent a fresh one first with
//! `AuthRefresh`. The fresh token must name the same identity; its permissions apply
//! from then on (subscriptions already made stay).

use std::time::Duration;

use rtc_proto::v1::{self, frame::Op};
use rtc_proto::Frame;
use tokio::time::Instant;

use super::Session;
use crate::auth::Identity;
use crate::clock::now_ms;
use crate::outbound::Closed;
use crate::refusal::Refusal;

/// Waits until `at`; for ever without one.
pub(super) async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Why a connection whose token expired is closed.
pub(super) fn expired() -> Refusal {
    Refusal::Unauthorized(
        "the connection's token has expired; send AuthRefresh with a fresh one before it does"
            .into(),
    )
}

impl Session {
    /// Acts as `identity` from now on, until its token expires.
    pub(super) fn set_identity(&mut self, identity: Identity) {
        self.expires = identity.expires_at_ms().map(|ms| {
            let left = ms.saturating_sub(now_ms()).max(0) as u64;
            Instant::now() + Duration::from_millis(left)
        });
        self.identity = identity;
    }

    pub(super) async fn refresh(&mut self, r: v1::AuthRefresh) -> Result<(), Closed> {
        let v1::AuthRefresh { req_id, auth_token } = r;
        let identity = match self.shared.live.auth().authenticate(&auth_token) {
            Ok(identity) => identity,
            Err(why) => return self.refuse(req_id, Refusal::Unauthorized(why)).await,
        };
        if identity.name() != self.identity.name() {
            let msg = format!(
                "the fresh token is for {:?}; this connection is {:?}",
                identity.name(),
                self.identity.name()
            );
            return self.refuse(req_id, Refusal::Unauthorized(msg)).await;
        }
        let expires_at_ms = identity.expires_at_ms().unwrap_or(0);
        self.set_identity(identity);
        // Publishes check their topic's permission once per topic: check again.
        self.known_topics = Default::default();
        self.send(Frame::from_op(Op::AuthRefreshed(v1::AuthRefreshed {
            req_id,
            expires_at_ms,
        })))
        .await
    }
}
