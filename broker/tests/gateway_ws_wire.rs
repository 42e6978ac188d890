//! The WebSocket wire as the broker speaks it, seen from a raw socket with frames built
//! byte by byte (no WebSocket library between the test and the broker): the opening
//! handshake and its refusals, a client's ping answered with its data, a fragmented
//! message joined, a large message both ways, and frames the RFC forbids a client
//! refused with `BAD_FRAME` and a Close.

mod common;

use std::net::SocketAddr;

use bytes::{Buf, BufMut, BytesMut};
use common::{http, start_gateway, WAIT};
use prost::Message as _;
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::{ErrorCode, Frame, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A WebSocket on a raw socket.
struct RawWs {
    tcp: TcpStream,
    buf: BytesMut,
}

/// A masked client frame.
fn client_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = Vec::new();
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n <= 0xffff => {
            out.push(bit | 126);
            out.put_u16(n as u16);
        }
        n => {
            out.push(bit | 127);
            out.put_u64(n as u64);
        }
    }
    if masked {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

impl RawWs {
    /// Upgrades a new connection, asking for `rtc.v1.proto`; checks the 101.
    async fn connect(addr: SocketAddr) -> RawWs {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nConnection: keep-alive, Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: rtc.v1.proto\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut buf = BytesMut::new();
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let n = tokio::time::timeout(WAIT, tcp.read_buf(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed during the handshake");
        };
        let head = String::from_utf8(buf.split_to(end).to_vec()).unwrap();
        let lower = head.to_ascii_lowercase();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // RFC 6455, 1.3: the accept value for this key.
        assert!(
            lower.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        assert!(
            lower.contains("sec-websocket-protocol: rtc.v1.proto"),
            "{head}"
        );
        RawWs { tcp, buf }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    async fn send(&mut self, frame: Frame) {
        self.send_raw(&client_frame(true, BINARY, &frame.encode_to_vec(), true))
            .await;
    }

    /// The next server frame: opcode and payload; `None` once the socket closes. Checks
    /// that the server does not mask and does not fragment.
    async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let (b0, b1) = (self.buf[0], self.buf[1]);
                assert_eq!(b0 & 0xf0, 0x80, "final, no reserved bits");
                assert_eq!(b1 & 0x80, 0, "a server does not mask");
                let (len, at) = match b1 & 0x7f {
                    126 if self.buf.len() >= 4 => ((&self.buf[2..4]).get_u16() as usize, 4),
                    127 if self.buf.len() >= 10 => ((&self.buf[2..10]).get_u64() as usize, 10),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    self.buf.advance(at);
                    return Some((b0 & 0x0f, self.buf.split_to(len).to_vec()));
                }
            }
            let n = tokio::time::timeout(WAIT, self.tcp.read_buf(&mut self.buf))
                .await
                .expect("a frame within the wait")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// The next rtc frame, skipping the broker's heartbeat pings and its pongs.
    async fn recv(&mut self) -> Frame {
        loop {
            let (opcode, payload) = self.next().await.expect("a frame, not a close");
            if opcode == PONG {
                continue;
            }
            assert_eq!(opcode, BINARY, "{payload:?}");
            let frame = Frame::decode(&payload[..]).unwrap();
            if !matches!(frame.op, Some(Op::Ping(_))) {
                return frame;
            }
        }
    }

    async fn hello(addr: SocketAddr) -> RawWs {
        let mut ws = RawWs::connect(addr).await;
        ws.send(Frame::from_op(Op::Hello(v1::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "raw-ws".into(),
            auth_token: String::new(),
        })))
        .await;
        assert!(matches!(ws.recv().await.op, Some(Op::Welcome(_))));
        ws
    }

    /// An `Error` with `code`, then a Close 1000, then the end of the socket.
    async fn expect_error_and_close(&mut self, code: ErrorCode) {
        match self.recv().await.op {
            Some(Op::Error(e)) => assert_eq!(e.error_code(), code, "{e:?}"),
            other => panic!("expected Error {code:?}, got {other:?}"),
        }
        assert_eq!(self.next().await, Some((CLOSE, vec![0x03, 0xe8])));
        assert_eq!(self.next().await, None);
    }
}

fn publish(req_id: u64, topic: &str, payload: Vec<u8>) -> Frame {
    Frame::from_op(Op::Publish(v1::Publish {
        req_id,
        topic: topic.into(),
        payload: payload.into(),
        ..Default::default()
    }))
}

#[tokio::test]
async fn handshakes_that_are_not_websocket_upgrades_are_refused_with_a_code() {
    let g = start_gateway(|_| {}).await;
    let upgrade = [
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ];
    let missing_key = [upgrade[0], upgrade[1], "Sec-WebSocket-Version: 13"];
    let missing_key = http::request(g.http, "GET", "/v1/ws", &missing_key, b"").await;
    assert_eq!(missing_key.status, 400, "{missing_key:?}");
    assert_eq!(missing_key.json()["code"], "INVALID_REQUEST");
    let plain = http::request(g.http, "GET", "/v1/ws", &[], b"").await;
    assert_eq!(plain.status, 400);
    let mut old = upgrade.to_vec();
    old.push("Sec-WebSocket-Version: 8");
    let old = http::request(g.http, "GET", "/v1/ws", &old, b"").await;
    assert_eq!(old.status, 426);
    assert_eq!(old.header("sec-websocket-version"), Some("13"));
    // The real thing still works.
    RawWs::hello(g.http).await;
    g.handle.shutdown().await;
}

#[tokio::test]
async fn a_ping_gets_its_data_back_and_a_fragmented_message_is_joined() {
    let g = start_gateway(|_| {}).await;
    let mut ws = RawWs::hello(g.http).await;
    ws.send_raw(&client_frame(true, PING, b"are you there", true))
        .await;
    loop {
        match ws.next().await {
            Some((PONG, data)) => break assert_eq!(data, b"are you there"),
            Some((BINARY, _)) => continue, // a heartbeat
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    // A publish in three fragments, with a ping between two of them.
    let frame = publish(7, "wire.frag", b"joined".to_vec()).encode_to_vec();
    let (a, rest) = frame.split_at(3);
    let (b, c) = rest.split_at(4);
    let mut bytes = client_frame(false, BINARY, a, true);
    bytes.extend(client_frame(false, CONTINUATION, b, true));
    bytes.extend(client_frame(true, PING, b"", true));
    bytes.extend(client_frame(true, CONTINUATION, c, true));
    ws.send_raw(&bytes).await;
    match ws.recv().await.op {
        Some(Op::PubAck(ack)) => assert_eq!((ack.req_id, ack.seq), (7, 1)),
        other => panic!("expected PubAck, got {other:?}"),
    }
    g.handle.shutdown().await;
}

#[tokio::test]
async fn a_large_message_travels_both_ways() {
    let g = start_gateway(|_| {}).await;
    let mut sub = RawWs::hello(g.http).await;
    sub.send(Frame::from_op(Op::Subscribe(v1::Subscribe {
        req_id: 1,
        sub_id: 1,
        pattern: "wire.big".into(),
        ..Default::default()
    })))
    .await;
    assert!(matches!(sub.recv().await.op, Some(Op::SubAck(_))));
    let mut publisher = RawWs::hello(g.http).await;
    // Above 64 KiB: a 64-bit length, and many reads on each side.
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    publisher
        .send(publish(2, "wire.big", payload.clone()))
        .await;
    assert!(matches!(publisher.recv().await.op, Some(Op::PubAck(_))));
    match sub.recv().await.op {
        Some(Op::Deliver(v1::Deliver {
            message: Some(m), ..
        })) => assert!(m.payload[..] == payload[..], "the same bytes"),
        other => panic!("expected Deliver, got {other:?}"),
    }
    g.handle.shutdown().await;
}

#[tokio::test]
async fn frames_a_client_may_not_send_are_refused() {
    let g = start_gateway(|_| {}).await;
    let ping = Frame::from_op(Op::Ping(v1::Ping { nonce: 1 })).encode_to_vec();
    let mut reserved = client_frame(true, BINARY, &ping, true);
    reserved[0] |= 0x40;
    let mut twice = client_frame(false, BINARY, &ping, true);
    twice.extend(client_frame(true, BINARY, &ping, true));
    let cases = [
        ("unmasked", client_frame(true, BINARY, &ping, false)),
        ("reserved bits", reserved),
        ("unknown opcode", client_frame(true, 0x3, &ping, true)),
        ("fragmented ping", client_frame(false, PING, b"", true)),
        (
            "continuation of nothing",
            client_frame(true, CONTINUATION, &ping, true),
        ),
        ("a message inside a message", twice),
    ];
    for (what, bytes) in cases {
        println!("{what}");
        let mut ws = RawWs::hello(g.http).await;
        ws.send_raw(&bytes).await;
        ws.expect_error_and_close(ErrorCode::BadFrame).await;
    }
    // A length far above the limit is refused from the header alone.
    let mut ws = RawWs::hello(g.http).await;
    ws.send_raw(&[0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4])
        .await;
    ws.expect_error_and_close(ErrorCode::FrameTooLarge).await;
    // A clean close is answered with a close.
    let mut ws = RawWs::hello(g.http).await;
    ws.send_raw(&client_frame(true, CLOSE, &[0x03, 0xe8], true))
        .await;
    assert_eq!(ws.next().await, Some((CLOSE, vec![0x03, 0xe8])));
    assert_eq!(ws.next().await, None);
    g.handle.shutdown().await;
}
