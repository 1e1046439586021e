//! The cost of `NetworkEncryption` against the primitives it is built on,
//! measured in the same run: `cargo bench -p pluresdb-security --bench security`.
//!
//! Prints encrypt+decrypt MB/s for 1 KiB and 64 KiB messages beside raw
//! AES-256-GCM on the same buffers (what the framing, counters, replay
//! window and allocation cost), sign and verify per second beside raw
//! ed25519-dalek, and ed25519-dalek's batch verification of 256 signatures
//! (the figure DESIGN.md's hash-chain plan leans on).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use ed25519_dalek::{Signature, Signer, SigningKey};
use pluresdb_security::{Identity, NetworkEncryption};
use std::hint::black_box;
use std::time::{Duration, Instant};

const BUDGET: Duration = Duration::from_millis(300);

/// Runs each step for the time budget, alternating them over a few rounds
/// so that load from other processes hits both alike; returns the best
/// runs per second of each.
fn compare(mut ours: impl FnMut(), mut raw: impl FnMut()) -> (f64, f64) {
    let (mut best_ours, mut best_raw) = (0f64, 0f64);
    for _ in 0..3 {
        best_ours = best_ours.max(rate(&mut ours));
        best_raw = best_raw.max(rate(&mut raw));
    }
    (best_ours, best_raw)
}

/// Runs `step` until the time budget is spent; returns runs per second.
fn rate(mut step: impl FnMut()) -> f64 {
    for _ in 0..16 {
        step();
    }
    let start = Instant::now();
    let mut runs = 0u64;
    loop {
        for _ in 0..32 {
            step();
        }
        runs += 32;
        let elapsed = start.elapsed();
        if elapsed >= BUDGET {
            return runs as f64 / elapsed.as_secs_f64();
        }
    }
}

fn pair() -> (NetworkEncryption, NetworkEncryption) {
    let mut a = NetworkEncryption::from_identity(Identity::from_seed([1; 32]));
    let mut b = NetworkEncryption::from_identity(Identity::from_seed([2; 32]));
    a.initialize_with_session_seed([3; 32]);
    b.initialize_with_session_seed([4; 32]);
    a.add_peer("b", &b.public_key_bundle().expect("initialized")).expect("valid key");
    b.add_peer("a", &a.public_key_bundle().expect("initialized")).expect("valid key");
    (a, b)
}

fn throughput(size: usize) {
    let message: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let (mut a, mut b) = pair();
    let cipher = Aes256Gcm::new(&[7u8; 32].into());
    let mut buffer = message.clone();
    let mut counter = 0u64;
    let (ours, raw) = compare(
        || {
            let sealed = a.encrypt("b", black_box(&message)).expect("encrypt");
            let opened = b.decrypt("a", &sealed).expect("decrypt");
            black_box(opened);
        },
        || {
            counter += 1;
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&counter.to_be_bytes());
            let nonce = Nonce::from_slice(&nonce);
            let tag = cipher.encrypt_in_place_detached(nonce, b"header-13-byt", &mut buffer).expect("encrypt");
            cipher.decrypt_in_place_detached(nonce, b"header-13-byt", &mut buffer, &tag).expect("decrypt");
            black_box(&buffer);
        },
    );
    let mb = size as f64 / 1e6;
    println!(
        "encrypt+decrypt {:>2} KiB: NetworkEncryption {:>8.1} MB/s, raw aes-gcm {:>8.1} MB/s, ratio {:.2}",
        size / 1024,
        ours * mb,
        raw * mb,
        ours / raw
    );
}

fn signatures() {
    let message = [0x5au8; 200];
    let (a, b) = pair();
    let raw_key = SigningKey::from_bytes(&[9; 32]);
    let raw_public = raw_key.verifying_key();

    let (ours_sign, raw_sign) = compare(
        || {
            black_box(a.sign(black_box(&message)).expect("sign"));
        },
        || {
            black_box(raw_key.sign(black_box(&message)));
        },
    );
    let signature = a.sign(&message).expect("sign");
    let raw_signature = raw_key.sign(&message);
    let (ours_verify, raw_verify) = compare(
        || {
            assert!(b.verify("a", black_box(&message), &signature).expect("known peer"));
        },
        || {
            assert!(raw_public.verify_strict(black_box(&message), &raw_signature).is_ok());
        },
    );
    println!("sign:   NetworkEncryption {:>8.0}/s, raw ed25519-dalek {:>8.0}/s, ratio {:.2}", ours_sign, raw_sign, ours_sign / raw_sign);
    println!(
        "verify: NetworkEncryption {:>8.0}/s, raw ed25519-dalek {:>8.0}/s, ratio {:.2} (both strict)",
        ours_verify,
        raw_verify,
        ours_verify / raw_verify
    );

    // Batch verification: 256 ops from 16 authors, as a sync batch would be.
    let keys: Vec<SigningKey> = (0..16u8).map(|i| SigningKey::from_bytes(&[i + 1; 32])).collect();
    let messages: Vec<Vec<u8>> = (0..256u32).map(|i| format!("op {i} with a body of some length").into_bytes()).collect();
    let signatures: Vec<Signature> = messages.iter().enumerate().map(|(i, m)| keys[i % 16].sign(m)).collect();
    let publics: Vec<_> = (0..256).map(|i| keys[i % 16].verifying_key()).collect();
    let refs: Vec<&[u8]> = messages.iter().map(|m| m.as_slice()).collect();
    let (batches, _) = compare(
        || {
            assert!(ed25519_dalek::verify_batch(black_box(&refs), &signatures, &publics).is_ok());
        },
        || {},
    );
    println!(
        "batch verify (256 per batch): {:>8.0} signatures/s, {:.2}x single raw verification",
        batches * 256.0,
        batches * 256.0 / raw_verify
    );
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent; keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("run with `cargo bench` for figures");
        return;
    }
    throughput(1024);
    throughput(64 * 1024);
    signatures();
}
