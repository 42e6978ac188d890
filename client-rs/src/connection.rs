//! One live connection to the broker: URL parsing, the handshake, and the writer loop and
//! reader task that own the socket. The supervisor ([`crate::supervisor`]) runs one of
//! these per connection and reconnects when one ends.
//!
//! The **writer** (in [`run`]) first sends what restores the client's state on this
//! connection (subscriptions, unacknowledged publishes), then receives frames from the
//! client's channel, encodes every frame that is waiting into one buffer and writes it
//! once; it also sends a `Ping` every heartbeat interval the broker announced. The
//! **reader task** decodes frames and routes them through [`Shared`]: answers with a
//! `req_id` complete the waiting request; `Deliver` goes to the subscription's channel
//! (repeats after a resume are dropped), split off undecoded and decoded only as it goes
//! into that channel; a `SLOW_CONSUMER` notice is counted. When either
//! side ends, [`run`] returns why.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use rtc_proto::codec::encode_frame;
use rtc_proto::codec::{ClientCodec, Incoming};
use rtc_proto::silence::{Silence, SILENT_INTERVALS};
use rtc_proto::tcp::TcpWriter;
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::{ErrorCode, Frame, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, FramedRead};

use crate::error::Error;
use crate::message::Message;
use crate::outgoing::{encode, encode_outgoing, Outgoing};
use crate::queue;
use crate::state::{Pending, Routed, Shared};

/// The writer hands its buffer to the socket once it holds this much.
const WRITE_CHUNK: usize = 256 * 1024;

/// The transport a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// `tcp://` (or no scheme).
    Tcp,
    /// `tls://`: TLS over TCP.
    Tls,
    /// `quic://`: one bidirectional QUIC stream.
    Quic,
}

/// Where to connect, from a URL.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// `host:port` to dial.
    pub(crate) addr: String,
    /// The host part, for TLS server-name verification.
    pub(crate) host: String,
    /// The transport.
    pub(crate) scheme: Scheme,
}

/// Splits `tcp://host:port`, `tls://host:port` (or plain `host:port`, meaning TCP).
pub(crate) fn parse_url(url: &str) -> Result<Endpoint, Error> {
    let bad = |reason: &str| Error::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let (scheme, addr) = match url.split_once("://") {
        Some(("tcp", rest)) => (Scheme::Tcp, rest),
        Some(("tls", rest)) => (Scheme::Tls, rest),
        Some(("quic", rest)) => (Scheme::Quic, rest),
        Some((scheme, _)) => {
            return Err(bad(&format!(
                "unsupported scheme {scheme:?} (supported: tcp, tls, quic)"
            )))
        }
        None => (Scheme::Tcp, url),
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
    Ok(Endpoint {
        addr: addr.to_string(),
        host: host.to_string(),
        scheme,
    })
}

/// The read half of a connection, whatever the transport.
pub(crate) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a connection, whatever the transport.
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// What the handshake learned from the broker's `Welcome`.
pub(crate) struct Session {
    pub(crate) welcome: v1::Welcome,
    pub(crate) reader: FramedRead<BoxRead, ClientCodec>,
    pub(crate) writer: BoxWrite,
    /// The QUIC connection, for its datagrams.
    pub(crate) datagrams: Option<quinn::Connection>,
    /// The socket again, for direct writes (TCP only).
    pub(crate) direct: Option<TcpWriter>,
}

async fn tcp_connect(addr: &str, timeout: Duration) -> Result<TcpStream, String> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("timed out after {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Opens a QUIC connection and its one bidirectional stream.
async fn quic_connect(
    endpoint: &Endpoint,
    config: &Arc<rustls::ClientConfig>,
) -> Result<(BoxRead, BoxWrite, quinn::Connection), String> {
    let addr = tokio::net::lookup_host(&endpoint.addr)
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "the host name has no address".to_string())?;
    let local: std::net::SocketAddr = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .expect("valid");
    let mut quic = quinn::Endpoint::client(local).map_err(|e| e.to_string())?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config.clone())
        .map_err(|e| e.to_string())?;
    quic.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let host = endpoint.host.trim_start_matches('[').trim_end_matches(']');
    let conn = quic
        .connect(addr, host)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| format!("QUIC handshake failed: {e}"))?;
    let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let writer = QuicWriter {
        send,
        _conn: conn.clone(),
        _endpoint: quic,
    };
    Ok((Box::new(recv), Box::new(writer), conn))
}

/// The send side of the QUIC stream, holding the connection and endpoint so they live as
/// long as the stream is used.
struct QuicWriter {
    send: quinn::SendStream,
    _conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

impl AsyncWrite for QuicWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        AsyncWrite::poll_write(std::pin::Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        AsyncWrite::poll_shutdown(std::pin::Pin::new(&mut self.send), cx)
    }
}

/// Dials, sends `Hello` and waits for `Welcome`.
pub(crate) async fn handshake(
    endpoint: &Endpoint,
    tls: Option<&Arc<rustls::ClientConfig>>,
    client_name: &str,
    token: &str,
    timeout: Duration,
) -> Result<Session, Error> {
    let addr = endpoint.addr.as_str();
    let connect_err = |reason: String| Error::Connect {
        addr: addr.to_string(),
        reason,
    };
    let mut datagrams = None;
    let mut direct = None;
    let (read_half, mut writer): (BoxRead, BoxWrite) = match (endpoint.scheme, tls) {
        (Scheme::Quic, Some(config)) => {
            let opened = tokio::time::timeout(timeout, quic_connect(endpoint, config))
                .await
                .map_err(|_| connect_err(format!("timed out after {timeout:?}")))?;
            let (r, w, conn) = opened.map_err(connect_err)?;
            datagrams = Some(conn);
            (r, w)
        }
        (Scheme::Tcp, _) => {
            let stream = tcp_connect(addr, timeout).await.map_err(connect_err)?;
            let (r, w) = stream.into_split();
            let w = TcpWriter::new(w);
            direct = Some(w.clone());
            (Box::new(r), Box::new(w))
        }
        (_, None) => {
            return Err(Error::Tls(
                "no TLS configuration for a tls:// or quic:// URL".into(),
            ))
        }
        (Scheme::Tls, Some(config)) => {
            let stream = tcp_connect(addr, timeout).await.map_err(connect_err)?;
            let name = crate::tls::server_name(&endpoint.host)?;
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let tls = tokio::time::timeout(timeout, connector.connect(name, stream))
                .await
                .map_err(|_| connect_err(format!("TLS handshake timed out after {timeout:?}")))?
                .map_err(|e| connect_err(format!("TLS handshake failed: {e}")))?;
            let (r, w) = tokio::io::split(tls);
            (Box::new(r), Box::new(w))
        }
    };
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
        ClientCodec::new(rtc_proto::DEFAULT_MAX_FRAME_SIZE),
    );
    let first = tokio::time::timeout(timeout, reader.next())
        .await
        .map_err(|_| Error::Handshake(format!("no Welcome within {timeout:?}")))?;
    let first = first.map(|r| {
        r.and_then(|incoming| match incoming {
            Incoming::Frame(frame) => Ok(frame),
            Incoming::Delivery(d) => d.decode().map(Frame::from),
        })
    });
    match first {
        Some(Ok(Frame {
            op: Some(Op::Welcome(welcome)),
        })) => {
            *reader.decoder_mut() = ClientCodec::new(welcome.max_frame_size as usize);
            Ok(Session {
                welcome,
                reader,
                writer,
                datagrams,
                direct,
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

/// How a connection ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The application closed the client (or dropped every handle).
    Closed,
    /// The link failed; the string says why.
    Lost(String),
}

/// Runs one connection: writes `restore` first, then drains `rx` into the socket
/// (batching, one write per batch) with a `Ping` every heartbeat, while a reader task
/// routes what arrives. Returns when either side ends. While it runs, the application's
/// tasks may write a lone request to a TCP socket themselves (`crate::direct`).
pub(crate) async fn run(
    shared: &Arc<Shared>,
    rx: &mut queue::Receiver<Outgoing>,
    mut session: Session,
    restore: Vec<Frame>,
) -> Ended {
    let socket = session.direct.take();
    rx.attach(socket.clone());
    let ended = write_loop(shared, rx, session, socket, restore).await;
    rx.detach();
    ended
}

async fn write_loop(
    shared: &Arc<Shared>,
    rx: &mut queue::Receiver<Outgoing>,
    session: Session,
    socket: Option<TcpWriter>,
    restore: Vec<Frame>,
) -> Ended {
    let heartbeat =
        Duration::from_millis(u64::from(session.welcome.heartbeat_interval_ms.max(100)));
    let max_frame_size = session.welcome.max_frame_size as usize;
    let mut reader = tokio::spawn(read_loop(shared.clone(), session.reader, heartbeat));
    let datagrams = session
        .datagrams
        .map(|conn| tokio::spawn(datagram_loop(shared.clone(), conn)));
    let _stop_datagrams = AbortOnDrop(datagrams);
    let mut writer = session.writer;
    let mut buf = BytesMut::new();
    for frame in &restore {
        encode(frame, max_frame_size, &mut buf);
    }
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut nonce = 0u64;
    loop {
        if !buf.is_empty() {
            if let Err(e) = writer.write_all(&buf).await {
                reader.abort();
                return Ended::Lost(shared.reason(format!("write failed: {e}")));
            }
            buf.clear();
        }
        let first = tokio::select! {
            biased;
            reason = &mut reader => {
                return Ended::Lost(reason.unwrap_or_else(|e| format!("reader stopped: {e}")));
            }
            cmd = rx.recv() => cmd,
            _ = ping.tick() => {
                nonce += 1;
                // Queued, not written here: a direct writer may hold the socket.
                rx.push_own(Outgoing::Frame(Frame::from_op(Op::Ping(v1::Ping { nonce }))));
                continue;
            }
        };
        let mut next = first;
        loop {
            match next {
                Some(Outgoing::Close) | None => {
                    let _ = writer.write_all(&buf).await;
                    let _ = writer.shutdown().await;
                    // The broker answers our close by closing too; the reader then ends.
                    let abort = reader.abort_handle();
                    if tokio::time::timeout(Duration::from_secs(5), reader)
                        .await
                        .is_err()
                    {
                        abort.abort();
                    }
                    return Ended::Closed;
                }
                Some(item) if crate::direct::is_stale(&item, socket.as_ref()) => {
                    tracing::debug!("dropping the end of a frame begun on a lost connection");
                }
                Some(item) => encode_outgoing(&item, max_frame_size, &mut buf),
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
    }
}

/// Aborts a task when dropped (the datagram reader ends with its connection's run).
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Routes the deliveries that arrive as QUIC datagrams. Datagrams are unreliable by
/// nature: one that does not decode, or finds its subscription's buffer full, is dropped.
async fn datagram_loop(shared: Arc<Shared>, conn: quinn::Connection) {
    while let Ok(datagram) = conn.read_datagram().await {
        let Ok(Frame {
            op: Some(Op::Deliver(d)),
        }) = prost::Message::decode(datagram)
        else {
            continue;
        };
        let Some(message) = d.message else { continue };
        // Unreliable anyway: a datagram that finds its subscription's queue full is dropped.
        if let Routed::Queued = shared.route(d.sub_id, Message::from(message)) {
            shared.datagrams.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Reads frames and routes them until the connection ends; returns why it ended.
///
/// Each read is split into frames whole: the deliveries it brought are routed together,
/// under one lock of the subscription map, and the heartbeat timer is polled once per
/// read rather than once per frame. A delivery waits in the batch as its frame
/// (`RawDelivery`, 40 bytes) and is decoded straight into its subscription's queue:
/// decoded first, each message (about 170 bytes) was moved into the batch and out
/// again, which profiles showed as a third of a subscriber's time in `memmove`. Other
/// frames are handled in their place in the stream (the deliveries before them first).
async fn read_loop(
    shared: Arc<Shared>,
    reader: FramedRead<BoxRead, ClientCodec>,
    heartbeat: Duration,
) -> String {
    let parts = reader.into_parts();
    let (mut io, mut buf, mut codec) = (parts.io, parts.read_buf, parts.codec);
    // Silence is counted in heartbeat ticks, not by reading the clock per frame (see
    // rtc_proto::silence).
    let mut silence = Silence::default();
    // The Welcome just arrived: the first interval is not a silent one.
    silence.heard();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut deliveries = VecDeque::new();
    let reason = 'read: loop {
        loop {
            let incoming = match codec.decode(&mut buf) {
                Ok(Some(incoming)) => incoming,
                Ok(None) => break,
                Err(e) => break 'read format!("read failed: {e}"),
            };
            let frame = match incoming {
                Incoming::Delivery(d) => {
                    deliveries.push_back(d);
                    continue;
                }
                Incoming::Frame(frame) => frame,
            };
            deliver(&shared, &mut deliveries).await;
            handle(&shared, frame).await;
        }
        deliver(&shared, &mut deliveries).await;
        rtc_proto::codec::grow_read_buffer(&mut buf);
        // Room to read into: reclaims the space of the frames decoded (moving the partial
        // one to the front) or grows, as FramedRead does.
        buf.reserve(1);
        let read = tokio::select! {
            _ = ticks.tick() => {
                if silence.tick() {
                    break format!("nothing received from the broker for {SILENT_INTERVALS} heartbeat intervals ({:?})", heartbeat * SILENT_INTERVALS);
                }
                continue;
            }
            read = io.read_buf(&mut buf) => read,
        };
        match read {
            Ok(0) => break "the broker closed the connection".to_string(),
            Ok(_) => silence.heard(),
            Err(e) => break format!("read failed: {e}"),
        }
    };
    shared.reason(reason)
}

/// Handles a frame other than a fast-path delivery.
async fn handle(shared: &Shared, frame: Frame) {
    match frame.op {
        Some(Op::Deliver(d)) => {
            // One the fast path did not take (the batch before it is delivered).
            let Some(message) = d.message else { return };
            let mut one = VecDeque::from([(d.sub_id, Message::from(message))]);
            deliver(shared, &mut one).await;
        }
        Some(Op::PubAck(a)) => shared.complete(a.req_id, Ok(Op::PubAck(a))),
        Some(Op::SubAck(a)) => shared.complete(a.req_id, Ok(Op::SubAck(a))),
        Some(Op::UnsubAck(a)) => shared.complete(a.req_id, Ok(Op::UnsubAck(a))),
        Some(Op::TopicInfo(t)) => shared.complete(t.req_id, Ok(Op::TopicInfo(t))),
        Some(Op::TopicList(l)) => shared.complete(l.req_id, Ok(Op::TopicList(l))),
        Some(Op::Confirm(c)) => shared.complete(c.req_id, Ok(Op::Confirm(c))),
        Some(Op::Response(r)) => shared.complete(r.req_id, Ok(Op::Response(r))),
        Some(Op::PresenceInfo(i)) => shared.complete(i.req_id, Ok(Op::PresenceInfo(i))),
        // Nobody listening is no error.
        Some(Op::PresenceEvent(e)) => drop(shared.presence.send(e)),
        Some(Op::ConsumerInfo(c)) => shared.complete(c.req_id, Ok(Op::ConsumerInfo(c))),
        Some(Op::ConsumerList(l)) => shared.complete(l.req_id, Ok(Op::ConsumerList(l))),
        Some(Op::Error(e)) if e.req_id != 0 => {
            shared.complete(e.req_id, Err(Error::from_frame(&e)))
        }
        Some(Op::Error(e)) => on_connection_error(shared, &e),
        Some(Op::Pong(_)) => {}
        // The end of a replay: deliveries go on as they come; the client does not
        // surface it yet.
        Some(Op::ReplayEnd(_)) => {}
        other => {
            let op = Frame { op: other }.op_name();
            tracing::debug!(op, "ignoring an operation the broker should not send");
        }
    }
}

/// Hands deliveries to their subscriptions, in order; empties `deliveries`.
async fn deliver<P: Pending>(shared: &Shared, deliveries: &mut VecDeque<P>) {
    while let Some((sub_id, tx, message)) = shared.route_batch(deliveries) {
        // Waits when the application is not reading this subscription: the backpressure
        // reaches the broker, which then drops and reports.
        if tx.send(message).await.is_err() {
            shared.remove_sub(sub_id);
        }
    }
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
    if code == ErrorCode::TopicDeleted {
        tracing::info!(topic = %e.topic, sub_id = e.sub_id, message = %e.message, "topic or consumer deleted");
        shared.topic_deleted(e.sub_id, &e.topic);
        return;
    }
    tracing::warn!(code = code.name(), message = %e.message, sub_id = e.sub_id, "broker error");
    shared.set_last_error(format!("{}: {}", code.name(), e.message));
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("tcp://127.0.0.1:7400").unwrap().addr,
            "127.0.0.1:7400"
        );
        assert_eq!(parse_url("localhost:1").unwrap().addr, "localhost:1");
        assert_eq!(parse_url("tcp://[::1]:7400/").unwrap().addr, "[::1]:7400");
        let tls = parse_url("tls://broker.example:7400").unwrap();
        assert_eq!(tls.scheme, super::Scheme::Tls);
        assert_eq!(parse_url("quic://h:1").unwrap().scheme, super::Scheme::Quic);
        assert_eq!(tls.host, "broker.example");
        assert!(parse_url("http://x:1").is_err());
        assert!(parse_url("tcp://nohost").is_err());
        assert!(parse_url("tcp://:80").is_err());
        assert!(parse_url("tcp://h:99999").is_err());
    }
}
