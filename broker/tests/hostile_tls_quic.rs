//! Hostile clients over TLS and QUIC, against the real binary: stalled handshakes,
//! garbage after the handshake, garbage datagrams, a QUIC connection that never opens its
//! stream, and a QUIC subscriber that never reads. Each is closed or bounded, and other
//! clients keep being served on every transport.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::{RawConn, WAIT};
use rtc_proto::codec::encode_frame;
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::{ErrorCode, Frame, PROTOCOL_VERSION};
use rtc_testkit::{temp_dir, BrokerProcess};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_rtc-broker");

/// The broker binary with TLS on its TCP port and QUIC, both with a fresh self-signed
/// certificate, a 500 ms handshake timeout, a 4 MiB outbound queue and ephemeral `eph.>`.
struct Secure {
    broker: BrokerProcess,
    cert: CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

fn secure_broker() -> Secure {
    let dir = temp_dir();
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let config = dir.path().join("rtc.toml");
    std::fs::write(
        &config,
        "handshake_timeout = \"500ms\"\noutbound_queue_bytes = 4194304\n[[topic]]\npattern = \"eph.>\"\nstorage = \"ephemeral\"\n",
    )
    .unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let broker = BrokerProcess::start(
        Path::new(BIN),
        &dir.path().join("data"),
        &[
            "--config",
            &path(&config),
            "--tls-cert",
            &path(&cert),
            "--tls-key",
            &path(&key),
            "--quic",
            "127.0.0.1:0",
        ],
    );
    Secure {
        broker,
        cert: made.cert.der().clone(),
        _dir: dir,
    }
}

impl Secure {
    fn quic_addr(&self) -> SocketAddr {
        self.broker.quic.expect("QUIC is on")
    }

    fn client_config(&self, alpn: Option<&[u8]>) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        if let Some(alpn) = alpn {
            config.alpn_protocols = vec![alpn.to_vec()];
        }
        config
    }

    /// A TLS connection with its handshake done, nothing sent on it yet.
    async fn tls(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.client_config(None)));
        let tcp = TcpStream::connect(self.broker.addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        connector.connect(name, tcp).await.expect("TLS handshake")
    }

    /// A QUIC connection with its handshake done, on an endpoint of its own.
    async fn quic(&self) -> (quinn::Endpoint, quinn::Connection) {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let crypto = self.client_config(Some(rtc_broker::transport::quic::ALPN));
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let conn = endpoint
            .connect(self.quic_addr(), "127.0.0.1")
            .unwrap()
            .await
            .expect("QUIC handshake");
        (endpoint, conn)
    }

    /// A raw protocol connection on a QUIC connection's one stream.
    async fn quic_stream(
        &self,
    ) -> (
        quinn::Endpoint,
        quinn::Connection,
        RawConn<tokio::io::Join<quinn::RecvStream, quinn::SendStream>>,
    ) {
        let (endpoint, conn) = self.quic().await;
        let (send, recv) = conn.open_bi().await.unwrap();
        (endpoint, conn, RawConn::over(tokio::io::join(recv, send)))
    }

    /// A pub/sub round trip over TLS and one over QUIC: the broker serves both.
    async fn assert_serving_secure(&self) {
        let mut sub = RawConn::over(self.tls().await).handshake().await;
        sub.subscribe_ok(1, "secure.check").await;
        let (_e, _c, quic) = self.quic_stream().await;
        let mut publisher = quic.handshake().await;
        publisher.publish_acked("secure.check", b"ok").await;
        let (_, topic, payload) = sub.expect_deliver().await;
        assert_eq!((topic.as_str(), &payload[..]), ("secure.check", &b"ok"[..]));
    }
}

/// Reads until the peer closes (or resets); fails the test if it does not within `WAIT`.
async fn closed_by_broker(mut stream: impl AsyncRead + Unpin) {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the broker closes the connection");
}

fn hello() -> Frame {
    Frame::from_op(Op::Hello(v1::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "hostile".into(),
        auth_token: String::new(),
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_handshakes_are_closed_and_leave_nothing_behind() {
    let s = secure_broker();
    let baseline = s.broker.open_fds();
    // Half say nothing; half start a ClientHello record and stop.
    let mut stalled = Vec::new();
    for i in 0..100 {
        let mut tcp = TcpStream::connect(s.broker.addr).await.unwrap();
        if i % 2 == 1 {
            tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
                .await
                .unwrap();
        }
        stalled.push(tcp);
    }
    // Served meanwhile.
    s.assert_serving_secure().await;
    for tcp in stalled {
        closed_by_broker(tcp).await;
    }
    // Back to where it was once the broker has closed them all.
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.broker.open_fds() > baseline + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "descriptors {} -> {}",
            baseline,
            s.broker.open_fds()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.assert_serving_secure().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_tls_handshake_gets_an_error_and_a_close() {
    let s = secure_broker();
    // Not a frame at all.
    let mut bad = RawConn::over(s.tls().await).handshake().await;
    let junk = [0x0f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02];
    let mut buf = BytesMut::new();
    buf.put_u32(junk.len() as u32);
    buf.extend_from_slice(&junk);
    bad.send_raw(&buf).await;
    bad.expect_error(ErrorCode::BadFrame).await;
    bad.expect_closed().await;
    // A 2 GiB length, before any Hello.
    let mut big = RawConn::over(s.tls().await);
    big.send_raw(&[0x80, 0, 0, 0, 1, 2, 3]).await;
    big.expect_error(ErrorCode::FrameTooLarge).await;
    big.expect_closed().await;
    // TLS done, then nothing: closed by the handshake timeout.
    let mut silent = RawConn::over(s.tls().await);
    silent.expect_error(ErrorCode::HandshakeTimeout).await;
    silent.expect_closed().await;
    // Plain protocol bytes where TLS records are expected.
    let mut plain = TcpStream::connect(s.broker.addr).await.unwrap();
    let mut f = BytesMut::new();
    encode_frame(&hello(), usize::MAX, &mut f).unwrap();
    plain.write_all(&f).await.unwrap();
    closed_by_broker(plain).await;

    s.assert_serving_secure().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_and_quic_connections_without_a_stream_are_dropped() {
    let s = secure_broker();
    // Datagrams that are not QUIC, of every size up to a full packet.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..1000usize {
        let len = 1 + (i * 37) % 1400;
        let junk: Vec<u8> = (0..len).map(|j| (i * 31 + j * 7) as u8).collect();
        udp.send_to(&junk, s.quic_addr()).await.unwrap();
    }
    s.assert_serving_secure().await;

    // Handshake done, no stream ever opened: closed by the handshake timeout.
    let (_endpoint, conn) = s.quic().await;
    tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("the broker closes a connection that opens no stream");

    // A stream with a partial frame and then silence: closed as over TCP.
    let (_endpoint, conn, mut partial) = s.quic_stream().await;
    partial.send_raw(&[0, 0, 0, 100, 1, 2, 3]).await;
    partial.expect_error(ErrorCode::HandshakeTimeout).await;
    tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("closed after the error");

    // Garbage on the stream after Hello.
    let (_endpoint, _conn, bad) = s.quic_stream().await;
    let mut bad = bad.handshake().await;
    bad.send_raw(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).await;
    bad.expect_error(ErrorCode::BadFrame).await;
    s.assert_serving_secure().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_subscriber_that_never_reads_keeps_broker_memory_bounded() {
    let s = secure_broker();
    // Subscribed, and from then on not another byte read.
    let (_endpoint, _conn, stuck) = s.quic_stream().await;
    let mut stuck = stuck.handshake().await;
    stuck.subscribe_ok(1, "eph.>").await;

    let baseline = s.broker.rss_kib();
    let mut publisher = RawConn::over(s.tls().await).handshake().await;
    let payload = Bytes::from(vec![1u8; 4096]);
    const N: u64 = 25_000; // ~100 MiB
    for i in 1..=N {
        let frame = Frame::from_op(Op::Publish(v1::Publish {
            req_id: if i % 1000 == 0 { i } else { 0 },
            topic: "eph.data".into(),
            payload: payload.clone(),
            ..Default::default()
        }));
        let mut f = BytesMut::new();
        encode_frame(&frame, usize::MAX, &mut f).unwrap();
        publisher.send_raw(&f).await;
        if i % 1000 == 0 {
            // Every 1000th is acknowledged: the publisher is not held up.
            match publisher.recv().await {
                Some(Frame {
                    op: Some(Op::PubAck(a)),
                }) => assert_eq!(a.req_id, i),
                other => panic!("expected PubAck, got {other:?}"),
            }
        }
    }
    let rss = s.broker.rss_kib();
    println!(
        "QUIC subscriber that never reads: {} MiB published; broker RSS {baseline} -> {rss} KiB",
        (N * 4096) >> 20
    );
    assert!(
        rss < baseline + 64 * 1024,
        "broker memory grew by {} KiB",
        rss - baseline
    );
    s.assert_serving_secure().await;
    // What the stuck subscriber finds when it reads at last: what fitted in its queue,
    // then the report of what was dropped for it.
    let mut delivered = 0u64;
    let dropped = loop {
        match stuck.recv().await {
            Some(Frame {
                op: Some(Op::Deliver(_)),
            }) => delivered += 1,
            Some(Frame {
                op: Some(Op::Error(e)),
            }) if e.error_code() == ErrorCode::SlowConsumer => break e,
            other => panic!("expected deliveries then SLOW_CONSUMER, got {other:?}"),
        }
        assert!(
            delivered < N,
            "every message was queued for a subscriber that never read"
        );
    };
    println!(
        "the stuck subscriber had {delivered} delivered, then: {}",
        dropped.message
    );
}

/// With a certificate the HTTP gateway speaks HTTPS (and so WSS): a request over TLS is
/// served; a plain one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_gateway_speaks_https_with_the_certificate() {
    let dir = temp_dir();
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let broker = BrokerProcess::start(
        Path::new(BIN),
        &dir.path().join("data"),
        &[
            "--tls-cert",
            &path(&cert),
            "--tls-key",
            &path(&key),
            "--http",
            "127.0.0.1:0",
        ],
    );
    let http = broker.http.expect("the gateway's address");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(made.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(http).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .expect("TLS handshake with the gateway");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, tls.read_to_string(&mut answer))
        .await
        .expect("an answer")
        .ok();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("serving"), "{answer}");
    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let mut plain = TcpStream::connect(http).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut buf)).await;
    assert!(!buf.starts_with(b"HTTP/1.1 200"), "plain HTTP was served");
}
