//! A client that closes its write side (`shutdown(SHUT_WR)`) right after its last
//! request still receives every answer the broker owes it — the PubAcks of durable
//! publishes that were still being stored included — before the broker closes. The exact
//! sequence a client wrote from docs/protocol.md lost its PubAcks in most runs: Hello,
//! three acknowledged publishes to a durable topic, a Ping, then the half-close. Run many
//! times against the real binary, with the requests in one write and in one write each.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rtc_proto::codec::encode_frame;
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::{Frame, FrameCodec, PROTOCOL_VERSION};
use rtc_testkit::{temp_dir, BrokerProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

const BIN: &str = env!("CARGO_BIN_EXE_rtc-broker");
/// How long one connection's answers may take.
const WAIT: Duration = Duration::from_secs(10);
const ROUNDS: u64 = 100;

fn encode(frames: &[Frame]) -> Vec<BytesMut> {
    frames
        .iter()
        .map(|f| {
            let mut buf = BytesMut::new();
            encode_frame(f, usize::MAX, &mut buf).unwrap();
            buf
        })
        .collect()
}

/// Every frame the broker sends until it closes the connection.
async fn read_to_end(stream: &mut TcpStream) -> Vec<Frame> {
    let mut bytes = BytesMut::new();
    tokio::time::timeout(WAIT, async {
        loop {
            let n = stream.read_buf(&mut bytes).await.expect("read");
            if n == 0 {
                break;
            }
        }
    })
    .await
    .expect("the broker closes the connection once it has answered");
    let mut codec = FrameCodec::default();
    let mut frames = Vec::new();
    while let Some(f) = codec.decode(&mut bytes).expect("frames") {
        frames.push(f);
    }
    assert!(bytes.is_empty(), "a partial frame at the end");
    frames
}

/// One connection of the sequence; checks its answers.
async fn half_close_once(addr: std::net::SocketAddr, round: u64, one_write: bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let hello = Frame::from_op(Op::Hello(v1::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "half-close".into(),
        auth_token: String::new(),
    }));
    let mut frames = vec![hello];
    for req_id in 1..=3u64 {
        frames.push(Frame::from_op(Op::Publish(v1::Publish {
            req_id,
            topic: "hc.durable".into(),
            payload: Bytes::from(format!("round {round} message {req_id}")),
            ..Default::default()
        })));
    }
    frames.push(Frame::from_op(Op::Ping(v1::Ping { nonce: round })));
    let encoded = encode(&frames);
    if one_write {
        stream.write_all(&encoded.concat()).await.unwrap();
    } else {
        for f in &encoded {
            stream.write_all(f).await.unwrap();
        }
    }
    stream.shutdown().await.unwrap();
    let got = read_to_end(&mut stream).await;
    let mut acked = BTreeSet::new();
    let mut pong = false;
    for f in &got {
        match &f.op {
            Some(Op::Welcome(_)) => {}
            Some(Op::PubAck(a)) => {
                assert!(a.seq > 0 && !a.duplicate, "{a:?}");
                assert!(acked.insert(a.req_id), "PubAck {} twice", a.req_id);
            }
            Some(Op::Pong(p)) => {
                assert_eq!(p.nonce, round);
                pong = true;
            }
            other => panic!("round {round}: unexpected {other:?}"),
        }
    }
    assert_eq!(
        (acked, pong),
        ((1..=3).collect(), true),
        "round {round} (one write: {one_write}): every PubAck and the Pong before the close; got {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_owed_before_a_half_close_is_delivered() {
    let dir = temp_dir();
    let b = BrokerProcess::start(Path::new(BIN), &dir.path().join("data"), &[]);
    for round in 0..ROUNDS {
        half_close_once(b.addr, round, round % 2 == 0).await;
    }
    // Every acknowledged message is stored, once.
    b.kill();
}
