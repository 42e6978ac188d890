//! The write half of a TCP connection shared by two kinds of writer (feature `tcp`): the
//! connection's writer task, which writes through `AsyncWrite` and may wait for the
//! socket, and *direct writers* — other tasks or threads that write with non-blocking
//! [`TcpWriter::try_write`] when nobody else is writing, saving the writer task a
//! wake-up. Who may write when is the caller's business (the broker's outbox and the
//! client's queue each keep a "pen": one writer at a time); this type only lets both
//! reach the one socket.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedWriteHalf;

/// The write half of a TCP stream; clones write to the same socket.
#[derive(Debug, Clone)]
pub struct TcpWriter(Arc<OwnedWriteHalf>);

impl TcpWriter {
    /// Wraps the write half of a TCP stream.
    pub fn new(half: OwnedWriteHalf) -> Self {
        TcpWriter(half.into())
    }

    /// Writes what the socket takes now, without waiting; `WouldBlock` when it takes
    /// nothing.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    /// The shared write half itself.
    pub fn half(&self) -> &Arc<OwnedWriteHalf> {
        &self.0
    }

    /// Whether `other` writes to the same socket.
    pub fn same_socket(&self, other: &TcpWriter) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl AsyncWrite for TcpWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.as_ref().as_ref().poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                // The readiness was stale; `try_write` cleared it, so the next poll
                // registers for the socket's next writable event.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Sends FIN now, though a direct writer may still hold the half for a moment.
        let socket = socket2::SockRef::from(self.0.as_ref().as_ref());
        Poll::Ready(socket.shutdown(std::net::Shutdown::Write))
    }
}
