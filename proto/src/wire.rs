//! The primitives every encoder and decoder of the frame format shares: the length
//! prefix, the frame-size check, the error type, and [`write_exactly`], which writes a
//! frame of known size into a buffer's spare capacity. [`crate::codec`] (the
//! tokio-util codec, `Deliver` fan-out), [`crate::publish`] (the `Publish` encoder) and
//! [`crate::hot`] (the hand-written decoders) all build on this module and on nothing of
//! each other's, so none of them imports another.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use prost::encoding::encoded_len_varint;

/// Size of the length prefix in bytes.
pub const LEN_PREFIX: usize = 4;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The length prefix (or an outgoing frame) is above the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The length that was announced or would be written.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The bytes are not a valid `Frame`.
    #[error("undecodable frame: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A frame taken for a `Deliver` (by its first bytes) is not one with a message.
    #[error("a Deliver frame without a message")]
    NotADelivery,
    /// The underlying transport failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// `len` as a frame's length prefix, unless it is above `max_frame_size`.
pub(crate) fn check_frame_len(len: usize, max_frame_size: usize) -> Result<(), CodecError> {
    if len > max_frame_size {
        return Err(CodecError::FrameTooLarge {
            len,
            max: max_frame_size,
        });
    }
    Ok(())
}

/// Appends exactly `len` bytes to `dst`, written by `encode` into a plain slice of its
/// spare capacity.
///
/// prost writes a varint a byte at a time; into a `BytesMut`, every byte is an
/// `extend_from_slice` with its own capacity check and `memmove` call, a large share of
/// the work when streaming small messages. Into a slice, each is a
/// store; and writing into the uninitialized spare capacity spares zeroing the frame
/// (payload included) first. `len` must be what `encode` writes, as computed from the
/// same value; otherwise this panics and appends nothing.
pub(crate) fn write_exactly(
    dst: &mut BytesMut,
    len: usize,
    encode: impl FnOnce(&mut &mut [MaybeUninit<u8>]),
) {
    dst.reserve(len);
    let start = dst.len();
    let mut out = &mut dst.spare_capacity_mut()[..len];
    encode(&mut out);
    assert!(
        out.is_empty(),
        "encoded length differs from the computed one"
    );
    // SAFETY: `reserve` made room for `len` bytes after `start`, and `encode` has
    // initialized all of them: a `BufMut` over a `MaybeUninit` slice only advances over
    // bytes written (or that an unsafe `advance_mut` caller promises are), and nothing
    // of the slice is left.
    unsafe { dst.set_len(start + len) };
}

/// Size of the key (tag and wire type) of field number `field`.
pub(crate) fn key_len(field: u32) -> usize {
    encoded_len_varint(u64::from(field << 3))
}
