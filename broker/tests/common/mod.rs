//! Test helpers: an in-process broker on 127.0.0.1:0 with a temp data dir, and a raw
//! protocol connection that sends and expects frames exactly as a foreign client would.
#![allow(dead_code)]

pub mod browser;
pub mod http;
pub mod sse;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rtc_broker::{Broker, BrokerHandle, Config};
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::{ErrorCode, Frame, FrameCodec, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// How long any single expected event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestBroker {
    pub handle: BrokerHandle,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

pub async fn start() -> TestBroker {
    start_with(|_| {}).await
}

pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestBroker {
    let dir = tempfile::tempdir().expect("temp dir");
    let handle = Broker::builder()
        .tcp("127.0.0.1:0".parse().unwrap())
        .http(None)
        .data_dir(dir.path())
        .configure(tweak)
        .start()
        .await
        .expect("broker starts");
    TestBroker {
        addr: handle.tcp_addr(),
        handle,
        _dir: dir,
    }
}

/// A broker with its HTTP gateway on, both on 127.0.0.1:0.
pub struct TestGateway {
    pub handle: BrokerHandle,
    /// The gateway's address.
    pub http: SocketAddr,
    _dir: tempfile::TempDir,
}

pub async fn start_gateway(tweak: impl FnOnce(&mut Config)) -> TestGateway {
    let dir = tempfile::tempdir().expect("temp dir");
    let handle = Broker::builder()
        .tcp("127.0.0.1:0".parse().unwrap())
        .http(Some("127.0.0.1:0".parse().unwrap()))
        .data_dir(dir.path())
        .configure(tweak)
        .start()
        .await
        .expect("broker starts");
    TestGateway {
        http: handle.http_addr().expect("the gateway is on"),
        handle,
        _dir: dir,
    }
}

/// A raw protocol connection over a TCP socket, or any other byte stream (`S`).
pub struct RawConn<S = TcpStream> {
    pub framed: Framed<S, FrameCodec>,
    next_req: u64,
}

/// A JWT (HS256, signed with `secret`) for user `sub`, valid for an hour, with these
/// publish and subscribe permissions.
pub fn jwt_for(secret: &str, sub: &str, publish: &[&str], subscribe: &[&str]) -> String {
    jwt_with(secret, sub, publish, subscribe, false)
}

/// [`jwt_for`] with the `admin` claim set as given.
pub fn jwt_with(
    secret: &str,
    sub: &str,
    publish: &[&str],
    subscribe: &[&str],
    admin: bool,
) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
        + 3600;
    let claims = rtc_broker::auth::jwt::Claims {
        sub: sub.into(),
        exp,
        nbf: None,
        publish: publish.iter().map(|p| p.to_string()).collect(),
        subscribe: subscribe.iter().map(|p| p.to_string()).collect(),
        admin,
    };
    rtc_broker::auth::jwt::mint_hs256(secret, &claims).expect("mint a token")
}

/// Settings that make the broker take JWTs signed with `secret`.
pub fn jwt_config(secret: &str) -> rtc_broker::auth::jwt::JwtConfig {
    rtc_broker::auth::jwt::JwtConfig {
        hs256_secret: Some(secret.into()),
        ..Default::default()
    }
}

impl RawConn {
    /// Connects and completes the handshake with `token`.
    pub async fn login(addr: SocketAddr, token: &str) -> RawConn {
        Self::connect(addr).await.handshake_with(token).await
    }

    /// Connects without sending anything.
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        RawConn::over(stream)
    }

    /// Connects and completes the handshake.
    pub async fn hello(addr: SocketAddr) -> RawConn {
        Self::connect(addr).await.handshake().await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawConn<S> {
    /// A connection over `stream`, nothing sent yet.
    pub fn over(stream: S) -> RawConn<S> {
        RawConn {
            framed: Framed::new(stream, FrameCodec::default()),
            next_req: 1,
        }
    }

    /// Sends `Hello` and expects `Welcome`.
    pub async fn handshake(self) -> RawConn<S> {
        self.handshake_with("").await
    }

    /// Sends `Hello` with `token` and expects `Welcome`.
    pub async fn handshake_with(mut self, token: &str) -> RawConn<S> {
        let c = &mut self;
        c.send(Frame::from_op(Op::Hello(v1::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "raw-test".into(),
            auth_token: token.into(),
        })))
        .await;
        match c.recv().await {
            Some(Frame {
                op: Some(Op::Welcome(_)),
            }) => self,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    pub async fn send(&mut self, frame: Frame) {
        self.framed.send(frame).await.expect("send frame");
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.framed
            .get_mut()
            .write_all(bytes)
            .await
            .expect("send raw bytes");
    }

    /// The next frame; `None` when the broker closed the connection. Fails the test after
    /// [`WAIT`].
    pub async fn recv(&mut self) -> Option<Frame> {
        match self.recv_within(WAIT).await {
            Err(_) => panic!("no frame within {WAIT:?}"),
            Ok(f) => f,
        }
    }

    /// The next frame within `wait` (`Err` when none came); `Ok(None)` when the broker
    /// closed the connection.
    pub async fn recv_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<Frame>, tokio::time::error::Elapsed> {
        Ok(
            match tokio::time::timeout(wait, self.framed.next()).await? {
                None => None,
                Some(Err(e)) if is_reset(&e) => None,
                Some(r) => Some(r.expect("decodable frame from the broker")),
            },
        )
    }

    /// The next Deliver within `wait`, however long, as (sub_id, topic, payload). The
    /// connection pings while it waits, so the broker's heartbeat keeps it open; the
    /// Pongs are skipped.
    pub async fn expect_deliver_within(&mut self, wait: Duration) -> (u64, String, Bytes) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut nonce = 0;
        while tokio::time::Instant::now() < deadline {
            match self.recv_within(Duration::from_secs(2)).await {
                Err(_) => {
                    nonce += 1;
                    self.send(Frame::from_op(Op::Ping(v1::Ping { nonce })))
                        .await;
                }
                Ok(Some(Frame {
                    op: Some(Op::Pong(_)),
                })) => {}
                Ok(Some(Frame {
                    op: Some(Op::Deliver(d)),
                })) => {
                    let m = d.message.expect("Deliver has a message");
                    return (d.sub_id, m.topic, m.payload);
                }
                other => panic!("expected Deliver, got {other:?}"),
            }
        }
        panic!("no Deliver within {wait:?}")
    }

    pub async fn expect_error(&mut self, code: ErrorCode) -> v1::Error {
        match self.recv().await {
            Some(Frame {
                op: Some(Op::Error(e)),
            }) => {
                assert_eq!(e.error_code(), code, "wrong error: {e:?}");
                e
            }
            other => panic!("expected Error {code:?}, got {other:?}"),
        }
    }

    pub async fn expect_closed(&mut self) {
        if let Some(f) = self.recv().await {
            panic!("expected the broker to close, got {f:?}");
        }
    }

    pub async fn publish(&mut self, topic: &str, payload: &'static [u8]) -> u64 {
        let req_id = self.next_req;
        self.next_req += 1;
        self.send(Frame::from_op(Op::Publish(v1::Publish {
            req_id,
            topic: topic.into(),
            payload: Bytes::from_static(payload),
            ..Default::default()
        })))
        .await;
        req_id
    }

    /// Publishes with `req_id` 0: no answer.
    pub async fn publish_unacked(&mut self, topic: &str, payload: Bytes) {
        self.send(Frame::from_op(Op::Publish(v1::Publish {
            topic: topic.into(),
            payload,
            ..Default::default()
        })))
        .await;
    }

    /// The broker's `TopicInfo` for `name`.
    pub async fn topic_info(&mut self, name: &str) -> v1::TopicInfo {
        let req_id = self.next_req;
        self.next_req += 1;
        self.send(Frame::from_op(Op::TopicInfoRequest(v1::TopicInfoRequest {
            req_id,
            name: name.into(),
        })))
        .await;
        match self.recv().await {
            Some(Frame {
                op: Some(Op::TopicInfo(t)),
            }) => t,
            other => panic!("expected TopicInfo, got {other:?}"),
        }
    }

    pub async fn publish_acked(&mut self, topic: &str, payload: &'static [u8]) {
        let req_id = self.publish(topic, payload).await;
        match self.recv().await {
            Some(Frame {
                op: Some(Op::PubAck(a)),
            }) => assert_eq!(a.req_id, req_id),
            other => panic!("expected PubAck, got {other:?}"),
        }
    }

    pub async fn subscribe(&mut self, sub_id: u64, pattern: &str) -> u64 {
        let req_id = self.next_req;
        self.next_req += 1;
        self.send(Frame::from_op(Op::Subscribe(v1::Subscribe {
            req_id,
            sub_id,
            pattern: pattern.into(),
            start: None,
            ..Default::default()
        })))
        .await;
        req_id
    }

    pub async fn subscribe_ok(&mut self, sub_id: u64, pattern: &str) {
        let req_id = self.subscribe(sub_id, pattern).await;
        match self.recv().await {
            Some(Frame {
                op: Some(Op::SubAck(a)),
            }) => {
                assert_eq!((a.req_id, a.sub_id), (req_id, sub_id))
            }
            other => panic!("expected SubAck, got {other:?}"),
        }
    }

    /// The next frame, which must be a Deliver; returns (sub_id, topic, payload).
    pub async fn expect_deliver(&mut self) -> (u64, String, Bytes) {
        match self.recv().await {
            Some(Frame {
                op: Some(Op::Deliver(d)),
            }) => {
                let m = d.message.expect("Deliver has a message");
                (d.sub_id, m.topic, m.payload)
            }
            other => panic!("expected Deliver, got {other:?}"),
        }
    }

    pub async fn ping(&mut self, nonce: u64) {
        self.send(Frame::from_op(Op::Ping(v1::Ping { nonce })))
            .await;
        match self.recv().await {
            Some(Frame {
                op: Some(Op::Pong(p)),
            }) => assert_eq!(p.nonce, nonce),
            other => panic!("expected Pong, got {other:?}"),
        }
    }
}

fn is_reset(e: &rtc_proto::CodecError) -> bool {
    matches!(e, rtc_proto::CodecError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionReset)
}

/// Proves a broker still serves others: a fresh pub/sub round trip.
pub async fn assert_serving(addr: SocketAddr) {
    let mut sub = RawConn::hello(addr).await;
    sub.subscribe_ok(1, "health.check").await;
    let mut publisher = RawConn::hello(addr).await;
    publisher.publish_acked("health.check", b"ok").await;
    let (sub_id, topic, payload) = sub.expect_deliver().await;
    assert_eq!(
        (sub_id, topic.as_str(), &payload[..]),
        (1, "health.check", &b"ok"[..])
    );
}
