//! Hand-written decoding of the two frames that dominate the wire: `Frame{publish}`, what
//! the broker reads most, and `Frame{deliver}`, what a subscriber reads most.
//!
//! prost's generic decoding goes through a merge loop per nested message (for a
//! `Deliver`, three of them) and was the largest single cost of a busy rtc-client
//! subscriber and a visible one of the broker's publish path. These
//! decoders read the same bytes straight into the generated types, with payloads
//! zero-copy slices of the frame. Each understands exactly the fields `rtc.proto` defines
//! for its messages; anything else — an unknown field, another operation, a malformed
//! length — makes it answer `None`, and [`crate::FrameCodec`] falls back to prost, so the
//! result is always what prost would produce (the `frame_decode` fuzz check asserts it).

use bytes::{Buf, Bytes};
use prost::encoding::decode_varint;

use crate::v1::{frame::Op, Deliver, Frame, Message, Publish};
use crate::wire::CodecError;

/// `Frame.publish` (field 3), length-delimited.
const FRAME_PUBLISH_KEY: u64 = (3 << 3) | 2;
/// `Frame.deliver` (field 7), length-delimited.
const FRAME_DELIVER_KEY: u64 = (7 << 3) | 2;

/// Decodes `body` (a frame without its length prefix) if it is a `Publish` or a
/// `Deliver` this module understands.
pub fn decode(body: &Bytes) -> Option<Frame> {
    match body.first() {
        Some(&b) if u64::from(b) == FRAME_PUBLISH_KEY => decode_publish(body),
        Some(&b) if u64::from(b) == FRAME_DELIVER_KEY => decode_deliver(body),
        _ => None,
    }
}

/// Decodes `body` (a frame without its length prefix) if it is a plain `Publish`.
pub fn decode_publish(body: &Bytes) -> Option<Frame> {
    let mut r = Reader::open(body, FRAME_PUBLISH_KEY)?;
    let mut p = Publish::default();
    while r.at < body.len() {
        match r.varint()? {
            0x08 => p.req_id = r.varint()?,
            0x12 => p.topic = r.string()?,
            0x1a => p.payload = r.bytes()?,
            0x22 => {
                let (k, v) = r.header()?;
                p.headers.insert(k, v);
            }
            0x2a => p.msg_id = r.string()?,
            _ => return None,
        }
    }
    Some(Frame {
        op: Some(Op::Publish(p)),
    })
}

/// Bytes known to be UTF-8: a string that can be a zero-copy slice of a frame. The only
/// ways to build one check the bytes or start from a `str`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// `bytes`, if they are UTF-8.
    pub fn new(bytes: Bytes) -> Option<Utf8Bytes> {
        std::str::from_utf8(&bytes).ok()?;
        Some(Utf8Bytes(bytes))
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks the bytes or takes them from a `str`, and
        // `Bytes` is immutable.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

impl From<String> for Utf8Bytes {
    fn from(s: String) -> Utf8Bytes {
        Utf8Bytes(Bytes::from(s))
    }
}

impl From<&str> for Utf8Bytes {
    fn from(s: &str) -> Utf8Bytes {
        Utf8Bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl std::fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A `Deliver` as [`decode_delivery`] reads it, for a receiver that keeps the topic as
/// shared bytes instead of allocating a `String` per message (rtc-client).
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// `Deliver.sub_id`.
    pub sub_id: u64,
    /// The message's topic: a slice of the frame.
    pub topic: Utf8Bytes,
    /// The message, with `topic` left empty (it is in [`Delivery::topic`]).
    pub message: Message,
}

impl From<Delivery> for Frame {
    fn from(d: Delivery) -> Frame {
        let mut message = d.message;
        message.topic = d.topic.as_str().to_owned();
        Frame {
            op: Some(Op::Deliver(Deliver {
                sub_id: d.sub_id,
                message: Some(message),
            })),
        }
    }
}

/// A `Deliver` frame as a client's reader splits it off: its subscription, read from
/// the frame's first field, and the frame's body, decoded later ([`decode_delivery`])
/// where the message goes. A message is about 170 bytes; this is 40, so the reader's
/// batch of deliveries moves 40 bytes per message, not the message.
#[derive(Debug, Clone, PartialEq)]
pub struct RawDelivery {
    /// `Deliver.sub_id`.
    pub sub_id: u64,
    /// The frame without its length prefix.
    pub body: Bytes,
}

impl RawDelivery {
    /// `body` as a raw delivery if it is a `Deliver` whose first field is a non-zero
    /// `sub_id` (how the broker writes them); anything else is left to [`Frame`].
    pub fn peek(body: Bytes) -> Result<RawDelivery, Bytes> {
        let sub_id = Reader::open(&body, FRAME_DELIVER_KEY).and_then(|mut r| {
            let key = r.varint()?;
            (key == 0x08).then(|| r.varint()).flatten()
        });
        match sub_id {
            Some(sub_id) if sub_id != 0 => Ok(RawDelivery { sub_id, body }),
            _ => Err(body),
        }
    }

    /// Its message: by the hand-written path, else by prost; `Err` if the frame is not a
    /// well-formed `Deliver` with a message.
    #[inline]
    pub fn decode(&self) -> Result<Delivery, CodecError> {
        if let Some(d) = decode_delivery(&self.body) {
            return Ok(d);
        }
        let frame = <Frame as prost::Message>::decode(self.body.clone())?;
        match frame.op {
            Some(Op::Deliver(Deliver {
                sub_id,
                message: Some(mut message),
            })) => {
                let topic = Utf8Bytes::from(std::mem::take(&mut message.topic));
                Ok(Delivery {
                    sub_id,
                    topic,
                    message,
                })
            }
            _ => Err(CodecError::NotADelivery),
        }
    }
}

/// Decodes `body` (a frame without its length prefix) if it is a plain `Deliver`.
pub fn decode_deliver(body: &Bytes) -> Option<Frame> {
    decode_delivery(body).map(Frame::from)
}

/// Decodes `body` (a frame without its length prefix) if it is a plain `Deliver` that
/// carries a message.
#[inline]
pub fn decode_delivery(body: &Bytes) -> Option<Delivery> {
    let mut r = Reader::open(body, FRAME_DELIVER_KEY)?;
    let mut sub_id = 0;
    let mut message = None;
    while r.at < body.len() {
        match r.varint()? {
            // sub_id: uint64
            0x08 => sub_id = r.varint()?,
            // message: Message
            // (A second one would be merged into the first by prost: left to prost.)
            0x12 if message.is_none() => {
                let len = r.len()?;
                let end = r.at + len;
                message = Some(r.message(end)?);
            }
            _ => return None,
        }
    }
    let (topic, message) = message?;
    Some(Delivery {
        sub_id,
        topic,
        message,
    })
}

struct Reader<'a> {
    body: &'a Bytes,
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader positioned at the fields of the frame's one operation, if the frame is
    /// exactly one length-delimited field with key `op_key` and nothing else.
    fn open(body: &'a Bytes, op_key: u64) -> Option<Reader<'a>> {
        let mut r = Reader { body, at: 0 };
        if r.varint()? != op_key {
            return None;
        }
        let len = r.len()?;
        (r.at + len == body.len()).then_some(r)
    }

    /// Inlined for the one-byte case (keys, and most lengths and numbers), which a
    /// subscriber meets a dozen times per delivery; the rest is out of line.
    #[inline(always)]
    fn varint(&mut self) -> Option<u64> {
        let first = *self.body.get(self.at)?;
        if first < 0x80 {
            self.at += 1;
            return Some(u64::from(first));
        }
        self.long_varint()
    }

    #[cold]
    #[inline(never)]
    fn long_varint(&mut self) -> Option<u64> {
        let mut rest = &self.body[self.at..];
        let before = rest.remaining();
        let v = decode_varint(&mut rest).ok()?;
        self.at += before - rest.remaining();
        Some(v)
    }

    /// A length prefix that fits in what is left.
    #[inline(always)]
    fn len(&mut self) -> Option<usize> {
        let len = usize::try_from(self.varint()?).ok()?;
        (len <= self.body.len() - self.at).then_some(len)
    }

    fn bytes(&mut self) -> Option<Bytes> {
        let len = self.len()?;
        let b = self.body.slice(self.at..self.at + len);
        self.at += len;
        Some(b)
    }

    /// A length-delimited UTF-8 string, as a slice of the frame.
    fn utf8(&mut self) -> Option<Utf8Bytes> {
        Utf8Bytes::new(self.bytes()?)
    }

    fn string(&mut self) -> Option<String> {
        let len = self.len()?;
        let s = std::str::from_utf8(&self.body[self.at..self.at + len]).ok()?;
        self.at += len;
        Some(s.to_owned())
    }

    /// A `Message` occupying the bytes up to `end`, and its topic (left out of it).
    fn message(&mut self, end: usize) -> Option<(Utf8Bytes, Message)> {
        let mut m = Message::default();
        let mut topic = Utf8Bytes::default();
        while self.at < end {
            match self.varint()? {
                0x0a => topic = self.utf8()?,
                0x12 => m.payload = self.bytes()?,
                0x1a => {
                    let (k, v) = self.header()?;
                    m.headers.insert(k, v);
                }
                0x20 => m.seq = self.varint()?,
                0x28 => m.timestamp_ms = self.varint()? as i64,
                0x32 => m.msg_id = self.string()?,
                0x38 => m.delivery_count = self.varint()? as u32,
                0x42 => m.reply_to = self.string()?,
                0x48 => m.epoch = self.varint()?,
                _ => return None,
            }
            if self.at > end {
                return None;
            }
        }
        (self.at == end).then_some((topic, m))
    }

    /// One length-delimited `headers` map entry.
    fn header(&mut self) -> Option<(String, String)> {
        let len = self.len()?;
        let end = self.at + len;
        let (mut k, mut v) = (String::new(), String::new());
        while self.at < end {
            match self.varint()? {
                0x0a => k = self.string()?,
                0x12 => v = self.string()?,
                _ => return None,
            }
        }
        (self.at == end).then_some((k, v))
    }
}

#[cfg(test)]
mod tests;
