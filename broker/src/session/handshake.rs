//! The handshake of a session: a `Hello` within the handshake timeout, its version and
//! credentials checked, answered with a `Welcome` that announces the limits and
//! features; the connection's entry in the broker's table from then on.

use std::sync::Arc;

use rtc_proto::v1::{self, frame::Op};
use rtc_proto::{Frame, PROTOCOL_VERSION};
use tokio_util::sync::CancellationToken;

use super::{next_frame, saturating_u32, FrameSource, Session};
use crate::clock::now_ms;
use crate::connections::Conn;
use crate::metrics::AuthFailure;
use crate::outbound::Closed;
use crate::refusal::Refusal;

/// What every connection offers (`Welcome.features`): durable topics, replay from a
/// position, durable consumers, topic administration, the `ReplayEnd` marker,
/// request-reply, queue groups and presence.
const FEATURES: [&str; 8] = [
    "durable",
    "replay",
    "consumers",
    "topic-admin",
    "replay-end",
    "request-reply",
    "queue-groups",
    "presence",
];

impl Session {
    /// The handshake: a Hello within the handshake timeout, checked and authenticated,
    /// answered with a Welcome; the connection's entry, or `None` when it ended (refused,
    /// or closed by the peer).
    pub(super) async fn handshake<S: FrameSource>(
        &mut self,
        source: &mut S,
        cancel: &CancellationToken,
    ) -> Result<Option<Arc<Conn>>, Closed> {
        let shared = self.shared.clone();
        let config = &shared.config;
        let shutting_down = || Refusal::ShuttingDown("broker is shutting down".into());
        // Handshake.
        let first = tokio::select! {
            _ = cancel.cancelled() => return self.close_with(shutting_down()).await.map(|()| None),
            r = tokio::time::timeout(config.handshake_timeout, next_frame(source)) => r,
        };
        let hello = match first {
            Err(_) => {
                let msg = format!("no Hello within {:?}", config.handshake_timeout);
                return self
                    .close_with(Refusal::HandshakeTimeout(msg))
                    .await
                    .map(|()| None);
            }
            Ok(Ok(None)) => return Ok(None),
            Ok(Err(refusal)) => return self.close_with(refusal).await.map(|()| None),
            Ok(Ok(Some(Frame {
                op: Some(Op::Hello(h)),
            }))) => h,
            Ok(Ok(Some(other))) => {
                let msg = format!("the first frame must be Hello, got {}", other.op_name());
                return self
                    .close_with(Refusal::HandshakeRequired(msg))
                    .await
                    .map(|()| None);
            }
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            let msg = format!(
                "protocol version {} is not supported; this broker speaks {PROTOCOL_VERSION}",
                hello.protocol_version
            );
            return self
                .close_with(Refusal::UnsupportedVersion(msg))
                .await
                .map(|()| None);
        }
        match self.shared.live.auth().authenticate(&hello.auth_token) {
            Ok(identity) => self.set_identity(identity),
            Err(why) => {
                self.shared
                    .metrics
                    .auth_failed(if hello.auth_token.is_empty() {
                        AuthFailure::MissingToken
                    } else {
                        AuthFailure::InvalidToken
                    });
                tracing::info!(conn_id = self.conn_id, client = %hello.client_name, %why, "refused: invalid or missing token");
                self.shared.events.record(
                    "auth_failure",
                    format!("{} {}: {why}", self.transport, self.peer),
                );
                let msg = format!("{why}: this broker requires a valid token in Hello.auth_token");
                return self
                    .close_with(Refusal::Unauthorized(msg))
                    .await
                    .map(|()| None);
            }
        }
        tracing::debug!(conn_id = self.conn_id, client = %hello.client_name, user = self.identity.name(), "handshake done");
        let entry = Arc::new(Conn::new(
            self.conn_id,
            self.transport,
            self.peer.clone(),
            self.identity.name(),
            now_ms(),
            self.outbox.clone(),
        ));
        self.shared.connections.add(entry.clone());
        self.shared.events.record(
            "connect",
            format!(
                "connection {} ({} {}, user {}, client {:?})",
                self.conn_id,
                self.transport,
                self.peer,
                self.identity.name(),
                hello.client_name
            ),
        );
        self.entry = Some(entry.clone());
        self.send(Frame::from_op(Op::Welcome(v1::Welcome {
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: PROTOCOL_VERSION,
            max_frame_size: config.max_frame_size as u32,
            heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u32,
            features: self.features(),
            connection_id: self.conn_id,
            max_payload: saturating_u32(self.shared.live.max_payload()),
            max_msg_id: saturating_u32(self.shared.live.max_msg_id()),
        })))
        .await?;
        self.flush();
        Ok(Some(entry))
    }

    /// What `Welcome.features` announces on this connection (docs/protocol.md,
    /// "Features").
    fn features(&self) -> Vec<String> {
        let mut features: Vec<String> = FEATURES.iter().map(|f| f.to_string()).collect();
        if self.datagrams.is_some() {
            features.push("datagrams".into());
        }
        features
    }
}
