//! The transports: how bytes become a session's frames and back, for each kind of
//! connection. None of them knows topics or storage.
//!
//! - [`tcp`]: plain TCP ([`tcp::Tcp`]) and TLS over TCP ([`tcp::Tls`]);
//! - [`quic`]: QUIC, one bidirectional stream per connection, plus datagrams;
//! - [`tls`]: certificates for TLS and QUIC.
//!
//! # The seam
//! A transport implements [`Listener`] and [`Incoming`] (the one accept path,
//! `crate::accept`: connection limit, handshake timeout, tracked tasks), and hands each
//! connection to a session as a [`Connection`]: a [`FrameSource`] of decoded frames and a
//! [`FrameSink`] for the frames the broker sends, in rtc's length-prefixed encoding. A
//! byte stream needs nothing new: [`ByteStreamSource`] and [`ByteStream`] carry the frames
//! as they are (TCP, TLS and QUIC all use them). A WebSocket transport would bring its own
//! source and sink (one frame per message; binary, or mapped to JSON) and reuse the rest.
//! An embedding program can add a listener of its own with
//! [`crate::BrokerBuilder::listener`].

pub mod quic;
pub mod tcp;
pub mod tls;

pub use crate::accept::{Incoming, Listener};
pub use crate::outbound::{ByteStream, DirectWrite, FrameSink};
pub use crate::refusal::Refusal;
pub use crate::router::{Flushes, Live, Share, Subscriber};
pub use crate::session::{codec_refusal, ByteStreamSource, Connection, Datagrams, FrameSource};
