//! One live connection to the broker: URL parsing, the handshake, and the two tasks that
//! own the socket.
//!
//! The **writer task** receives frames from a bounded channel, encodes every frame that is
//! waiting into one buffer, writes it and flushes once; it also sends a `Ping` every
//! heartbeat interval the broker announced. The **reader task** decodes frames and routes
//! them: `PubAck`/`SubAck`/`UnsubAck`/`Error` with a `req_id` complete the waiting request
//! in [`Shared::pending`]; `Deliver` goes to the subscription's channel in
//! [`Shared::subs`]; a `SLOW_CONSUMER` notice is counted. When either task ends, the
//! connection is marked closed with a reason: every waiting request fails with
//! [`Error::Closed`] and every subscription stream ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use rtc_proto::codec::encode_frame;
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::{ErrorCode, Frame, FrameCodec, PROTOCOL_VERSION};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;

use crate::error::Error;
use crate::message::Message;

/// The writer hands its buffer to the socket once it holds this much.
const WRITE_CHUNK: usize = 256 * 1024;

/// What the writer task is asked to do.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Frame(Frame),
    /// Flush what is queued, close the write side, stop.
    Close,
}

/// Where a broker answer is routed.
pub(crate) type Reply = Result<Op, Error>;

/// State the client API and the two tasks share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Requests waiting for their answer, by req_id.
    pub(crate) pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    /// Active subscriptions' message channels, by sub_id.
    pub(crate) subs: Mutex<HashMap<u64, mpsc::Sender<Message>>>,
    /// Why the connection closed, once it has.
    closed: Mutex<Option<String>>,
    /// The last connection-level error the broker sent (e.g. HEARTBEAT_TIMEOUT), used as
    /// the close reason when the broker then hangs up.
    last_error: Mutex<Option<String>>,
    /// Messages the broker reported dropping for this connection (SLOW_CONSUMER).
    pub(crate) dropped: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// `Some(reason)` once the connection is closed.
    pub(crate) fn closed_reason(&self) -> Option<String> {
        lock(&self.closed).clone()
    }

    /// Marks the connection closed (first reason wins), fails every waiting request and
    /// ends every subscription stream.
    pub(crate) fn close(&self, reason: String) {
        {
            let mut closed = lock(&self.closed);
            if closed.is_some() {
                return;
            }
            let reason = match lock(&self.last_error).take() {
                Some(broker) => format!("{reason} ({broker})"),
                None => reason,
            };
            tracing::debug!(%reason, "connection closed");
            *closed = Some(reason);
        }
        let reason = self.closed_reason().unwrap_or_default();
        for (_, tx) in lock(&self.pending).drain() {
            let _ = tx.send(Err(Error::Closed(reason.clone())));
        }
        lock(&self.subs).clear();
    }

    /// Registers a waiting request; fails at once if the connection is already closed.
    pub(crate) fn register(&self, req_id: u64, tx: oneshot::Sender<Reply>) -> Result<(), Error> {
        lock(&self.pending).insert(req_id, tx);
        // `close` sets the reason before draining `pending`, so checking after inserting
        // means a request is either drained by `close` or sees the reason here.
        if let Some(reason) = self.closed_reason() {
            lock(&self.pending).remove(&req_id);
            return Err(Error::Closed(reason));
        }
        Ok(())
    }

    pub(crate) fn unregister(&self, req_id: u64) {
        lock(&self.pending).remove(&req_id);
    }

    /// Registers a subscription's channel; fails if the connection is already closed.
    pub(crate) fn add_sub(&self, sub_id: u64, tx: mpsc::Sender<Message>) -> Result<(), Error> {
        lock(&self.subs).insert(sub_id, tx);
        if let Some(reason) = self.closed_reason() {
            lock(&self.subs).remove(&sub_id);
            return Err(Error::Closed(reason));
        }
        Ok(())
    }

    pub(crate) fn remove_sub(&self, sub_id: u64) {
        lock(&self.subs).remove(&sub_id);
    }

    fn complete(&self, req_id: u64, reply: Reply) {
        if let Some(tx) = lock(&self.pending).remove(&req_id) {
            let _ = tx.send(reply);
        }
    }
}

/// Splits `tcp://host:port` (or plain `host:port`) into the address to dial.
pub(crate) fn parse_url(url: &str) -> Result<String, Error> {
    let bad = |reason: &str| Error::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let addr = match url.split_once("://") {
        Some(("tcp", rest)) => rest,
        Some((scheme, _)) => {
            return Err(bad(&format!(
                "unsupported scheme {scheme:?} (supported: tcp)"
            )))
        }
        None => url,
    };
    let addr = addr.trim_end_matches('/');
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| bad("expected host:port"))?;
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    port.parse::<u16>()
        .map_err(|_| bad("port must be a number from 0 to 65535"))?;
    Ok(addr.to_string())
}

/// What the handshake learned from the broker's `Welcome`.
pub(crate) struct Session {
    pub(crate) welcome: v1::Welcome,
    pub(crate) reader: FramedRead<OwnedReadHalf, FrameCodec>,
    pub(crate) writer: OwnedWriteHalf,
}

/// Dials, sends `Hello` and waits for `Welcome`.
pub(crate) async fn handshake(
    addr: &str,
    client_name: &str,
    token: &str,
    timeout: Duration,
) -> Result<Session, Error> {
    let connect_err = |reason: String| Error::Connect {
        addr: addr.to_string(),
        reason,
    };
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| connect_err(format!("timed out after {timeout:?}")))?
        .map_err(|e| connect_err(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let (read_half, mut writer) = stream.into_split();
    let hello = Frame::from_op(Op::Hello(v1::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: client_name.to_string(),
        auth_token: token.to_string(),
    }));
    let mut buf = BytesMut::new();
    encode_frame(&hello, usize::MAX, &mut buf).map_err(|e| Error::Handshake(e.to_string()))?;
    writer
        .write_all(&buf)
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    // Until Welcome announces the real limit, accept frames up to the protocol default.
    let mut reader = FramedRead::new(
        read_half,
        FrameCodec::new(rtc_proto::DEFAULT_MAX_FRAME_SIZE),
    );
    let first = tokio::time::timeout(timeout, reader.next())
        .await
        .map_err(|_| Error::Handshake(format!("no Welcome within {timeout:?}")))?;
    match first {
        Some(Ok(Frame {
            op: Some(Op::Welcome(welcome)),
        })) => {
            *reader.decoder_mut() = FrameCodec::new(welcome.max_frame_size as usize);
            Ok(Session {
                welcome,
                reader,
                writer,
            })
        }
        Some(Ok(Frame {
            op: Some(Op::Error(e)),
        })) => Err(Error::Handshake(format!(
            "{}: {}",
            e.error_code().name(),
            e.message
        ))),
        Some(Ok(other)) => Err(Error::Handshake(format!(
            "expected Welcome, got {}",
            other.op_name()
        ))),
        Some(Err(e)) => Err(Error::Handshake(e.to_string())),
        None => Err(Error::Handshake("the broker closed the connection".into())),
    }
}

/// Drains `rx` into the socket, batching, and pings every `heartbeat`.
pub(crate) async fn write_loop(
    shared: std::sync::Arc<Shared>,
    mut rx: mpsc::Receiver<Outgoing>,
    mut writer: OwnedWriteHalf,
    heartbeat: Duration,
    max_frame_size: usize,
) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = BytesMut::new();
    let mut nonce = 0u64;
    let reason = loop {
        let first = tokio::select! {
            biased;
            cmd = rx.recv() => cmd,
            _ = ping.tick() => {
                nonce += 1;
                Some(Outgoing::Frame(Frame::from_op(Op::Ping(v1::Ping { nonce }))))
            }
        };
        let mut closing = false;
        let mut next = first;
        loop {
            match next {
                Some(Outgoing::Frame(frame)) => {
                    if let Err(e) = encode_frame(&frame, max_frame_size, &mut buf) {
                        tracing::error!(error = %e, "dropping an unencodable frame");
                    }
                }
                Some(Outgoing::Close) | None => {
                    closing = true;
                    break;
                }
            }
            if buf.len() >= WRITE_CHUNK {
                break;
            }
            next = match rx.try_recv() {
                Ok(cmd) => Some(cmd),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
        }
        if !buf.is_empty() {
            if let Err(e) = writer.write_all(&buf).await {
                break format!("write failed: {e}");
            }
            buf.clear();
        }
        if closing {
            let _ = writer.shutdown().await;
            return;
        }
    };
    shared.close(reason);
}

/// Reads frames and routes them until the connection ends.
pub(crate) async fn read_loop(
    shared: std::sync::Arc<Shared>,
    mut reader: FramedRead<OwnedReadHalf, FrameCodec>,
    heartbeat: Duration,
) {
    let silence = heartbeat * 3;
    let reason = loop {
        let frame = match tokio::time::timeout(silence, reader.next()).await {
            Err(_) => break format!("nothing received from the broker for {silence:?}"),
            Ok(None) => break "the broker closed the connection".to_string(),
            Ok(Some(Err(e))) => break format!("read failed: {e}"),
            Ok(Some(Ok(frame))) => frame,
        };
        match frame.op {
            Some(Op::Deliver(d)) => {
                let Some(message) = d.message else { continue };
                let tx = lock(&shared.subs).get(&d.sub_id).cloned();
                if let Some(tx) = tx {
                    // Waits when the application is not reading this subscription: the
                    // backpressure reaches the broker, which then drops and reports.
                    if tx.send(Message::from(message)).await.is_err() {
                        shared.remove_sub(d.sub_id);
                    }
                }
            }
            Some(Op::PubAck(a)) => shared.complete(a.req_id, Ok(Op::PubAck(a))),
            Some(Op::SubAck(a)) => shared.complete(a.req_id, Ok(Op::SubAck(a))),
            Some(Op::UnsubAck(a)) => shared.complete(a.req_id, Ok(Op::UnsubAck(a))),
            Some(Op::TopicInfo(t)) => shared.complete(t.req_id, Ok(Op::TopicInfo(t))),
            Some(Op::TopicList(l)) => shared.complete(l.req_id, Ok(Op::TopicList(l))),
            Some(Op::Confirm(c)) => shared.complete(c.req_id, Ok(Op::Confirm(c))),
            Some(Op::ConsumerInfo(c)) => shared.complete(c.req_id, Ok(Op::ConsumerInfo(c))),
            Some(Op::ConsumerList(l)) => shared.complete(l.req_id, Ok(Op::ConsumerList(l))),
            Some(Op::Error(e)) if e.req_id != 0 => {
                shared.complete(e.req_id, Err(Error::from_frame(&e)))
            }
            Some(Op::Error(e)) => on_connection_error(&shared, &e),
            Some(Op::Pong(_)) => {}
            other => {
                let op = Frame { op: other }.op_name();
                tracing::debug!(op, "ignoring an operation the broker should not send");
            }
        }
    };
    shared.close(reason);
}

fn on_connection_error(shared: &Shared, e: &v1::Error) {
    let code = e.error_code();
    if code == ErrorCode::SlowConsumer {
        shared.dropped.fetch_add(e.count, Ordering::Relaxed);
        tracing::warn!(
            dropped = e.count,
            "the broker dropped messages: this client is reading too slowly"
        );
        return;
    }
    tracing::warn!(code = code.name(), message = %e.message, sub_id = e.sub_id, "broker error");
    *lock(&shared.last_error) = Some(format!("{}: {}", code.name(), e.message));
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn urls() {
        assert_eq!(parse_url("tcp://127.0.0.1:7400").unwrap(), "127.0.0.1:7400");
        assert_eq!(parse_url("localhost:1").unwrap(), "localhost:1");
        assert_eq!(parse_url("tcp://[::1]:7400/").unwrap(), "[::1]:7400");
        assert!(parse_url("http://x:1").is_err());
        assert!(parse_url("tcp://nohost").is_err());
        assert!(parse_url("tcp://:80").is_err());
        assert!(parse_url("tcp://h:99999").is_err());
    }
}
