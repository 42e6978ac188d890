//! The TCP listener, plain ([`Tcp`]) or with TLS ([`Tls`]). Both carry rtc's
//! length-prefixed frames on the byte stream ([`ByteStreamSource`], [`ByteStream`]).
//! Plain TCP also lets whoever queued frames for a connection write them to its socket
//! without waking the writer task ([`crate::outbound::DirectWrite`]); TLS cannot, since
//! its stream state belongs to one writer.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rtc_proto::codec::encode_frame;
use rtc_proto::Frame;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::accept::{Incoming, Listener};
use crate::error::BrokerError;
use crate::outbound::{ByteStream, DirectWrite, TcpWriter};
use crate::session::{ByteStreamSource, Connection};

/// How long a refused connection gets to take the error that says why.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A bound TCP socket, and its address.
#[derive(Debug)]
struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Bound {
    async fn bind(addr: SocketAddr, transport: &'static str) -> Result<Bound, BrokerError> {
        let bind_err = |source| BrokerError::Bind {
            transport,
            addr,
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        Ok(Bound { listener, addr })
    }

    async fn accept(&mut self) -> io::Result<(TcpStream, String)> {
        let (stream, peer) = self.listener.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, peer.to_string()))
    }
}

/// Plain TCP (`tcp://` URLs).
#[derive(Debug)]
pub struct Tcp(Bound);

impl Tcp {
    /// Binds `addr` (port 0 for any free port).
    pub async fn bind(addr: SocketAddr) -> Result<Tcp, BrokerError> {
        Bound::bind(addr, "tcp").await.map(Tcp)
    }

    /// The address it is bound to (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.0.addr
    }
}

impl Listener for Tcp {
    type Incoming = TcpIncoming;

    fn transport(&self) -> &'static str {
        "tcp"
    }

    fn address(&self) -> String {
        self.0.addr.to_string()
    }

    async fn accept(&mut self) -> Option<io::Result<TcpIncoming>> {
        Some(
            self.0
                .accept()
                .await
                .map(|(stream, peer)| TcpIncoming { stream, peer }),
        )
    }
}

/// A TCP connection just accepted.
#[derive(Debug)]
pub struct TcpIncoming {
    stream: TcpStream,
    peer: String,
}

impl Incoming for TcpIncoming {
    fn transport(&self) -> &'static str {
        "tcp"
    }

    type Source = ByteStreamSource<OwnedReadHalf>;
    type Sink = ByteStream<TcpWriter>;

    fn peer(&self) -> String {
        self.peer.clone()
    }

    async fn open(self, max_frame_size: usize) -> io::Result<Connection<Self::Source, Self::Sink>> {
        let (reader, writer) = self.stream.into_split();
        let writer = TcpWriter::new(writer);
        let direct: std::sync::Arc<dyn DirectWrite> = writer.half().clone();
        Ok(Connection {
            source: ByteStreamSource::new(reader, max_frame_size),
            sink: ByteStream(writer),
            peer: self.peer,
            direct: Some(direct),
            datagrams: None,
        })
    }

    async fn refuse(self, error: Frame) {
        refuse(self.stream, &error).await;
    }
}

/// TLS over TCP (`tls://` URLs).
pub struct Tls {
    bound: Bound,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("addr", &self.bound.addr)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for TlsIncoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIncoming")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Binds `addr`; connections speak TLS with `acceptor`'s certificate.
    pub async fn bind(addr: SocketAddr, acceptor: TlsAcceptor) -> Result<Tls, BrokerError> {
        let bound = Bound::bind(addr, "tls").await?;
        Ok(Tls { bound, acceptor })
    }

    /// The address it is bound to (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.bound.addr
    }
}

impl Listener for Tls {
    type Incoming = TlsIncoming;

    fn transport(&self) -> &'static str {
        "tls"
    }

    fn address(&self) -> String {
        self.bound.addr.to_string()
    }

    async fn accept(&mut self) -> Option<io::Result<TlsIncoming>> {
        let acceptor = self.acceptor.clone();
        Some(self.bound.accept().await.map(|(stream, peer)| TlsIncoming {
            stream,
            peer,
            acceptor,
        }))
    }
}

/// A TCP connection just accepted, before its TLS handshake.
pub struct TlsIncoming {
    stream: TcpStream,
    peer: String,
    acceptor: TlsAcceptor,
}

impl Incoming for TlsIncoming {
    fn transport(&self) -> &'static str {
        "tls"
    }

    type Source = ByteStreamSource<ReadHalf<TlsStream<TcpStream>>>;
    type Sink = ByteStream<WriteHalf<TlsStream<TcpStream>>>;

    fn peer(&self) -> String {
        self.peer.clone()
    }

    async fn open(self, max_frame_size: usize) -> io::Result<Connection<Self::Source, Self::Sink>> {
        let tls = self.acceptor.accept(self.stream).await?;
        let (reader, writer) = tokio::io::split(tls);
        Ok(Connection {
            source: ByteStreamSource::new(reader, max_frame_size),
            sink: ByteStream(writer),
            peer: self.peer,
            direct: None,
            datagrams: None,
        })
    }

    async fn refuse(self, error: Frame) {
        // Before any TLS: the frame reaches a client that reads plain frames, and a TLS
        // client sees its handshake fail, as it would at a close.
        refuse(self.stream, &error).await;
    }
}

/// Tells a connection over the limit why it is closed, then closes it.
async fn refuse(mut stream: TcpStream, error: &Frame) {
    let mut buf = bytes::BytesMut::new();
    if encode_frame(error, usize::MAX, &mut buf).is_ok() {
        let _ = tokio::time::timeout(REFUSE_TIMEOUT, stream.write_all(&buf)).await;
    }
    let _ = stream.shutdown().await;
}
