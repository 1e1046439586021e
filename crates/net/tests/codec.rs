//! Property tests for the frame decoder: any input, any split into pieces,
//! any mutation of valid frames: no panic, and valid frames come back
//! exactly.

use pluresdb_net::codec::{CodecError, Frame, FrameDecoder, FrameKind, HEADER_LEN};
use pluresdb_net::NetworkMessage;
use proptest::prelude::*;

fn kind() -> impl Strategy<Value = FrameKind> {
    prop::sample::select(FrameKind::ALL.to_vec())
}

fn frames() -> impl Strategy<Value = Vec<Frame>> {
    prop::collection::vec((kind(), prop::collection::vec(any::<u8>(), 0..300)), 0..8)
        .prop_map(|frames| frames.into_iter().map(|(kind, payload)| Frame::new(kind, payload)).collect())
}

/// Feeds `stream` to a decoder in pieces cut at `cuts`, decoding after each
/// piece as a reader would; returns the frames and the first error.
fn decode_in_pieces(stream: &[u8], cuts: &[prop::sample::Index], max_payload: usize) -> (Vec<Frame>, Option<CodecError>) {
    let mut points: Vec<usize> = cuts.iter().map(|cut| cut.index(stream.len() + 1)).collect();
    points.push(0);
    points.push(stream.len());
    points.sort_unstable();
    let mut decoder = FrameDecoder::with_max_payload(max_payload);
    let mut out = Vec::new();
    for piece in points.windows(2) {
        decoder.extend(&stream[piece[0]..piece[1]]);
        loop {
            match decoder.decode() {
                Ok(Some(frame)) => out.push(frame),
                Ok(None) => break,
                Err(err) => return (out, Some(err)),
            }
        }
        // Nothing beyond one frame in progress (plus the last piece) is held.
        assert!(decoder.buffered() <= HEADER_LEN + max_payload + (piece[1] - piece[0]));
    }
    (out, decoder.finish().err())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn valid_frames_round_trip_across_any_split(frames in frames(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12)) {
        let stream: Vec<u8> = frames.iter().flat_map(|f| f.to_bytes().unwrap()).collect();
        let (decoded, err) = decode_in_pieces(&stream, &cuts, 1 << 20);
        prop_assert_eq!(err, None);
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8), limit in 0usize..4096) {
        let (frames, _) = decode_in_pieces(&bytes, &cuts, limit);
        for frame in frames {
            prop_assert!(frame.payload.len() <= limit);
            let _ = NetworkMessage::from_frame(&frame);
        }
    }

    #[test]
    fn mutated_valid_frames_never_panic_and_a_clean_prefix_survives(
        frames in frames(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        truncate in any::<prop::sample::Index>(),
    ) {
        let mut stream: Vec<u8> = frames.iter().flat_map(|f| f.to_bytes().unwrap()).collect();
        prop_assume!(!stream.is_empty());
        let first_flip = flips.iter().map(|(at, _)| at.index(stream.len())).min().unwrap_or(0);
        for (at, byte) in &flips {
            let i = at.index(stream.len());
            stream[i] = *byte;
        }
        let keep = truncate.index(stream.len() + 1).max(first_flip);
        stream.truncate(keep);
        let (decoded, _) = decode_in_pieces(&stream, &cuts, 1 << 20);
        // Every frame that ends before the first mutation comes back intact.
        let mut end = 0;
        for (i, frame) in frames.iter().enumerate() {
            end += HEADER_LEN + frame.payload.len();
            if end > first_flip {
                break;
            }
            prop_assert_eq!(decoded.get(i), Some(frame));
        }
        for frame in &decoded {
            let _ = NetworkMessage::from_frame(frame);
        }
    }

    #[test]
    fn messages_round_trip_through_frames(reason in ".{0,64}", code in any::<u16>(), ms in 0i64..4_000_000_000_000) {
        let timestamp = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).unwrap();
        for message in [
            NetworkMessage::Goodbye { reason: reason.clone() },
            NetworkMessage::Error { code: pluresdb_net::ErrorCode::from_code(code), message: reason.clone() },
            NetworkMessage::Heartbeat { peer_id: reason.clone(), timestamp },
        ] {
            let frame = message.to_frame();
            let mut decoder = FrameDecoder::new();
            decoder.extend(&frame.to_bytes().unwrap());
            let back = decoder.decode().unwrap().unwrap();
            prop_assert_eq!(NetworkMessage::from_frame(&back).unwrap(), message);
        }
    }
}

#[test]
fn an_oversized_length_is_refused_before_buffering() {
    let mut decoder = FrameDecoder::new();
    decoder.extend(&[1, FrameKind::Sync.code(), 0x01, 0x00, 0x00, 0x01]);
    assert_eq!(decoder.decode(), Err(CodecError::Oversize { length: (16 << 20) + 1, limit: 16 << 20 }));
    decoder.extend(&[0; 1024]);
    assert_eq!(decoder.buffered(), 0, "a failed decoder drops further input");
}
