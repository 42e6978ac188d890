//! The properties each fuzz target checks, one function per target. The targets in
//! `fuzz_targets/` call these under libFuzzer; `testkit/tests/fuzz_regressions.rs`
//! includes this file too and replays every saved input in `fuzz/regressions/` with the
//! normal test suite, so a crash once found stays fixed.

#![allow(dead_code)]

use std::sync::Arc;

use bytes::BytesMut;
use prost::Message;
use rtc_broker::outbound::{Outbox, Subscription};
use rtc_broker::router::Router;
use rtc_proto::headers::{validate_headers, MAX_HEADERS, MAX_KEY_LEN, MAX_VALUE_LEN};
use rtc_proto::topic::{pattern_matches, validate_pattern, validate_publish_topic, validate_topic};
use rtc_proto::v1::start_position::Position;
use rtc_proto::FrameCodec;
use tokio_util::codec::{Decoder, Encoder};

/// Arbitrary bytes through the frame decoder, as a hostile peer would send them: never a
/// panic; every frame that decodes re-encodes and decodes to the same frame; and the
/// hand-written `Publish` and `Deliver` decoders, whenever they answer, answer exactly
/// what prost does.
pub fn frame_decode(data: &[u8]) {
    let body = bytes::Bytes::copy_from_slice(data);
    // A client's raw delivery decodes to what prost decodes, or is refused where prost
    // finds no Deliver with a message.
    if let Ok(raw) = rtc_proto::hot::RawDelivery::peek(body.clone()) {
        let prost = rtc_proto::Frame::decode(body.clone()).ok();
        match raw.decode() {
            Ok(d) => assert_eq!(Some(rtc_proto::Frame::from(d)), prost),
            Err(_) => assert!(!matches!(
                prost.and_then(|f| f.op),
                Some(rtc_proto::v1::frame::Op::Deliver(rtc_proto::v1::Deliver {
                    message: Some(_),
                    ..
                }))
            )),
        }
    }
    if let Some(fast) = rtc_proto::hot::decode(&body) {
        assert_eq!(rtc_proto::Frame::decode(body).ok(), Some(fast));
    }
    let mut codec = FrameCodec::new(64 * 1024);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        let mut again = BytesMut::new();
        if codec.encode(&frame, &mut again).is_ok() {
            let back = codec.decode(&mut again).expect("re-encoded frame decodes");
            assert_eq!(back.as_ref(), Some(&frame));
        }
    }
}

/// Topic names and patterns (two lines: pattern, topic): validation never panics, and for
/// every valid pattern and topic the broker's subscription trie agrees with the
/// reference matcher.
pub fn topic(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (pattern, topic) = text.split_once('\n').unwrap_or((&text, "a.b.c"));
    let _ = validate_publish_topic(topic);
    let _ = rtc_proto::topic::validate_consumer_name(pattern);
    if validate_pattern(pattern).is_err() || validate_topic(topic).is_err() {
        return;
    }
    let router = Router::new();
    let outbox = Arc::new(Outbox::new(1 << 20, 16, 1 << 20));
    router.subscribe(pattern, 1, 1, Arc::new(Subscription::new(1, outbox)));
    let mut hits = 0;
    router.for_each_match(topic, |_, _, _| hits += 1);
    assert_eq!(
        hits == 1,
        pattern_matches(pattern, topic),
        "{pattern:?} vs {topic:?}"
    );
    assert!(router.unsubscribe(pattern, 1, 1));
}

/// Start positions (`rtc-cli sub --from`): never a panic; an accepted `seq:N` is at least
/// 1 and a relative time is never in the future.
pub fn position(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = rtc_proto::position::parse_start(text) {
        match p.position {
            Some(Position::Seq(n)) => assert!(n >= 1),
            Some(Position::RelativeMs(ms)) => assert!(ms <= 0),
            _ => {}
        }
    }
}

/// Header maps as they arrive in a Publish: decoding and validation never panic, and what
/// validation accepts respects the documented limits.
pub fn headers(data: &[u8]) {
    let Ok(publish) = rtc_proto::v1::Publish::decode(data) else {
        return;
    };
    if validate_headers(&publish.headers).is_ok() {
        assert!(publish.headers.len() <= MAX_HEADERS);
        for (k, v) in &publish.headers {
            assert!(!k.is_empty() && k.len() <= MAX_KEY_LEN && v.len() <= MAX_VALUE_LEN);
        }
    }
}

/// The broker's TOML config: parsing and validation never panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = rtc_broker::Config::from_toml_str(text) {
        let _ = config.validate();
    }
}

/// Stored consumer state read back from disk: decoding never panics, and what decodes
/// re-encodes to the same bytes.
pub fn consumer_record(data: &[u8]) {
    if let Some(r) = rtc_broker::store::ConsumerRecord::decode(data) {
        assert_eq!(r.encode(), data);
    }
}

/// A fuzz check: panics if the property does not hold for the input.
pub type Check = fn(&[u8]);

/// Every check by target name, for the regression replay.
pub const ALL: &[(&str, Check)] = &[
    ("frame_decode", frame_decode),
    ("topic", topic),
    ("position", position),
    ("headers", headers),
    ("config", config),
    ("consumer_record", consumer_record),
];
