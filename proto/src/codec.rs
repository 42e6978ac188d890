//! Framing: each frame is a 4-byte big-endian length `N` followed by `N` bytes of one
//! encoded [`Frame`].
//!
//! [`FrameCodec`] reads and writes whole frames. The decoder checks `N` against its limit
//! before it reserves any memory, so a hostile length cannot make a peer allocate, and it
//! returns an error (never panics) for bytes that are not a valid `Frame`. Decoded `bytes`
//! fields are zero-copy slices of the read buffer.
//!
//! [`encode_deliver`] is the broker's fan-out path: the [`Message`] is encoded once, and
//! each subscriber's `Deliver` frame is only a few header bytes (length, tags, `sub_id`)
//! written in front of those bytes. A `Publish` is encoded by [`crate::publish`].

use std::borrow::Cow;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message as _;
use tokio_util::codec::{Decoder, Encoder};

use crate::publish::PublishRef;
use crate::v1::frame::Op;
use crate::v1::{Frame, Message};
use crate::wire::{check_frame_len, key_len, write_exactly};
pub use crate::wire::{CodecError, LEN_PREFIX};

/// Field number of `Frame.deliver` and of `Deliver`'s fields in `rtc.proto`.
const FRAME_DELIVER_FIELD: u32 = 7;
const DELIVER_SUB_ID_FIELD: u32 = 1;
const DELIVER_MESSAGE_FIELD: u32 = 2;
const MESSAGE_MSG_ID_FIELD: u32 = 6;

/// tokio-util codec for rtc frames. See the module docs for the format.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame_size: usize,
}

impl FrameCodec {
    /// A codec that rejects frames whose length prefix exceeds `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> Self {
        Self { max_frame_size }
    }

    /// The limit this codec enforces.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(crate::DEFAULT_MAX_FRAME_SIZE)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(body) = self.next_body(src)? else {
            return Ok(None);
        };
        // Publishes and deliveries, the bulk of the traffic, take a hand-written path.
        if let Some(frame) = crate::hot::decode(&body) {
            return Ok(Some(frame));
        }
        Ok(Some(Frame::decode(body)?))
    }
}

impl FrameCodec {
    /// Splits the next complete frame's body (without its length prefix) off `src`.
    fn next_body(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        if src.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max_frame_size {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame_size,
            });
        }
        let total = LEN_PREFIX + len;
        if src.len() < total {
            // Safe to reserve: `len` is within the limit.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(LEN_PREFIX);
        Ok(Some(src.split_to(len).freeze()))
    }
}

/// What a client reads: deliveries through the hand-written path, with their topic kept
/// as bytes; everything else as a [`Frame`].
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A `Deliver`, split off but not decoded (see [`crate::hot::RawDelivery`]).
    Delivery(crate::hot::RawDelivery),
    /// Any other frame (a `Deliver` the fast path did not take, too).
    Frame(Frame),
}

/// The client side's decoder: the same framing and limit as [`FrameCodec`], yielding
/// [`Incoming`] so that a subscriber allocates nothing for a delivery's topic.
#[derive(Debug, Clone, Default)]
pub struct ClientCodec {
    frames: FrameCodec,
}

impl ClientCodec {
    /// A decoder refusing frames longer than `max_frame_size`.
    pub fn new(max_frame_size: usize) -> Self {
        ClientCodec {
            frames: FrameCodec::new(max_frame_size),
        }
    }
}

impl Decoder for ClientCodec {
    type Item = Incoming;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        let Some(body) = self.frames.next_body(src)? else {
            return Ok(None);
        };
        match crate::hot::RawDelivery::peek(body) {
            Ok(delivery) => Ok(Some(Incoming::Delivery(delivery))),
            Err(body) => Ok(Some(Incoming::Frame(Frame::decode(body)?))),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(&frame, self.max_frame_size, dst)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(frame, self.max_frame_size, dst)
    }
}

/// Read-buffer capacity while a peer streams frames (see [`grow_read_buffer`]).
pub const STREAMING_READ_BUFFER: usize = 64 * 1024;

/// Call after each frame decoded from a connection's read buffer: when more bytes are
/// already waiting (the peer sends faster than frames are handled), grows the buffer to
/// [`STREAMING_READ_BUFFER`] so that one read takes many frames (a 512-byte buffer cost a
/// `recv` per two or three publishes). Quiet connections keep their small buffer.
///
/// Growing moves what is buffered into the new allocation, so it waits until the
/// complete frames have been decoded and only the start of the next one is left: it
/// then copies less than one frame.
pub fn grow_read_buffer(buf: &mut BytesMut) {
    if buf.is_empty() || buf.capacity() >= STREAMING_READ_BUFFER / 2 || holds_frame(buf) {
        return;
    }
    buf.reserve(STREAMING_READ_BUFFER);
}

/// Whether `buf` starts with a complete length-prefixed frame.
fn holds_frame(buf: &[u8]) -> bool {
    match buf.first_chunk::<LEN_PREFIX>() {
        Some(prefix) => buf.len() - LEN_PREFIX >= u32::from_be_bytes(*prefix) as usize,
        None => false,
    }
}

/// Gives a grown read buffer back once it is empty (the connection went quiet).
pub fn shrink_read_buffer(buf: &mut BytesMut, small: usize) {
    if buf.is_empty() && buf.capacity() > small {
        *buf = BytesMut::with_capacity(small);
    }
}

/// The length prefix value of `frame` (its encoded size).
pub fn frame_len(frame: &Frame) -> usize {
    match &frame.op {
        Some(Op::Publish(p)) => PublishRef::from(p).frame_len(),
        _ => frame.encoded_len(),
    }
}

/// Appends `frame` with its length prefix to `dst`, refusing frames above `max_frame_size`.
///
/// A `Publish` (what a fast publisher sends) goes through [`PublishRef::encode`], written
/// by hand around prost's field encoders (prost's own path computes a nested message's
/// size three times).
pub fn encode_frame(
    frame: &Frame,
    max_frame_size: usize,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    if let Some(Op::Publish(p)) = &frame.op {
        return PublishRef::from(p).encode(max_frame_size, dst);
    }
    let len = frame.encoded_len();
    check_frame_len(len, max_frame_size)?;
    // `len` is known: no second size computation (as `encode` would do).
    write_exactly(dst, LEN_PREFIX + len, |out| {
        out.put_u32(len as u32);
        frame.encode_raw(out);
    });
    Ok(())
}

/// Encodes a [`Message`] once, for sharing among all the `Deliver` frames that carry it.
pub fn encode_message(message: &Message) -> Bytes {
    encode_message_sized(message, message.encoded_len())
}

/// [`encode_message`] for a caller that already computed `message.encoded_len()`.
pub fn encode_message_sized(message: &Message, encoded_len: usize) -> Bytes {
    let mut buf = Vec::with_capacity(encoded_len);
    message.encode_raw(&mut buf);
    debug_assert_eq!(buf.len(), encoded_len, "encoded_len of another message");
    buf.into()
}

/// The `msg_id` of an encoded [`Message`] ("" when it has none), read without decoding
/// the rest: the broker rebuilds its dedup index on start from every message of the
/// dedup window, millions of them, and needs only this field. It does not check the
/// other fields (the broker wrote these bytes itself); bytes the quick scan cannot read
/// at all are decoded whole, for the error a full decode gives.
pub fn message_msg_id(encoded: &[u8]) -> Result<Cow<'_, str>, prost::DecodeError> {
    match scan_msg_id(encoded) {
        Some(id) => Ok(Cow::Borrowed(id)),
        None => Message::decode(encoded).map(|m| Cow::Owned(m.msg_id)),
    }
}

/// The last `msg_id` field of `buf` (as protobuf's last-one-wins has it), or None when
/// `buf` is not a well-formed message with UTF-8 in that field.
fn scan_msg_id(mut buf: &[u8]) -> Option<&str> {
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext};
    let mut id = "";
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).ok()?;
        if tag == MESSAGE_MSG_ID_FIELD && wire_type == WireType::LengthDelimited {
            let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
            let (field, rest) = (buf.get(..len)?, buf.get(len..)?);
            id = std::str::from_utf8(field).ok()?;
            buf = rest;
        } else {
            skip_field(wire_type, tag, &mut buf, DecodeContext::default()).ok()?;
        }
    }
    Some(id)
}

/// The length prefix value of a `Deliver` frame carrying an encoded message of
/// `message_len` bytes. Lets a sender check the frame limit before encoding.
pub fn deliver_frame_len(sub_id: u64, message_len: usize) -> usize {
    let deliver_len = deliver_body_len(sub_id, message_len);
    key_len(FRAME_DELIVER_FIELD) + encoded_len_varint(deliver_len as u64) + deliver_len
}

fn deliver_body_len(sub_id: u64, message_len: usize) -> usize {
    key_len(DELIVER_SUB_ID_FIELD)
        + encoded_len_varint(sub_id)
        + key_len(DELIVER_MESSAGE_FIELD)
        + encoded_len_varint(message_len as u64)
        + message_len
}

/// Appends a complete `Frame{deliver: Deliver{sub_id, message}}` with its length prefix to
/// `dst`, where `message` is the output of [`encode_message`]. The result decodes exactly
/// like the frame prost would build; only the header bytes are written per call.
pub fn encode_deliver(sub_id: u64, message: &[u8], dst: &mut BytesMut) {
    let deliver_len = deliver_body_len(sub_id, message.len());
    let frame_len = deliver_frame_len(sub_id, message.len());
    let header = LEN_PREFIX + frame_len - message.len();
    dst.reserve(LEN_PREFIX + frame_len);
    write_exactly(dst, header, |out| {
        out.put_u32(frame_len as u32);
        encode_key(FRAME_DELIVER_FIELD, WireType::LengthDelimited, out);
        encode_varint(deliver_len as u64, out);
        encode_key(DELIVER_SUB_ID_FIELD, WireType::Varint, out);
        encode_varint(sub_id, out);
        encode_key(DELIVER_MESSAGE_FIELD, WireType::LengthDelimited, out);
        encode_varint(message.len() as u64, out);
    });
    dst.extend_from_slice(message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{self, frame::Op};
    use std::collections::BTreeMap;

    fn publish(payload: &[u8]) -> Frame {
        Frame {
            op: Some(Op::Publish(v1::Publish {
                req_id: 7,
                topic: "orders.eu.created".into(),
                payload: Bytes::copy_from_slice(payload),
                headers: BTreeMap::from([("k".to_string(), "v".to_string())]),
                msg_id: "m-1".into(),
            })),
        }
    }

    #[test]
    fn publish_frames_encode_exactly_as_prost_does() {
        for frame in [
            publish(b""),
            publish(b"hello"),
            publish(&[7u8; 300]),
            Frame {
                op: Some(Op::Publish(v1::Publish::default())),
            },
        ] {
            let mut ours = BytesMut::new();
            encode_frame(&frame, usize::MAX, &mut ours).unwrap();
            let theirs = frame.encode_to_vec();
            assert_eq!(&ours[..LEN_PREFIX], &(theirs.len() as u32).to_be_bytes());
            assert_eq!(&ours[LEN_PREFIX..], &theirs[..]);
            assert_eq!(frame_len(&frame), theirs.len());
        }
        let big = publish(&[0u8; 100]);
        let err = encode_frame(&big, 50, &mut BytesMut::new()).unwrap_err();
        assert!(matches!(err, CodecError::FrameTooLarge { max: 50, .. }));
    }

    #[test]
    fn round_trip_several_frames_in_one_buffer() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        let frames = vec![
            publish(b"hello"),
            Frame {
                op: Some(Op::Ping(v1::Ping { nonce: 42 })),
            },
            publish(&[0u8; 10_000]),
        ];
        for f in &frames {
            codec.encode(f, &mut buf).unwrap();
        }
        for f in &frames {
            assert_eq!(codec.decode(&mut buf).unwrap().as_ref(), Some(f));
        }
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn frame_arriving_one_byte_at_a_time() {
        let mut codec = FrameCodec::default();
        let frame = publish(b"drip");
        let mut wire = BytesMut::new();
        codec.encode(&frame, &mut wire).unwrap();
        let mut buf = BytesMut::new();
        let mut decoded = None;
        for (i, b) in wire.iter().enumerate() {
            buf.put_u8(*b);
            match codec.decode(&mut buf).unwrap() {
                Some(f) => {
                    assert_eq!(i, wire.len() - 1, "decoded before the last byte");
                    decoded = Some(f);
                }
                None => assert!(i < wire.len() - 1),
            }
        }
        assert_eq!(decoded, Some(frame));
    }

    #[test]
    fn oversized_length_is_rejected_before_allocating() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        let cap_before = buf.capacity();
        match codec.decode(&mut buf) {
            Err(CodecError::FrameTooLarge { len, max }) => {
                assert_eq!(len, u32::MAX as usize);
                assert_eq!(max, 1024);
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert_eq!(
            buf.capacity(),
            cap_before,
            "decoder reserved memory for a rejected frame"
        );
    }

    #[test]
    fn length_at_the_limit_is_accepted() {
        let mut codec = FrameCodec::new(64);
        let mut wire = BytesMut::new();
        codec.encode(publish(b"x"), &mut wire).unwrap();
        let len = wire.len() - LEN_PREFIX;
        let mut exact = FrameCodec::new(len);
        assert!(exact.decode(&mut wire.clone()).unwrap().is_some());
        let mut below = FrameCodec::new(len - 1);
        assert!(matches!(
            below.decode(&mut wire),
            Err(CodecError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn encoder_refuses_frames_above_the_limit() {
        let mut codec = FrameCodec::new(100);
        let mut buf = BytesMut::new();
        let err = codec.encode(publish(&[1u8; 200]), &mut buf).unwrap_err();
        assert!(matches!(err, CodecError::FrameTooLarge { .. }));
        assert!(buf.is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut codec = FrameCodec::default();
        // Field 1 with wire type 7 (invalid), then junk.
        let junk = [0x0f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02];
        let mut buf = BytesMut::new();
        buf.put_u32(junk.len() as u32);
        buf.extend_from_slice(&junk);
        assert!(matches!(codec.decode(&mut buf), Err(CodecError::Decode(_))));

        // A length-delimited field whose length runs past the frame.
        let short = [0x1a, 0x7f, 0x01];
        let mut buf = BytesMut::new();
        buf.put_u32(short.len() as u32);
        buf.extend_from_slice(&short);
        assert!(matches!(codec.decode(&mut buf), Err(CodecError::Decode(_))));
    }

    #[test]
    fn pseudo_random_bytes_never_panic() {
        // A small deterministic xorshift so the test is repeatable.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2_000 {
            let len = (next() % 64) as usize;
            let mut buf = BytesMut::new();
            buf.put_u32(len as u32);
            for _ in 0..len {
                buf.put_u8(next() as u8);
            }
            let mut codec = FrameCodec::default();
            let _ = codec.decode(&mut buf);
        }
    }

    #[test]
    fn unknown_operation_decodes_to_an_empty_frame() {
        // Field 99, varint 1: a future operation this version does not know.
        let body = [0x98, 0x06, 0x01];
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32);
        buf.extend_from_slice(&body);
        let frame = FrameCodec::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.op, None);
    }

    #[test]
    fn shared_deliver_encoding_matches_prost() {
        let message = v1::Message {
            topic: "a.b".into(),
            payload: Bytes::from_static(b"payload"),
            headers: BTreeMap::from([("h".to_string(), "1".to_string())]),
            seq: 12,
            timestamp_ms: 1_700_000_000_000,
            msg_id: "id".into(),
            delivery_count: 1,
            reply_to: "r1".into(),
            epoch: 7,
        };
        let shared = encode_message(&message);
        for sub_id in [0u64, 1, 127, 128, 300, u64::MAX] {
            let mut ours = BytesMut::new();
            encode_deliver(sub_id, &shared, &mut ours);
            let expected = Frame {
                op: Some(Op::Deliver(v1::Deliver {
                    sub_id,
                    message: Some(message.clone()),
                })),
            };
            assert_eq!(
                ours.len() - LEN_PREFIX,
                deliver_frame_len(sub_id, shared.len())
            );
            let decoded = FrameCodec::default().decode(&mut ours).unwrap().unwrap();
            assert_eq!(decoded, expected, "sub_id {sub_id}");
            assert!(ours.is_empty());
        }
    }

    #[test]
    fn read_buffer_grows_only_once_its_complete_frames_are_decoded() {
        let mut wire = BytesMut::new();
        for _ in 0..3 {
            encode_frame(&publish(&[7; 100]), usize::MAX, &mut wire).unwrap();
        }
        let whole = wire.len();
        // Two frames and the first half of the third, in a small buffer.
        let mut buf = BytesMut::with_capacity(1024);
        buf.extend_from_slice(&wire[..whole - 60]);
        let mut codec = FrameCodec::default();
        let first = codec.decode(&mut buf).unwrap();
        assert!(first.is_some());
        let before = buf.capacity();
        grow_read_buffer(&mut buf);
        assert_eq!(
            buf.capacity(),
            before,
            "grew with a complete frame buffered"
        );
        assert!(codec.decode(&mut buf).unwrap().is_some());
        grow_read_buffer(&mut buf);
        assert!(
            buf.capacity() >= STREAMING_READ_BUFFER,
            "only a partial frame is left: the buffer should grow"
        );
        buf.extend_from_slice(&wire[whole - 60..]);
        assert!(codec.decode(&mut buf).unwrap().is_some());
        assert!(buf.is_empty());
        // An empty buffer (a quiet connection) keeps its size.
        let mut quiet = BytesMut::with_capacity(512);
        grow_read_buffer(&mut quiet);
        assert!(quiet.capacity() < STREAMING_READ_BUFFER);
    }

    #[test]
    fn client_codec_keeps_delivery_topics_as_bytes_and_agrees_with_the_frame_codec() {
        let message = Message {
            topic: "orders.eu".into(),
            payload: Bytes::from_static(b"p"),
            seq: 9,
            ..Default::default()
        };
        let mut wire = BytesMut::new();
        encode_deliver(3, &encode_message(&message), &mut wire);
        encode_frame(&publish(b"x"), usize::MAX, &mut wire).unwrap();
        let mut again = wire.clone();
        let mut client = ClientCodec::new(1 << 20);
        let mut frames = FrameCodec::new(1 << 20);
        let Some(Incoming::Delivery(raw)) = client.decode(&mut wire).unwrap() else {
            panic!("a delivery")
        };
        assert_eq!(raw.sub_id, 3);
        let d = raw.decode().unwrap();
        assert_eq!(d.topic.as_str(), "orders.eu");
        assert!(d.message.topic.is_empty());
        assert_eq!(Some(Frame::from(d)), frames.decode(&mut again).unwrap());
        let Some(Incoming::Frame(other)) = client.decode(&mut wire).unwrap() else {
            panic!("a frame")
        };
        assert_eq!(Some(other), frames.decode(&mut again).unwrap());
        assert!(client.decode(&mut wire).unwrap().is_none());
    }

    #[test]
    fn the_msg_id_alone_is_what_a_full_decode_finds() {
        let mut headers = BTreeMap::new();
        headers.insert("k".to_string(), "değer".to_string());
        let messages = [
            v1::Message::default(),
            v1::Message {
                topic: "orders.created".into(),
                payload: Bytes::from(vec![7u8; 300]),
                headers,
                seq: 1 << 40,
                timestamp_ms: -5,
                msg_id: "sipariş-😀-1".into(),
                delivery_count: 3,
                reply_to: "_inbox.x".into(),
                epoch: 9,
            },
            v1::Message {
                payload: Bytes::from_static(b"no id"),
                seq: 2,
                ..Default::default()
            },
        ];
        for m in &messages {
            let encoded = encode_message(m);
            assert_eq!(message_msg_id(&encoded).unwrap(), m.msg_id);
            // Every cut of it: the same answer as decoding it whole.
            for cut in 0..encoded.len() {
                let part = &encoded[..cut];
                match Message::decode(part) {
                    Ok(whole) => assert_eq!(message_msg_id(part).unwrap(), whole.msg_id),
                    Err(_) => assert!(message_msg_id(part).is_err(), "cut at {cut}"),
                }
            }
        }
    }
}
