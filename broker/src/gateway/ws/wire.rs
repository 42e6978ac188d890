//! The WebSocket wire format (RFC 6455, section 5), server side: client frames parsed
//! out of the connection's read buffer, and the headers of the broker's own frames.
//!
//! In: [`Reader::next`] takes whole frames from the front of a buffer, unmasks them in
//! place, joins a fragmented message, and yields one [`Event`] per data message or
//! control frame. It keeps only the partial message between calls, so the connection
//! can read more bytes behind what is buffered and call again. Everything the RFC
//! forbids a client (an unmasked frame, reserved bits with no extension negotiated, an
//! unknown opcode, a fragmented or long control frame, a continuation of nothing) is a
//! [`WireError`]; so is a message above the limit, refused from its header before its
//! payload is buffered.
//!
//! Out: [`put_header`] writes the unmasked header of a broker frame; the payload follows
//! it as is, so a protobuf frame goes out with a single copy.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Opcodes (RFC 6455, 5.2).
pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// The largest control frame payload.
const MAX_CONTROL: usize = 125;
/// The longest frame header: 2 bytes, 8 of extended length, 4 of mask.
pub const MAX_HEADER: usize = 14;

/// What a client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole data message, its fragments joined.
    Message { text: bool, data: Bytes },
    /// A ping: answer with a pong carrying `data`.
    Ping(Bytes),
    /// A pong (unsolicited, or to a ping of ours).
    Pong,
    /// The client closes.
    Close,
}

/// Frames the RFC forbids, or a message above the limit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// A protocol error (close code 1002).
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    /// A message above the limit (close code 1009).
    #[error("a message of at least {len} bytes; the limit is {limit}")]
    TooLarge { len: u64, limit: usize },
}

/// A frame's header, parsed.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// The header's own length.
    size: usize,
    len: u64,
}

/// Parses the header at the front of `buf`, if it is all there.
fn header(buf: &[u8]) -> Result<Option<Header>, WireError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(WireError::Protocol(
            "reserved bits set without an extension",
        ));
    }
    if b1 & 0x80 == 0 {
        return Err(WireError::Protocol("an unmasked frame from a client"));
    }
    let (len, at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let len = u64::from_be_bytes(b.try_into().unwrap_or_default());
                if len >> 63 != 0 {
                    return Err(WireError::Protocol("a 64-bit length with its top bit set"));
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let Some(mask) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        mask: [mask[0], mask[1], mask[2], mask[3]],
        size: at + 4,
        len,
    }))
}

/// XORs `data` with the client's mask.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (b, m) in chunks.into_remainder().iter_mut().zip(mask) {
        *b ^= m;
    }
}

/// Client frames into events, one connection's worth of state.
#[derive(Debug)]
pub struct Reader {
    /// The largest data message.
    limit: usize,
    /// A fragmented message so far: whether it is text, and its data.
    partial: Option<(bool, BytesMut)>,
}

impl Reader {
    /// A reader refusing data messages above `limit` bytes.
    pub fn new(limit: usize) -> Reader {
        Reader {
            limit,
            partial: None,
        }
    }

    /// Bytes the frame at the front of `buf` still needs, once its header is there: the
    /// caller reserves them, so that a large message is read in few reads.
    pub fn wanted(&self, buf: &[u8]) -> usize {
        match header(buf) {
            Ok(Some(h)) => (h.size as u64 + h.len)
                .min(self.limit as u64 + MAX_HEADER as u64)
                .saturating_sub(buf.len() as u64) as usize,
            _ => 0,
        }
    }

    /// The next event from the front of `buf`, taking the frames it is made of; `None`
    /// until a whole frame (and a whole message) is buffered.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, WireError> {
        loop {
            let Some(h) = header(buf)? else {
                return Ok(None);
            };
            let control = h.opcode & 0x8 != 0;
            if control && (!h.fin || h.len > MAX_CONTROL as u64) {
                return Err(WireError::Protocol("a fragmented or long control frame"));
            }
            let so_far = self.partial.as_ref().map_or(0, |(_, d)| d.len());
            if !control && so_far as u64 + h.len > self.limit as u64 {
                return Err(WireError::TooLarge {
                    len: so_far as u64 + h.len,
                    limit: self.limit,
                });
            }
            // Within the limit (or a control frame), so it fits in usize.
            let len = h.len as usize;
            if buf.len() < h.size + len {
                return Ok(None);
            }
            buf.advance(h.size);
            let mut data = buf.split_to(len);
            unmask(&mut data, h.mask);
            match (h.opcode, self.partial.as_mut()) {
                (PING, _) => return Ok(Some(Event::Ping(data.freeze()))),
                (PONG, _) => return Ok(Some(Event::Pong)),
                (CLOSE, _) => return Ok(Some(Event::Close)),
                (TEXT | BINARY, Some(_)) => {
                    return Err(WireError::Protocol("a new message inside a fragmented one"))
                }
                (TEXT | BINARY, None) if h.fin => {
                    let text = h.opcode == TEXT;
                    return Ok(Some(Event::Message {
                        text,
                        data: data.freeze(),
                    }));
                }
                (TEXT | BINARY, None) => self.partial = Some((h.opcode == TEXT, data)),
                (CONTINUATION, Some((_, so_far))) => {
                    so_far.extend_from_slice(&data);
                    if h.fin {
                        let (text, data) = self.partial.take().unwrap_or_default();
                        return Ok(Some(Event::Message {
                            text,
                            data: data.freeze(),
                        }));
                    }
                }
                (CONTINUATION, None) => {
                    return Err(WireError::Protocol("a continuation of no message"))
                }
                _ => return Err(WireError::Protocol("an unknown opcode")),
            }
        }
    }
}

/// Appends the header of an unmasked, final frame of `opcode` carrying `len` bytes.
pub fn put_header(out: &mut impl BufMut, opcode: u8, len: usize) {
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.put_u8(126);
        out.put_u16(len);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// Appends a Close frame with status 1000 (normal closure).
pub fn put_close(out: &mut impl BufMut) {
    put_header(out, CLOSE, 2);
    out.put_u16(1000);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with a fixed key.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = BytesMut::new();
        put_header(&mut out, opcode, payload.len());
        if !fin {
            out[0] &= 0x7f;
        }
        out[1] |= 0x80;
        out.extend_from_slice(&mask);
        let mut body = payload.to_vec();
        unmask(&mut body, mask);
        out.extend_from_slice(&body);
        out.to_vec()
    }

    fn read_all(reader: &mut Reader, bytes: &[u8]) -> Result<Vec<Event>, WireError> {
        let mut buf = BytesMut::from(bytes);
        let mut events = Vec::new();
        while let Some(e) = reader.next(&mut buf)? {
            events.push(e);
        }
        assert!(buf.is_empty(), "all taken");
        Ok(events)
    }

    #[test]
    fn the_rfc_example_unmasks_to_hello() {
        // RFC 6455, 5.7: a single-frame masked text message "Hello".
        let bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            read_all(&mut Reader::new(100), &bytes).unwrap(),
            vec![Event::Message {
                text: true,
                data: Bytes::from_static(b"Hello")
            }]
        );
        assert_eq!(client_frame(true, TEXT, b"Hello"), bytes);
    }

    #[test]
    fn lengths_of_every_width_and_any_split_point() {
        for len in [0, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let bytes = client_frame(true, BINARY, &payload);
            // Whole, then delivered in two parts at several points.
            let cuts = [bytes.len(), 1, 2, 5, 13, bytes.len() / 2, bytes.len() - 1];
            for cut in cuts.into_iter().filter(|c| *c <= bytes.len()) {
                let mut reader = Reader::new(100_000);
                let mut buf = BytesMut::from(&bytes[..cut]);
                let first = reader.next(&mut buf).unwrap();
                if cut < bytes.len() {
                    assert_eq!(first, None, "len {len} cut {cut}");
                    assert!(reader.wanted(&buf) <= bytes.len() - cut);
                    buf.extend_from_slice(&bytes[cut..]);
                    let event = reader.next(&mut buf).unwrap().unwrap();
                    assert_eq!(
                        event,
                        Event::Message {
                            text: false,
                            data: payload.clone().into()
                        }
                    );
                } else {
                    assert!(first.is_some());
                }
            }
        }
    }

    #[test]
    fn fragments_join_and_control_frames_come_between_them() {
        let mut bytes = client_frame(false, TEXT, b"he");
        bytes.extend(client_frame(true, PING, b"p"));
        bytes.extend(client_frame(false, CONTINUATION, b"ll"));
        bytes.extend(client_frame(true, CONTINUATION, b"o"));
        bytes.extend(client_frame(true, PONG, b""));
        bytes.extend(client_frame(true, CLOSE, &[0x03, 0xe8]));
        assert_eq!(
            read_all(&mut Reader::new(100), &bytes).unwrap(),
            vec![
                Event::Ping(Bytes::from_static(b"p")),
                Event::Message {
                    text: true,
                    data: Bytes::from_static(b"hello")
                },
                Event::Pong,
                Event::Close,
            ]
        );
    }

    #[test]
    fn what_a_client_may_not_send_is_refused() {
        let protocol = |bytes: &[u8]| match read_all(&mut Reader::new(100), bytes) {
            Err(WireError::Protocol(why)) => why,
            other => panic!("expected a protocol error, got {other:?}"),
        };
        let mut unmasked = BytesMut::new();
        put_header(&mut unmasked, BINARY, 1);
        unmasked.put_u8(0);
        protocol(&unmasked);
        let mut rsv = client_frame(true, BINARY, b"x");
        rsv[0] |= 0x40;
        protocol(&rsv);
        protocol(&client_frame(true, 0x3, b"x"));
        protocol(&client_frame(false, PING, b"x"));
        protocol(&client_frame(true, PING, &[0; 126]));
        protocol(&client_frame(true, CONTINUATION, b"x"));
        let mut twice = client_frame(false, BINARY, b"x");
        twice.extend(client_frame(true, BINARY, b"y"));
        protocol(&twice);
    }

    #[test]
    fn a_message_above_the_limit_is_refused_from_its_header() {
        let mut reader = Reader::new(10);
        let bytes = client_frame(true, BINARY, &[0; 11]);
        // The header alone is enough to refuse it.
        let mut buf = BytesMut::from(&bytes[..6]);
        assert_eq!(
            reader.next(&mut buf),
            Err(WireError::TooLarge { len: 11, limit: 10 })
        );
        // Fragments count together.
        let mut bytes = client_frame(false, BINARY, &[0; 6]);
        bytes.extend(client_frame(true, CONTINUATION, &[0; 5]));
        assert!(matches!(
            read_all(&mut Reader::new(10), &bytes),
            Err(WireError::TooLarge { len: 11, .. })
        ));
        assert_eq!(read_all(&mut Reader::new(11), &bytes).unwrap().len(), 1);
    }

    #[test]
    fn headers_of_each_width() {
        let header = |len| {
            let mut out = Vec::new();
            put_header(&mut out, BINARY, len);
            out
        };
        assert_eq!(header(5), [0x82, 5]);
        assert_eq!(header(126), [0x82, 126, 0, 126]);
        assert_eq!(header(65536), [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }
}
