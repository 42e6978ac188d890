//! Encoding a `Publish` frame from borrowed fields ([`PublishRef`]).
//!
//! A client publishing fast sends the same topic again and again. Encoding from a `&str`
//! and the payload's bytes spares it building a `v1::Publish`, whose topic is an owned
//! `String` (an allocation per message, freed by another thread: the writer's).
//! [`crate::codec::encode_frame`] encodes every `Publish` through this too, so there is
//! one encoder, written by hand around prost's field encoders and computing the size once
//! (prost's own path computes a nested message's size three times). The bytes are
//! exactly prost's: fields in tag order, defaults left out.

use std::collections::BTreeMap;

use bytes::{BufMut, BytesMut};
use prost::encoding::{btree_map, encode_key, encode_varint, encoded_len_varint, string, WireType};

use crate::v1;
use crate::wire::{check_frame_len, key_len, write_exactly, CodecError, LEN_PREFIX};

/// Field number of `Frame.publish` in `rtc.proto`.
const FRAME_PUBLISH_FIELD: u32 = 3;
const REQ_ID: u32 = 1;
const TOPIC: u32 = 2;
const PAYLOAD: u32 = 3;
const HEADERS: u32 = 4;
const MSG_ID: u32 = 5;

/// The fields of a `Publish`, borrowed.
///
/// ```
/// use std::collections::BTreeMap;
/// let headers = BTreeMap::new();
/// let publish = rtc_proto::publish::PublishRef {
///     req_id: 0,
///     topic: "orders.created",
///     payload: b"{}",
///     headers: &headers,
///     msg_id: "",
/// };
/// let mut buf = bytes::BytesMut::new();
/// publish.encode(1 << 20, &mut buf).unwrap();
/// assert_eq!(buf.len(), rtc_proto::codec::LEN_PREFIX + publish.frame_len());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    /// `Publish.req_id` (0: fire-and-forget).
    pub req_id: u64,
    /// `Publish.topic`.
    pub topic: &'a str,
    /// `Publish.payload`.
    pub payload: &'a [u8],
    /// `Publish.headers`.
    pub headers: &'a BTreeMap<String, String>,
    /// `Publish.msg_id`.
    pub msg_id: &'a str,
}

impl<'a> From<&'a v1::Publish> for PublishRef<'a> {
    fn from(p: &'a v1::Publish) -> Self {
        // Destructured whole: a field added to `Publish` fails to compile here instead
        // of being left off the wire.
        let v1::Publish {
            req_id,
            topic,
            payload,
            headers,
            msg_id,
        } = p;
        PublishRef {
            req_id: *req_id,
            topic,
            payload,
            headers,
            msg_id,
        }
    }
}

/// Size of a length-delimited field, or 0 for an empty one (left out).
fn delimited_len(field: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        key_len(field) + encoded_len_varint(len as u64) + len
    }
}

fn put_delimited(field: u32, bytes: &[u8], out: &mut impl BufMut) {
    if !bytes.is_empty() {
        encode_key(field, WireType::LengthDelimited, out);
        encode_varint(bytes.len() as u64, out);
        out.put_slice(bytes);
    }
}

impl PublishRef<'_> {
    /// Encoded size of the `Publish` message.
    fn body_len(&self) -> usize {
        let req_id = if self.req_id == 0 {
            0
        } else {
            key_len(REQ_ID) + encoded_len_varint(self.req_id)
        };
        req_id
            + delimited_len(TOPIC, self.topic.len())
            + delimited_len(PAYLOAD, self.payload.len())
            + btree_map::encoded_len(
                string::encoded_len,
                string::encoded_len,
                HEADERS,
                self.headers,
            )
            + delimited_len(MSG_ID, self.msg_id.len())
    }

    /// The length prefix value of its frame (the frame's encoded size).
    pub fn frame_len(&self) -> usize {
        let body = self.body_len();
        key_len(FRAME_PUBLISH_FIELD) + encoded_len_varint(body as u64) + body
    }

    /// Appends the whole `Frame{publish}` with its length prefix to `dst`, refusing a
    /// frame above `max_frame_size`.
    pub fn encode(&self, max_frame_size: usize, dst: &mut BytesMut) -> Result<(), CodecError> {
        let body = self.body_len();
        let len = key_len(FRAME_PUBLISH_FIELD) + encoded_len_varint(body as u64) + body;
        check_frame_len(len, max_frame_size)?;
        write_exactly(dst, LEN_PREFIX + len, |out| {
            out.put_u32(len as u32);
            encode_key(FRAME_PUBLISH_FIELD, WireType::LengthDelimited, out);
            encode_varint(body as u64, out);
            if self.req_id != 0 {
                encode_key(REQ_ID, WireType::Varint, out);
                encode_varint(self.req_id, out);
            }
            put_delimited(TOPIC, self.topic.as_bytes(), out);
            put_delimited(PAYLOAD, self.payload, out);
            btree_map::encode(
                string::encode,
                string::encoded_len,
                string::encode,
                string::encoded_len,
                HEADERS,
                self.headers,
                out,
            );
            put_delimited(MSG_ID, self.msg_id.as_bytes(), out);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::frame::Op;
    use crate::Frame;
    use prost::Message as _;

    fn publishes() -> Vec<v1::Publish> {
        let mut out = Vec::new();
        for req_id in [0, 1, 127, 128, u64::MAX] {
            for topic in ["", "a", "orders.created", &"t".repeat(200)] {
                for payload in [0usize, 1, 127, 128, 70_000] {
                    for headers in [0usize, 1, 3] {
                        for msg_id in ["", "id-1"] {
                            out.push(v1::Publish {
                                req_id,
                                topic: topic.to_string(),
                                payload: vec![7u8; payload].into(),
                                headers: (0..headers)
                                    .map(|i| (format!("k{i}"), "v".repeat(i)))
                                    .collect(),
                                msg_id: msg_id.to_string(),
                            });
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn encodes_exactly_as_prost_does() {
        for p in publishes() {
            let frame = Frame::from_op(Op::Publish(p.clone()));
            let want = frame.encode_to_vec();
            let r = PublishRef::from(&p);
            assert_eq!(r.frame_len(), want.len(), "{p:?}");
            let mut buf = BytesMut::new();
            r.encode(usize::MAX, &mut buf).unwrap();
            assert_eq!(&buf[..LEN_PREFIX], (want.len() as u32).to_be_bytes());
            assert!(buf[LEN_PREFIX..] == want[..], "{p:?}");
        }
    }

    /// Every field set to a value other than its default survives the hand encoder and
    /// prost's decoder: a field the encoder forgot would come back empty.
    #[test]
    fn every_field_round_trips_through_the_hand_encoder() {
        let p = v1::Publish {
            req_id: 42,
            topic: "orders.eu".into(),
            payload: bytes::Bytes::from_static(b"payload"),
            headers: [("k".to_string(), "v".to_string())].into(),
            msg_id: "id-7".into(),
        };
        let mut buf = BytesMut::new();
        PublishRef::from(&p).encode(usize::MAX, &mut buf).unwrap();
        let back = Frame::decode(&buf[LEN_PREFIX..]).unwrap();
        let Some(Op::Publish(back)) = back.op else {
            panic!("not a publish: {back:?}")
        };
        let v1::Publish {
            req_id,
            topic,
            payload,
            headers,
            msg_id,
        } = &back;
        assert_ne!(*req_id, 0);
        assert!(
            !topic.is_empty() && !payload.is_empty() && !headers.is_empty() && !msg_id.is_empty()
        );
        assert_eq!(back, p);
    }

    #[test]
    fn refuses_a_frame_above_the_limit_and_appends_nothing() {
        let headers = BTreeMap::new();
        let r = PublishRef {
            req_id: 0,
            topic: "a",
            payload: &[0u8; 100],
            headers: &headers,
            msg_id: "",
        };
        let mut buf = BytesMut::from(&b"kept"[..]);
        let err = r.encode(r.frame_len() - 1, &mut buf).unwrap_err();
        assert!(matches!(err, CodecError::FrameTooLarge { .. }));
        assert_eq!(&buf[..], b"kept");
        r.encode(r.frame_len(), &mut buf).unwrap();
    }
}
