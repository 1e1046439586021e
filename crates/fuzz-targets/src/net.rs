//! The frame codec (`FrameDecoder`, fed a stream in arbitrary pieces) and
//! the payloads of every frame kind (`NetworkMessage::from_frame`: hello,
//! heartbeat, sync, goodbye, error, peers).

use crate::alloc::{within_bound, within_serde_bound};
use crate::mutate::Mutator;
use pluresdb_net::message::{encode_hello_with, encode_hello_with_nonce, hello_nonce, ErrorCode, ExchangedPeer, Hello, PROTOCOL_VERSION};
use pluresdb_net::{usable_address, CodecError, Frame, FrameDecoder, FrameKind, NetworkMessage};
use pluresdb_sync::SyncMessage;

/// What a stream decodes to: its frames, then how it ended.
#[derive(Debug, PartialEq)]
struct Decoded {
    frames: Vec<Frame>,
    end: Result<(), CodecError>,
}

/// Feeds `stream` to a decoder in pieces of the sizes `pieces` yields,
/// taking frames after each piece as the QUIC reader does.
fn decode_stream(stream: &[u8], max_payload: usize, mut piece: impl FnMut() -> usize) -> Decoded {
    let mut decoder = FrameDecoder::with_max_payload(max_payload);
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        match decoder.decode() {
            Ok(Some(frame)) => {
                frames.push(frame);
                continue;
            }
            Ok(None) => {}
            Err(err) => return Decoded { frames, end: Err(err) },
        }
        if at == stream.len() {
            return Decoded { frames, end: decoder.finish() };
        }
        let end = (at + piece().max(1)).min(stream.len());
        decoder.extend(&stream[at..end]);
        at = end;
    }
}

/// A byte stream of frames: the first two bytes choose how it is cut into
/// pieces and the payload limit; the rest is the stream. Cut anywhere, it
/// decodes to the same frames and the same end, the frames re-encode to the
/// bytes they came from, and the decoder's buffer stays within the bound.
pub fn check_frames(input: &[u8]) {
    let [cut_seed, limit_choice, stream @ ..] = input else { return };
    let max_payload = if limit_choice & 1 == 0 { pluresdb_net::codec::MAX_PAYLOAD_BYTES } else { 64 * 1024 };
    let whole = within_bound("FrameDecoder (whole)", stream, || decode_stream(stream, max_payload, || usize::MAX));
    let mut cuts = Mutator::new(u64::from(*cut_seed));
    let pieces = within_bound("FrameDecoder (in pieces)", stream, || {
        // Single bytes often (every header boundary), otherwise up to 64 KiB.
        decode_stream(stream, max_payload, || {
            let scale = 1 << cuts.below(17);
            if cuts.below(4) == 0 {
                1
            } else {
                1 + cuts.below(scale)
            }
        })
    });
    assert_eq!(pieces, whole, "the same stream decodes differently in pieces");
    let mut encoded = Vec::new();
    for frame in &whole.frames {
        assert!(frame.payload.len() <= max_payload);
        encoded.extend(frame.to_bytes().expect("a decoded frame is within the limit"));
    }
    assert_eq!(&stream[..encoded.len()], &encoded[..], "frames do not re-encode to the bytes they came from");
    if let Err(CodecError::Truncated { buffered, .. }) = whole.end {
        assert_eq!(buffered, stream.len() - encoded.len(), "a truncated stream reports the bytes left over");
    }
    if whole.end.is_ok() {
        assert_eq!(encoded.len(), stream.len(), "a stream that ended cleanly left bytes undecoded");
    }
}

/// Real messages of every kind.
pub fn sample_messages() -> Vec<NetworkMessage> {
    let mut messages = vec![
        NetworkMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            peer_id: "12D3KooWA".into(),
            listen_addresses: vec!["quic://127.0.0.1:34569".into(), "quic://[::1]:34569".into()],
            proof: Some(vec![7; 32]),
        }),
        NetworkMessage::Hello(Hello { protocol_version: 2, peer_id: "x".into(), listen_addresses: vec![], proof: None }),
        NetworkMessage::Heartbeat {
            peer_id: "12D3KooWA".into(),
            timestamp: chrono::DateTime::from_timestamp_millis(1_700_000_000_123).expect("in range"),
        },
        NetworkMessage::Goodbye { reason: "shutting down".into() },
        NetworkMessage::Error { code: ErrorCode::RateLimited, message: "slow down".into() },
        NetworkMessage::Error { code: ErrorCode::Other(999), message: String::new() },
        NetworkMessage::PeerExchange {
            peers: vec![
                ExchangedPeer { peer_id: "12D3KooWB".into(), addresses: vec!["quic://10.0.0.1:34569".into(), "192.0.2.1:1".into()] },
                ExchangedPeer { peer_id: "12D3KooWC".into(), addresses: vec![] },
            ],
            request: true,
        },
        NetworkMessage::Signal { peer: "12D3KooWB".into(), data: bytes::Bytes::from_static(b"{\"type\":\"offer\",\"sdp\":\"v=0\"}") },
    ];
    messages.extend(crate::sync::sample_messages().into_iter().map(NetworkMessage::from));
    messages
}

/// Seeds for [`check_frames`]: streams of every kind of frame, whole.
pub fn frame_seeds() -> Vec<Vec<u8>> {
    let frames: Vec<Vec<u8>> =
        sample_messages().iter().map(|m| m.to_frame().to_bytes().expect("sample frames are within the limit")).collect();
    let mut seeds: Vec<Vec<u8>> = frames.iter().map(|frame| [&[0, 0][..], frame].concat()).collect();
    seeds.push([vec![3, 1], frames.concat()].concat());
    seeds
}

/// A frame payload: the first byte picks the kind, the rest is the payload.
/// A message that decodes re-frames to itself; a peer exchange's addresses
/// go through the check that keeps learned ones.
pub fn check_message(input: &[u8]) {
    let [kind, payload @ ..] = input else { return };
    let kind = FrameKind::ALL[usize::from(*kind) % FrameKind::ALL.len()];
    let frame = Frame::new(kind, payload.to_vec());
    let decoded = within_serde_bound("NetworkMessage::from_frame", payload, || NetworkMessage::from_frame(&frame));
    if kind == FrameKind::Sync {
        let encoded = within_serde_bound("SyncMessage::try_from", payload, || {
            SyncMessage::try_from(NetworkMessage::EncodedSync(frame.payload.clone()))
        });
        assert_eq!(encoded.is_ok(), decoded.is_ok(), "a sync payload decodes one way and not the other");
    }
    let Ok(message) = decoded else { return };
    assert_eq!(message.kind(), kind);
    let again = NetworkMessage::from_frame(&message.to_frame());
    assert_eq!(again.as_ref().ok(), Some(&message), "from_frame(to_frame(message)) != message");
    if let NetworkMessage::PeerExchange { peers, .. } = &message {
        let via = std::net::IpAddr::from([192, 0, 2, 1]);
        for address in peers.iter().flat_map(|p| &p.addresses) {
            let _ = usable_address(address, via);
        }
    }
}

/// Seeds for [`check_message`]: the payload of every sample message after
/// its kind's code.
pub fn message_seeds() -> Vec<Vec<u8>> {
    sample_messages()
        .iter()
        .map(|m| {
            let frame = m.to_frame();
            let index = FrameKind::ALL.iter().position(|k| *k == frame.kind).expect("every kind is in ALL");
            [&[index as u8][..], &frame.payload].concat()
        })
        .collect()
}

/// The payload of the libp2p handshake's first `hello`
/// (`pluresdb_net::message::hello_nonce`, which the libp2p engine reads from
/// every peer that opens a sync stream). A nonce it finds is spelled in
/// the input (as hex digits of either case); a hello that decodes, with
/// that nonce (or one made of the input's first bytes) added by
/// `encode_hello_with_nonce`, decodes to the same hello and that nonce.
pub fn check_hello_nonce(input: &[u8]) {
    let nonce = within_bound("hello_nonce", input, || hello_nonce(input));
    if let Some(nonce) = nonce {
        let hex: String = nonce.iter().map(|byte| format!("{byte:02x}")).collect();
        let spelled = input.windows(64).any(|window| window.eq_ignore_ascii_case(hex.as_bytes()));
        assert!(spelled, "a nonce that is not in the input: {hex}");
    }
    let frame = Frame::new(FrameKind::Hello, input.to_vec());
    let Ok(NetworkMessage::Hello(hello)) = NetworkMessage::from_frame(&frame) else { return };
    let nonce = nonce.unwrap_or_else(|| std::array::from_fn(|i| input.get(i).copied().unwrap_or(0)));
    let encoded = encode_hello_with_nonce(&hello, &nonce);
    assert_eq!(hello_nonce(&encoded), Some(nonce), "the nonce does not survive its encoding");
    let again = NetworkMessage::from_frame(&Frame::new(FrameKind::Hello, encoded));
    assert_eq!(again.ok(), Some(NetworkMessage::Hello(hello)), "a hello with a nonce does not decode to the hello");
}

/// Seeds for [`check_hello_nonce`]: hellos with and without a nonce, and
/// a nonce that comes before the hello's own fields.
pub fn hello_nonce_seeds() -> Vec<Vec<u8>> {
    let hellos = sample_messages().into_iter().filter_map(|message| match message {
        NetworkMessage::Hello(hello) => Some(hello),
        _ => None,
    });
    let mut seeds = Vec::new();
    for (n, hello) in hellos.enumerate() {
        seeds.push(encode_hello_with_nonce(&hello, &[n as u8 * 0x35; 32]));
        seeds.push(encode_hello_with(&hello, 0));
    }
    let mut first = Vec::new();
    pluresdb_core::cbor::map(&mut first, 2);
    pluresdb_core::cbor::text(&mut first, "nonce");
    pluresdb_core::cbor::text(&mut first, &"0A".repeat(32));
    pluresdb_core::cbor::text(&mut first, "proof");
    pluresdb_core::cbor::null(&mut first);
    seeds.push(first);
    seeds
}
