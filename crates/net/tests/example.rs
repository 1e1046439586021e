//! Runs `examples/quic.rs` (the seed's QUIC snippet on loopback) as part of
//! `cargo test`.

#[path = "../examples/quic.rs"]
#[allow(dead_code)]
mod example;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_quic_example_runs() {
    let peer = example::run().await.expect("the example runs");
    assert!(peer.to_string().starts_with("12D3KooW"));
}
