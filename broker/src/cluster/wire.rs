//! The form of what nodes publish to each other on a topic's live channel, in one
//! place: runs of durable messages from the append script (`scripts.rs`) and runs of
//! ephemeral ones from the relay (`relay.rs`), as the feed (`feed.rs`) parses them.
//! Bodies are binary; every length is a decimal before a `:`.

/// A message on a live channel.
#[derive(Debug, PartialEq, Eq)]
pub enum Live<'a> {
    /// From the append script: `D<epoch>:<ts>:` then `<seq>:<len>:<body>` per message
    /// stored by one run.
    Durable {
        /// The log's epoch.
        epoch: u64,
        /// Their timestamp.
        ts: i64,
        /// Each message's seq and stored body (the `Message` without seq, timestamp and
        /// epoch), in seq order.
        stored: Vec<(u64, &'a [u8])>,
    },
    /// From a node's relay: `M<node>:` then `<0|1><len>:<message>` per message (the
    /// flag: whether the topic allows datagrams).
    Ephemeral {
        /// The node that published them.
        node: &'a [u8],
        /// Each encoded `Message`, with its datagram flag, in publish order.
        messages: Vec<(bool, &'a [u8])>,
    },
}

/// Cuts `n` fields separated by `:` off the front of `s`; the rest is the last.
fn fields<const N: usize>(s: &[u8]) -> Option<([&[u8]; N], &[u8])> {
    let mut out = [&s[..0]; N];
    let mut rest = s;
    for slot in out.iter_mut() {
        let at = rest.iter().position(|&b| b == b':')?;
        *slot = &rest[..at];
        rest = &rest[at + 1..];
    }
    Some((out, rest))
}

fn num<T: std::str::FromStr>(b: &[u8]) -> Option<T> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Parses a live message; `None` if it is not one of rtc's.
pub fn parse(payload: &[u8]) -> Option<Live<'_>> {
    let (&kind, rest) = payload.split_first()?;
    match kind {
        b'D' => {
            let ([epoch, ts], mut rest) = fields::<2>(rest)?;
            let mut stored = Vec::new();
            while !rest.is_empty() {
                let ([seq, len], after) = fields::<2>(rest)?;
                let len: usize = num(len)?;
                if after.len() < len {
                    return None;
                }
                stored.push((num(seq)?, &after[..len]));
                rest = &after[len..];
            }
            Some(Live::Durable {
                epoch: num(epoch)?,
                ts: num(ts)?,
                stored,
            })
        }
        b'M' => {
            let ([node], mut rest) = fields::<1>(rest)?;
            let mut messages = Vec::new();
            while let Some((&flag, after)) = rest.split_first() {
                let ([len], after) = fields::<1>(after)?;
                let len: usize = num(len)?;
                if after.len() < len {
                    return None;
                }
                messages.push((flag == b'1', &after[..len]));
                rest = &after[len..];
            }
            Some(Live::Ephemeral { node, messages })
        }
        _ => None,
    }
}

/// The start of a relayed run of ephemeral messages from `node`.
pub fn relayed_header(node: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(node.len() + 256);
    out.push(b'M');
    out.extend_from_slice(node.as_bytes());
    out.push(b':');
    out
}

/// Adds one message to a relayed run.
pub fn relayed_push(out: &mut Vec<u8>, datagram: bool, message: &[u8]) {
    out.push(if datagram { b'1' } else { b'0' });
    out.extend_from_slice(message.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_messages_parse_with_colons_in_their_bodies() {
        assert_eq!(
            parse(b"D99:1700000000000:12:3:a:b13:0:"),
            Some(Live::Durable {
                epoch: 99,
                ts: 1_700_000_000_000,
                stored: vec![(12, &b"a:b"[..]), (13, &b""[..])],
            })
        );
        assert_eq!(
            parse(b"D99:1:12:9:short"),
            None,
            "a body shorter than its length"
        );
        let mut e = relayed_header("n1");
        relayed_push(&mut e, true, b"x:y");
        relayed_push(&mut e, false, b"");
        assert_eq!(
            parse(&e),
            Some(Live::Ephemeral {
                node: b"n1",
                messages: vec![(true, &b"x:y"[..]), (false, &b""[..])],
            })
        );
        assert_eq!(parse(b"D1:x:"), None);
        assert_eq!(parse(b"q"), None);
        assert_eq!(parse(b""), None);
    }
}
