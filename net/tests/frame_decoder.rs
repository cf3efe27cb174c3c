//! Property tests of the frame decoder: however a byte stream is cut into
//! reads, and whichever way the reads are fed in, the decoder yields what
//! one contiguous feed yields; valid frames come out intact, and no input
//! makes it panic.

use proptest::collection::vec;
use proptest::prelude::*;
use shardmq_net::{Frame, FrameDecoder, FrameError, WriteQueue};

/// Everything a decoder makes of a stream: its frames, then how the stream
/// ended (`Ok` at a clean end).
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Vec<u8>>,
    end: Result<(), FrameError>,
}

/// Takes every frame the decoder has; `Err` once it reports an error.
fn take_frames(decoder: &mut FrameDecoder, frames: &mut Vec<Vec<u8>>) -> Result<(), FrameError> {
    while let Some(frame) = decoder.decode()? {
        frames.push(frame.as_bytes().to_vec());
    }
    Ok(())
}

fn finish(decoder: &mut FrameDecoder, mut frames: Vec<Vec<u8>>) -> Outcome {
    let end = loop {
        match decoder.decode_eof() {
            Ok(Some(frame)) => frames.push(frame.as_bytes().to_vec()),
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    Outcome { frames, end }
}

fn decode_contiguous(stream: &[u8], frame_bytes_max: usize) -> Outcome {
    let mut decoder = FrameDecoder::with_frame_bytes_max(frame_bytes_max);
    decoder.extend(stream);
    let mut frames = Vec::new();
    if let Err(error) = take_frames(&mut decoder, &mut frames) {
        return Outcome {
            frames,
            end: Err(error),
        };
    }
    finish(&mut decoder, frames)
}

/// Feeds `stream` cut at `cuts`; each piece goes in by `extend`, or, as a
/// socket read would, into `buffer_mut` (asking for `min_free` bytes, and
/// filling as much of the slice as the piece has, over several reads if
/// the slice is short).
fn decode_chopped(
    stream: &[u8],
    cuts: &[usize],
    via_buffer: &[bool],
    min_free: usize,
    frame_bytes_max: usize,
) -> Outcome {
    let mut cuts: Vec<usize> = cuts.iter().map(|&cut| cut % (stream.len() + 1)).collect();
    cuts.push(stream.len());
    cuts.sort_unstable();
    let mut decoder = FrameDecoder::with_frame_bytes_max(frame_bytes_max);
    let mut frames = Vec::new();
    let mut from = 0;
    for (i, &to) in cuts.iter().enumerate() {
        let mut piece = &stream[from..to];
        from = to;
        if via_buffer.get(i).copied().unwrap_or(false) {
            while !piece.is_empty() {
                let buffer = decoder.buffer_mut(min_free);
                assert!(
                    !buffer.is_empty(),
                    "buffer_mut never returns an empty slice"
                );
                let n = buffer.len().min(piece.len());
                buffer[..n].copy_from_slice(&piece[..n]);
                decoder.advance(n);
                piece = &piece[n..];
            }
        } else {
            decoder.extend(piece);
        }
        if let Err(error) = take_frames(&mut decoder, &mut frames) {
            return Outcome {
                frames,
                end: Err(error),
            };
        }
    }
    finish(&mut decoder, frames)
}

fn encode(bodies: &[Vec<u8>]) -> Vec<u8> {
    let mut stream = Vec::new();
    for body in bodies {
        stream.extend_from_slice(&(body.len() as u32).to_le_bytes());
        stream.extend_from_slice(body);
    }
    stream
}

fn bodies() -> impl Strategy<Value = Vec<Vec<u8>>> {
    vec(vec(any::<u8>(), 1..300), 0..24)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn chopped_valid_stream_decodes_to_its_frames(
        bodies in bodies(),
        cuts in vec(any::<usize>(), 0..40),
        via_buffer in vec(any::<bool>(), 0..41),
        min_free in 0usize..600,
    ) {
        let stream = encode(&bodies);
        let expected = Outcome {
            frames: bodies.iter().map(|body| encode(std::slice::from_ref(body))).collect(),
            end: Ok(()),
        };
        prop_assert_eq!(&decode_contiguous(&stream, 1024), &expected);
        prop_assert_eq!(&decode_chopped(&stream, &cuts, &via_buffer, min_free, 1024), &expected);
    }

    #[test]
    fn chopped_garbage_decodes_as_contiguous_and_never_panics(
        stream in vec(any::<u8>(), 0..2000),
        cuts in vec(any::<usize>(), 0..40),
        via_buffer in vec(any::<bool>(), 0..41),
        min_free in 0usize..600,
        frame_bytes_max in 0usize..400,
    ) {
        let contiguous = decode_contiguous(&stream, frame_bytes_max);
        let chopped = decode_chopped(&stream, &cuts, &via_buffer, min_free, frame_bytes_max);
        prop_assert_eq!(&chopped, &contiguous);
        for frame in &contiguous.frames {
            prop_assert!(frame.len() <= frame_bytes_max);
            prop_assert!(Frame::copy_from_slice(frame).is_ok());
        }
    }

    #[test]
    fn mostly_valid_stream_with_damage_decodes_as_contiguous(
        bodies in bodies(),
        damage in vec((any::<usize>(), any::<u8>()), 0..4),
        cuts in vec(any::<usize>(), 0..40),
        via_buffer in vec(any::<bool>(), 0..41),
        frame_bytes_max in 0usize..400,
    ) {
        // Small length prefixes, so frames stay in reach of the limit and
        // the damaged byte may hit a prefix, a body or nothing.
        let mut stream = encode(&bodies);
        for (at, byte) in damage {
            if !stream.is_empty() {
                let at = at % stream.len();
                stream[at] = byte;
            }
        }
        let contiguous = decode_contiguous(&stream, frame_bytes_max);
        prop_assert_eq!(
            decode_chopped(&stream, &cuts, &via_buffer, 64, frame_bytes_max),
            contiguous
        );
    }

    #[test]
    fn write_queue_writes_every_frame_once_in_order(
        bodies in vec(vec(any::<u8>(), 1..300), 1..24),
        steps in vec(1usize..700, 1..64),
        coalesce in 0usize..1000,
    ) {
        let mut queue = WriteQueue::with_coalesce_bytes(coalesce);
        for body in &bodies {
            queue.push(Frame::copy_from_slice(&encode(std::slice::from_ref(body))).unwrap());
        }
        let mut written = Vec::new();
        let mut completed = 0;
        let mut step = steps.iter().cycle();
        while !queue.is_empty() {
            let chunk = queue.chunk();
            prop_assert!(!chunk.is_empty());
            let n = chunk.len().min(*step.next().unwrap());
            written.extend_from_slice(&chunk[..n]);
            completed += queue.advance(n);
        }
        prop_assert_eq!(written, encode(&bodies));
        prop_assert_eq!(completed, bodies.len());
        prop_assert_eq!(queue.len(), 0);
    }
}
