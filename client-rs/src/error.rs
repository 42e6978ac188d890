//! The client's error type. Broker `Error` frames become [`Error::Server`], carrying the
//! stable [`ErrorCode`] so callers can match on it.

use rtc_proto::ErrorCode;

/// Everything that can go wrong in a client call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server URL could not be understood.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The underlying error.
        reason: String,
    },
    /// TLS could not be set up (no CA to trust, unreadable certificate, bad host name).
    #[error("TLS: {0}")]
    Tls(String),
    /// The broker refused the handshake or answered something unexpected.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The broker answered the request with an `Error` frame.
    #[error("broker error {}: {message}", code.name())]
    Server {
        /// The stable error code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// The connection is closed; the string says why.
    #[error("connection closed: {0}")]
    Closed(String),
    /// The broker did not answer within the request timeout.
    #[error("no answer from the broker within {0:?}")]
    Timeout(std::time::Duration),
    /// The outbox holds its maximum of unacknowledged publishes; wait for some
    /// acknowledgements (or raise `ConnectOptions::outbox_capacity`).
    #[error("the outbox is full ({0} publishes waiting for acknowledgement)")]
    OutboxFull(usize),
    /// The outbox journal file could not be read or written.
    #[error("outbox journal {0}")]
    Outbox(String),
    /// The request is larger than the broker's announced frame limit.
    #[error("request of {len} bytes exceeds the broker's frame limit of {max} bytes")]
    TooLarge {
        /// Encoded frame length.
        len: usize,
        /// The broker's `max_frame_size`.
        max: usize,
    },
}

impl Error {
    /// The broker's error code, if this error came from an `Error` frame.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn from_frame(e: &rtc_proto::v1::Error) -> Self {
        Error::Server {
            code: e.error_code(),
            message: e.message.clone(),
        }
    }
}
