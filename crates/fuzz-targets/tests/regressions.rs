//! Inputs the fuzzers (or the review of issue 13) found, each named for
//! the bug it showed, kept so the bug stays fixed. Allocations are
//! measured with `CountingAllocator`: before the fixes these inputs made
//! the decoders reserve memory for items a length merely claimed.

use pluresdb_core::cbor;
use pluresdb_fuzz_targets::alloc::{allocation_bound, measure};
use pluresdb_fuzz_targets::CountingAllocator;
use pluresdb_net::FrameDecoder;
use pluresdb_sync::{SyncMessage, MAX_MESSAGE_BYTES};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// What a decoder may allocate ahead of items a length only claims: the
/// core reader reserves at most 64 KiB, serde's fallback at most 1 MiB.
const RESERVE_LIMIT: usize = 2 * 1024 * 1024;

/// `bytes` padded with `filler` to exactly `len` bytes.
fn padded(mut bytes: Vec<u8>, filler: u8, len: usize) -> Vec<u8> {
    bytes.resize(len, filler);
    bytes
}

/// A CBOR head of `major` with a four-byte argument.
fn head32(major: u8, n: u32) -> Vec<u8> {
    let mut out = vec![major << 5 | 26];
    out.extend_from_slice(&n.to_be_bytes());
    out
}

/// The DataSync prefix up to the operations array's head.
fn data_sync_prefix() -> Vec<u8> {
    let mut out = Vec::new();
    cbor::map(&mut out, 1);
    cbor::text(&mut out, "DataSync");
    cbor::map(&mut out, 3);
    cbor::text(&mut out, "from_peer");
    cbor::text(&mut out, "12D3KooWPeer");
    cbor::text(&mut out, "operations");
    out
}

/// Issue 13: a 16 MiB sync frame whose operations array claims as many
/// items as it has bytes made the decoder reserve room for ~16.7 M
/// operations of 216 bytes each, ~3.6 GB, before reading the first one.
#[test]
fn a_data_sync_claiming_16_m_operations_does_not_reserve_3_6_gb() {
    let mut prefix = data_sync_prefix();
    let claimed = (MAX_MESSAGE_BYTES - prefix.len() - 5) as u32;
    prefix.extend(head32(4, claimed));
    // Nulls: not operations, so decoding stops at the first.
    let frame = padded(prefix, 0xf6, MAX_MESSAGE_BYTES);
    let measured = measure(|| SyncMessage::decode("12D3KooWPeer", &frame));
    assert!(measured.value.is_err());
    assert!(measured.largest_allocation <= allocation_bound(frame.len()), "{} bytes in one allocation", measured.largest_allocation);
    assert!(measured.largest_allocation <= RESERVE_LIMIT, "{} bytes reserved for claimed operations", measured.largest_allocation);
}

/// The same claim one level down: a JSON array in an operation's data
/// claiming ~16.7 M values reserved 32 bytes each (512 MiB).
#[test]
fn a_value_array_claiming_16_m_items_does_not_reserve_512_mib() {
    let input = padded(head32(4, (MAX_MESSAGE_BYTES - 5) as u32), 0xff, MAX_MESSAGE_BYTES);
    let measured = measure(|| cbor::Reader::new(&input).value());
    assert!(measured.value.is_err());
    assert!(measured.largest_allocation <= RESERVE_LIMIT, "{} bytes reserved for claimed values", measured.largest_allocation);
}

/// An operation's `supersedes` list claiming ~1 M op ids reserved 24 bytes
/// each before reading one.
#[test]
fn a_supersedes_list_claiming_1_m_ids_does_not_reserve_24_mib() {
    let mut op = Vec::new();
    cbor::array(&mut op, 7);
    cbor::unsigned(&mut op, 1);
    cbor::text(&mut op, "n:1");
    cbor::map(&mut op, 0);
    cbor::unsigned(&mut op, 1);
    cbor::map(&mut op, 1);
    cbor::text(&mut op, "f");
    op.extend(head32(4, 1 << 20));
    let input = padded(op, 0xf6, (1 << 20) + 64);
    let measured = measure(|| pluresdb_core::OperationWithMetadata::decode_body(pluresdb_core::OpId::new("p", 1), &input));
    assert!(measured.value.is_err());
    assert!(measured.largest_allocation <= RESERVE_LIMIT, "{} bytes reserved for claimed op ids", measured.largest_allocation);
}

/// A stored node record whose stamp table claims ~1 M stamps (a corrupt or
/// doctored data directory) reserved 32 bytes each.
#[test]
fn a_node_record_claiming_1_m_stamps_does_not_reserve_32_mib() {
    let mut record = Vec::new();
    cbor::array(&mut record, 5);
    cbor::text(&mut record, "n:1");
    cbor::null(&mut record);
    record.extend(head32(4, 1 << 20));
    let input = padded(record, 0xf6, (1 << 20) + 64);
    let measured = measure(|| pluresdb_core::NodeRecord::decode(&input));
    assert!(measured.value.is_err());
    assert!(measured.largest_allocation <= RESERVE_LIMIT, "{} bytes reserved for claimed stamps", measured.largest_allocation);
}

/// A frame header is six bytes; the decoder reserved the whole payload it
/// announced (16 MiB) on reading them, so a peer could make a node hold
/// 16 MiB per stream for six bytes each.
#[test]
fn a_frame_header_claiming_16_mib_does_not_reserve_16_mib() {
    let mut header = vec![pluresdb_net::codec::FRAME_VERSION, 3];
    header.extend_from_slice(&(MAX_MESSAGE_BYTES as u32).to_be_bytes());
    let measured = measure(|| {
        let mut decoder = FrameDecoder::new();
        decoder.extend(&header);
        let frame = decoder.decode();
        (frame, decoder)
    });
    assert_eq!(measured.value.0, Ok(None));
    assert!(measured.largest_allocation <= 64, "{} bytes reserved for a six-byte header", measured.largest_allocation);
    // The frame still arrives whole when its bytes do, the buffer growing
    // with what arrived.
    let mut decoder = measured.value.1;
    let payload = vec![0u8; MAX_MESSAGE_BYTES];
    let mut received = header.len();
    for chunk in payload.chunks(64 * 1024) {
        received += chunk.len();
        let measured = measure(|| {
            decoder.extend(chunk);
            decoder.decode()
        });
        assert!(measured.largest_allocation <= 4 * received, "{} bytes allocated after {received} arrived", measured.largest_allocation);
        if let Ok(Some(frame)) = measured.value {
            assert_eq!(frame.payload.len(), MAX_MESSAGE_BYTES);
            return;
        }
    }
    panic!("the frame never completed");
}

/// Found by the import_line target: serde_json's default float parser is
/// not exact, so `2.15e-32` read as 2.1500000000000002e-32, and a number
/// a client wrote (or an export re-imported) came back changed in its last
/// bit. The workspace turns on serde_json's `float_roundtrip`.
#[test]
fn a_float_written_back_by_an_import_reads_the_same() {
    for text in ["2.15e-32", "21.5e-33", "1.7976931348623157e308", "5e-324", "0.1", "123456789.12345678"] {
        let line = format!(r#"{{"id": "a", "value": {{"x": {text}}}}}"#);
        let (_, value) = pluresdb_server::parse_import_line(&line).unwrap();
        let expected: f64 = text.parse().unwrap();
        assert_eq!(value["x"].as_f64(), Some(expected), "{text} read as {}", value["x"]);
        let again = serde_json::json!({"id": "a", "value": value}).to_string();
        assert_eq!(pluresdb_server::parse_import_line(&again).unwrap().1, value, "{text} written back as {again}");
    }
}
