//! An embedding program adds a transport of its own (here a Unix socket) through
//! `BrokerBuilder::listener` and the public seam in `rtc_broker::transport`: its
//! connections get the same sessions as TCP ones (handshake, publish, fan-out to other
//! transports) and go through the same accept path (the handshake timeout and the
//! connection limit, shared with the broker's own listeners).

mod common;

use std::io;
use std::time::Duration;

use common::{RawConn, WAIT};
use rtc_broker::transport::{ByteStream, ByteStreamSource, Connection, Incoming, Listener};
use rtc_broker::Broker;
use rtc_proto::codec::encode_frame;
use rtc_proto::{ErrorCode, Frame};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};

/// A Unix socket listener, written only against the public transport seam.
struct Unix {
    listener: UnixListener,
    path: String,
}

impl Listener for Unix {
    type Incoming = UnixIncoming;

    fn transport(&self) -> &'static str {
        "unix"
    }

    fn address(&self) -> String {
        self.path.clone()
    }

    async fn accept(&mut self) -> Option<io::Result<UnixIncoming>> {
        Some(self.listener.accept().await.map(|(s, _)| UnixIncoming(s)))
    }
}

struct UnixIncoming(UnixStream);

impl Incoming for UnixIncoming {
    type Source = ByteStreamSource<OwnedReadHalf>;
    type Sink = ByteStream<OwnedWriteHalf>;

    fn peer(&self) -> String {
        "unix".into()
    }

    async fn open(self, max_frame_size: usize) -> io::Result<Connection<Self::Source, Self::Sink>> {
        let (reader, writer) = self.0.into_split();
        Ok(Connection {
            source: ByteStreamSource::new(reader, max_frame_size),
            sink: ByteStream(writer),
            peer: "unix".into(),
            direct: None,
            datagrams: None,
        })
    }

    async fn refuse(mut self, error: Frame) {
        let mut buf = bytes::BytesMut::new();
        if encode_frame(&error, usize::MAX, &mut buf).is_ok() {
            let _ = self.0.write_all(&buf).await;
        }
    }
}

struct Embedded {
    handle: rtc_broker::BrokerHandle,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn start(tweak: impl FnOnce(&mut rtc_broker::Config)) -> Embedded {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("rtc.sock");
    let unix = Unix {
        listener: UnixListener::bind(&socket).unwrap(),
        path: socket.display().to_string(),
    };
    let handle = Broker::builder()
        .tcp("127.0.0.1:0".parse().unwrap())
        .http(None)
        .data_dir(dir.path().join("data"))
        .configure(tweak)
        .listener(unix)
        .start()
        .await
        .unwrap();
    Embedded {
        handle,
        socket,
        _dir: dir,
    }
}

#[tokio::test]
async fn an_added_listener_serves_full_sessions_that_reach_other_transports() {
    let b = start(|_| {}).await;
    assert_eq!(
        b.handle.extra_listeners(),
        &[("unix", b.socket.display().to_string())]
    );
    let mut tcp_sub = RawConn::hello(b.handle.tcp_addr()).await;
    tcp_sub.subscribe_ok(1, "embed.>").await;

    let stream = UnixStream::connect(&b.socket).await.unwrap();
    let mut unix = RawConn::over(stream).handshake().await;
    // A durable publish over the added transport: stored, acknowledged, fanned out.
    unix.publish_acked("embed.x", b"over unix").await;
    let (sub_id, topic, payload) = tcp_sub.expect_deliver().await;
    assert_eq!(
        (sub_id, topic.as_str(), &payload[..]),
        (1, "embed.x", &b"over unix"[..])
    );
    // And the other way: a TCP publish reaches a subscriber on the Unix socket.
    unix.subscribe_ok(7, "embed.back").await;
    let mut tcp_pub = RawConn::hello(b.handle.tcp_addr()).await;
    tcp_pub.publish_acked("embed.back", b"over tcp").await;
    let (sub_id, _, payload) = unix.expect_deliver().await;
    assert_eq!((sub_id, &payload[..]), (7, &b"over tcp"[..]));
    b.handle.shutdown().await;
}

#[tokio::test]
async fn an_added_listener_gets_the_same_handshake_timeout() {
    let b = start(|c| c.handshake_timeout = Duration::from_millis(200)).await;
    // Silent after connecting: closed with HANDSHAKE_TIMEOUT, as over TCP.
    let stream = UnixStream::connect(&b.socket).await.unwrap();
    let mut silent = RawConn::over(stream);
    silent.expect_error(ErrorCode::HandshakeTimeout).await;
    silent.expect_closed().await;
    b.handle.shutdown().await;
}

#[tokio::test]
async fn the_connection_limit_counts_every_listener() {
    let b = start(|c| c.max_connections = 1).await;
    // With a TCP client in, the Unix socket's connection is refused, saying why.
    let mut tcp = RawConn::hello(b.handle.tcp_addr()).await;
    let stream = UnixStream::connect(&b.socket).await.unwrap();
    let mut refused = RawConn::over(stream);
    let e = refused.expect_error(ErrorCode::LimitExceeded).await;
    assert!(e.message.contains("at most 1 connections"), "{e:?}");
    tcp.ping(1).await;
    let _ = tokio::time::timeout(WAIT, b.handle.shutdown()).await;
}
