//! rtc's wire protocol: the generated `rtc.v1` types, the length-prefixed frame codec and
//! the rules for topic names and subscription patterns.
//!
//! # Layout
//! - [`v1`]: the types generated from `rtc.proto` (one [`v1::Frame`] envelope per frame).
//! - [`codec`]: [`codec::FrameCodec`], a tokio-util `Decoder`/`Encoder` for
//!   `u32 big-endian length ++ Frame`, plus [`codec::encode_deliver`] which writes a
//!   `Deliver` around a message encoded once and shared by all its subscribers.
//! - [`publish`]: [`publish::PublishRef`], encoding a `Publish` frame from borrowed fields.
//! - [`hot`]: hand-written decoders for `Publish` and `Deliver` frames (the codec's fast path).
//! - `wire`: what those three share: the length prefix, the size check, [`CodecError`].
//! - [`topic`]: validation of topic names and patterns and wildcard matching.
//! - [`headers`]: the rules for message headers.
//! - [`position`]: the text form of replay start positions (`first`, `seq:N`, `time:-5m`).
//! - [`frames`]: small constructors for the frames every peer builds.
//! - [`silence`]: noticing a peer that has sent nothing for three heartbeat intervals.
//! - `tcp` (feature `tcp`): the TCP write half shared by a writer task and direct
//!   writers, in the broker and the client alike.
//!
//! Apart from `tcp`, this crate does no networking; it depends on no other rtc crate.

pub mod codec;
pub mod frames;
pub mod headers;
pub mod hot;
#[cfg(feature = "json")]
pub mod json;
pub mod position;
pub mod publish;
pub mod silence;
#[cfg(feature = "tcp")]
pub mod tcp;
pub mod topic;
mod wire;

/// Types generated from `proto/rtc.proto` (package `rtc.v1`).
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/rtc.v1.rs"));
}

pub use codec::{CodecError, FrameCodec};
pub use v1::{frame::Op, ErrorCode, Frame};

/// The protocol version this crate speaks; sent in `Hello` and `Welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default cap on a frame's length prefix (1 MiB), announced in `Welcome`.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 1024 * 1024;
