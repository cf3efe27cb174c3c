//! Frames on a byte stream, without I/O: [`FrameDecoder`] cuts received
//! bytes into [`Frame`]s, [`WriteQueue`] lines frames up for sending.
//!
//! A frame is a `u32` little-endian length, then that many bytes of
//! flatbuffer (`shardmq_schema::protocol` has the layout). A [`Frame`]
//! always includes its 4-byte prefix: the flatbuffers verifier checks
//! alignment relative to the start of the slice it is given, and the
//! builder aligned the flatbuffer relative to the start of the frame.
//!
//! Nothing here knows a runtime: a glommio server, a tokio client and a
//! test with a `Vec<u8>` drive the same code.
//!
//! # Receiving without copying
//!
//! The caller reads from its socket straight into the decoder's buffer
//! ([`FrameDecoder::buffer_mut`], then [`FrameDecoder::advance`] by the
//! bytes read). Once a frame's prefix is in, the buffer grows to hold the
//! whole frame, so its body lands in one piece where it stays: the
//! [`Frame`] handed out is a [`Bytes`] view of that same memory, and a
//! record batch inside a Produce request can be shared from it
//! ([`Frame::share`]) all the way to the log. The price is that a frame
//! kept alive keeps its receive buffer allocated; the decoder then reads
//! into a fresh one.
//!
//! # Bounds
//!
//! A length prefix above the decoder's `frame_bytes_max` is refused as soon
//! as its 4 bytes are in, before any of the body is buffered, so a peer
//! makes the decoder hold at most `frame_bytes_max` bytes plus one read.
//! No input makes the decoder panic; a bad prefix is a [`FrameError`], and
//! the stream is unusable after it (the error repeats).

use std::collections::VecDeque;
use std::fmt;
use std::io::IoSlice;

use bytes::{Bytes, BytesMut};
use flatbuffers::FlatBufferBuilder;
use shardmq_schema::protocol::{FRAME_PREFIX_BYTES, MAX_FRAME_BYTES};

/// Free bytes [`FrameDecoder::buffer_mut`] callers typically ask for: the
/// size of one read from the socket.
pub const READ_BUFFER_BYTES_DEFAULT: usize = 64 << 10;

/// Frames shorter than this are copied together into one write by
/// [`WriteQueue::chunk`]; longer ones are written from where they are.
pub const WRITE_COALESCE_BYTES_DEFAULT: usize = 16 << 10;

/// Why bytes do not make a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces a frame longer than allowed. Reported
    /// as soon as the prefix arrives; nothing of the body is read.
    #[error("frame of {declared} bytes (prefix included) exceeds the limit of {max} bytes")]
    TooLarge {
        /// Length of the frame the prefix announces, prefix included.
        declared: usize,
        /// The limit, prefix included.
        max: usize,
    },
    /// The length prefix is 0: no flatbuffer follows it.
    #[error("frame length prefix is 0")]
    Empty,
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame: {buffered} of its {expected} bytes arrived")]
    Truncated {
        /// Bytes of the frame that arrived.
        buffered: usize,
        /// Bytes the frame needs, prefix included, or the
        /// [`FRAME_PREFIX_BYTES`] of the prefix when the prefix itself was
        /// cut.
        expected: usize,
    },
    /// The length prefix disagrees with the bytes given as one frame.
    #[error("frame length prefix says {declared} bytes follow it, but {actual} do")]
    LengthMismatch {
        /// Bytes after the prefix, as the prefix says.
        declared: usize,
        /// Bytes after the prefix, as given.
        actual: usize,
    },
}

/// The length of the frame, prefix included, that `prefix` announces,
/// checked against `frame_bytes_max`.
fn announced_len(
    prefix: [u8; FRAME_PREFIX_BYTES],
    frame_bytes_max: usize,
) -> Result<usize, FrameError> {
    // A u32 fits a usize on every target the project builds for; saturate
    // elsewhere, which the limit then refuses.
    let declared = usize::try_from(u32::from_le_bytes(prefix)).unwrap_or(usize::MAX);
    if declared == 0 {
        return Err(FrameError::Empty);
    }
    let len = declared.saturating_add(FRAME_PREFIX_BYTES);
    if len > frame_bytes_max {
        return Err(FrameError::TooLarge {
            declared: len,
            max: frame_bytes_max,
        });
    }
    Ok(len)
}

/// One whole frame: its length prefix and the flatbuffer after it.
///
/// The prefix always matches the length, the length is at most
/// [`MAX_FRAME_BYTES`] and the flatbuffer is not empty. Nothing is said of
/// the flatbuffer itself: [`crate::RequestFrame::verify`] and
/// [`crate::ResponseFrame::verify`] check it.
///
/// Cloning is cheap: the bytes are shared, never copied.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
}

impl Frame {
    /// Checks that `bytes` are exactly one frame (prefix matching the
    /// length, not empty, at most [`MAX_FRAME_BYTES`]) and wraps them
    /// without copying.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, FrameError> {
        let Some(&[a, b, c, d]) = bytes.get(..FRAME_PREFIX_BYTES) else {
            return Err(FrameError::Truncated {
                buffered: bytes.len(),
                expected: FRAME_PREFIX_BYTES,
            });
        };
        let actual = bytes.len() - FRAME_PREFIX_BYTES;
        let declared = usize::try_from(u32::from_le_bytes([a, b, c, d])).unwrap_or(usize::MAX);
        if declared != actual {
            return Err(FrameError::LengthMismatch { declared, actual });
        }
        if declared == 0 {
            return Err(FrameError::Empty);
        }
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge {
                declared: bytes.len(),
                max: MAX_FRAME_BYTES,
            });
        }
        Ok(Self { bytes })
    }

    /// Copies `bytes` into a new frame, checked as [`Frame::from_bytes`].
    pub fn copy_from_slice(bytes: &[u8]) -> Result<Self, FrameError> {
        Self::from_bytes(Bytes::copy_from_slice(bytes))
    }

    /// Takes the frame a builder finished with `finish_size_prefixed` (as
    /// `shardmq_schema::protocol::finish_request_frame` and
    /// `finish_response_frame` do), without copying it: the builder's buffer
    /// becomes the frame's.
    ///
    /// A builder that was not finished size-prefixed almost always fails
    /// the check of the prefix against the length.
    pub fn from_builder(builder: FlatBufferBuilder<'_>) -> Result<Self, FrameError> {
        let (buffer, head) = builder.collapse();
        if head > buffer.len() {
            return Err(FrameError::Truncated {
                buffered: 0,
                expected: FRAME_PREFIX_BYTES,
            });
        }
        let mut bytes = Bytes::from(buffer);
        Self::from_bytes(bytes.split_off(head))
    }

    /// The whole frame, prefix included: what the verifier wants.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The whole frame, prefix included, as shared bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The frame's bytes, prefix included.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The flatbuffer after the prefix.
    pub fn body(&self) -> &[u8] {
        self.bytes.get(FRAME_PREFIX_BYTES..).unwrap_or_default()
    }

    /// Length of the frame, prefix included.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a frame has a prefix and a non-empty body.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Shares the part of this frame that `part` is, without copying it:
    /// `part` must be a slice of [`Frame::as_bytes`] (for example the
    /// records of a verified Produce request). `None` if it is not.
    pub fn share(&self, part: &[u8]) -> Option<Bytes> {
        share(&self.bytes, part)
    }

    /// A frame the decoder cut out; its length was checked by the decoder.
    fn decoded(bytes: Bytes) -> Self {
        Self { bytes }
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// `part` of `whole` as shared bytes, if `part` lies within `whole`.
pub(crate) fn share(whole: &Bytes, part: &[u8]) -> Option<Bytes> {
    // Only addresses are compared; no pointer is dereferenced.
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    if end > whole.len() {
        return None;
    }
    Some(whole.slice(start..end))
}

/// Checks that `frame` is exactly one frame, as [`Frame::from_bytes`]
/// does, and appends it to `out`.
pub fn encode_frame(frame: &[u8], out: &mut BytesMut) -> Result<(), FrameError> {
    let Some(&[a, b, c, d]) = frame.get(..FRAME_PREFIX_BYTES) else {
        return Err(FrameError::Truncated {
            buffered: frame.len(),
            expected: FRAME_PREFIX_BYTES,
        });
    };
    let declared = usize::try_from(u32::from_le_bytes([a, b, c, d])).unwrap_or(usize::MAX);
    let actual = frame.len() - FRAME_PREFIX_BYTES;
    if declared != actual {
        return Err(FrameError::LengthMismatch { declared, actual });
    }
    if declared == 0 {
        return Err(FrameError::Empty);
    }
    if frame.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            declared: frame.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    out.extend_from_slice(frame);
    Ok(())
}

/// Cuts a received byte stream into frames.
///
/// Feed it with [`buffer_mut`](Self::buffer_mut) and
/// [`advance`](Self::advance) (the read goes straight into the decoder's
/// buffer), or with [`extend`](Self::extend) (one copy); take frames with
/// [`decode`](Self::decode) until it returns `Ok(None)`, then feed more. At
/// the end of the stream, [`decode_eof`](Self::decode_eof) tells a clean
/// end from a cut frame.
///
/// ```
/// # use shardmq_net::FrameDecoder;
/// let mut decoder = FrameDecoder::with_frame_bytes_max(1024);
/// // A socket read would fill the slice; here, two frames arrive at once.
/// let wire = [2, 0, 0, 0, 0xaa, 0xbb, 1, 0, 0, 0, 0xcc];
/// let buffer = decoder.buffer_mut(wire.len());
/// buffer[..wire.len()].copy_from_slice(&wire);
/// decoder.advance(wire.len());
/// assert_eq!(decoder.decode().unwrap().unwrap().as_bytes(), &wire[..6]);
/// assert_eq!(decoder.decode().unwrap().unwrap().as_bytes(), &wire[6..]);
/// assert!(decoder.decode().unwrap().is_none());
/// assert!(decoder.decode_eof().unwrap().is_none());
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    /// `buf[..filled]` is received and not handed out; `buf[filled..]` is
    /// initialised free space for the next read.
    buf: BytesMut,
    filled: usize,
    frame_bytes_max: usize,
    /// Set by the first bad prefix; the stream cannot be resynchronised.
    error: Option<FrameError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder accepting frames up to [`MAX_FRAME_BYTES`].
    pub fn new() -> Self {
        Self::with_frame_bytes_max(MAX_FRAME_BYTES)
    }

    /// A decoder accepting frames up to `frame_bytes_max` bytes, prefix
    /// included. A limit above [`MAX_FRAME_BYTES`] is lowered to it, since
    /// no larger frame verifies.
    pub fn with_frame_bytes_max(frame_bytes_max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            filled: 0,
            frame_bytes_max: frame_bytes_max.min(MAX_FRAME_BYTES),
            error: None,
        }
    }

    /// The largest frame accepted, prefix included.
    pub fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }

    /// Bytes received and not yet handed out as frames.
    pub fn buffered(&self) -> usize {
        self.filled
    }

    /// Free space to read into: at least `min_free` bytes (capped at the
    /// frame limit), and at least the rest of the frame being received, so
    /// a frame's bytes land in one piece. Report the bytes written at its
    /// start with [`advance`](Self::advance).
    ///
    /// The slice is never empty, so a read of 0 bytes into it means the
    /// end of the stream. Its contents are unspecified.
    pub fn buffer_mut(&mut self, min_free: usize) -> &mut [u8] {
        let mut want = min_free.clamp(1, self.frame_bytes_max.max(FRAME_PREFIX_BYTES));
        if let Ok(Some(len)) = self.pending_len() {
            want = want.max(len.saturating_sub(self.filled));
        }
        let free = self.buf.len() - self.filled;
        if free < want {
            let len = self.filled + want;
            if self.buf.capacity() < len {
                // Growing moves the buffer: carry over only the received
                // bytes, not the stale free space.
                self.buf.truncate(self.filled);
            }
            self.buf.resize(len, 0);
        }
        &mut self.buf[self.filled..]
    }

    /// Marks the first `n` bytes of the slice [`buffer_mut`](Self::buffer_mut)
    /// returned as received. More than that slice's length counts as its
    /// length. After an error, received bytes are dropped: the stream is
    /// already unusable, and they would only take memory.
    pub fn advance(&mut self, n: usize) {
        if self.error.is_some() {
            return;
        }
        let free = self.buf.len() - self.filled;
        self.filled += n.min(free);
    }

    /// Copies `bytes` in, as if read from the stream.
    pub fn extend(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.error.is_none() {
            let buffer = self.buffer_mut(bytes.len());
            let n = buffer.len().min(bytes.len());
            buffer[..n].copy_from_slice(&bytes[..n]);
            self.advance(n);
            bytes = &bytes[n..];
        }
    }

    /// The next whole frame, `None` if more bytes are needed, or the error
    /// of a bad length prefix, reported as soon as the prefix is in. After
    /// an error every call returns it again.
    pub fn decode(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(len) = self.pending_len()? else {
            return Ok(None);
        };
        if self.filled < len {
            return Ok(None);
        }
        let frame = self.buf.split_to(len).freeze();
        self.filled -= len;
        Ok(Some(Frame::decoded(frame)))
    }

    /// Like [`decode`](Self::decode), once the stream has ended: a frame
    /// still buffered, `None` at a clean end, [`FrameError::Truncated`] if
    /// the stream stopped inside a frame.
    pub fn decode_eof(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(frame) = self.decode()? {
            return Ok(Some(frame));
        }
        if self.filled == 0 {
            return Ok(None);
        }
        let expected = self
            .pending_len()
            .ok()
            .flatten()
            .unwrap_or(FRAME_PREFIX_BYTES);
        Err(FrameError::Truncated {
            buffered: self.filled,
            expected,
        })
    }

    /// Length of the frame at the front, once its prefix is in; checks the
    /// prefix, and remembers a bad one.
    fn pending_len(&mut self) -> Result<Option<usize>, FrameError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        if self.filled < FRAME_PREFIX_BYTES {
            return Ok(None);
        }
        let Some(&[a, b, c, d]) = self.buf.get(..FRAME_PREFIX_BYTES) else {
            return Ok(None);
        };
        match announced_len([a, b, c, d], self.frame_bytes_max) {
            Ok(len) => Ok(Some(len)),
            Err(error) => {
                self.error = Some(error.clone());
                Err(error)
            }
        }
    }
}

/// Frames waiting to be written to a stream, and how much of them is.
///
/// [`push`](Self::push) frames in; write [`chunk`](Self::chunk) (or the
/// [`io_slices`](Self::io_slices), for a stream that writes vectors), then
/// [`advance`](Self::advance) by what the stream took, which says how many
/// frames are now fully written. `chunk` copies runs of small frames into
/// one buffer so a burst of small responses costs one write; a frame of
/// [`WRITE_COALESCE_BYTES_DEFAULT`] bytes or more (by default) is written
/// from its own memory.
#[derive(Debug)]
pub struct WriteQueue {
    /// Frames not yet written; the front one is written up to `head_written`.
    frames: VecDeque<Bytes>,
    head_written: usize,
    /// Copies of small frames, written before `frames`, up to `staging_written`.
    staging: BytesMut,
    staging_written: usize,
    /// Frames whose copies are in `staging`.
    staging_frames: usize,
    coalesce_bytes: usize,
    /// Bytes not yet written, in `staging` and `frames`.
    queued_bytes: usize,
}

impl Default for WriteQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl WriteQueue {
    /// An empty queue coalescing frames under
    /// [`WRITE_COALESCE_BYTES_DEFAULT`] bytes.
    pub fn new() -> Self {
        Self::with_coalesce_bytes(WRITE_COALESCE_BYTES_DEFAULT)
    }

    /// An empty queue coalescing frames under `coalesce_bytes` bytes into
    /// writes of at most that many; 0 never copies.
    pub fn with_coalesce_bytes(coalesce_bytes: usize) -> Self {
        Self {
            frames: VecDeque::new(),
            head_written: 0,
            staging: BytesMut::new(),
            staging_written: 0,
            staging_frames: 0,
            coalesce_bytes,
            queued_bytes: 0,
        }
    }

    /// Queues `frame` after the others.
    pub fn push(&mut self, frame: Frame) {
        self.queued_bytes += frame.len();
        self.frames.push_back(frame.into_bytes());
    }

    /// Frames not yet fully written.
    pub fn len(&self) -> usize {
        self.staging_frames + self.frames.len()
    }

    /// True when everything queued is written.
    pub fn is_empty(&self) -> bool {
        self.queued_bytes == 0
    }

    /// Bytes not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// The next bytes to write, in one piece; empty when nothing is queued.
    /// Calling it again before [`advance`](Self::advance) returns the same
    /// bytes.
    pub fn chunk(&mut self) -> &[u8] {
        if self.staging_written < self.staging.len() {
            return &self.staging[self.staging_written..];
        }
        // A run of at least two small frames is worth one copy.
        let mut run = 0;
        let mut run_bytes = 0;
        if self.head_written == 0 {
            for frame in &self.frames {
                if frame.len() >= self.coalesce_bytes
                    || run_bytes + frame.len() > self.coalesce_bytes
                {
                    break;
                }
                run += 1;
                run_bytes += frame.len();
            }
        }
        if run >= 2 {
            self.staging.clear();
            self.staging.reserve(run_bytes);
            for frame in self.frames.drain(..run) {
                self.staging.extend_from_slice(&frame);
            }
            self.staging_written = 0;
            self.staging_frames = run;
            return &self.staging;
        }
        match self.frames.front() {
            Some(frame) => frame.get(self.head_written..).unwrap_or_default(),
            None => &[],
        }
    }

    /// Fills `dst` with the bytes to write, in order, without copying;
    /// returns how many slices it filled. Runs of small frames already
    /// copied by [`chunk`](Self::chunk) come first.
    pub fn io_slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let staged = self.staging.get(self.staging_written..).unwrap_or_default();
        let pieces = std::iter::once(staged)
            .chain(self.frames.iter().enumerate().map(|(i, frame)| {
                let from = if i == 0 { self.head_written } else { 0 };
                frame.get(from..).unwrap_or_default()
            }))
            .filter(|piece| !piece.is_empty());
        let mut filled = 0;
        for (slot, piece) in dst.iter_mut().zip(pieces) {
            *slot = IoSlice::new(piece);
            filled += 1;
        }
        filled
    }

    /// Marks the next `n` bytes as written (more than are queued count as
    /// all of them); returns how many frames that completed.
    pub fn advance(&mut self, n: usize) -> usize {
        let mut n = n.min(self.queued_bytes);
        self.queued_bytes -= n;
        let mut completed = 0;
        let staged = self.staging.len() - self.staging_written;
        if staged > 0 {
            let k = n.min(staged);
            self.staging_written += k;
            n -= k;
            if self.staging_written == self.staging.len() {
                completed += self.staging_frames;
                self.staging.clear();
                self.staging_written = 0;
                self.staging_frames = 0;
            }
        }
        while n > 0 {
            let Some(front) = self.frames.front() else {
                break;
            };
            let left = front.len() - self.head_written;
            if n >= left {
                self.frames.pop_front();
                self.head_written = 0;
                n -= left;
                completed += 1;
            } else {
                self.head_written += n;
                n = 0;
            }
        }
        completed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn too_large_is_reported_as_soon_as_the_prefix_arrives() {
        let mut decoder = FrameDecoder::with_frame_bytes_max(100);
        decoder.extend(&[97, 0]);
        assert_eq!(decoder.decode(), Ok(None));
        decoder.extend(&[0, 0]);
        let error = FrameError::TooLarge {
            declared: 101,
            max: 100,
        };
        assert_eq!(decoder.decode(), Err(error.clone()));
        // Sticky, and later bytes are dropped rather than buffered.
        decoder.extend(&[0; 1000]);
        assert_eq!(decoder.buffered(), 4);
        assert_eq!(decoder.decode(), Err(error.clone()));
        assert_eq!(decoder.decode_eof(), Err(error));
    }

    #[test]
    fn largest_allowed_frame_is_accepted() {
        let mut decoder = FrameDecoder::with_frame_bytes_max(100);
        decoder.extend(&frame(&[7; 96]));
        assert_eq!(decoder.decode().unwrap().unwrap().len(), 100);
    }

    #[test]
    fn zero_length_prefix_is_empty() {
        let mut decoder = FrameDecoder::new();
        decoder.extend(&[0, 0, 0, 0, 1, 2]);
        assert_eq!(decoder.decode(), Err(FrameError::Empty));
    }

    #[test]
    fn limit_above_the_protocol_bound_is_lowered() {
        assert_eq!(
            FrameDecoder::with_frame_bytes_max(usize::MAX).frame_bytes_max(),
            MAX_FRAME_BYTES
        );
        let mut decoder = FrameDecoder::new();
        decoder.extend(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decoder.decode(),
            Err(FrameError::TooLarge { max, .. }) if max == MAX_FRAME_BYTES
        ));
    }

    #[test]
    fn eof_tells_clean_end_from_cut_frame() {
        let mut decoder = FrameDecoder::new();
        assert_eq!(decoder.decode_eof(), Ok(None));
        decoder.extend(&[3, 0]);
        assert_eq!(
            decoder.decode_eof(),
            Err(FrameError::Truncated {
                buffered: 2,
                expected: 4
            })
        );
        decoder.extend(&[0, 0, 1]);
        assert_eq!(
            decoder.decode_eof(),
            Err(FrameError::Truncated {
                buffered: 5,
                expected: 7
            })
        );
        decoder.extend(&[2, 3, 5, 0]);
        assert_eq!(decoder.decode_eof().unwrap().unwrap().body(), &[1, 2, 3]);
        assert_eq!(
            decoder.decode_eof(),
            Err(FrameError::Truncated {
                buffered: 2,
                expected: 4
            })
        );
    }

    #[test]
    fn frame_body_stays_where_it_was_read() {
        let mut decoder = FrameDecoder::new();
        let wire = frame(&[9; 200_000]);
        // The first read brings the prefix and a little of the body.
        let first = 1000;
        let buffer = decoder.buffer_mut(first);
        buffer[..first].copy_from_slice(&wire[..first]);
        decoder.advance(first);
        assert_eq!(decoder.decode(), Ok(None));
        // The decoder now offers room for the whole rest of the frame, in
        // the memory the frame will be handed out from.
        let buffer = decoder.buffer_mut(16);
        assert!(buffer.len() >= wire.len() - first);
        let rest_at = buffer.as_ptr() as usize;
        buffer[..wire.len() - first].copy_from_slice(&wire[first..]);
        decoder.advance(wire.len() - first);
        let decoded = decoder.decode().unwrap().unwrap();
        assert_eq!(decoded.as_bytes(), &wire[..]);
        assert_eq!(decoded.as_bytes()[first..].as_ptr() as usize, rest_at);
    }

    #[test]
    fn small_frames_share_the_read_buffer() {
        let mut decoder = FrameDecoder::new();
        let mut wire = frame(b"first");
        wire.extend_from_slice(&frame(b"second"));
        let buffer = decoder.buffer_mut(wire.len());
        let read_at = buffer.as_ptr() as usize;
        buffer[..wire.len()].copy_from_slice(&wire);
        decoder.advance(wire.len());
        let first = decoder.decode().unwrap().unwrap();
        let second = decoder.decode().unwrap().unwrap();
        assert_eq!(first.as_bytes().as_ptr() as usize, read_at);
        assert_eq!(second.as_bytes().as_ptr() as usize, read_at + 9);
        let shared = second.share(&second.body()[1..4]).unwrap();
        assert_eq!(&shared[..], b"eco");
        assert_eq!(shared.as_ptr() as usize, read_at + 9 + 4 + 1);
        assert!(second.share(b"eco").is_none());
        assert!(first.share(second.body()).is_none());
    }

    #[test]
    fn buffer_requests_are_capped() {
        let mut decoder = FrameDecoder::with_frame_bytes_max(64);
        assert_eq!(decoder.buffer_mut(usize::MAX).len(), 64);
        assert!(!FrameDecoder::with_frame_bytes_max(0)
            .buffer_mut(0)
            .is_empty());
        // Advancing past the slice counts as the slice.
        let len = decoder.buffer_mut(8).len();
        decoder.advance(usize::MAX);
        assert_eq!(decoder.buffered(), len);
    }

    #[test]
    fn frame_checks_its_prefix() {
        assert!(Frame::copy_from_slice(&frame(b"ok")).is_ok());
        assert_eq!(
            Frame::copy_from_slice(&[3, 0, 0, 0, 1]),
            Err(FrameError::LengthMismatch {
                declared: 3,
                actual: 1
            })
        );
        assert_eq!(
            Frame::copy_from_slice(&[0, 0, 0, 0]),
            Err(FrameError::Empty)
        );
        assert_eq!(
            Frame::copy_from_slice(&[1, 0]),
            Err(FrameError::Truncated {
                buffered: 2,
                expected: 4
            })
        );
        let mut out = BytesMut::new();
        encode_frame(&frame(b"abc"), &mut out).unwrap();
        assert!(encode_frame(&[9, 0, 0, 0], &mut out).is_err());
        assert_eq!(&out[..], &frame(b"abc")[..]);
    }

    #[test]
    fn builder_frame_is_taken_without_copy() {
        let mut builder = FlatBufferBuilder::new();
        let text = builder.create_string("hello");
        builder.finish_size_prefixed(text, None);
        let expected = builder.finished_data().to_vec();
        let frame = Frame::from_builder(builder).unwrap();
        assert_eq!(frame.as_bytes(), &expected[..]);

        let mut unfinished = FlatBufferBuilder::new();
        unfinished.create_string("hello");
        assert!(Frame::from_builder(unfinished).is_err());
    }

    fn queued(frames: &[&[u8]], coalesce: usize) -> WriteQueue {
        let mut queue = WriteQueue::with_coalesce_bytes(coalesce);
        for body in frames {
            queue.push(Frame::copy_from_slice(&frame(body)).unwrap());
        }
        queue
    }

    /// Writes everything, `step` bytes at most per write, and returns the
    /// bytes written and the frames completed by each write.
    fn drain(queue: &mut WriteQueue, step: usize) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut completions = Vec::new();
        while !queue.is_empty() {
            let chunk = queue.chunk();
            let n = chunk.len().min(step);
            out.extend_from_slice(&chunk[..n]);
            completions.push(queue.advance(n));
        }
        (out, completions)
    }

    #[test]
    fn small_frames_are_coalesced_into_one_write() {
        let mut queue = queued(&[b"a", b"bb", b"ccc"], 64);
        assert_eq!(queue.len(), 3);
        assert_eq!(queue.chunk().len(), 5 + 6 + 7);
        assert_eq!(queue.chunk().len(), 5 + 6 + 7, "chunk is stable");
        let (out, completions) = drain(&mut queue, usize::MAX);
        assert_eq!(out, [frame(b"a"), frame(b"bb"), frame(b"ccc")].concat());
        assert_eq!(completions, vec![3]);
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn large_frames_are_written_in_place_and_partial_writes_resume() {
        let big = vec![5; 100];
        let mut queue = queued(&[b"a", &big, b"b", b"c"], 32);
        let big_frame = queue.frames[1].clone();
        // A lone small frame before a large one is not worth a copy.
        assert_eq!(queue.chunk(), &frame(b"a")[..]);
        assert_eq!(queue.advance(5), 1);
        assert_eq!(queue.chunk().as_ptr(), big_frame.as_ptr());
        let (out, completions) = drain(&mut queue, 7);
        assert_eq!(out, [frame(&big), frame(b"b"), frame(b"c")].concat());
        assert_eq!(completions.iter().sum::<usize>(), 3);
        assert!(queue.chunk().is_empty());
    }

    #[test]
    fn io_slices_cover_everything_in_order() {
        let mut queue = queued(&[b"a", b"b", &[1; 50], b"c"], 16);
        queue.chunk();
        queue.advance(3);
        let mut slices = [IoSlice::new(&[]); 8];
        let filled = queue.io_slices(&mut slices);
        let joined: Vec<u8> = slices[..filled].iter().flat_map(|s| s.to_vec()).collect();
        let all = [frame(b"a"), frame(b"b"), frame(&[1; 50]), frame(b"c")].concat();
        assert_eq!(joined, &all[3..]);
        assert_eq!(queue.advance(usize::MAX), 4);
        assert!(queue.is_empty());
    }
}
